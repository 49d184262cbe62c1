// Scale / zero-point arithmetic shared by choose_qparams and the fused observer (ATen ops on
// statistic-sized tensors; any device, no host sync).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <tuple>
#include <utility>
#include <vector>

namespace qatkit::ops {

/// (min, max) of each row of a 2-d tensor as float32 vectors; {0} for rows without elements.
std::pair<at::Tensor, at::Tensor> row_min_max(const at::Tensor& rows);

/// choose_qparams' rows of `input` (one per channel along `axis`, per group of `group_size` along
/// the last dim, or one for the tensor) and the shape its scale / zero_point come back in.
std::pair<at::Tensor, std::vector<c10::SymInt>> qparams_rows(const at::Tensor& input,
                                                              std::optional<std::int64_t> axis,
                                                              std::optional<std::int64_t> group_size);

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

/// A one-element bool / integer switch tensor on input's device, or ValueError / TypeError naming
/// `op` and `name`.
void check_flag(const char* op, const char* name, const at::Tensor& t, const at::Tensor& input);

/// The argument checks of _observer_update (shapes, dtypes, devices, range, momentum, flag), raising
/// ValueError / TypeError naming `op` and the argument.
void check_observer_update_args(const char* op, const at::Tensor& input, const at::Tensor& running_min,
                                const at::Tensor& running_max, const at::Tensor& scale, const at::Tensor& zero_point,
                                const at::Tensor& observer_on, double momentum, std::int64_t quant_min,
                                std::int64_t quant_max, std::optional<std::int64_t> axis);

/// True while autograd's backward pass runs (this thread executes a graph task): activation
/// checkpointing recomputes a forward there, eager or compiled, and an observer must not fold the
/// batch in a second time (its first forward did); the recomputation then quantizes with the range
/// that first forward left, which is the range that forward quantized with.
bool recomputing_in_backward();

/// _observer_update on any device: fold the batch min/max of `input` into the running range
/// (moving average or min/max) and refresh scale / zero_point, rows whose batch is non-finite (or
/// wider than float32) keeping their state, nothing updated inside a backward pass; `check_finite` raises ValueError for such a batch
/// instead (a host read: the CPU kernel asks for it, the composite does not).
void observer_update_impl(const at::Tensor& input, at::Tensor& running_min, at::Tensor& running_max, at::Tensor& scale,
                          at::Tensor& zero_point, const at::Tensor& observer_on, double momentum, bool moving_average,
                          std::int64_t quant_min, std::int64_t quant_max, bool symmetric,
                          std::optional<std::int64_t> axis, bool check_finite);

}  // namespace qatkit::ops
