// Checks of the dynamic absmax quantizers (quantize_per_token, quantize_per_tensor_dynamic;
// docs/papers.md §7.2), shared by the composite kernel in dynamic_quantize.cpp and the CPU kernels
// in cpu/dynamic_quantize_kernel.cpp.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "checks.h"

namespace qatkit::ops {

/// Checks the dynamic absmax quantizers' arguments (floating input, 1 <= quant_max <= 32767,
/// per token: at least 1 dim).
void check_dynamic_quantize_args(const char* op, const at::Tensor& input, std::int64_t quant_max, bool per_token);

}  // namespace qatkit::ops
