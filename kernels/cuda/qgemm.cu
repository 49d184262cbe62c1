// CUDA integer GEMM family: the CPU kernels' arithmetic (kernels/cpu/qgemm) on the GPU. One warp
// per output element: each lane sums a strided slice of K in int32 (exact: the CPU kernels' sums
// modulo 2^32, the same value whenever it fits int32, the caller's bound), a warp shuffle adds the
// lanes, lane 0 requantizes exactly as the CPU does. W4A8 combines its group sums in float64 in
// group order as the CPU; the weight-only W4 kernel is a float kernel (its own summation order).
//
// Two forms. The plain form reads one byte or code per lane and step and serves every layout and
// alignment. The vector form (one warp per output and tile of MT activation rows, 16-byte loads
// per lane, __dp4a for the integer products, the tile's rows sharing each weight load) serves the
// row layouts with 16-byte aligned rows; integer sums are the same modulo 2^32 in any order, so its
// bits are the plain form's. On an H200 (docs/gpu.md, 2026-12-04) both ran CUDA == CPU bit for
// bit; the vector form was 1.3-3.7x faster at batch 1 and 2-5x at batch 64, except the w8
// weight-only kernel at 8 rows per tile (0.74x), which keeps the plain form from 8 rows on. It is
// the default; QATKIT_CUDA_GEMV=plain selects the plain form (read per launch, for A/B runs).
#include <cstdint>
#include <cstdlib>
#include <cstring>

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
      if (lane == 0) t = t + static_cast<double>(static_cast<std::int32_t>(acc)) * static_cast<double>(g.gscale[g.scale_index(n, gi)]);
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

// ---- the vector form ----------------------------------------------------------------------------

bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

/// The activation rows per warp: up to 8 rows share each weight load.
int row_tile(std::int64_t M) { return M >= 8 ? 8 : M >= 4 ? 4 : M >= 2 ? 2 : 1; }

unsigned blocks_for_tiles(std::int64_t M, std::int64_t N, int mt) { return blocks_for((M + mt - 1) / mt * N); }

__device__ __forceinline__ int dp4a_int4(const int4& a, const int4& w, int acc) {
  acc = __dp4a(a.x, w.x, acc);
  acc = __dp4a(a.y, w.y, acc);
  acc = __dp4a(a.z, w.z, acc);
  return __dp4a(a.w, w.w, acc);
}

// Warp o: rows [m0, m0 + rows) of tile o / N, output column n = o % N (neighbouring warps take
// neighbouring weight rows, so a tile of activations stays in L1/L2 while the weights stream).
struct RowTile {
  std::int64_t m0, n;
  int rows;
};

template <int MT>
__device__ __forceinline__ RowTile row_tile_of(std::int64_t o, std::int64_t M, std::int64_t N) {
  const std::int64_t m0 = (o / N) * MT;
  return {m0, o % N, M - m0 < MT ? static_cast<int>(M - m0) : MT};
}

#define QATKIT_TILE_LOOP(MT)                                                                              \
  const std::int64_t warps = static_cast<std::int64_t>(gridDim.x) * kWarps;                                \
  const int lane = threadIdx.x % 32;                                                                      \
  const std::int64_t tiles = (g.M + (MT) - 1) / (MT);                                                      \
  for (std::int64_t o = blockIdx.x * static_cast<std::int64_t>(kWarps) + threadIdx.x / 32; o < tiles * g.N; \
       o += warps)

/// int8 weights [N, K] (K % 16 == 0): y[m, n] = requantize(sum_k a w + corr[n]).
template <int MT>
__global__ void gemm_s8_vec_kernel(QGemmArgs g) {
  QATKIT_TILE_LOOP(MT) {
    const auto [m0, n, rows] = row_tile_of<MT>(o, g.M, g.N);
    const std::int64_t K16 = g.K / 16;
    const int4* w = reinterpret_cast<const int4*>(g.w + n * g.K);
    const int4* a = reinterpret_cast<const int4*>(g.a + m0 * g.K);
    int acc[MT] = {};
#pragma unroll 4
    for (std::int64_t c = lane; c < K16; c += 32) {
      const int4 wv = __ldg(w + c);
#pragma unroll
      for (int i = 0; i < MT; ++i) {
        if (i < rows) acc[i] = dp4a_int4(__ldg(a + i * K16 + c), wv, acc[i]);
      }
    }
#pragma unroll
    for (int i = 0; i < MT; ++i) {
      const std::uint32_t t = warp_sum(static_cast<std::uint32_t>(acc[i]));
      if (lane == 0 && i < rows) {
        g.y[(m0 + i) * g.y_rs + n * g.y_cs] = requantize(t + static_cast<std::uint32_t>(g.corr[n]), g, n);
      }
    }
  }
}

