// Checks of the PACT family (see the header).
#include "pact_checks.h"

#include <c10/util/Exception.h>
#include <fmt/format.h>

#include <cmath>

namespace qatkit::ops {

void check_pact_args(const char* op, const at::Tensor& input, const at::Tensor& alpha, std::int64_t quant_max) {
  constexpr std::int64_t kMaxRange = 65535;  // 16-bit codes
  check_float_dtype(op, "input", input);
  TORCH_CHECK_TYPE(alpha.scalar_type() == at::kFloat,
                   fmt::format("{}: alpha must be float32, got {}", op, c10::toString(alpha.scalar_type())));
  TORCH_CHECK_VALUE(alpha.sym_numel() == 1, fmt::format("{}: alpha must have 1 element (one clipping level per "
                                                        "tensor), got {}",
                                                        op, alpha.sym_numel().guard_int(__FILE__, __LINE__)));
  TORCH_CHECK_VALUE(alpha.device() == input.device(), fmt::format("{}: alpha must be on input's device {}, got {}", op,
                                                                  input.device().str(), alpha.device().str()));
  TORCH_CHECK_VALUE(quant_max >= 1 && quant_max <= kMaxRange,
                    fmt::format("{}: quant_max must be in [1, {}], got {}", op, kMaxRange, quant_max));
}

void check_pact_backward_args(const char* op, const at::Tensor& grad, const at::Tensor& input,
                              const at::Tensor& alpha) {
  check_pact_args(op, input, alpha, 1);
  check_like(op, "grad", grad, input);
}

void check_pact_alpha_value(const char* op, float alpha) {
  TORCH_CHECK_VALUE(std::isfinite(alpha) && alpha > 0.f,
                    fmt::format("{}: alpha must be positive and finite, got {}", op, alpha));
}

}  // namespace qatkit::ops
