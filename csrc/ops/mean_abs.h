// _mean_abs: mean |x| per tensor or per channel (float32, one element per channel), the statistic
// of the binary / ternary scalings (see mean_abs.cpp; the CPU kernel is in cpu/mean_abs.cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <tuple>

namespace qatkit::ops {

/// The _mean_abs op through the dispatcher (float32, one element per channel).
at::Tensor mean_abs(const at::Tensor& input, std::optional<std::int64_t> axis);

/// The _mean_and_mean_abs op through the dispatcher: (mean x, mean |x|), float32, one element per
/// channel each, both from float64 sums (the CPU kernel: one pass in _mean_abs's lane order, so the
/// scale is _mean_abs's bits).
std::tuple<at::Tensor, at::Tensor> mean_and_mean_abs(const at::Tensor& input, std::optional<std::int64_t> axis);

std::tuple<at::Tensor, at::Tensor> mean_and_mean_abs_composite(const at::Tensor& input,
                                                               std::optional<std::int64_t> axis);

/// The device-generic kernel (an L1 norm over the reduction dims), registered at
/// CompositeExplicitAutograd; the CPU kernel falls back to it for layouts it does not cover.
at::Tensor mean_abs_composite(const at::Tensor& input, std::optional<std::int64_t> axis);

}  // namespace qatkit::ops
