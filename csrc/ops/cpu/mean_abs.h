// mean |x| per tensor or per leading-dim channel on the CPU, from the kernel tier's float64
// abs-sum (one pass, fixed summation order: the same bits for any thread count or ISA).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <tuple>

namespace qatkit::ops {

/// float32 vector of mean |x| (one element per tensor, or per channel of `axis`; other axes than 0
/// are moved to the front first). Returns an undefined tensor for empty inputs.
at::Tensor mean_abs_cpu(const at::Tensor& input, std::optional<std::int64_t> axis);

/// (mean x, mean |x|) in one float64 pass (ReduceKernels::sum_abssum; mean_abs_cpu's blocks, so the
/// scale is its bits); undefined tensors for an empty input.
std::tuple<at::Tensor, at::Tensor> mean_and_mean_abs_cpu(const at::Tensor& input, std::optional<std::int64_t> axis);

}  // namespace qatkit::ops
