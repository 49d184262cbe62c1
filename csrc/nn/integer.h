// Internal: the integer-kernel forwards of converted layers (csrc/nn/integer.cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include "qatkit/nn.h"

namespace qatkit::nn::detail {

/// linear_int8 / linear_w2a8 / linear_w1a8 with the plan's operands.
torch::Tensor integer_linear(const IntegerKernelPlan& p, const torch::Tensor& x);

/// conv2d_int8 with the plan's operands on an NCHW input (Conv1d: a 1 x k Conv2d).
torch::Tensor integer_conv(const IntegerKernelPlan& p, const torch::Tensor& x4, at::IntArrayRef k, at::IntArrayRef st,
                           at::IntArrayRef pad, at::IntArrayRef dil);

}  // namespace qatkit::nn::detail
