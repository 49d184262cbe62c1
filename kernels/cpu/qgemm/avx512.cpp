// Integer GEMM compiled with AVX-512 F/BW/VL + VNNI (on top of AVX2): vpdpbusd multiplies 64
// unsigned x signed byte pairs and adds each group of four into an int32 lane without any int16
// step, so no product needs the AVX2 table's sign trick:
//   W8A8:    (a + 128) as the unsigned operand, w as the signed one; 128 * sum_k w[n, k] comes off
//            (summed once per column block with vpdpbusd against ones); K's last step masked.
//   ternary: the 2-bit codes {0, 1, 2} unsigned, the activations signed (finish_t2 as everywhere).
//   binary:  the weight bits are a byte mask as they stand (__mmask64: bit i selects byte i, the
//            1-bit file layout's order), expanded to bytes {0, 1}: vpdpbusd of those and the
//            activations sums the activations at set bits.
//   XNOR:    the AVX2 nibble-lookup popcount, 64 bytes at a time.
// Exact integer sums throughout (modulo 2^32, as the baseline), so every output has the baseline's
// bits. W4A8 with groups of 32: vpdpbusd on the nibbles (other group sizes and the weight-only W4
// kernel are the AVX2 table's).
#include "qgemm_cpu.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
// GCC 12's AVX-512 intrinsics (broadcast / extract / reduce) pass _mm512_undefined_* as their
// don't-care source operand, which its uninitialized-use analysis flags once inlined here (a known
// false positive): the warnings are off for this file only.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "loops.h"
#include "w4_finish4.h"

namespace qatkit::kernels::cpu {
namespace {

inline std::uint32_t hsum(__m512i v) { return static_cast<std::uint32_t>(_mm512_reduce_add_epi32(v)); }

// ---------------------------------------------------------------- W8A8

// K in steps of 64 bytes, the last one masked (masked-out bytes load as 0: w = 0 adds nothing, whatever
// a + 128 is there), so no tail runs scalar (small-K convs: K = 32 is one masked step).
inline __m512i load_k(const std::int8_t* p, std::int64_t k, std::int64_t K) {
  return k + 64 <= K ? _mm512_loadu_si512(p + k) : _mm512_maskz_loadu_epi8((std::uint64_t{1} << (K - k)) - 1, p + k);
}

template <int MR, int NR>
void s8_block(const QGemmArgs& g, std::int64_t m, std::int64_t n, const std::uint32_t* wsum) {
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  __m512i acc[MR][NR];
  #pragma GCC unroll 4
  for (int i = 0; i < MR; ++i)
    #pragma GCC unroll 4
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_si512();
  // full steps, then the masked one: no branch inside the loop, so the accumulators stay in registers
  const auto step = [&](std::int64_t k, __mmask64 mask) __attribute__((always_inline)) {
    __m512i a[MR];
    #pragma GCC unroll 4
    for (int i = 0; i < MR; ++i) a[i] = _mm512_xor_si512(_mm512_maskz_loadu_epi8(mask, g.a + (m + i) * g.K + k), flip);
    #pragma GCC unroll 4
    for (int j = 0; j < NR; ++j) {
      const __m512i w = _mm512_maskz_loadu_epi8(mask, g.w + (n + j) * g.K + k);
      #pragma GCC unroll 4
      for (int i = 0; i < MR; ++i) acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], a[i], w);
    }
  };
  const std::int64_t K64 = g.K & ~std::int64_t{63};
  for (std::int64_t k = 0; k < K64; k += 64) step(k, ~__mmask64{0});
  if (K64 < g.K) step(K64, (std::uint64_t{1} << (g.K - K64)) - 1);
  #pragma GCC unroll 4
  for (int i = 0; i < MR; ++i) {
    #pragma GCC unroll 4
    for (int j = 0; j < NR; ++j) {
      const std::uint32_t s = hsum(acc[i][j]) - 128u * wsum[j] + static_cast<std::uint32_t>(g.corr[n + j]);
      g.y[(m + i) * g.y_rs + (n + j) * g.y_cs] = detail::requantize(s, g, n + j);
    }
  }
}

