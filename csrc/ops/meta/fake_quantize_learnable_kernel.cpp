// Meta kernel of the learned-step-size backward: same checks, real kernels' output layouts.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../fake_quantize_learnable_checks.h"

namespace qatkit::ops {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> fake_quantize_learnable_backward_meta(
    const at::Tensor& grad, const at::Tensor& input, const at::Tensor& scale, const at::Tensor& zero_point,
    std::int64_t quant_min, std::int64_t quant_max, std::optional<std::int64_t> axis,
    std::optional<std::int64_t> group_size, double grad_factor) {
  check_learnable_backward_args("_fake_quantize_learnable_backward", grad, input, scale, zero_point, quant_min,
                                quant_max, axis, group_size, grad_factor);
  return {at::empty_symint(input.sym_sizes(), input.options()),
          at::empty_symint(scale.sym_sizes(), scale.options().dtype(at::kFloat)),
          at::empty_symint(zero_point.sym_sizes(), zero_point.options().dtype(at::kFloat))};
}

}  // namespace

TORCH_LIBRARY_IMPL(qatkit, Meta, m) {
  m.impl("_fake_quantize_learnable_backward", &fake_quantize_learnable_backward_meta);
}

}  // namespace qatkit::ops
