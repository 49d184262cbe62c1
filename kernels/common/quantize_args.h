// Plain-data launch descriptions of the quantize family (float -> integer codes -> float),
// shared by the CPU and CUDA tiers. Same channel layout as FakeQuantArgs: element i uses the
// qparams of channel `(i / inner) % channels`.
#pragma once

#include <cstdint>

#include "dtype.h"

namespace qatkit::kernels {

/// codes[i] = clamp(rint(x * (1.0f / s)) + z, qmin, qmax), the rounding of fake_quantize (so
/// dequantize(quantize(x)) equals fake_quantize(x) bit for bit). NaN codes as z (dequantizes to
/// 0), +-Inf saturate to the range ends. qmin/qmax fit the code type (the op checks).
struct QuantizeArgs {
  const void* input = nullptr;
  void* codes = nullptr;
  const float* scale = nullptr;
  const float* zero_point = nullptr;  ///< integer-valued
  std::int64_t numel = 0;
  std::int64_t inner = 1;
  std::int64_t channels = 1;
  float quant_min = 0.f;
  float quant_max = 0.f;
  DType dtype = DType::kFloat32;
  CodeType code_type = CodeType::kInt8;
};

/// y[i] = (codes[i] - z) * s, computed in float64 for a float64 output and in float32 otherwise
/// (then rounded to the output dtype): the arithmetic of fake_quantize's last step.
struct DequantizeArgs {
  const void* codes = nullptr;
  void* output = nullptr;
  const float* scale = nullptr;
  const float* zero_point = nullptr;
  std::int64_t numel = 0;
  std::int64_t inner = 1;
  std::int64_t channels = 1;
  DType dtype = DType::kFloat32;
  CodeType code_type = CodeType::kInt8;
};

}  // namespace qatkit::kernels