/// Four bits to four bytes 0 / 1 (bit i to byte i): the shifted copies nib << 7i do not overlap.
__device__ __forceinline__ int nibble_bytes(std::uint32_t nib) {
  return static_cast<int>((nib * 0x00204081u) & 0x01010101u);
}

/// Packed rows (QGemmPackedArgs), row_bytes % 16 == 0; lane chunk c is 16 bytes of the row.
/// Ternary (Bits 2): chunk c is half of 128-block c / 2, its byte j holding k = 128 (c / 2) +
/// 16 (c % 2) + j + 32 s in bits 2s, 2s + 1, so shift s and the byte mask 0x03 give the codes (0..2)
/// of 16 consecutive k, against one 16-byte load of a. Binary (Bits 1): chunk c is 128 weights, bit
/// p of its word q the weight k = 128 c + 32 q + p; nibbles become byte masks for __dp4a.
/// Then y = requantize(sum a c - sum a + corr) (ternary), (2 sum_{bit 1} a - sum a + corr) (binary).
template <int Bits, int MT>
__device__ __forceinline__ void gemm_packed_vec(const QGemmPackedArgs& g) {
  QATKIT_TILE_LOOP(MT) {
    const auto [m0, n, rows] = row_tile_of<MT>(o, g.M, g.N);
    const std::int64_t row_bytes = g.K_pad * Bits / 8, C16 = row_bytes / 16;
    const int4* w = reinterpret_cast<const int4*>(g.w + n * row_bytes);
    int acc[MT] = {};
#pragma unroll 2
    for (std::int64_t c = lane; c < C16; c += 32) {
      const int4 wv = __ldg(w + c);
#pragma unroll
      for (int s = 0; s < 32 / (4 * Bits); ++s) {  // 4 (ternary) or 8 (binary) groups of 16 weights
        int4 cv;
        std::int64_t k;  // the group's first k
        if constexpr (Bits == 2) {
          const int m3 = 0x03030303;
          cv = make_int4((wv.x >> (2 * s)) & m3, (wv.y >> (2 * s)) & m3, (wv.z >> (2 * s)) & m3,
                         (wv.w >> (2 * s)) & m3);
          k = (c / 2) * 128 + (c % 2) * 16 + 32 * s;
        } else {
          const int word = s / 2 == 0 ? wv.x : s / 2 == 1 ? wv.y : s / 2 == 2 ? wv.z : wv.w;
          const std::uint32_t bits = static_cast<std::uint32_t>(word) >> (16 * (s % 2));
          cv = make_int4(nibble_bytes(bits & 15u), nibble_bytes((bits >> 4) & 15u), nibble_bytes((bits >> 8) & 15u),
                         nibble_bytes((bits >> 12) & 15u));
          k = c * 128 + 16 * s;
        }
#pragma unroll
        for (int i = 0; i < MT; ++i) {
          if (i < rows) acc[i] = dp4a_int4(__ldg(reinterpret_cast<const int4*>(g.a + (m0 + i) * g.K_pad + k)), cv, acc[i]);
        }
      }
    }
#pragma unroll
    for (int i = 0; i < MT; ++i) {
      const std::uint32_t t = warp_sum(static_cast<std::uint32_t>(acc[i]));
      if (lane == 0 && i < rows) {
        const std::int64_t m = m0 + i;
        const std::uint32_t v = (Bits == 2 ? t : 2u * t) - static_cast<std::uint32_t>(g.a_sum[m]) +
                                static_cast<std::uint32_t>(g.corr[n]);
        g.y[m * g.y_rs + n * g.y_cs] = requantize(v, g, n);
      }
    }
  }
}

template <int MT>
__global__ void gemm_t2_vec_kernel(QGemmPackedArgs g) {
  gemm_packed_vec<2, MT>(g);
}

template <int MT>
__global__ void gemm_b1_vec_kernel(QGemmPackedArgs g) {
  gemm_packed_vec<1, MT>(g);
}

