// CUDA integer GEMM family: the CPU kernels' arithmetic (kernels/cpu/qgemm) on the GPU. One warp
// per output element: each lane sums a strided slice of K in int32 (exact: the CPU kernels' sums
// modulo 2^32, the same value whenever it fits int32, the caller's bound), a warp shuffle adds the
// lanes, lane 0 requantizes exactly as the CPU does. W4A8 combines its group sums in float64 in
// group order as the CPU; the weight-only W4 kernel is a float kernel (its own summation order).
#include <cstdint>

#include "../common/fake_quant_scalar.h"
#include "qgemm_cuda.h"

namespace qatkit::kernels::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

__global__ void quantize_rows_kernel(const float* x, std::int8_t* a, std::int32_t* a_sum, std::int64_t M,
                                     std::int64_t K, std::int64_t K_row, ActQuantArgs q, const float* row_scale) {
  // one block per row: codes, then the row's sum
  const float lo = static_cast<float>(q.quant_min - q.zero_point), hi = static_cast<float>(q.quant_max - q.zero_point);
  const float z = static_cast<float>(q.zero_point);
  __shared__ std::int32_t partial[kThreads];
  for (std::int64_t m = blockIdx.x; m < M; m += gridDim.x) {
    const float inv = row_scale != nullptr ? 1.0f / row_scale[m] : q.inv_scale;  // per row: quantize_affine's 1 / s
    std::int32_t s = 0;
    for (std::int64_t k = threadIdx.x; k < K_row; k += blockDim.x) {
      std::int32_t v = 0;
      if (k < K) {
        v = static_cast<std::int32_t>(quantize_code<float>(x[m * K + k], inv, lo, hi, z)) - q.shift;
      }
      a[m * K_row + k] = static_cast<std::int8_t>(v);
      s += v;
    }
    partial[threadIdx.x] = s;
    __syncthreads();
    for (int w = kThreads / 2; w > 0; w /= 2) {
      if (threadIdx.x < w) partial[threadIdx.x] += partial[threadIdx.x + w];
      __syncthreads();
    }
    if (threadIdx.x == 0 && a_sum != nullptr) a_sum[m] = partial[0];
    __syncthreads();
  }
}

__device__ __forceinline__ std::uint32_t warp_sum(std::uint32_t v) {
  for (int o = 16; o > 0; o /= 2) v += __shfl_down_sync(0xffffffffu, v, o);
  return v;
}

template <class Args>
__device__ __forceinline__ float requantize(std::uint32_t acc, const Args& g, std::int64_t n) {
  const float y = static_cast<float>(static_cast<std::int32_t>(acc)) * g.out_scale[n];  // --fmad=false: no FMA
  return g.bias ? y + g.bias[n] : y;
}

__global__ void gemm_s8_kernel(QGemmArgs g) {
  const std::int64_t warps = static_cast<std::int64_t>(gridDim.x) * kWarps;
  const int lane = threadIdx.x % 32;
  for (std::int64_t o = blockIdx.x * static_cast<std::int64_t>(kWarps) + threadIdx.x / 32; o < g.M * g.N; o += warps) {
    const std::int64_t m = o / g.N, n = o % g.N;
    std::uint32_t acc = 0;
    if (g.panel) {  // QGemmArgs' panel layout: codes w + 128, row n's k at step k / 4, lane n % 16
      const std::int64_t K4 = (g.K + 3) / 4;
      const std::int8_t* a = g.a + m * 4 * K4;
      const std::uint8_t* w = reinterpret_cast<const std::uint8_t*>(g.w) + (n / 16) * K4 * 64 + (n % 16) * 4;
      for (std::int64_t k = lane; k < g.K; k += 32) {
        acc += static_cast<std::uint32_t>(static_cast<std::int32_t>(a[k]) *
                                          (static_cast<std::int32_t>(w[(k / 4) * 64 + k % 4]) - 128));
      }
    } else {
      const std::int8_t* a = g.a + m * g.K;
      const std::int8_t* w = g.w + n * g.K;
      for (std::int64_t k = lane; k < g.K; k += 32) {
        acc += static_cast<std::uint32_t>(static_cast<std::int32_t>(a[k]) * static_cast<std::int32_t>(w[k]));
      }
    }
    acc = warp_sum(acc);
    if (lane == 0) g.y[m * g.y_rs + n * g.y_cs] = requantize(acc + static_cast<std::uint32_t>(g.corr[n]), g, n);
  }
}

