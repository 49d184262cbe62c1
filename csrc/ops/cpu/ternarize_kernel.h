// TWN on the CPU in two passes over the weights (papers.md §5): one fused statistic pass (sum and
// count of |W| above the threshold) and one ternary pass into the destination — no |W|, mask or
// where() temporaries the size of the input.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>

namespace qatkit::ops {

/// TWN of `input` (checked by the caller) given its float32 mean |W| per tensor / channel:
/// written into `out` when it is non-null and contiguous, else into a new tensor, which is
/// returned. Covers per tensor and axis 0; returns an undefined tensor for other axes (the caller
/// falls back to the composite implementation).
at::Tensor twn_cpu(const at::Tensor& input, const at::Tensor& mean_abs, std::optional<std::int64_t> axis,
                   at::Tensor* out);

}  // namespace qatkit::ops