/// W4A8 rows (QGemmW4Args' row layout; group / 32 divides 32): lane chunk c is 32 weights of one
/// group (byte j: k = 32 c + j low nibble, + 16 high). Per chunk, in int32 (modulo 2^32):
/// sum (a + off) q = sum a c - 8 sum a + off (sum c - 256), with q = c - 8; the group's chunks are
/// summed across their gc lanes, each group's leader forms double(acc_g) * double(scale), and lane
/// 0 adds those products in group order: the CPU's float64 sum, the same bits.
template <int MT>
__global__ void gemm_w4_vec_kernel(QGemmW4Args g) {
  QATKIT_TILE_LOOP(MT) {
    const auto [m0, n, rows] = row_tile_of<MT>(o, g.M, g.N);
    const std::int64_t KB = g.K / 2, C = g.K / 32;
    const int gc = static_cast<int>(g.group / 32);
    const int4* w = reinterpret_cast<const int4*>(g.w + n * KB);
    double t[MT] = {};
    for (std::int64_t base = 0; base < C; base += 32) {  // every lane runs every step: shuffles below
      const std::int64_t c = base + lane;
      const bool valid = c < C;
      const int4 wv = valid ? __ldg(w + c) : make_int4(0, 0, 0, 0);
      const int m4 = 0x0F0F0F0F, ones = 0x01010101;
      const int4 lo = make_int4(wv.x & m4, wv.y & m4, wv.z & m4, wv.w & m4);
      const int4 hi = make_int4((wv.x >> 4) & m4, (wv.y >> 4) & m4, (wv.z >> 4) & m4, (wv.w >> 4) & m4);
      const int4 one4 = make_int4(ones, ones, ones, ones);
      const std::uint32_t sum_c = static_cast<std::uint32_t>(dp4a_int4(hi, one4, dp4a_int4(lo, one4, 0)));
      const bool leader = (lane % gc) == 0;
      const double gs = valid && leader ? static_cast<double>(g.gscale[g.scale_index(n, c / gc)]) : 0.0;
#pragma unroll
      for (int i = 0; i < MT; ++i) {
        if (i < rows) {  // uniform across the warp
          std::uint32_t part = 0;
          if (valid) {
            const int4* ar = reinterpret_cast<const int4*>(g.a + (m0 + i) * g.K + c * 32);
            const int4 alo = __ldg(ar), ahi = __ldg(ar + 1);
            const std::uint32_t sac = static_cast<std::uint32_t>(dp4a_int4(ahi, hi, dp4a_int4(alo, lo, 0)));
            const std::uint32_t sa = static_cast<std::uint32_t>(dp4a_int4(ahi, one4, dp4a_int4(alo, one4, 0)));
            part = sac - 8u * sa + static_cast<std::uint32_t>(g.act_offset) * (sum_c - 256u);
          }
          for (int off = gc / 2; off > 0; off /= 2) part += __shfl_down_sync(0xffffffffu, part, off);
          const double prod = valid && leader ? static_cast<double>(static_cast<std::int32_t>(part)) * gs : 0.0;
          for (int l = 0; l < 32; l += gc) {
            const double p = __shfl_sync(0xffffffffu, prod, l);
            if (lane == 0 && base + l < C) t[i] = t[i] + p;
          }
        }
      }
    }
    if (lane == 0) {
#pragma unroll
      for (int i = 0; i < MT; ++i) {
        if (i < rows) {
          const float y = static_cast<float>(t[i] * g.act_scale);
          g.y[(m0 + i) * g.N + n] = g.bias ? y + g.bias[n] : y;
        }
      }
    }
  }
}

// ---- W4A8 on the tensor cores (opt-in: QATKIT_CUDA_MMA=1; sm_80+) --------------------------------
//
// mma.sync m16n8k32 (s8 x s8 -> s32) computes one 32-wide chunk's exact integer sums for a 16 x 8
// tile of outputs. A group (32k wide) is its chunks' mma results added in int32 from zero, so the
// group sum is exact, as the kernels above: S = sum a * q + act_offset * sum q (the second mma's
// all-ones A gives each column's sum q), the same int32 as their sum (a + act_offset) * q. Each
// thread then adds double(S) * double(scale) for its four outputs in group order and ends with
// fp32(t * act_scale) (+ bias): the CPU's bits. Fragment layouts: PTX ISA, "Matrix Fragments for
// mma.m16n8k32" (.s8): lane = 4 * gid + tig; A: a0 row gid cols 4 tig + 0..3, a1 row gid + 8,
// a2 / a3 the same 16 columns on; B: b0 rows (k) 4 tig + 0..3 of column (n) gid, b1 16 rows on;
// C: c0, c1 row gid cols 2 tig + 0 / 1, c2, c3 row gid + 8. The W4 row layout puts k = j and
// k = j + 16 of a chunk in byte j's nibbles, so one 32-bit load of bytes 4 tig..4 tig + 3 holds b0
// (low nibbles) and b1 (high nibbles).
__device__ __forceinline__ void mma_s8_16x8x32(const std::uint32_t (&a)[4], std::uint32_t b0, std::uint32_t b1,
                                               std::int32_t (&c)[4]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
  __trap();  // launch_gemm_w4 takes this path only on sm_80+
#endif
}