template <int Bits>
__global__ void gemm_packed_kernel(QGemmPackedArgs g) {
  const std::int64_t warps = static_cast<std::int64_t>(gridDim.x) * kWarps;
  const int lane = threadIdx.x % 32;
  const std::int64_t row_bytes = g.K_pad * Bits / 8;
  for (std::int64_t o = blockIdx.x * static_cast<std::int64_t>(kWarps) + threadIdx.x / 32; o < g.M * g.N; o += warps) {
    const std::int64_t m = o / g.N, n = o % g.N;
    const std::int8_t* a = g.a + m * g.K_pad;
    const std::uint8_t* w = g.w + n * row_bytes;
    std::uint32_t acc = 0;
    for (std::int64_t k = lane; k < g.K_pad; k += 32) {
      std::int32_t c;
      if (Bits == 2) {  // 128-blocks: byte j holds k = j + 32 i in bits 2i
        const std::int64_t b = k / 128, r = k % 128;
        c = (w[b * 32 + r % 32] >> (2 * (r / 32))) & 3;
      } else {
        c = (w[k >> 3] >> (k & 7)) & 1;
      }
      acc += static_cast<std::uint32_t>(c * static_cast<std::int32_t>(a[k]));
    }
    acc = warp_sum(acc);
    if (lane == 0) {
      // ternary: sum a * (w + 1) - sum a; binary: 2 * sum over set bits - sum a
      const std::uint32_t s = Bits == 2 ? acc : 2u * acc;
      const std::uint32_t t = s - static_cast<std::uint32_t>(g.a_sum[m]) + static_cast<std::uint32_t>(g.corr[n]);
      g.y[m * g.y_rs + n * g.y_cs] = requantize(t, g, n);
    }
  }
}

// Byte b of W4 row n: the row layout's, or the panel layout's (QGemmW4Args::panel).
__device__ __forceinline__ std::uint8_t w4_byte(const std::uint8_t* w, bool panel, std::int64_t KB, std::int64_t n,
                                                std::int64_t b) {
  if (!panel) return w[n * KB + b];
  const std::int64_t steps = (KB + 63) / 64;
  return w[((n / 16) * steps + b / 64) * 1024 + (b % 64 / 4) * 64 + (n % 16) * 4 + b % 4];
}

// Code q = c - 8 of weight k of row n (32-chunks: byte j holds k = j low, k = j + 16 high).
__device__ __forceinline__ std::int32_t w4_code(const std::uint8_t* w, bool panel, std::int64_t KB, std::int64_t n,
                                                std::int64_t k) {
  const std::int64_t kk = k % 32;
  const std::uint8_t byte = w4_byte(w, panel, KB, n, k / 32 * 16 + kk % 16);
  return static_cast<std::int32_t>(kk < 16 ? (byte & 15) : (byte >> 4)) - 8;
}

// W4A8: one warp per output; the groups in order, each summed exactly across the warp as
// sum (a + act_offset) * q (= the CPU's sum a * c - 8 * a_gsum + act_offset * sum q, the same int32),
// then lane 0 adds double(acc) * double(scale) in group order: the CPU's bits.
__global__ void gemm_w4_kernel(QGemmW4Args g) {
  const std::int64_t warps = static_cast<std::int64_t>(gridDim.x) * kWarps;
  const int lane = threadIdx.x % 32;
  const std::int64_t KB = g.K / 2, G = g.K / g.group;
  for (std::int64_t o = blockIdx.x * static_cast<std::int64_t>(kWarps) + threadIdx.x / 32; o < g.M * g.N; o += warps) {
    const std::int64_t m = o / g.N, n = o % g.N;
    const std::int8_t* a = g.a + m * g.K;
    double t = 0.0;
    for (std::int64_t gi = 0; gi < G; ++gi) {
      std::uint32_t acc = 0;
      for (std::int64_t k = gi * g.group + lane; k < (gi + 1) * g.group; k += 32) {
        acc += static_cast<std::uint32_t>((static_cast<std::int32_t>(a[k]) + g.act_offset) * w4_code(g.w, g.panel, KB, n, k));
      }
      acc = warp_sum(acc);
      if (lane == 0) t = t + static_cast<double>(static_cast<std::int32_t>(acc)) * static_cast<double>(g.gscale[n * G + gi]);
    }
    if (lane == 0) {
      const float y = static_cast<float>(t * g.act_scale);
      g.y[m * g.N + n] = g.bias ? y + g.bias[n] : y;
    }
  }
}

