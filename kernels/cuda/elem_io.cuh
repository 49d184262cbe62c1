// Storage <-> compute types of the CUDA kernels: half types computed in float32, float64 in
// float64; bfloat16 rounded exactly as c10 does (half to even, canonical NaN) so CUDA equals CPU.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "../common/fake_quant_scalar.h"

namespace qatkit::kernels::cuda {
namespace {  // internal linkage, like the common headers

template <typename S>
struct Elem;
template <>
struct Elem<float> {
  using C = float;
  __device__ static C load(float v) { return v; }
  __device__ static float store(C v) { return v; }
};
template <>
struct Elem<double> {
  using C = double;
  __device__ static C load(double v) { return v; }
  __device__ static double store(C v) { return v; }
};
template <>
struct Elem<__half> {
  using C = float;
  __device__ static C load(__half v) { return __half2float(v); }
  __device__ static __half store(C v) { return __float2half_rn(v); }
};
template <>
struct Elem<__nv_bfloat16> {
  using C = float;
  __device__ static C load(__nv_bfloat16 v) { return __bfloat162float(v); }
  __device__ static __nv_bfloat16 store(C v) {
    const std::uint16_t b = float_to_bf16(v);
    return *reinterpret_cast<const __nv_bfloat16*>(&b);
  }
};

}  // namespace
}  // namespace qatkit::kernels::cuda