__global__ void gemm_w4_mma_kernel(QGemmW4Args g) {
  const std::int64_t warps = static_cast<std::int64_t>(gridDim.x) * kWarps;
  const int lane = threadIdx.x % 32, gid = lane >> 2, tig = lane & 3;
  const std::int64_t mt = (g.M + 15) / 16, nt = (g.N + 7) / 8, KB = g.K / 2, G = g.K / g.group, gc = g.group / 32;
  const std::uint32_t ones[4] = {0x01010101u, 0x01010101u, 0x01010101u, 0x01010101u};
  for (std::int64_t o = blockIdx.x * static_cast<std::int64_t>(kWarps) + threadIdx.x / 32; o < mt * nt; o += warps) {
    const std::int64_t m0 = (o / nt) * 16, n0 = (o % nt) * 8;
    const std::int64_t r0 = m0 + gid, r1 = m0 + gid + 8, n = n0 + gid;  // this thread's A rows, B column
    const std::int8_t* a0p = r0 < g.M ? g.a + r0 * g.K : nullptr;
    const std::int8_t* a1p = r1 < g.M ? g.a + r1 * g.K : nullptr;
    const std::uint8_t* wp = n < g.N ? g.w + n * KB : nullptr;
    double t[4] = {0.0, 0.0, 0.0, 0.0};
    for (std::int64_t gi = 0; gi < G; ++gi) {
      std::int32_t acc[4] = {0, 0, 0, 0}, qs[4] = {0, 0, 0, 0};
      for (std::int64_t ci = gi * gc; ci < (gi + 1) * gc; ++ci) {
        const std::int64_t k0 = ci * 32 + 4 * tig;
        std::uint32_t a[4];
        a[0] = a0p ? *reinterpret_cast<const std::uint32_t*>(a0p + k0) : 0u;
        a[1] = a1p ? *reinterpret_cast<const std::uint32_t*>(a1p + k0) : 0u;
        a[2] = a0p ? *reinterpret_cast<const std::uint32_t*>(a0p + k0 + 16) : 0u;
        a[3] = a1p ? *reinterpret_cast<const std::uint32_t*>(a1p + k0 + 16) : 0u;
        const std::uint32_t v = wp ? *reinterpret_cast<const std::uint32_t*>(wp + ci * 16 + 4 * tig) : 0x88888888u;
        const std::uint32_t b0 = __vsub4(v & 0x0F0F0F0Fu, 0x08080808u);  // q = c - 8 per byte (column n's k)
        const std::uint32_t b1 = __vsub4((v >> 4) & 0x0F0F0F0Fu, 0x08080808u);
        mma_s8_16x8x32(a, b0, b1, acc);
        mma_s8_16x8x32(ones, b0, b1, qs);
      }
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const std::int64_t col = n0 + 2 * tig + (e & 1);
        if (col < g.N) {
          const std::uint32_t sg = static_cast<std::uint32_t>(acc[e]) +
                                   static_cast<std::uint32_t>(g.act_offset) * static_cast<std::uint32_t>(qs[e]);
          t[e] = t[e] + static_cast<double>(static_cast<std::int32_t>(sg)) * static_cast<double>(g.gscale[g.scale_index(col, gi)]);
        }
      }
    }
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const std::int64_t row = m0 + gid + (e >= 2 ? 8 : 0), col = n0 + 2 * tig + (e & 1);
      if (row < g.M && col < g.N) {
        const float y = static_cast<float>(t[e] * g.act_scale);
        g.y[row * g.N + col] = g.bias ? y + g.bias[col] : y;
      }
    }
  }
}

__device__ __forceinline__ float dot4(const float4& x, const float* w, float s) {
  s = s + x.x * w[0];  // --fmad=false: multiply, then add
  s = s + x.y * w[1];
  s = s + x.z * w[2];
  return s + x.w * w[3];
}

