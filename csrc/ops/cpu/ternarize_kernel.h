// TWN on the CPU in two passes over the weights (docs/papers.md §5): one fused statistic pass (sum and
// count of |W| above the threshold) and one ternary pass into the destination — no |W|, mask or
// where() temporaries the size of the input.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>

namespace qatkit::ops {

/// TWN of `input` (checked by the caller) given its float32 mean |W| per tensor / channel:
/// written into `out` when it is non-null and contiguous, else into a new tensor, which is
/// returned. Per tensor or per channel along any axis (a channel axis other than 0 is moved to the
/// front for the statistic pass, a copy).
at::Tensor twn_cpu(const at::Tensor& input, const at::Tensor& mean_abs, std::optional<std::int64_t> axis,
                   at::Tensor* out);

}  // namespace qatkit::ops