// Weight-only W4: one warp per output; each weight dequantized as the CPU does ((float(q) - z) * s,
// float32, no FMA: --fmad=false), lanes sum x * w over a strided slice of K in float32, a warp
// shuffle adds them (a float kernel: its own order, within docs/integer.md's bound).
__global__ void gemm_w4f_kernel(QGemmW4FArgs g) {
  const std::int64_t warps = static_cast<std::int64_t>(gridDim.x) * kWarps;
  const int lane = threadIdx.x % 32;
  const std::int64_t KB = g.K / 2;
  for (std::int64_t o = blockIdx.x * static_cast<std::int64_t>(kWarps) + threadIdx.x / 32; o < g.M * g.N; o += warps) {
    const std::int64_t m = o / g.N, n = o % g.N;
    const float* x = g.x + m * g.K;
    float s = 0.f;
    for (std::int64_t k = lane; k < g.K; k += 32) {
      const std::int64_t gi = g.scale_index(n, k / g.group);  // either scale layout
      const float z = g.gzero ? g.gzero[gi] : 0.f;
      const float w = (static_cast<float>(w4_code(g.w, g.panel, KB, n, k)) - z) * g.gscale[gi];
      s = s + x[k] * w;
    }
    for (int off = 16; off > 0; off /= 2) s += __shfl_down_sync(0xffffffffu, s, off);
    if (lane == 0) g.y[m * g.N + n] = g.bias ? s + g.bias[n] : s;
  }
}

__global__ void gemm_w8f_kernel(QGemmW8FArgs g) {
  const std::int64_t warps = static_cast<std::int64_t>(gridDim.x) * kWarps;
  const int lane = threadIdx.x % 32;
  for (std::int64_t o = blockIdx.x * static_cast<std::int64_t>(kWarps) + threadIdx.x / 32; o < g.M * g.N; o += warps) {
    const std::int64_t m = o / g.N, n = o % g.N;
    const float* x = g.x + m * g.K;
    const std::int8_t* q = g.w + n * g.K;
    const float sc = g.scale[n];
    float s = 0.f;
    for (std::int64_t k = lane; k < g.K; k += 32) s = s + x[k] * (static_cast<float>(q[k]) * sc);
    for (int off = 16; off > 0; off /= 2) s += __shfl_down_sync(0xffffffffu, s, off);
    if (lane == 0) g.y[m * g.N + n] = g.bias ? s + g.bias[n] : s;
  }
}

unsigned blocks_for(std::int64_t outputs) {
  std::int64_t b = (outputs + kWarps - 1) / kWarps;
  if (b > 65535LL * 8) b = 65535LL * 8;
  return static_cast<unsigned>(b < 1 ? 1 : b);
}

}  // namespace

cudaError_t launch_quantize_rows(const float* x, std::int8_t* a, std::int32_t* a_sum, std::int64_t M, std::int64_t K,
                                 std::int64_t K_row, const ActQuantArgs& q, cudaStream_t stream,
                                 const float* row_scale) {
  if (M == 0) return cudaSuccess;
  const unsigned blocks = static_cast<unsigned>(M < 65535 * 8 ? M : 65535 * 8);
  quantize_rows_kernel<<<blocks, kThreads, 0, stream>>>(x, a, a_sum, M, K, K_row, q, row_scale);
  return cudaGetLastError();
}

cudaError_t launch_gemm_s8(const QGemmArgs& args, cudaStream_t stream) {
  if (args.M * args.N == 0) return cudaSuccess;
  gemm_s8_kernel<<<blocks_for(args.M * args.N), kThreads, 0, stream>>>(args);
  return cudaGetLastError();
}

cudaError_t launch_gemm_packed(const QGemmPackedArgs& args, int weight_bits, cudaStream_t stream) {
  if (args.M * args.N == 0) return cudaSuccess;
  if (weight_bits == 2) {
    gemm_packed_kernel<2><<<blocks_for(args.M * args.N), kThreads, 0, stream>>>(args);
  } else {
    gemm_packed_kernel<1><<<blocks_for(args.M * args.N), kThreads, 0, stream>>>(args);
  }
  return cudaGetLastError();
}

cudaError_t launch_gemm_w4(const QGemmW4Args& args, cudaStream_t stream) {
  if (args.M * args.N == 0) return cudaSuccess;
  gemm_w4_kernel<<<blocks_for(args.M * args.N), kThreads, 0, stream>>>(args);
  return cudaGetLastError();
}

cudaError_t launch_gemm_w4f(const QGemmW4FArgs& args, cudaStream_t stream) {
  if (args.M * args.N == 0) return cudaSuccess;
  gemm_w4f_kernel<<<blocks_for(args.M * args.N), kThreads, 0, stream>>>(args);
  return cudaGetLastError();
}

cudaError_t launch_gemm_w8f(const QGemmW8FArgs& args, cudaStream_t stream) {
  if (args.M * args.N == 0) return cudaSuccess;
  gemm_w8f_kernel<<<blocks_for(args.M * args.N), kThreads, 0, stream>>>(args);
  return cudaGetLastError();
}

}  // namespace qatkit::kernels::cuda