/// s + sum of 16 floats of x (four float4 loads) times w[0..16), in k order.
__device__ __forceinline__ float dot16(const float4* x, const float* w, float s) {
#pragma unroll
  for (int q = 0; q < 4; ++q) s = dot4(__ldg(x + q), w + 4 * q, s);
  return s;
}

/// The float kernels' epilogue: each row's lane sums added across the warp, lane 0 stores (+ bias).
template <int MT>
__device__ __forceinline__ void store_float_rows(const float (&s)[MT], int rows, int lane, float* y, std::int64_t m0,
                                                 std::int64_t N, std::int64_t n, const float* bias) {
#pragma unroll
  for (int i = 0; i < MT; ++i) {
    float v = s[i];
    for (int off = 16; off > 0; off /= 2) v += __shfl_down_sync(0xffffffffu, v, off);
    if (lane == 0 && i < rows) y[(m0 + i) * N + n] = bias ? v + bias[n] : v;
  }
}

/// Weight-only W4 rows (QGemmW4FArgs, row layout; group % 32 == 0): lane chunk c is 32 weights of
/// one group, dequantized as the CPU does ((float(q) - z) * s), against 8 float4 loads per row.
template <int MT>
__global__ void gemm_w4f_vec_kernel(QGemmW4FArgs g) {
  QATKIT_TILE_LOOP(MT) {
    const auto [m0, n, rows] = row_tile_of<MT>(o, g.M, g.N);
    const std::int64_t KB = g.K / 2, C = g.K / 32;
    const int4* w = reinterpret_cast<const int4*>(g.w + n * KB);
    float s[MT] = {};
    for (std::int64_t c = lane; c < C; c += 32) {
      const int4 wv = __ldg(w + c);
      const std::int64_t gi = g.scale_index(n, c * 32 / g.group);
      const float sc = g.gscale[gi], z = g.gzero ? g.gzero[gi] : 0.f;
      const std::uint32_t words[4] = {static_cast<std::uint32_t>(wv.x), static_cast<std::uint32_t>(wv.y),
                                      static_cast<std::uint32_t>(wv.z), static_cast<std::uint32_t>(wv.w)};
      float wl[16], wh[16];
#pragma unroll
      for (int j = 0; j < 16; ++j) {
        const std::uint32_t b = (words[j / 4] >> (8 * (j % 4))) & 0xFFu;
        wl[j] = (static_cast<float>(static_cast<std::int32_t>(b & 15u) - 8) - z) * sc;
        wh[j] = (static_cast<float>(static_cast<std::int32_t>(b >> 4) - 8) - z) * sc;
      }
#pragma unroll
      for (int i = 0; i < MT; ++i) {
        if (i < rows) {
          const float4* xr = reinterpret_cast<const float4*>(g.x + (m0 + i) * g.K + c * 32);
          s[i] = dot16(xr + 4, wh, dot16(xr, wl, s[i]));
        }
      }
    }
    store_float_rows<MT>(s, rows, lane, g.y, m0, g.N, n, g.bias);
  }
}

/// Weight-only int8 (K % 16 == 0): lane chunk c is 16 codes, dequantized as float(q) * scale.
template <int MT>
__global__ void gemm_w8f_vec_kernel(QGemmW8FArgs g) {
  QATKIT_TILE_LOOP(MT) {
    const auto [m0, n, rows] = row_tile_of<MT>(o, g.M, g.N);
    const std::int64_t K16 = g.K / 16;
    const int4* w = reinterpret_cast<const int4*>(g.w + n * g.K);
    const float sc = g.scale[n];
    float s[MT] = {};
#pragma unroll 2
    for (std::int64_t c = lane; c < K16; c += 32) {
      const int4 wv = __ldg(w + c);
      const std::uint32_t words[4] = {static_cast<std::uint32_t>(wv.x), static_cast<std::uint32_t>(wv.y),
                                      static_cast<std::uint32_t>(wv.z), static_cast<std::uint32_t>(wv.w)};
      float wf[16];
#pragma unroll
      for (int j = 0; j < 16; ++j) {
        const std::int8_t q = static_cast<std::int8_t>((words[j / 4] >> (8 * (j % 4))) & 0xFFu);
        wf[j] = static_cast<float>(q) * sc;
      }
#pragma unroll
      for (int i = 0; i < MT; ++i) {
        if (i < rows) {
          const float4* xr = reinterpret_cast<const float4*>(g.x + (m0 + i) * g.K + c * 16);
          s[i] = dot16(xr, wf, s[i]);
        }
      }
    }
    store_float_rows<MT>(s, rows, lane, g.y, m0, g.N, n, g.bias);
  }
}

