// CUDA kernels of the fake-quantize family: the same preparation as CPU (shape/dtype/device
// checks), then the torch-free launchers of kernels/cuda on the current stream. No value checks
// and no host synchronisation: the Python layer validates qparams where it creates them
// (qatkit.ops.validate_qparams); a zero, negative or subnormal scale yields Inf/NaN outputs and an
// out-of-range zero point shifts the clamp window, exactly as the scalar formula implies.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../../../kernels/cuda/fake_quant_cuda.h"
#include "../fake_quantize_checks.h"
#include "../fake_quantize_glue.h"

namespace qatkit::ops {
namespace {

struct CudaBackend {
  static at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& options) { return at::empty(sizes, options); }

  static void run(const char* op, const at::Tensor& input, const at::Tensor& scale, const at::Tensor& zero_point,
                  std::int64_t quant_min, std::int64_t quant_max, std::optional<std::int64_t> axis,
                  std::optional<std::int64_t> group_size, at::Tensor& out, std::uint8_t* mask,
                  const std::optional<at::Tensor>& enabled) {
    const c10::cuda::CUDAGuard guard(input.device());
    const PreparedFakeQuant p =
        prepare_fake_quantize(op, input, scale, zero_point, quant_min, quant_max, axis, group_size, out, mask, enabled);
    if (p.args.numel == 0) return;
    const kernels::FakeQuantArgs& a = p.args;
    C10_CUDA_CHECK(kernels::cuda::launch_fake_quant_forward(a, c10::cuda::getCurrentCUDAStream()));
  }
};

at::Tensor fake_quantize_backward_cuda(const at::Tensor& grad, const at::Tensor& mask) {
  check_backward_args(grad, mask);
  const c10::cuda::CUDAGuard guard(grad.device());
  const at::Tensor g = grad.contiguous();
  const at::Tensor m = mask.contiguous();
  at::Tensor dx = at::empty(grad.sizes(), grad.options());
  if (g.numel() == 0) return dx;
  const kernels::FakeQuantBackwardArgs a = backward_args(g, m, dx);
  C10_CUDA_CHECK(kernels::cuda::launch_fake_quant_backward(a, c10::cuda::getCurrentCUDAStream()));
  return dx;
}

using Glue = FakeQuantizeGlue<CudaBackend>;

}  // namespace

TORCH_LIBRARY_IMPL(qatkit, CUDA, m) {
  m.impl("fake_quantize", &Glue::forward);
  m.impl("fake_quantize.out", &Glue::forward_out);
  m.impl("_fake_quantize_with_mask", &Glue::forward_with_mask);
  m.impl("_fake_quantize_backward", &fake_quantize_backward_cuda);
}

}  // namespace qatkit::ops
