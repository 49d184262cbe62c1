// Argument checks and launch preparation shared by the CPU, CUDA and Meta fake-quantize kernels.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <tuple>
#include <vector>

#include "../../kernels/common/fake_quant_args.h"

namespace qatkit::ops {

/// Checks the input dtype, the integer range and axis/group_size against input's rank and last
/// dim: what every quantizer op with these arguments needs (fake_quantize, choose_qparams).
void check_input_and_range(const char* op, const at::Tensor& input, std::int64_t quant_min, std::int64_t quant_max,
                           std::optional<std::int64_t> axis, std::optional<std::int64_t> group_size);

/// Checks axis (in range) / group_size (positive, divides the last dim), not both.
void check_granularity(const char* op, const at::Tensor& input, std::optional<std::int64_t> axis,
                       std::optional<std::int64_t> group_size);

/// Checks scale (float32) and zero_point (integer or float) dtypes, devices (input's) and shapes
/// against input's granularity (per tensor: 1 element; axis: size(axis); group: input.shape[:-1] +
/// [last / group_size]).
void check_qparams_layout(const char* op, const at::Tensor& input, const at::Tensor& scale,
                          const at::Tensor& zero_point, std::optional<std::int64_t> axis,
                          std::optional<std::int64_t> group_size);

/// Checks dtypes, devices, shapes and the integer arguments (never tensor values), using
/// symbolic sizes so Meta/fake tensors see the same errors as real ones. `op` prefixes messages.
void check_fake_quantize_args(const char* op, const at::Tensor& input, const at::Tensor& scale,
                              const at::Tensor& zero_point, std::int64_t quant_min, std::int64_t quant_max,
                              std::optional<std::int64_t> axis, std::optional<std::int64_t> group_size);

/// Checks qparam values (needs the data, so CPU only): scale finite, normal and positive;
/// zero_point integer-valued inside [quant_min, quant_max]. Inputs are the prepared float32 copies.
void check_qparam_values(const char* op, const at::Tensor& scale_f32, const at::Tensor& zero_point_f32,
                         std::int64_t quant_min, std::int64_t quant_max);

/// (inner, channels) of a contiguous input under the affine granularities: per tensor
/// (numel, 1), per channel along `axis` (product of the trailing sizes, size(axis)), per group
/// along the last dim (group_size, numel / group_size). Never below 1 (empty inputs).
std::pair<std::int64_t, std::int64_t> affine_layout(const at::Tensor& input, std::optional<std::int64_t> axis,
                                                    std::optional<std::int64_t> group_size);

/// Contiguous input and float32 qparams plus the complete launch description.
struct PreparedFakeQuant {
  at::Tensor input;
  at::Tensor scale;
  at::Tensor zero_point;
  at::Tensor enabled;  ///< uint8 copy of the optional on/off switch (undefined if none)
  kernels::FakeQuantArgs args;
};

/// Runs check_fake_quantize_args and builds the contiguous operands, the channel layout and the
/// pointers of a launch that writes `out` (contiguous, input's shape) and optionally `mask`.
PreparedFakeQuant prepare_fake_quantize(const char* op, const at::Tensor& input, const at::Tensor& scale,
                                        const at::Tensor& zero_point, std::int64_t quant_min, std::int64_t quant_max,
                                        std::optional<std::int64_t> axis, std::optional<std::int64_t> group_size,
                                        at::Tensor& out, std::uint8_t* mask,
                                        const std::optional<at::Tensor>& enabled = std::nullopt);

/// Checks an optional on/off switch tensor: one element, bool or integer, on input's device.
void check_enabled_flag(const char* op, const at::Tensor& input, const std::optional<at::Tensor>& enabled);

/// Checks `_fake_quantize_learnable_backward` arguments: those of the forward, plus grad shaped
/// and typed like input.
void check_learnable_backward_args(const char* op, const at::Tensor& grad, const at::Tensor& input,
                                   const at::Tensor& scale, const at::Tensor& zero_point, std::int64_t quant_min,
                                   std::int64_t quant_max, std::optional<std::int64_t> axis,
                                   std::optional<std::int64_t> group_size);

/// Checks PACT arguments: floating input, alpha a float32 tensor with one element on input's
/// device, 1 <= quant_max <= 65535.
void check_pact_args(const char* op, const at::Tensor& input, const at::Tensor& alpha, std::int64_t quant_max);

/// Checks the PACT backward arguments (grad shaped and typed like input, alpha as above).
void check_pact_backward_args(const char* op, const at::Tensor& grad, const at::Tensor& input, const at::Tensor& alpha);

/// CPU value check of alpha: finite and positive.
void check_pact_alpha_value(const char* op, float alpha);

/// Checks the dynamic absmax quantizers' arguments (floating input, 1 <= quant_max <= 32767,
/// per token: at least 1 dim).
void check_dynamic_quantize_args(const char* op, const at::Tensor& input, std::int64_t quant_max, bool per_token);

/// Effective qparams of a learned quantizer: float32 scale clamped to at least float32 eps, zero
/// point (float32) rounded half to even and clamped into [quant_min, quant_max]. ATen ops on the
/// qparam tensors' device: no host sync.
std::pair<at::Tensor, at::Tensor> effective_learned_qparams(const at::Tensor& scale, const at::Tensor& zero_point,
                                                            std::int64_t quant_min, std::int64_t quant_max);

/// LSQ backward launch description from a prepared forward (input, effective qparams, layout),
/// the contiguous incoming gradient and the grad_input buffer.
kernels::LsqBackwardArgs lsq_backward_args(const PreparedFakeQuant& p, const at::Tensor& grad, at::Tensor& grad_input);

/// `t` as float32 without dispatching a no-op conversion (an aten::to that returns its input
/// is flagged by torch's schema checks inside our kernels).
inline at::Tensor as_float(const at::Tensor& t) { return t.scalar_type() == at::kFloat ? t : t.to(at::kFloat); }

/// Dims a per-tensor (all) or per-channel (all but `axis`, negative allowed) statistic reduces
/// over. Empty for per channel along a tensor's only axis: callers must not hand that to an ATen
/// reduction, which reads an empty dim list as "every dim".
std::vector<std::int64_t> reduction_dims(const at::Tensor& input, std::optional<std::int64_t> axis);

/// Kernel dtype of a floating tensor (after the checks above have accepted it).
kernels::DType kernel_dtype(const at::Tensor& t);

/// Checks the out= tensor as ATen's out= ops do (dtype, device, overlap) and resizes it.
void check_and_resize_out(const char* op, const at::Tensor& input, const at::Tensor& out);

/// Launch description of the backward for contiguous grad and mask, writing grad_input.
kernels::FakeQuantBackwardArgs backward_args(const at::Tensor& grad, const at::Tensor& mask, at::Tensor& grad_input);

/// Checks `_fake_quantize_backward` arguments (grad floating, mask uint8 of ceil(numel/8) bytes).
void check_backward_args(const at::Tensor& grad, const at::Tensor& mask);

}  // namespace qatkit::ops