#undef QATKIT_TILE_LOOP

/// Launch kernel<MT> for MT = row_tile(M).
#define QATKIT_LAUNCH_TILED(KERNEL, ARGS, STREAM)                                                       \
  do {                                                                                                  \
    const int mt_ = row_tile((ARGS).M);                                                                 \
    const unsigned b_ = blocks_for_tiles((ARGS).M, (ARGS).N, mt_);                                      \
    if (mt_ == 8) KERNEL<8><<<b_, kThreads, 0, STREAM>>>(ARGS);                                         \
    else if (mt_ == 4) KERNEL<4><<<b_, kThreads, 0, STREAM>>>(ARGS);                                    \
    else if (mt_ == 2) KERNEL<2><<<b_, kThreads, 0, STREAM>>>(ARGS);                                    \
    else KERNEL<1><<<b_, kThreads, 0, STREAM>>>(ARGS);                                                  \
  } while (0)

/// The same with at most 2 rows per warp: the w4f kernel holds 32 dequantized weights, and 4 rows
/// take 168 registers (a quarter of the warps per SM), 8 rows 255 and spill (ptxas -v, sm_90).
// The signed codes of a packed ternary / binary weight as int8 rows [N, K_pad] (for torch._int_mm
// in the glue): ternary c - 1 in {-1, 0, 1} (the padding's c = 1 gives 0), binary 2 b - 1 in
// {-1, 1}. One thread per 4 consecutive codes, written as one 32-bit word (byte j = code k + j).
// sum_k a[k] * code[k] is the packed kernels' sum a * c - sum a (ternary) and 2 * sum over set bits
// - sum a (binary) exactly, modulo 2^32 as theirs; padded activations are 0.
template <int Bits>
__global__ void unpack_codes_kernel(const std::uint8_t* w, std::uint32_t* out, std::int64_t N, std::int64_t K_pad) {
  const std::int64_t row_bytes = K_pad * Bits / 8, quads = K_pad / 4, total = N * quads;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < total; i += stride) {
    const std::int64_t n = i / quads, k0 = (i % quads) * 4;
    const std::uint8_t* row = w + n * row_bytes;
    std::uint32_t v = 0;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const std::int64_t k = k0 + j;
      std::int32_t c;
      if (Bits == 2) {  // 128-blocks: byte j holds k = j + 32 i in bits 2i
        const std::int64_t r = k % 128;
        c = ((row[k / 128 * 32 + r % 32] >> (2 * (r / 32))) & 3) - 1;
      } else {
        c = ((row[k >> 3] >> (k & 7)) & 1) * 2 - 1;
      }
      v |= (static_cast<std::uint32_t>(c) & 0xFFu) << (8 * j);
    }
    out[i] = v;
  }
}

// One thread per output element of a depthwise conv (QConvDwArgs): the taps' codes computed from
// the float input in place (quantize_rows_kernel's expression; an image's elements are re-read
// from cache by the kh * kw outputs that share them), so the whole conv is one launch where the
// im2col path runs a GEMM sequence per channel.
__global__ void conv_dw_s8_kernel(QConvDwArgs g) {
  const ActQuantArgs& q = g.q;
  const float lo = static_cast<float>(q.quant_min - q.zero_point), hi = static_cast<float>(q.quant_max - q.zero_point);
  const float z = static_cast<float>(q.zero_point);
  const std::int32_t pad_code = static_cast<std::int32_t>(quantize_code<float>(0.0f, q.inv_scale, lo, hi, z)) - q.shift;
  const std::int64_t total = g.B * g.N * g.Ho * g.Wo, mult = g.N / g.C;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t o = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; o < total; o += stride) {
    const std::int64_t ow = o % g.Wo, oh = (o / g.Wo) % g.Ho, n = (o / (g.Wo * g.Ho)) % g.N, b = o / (g.Wo * g.Ho * g.N);
    const float* x = g.x + (b * g.C + n / mult) * g.H * g.W;
    const std::int8_t* w = g.w + n * g.w_rs;
    std::uint32_t acc = 0;
    for (int i = 0; i < g.kh; ++i) {
      const std::int64_t ih = oh * g.sh - g.ph + static_cast<std::int64_t>(i) * g.dh;
      for (int j = 0; j < g.kw; ++j) {
        const std::int64_t iw = ow * g.sw - g.pw + static_cast<std::int64_t>(j) * g.dw;
        const std::int32_t a =
            ih >= 0 && ih < g.H && iw >= 0 && iw < g.W
                ? static_cast<std::int32_t>(quantize_code<float>(x[ih * g.W + iw], q.inv_scale, lo, hi, z)) - q.shift
                : pad_code;
        acc += static_cast<std::uint32_t>(a * static_cast<std::int32_t>(w[i * g.kw + j]));
      }
    }
    g.y[o] = requantize(acc + static_cast<std::uint32_t>(g.corr[n]), g, n);
  }
}

