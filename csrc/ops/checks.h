// Checks and helpers every op family shares: dtype/device/shape text, the granularity of
// axis/group_size, the out= rules, reduction dims and kernel dtypes. Family checks live next to
// their family (fake_quantize_checks.h, fake_quantize_learnable_checks.h, pact_checks.h,
// dynamic_quantize_checks.h, binarize_checks.h, ternarize_common.h, quantize_checks.h).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "../../kernels/common/dtype.h"

namespace qatkit::ops {

/// float32, float64, float16 or bfloat16: the floating dtypes every kernel tier covers.
bool is_supported_float(at::ScalarType t);

/// TypeError naming `op` and `what` unless `t` has a supported floating dtype.
void check_float_dtype(const char* op, const char* what, const at::Tensor& t);

/// "[2, 3]" for a (possibly symbolic) shape, for messages. Formatted by fmt, never by an ostream:
/// a GCC 13 build (the H200 machine's /opt/gcc) crashed inside std::ostream's integer insertion
/// (c10::str of a shape) in libqatkit.so (docs/gpu.md, 2026-12-04, sixteenth session).
std::string shape_str(c10::SymIntArrayRef s);
std::string shape_str(c10::IntArrayRef s);

/// A (possibly symbolic) integer for messages, by fmt (see shape_str).
std::string int_str(const c10::SymInt& v);

/// Checks axis (in range) / group_size (positive, divides the last dim), not both.
void check_granularity(const char* op, const at::Tensor& input, std::optional<std::int64_t> axis,
                       std::optional<std::int64_t> group_size);

/// (inner, channels) of a contiguous input under the affine granularities: per tensor
/// (numel, 1), per channel along `axis` (product of the trailing sizes, size(axis)), per group
/// along the last dim (group_size, numel / group_size). Never below 1 (empty inputs).
std::pair<std::int64_t, std::int64_t> affine_layout(const at::Tensor& input, std::optional<std::int64_t> axis,
                                                    std::optional<std::int64_t> group_size);

/// Checks that `t` (named `name`, e.g. "grad") has `like`'s dtype, shape and device.
void check_like(const char* op, const char* name, const at::Tensor& t, const at::Tensor& like);

/// Checks an optional on/off switch tensor: one element, bool or integer, on input's device.
void check_enabled_flag(const char* op, const at::Tensor& input, const std::optional<at::Tensor>& enabled);

/// `t` as float32 without dispatching a no-op conversion (an aten::to that returns its input
/// is flagged by torch's schema checks inside our kernels).
inline at::Tensor as_float(const at::Tensor& t) { return t.scalar_type() == at::kFloat ? t : t.to(at::kFloat); }

/// Dims a per-tensor (all) or per-channel (all but `axis`, negative allowed) statistic reduces
/// over. Empty for per channel along a tensor's only axis: callers must not hand that to an ATen
/// reduction, which reads an empty dim list as "every dim".
std::vector<std::int64_t> reduction_dims(const at::Tensor& input, std::optional<std::int64_t> axis);

/// Kernel dtype of a floating tensor (after the checks above have accepted it).
kernels::DType kernel_dtype(const at::Tensor& t);

/// Checks the out= tensor as ATen's out= ops do (dtype, device, overlap) and resizes it. `others`
/// names further operands (scale, zero_point, ...) out must not share memory with: checked before
/// the resize, so a bad out= never reshapes the caller's qparams.
void check_and_resize_out(const char* op, const at::Tensor& input, const at::Tensor& out,
                          std::initializer_list<std::pair<const char*, const at::Tensor*>> others = {});

}  // namespace qatkit::ops
