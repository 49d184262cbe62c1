// CUDA backward of PACT: the torch-free launcher on the current stream; no value check of alpha
// and no host sync (a non-positive alpha gives no clipped region and an empty window).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../../../kernels/cuda/fake_quant_cuda.h"
#include "../pact_checks.h"

namespace qatkit::ops {
namespace {

std::tuple<at::Tensor, at::Tensor> pact_quantize_backward_cuda(const at::Tensor& grad, const at::Tensor& input,
                                                               const at::Tensor& alpha) {
  check_pact_backward_args("_pact_quantize_backward", grad, input, alpha);
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor x = input.contiguous(), g = grad.contiguous(), alpha_c = alpha.contiguous();
  at::Tensor dx = at::empty(input.sizes(), input.options());
  at::Tensor dalpha = at::empty(alpha.sizes(), alpha.options());
  at::Tensor workspace = at::empty({kernels::cuda::pact_workspace_doubles()}, input.options().dtype(at::kDouble));
  kernels::PactBackwardArgs a;
  a.input = x.const_data_ptr();
  a.grad_output = g.const_data_ptr();
  a.grad_input = dx.mutable_data_ptr();
  a.numel = x.numel();
  a.dtype = kernel_dtype(x);
  a.alpha = alpha_c.const_data_ptr<float>();  // read on the device by the kernel
  C10_CUDA_CHECK(kernels::cuda::launch_pact_backward(
      a, dalpha.mutable_data_ptr<float>(), workspace.mutable_data_ptr<double>(), c10::cuda::getCurrentCUDAStream()));
  return {dx, dalpha};
}

}  // namespace

TORCH_LIBRARY_IMPL(qatkit, CUDA, m) { m.impl("_pact_quantize_backward", &pact_quantize_backward_cuda); }

}  // namespace qatkit::ops