// The float weights [N, K] the weight-only kernels multiply by, each dequantized exactly as they
// do (W4: (float(q) - z) * s, either layout; W8: float(q) * s; float32, no FMA): the operand of
// cuBLAS's float32 GEMM in the glue (a float kernel: its own order, within the same bound).
__global__ void dequantize_w4f_kernel(QGemmW4FArgs g, float* out) {
  const std::int64_t KB = g.K / 2, total = g.N * g.K;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < total; i += stride) {
    const std::int64_t n = i / g.K, k = i % g.K;
    const std::int64_t gi = g.scale_index(n, k / g.group);
    const float z = g.gzero ? g.gzero[gi] : 0.f;
    out[i] = (static_cast<float>(w4_code(g.w, g.panel, KB, n, k)) - z) * g.gscale[gi];
  }
}

__global__ void dequantize_w8f_kernel(QGemmW8FArgs g, float* out) {
  const std::int64_t total = g.N * g.K;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < total; i += stride) {
    out[i] = static_cast<float>(g.w[i]) * g.scale[i / g.K];
  }
}

unsigned blocks_for_elements(std::int64_t count) {
  std::int64_t b = (count + kThreads - 1) / kThreads;
  if (b > 65535LL * 8) b = 65535LL * 8;
  return static_cast<unsigned>(b < 1 ? 1 : b);
}

#define QATKIT_LAUNCH_TILED_2(KERNEL, ARGS, STREAM)                                                     \
  do {                                                                                                  \
    const int mt_ = (ARGS).M >= 2 ? 2 : 1;                                                              \
    const unsigned b_ = blocks_for_tiles((ARGS).M, (ARGS).N, mt_);                                      \
    if (mt_ == 2) KERNEL<2><<<b_, kThreads, 0, STREAM>>>(ARGS);                                         \
    else KERNEL<1><<<b_, kThreads, 0, STREAM>>>(ARGS);                                                  \
  } while (0)

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
  if (use_vector_form() && !args.panel && args.K % 16 == 0 && aligned16(args.a) && aligned16(args.w)) {
    QATKIT_LAUNCH_TILED(gemm_s8_vec_kernel, args, stream);
    return cudaGetLastError();
  }
  gemm_s8_kernel<<<blocks_for(args.M * args.N), kThreads, 0, stream>>>(args);
  return cudaGetLastError();
}

cudaError_t launch_gemm_packed(const QGemmPackedArgs& args, int weight_bits, cudaStream_t stream) {
  if (args.M * args.N == 0) return cudaSuccess;
  const std::int64_t row_bytes = args.K_pad * weight_bits / 8;
  if (use_vector_form() && !args.panel && row_bytes % 16 == 0 && args.K_pad % 16 == 0 && aligned16(args.a) &&
      aligned16(args.w)) {
    if (weight_bits == 2) {
      QATKIT_LAUNCH_TILED(gemm_t2_vec_kernel, args, stream);
    } else {
      QATKIT_LAUNCH_TILED(gemm_b1_vec_kernel, args, stream);
    }
    return cudaGetLastError();
  }
  if (weight_bits == 2) {
    gemm_packed_kernel<2><<<blocks_for(args.M * args.N), kThreads, 0, stream>>>(args);
  } else {
    gemm_packed_kernel<1><<<blocks_for(args.M * args.N), kThreads, 0, stream>>>(args);
  }
  return cudaGetLastError();
}

cudaError_t launch_conv_dw_s8(const QConvDwArgs& args, cudaStream_t stream) {
  const std::int64_t total = args.B * args.N * args.Ho * args.Wo;
  if (total == 0) return cudaSuccess;
  conv_dw_s8_kernel<<<blocks_for_elements(total), kThreads, 0, stream>>>(args);
  return cudaGetLastError();
}