void gemm_s8(const QGemmArgs& g, std::int64_t n_begin, std::int64_t n_end) {
  // a few activation rows (GEMV): the AVX2 kernel is faster there (no weight-sum pass; same bits)
  if (g.M < 4) return qgemm_avx2()->gemm_s8(g, n_begin, n_end);
  const __m512i ones = _mm512_set1_epi8(1);
  for (std::int64_t n0 = n_begin; n0 < n_end; n0 += 16) {
    const std::int64_t n1 = std::min(n_end, n0 + 16);
    std::uint32_t wsum[16];  // sum_k w[n, k] of this block's rows
    for (std::int64_t n = n0; n < n1; ++n) {
      __m512i s = _mm512_setzero_si512();
      for (std::int64_t k = 0; k < g.K; k += 64) s = _mm512_dpbusd_epi32(s, ones, load_k(g.w + n * g.K, k, g.K));
      wsum[n - n0] = hsum(s);
    }
    std::int64_t m = 0;
    for (; m + 4 <= g.M; m += 4) {
      std::int64_t n = n0;
      for (; n + 4 <= n1; n += 4) s8_block<4, 4>(g, m, n, wsum + (n - n0));
      for (; n < n1; ++n) s8_block<4, 1>(g, m, n, wsum + (n - n0));
    }
    for (; m < g.M; ++m) {
      std::int64_t n = n0;
      for (; n + 4 <= n1; n += 4) s8_block<1, 4>(g, m, n, wsum + (n - n0));
      for (; n < n1; ++n) s8_block<1, 1>(g, m, n, wsum + (n - n0));
    }
  }
}

// ---------------------------------------------------------------- ternary (W2A8)

// 64 code bytes = two 128-weight blocks; shift 2i and mask 3 give the codes of k = 32i + j of the
// first block in bytes 0-31 and of the second in bytes 32-63, so the activations are the two
// matching 32-byte runs. An odd last block runs with the upper half masked to zero.
inline __m512i t2_act(const std::int8_t* a, std::int64_t b, int i, bool two) {
  const __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + b + 32 * i));
  const __m256i hi = two ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + b + 128 + 32 * i)) : _mm256_setzero_si256();
  return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

template <int MR, int NR>
void t2_block(const QGemmPackedArgs& g, std::int64_t m, std::int64_t n) {
  const std::int64_t KB = g.K_pad / 4;
  const __m512i mask3 = _mm512_set1_epi8(3);
  __m512i acc[MR][NR];
  #pragma GCC unroll 4
  for (int i = 0; i < MR; ++i)
    #pragma GCC unroll 4
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_si512();
  for (std::int64_t b = 0; b < g.K_pad; b += 256) {
    const bool two = b + 256 <= g.K_pad;
    __m512i w[NR];
    #pragma GCC unroll 4
    for (int j = 0; j < NR; ++j) {
      const std::uint8_t* p = g.w + (n + j) * KB + b / 4;
      w[j] = two ? _mm512_loadu_si512(p) : _mm512_maskz_loadu_epi8(0xFFFFFFFFull, p);
    }
    #pragma GCC unroll 4
    for (int s = 0; s < 4; ++s) {
      __m512i c[NR];
      #pragma GCC unroll 4
      for (int j = 0; j < NR; ++j) c[j] = _mm512_and_si512(_mm512_srli_epi16(w[j], 2 * s), mask3);
      #pragma GCC unroll 4
      for (int i = 0; i < MR; ++i) {
        const __m512i av = t2_act(g.a + (m + i) * g.K_pad, b, s, two);
        #pragma GCC unroll 4
        for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], c[j], av);
      }
    }
  }
  #pragma GCC unroll 4
  for (int i = 0; i < MR; ++i)
    #pragma GCC unroll 4
    for (int j = 0; j < NR; ++j)
      g.y[(m + i) * g.y_rs + (n + j) * g.y_cs] = detail::finish_t2(hsum(acc[i][j]), g, m + i, n + j);
}

// ---------------------------------------------------------------- binary (W1A8)

// Activations at K_pad (a multiple of 32): 64-byte steps, a last 32-byte step masked.
template <int MR, int NR>
void b1_block(const QGemmPackedArgs& g, std::int64_t m, std::int64_t n) {
  const std::int64_t KB = g.K_pad / 8;
  const __m512i ones = _mm512_set1_epi8(1);
  __m512i acc[MR][NR];
  #pragma GCC unroll 4
  for (int i = 0; i < MR; ++i)
    #pragma GCC unroll 4
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_si512();
  for (std::int64_t k = 0; k < g.K_pad; k += 64) {
    const bool full = k + 64 <= g.K_pad;
    __mmask64 wm[NR];
    #pragma GCC unroll 4
    for (int j = 0; j < NR; ++j) {
      const std::uint8_t* p = g.w + (n + j) * KB + k / 8;
      std::uint64_t bits;
      if (full) {
        std::memcpy(&bits, p, 8);
      } else {
        std::uint32_t half;
        std::memcpy(&half, p, 4);
        bits = half;
      }
      wm[j] = _cvtu64_mask64(bits);
    }
    __m512i wb[NR];  // the bits as bytes {0, 1}: the unsigned operand, so sum_k bit_k * a_k is one vpdpbusd
    #pragma GCC unroll 4
    for (int j = 0; j < NR; ++j) wb[j] = _mm512_maskz_mov_epi8(wm[j], ones);
    #pragma GCC unroll 4
    for (int i = 0; i < MR; ++i) {
      const std::int8_t* ap = g.a + (m + i) * g.K_pad + k;
      const __m512i a = full ? _mm512_loadu_si512(ap) : _mm512_maskz_loadu_epi8(0xFFFFFFFFull, ap);
      #pragma GCC unroll 4
      for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], wb[j], a);
    }
  }
  #pragma GCC unroll 4
  for (int i = 0; i < MR; ++i)
    #pragma GCC unroll 4
    for (int j = 0; j < NR; ++j)
      g.y[(m + i) * g.y_rs + (n + j) * g.y_cs] = detail::finish_b1(hsum(acc[i][j]), g, m + i, n + j);
}

