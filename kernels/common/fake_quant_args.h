// Plain-data launch descriptions of the fake-quant family (fake quantize and its backward, LSQ,
// PACT), shared by the CPU and CUDA tiers.
#pragma once

#include <cstdint>

#include "dtype.h"
#include "macros.h"

namespace qatkit::kernels {

/// Forward arguments. Tensors are contiguous; element i uses the qparams of channel
/// `(i / inner) % channels`, which covers per-tensor (inner = numel, channels = 1),
/// per-channel along an axis (inner = product of the trailing sizes) and per-group along the
/// last dim (inner = group_size, channels = numel / group_size).
struct FakeQuantArgs {
  const void* input = nullptr;
  void* output = nullptr;
  /// Optional bit mask (bit i of byte i/8 = "unclamped q of element i inside [qmin, qmax]").
  std::uint8_t* mask = nullptr;
  const float* scale = nullptr;       ///< `channels` positive, normal float32 scales
  const float* zero_point = nullptr;  ///< `channels` integer-valued zero points
  /// Optional on/off switch read where the data lives (no host sync): when it points to 0 the
  /// launch copies input to output and sets every mask bit (identity gradient).
  const std::uint8_t* enabled = nullptr;
  std::int64_t numel = 0;
  std::int64_t inner = 1;
  std::int64_t channels = 1;
  float quant_min = 0.f;
  float quant_max = 0.f;
  DType dtype = DType::kFloat32;
};

/// Backward arguments: grad_input[i] = bit i of mask ? grad_output[i] : 0.
struct FakeQuantBackwardArgs {
  const void* grad_output = nullptr;
  const std::uint8_t* mask = nullptr;
  void* grad_input = nullptr;
  std::int64_t numel = 0;
  DType dtype = DType::kFloat32;
};

/// Learned-step-size (LSQ) backward: the forward's launch (`fq`: input, layout, range, dtype; its
/// scale / zero_point are the effective qparams the forward used: scale clamped to >= eps, zero
/// point rounded and clamped into the range; output, mask and enabled unused) plus the gradients.
struct LsqBackwardArgs {
  FakeQuantArgs fq;
  const void* grad_output = nullptr;
  void* grad_input = nullptr;
};

/// PACT backward (docs/papers.md §6.3) over contiguous tensors with one clipping level alpha.
struct PactBackwardArgs {
  const void* input = nullptr;
  const void* grad_output = nullptr;
  void* grad_input = nullptr;
  const float* alpha = nullptr;  ///< one float32, in the same memory as the tensors (no host sync)
  std::int64_t numel = 0;
  DType dtype = DType::kFloat32;
};

/// Bytes of a bit mask covering n elements.
QATKIT_HD constexpr std::int64_t mask_bytes(std::int64_t n) { return (n + 7) / 8; }

}  // namespace qatkit::kernels
