// Plain-data launch descriptions of the sign family (binarize, ternary, the sign estimators'
// backward), shared by the CPU and CUDA tiers.
#pragma once

#include <cstdint>

#include "dtype.h"

namespace qatkit::kernels {

/// Straight-through estimators of sign() (docs/papers.md §4-5; Bi-Real's ApproxSign; BNN+'s SignSwish).
enum class SignEstimator : int { kIdentity = 0, kClippedSte = 1, kApproxSign = 2, kSwishSign = 3 };

/// Binarization over contiguous tensors; element i uses channel `(i / inner) % channels`.
/// v = x - center[c]; deterministic: y = sign(v) * alpha[c] with sign(0) = +1 (or -1 when
/// zero_negative, BitNet's Sign); stochastic (seed != nullptr, BinaryConnect): +1 with probability
/// clamp((v + 1) / 2, 0, 1), drawn by Philox keyed by *seed at the element index. NaN stays NaN.
struct BinarizeArgs {
  const void* input = nullptr;
  void* output = nullptr;
  const float* center = nullptr;  ///< per-channel shift, or nullptr for 0
  const float* alpha = nullptr;   ///< per-channel magnitude, or nullptr for 1
  const std::int64_t* seed = nullptr;
  std::int64_t numel = 0;
  std::int64_t inner = 1;
  std::int64_t channels = 1;
  bool zero_negative = false;
  DType dtype = DType::kFloat32;
};

/// Ternarization (TWN, docs/papers.md §4.3): y = |x| > threshold[c] ? sign(x) * alpha[c] : 0, the
/// threshold and alpha already rounded to the input's dtype by the caller. NaN compares false: 0
/// (the op rejects non-finite input before it gets here). Same channel layout as BinarizeArgs.
struct TernaryArgs {
  const void* input = nullptr;
  void* output = nullptr;
  const float* alpha = nullptr;      ///< per-channel magnitude
  const float* threshold = nullptr;  ///< per-channel dead zone
  std::int64_t numel = 0;
  std::int64_t inner = 1;
  std::int64_t channels = 1;
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

}  // namespace qatkit::kernels