cudaError_t launch_unpack_codes(const std::uint8_t* w, std::int8_t* codes, std::int64_t N, std::int64_t K_pad,
                                int weight_bits, cudaStream_t stream) {
  const std::int64_t quads = N * (K_pad / 4);
  if (quads == 0) return cudaSuccess;
  auto* out = reinterpret_cast<std::uint32_t*>(codes);
  if (weight_bits == 2) {
    unpack_codes_kernel<2><<<blocks_for_elements(quads), kThreads, 0, stream>>>(w, out, N, K_pad);
  } else {
    unpack_codes_kernel<1><<<blocks_for_elements(quads), kThreads, 0, stream>>>(w, out, N, K_pad);
  }
  return cudaGetLastError();
}

cudaError_t launch_dequantize_w4f(const QGemmW4FArgs& args, float* out, cudaStream_t stream) {
  if (args.N * args.K == 0) return cudaSuccess;
  dequantize_w4f_kernel<<<blocks_for_elements(args.N * args.K), kThreads, 0, stream>>>(args, out);
  return cudaGetLastError();
}

cudaError_t launch_dequantize_w8f(const QGemmW8FArgs& args, float* out, cudaStream_t stream) {
  if (args.N * args.K == 0) return cudaSuccess;
  dequantize_w8f_kernel<<<blocks_for_elements(args.N * args.K), kThreads, 0, stream>>>(args, out);
  return cudaGetLastError();
}

cudaError_t launch_gemm_w4(const QGemmW4Args& args, cudaStream_t stream) {
  if (args.M * args.N == 0) return cudaSuccess;
  const std::int64_t gc = args.group / 32;
  if (use_mma() && args.M > 16 && !args.panel && args.group % 32 == 0 && args.K % 32 == 0 && aligned16(args.a) &&
      aligned16(args.w) && device_sm() >= 80) {
    gemm_w4_mma_kernel<<<blocks_for((args.M + 15) / 16 * ((args.N + 7) / 8)), kThreads, 0, stream>>>(args);
    return cudaGetLastError();
  }
  if (use_vector_form() && !args.panel && args.group % 32 == 0 && gc >= 1 && gc <= 32 && 32 % gc == 0 &&
      args.K % 32 == 0 && aligned16(args.a) && aligned16(args.w)) {
    QATKIT_LAUNCH_TILED(gemm_w4_vec_kernel, args, stream);
    return cudaGetLastError();
  }
  gemm_w4_kernel<<<blocks_for(args.M * args.N), kThreads, 0, stream>>>(args);
  return cudaGetLastError();
}

cudaError_t launch_gemm_w4f(const QGemmW4FArgs& args, cudaStream_t stream) {
  if (args.M * args.N == 0) return cudaSuccess;
  if (use_vector_form() && !args.panel && args.group % 32 == 0 && args.K % 32 == 0 && aligned16(args.x) &&
      aligned16(args.w)) {
    QATKIT_LAUNCH_TILED_2(gemm_w4f_vec_kernel, args, stream);
    return cudaGetLastError();
  }
  gemm_w4f_kernel<<<blocks_for(args.M * args.N), kThreads, 0, stream>>>(args);
  return cudaGetLastError();
}

cudaError_t launch_gemm_w8f(const QGemmW8FArgs& args, cudaStream_t stream) {
  if (args.M * args.N == 0) return cudaSuccess;
  // from 8 rows the 8-row tile ran slower than the plain form (584 against 432 us at 64 x 4096 x
  // 4096 on an H200): tiles of up to 4 rows, and the plain form from 8 rows on
  if (use_vector_form() && args.M < 8 && args.K % 16 == 0 && aligned16(args.x) && aligned16(args.w)) {
    QATKIT_LAUNCH_TILED(gemm_w8f_vec_kernel, args, stream);
    return cudaGetLastError();
  }
  gemm_w8f_kernel<<<blocks_for(args.M * args.N), kThreads, 0, stream>>>(args);
  return cudaGetLastError();
}

bool use_mma() {
  const char* e = std::getenv("QATKIT_CUDA_MMA");
  return e != nullptr && std::strcmp(e, "1") == 0 && use_vector_form();
}

int device_sm() {
  int dev = 0, major = 0, minor = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) !=
                                                 cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return major * 10 + minor;
}

bool use_vector_form() {
  const char* e = std::getenv("QATKIT_CUDA_GEMV");
  return e == nullptr || std::strcmp(e, "plain") != 0;
}

}  // namespace qatkit::kernels::cuda
