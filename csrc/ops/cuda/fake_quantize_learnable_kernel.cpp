// CUDA backward of the learned-step-size fake quantizer: same preparation as CPU (checks,
// effective qparams), then the torch-free launcher on the current stream. No value checks and
// no host sync (see csrc/ops/cuda/fake_quantize_kernel.cpp for the policy).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../../../kernels/cuda/fake_quant_cuda.h"
#include "../fake_quantize_learnable_checks.h"

namespace qatkit::ops {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> fake_quantize_learnable_backward_cuda(
    const at::Tensor& grad, const at::Tensor& input, const at::Tensor& scale, const at::Tensor& zero_point,
    std::int64_t quant_min, std::int64_t quant_max, std::optional<std::int64_t> axis,
    std::optional<std::int64_t> group_size, double grad_factor) {
  constexpr const char* op = "_fake_quantize_learnable_backward";
  check_learnable_backward_args(op, grad, input, scale, zero_point, quant_min, quant_max, axis, group_size,
                                grad_factor);
  const c10::cuda::CUDAGuard guard(input.device());
  if (input.numel() == 0) {
    // empty input: the qparam gradients are sums over nothing. The layout's channel count is kept
    // >= 1 for degenerate shapes, so the launcher would zero one float of a zero-length (null)
    // buffer, which cudaMemsetAsync rejects (cudaErrorInvalidValue on an H200, 2026-12-04).
    return {at::empty(input.sizes(), input.options()), at::zeros(scale.sizes(), scale.options().dtype(at::kFloat)),
            at::zeros(zero_point.sizes(), zero_point.options().dtype(at::kFloat))};
  }
  const auto [s_eff, z_eff] = effective_learned_qparams(scale, zero_point, quant_min, quant_max);
  at::Tensor dx = at::empty(input.sizes(), input.options());
  const PreparedFakeQuant p =
      prepare_fake_quantize(op, input, s_eff, z_eff, quant_min, quant_max, axis, group_size, dx, nullptr);
  const at::Tensor g = grad.contiguous();
  const kernels::LsqBackwardArgs a = lsq_backward_args(p, g, dx);
  at::Tensor dscale = at::empty(scale.sizes(), scale.options().dtype(at::kFloat));
  at::Tensor dzero = at::empty(zero_point.sizes(), zero_point.options().dtype(at::kFloat));
  at::Tensor workspace = at::empty({std::max<std::int64_t>(1, kernels::cuda::lsq_workspace_doubles(a))},
                                   input.options().dtype(at::kDouble));
  C10_CUDA_CHECK(kernels::cuda::launch_lsq_backward(
      a, grad_factor, dscale.mutable_data_ptr<float>(), dzero.mutable_data_ptr<float>(),
      workspace.mutable_data_ptr<double>(), c10::cuda::getCurrentCUDAStream()));
  return {dx, dscale, dzero};
}

}  // namespace

TORCH_LIBRARY_IMPL(qatkit, CUDA, m) {
  m.impl("_fake_quantize_learnable_backward", &fake_quantize_learnable_backward_cuda);
}

}  // namespace qatkit::ops
