// Checks and launch preparation of the learned-step-size family (fake_quantize_learnable and its
// backward, docs/papers.md §6.1-6.2), shared by its CPU, CUDA and Meta kernels.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <utility>

#include "fake_quantize_checks.h"

namespace qatkit::ops {

/// Checks grad_factor: finite (a NaN or Inf factor would silently poison the qparam gradients).
void check_grad_factor(const char* op, double grad_factor);

/// Checks `_fake_quantize_learnable_backward` arguments: those of the forward, plus grad shaped,
/// typed and placed like input, and grad_factor.
void check_learnable_backward_args(const char* op, const at::Tensor& grad, const at::Tensor& input,
                                   const at::Tensor& scale, const at::Tensor& zero_point, std::int64_t quant_min,
                                   std::int64_t quant_max, std::optional<std::int64_t> axis,
                                   std::optional<std::int64_t> group_size, double grad_factor);

/// Value checks of the user's learned qparams (needs their data: the CPU kernels run it), naming
/// `scale` / `zero_point` as the caller passed them: finite (the effective scale is clamped to at
/// least float32 eps, so any finite scale works).
void check_learned_qparam_values(const char* op, const at::Tensor& scale, const at::Tensor& zero_point);

/// Effective qparams of a learned quantizer: float32 scale clamped to at least float32 eps, zero
/// point (float32) rounded half to even and clamped into [quant_min, quant_max]. ATen ops on the
/// qparam tensors' device: no host sync.
std::pair<at::Tensor, at::Tensor> effective_learned_qparams(const at::Tensor& scale, const at::Tensor& zero_point,
                                                            std::int64_t quant_min, std::int64_t quant_max);

/// LSQ backward launch description from a prepared forward (input, effective qparams, layout),
/// the contiguous incoming gradient and the grad_input buffer.
kernels::LsqBackwardArgs lsq_backward_args(const PreparedFakeQuant& p, const at::Tensor& grad, at::Tensor& grad_input);

/// The device-generic forward (registered at CompositeExplicitAutograd): fake_quantize with the
/// effective qparams; the CPU kernel runs check_learned_qparam_values first.
at::Tensor fake_quantize_learnable_composite(const at::Tensor& input, const at::Tensor& scale,
                                             const at::Tensor& zero_point, std::int64_t quant_min,
                                             std::int64_t quant_max, std::optional<std::int64_t> axis,
                                             std::optional<std::int64_t> group_size, double grad_factor);

}  // namespace qatkit::ops
