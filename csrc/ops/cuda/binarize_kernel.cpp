// CUDA kernels of the binarize family: the torch-free launchers on the current stream (the seed
// is read on the device: no host sync).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../../../kernels/cuda/fake_quant_cuda.h"
#include "../binarize_common.h"
#include "../fake_quantize_common.h"

namespace qatkit::ops {
namespace {

at::Tensor binarize_apply_cuda(const at::Tensor& input, const std::optional<at::Tensor>& center,
                               const std::optional<at::Tensor>& alpha, std::optional<std::int64_t> axis,
                               bool zero_negative, const std::optional<at::Tensor>& seed) {
  constexpr const char* op = "_binarize_apply";
  check_binarize_args(op, input, axis, 1.0, seed);
  check_binary_stats_shape(op, input, center, alpha, axis);
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor x = input.contiguous();
  at::Tensor y = at::empty(input.sizes(), input.options());
  at::Tensor center_keep, alpha_keep, seed_keep;
  kernels::BinarizeArgs a;
  a.input = x.const_data_ptr();
  a.output = y.mutable_data_ptr();
  a.center = optional_float_ptr(center, center_keep);
  a.alpha = optional_float_ptr(alpha, alpha_keep);
  if (seed.has_value() && seed->defined()) {
    seed_keep = seed->contiguous();
    a.seed = seed_keep.const_data_ptr<std::int64_t>();
  }
  a.numel = x.numel();
  std::tie(a.inner, a.channels) = binary_layout(x, axis);
  a.zero_negative = zero_negative;
  a.dtype = kernel_dtype(x);
  C10_CUDA_CHECK(kernels::cuda::launch_binarize_forward(a, c10::cuda::getCurrentCUDAStream()));
  return y;
}

at::Tensor binarize_backward_cuda(const at::Tensor& grad, const at::Tensor& input,
                                  const std::optional<at::Tensor>& center, std::optional<std::int64_t> axis,
                                  c10::string_view estimator, double beta) {
  constexpr const char* op = "_binarize_backward";
  check_binarize_backward_args(op, grad, input, center, axis, beta);
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor x = input.contiguous(), g = grad.contiguous();
  at::Tensor dx = at::empty(input.sizes(), input.options());
  at::Tensor center_keep;
  kernels::BinarizeBackwardArgs a;
  a.input = x.const_data_ptr();
  a.grad_output = g.const_data_ptr();
  a.grad_input = dx.mutable_data_ptr();
  a.center = optional_float_ptr(center, center_keep);
  a.numel = x.numel();
  std::tie(a.inner, a.channels) = binary_layout(x, axis);
  a.estimator = parse_estimator(op, estimator);
  a.beta = static_cast<float>(beta);
  a.dtype = kernel_dtype(x);
  C10_CUDA_CHECK(kernels::cuda::launch_binarize_backward(a, c10::cuda::getCurrentCUDAStream()));
  return dx;
}

}  // namespace

TORCH_LIBRARY_IMPL(qatkit, CUDA, m) {
  m.impl("_binarize_apply", &binarize_apply_cuda);
  m.impl("_binarize_backward", &binarize_backward_cuda);
}

}  // namespace qatkit::ops
