// Scale / zero-point arithmetic shared by choose_qparams and the fused observer (ATen ops on
// statistic-sized tensors; any device, no host sync).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <tuple>
#include <utility>

namespace qatkit::ops {

/// (min, max) of each row of a 2-d tensor as float32 vectors; {0} for rows without elements.
std::pair<at::Tensor, at::Tensor> row_min_max(const at::Tensor& rows);

/// (scale float32, zero_point int32) from min/max with 0 inside the range (choose_qparams'
/// formulas: torch.ao MinMaxObserver arithmetic, scale >= float32 eps).
std::pair<at::Tensor, at::Tensor> qparams_from_min_max(const at::Tensor& mn, const at::Tensor& mx,
                                                       std::int64_t quant_min, std::int64_t quant_max, bool symmetric);

/// choose_qparams on any device (ATen ops, SymInt shapes); `check_finite` reads the min/max on
/// the host to reject NaN / Inf input (the CPU kernel asks for it, the composite does not).
std::tuple<at::Tensor, at::Tensor> choose_qparams_impl(const at::Tensor& input, std::int64_t quant_min,
                                                       std::int64_t quant_max, bool symmetric,
                                                       std::optional<std::int64_t> axis,
                                                       std::optional<std::int64_t> group_size, bool check_finite);

}  // namespace qatkit::ops
