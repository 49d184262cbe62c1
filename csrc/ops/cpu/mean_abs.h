// mean |x| per tensor or per leading-dim channel on the CPU, from the kernel tier's float64
// abs-sum (one pass, fixed summation order: the same bits for any thread count or ISA).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>

namespace qatkit::ops {

/// float32 vector of mean |x| (one element per tensor, or per channel of `axis`; other axes than 0
/// are moved to the front first). Returns an undefined tensor for empty inputs.
at::Tensor mean_abs_cpu(const at::Tensor& input, std::optional<std::int64_t> axis);

}  // namespace qatkit::ops
