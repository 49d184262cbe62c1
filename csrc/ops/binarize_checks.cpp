// Checks, statistics and launch preparation of the binarize family (see binarize_checks.h).
#include "binarize_checks.h"

#include <ATen/ops/ones.h>
#include <c10/util/Exception.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

#include "fake_quantize_checks.h"
#include "mean_abs.h"

namespace qatkit::ops {

BinaryScaling parse_scaling(const char* op, c10::string_view scaling) {
  if (scaling == "none") return BinaryScaling::kNone;
  if (scaling == "mean_abs") return BinaryScaling::kMeanAbs;
  if (scaling == "bitnet") return BinaryScaling::kBitNet;
  TORCH_CHECK_VALUE(false, fmt::format("{}: scaling must be one of 'none', 'mean_abs', 'bitnet', got '{}'", op,
                                       std::string(scaling)));
}

kernels::SignEstimator parse_estimator(const char* op, c10::string_view estimator) {
  if (estimator == "identity") return kernels::SignEstimator::kIdentity;
  if (estimator == "clipped_ste") return kernels::SignEstimator::kClippedSte;
  if (estimator == "approx_sign") return kernels::SignEstimator::kApproxSign;
  if (estimator == "swish_sign") return kernels::SignEstimator::kSwishSign;
  TORCH_CHECK_VALUE(false, fmt::format("{}: estimator must be one of 'identity', 'clipped_ste', 'approx_sign', "
                                       "'swish_sign', got '{}'",
                                       op, std::string(estimator)));
}

void check_binarize_args(const char* op, const at::Tensor& input, std::optional<std::int64_t> axis, double beta,
                         const std::optional<at::Tensor>& seed) {
  check_input_and_range(op, input, -1, 1, axis, std::nullopt);
  TORCH_CHECK_VALUE(std::isfinite(beta) && beta > 0.0,
                    fmt::format("{}: beta must be positive and finite, got {}", op, beta));
  if (seed.has_value() && seed->defined()) {
    TORCH_CHECK_TYPE(seed->scalar_type() == at::kLong,
                     fmt::format("{}: seed must be an int64 tensor, got {}", op, c10::toString(seed->scalar_type())));
    TORCH_CHECK_VALUE(seed->sym_numel() == 1, fmt::format("{}: seed must have 1 element, got {}", op,
                                                          seed->sym_numel().guard_int(__FILE__, __LINE__)));
    TORCH_CHECK_VALUE(seed->device() == input.device(), fmt::format("{}: seed must be on input's device {}, got {}", op,
                                                                    input.device().str(), seed->device().str()));
  }
}

void check_binary_stats_shape(const char* op, const at::Tensor& input, const std::optional<at::Tensor>& center,
                              const std::optional<at::Tensor>& alpha, std::optional<std::int64_t> axis) {
  const c10::SymInt channels =
      axis.has_value() ? input.sym_size(*axis < 0 ? *axis + input.dim() : *axis) : c10::SymInt(1);
  for (const auto* t : {&center, &alpha}) {
    if (!t->has_value() || !(*t)->defined()) continue;
    const at::Tensor& v = **t;
    const char* name = t == &center ? "center" : "alpha";
    TORCH_CHECK_TYPE(v.scalar_type() == at::kFloat,
                     fmt::format("{}: {} must be float32, got {}", op, name, c10::toString(v.scalar_type())));
    TORCH_CHECK_VALUE(v.device() == input.device(), fmt::format("{}: {} must be on input's device {}, got {}", op, name,
                                                                input.device().str(), v.device().str()));
    TORCH_CHECK_VALUE(input.sym_numel() == 0 || v.sym_numel() == channels,
                      fmt::format("{}: {} must have {} elements (one per channel), got {}", op, name,
                                  channels.guard_int(__FILE__, __LINE__), v.sym_numel().guard_int(__FILE__, __LINE__)));
  }
}

void check_binarize_backward_args(const char* op, const at::Tensor& grad, const at::Tensor& input,
                                  const std::optional<at::Tensor>& center, std::optional<std::int64_t> axis,
                                  double beta) {
  check_binarize_args(op, input, axis, beta, std::nullopt);
  check_binary_stats_shape(op, input, center, std::nullopt, axis);
  check_like(op, "grad", grad, input);
}

BinaryStats binary_stats(const at::Tensor& input, BinaryScaling scaling, std::optional<std::int64_t> axis) {
  TORCH_INTERNAL_ASSERT(input.is_contiguous(), "binary_stats: callers pass the contiguous input");
  BinaryStats st;
  if (scaling == BinaryScaling::kNone || input.sym_numel() == 0) return st;
  if (scaling == BinaryScaling::kBitNet) {
    // the centre and the scale from float64 sums in one pass (_mean_and_mean_abs): on the CPU in a
    // fixed lane order; on other devices a float64 sum in theirs, so the centre agrees across
    // devices in all but a vanishing share of cases, as the scale does (it was a float32 mean in
    // each device's order, and a second pass on the CPU)
    std::tie(st.center, st.alpha) = mean_and_mean_abs(input, axis);
    st.center = st.center.reshape(-1);
    return st;
  }
  st.alpha = mean_abs(input, axis);  // one pass, no |W| temporary (see _mean_abs)
  return st;
}

at::Tensor binary_codes_scale(const at::Tensor& input, const BinaryStats& st, std::optional<std::int64_t> axis) {
  if (st.alpha.defined()) return st.alpha.reshape(-1);
  const c10::SymInt channels = axis.has_value() ? input.sym_size(*axis) : c10::SymInt(1);
  return at::ones_symint({channels}, input.options().dtype(at::kFloat));
}

const float* optional_float_ptr(const std::optional<at::Tensor>& t, at::Tensor& keep) {
  if (!t.has_value() || !t->defined()) return nullptr;
  keep = as_float(*t).contiguous();
  return keep.const_data_ptr<float>();
}

BinarizeLaunch prepare_binarize(const char* op, const at::Tensor& input, const std::optional<at::Tensor>& center,
                                const std::optional<at::Tensor>& alpha, std::optional<std::int64_t> axis,
                                bool zero_negative, const std::optional<at::Tensor>& seed, at::Tensor& out) {
  check_binarize_args(op, input, axis, 1.0, seed);
  check_binary_stats_shape(op, input, center, alpha, axis);
  BinarizeLaunch l;
  l.input = input.contiguous();
  kernels::BinarizeArgs& a = l.args;
  a.input = l.input.const_data_ptr();
  a.output = out.mutable_data_ptr();
  a.center = optional_float_ptr(center, l.center);
  a.alpha = optional_float_ptr(alpha, l.alpha);
  if (seed.has_value() && seed->defined()) {
    l.seed = seed->contiguous();
    a.seed = l.seed.const_data_ptr<std::int64_t>();
  }
  a.numel = l.input.numel();
  std::tie(a.inner, a.channels) = binary_layout(l.input, axis);
  a.zero_negative = zero_negative;
  a.dtype = kernel_dtype(l.input);
  return l;
}

BinarizeBackwardLaunch prepare_binarize_backward(const char* op, const at::Tensor& grad, const at::Tensor& input,
                                                 const std::optional<at::Tensor>& center,
                                                 std::optional<std::int64_t> axis, c10::string_view estimator,
                                                 double beta, at::Tensor& grad_input) {
  check_binarize_backward_args(op, grad, input, center, axis, beta);
  BinarizeBackwardLaunch l;
  l.input = input.contiguous();
  l.grad = grad.contiguous();
  kernels::BinarizeBackwardArgs& a = l.args;
  a.input = l.input.const_data_ptr();
  a.grad_output = l.grad.const_data_ptr();
  a.grad_input = grad_input.mutable_data_ptr();
  a.center = optional_float_ptr(center, l.center);
  a.numel = l.input.numel();
  std::tie(a.inner, a.channels) = binary_layout(l.input, axis);
  a.estimator = parse_estimator(op, estimator);
  a.beta = static_cast<float>(beta);
  a.dtype = kernel_dtype(l.input);
  return l;
}

std::pair<std::int64_t, std::int64_t> binary_layout(const at::Tensor& input, std::optional<std::int64_t> axis) {
  std::int64_t inner = 1, channels = 1;
  if (axis.has_value()) {
    const std::int64_t ax = *axis < 0 ? *axis + input.dim() : *axis;
    channels = input.size(ax);
    for (std::int64_t d = ax + 1; d < input.dim(); ++d) inner *= input.size(d);
  } else {
    inner = input.numel();
  }
  return {std::max<std::int64_t>(inner, 1), std::max<std::int64_t>(channels, 1)};
}

}  // namespace qatkit::ops
