// Internal: the integer-kernel forwards of converted layers (csrc/nn/integer.cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include "qatkit/nn.h"

namespace qatkit::nn::detail {

/// The plan's kernel (linear_int8 / w4a8 / w2a8 / w1a8 / w1a1, dynamic or weight-only) on x.
/// divisor (SmoothQuant's smoothing, float32 [K]): x / divisor first — inside linear_int8's
/// quantization pass (input_divisor) where the plan runs that kernel, else as a division.
torch::Tensor integer_linear(const IntegerKernelPlan& p, const torch::Tensor& x, const torch::Tensor& divisor = {});

/// conv2d_int8 with the plan's operands on an NCHW input (Conv1d: a 1 x k Conv2d).
torch::Tensor integer_conv(const IntegerKernelPlan& p, const torch::Tensor& x4, at::IntArrayRef k, at::IntArrayRef st,
                           at::IntArrayRef pad, at::IntArrayRef dil);

}  // namespace qatkit::nn::detail
