// Argument checks of the integer GEMM family, shared by its CPU and Meta kernels.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>

namespace qatkit::ops {

/// linear_int8's (ternary: linear_w2a8's) checks (dtypes, shapes, devices, the 8-bit activation range, a finite positive
/// scale); returns the activation shift (128 for a [0, 255] range, else 0).
std::int32_t check_linear_int8_args(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& corr,
                                    const at::Tensor& out_scale, double act_scale, std::int64_t zp, std::int64_t qmin,
                                    std::int64_t qmax, const std::optional<at::Tensor>& bias, bool ternary = false);

}  // namespace qatkit::ops
