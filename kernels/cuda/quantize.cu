// CUDA quantize-family kernels: integer codes with fake_quantize's rounding (quantize_code) and
// the dequantize step (codes - z) * s. Grid-stride loops, one element per thread step.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "../common/fake_quant_scalar.h"
#include "elem_io.cuh"
#include "quantize_cuda.h"

namespace qatkit::kernels::cuda {
namespace {

constexpr int kThreads = 256;

unsigned grid_for(std::int64_t n) {
  std::int64_t blocks = (n + kThreads - 1) / kThreads;
  if (blocks > 65535LL * 8) blocks = 65535LL * 8;
  return static_cast<unsigned>(blocks < 1 ? 1 : blocks);
}

template <typename S, typename T>
__global__ void quantize_kernel(QuantizeArgs a) {
  using E = Elem<S>;
  using C = typename E::C;
  const S* x = static_cast<const S*>(a.input);
  T* q = static_cast<T*>(a.codes);
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < a.numel;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t c = (i / a.inner) % a.channels;
    const float s = a.scale[c], z = a.zero_point[c];
    q[i] = static_cast<T>(quantize_code<C>(E::load(x[i]), static_cast<C>(1.0f / s), static_cast<C>(a.quant_min - z),
                                           static_cast<C>(a.quant_max - z), static_cast<C>(z)));
  }
}

template <typename S, typename T>
__global__ void dequantize_kernel(DequantizeArgs a) {
  using E = Elem<S>;
  using C = typename E::C;
  const T* q = static_cast<const T*>(a.codes);
  S* y = static_cast<S*>(a.output);
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < a.numel;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t c = (i / a.inner) % a.channels;
    y[i] = E::store((static_cast<C>(q[i]) - static_cast<C>(a.zero_point[c])) * static_cast<C>(a.scale[c]));
  }
}

/// Calls f(S{}, T{}) with the storage type of `dt` and the code type of `ct`.
template <class F>
void with_types(DType dt, CodeType ct, F&& f) {
  auto by_code = [&](auto s) {
    switch (ct) {
      case CodeType::kInt8:
        return f(s, std::int8_t{});
      case CodeType::kUInt8:
        return f(s, std::uint8_t{});
      case CodeType::kInt16:
        return f(s, std::int16_t{});
      case CodeType::kInt32:
        return f(s, std::int32_t{});
    }
  };
  switch (dt) {
    case DType::kFloat32:
      return by_code(float{});
    case DType::kFloat64:
      return by_code(double{});
    case DType::kFloat16:
      return by_code(__half{});
    case DType::kBFloat16:
      return by_code(__nv_bfloat16{});
  }
}

}  // namespace

cudaError_t launch_quantize(const QuantizeArgs& a, cudaStream_t stream) {
  if (a.numel == 0) return cudaSuccess;
  with_types(a.dtype, a.code_type, [&](auto s, auto t) {
    quantize_kernel<decltype(s), decltype(t)><<<grid_for(a.numel), kThreads, 0, stream>>>(a);
  });
  return cudaGetLastError();
}

cudaError_t launch_dequantize(const DequantizeArgs& a, cudaStream_t stream) {
  if (a.numel == 0) return cudaSuccess;
  with_types(a.dtype, a.code_type, [&](auto s, auto t) {
    dequantize_kernel<decltype(s), decltype(t)><<<grid_for(a.numel), kThreads, 0, stream>>>(a);
  });
  return cudaGetLastError();
}

}  // namespace qatkit::kernels::cuda
