// Meta kernel of the PACT backward: same checks, the real kernels' output layouts.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../pact_checks.h"

namespace qatkit::ops {
namespace {

std::tuple<at::Tensor, at::Tensor> pact_quantize_backward_meta(const at::Tensor& grad, const at::Tensor& input,
                                                               const at::Tensor& alpha) {
  check_pact_backward_args("_pact_quantize_backward", grad, input, alpha);
  return {at::empty_symint(input.sym_sizes(), input.options()), at::empty_symint(alpha.sym_sizes(), alpha.options())};
}

}  // namespace

TORCH_LIBRARY_IMPL(qatkit, Meta, m) { m.impl("_pact_quantize_backward", &pact_quantize_backward_meta); }

}  // namespace qatkit::ops
