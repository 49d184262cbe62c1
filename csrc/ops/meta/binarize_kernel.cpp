// Meta kernels of the binarize family: the real kernels' checks and (contiguous) layouts.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../binarize_checks.h"

namespace qatkit::ops {
namespace {

at::Tensor binarize_apply_meta(const at::Tensor& input, const std::optional<at::Tensor>& center,
                               const std::optional<at::Tensor>& alpha, std::optional<std::int64_t> axis,
                               bool /*zero_negative*/, const std::optional<at::Tensor>& seed) {
  check_binarize_args("_binarize_apply", input, axis, 1.0, seed);
  check_binary_stats_shape("_binarize_apply", input, center, alpha, axis);
  return at::empty_symint(input.sym_sizes(), input.options());
}

at::Tensor binarize_backward_meta(const at::Tensor& grad, const at::Tensor& input,
                                  const std::optional<at::Tensor>& center, std::optional<std::int64_t> axis,
                                  c10::string_view estimator, double beta) {
  check_binarize_backward_args("_binarize_backward", grad, input, center, axis, beta);
  (void)parse_estimator("_binarize_backward", estimator);
  return at::empty_symint(input.sym_sizes(), input.options());
}

}  // namespace

TORCH_LIBRARY_IMPL(qatkit, Meta, m) {
  m.impl("_binarize_apply", &binarize_apply_meta);
  m.impl("_binarize_backward", &binarize_backward_meta);
}

}  // namespace qatkit::ops