template <class Args, void (*B44)(const Args&, std::int64_t, std::int64_t),
          void (*B41)(const Args&, std::int64_t, std::int64_t), void (*B14)(const Args&, std::int64_t, std::int64_t),
          void (*B11)(const Args&, std::int64_t, std::int64_t)>
void blocked(const Args& g, std::int64_t n_begin, std::int64_t n_end) {
  for (std::int64_t n0 = n_begin; n0 < n_end; n0 += 16) {  // 16 weight rows stay in L1 across every m
    const std::int64_t n1 = std::min(n_end, n0 + 16);
    std::int64_t m = 0;
    for (; m + 4 <= g.M; m += 4) {
      std::int64_t n = n0;
      for (; n + 4 <= n1; n += 4) B44(g, m, n);
      for (; n < n1; ++n) B41(g, m, n);
    }
    for (; m < g.M; ++m) {
      std::int64_t n = n0;
      for (; n + 4 <= n1; n += 4) B14(g, m, n);
      for (; n < n1; ++n) B11(g, m, n);
    }
  }
}

void gemm_t2(const QGemmPackedArgs& g, std::int64_t n_begin, std::int64_t n_end) {
  blocked<QGemmPackedArgs, t2_block<4, 4>, t2_block<4, 1>, t2_block<1, 4>, t2_block<1, 1>>(g, n_begin, n_end);
}

void gemm_b1(const QGemmPackedArgs& g, std::int64_t n_begin, std::int64_t n_end) {
  blocked<QGemmPackedArgs, b1_block<4, 4>, b1_block<4, 1>, b1_block<1, 4>, b1_block<1, 1>>(g, n_begin, n_end);
}

// ---------------------------------------------------------------- XNOR (W1A1)

inline __m512i popcnt_bytes(__m512i v, __m512i lut, __m512i low4) {
  const __m512i lo = _mm512_shuffle_epi8(lut, _mm512_and_si512(v, low4));
  const __m512i hi = _mm512_shuffle_epi8(lut, _mm512_and_si512(_mm512_srli_epi16(v, 4), low4));
  return _mm512_add_epi8(lo, hi);
}

template <int MR, int NR>
void xnor_block(const QGemmXnorArgs& g, std::int64_t m, std::int64_t n) {
  const __m512i lut = _mm512_broadcast_i32x4(_mm_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4));
  const __m512i low4 = _mm512_set1_epi8(15), zero = _mm512_setzero_si512();
  std::int64_t tot[MR][NR] = {};
  for (std::int64_t b0 = 0; b0 < g.KB; b0 += 31 * 64) {  // byte counts <= 8 per step: 31 steps fit uint8
    const std::int64_t b1 = std::min(g.KB, b0 + 31 * 64);
    __m512i acc[MR][NR];
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
      for (int j = 0; j < NR; ++j) acc[i][j] = zero;
    for (std::int64_t b = b0; b < b1; b += 64) {  // the last step masked: zero bytes count 0
      const __mmask64 mask = b + 64 <= b1 ? ~__mmask64{0} : (std::uint64_t{1} << (b1 - b)) - 1;
      __m512i a[MR];
#pragma GCC unroll 4
      for (int i = 0; i < MR; ++i) a[i] = _mm512_maskz_loadu_epi8(mask, g.a + (m + i) * g.KB + b);
#pragma GCC unroll 4
      for (int j = 0; j < NR; ++j) {
        const __m512i w = _mm512_maskz_loadu_epi8(mask, g.w + (n + j) * g.KB + b);
#pragma GCC unroll 4
        for (int i = 0; i < MR; ++i) acc[i][j] = _mm512_add_epi8(acc[i][j], popcnt_bytes(_mm512_xor_si512(a[i], w), lut, low4));
      }
    }
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
      for (int j = 0; j < NR; ++j) tot[i][j] += _mm512_reduce_add_epi64(_mm512_sad_epu8(acc[i][j], zero));
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j)
      g.y[(m + i) * g.y_rs + (n + j) * g.y_cs] = detail::finish_xnor(tot[i][j], g, m + i, n + j);
}

