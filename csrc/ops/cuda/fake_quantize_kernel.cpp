// CUDA kernels of the fake-quantize family: the same preparation as CPU (shape/dtype/device
// checks), then the torch-free launchers of kernels/cuda on the current stream. No value checks
// and no host synchronisation: the Python layer validates qparams where it creates them; a zero,
// negative or subnormal scale yields Inf/NaN outputs and an out-of-range zero point shifts the
// clamp window, exactly as the scalar formula implies.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../../../kernels/cuda/fake_quant_cuda.h"
#include "../fake_quantize_common.h"

namespace qatkit::ops {
namespace {

void run_forward(const char* op, const at::Tensor& input, const at::Tensor& scale, const at::Tensor& zero_point,
                 std::int64_t quant_min, std::int64_t quant_max, std::optional<std::int64_t> axis,
                 std::optional<std::int64_t> group_size, at::Tensor& out, std::uint8_t* mask) {
  const c10::cuda::CUDAGuard guard(input.device());
  PreparedFakeQuant p = prepare_fake_quantize(op, input, scale, zero_point, quant_min, quant_max, axis, group_size);
  if (p.args.numel == 0) return;
  kernels::FakeQuantArgs a = p.args;
  a.input = p.input.const_data_ptr();
  a.output = out.mutable_data_ptr();
  a.mask = mask;
  a.scale = p.scale.const_data_ptr<float>();
  a.zero_point = p.zero_point.const_data_ptr<float>();
  C10_CUDA_CHECK(kernels::cuda::launch_fake_quant_forward(a, c10::cuda::getCurrentCUDAStream()));
}

at::Tensor fake_quantize_cuda(const at::Tensor& input, const at::Tensor& scale, const at::Tensor& zero_point,
                              std::int64_t quant_min, std::int64_t quant_max, std::optional<std::int64_t> axis,
                              std::optional<std::int64_t> group_size) {
  at::Tensor out = at::empty(input.sizes(), input.options());
  run_forward("fake_quantize", input, scale, zero_point, quant_min, quant_max, axis, group_size, out, nullptr);
  return out;
}

at::Tensor& fake_quantize_out_cuda(const at::Tensor& input, const at::Tensor& scale, const at::Tensor& zero_point,
                                   std::int64_t quant_min, std::int64_t quant_max, std::optional<std::int64_t> axis,
                                   std::optional<std::int64_t> group_size, at::Tensor& out) {
  check_fake_quantize_args("fake_quantize.out", input, scale, zero_point, quant_min, quant_max, axis, group_size);
  check_and_resize_out("fake_quantize.out", input, out);
  if (out.is_contiguous()) {
    run_forward("fake_quantize.out", input, scale, zero_point, quant_min, quant_max, axis, group_size, out, nullptr);
  } else {
    at::Tensor tmp = at::empty(input.sizes(), input.options());
    run_forward("fake_quantize.out", input, scale, zero_point, quant_min, quant_max, axis, group_size, tmp, nullptr);
    out.copy_(tmp);
  }
  return out;
}

std::tuple<at::Tensor, at::Tensor> fake_quantize_with_mask_cuda(const at::Tensor& input, const at::Tensor& scale,
                                                                const at::Tensor& zero_point,
                                                                std::int64_t quant_min, std::int64_t quant_max,
                                                                std::optional<std::int64_t> axis,
                                                                std::optional<std::int64_t> group_size) {
  at::Tensor out = at::empty(input.sizes(), input.options());
  at::Tensor mask = at::empty({kernels::mask_bytes(input.numel())}, input.options().dtype(at::kByte));
  run_forward("fake_quantize", input, scale, zero_point, quant_min, quant_max, axis, group_size, out,
              mask.mutable_data_ptr<std::uint8_t>());
  return {out, mask};
}

at::Tensor fake_quantize_backward_cuda(const at::Tensor& grad, const at::Tensor& mask) {
  check_backward_args(grad, mask);
  const c10::cuda::CUDAGuard guard(grad.device());
  const at::Tensor g = grad.contiguous();
  const at::Tensor m = mask.contiguous();
  at::Tensor dx = at::empty(grad.sizes(), grad.options());
  if (g.numel() == 0) return dx;
  kernels::FakeQuantBackwardArgs a;
  a.grad_output = g.const_data_ptr();
  a.mask = m.const_data_ptr<std::uint8_t>();
  a.grad_input = dx.mutable_data_ptr();
  a.numel = g.numel();
  a.dtype = kernel_dtype(g);
  C10_CUDA_CHECK(kernels::cuda::launch_fake_quant_backward(a, c10::cuda::getCurrentCUDAStream()));
  return dx;
}

}  // namespace

TORCH_LIBRARY_IMPL(qatkit, CUDA, m) {
  m.impl("fake_quantize", &fake_quantize_cuda);
  m.impl("fake_quantize.out", &fake_quantize_out_cuda);
  m.impl("_fake_quantize_with_mask", &fake_quantize_with_mask_cuda);
  m.impl("_fake_quantize_backward", &fake_quantize_backward_cuda);
}

}  // namespace qatkit::ops
