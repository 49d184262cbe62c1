// Checks and launch preparation of the learned-step-size family (see the header).
#include "fake_quantize_learnable_checks.h"

#include <ATen/ops/isfinite.h>
#include <ATen/ops/nonzero.h>
#include <c10/util/Exception.h>
#include <fmt/format.h>

#include <cfloat>
#include <cmath>
#include <utility>

namespace qatkit::ops {

void check_grad_factor(const char* op, double grad_factor) {
  TORCH_CHECK_VALUE(std::isfinite(grad_factor), fmt::format("{}: grad_factor must be finite, got {}", op, grad_factor));
}

void check_learnable_backward_args(const char* op, const at::Tensor& grad, const at::Tensor& input,
                                   const at::Tensor& scale, const at::Tensor& zero_point, std::int64_t quant_min,
                                   std::int64_t quant_max, std::optional<std::int64_t> axis,
                                   std::optional<std::int64_t> group_size, double grad_factor) {
  check_fake_quantize_args(op, input, scale, zero_point, quant_min, quant_max, axis, group_size);
  check_like(op, "grad", grad, input);
  check_grad_factor(op, grad_factor);
}

void check_learned_qparam_values(const char* op, const at::Tensor& scale, const at::Tensor& zero_point) {
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor*>{"scale", &scale}, {"zero_point", &zero_point}}) {
    const at::Tensor f = as_float(*t).reshape(-1);
    const at::Tensor bad = f.isfinite().logical_not();
    if (!bad.any().item<bool>()) continue;
    const std::int64_t i = bad.nonzero().reshape(-1)[0].item<std::int64_t>();
    TORCH_CHECK_VALUE(false, fmt::format("{}: {} must be finite, got {} at index {}", op, name,
                                         f[i].item<float>(), i));
  }
}

std::pair<at::Tensor, at::Tensor> effective_learned_qparams(const at::Tensor& scale, const at::Tensor& zero_point,
                                                            std::int64_t quant_min, std::int64_t quant_max) {
  return {scale.clamp_min(FLT_EPSILON), as_float(zero_point).round().clamp(quant_min, quant_max)};
}

kernels::LsqBackwardArgs lsq_backward_args(const PreparedFakeQuant& p, const at::Tensor& grad, at::Tensor& grad_input) {
  kernels::LsqBackwardArgs a;
  a.fq = p.args;
  a.grad_output = grad.const_data_ptr();
  a.grad_input = grad_input.mutable_data_ptr();
  return a;
}

}  // namespace qatkit::ops
