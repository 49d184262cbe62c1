// Internal: the integer-kernel forwards of converted layers (csrc/nn/integer.cpp). Not installed;
// the QATKIT_API functions are exported for tests/cpp/test_nn.cpp.
#pragma once

#include <ATen/core/Tensor.h>

#include "qatkit/nn.h"

namespace qatkit::nn::detail {

/// The plan's kernel (linear_int8 / w4a8 / w2a8 / w1a8 / w1a1, dynamic or weight-only) on x.
/// divisor (SmoothQuant's smoothing, float32 [K]): x / divisor first — inside linear_int8's
/// quantization pass (input_divisor) where the plan runs that kernel, else as a division.
QATKIT_API torch::Tensor integer_linear(const IntegerKernelPlan& p, const torch::Tensor& x,
                                        const torch::Tensor& divisor = {});

/// The plan a CUDA input of a Linear in integer compute runs on: its plan in the row layouts on the
/// device of its codes (frozen.integer_rows, built at the first call there), or null without a plan.
/// Every plan kernel has a CUDA implementation (XNOR's linear_w1a1 / conv2d_w1a1 run the W1A8 kernels).
QATKIT_API const IntegerKernelPlan* cuda_linear_plan(QuantLinearImpl& l);

/// The same for a conv (conv2d_int8 / conv2d_w1a1 on CUDA).
QATKIT_API const IntegerKernelPlan* cuda_conv_plan(QuantConv2dImpl& l);
QATKIT_API const IntegerKernelPlan* cuda_conv_plan(QuantConv1dImpl& l);

/// conv2d_int8 with the plan's operands on an NCHW input (Conv1d: a 1 x k Conv2d).
QATKIT_API torch::Tensor integer_conv(const IntegerKernelPlan& p, const torch::Tensor& x4, at::IntArrayRef k,
                                      at::IntArrayRef st, at::IntArrayRef pad, at::IntArrayRef dil);

}  // namespace qatkit::nn::detail
