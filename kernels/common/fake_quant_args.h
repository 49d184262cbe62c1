// Plain-data description of one fake-quantize launch, shared by the CPU and CUDA tiers.
#pragma once

#include <cstdint>

#include "macros.h"

namespace qatkit::kernels {

/// Element types the kernels accept. Half types are computed in float32, float64 in float64.
enum class DType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

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

/// Learned-step-size (LSQ) backward over contiguous tensors, same channel layout as the forward.
/// scale / zero_point are the effective qparams the forward used (scale clamped to >= eps, zero
/// point rounded and clamped into the range).
struct LsqBackwardArgs {
  const void* input = nullptr;
  const void* grad_output = nullptr;
  void* grad_input = nullptr;
  const float* scale = nullptr;
  const float* zero_point = nullptr;
  std::int64_t numel = 0;
  std::int64_t inner = 1;
  std::int64_t channels = 1;
  float quant_min = 0.f;
  float quant_max = 0.f;
  DType dtype = DType::kFloat32;
};

/// PACT backward (papers.md §6.3) over contiguous tensors with one clipping level alpha.
struct PactBackwardArgs {
  const void* input = nullptr;
  const void* grad_output = nullptr;
  void* grad_input = nullptr;
  const float* alpha = nullptr;  ///< one float32, in the same memory as the tensors (no host sync)
  std::int64_t numel = 0;
  DType dtype = DType::kFloat32;
};

/// Straight-through estimators of sign() (papers.md §4-5; Bi-Real's ApproxSign; BNN+'s SignSwish).
enum class SignEstimator : int { kIdentity = 0, kClippedSte = 1, kApproxSign = 2, kSwishSign = 3 };

/// Binarization, same channel layout as FakeQuantArgs. v = x - center[c]; deterministic:
/// y = sign(v) * alpha[c] with sign(0) = +1 (or -1 when zero_negative, BitNet's Sign);
/// stochastic (seed != nullptr, BinaryConnect): +1 with probability clamp((v + 1) / 2, 0, 1),
/// drawn by Philox keyed by *seed at the element index. NaN stays NaN.
/// Ternary (threshold != nullptr, TWN): y = |v| > threshold[c] ? sign(v) * alpha[c] : 0 (the
/// threshold and alpha already rounded to the input's dtype by the caller).
struct BinarizeArgs {
  const void* input = nullptr;
  void* output = nullptr;
  const float* center = nullptr;     ///< per-channel shift, or nullptr for 0
  const float* alpha = nullptr;      ///< per-channel magnitude, or nullptr for 1
  const float* threshold = nullptr;  ///< per-channel ternary dead zone, or nullptr (binary)
  const std::int64_t* seed = nullptr;
  std::int64_t numel = 0;
  std::int64_t inner = 1;
  std::int64_t channels = 1;
  bool zero_negative = false;
  DType dtype = DType::kFloat32;
};

/// Binarize backward: grad_input = grad * estimator'(v), v = x - center[c] (scales constant).
struct BinarizeBackwardArgs {
  const void* input = nullptr;
  const void* grad_output = nullptr;
  void* grad_input = nullptr;
  const float* center = nullptr;
  std::int64_t numel = 0;
  std::int64_t inner = 1;
  std::int64_t channels = 1;
  SignEstimator estimator = SignEstimator::kClippedSte;
  float beta = 1.f;
  DType dtype = DType::kFloat32;
};

/// Bytes of a bit mask covering n elements.
QATKIT_HD constexpr std::int64_t mask_bytes(std::int64_t n) { return (n + 7) / 8; }

}  // namespace qatkit::kernels
