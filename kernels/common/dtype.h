// Element types the torch-free kernels accept, shared by every kernel family (CPU and CUDA).
#pragma once

namespace qatkit::kernels {

/// Floating element types. Half types are computed in float32, float64 in float64.
enum class DType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

/// Integer code types of the quantize family (quantize_affine / dequantize_affine).
enum class CodeType : int { kInt8 = 0, kUInt8 = 1, kInt16 = 2, kInt32 = 3 };

}  // namespace qatkit::kernels
