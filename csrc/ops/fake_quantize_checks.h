// Argument checks and launch preparation of the fake-quantize family (fake_quantize and its
// backward), shared by its CPU, CUDA and Meta kernels and by the ops built on the same qparams
// (choose_qparams, fake_quantize_learnable, quantize_affine).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>

#include "../../kernels/common/fake_quant_args.h"
#include "checks.h"

namespace qatkit::ops {

/// Checks the input dtype, the integer range and axis/group_size against input's rank and last
/// dim: what every quantizer op with these arguments needs (fake_quantize, choose_qparams).
void check_input_and_range(const char* op, const at::Tensor& input, std::int64_t quant_min, std::int64_t quant_max,
                           std::optional<std::int64_t> axis, std::optional<std::int64_t> group_size);

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

/// Launch description of the backward for contiguous grad and mask, writing grad_input.
kernels::FakeQuantBackwardArgs backward_args(const at::Tensor& grad, const at::Tensor& mask, at::Tensor& grad_input);

/// Checks `_fake_quantize_backward` arguments (grad floating, mask uint8 of ceil(numel/8) bytes).
void check_backward_args(const at::Tensor& grad, const at::Tensor& mask);

}  // namespace qatkit::ops
