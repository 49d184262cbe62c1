// CUDA kernels of the binarize family: the torch-free launchers on the current stream (the seed
// is read on the device: no host sync).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../../../kernels/cuda/sign_cuda.h"
#include "../binarize_checks.h"

namespace qatkit::ops {
namespace {

at::Tensor binarize_apply_cuda(const at::Tensor& input, const std::optional<at::Tensor>& center,
                               const std::optional<at::Tensor>& alpha, std::optional<std::int64_t> axis,
                               bool zero_negative, const std::optional<at::Tensor>& seed) {
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor y = at::empty(input.sizes(), input.options());
  const BinarizeLaunch l = prepare_binarize("_binarize_apply", input, center, alpha, axis, zero_negative, seed, y);
  C10_CUDA_CHECK(kernels::cuda::launch_binarize_forward(l.args, c10::cuda::getCurrentCUDAStream()));
  return y;
}

at::Tensor binarize_backward_cuda(const at::Tensor& grad, const at::Tensor& input,
                                  const std::optional<at::Tensor>& center, std::optional<std::int64_t> axis,
                                  c10::string_view estimator, double beta) {
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor dx = at::empty(input.sizes(), input.options());
  const BinarizeBackwardLaunch l =
      prepare_binarize_backward("_binarize_backward", grad, input, center, axis, estimator, beta, dx);
  C10_CUDA_CHECK(kernels::cuda::launch_binarize_backward(l.args, c10::cuda::getCurrentCUDAStream()));
  return dx;
}

}  // namespace

TORCH_LIBRARY_IMPL(qatkit, CUDA, m) {
  m.impl("_binarize_apply", &binarize_apply_cuda);
  m.impl("_binarize_backward", &binarize_backward_cuda);
}

}  // namespace qatkit::ops