void gemm_xnor(const QGemmXnorArgs& g, std::int64_t n_begin, std::int64_t n_end) {
  blocked<QGemmXnorArgs, xnor_block<4, 4>, xnor_block<4, 1>, xnor_block<1, 4>, xnor_block<1, 1>>(g, n_begin, n_end);
}

// ---------------------------------------------------------------- W4A8, groups of 32

// 32 code bytes = two 32-weight chunks (16 bytes each: low nibbles k = j, high k = j + 16): the low
// nibbles of both chunks, then the high ones, make 64 unsigned bytes [c0 k0-15 | c1 k0-15 | c0 k16-31
// | c1 k16-31]; the activation row is permuted once to the same order ([A0 A2 A1 A3] per 64 bytes),
// vpdpbusd gives four int32 lanes per chunk half, and a transposing hadd tree turns four such
// steps into eight consecutive group sums. The float64 combination is w4_finish4.h's.
inline __m256i w4_pair(const std::uint8_t* w, const std::int8_t* ap) {
  const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w));
  const __m256i low4 = _mm256_set1_epi8(15);
  const __m512i c = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_and_si256(v, low4)),
                                       _mm256_and_si256(_mm256_srli_epi16(v, 4), low4), 1);
  const __m512i d = _mm512_dpbusd_epi32(_mm512_setzero_si512(), c, _mm512_loadu_si512(ap));
  // lanes 0-3: chunk 0, 4-7: chunk 1 (the k0-15 and k16-31 halves added)
  return _mm256_add_epi32(_mm512_castsi512_si256(d), _mm512_extracti64x4_epi64(d, 1));
}

inline void w4_row_sums(const std::int8_t* ap, const std::int8_t* a, const std::uint8_t* w, std::int64_t G,
                        std::int32_t* sums) {
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  std::int64_t gi = 0;
  for (; gi + 8 <= G; gi += 8) {  // four chunk pairs: groups gi .. gi + 7
    const __m256i p0 = w4_pair(w + gi * 16, ap + gi * 32), p1 = w4_pair(w + gi * 16 + 32, ap + gi * 32 + 64);
    const __m256i p2 = w4_pair(w + gi * 16 + 64, ap + gi * 32 + 128), p3 = w4_pair(w + gi * 16 + 96, ap + gi * 32 + 192);
    // hadd(hadd(p0, p1), hadd(p2, p3)) lanes: [g0, g2, g4, g6, g1, g3, g5, g7] (g = gi + ...)
    const __m256i u = _mm256_hadd_epi32(_mm256_hadd_epi32(p0, p1), _mm256_hadd_epi32(p2, p3));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(sums + gi), _mm256_permutevar8x32_epi32(u, order));
  }
  for (; gi < G; ++gi) sums[gi] = detail::dot_w4_chunk(a + gi * 32, w + gi * 16);
}

void gemm_w4(const QGemmW4Args& g, std::int64_t n_begin, std::int64_t n_end) {
  if (g.group != 32) return qgemm_avx2()->gemm_w4(g, n_begin, n_end);
  const std::int64_t G = g.K / 32, K64 = g.K & ~std::int64_t{63};
  std::vector<std::int8_t> ap(static_cast<std::size_t>(g.M * g.K));  // the rows permuted once per call
  for (std::int64_t m = 0; m < g.M; ++m) {
    for (std::int64_t k = 0; k < K64; k += 64) {  // [A0 A1 A2 A3] -> [A0 A2 A1 A3]
      const __m512i v = _mm512_loadu_si512(g.a + m * g.K + k);
      _mm512_storeu_si512(ap.data() + m * g.K + k, _mm512_shuffle_i64x2(v, v, _MM_SHUFFLE(3, 1, 2, 0)));
    }
  }
  detail::w4_gemm_blocks(g, n_begin, n_end, [&](std::int64_t m, const std::uint8_t* w, std::int32_t* sums) {
    w4_row_sums(ap.data() + m * g.K, g.a + m * g.K, w, G, sums);
  });
}

}  // namespace

const QGemmKernels* qgemm_avx512() {
  static const QGemmKernels k = [] {
    QGemmKernels t = *qgemm_avx2();  // activation quantization and the weight-only W4 kernel
    t.gemm_s8 = &gemm_s8;
    t.gemm_w4 = &gemm_w4;
    t.gemm_t2 = &gemm_t2;
    t.gemm_b1 = &gemm_b1;
    t.gemm_xnor = &gemm_xnor;
    return t;
  }();
  return &k;
}

}  // namespace qatkit::kernels::cpu

#else

namespace qatkit::kernels::cpu {
const QGemmKernels* qgemm_avx512() { return nullptr; }
}  // namespace qatkit::kernels::cpu

#endif
