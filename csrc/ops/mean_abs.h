// _mean_abs: mean |x| per tensor or per channel (float32, one element per channel), the statistic
// of the binary / ternary scalings (see mean_abs.cpp; the CPU kernel is in cpu/mean_abs.cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>

namespace qatkit::ops {

/// The _mean_abs op through the dispatcher (float32, one element per channel).
at::Tensor mean_abs(const at::Tensor& input, std::optional<std::int64_t> axis);

/// The device-generic kernel (an L1 norm over the reduction dims), registered at
/// CompositeExplicitAutograd; the CPU kernel falls back to it for layouts it does not cover.
at::Tensor mean_abs_composite(const at::Tensor& input, std::optional<std::int64_t> axis);

}  // namespace qatkit::ops
