// Integer GEMM compiled with -mavx2: int8 x int8 products through vpmaddubsw with the sign trick
// (|a| as the unsigned operand, sign(a) moved onto the weight, which the narrow range [-127, 127]
// keeps from overflowing: |a| * |w| <= 128 * 127, a pair sum <= 32512 < 2^15, so the int16 sums
// never saturate), vpmaddwd to int32. Exact integer sums: the same bits as the baseline.
#include "qgemm_cpu.h"

#if defined(__AVX2__)
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "../../common/thread_scratch.h"
#include "loops.h"
#include "w4_finish4.h"

namespace qatkit::kernels::cpu {
namespace avx2 {
void conv_w4(const QConvDirectArgs& g, std::int64_t m_begin, std::int64_t m_end);  // avx2_w4conv.cpp
}  // namespace avx2
namespace {

inline __m256i madd_s8(__m256i ua, __m256i sa, __m256i w, __m256i ones) {
  // w * sign(a): 0 where a == 0; the product |a| * (w * sign(a)) == a * w
  const __m256i ws = _mm256_sign_epi8(w, sa);
  return _mm256_madd_epi16(_mm256_maddubs_epi16(ua, ws), ones);
}

inline std::uint32_t hsum(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
  return static_cast<std::uint32_t>(_mm_cvtsi128_si32(s));
}

// quantize_code (fake_quant_scalar.h) eight lanes at a time: r = round-half-even(x * inv_s), clamped
// to [qmin - z, qmax - z] (NaN: z), + z - shift, as int32 lanes; one() the scalar form (the same
// bits), for the tails.
struct Codes8 {
  __m256 inv, lo, hi;
  __m256i off;
  float inv1, lo1, hi1, z;
  std::int32_t shift;

  explicit Codes8(const ActQuantArgs& q)
      : inv(_mm256_set1_ps(q.inv_scale)), lo(_mm256_set1_ps(static_cast<float>(q.quant_min - q.zero_point))),
        hi(_mm256_set1_ps(static_cast<float>(q.quant_max - q.zero_point))),
        off(_mm256_set1_epi32(q.zero_point - q.shift)), inv1(q.inv_scale),
        lo1(static_cast<float>(q.quant_min - q.zero_point)), hi1(static_cast<float>(q.quant_max - q.zero_point)),
        z(static_cast<float>(q.zero_point)), shift(q.shift) {}

  __m256i operator()(__m256 v) const {
    __m256 r = _mm256_round_ps(_mm256_mul_ps(v, inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    r = _mm256_min_ps(_mm256_max_ps(r, lo), hi);  // a NaN r becomes lo here; the blend below makes it z
    r = _mm256_blendv_ps(r, _mm256_setzero_ps(), _mm256_cmp_ps(v, v, _CMP_UNORD_Q));  // NaN -> code z
    return _mm256_add_epi32(_mm256_cvtps_epi32(r), off);
  }
  std::int32_t one(float v) const {
    return static_cast<std::int32_t>(quantize_code<float>(v, inv1, lo1, hi1, z)) - shift;
  }
};

// Codes8's codes narrowed to int8; with q.divisor, x / d first (IEEE division), row by row.
void quantize_rows(const float* x, std::int8_t* a, std::int64_t K, const ActQuantArgs& q, std::int64_t begin,
                   std::int64_t end) {
  const Codes8 codes(q);
  __m256 nan8 = _mm256_setzero_ps();  // lanes that saw a NaN (q.nan_seen; the same compare Codes8 makes)
  int nan1 = 0;
  const auto code8 = [&](__m256 v, std::int8_t* out) {
    nan8 = _mm256_or_ps(nan8, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    const __m256i c = codes(v);  // eight int32 in [-128, 127] -> int8
    const __m128i c16 = _mm_packs_epi32(_mm256_castsi256_si128(c), _mm256_extracti128_si256(c, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(out), _mm_packs_epi16(c16, c16));
  };
  const auto code1 = [&](float v) {
    nan1 |= static_cast<int>(v != v);
    return static_cast<std::int8_t>(codes.one(v));
  };
  if (q.divisor) {
    for (std::int64_t r = begin; r < end; ++r) {
      const float* xr = x + r * K;
      std::int8_t* ar = a + r * K;
      std::int64_t k = 0;
      for (; k + 8 <= K; k += 8) code8(_mm256_div_ps(_mm256_loadu_ps(xr + k), _mm256_loadu_ps(q.divisor + k)), ar + k);
      for (; k < K; ++k) ar[k] = code1(xr[k] / q.divisor[k]);
    }
  } else {
    const std::int64_t n0 = begin * K, n1 = end * K;
    std::int64_t i = n0;
    for (; i + 8 <= n1; i += 8) code8(_mm256_loadu_ps(x + i), a + i);
    for (; i < n1; ++i) a[i] = code1(x[i]);  // the scalar loop finishes the tail
  }
  if ((nan1 || _mm256_movemask_ps(nan8)) && q.nan_seen) __atomic_store_n(q.nan_seen, 1, __ATOMIC_RELAXED);
}

// quantize_rows' codes (Codes8) of rows of n floats (row r at x + r * n), stored as int16 at a + r *
// a_rs. A row's tail (n - i < 8 floats, so short rows, a depthwise plane's, stay vectorized) loads a
// whole vector that reads on into the next rows where the rows continue (the last row's through a
// masked load, zeros past its end), counts NaNs only in its own lanes and copies its codes out;
// q.nan_seen as quantize_rows. One call per plane or image (the call's setup once).
void quantize_s16(const float* x, std::int64_t rows, std::int64_t n, std::int16_t* a, std::int64_t a_rs,
                  const ActQuantArgs& q) {
  const Codes8 codes(q);
  __m256 nan8 = _mm256_setzero_ps();
  const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const std::int64_t total = rows * n;
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * n;
    std::int16_t* ar = a + r * a_rs;
    std::int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
      const __m256 v = _mm256_loadu_ps(xr + i);
      nan8 = _mm256_or_ps(nan8, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
      const __m256i c = codes(v);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(ar + i),
                       _mm_packs_epi32(_mm256_castsi256_si128(c), _mm256_extracti128_si256(c, 1)));
    }
    if (i < n) {
      const std::int64_t rem = n - i;
      const __m256i own = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(rem)), lanes);
      const __m256 v = total - (r * n + i) >= 8 ? _mm256_loadu_ps(xr + i) : _mm256_maskload_ps(xr + i, own);
      nan8 = _mm256_or_ps(nan8, _mm256_and_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q), _mm256_castsi256_ps(own)));
      const __m256i c = codes(v);
      // the rem < 8 codes stored as 4, 2 and 1 of them (no call to memcpy)
      __m128i t = _mm_packs_epi32(_mm256_castsi256_si128(c), _mm256_extracti128_si256(c, 1));
      std::int16_t* d = ar + i;
      if (rem & 4) {
        _mm_storel_epi64(reinterpret_cast<__m128i*>(d), t);
        t = _mm_srli_si128(t, 8);
        d += 4;
      }
      if (rem & 2) {
        const std::int32_t two = _mm_cvtsi128_si32(t);
        std::memcpy(d, &two, 4);
        t = _mm_srli_si128(t, 4);
        d += 2;
      }
      if (rem & 1) *d = static_cast<std::int16_t>(_mm_cvtsi128_si32(t));
    }
  }
  if (_mm256_movemask_ps(nan8) && q.nan_seen) __atomic_store_n(q.nan_seen, 1, __ATOMIC_RELAXED);
}

// QGemmKernels::pack_sign_zero: 32 codes a step, vpcmpgtb / vpcmpeqb against zero and vpmovmskb
// give the 32 sign and zero bits at once (bit e of byte j: code 8 j + e, little-endian), the last
// 8-code steps at 128 bits. pack_codes8's bits for codes in {-1, 0, 1}.
std::int64_t pack_sign_zero(const std::int8_t* codes, std::int64_t n, std::uint8_t* sign, std::uint8_t* zero,
                            std::int32_t* counts, std::int64_t group) {
  std::int64_t zeros = 0, i = 0;
  const __m256i z = _mm256_setzero_si256();
  for (; i + 32 <= n; i += 32) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + i));
    const auto pos = static_cast<std::uint32_t>(_mm256_movemask_epi8(_mm256_cmpgt_epi8(v, z)));
    const auto zer = static_cast<std::uint32_t>(_mm256_movemask_epi8(_mm256_cmpeq_epi8(v, z)));
    std::memcpy(sign + i / 8, &pos, 4);
    std::memcpy(zero + i / 8, &zer, 4);
    zeros += __builtin_popcount(zer);
  }
  for (; i < n; i += 8) {
    const __m128i v = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(codes + i));
    const auto zer = static_cast<std::uint32_t>(_mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_setzero_si128()))) & 0xFFu;
    sign[i / 8] = static_cast<std::uint8_t>(_mm_movemask_epi8(_mm_cmpgt_epi8(v, _mm_setzero_si128())));
    zero[i / 8] = static_cast<std::uint8_t>(zer);
    zeros += __builtin_popcount(zer);
  }
  if (counts != nullptr) detail::zero_counts(zero, n, group, counts);
  return zeros;
}

// The panel layout (QGemmArgs): one 16-row panel's step is two vectors of 8 rows x 4 k, and
// vpmaddwd's int32 lanes are the rows' sums: MR activation rows x NR panels in 2 * MR * NR
// accumulators, no horizontal sums (4 x 1; one row: 1 x 4, four weight streams sharing the
// broadcast, each prefetched into L2 a kilobyte ahead). part holds a tile's lanes between K blocks
// ([row][NR * 16]).
//   Sign trick (Split false): the panel's bytes xor 0x80 are w; |a| (unsigned) against w * sign(a):
//     three multiply-pipe uops per 32 products (vpsignb, vpmaddubsw, vpmaddwd).
//   Split (QGemmArgs' split records): w0 is the caller's L1 copy of the split codes w' (signed) and a
//     holds u = a + 128 (the caller's copy of the rows, xor 0x80): a broadcast of four u (unsigned)
//     against w', two multiply-pipe uops per 32 products, exact because every pair of w' is safe;
//     the caller adds the entries' residual and takes 128 * sum w' off.
template <int MR, int NR, bool Split>
void s8p_tile(const std::int8_t* a, std::int64_t a_rs, const std::uint8_t* w0, std::int64_t ps, std::int64_t s0,
              std::int64_t s1, std::int32_t* part, bool first, const std::uint8_t* pf = nullptr,
              std::int64_t pf_lines = 0) {
  const __m256i ones = _mm256_set1_epi16(1), flip = _mm256_set1_epi8(static_cast<char>(0x80));
  __m256i acc[MR][2 * NR];
  #pragma GCC unroll 4
  for (int i = 0; i < MR; ++i)
    #pragma GCC unroll 8
    for (int h = 0; h < 2 * NR; ++h)
      acc[i][h] = first ? _mm256_setzero_si256() : _mm256_loadu_si256(reinterpret_cast<const __m256i*>(part + i * NR * 16 + h * 8));
  const std::int8_t* ap[MR];
  #pragma GCC unroll 4
  for (int i = 0; i < MR; ++i) ap[i] = a + i * a_rs;
  const std::uint8_t* wp[NR];
  #pragma GCC unroll 4
  for (int j = 0; j < NR; ++j) wp[j] = w0 + j * ps;
  for (std::int64_t s = s0; s < s1; ++s) {
    if (Split && s - s0 < pf_lines) __builtin_prefetch(pf + (s - s0) * 64, 0, 2);
    __m256i w[2 * NR];
    #pragma GCC unroll 4
    for (int j = 0; j < NR; ++j) {
      if (NR > 1) __builtin_prefetch(wp[j] + s * 64 + 1024, 0, 2);
      const __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp[j] + s * 64));
      const __m256i hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp[j] + s * 64 + 32));
      w[2 * j] = Split ? lo : _mm256_xor_si256(lo, flip);
      w[2 * j + 1] = Split ? hi : _mm256_xor_si256(hi, flip);
    }
    #pragma GCC unroll 4
    for (int i = 0; i < MR; ++i) {
      std::int32_t four;
      std::memcpy(&four, ap[i] + 4 * s, 4);
      const __m256i b = _mm256_set1_epi32(four);
      if constexpr (Split) {
        #pragma GCC unroll 8
        for (int h = 0; h < 2 * NR; ++h)
          acc[i][h] = _mm256_add_epi32(acc[i][h], _mm256_madd_epi16(_mm256_maddubs_epi16(b, w[h]), ones));
      } else {
        const __m256i ub = _mm256_sign_epi8(b, b);  // |a| (-128 -> 0x80 = 128 unsigned)
        #pragma GCC unroll 8
        for (int h = 0; h < 2 * NR; ++h) acc[i][h] = _mm256_add_epi32(acc[i][h], madd_s8(ub, b, w[h], ones));
      }
    }
  }
  #pragma GCC unroll 4
  for (int i = 0; i < MR; ++i)
    #pragma GCC unroll 8
    for (int h = 0; h < 2 * NR; ++h) _mm256_storeu_si256(reinterpret_cast<__m256i*>(part + i * NR * 16 + h * 8), acc[i][h]);
}

// Rows [0, mt) of one panel over steps [s0, s1): tiles of 4 rows, then one of the rest.
// pf: pf_lines cache lines for the first tile to fetch into L2, a line per step (Split only).
template <bool Split>
void s8p_rows(const std::int8_t* a, std::int64_t a_rs, const std::uint8_t* wp, std::int64_t s0, std::int64_t s1,
              std::int64_t mt, std::int32_t* part, bool first, const std::uint8_t* pf = nullptr,
              std::int64_t pf_lines = 0) {
  std::int64_t m = 0;
  for (; m + 4 <= mt; m += 4) {
    s8p_tile<4, 1, Split>(a + m * a_rs, a_rs, wp, 0, s0, s1, part + m * 16, first, pf, pf_lines);
    pf_lines = 0;
  }
  const std::int64_t r = mt - m;
  if (r == 3) s8p_tile<3, 1, Split>(a + m * a_rs, a_rs, wp, 0, s0, s1, part + m * 16, first);
  if (r == 2) s8p_tile<2, 1, Split>(a + m * a_rs, a_rs, wp, 0, s0, s1, part + m * 16, first);
  if (r == 1) s8p_tile<1, 1, Split>(a + m * a_rs, a_rs, wp, 0, s0, s1, part + m * 16, first);
}

// Eight rows of eight 32-bit lanes (v) stored transposed: row c of the result at dst + c * dst_rs
// (unpack, shuffle, 128-bit permute; floats or integers by their bits).
inline void transpose8x8_store(const __m256 v[8], float* dst, std::int64_t dst_rs) {
  __m256 t[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(v[2 * i], v[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(v[2 * i], v[2 * i + 1]);
  }
  __m256 u[8];
  for (int i = 0; i < 2; ++i) {
    u[4 * i] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
    u[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
    u[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
    u[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
  }
  for (int i = 0; i < 4; ++i) {
    _mm256_storeu_ps(dst + i * dst_rs, _mm256_permute2f128_ps(u[i], u[4 + i], 0x20));
    _mm256_storeu_ps(dst + (4 + i) * dst_rs, _mm256_permute2f128_ps(u[i], u[4 + i], 0x31));
  }
}

// rows x cols of 32-bit lanes (load(p): the eight at p, as __m256) transposed into dst (dst[c * dst_rs
// + r] = src[r * src_rs + c]) in 8 x 8 blocks; the edges by the tiled loop.
template <class S, class D, class Load>
void transpose_blocks(const S* src, std::int64_t rows, std::int64_t cols, std::int64_t src_rs, D* dst,
                      std::int64_t dst_rs, const Load& load) {
  const std::int64_t R = rows / 8 * 8, Cc = cols / 8 * 8;
  // tiles of 64 source rows, the column blocks outer within a tile: each destination row gets 256
  // contiguous bytes per tile (whole lines). Row blocks outer wrote 32 bytes into every destination
  // row in turn, and with rows 4 KiB apart (a 32 x 32 conv output's planes) all of them share one L1
  // set: XNOR 8 x 16 x 32 x 32 -> 96 spent 43 % of its time here, 1.36x faster tiled
  // (docs/benchmarks.md, nineteenth session)
  constexpr std::int64_t kTile = 64;
  for (std::int64_t t0 = 0; t0 < R; t0 += kTile) {
    const std::int64_t t1 = std::min(R, t0 + kTile);
    for (std::int64_t c0 = 0; c0 < Cc; c0 += 8) {
      for (std::int64_t r0 = t0; r0 < t1; r0 += 8) {
        __m256 v[8];
        for (int i = 0; i < 8; ++i) v[i] = load(src + (r0 + i) * src_rs + c0);
        transpose8x8_store(v, reinterpret_cast<float*>(dst + c0 * dst_rs + r0), dst_rs);
      }
    }
  }
  // 4 more rows, if there are, in 4 x 8 blocks (two 4 x 4 transposes, one per 128-bit half): a
  // channels_last image of under 8 pixels (MobileNetV2's 2 x 2 maps) is 4 rows of C columns, which
  // the scalar loop below moved at a quarter of this speed (docs/benchmarks.md, twenty-first session)
  const std::int64_t R4 = rows - R >= 4 ? R + 4 : R;
  if (R4 > R) {
    for (std::int64_t c0 = 0; c0 < Cc; c0 += 8) {
      __m256 v[4];
      for (int i = 0; i < 4; ++i) v[i] = load(src + (R + i) * src_rs + c0);
      const __m256 t0 = _mm256_unpacklo_ps(v[0], v[1]), t1 = _mm256_unpackhi_ps(v[0], v[1]);
      const __m256 t2 = _mm256_unpacklo_ps(v[2], v[3]), t3 = _mm256_unpackhi_ps(v[2], v[3]);
      // u[j]: column j of the block in the low half, column 4 + j in the high half
      const __m256 u[4] = {_mm256_shuffle_ps(t0, t2, 0x44), _mm256_shuffle_ps(t0, t2, 0xEE),
                           _mm256_shuffle_ps(t1, t3, 0x44), _mm256_shuffle_ps(t1, t3, 0xEE)};
      auto* d = reinterpret_cast<float*>(dst + c0 * dst_rs + R);
      for (int j = 0; j < 4; ++j) {
        _mm_storeu_ps(d + j * dst_rs, _mm256_castps256_ps128(u[j]));
        _mm_storeu_ps(d + (4 + j) * dst_rs, _mm256_extractf128_ps(u[j], 1));
      }
    }
  }
  if (Cc < cols) detail::transpose_tiled(src + Cc, R4, cols - Cc, src_rs, dst + Cc * dst_rs, dst_rs);
  if (R4 < rows) detail::transpose_tiled(src + R4 * src_rs, rows - R4, cols, src_rs, dst + R4, dst_rs);
}

// Rows [0, rows) of int8 codes (src_rs apart) widened and transposed: dst[c * dst_rs + r] (8 x 8
// blocks: pmovsxbd, then transpose8x8_store on the bits; edges tiled).
void transpose_s8_s32(const std::int8_t* src, std::int64_t rows, std::int64_t cols, std::int64_t src_rs,
                      std::int32_t* dst, std::int64_t dst_rs) {
  transpose_blocks(src, rows, cols, src_rs, dst, dst_rs, [](const std::int8_t* p) {
    std::int64_t b;
    std::memcpy(&b, p, 8);
    return _mm256_castsi256_ps(_mm256_cvtepi8_epi32(_mm_cvtsi64_si128(b)));
  });
}

// A split block's residual entries (QGemmArgs) on the chunk's rows transposed (at[k * mt + i]): per
// lane and 32 rows, each entry adds r times the rows' codes (vpmulld) into four accumulators, then
// into part's lanes; the rows past the last 32 by a scalar loop through tmp. Exact modulo 2^32.
void residual_rows(const std::int32_t* rec, const std::int32_t* at, std::int64_t mt, std::int32_t* part,
                   std::int64_t part_rs, std::uint32_t* tmp) {
  const std::int32_t* off = rec + 17;
  const std::int32_t* ent = rec + 34;
  const std::int64_t m32 = mt / 32 * 32;
  for (int l = 0; l < 16; ++l) {
    if (off[l] == off[l + 1]) continue;
    for (std::int64_t i0 = 0; i0 < m32; i0 += 32) {
      __m256i acc[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256()};
      for (std::int32_t e = off[l]; e < off[l + 1]; ++e) {
        const std::int32_t v = ent[e];
        const __m256i r = _mm256_set1_epi32(v >> 24);
        const std::int32_t* col = at + static_cast<std::int64_t>(v & 0xffffff) * mt + i0;
        for (int j = 0; j < 4; ++j)
          acc[j] = _mm256_add_epi32(acc[j], _mm256_mullo_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(col + 8 * j)), r));
      }
      alignas(32) std::int32_t sum[32];
      for (int j = 0; j < 4; ++j) _mm256_store_si256(reinterpret_cast<__m256i*>(sum + 8 * j), acc[j]);
      for (int i = 0; i < 32; ++i)
        part[(i0 + i) * part_rs + l] =
            static_cast<std::int32_t>(static_cast<std::uint32_t>(part[(i0 + i) * part_rs + l]) + static_cast<std::uint32_t>(sum[i]));
    }
  }
  if (m32 < mt) {  // the last rows: the portable loop on a record view of them
    for (int l = 0; l < 16; ++l) {
      if (off[l] == off[l + 1]) continue;
      for (std::int64_t i = m32; i < mt; ++i) tmp[i] = 0;
      for (std::int32_t e = off[l]; e < off[l + 1]; ++e) {
        const std::int32_t v = ent[e];
        const std::int32_t* col = at + static_cast<std::int64_t>(v & 0xffffff) * mt;
        for (std::int64_t i = m32; i < mt; ++i) tmp[i] += static_cast<std::uint32_t>(col[i]) * static_cast<std::uint32_t>(v >> 24);
      }
      for (std::int64_t i = m32; i < mt; ++i)
        part[i * part_rs + l] = static_cast<std::int32_t>(static_cast<std::uint32_t>(part[i * part_rs + l]) + tmp[i]);
    }
  }
}

// Steps [s0, s1) of a split block into buf (the tile's signed bytes): the panel's codes xor 0x80,
// then w' = w - r at the block's entries in the slice (rec: its record).
void split_slice(const std::uint8_t* wp, const std::int32_t* rec, std::int64_t s0, std::int64_t s1, std::uint8_t* buf) {
  const __m256i flip = _mm256_set1_epi8(static_cast<char>(0x80));
  for (std::int64_t i = 0; i < (s1 - s0) * 2; ++i)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(buf + 32 * i),
                        _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp + s0 * 64 + 32 * i)), flip));
  const std::int32_t* ent = rec + 34;
  for (int l = 0; l < 16; ++l) {
    for (std::int32_t e = rec[17 + l]; e < rec[18 + l]; ++e) {
      const std::int64_t k = ent[e] & 0xffffff;
      if (k < 4 * s0 || k >= 4 * s1) continue;
      std::uint8_t* p = buf + (k / 4 - s0) * 64 + 4 * l + k % 4;
      *p = static_cast<std::uint8_t>(*p - static_cast<std::uint8_t>(ent[e] >> 24));
    }
  }
}

// Per chunk of rows, per panel (one row: per four panels), per K block (the panel's slice, 256 steps
// x 64 bytes = 16 KiB, stays in L1 while the row tiles pass over it), then the requantization of the
// panels' columns. Chunks of 24 rows or more run split blocks on the split codes (their slice copied
// once per chunk and K block, amortized over the chunk's row tiles), then the entries' residual on
// the chunk's rows transposed (residual_rows); fewer rows (memory-bound) run the sign trick.
void gemm_s8_panel(const QGemmArgs& g, std::int64_t n_begin, std::int64_t n_end) {
  constexpr std::int64_t kSteps = 256, kRows = 192, kSplitRows = 24;
  const std::int64_t K4 = (g.K + 3) / 4, a_rs = 4 * K4, ps = 64 * K4;
  const std::uint8_t* w = reinterpret_cast<const std::uint8_t*>(g.w);
  const std::int64_t steps = g.M <= 4 ? K4 : kSteps;
  struct PartTag {};
  struct SliceTag {};
  struct TransposeTag {};
  struct TmpTag {};
  struct URowsTag {};
  std::int32_t* part = thread_scratch<std::int32_t, PartTag>(
      static_cast<std::size_t>(std::max<std::int64_t>(4, std::min(g.M, kRows)) * 16));
  for (std::int64_t m0 = 0; m0 < g.M; m0 += kRows) {
    const std::int64_t m1 = std::min(g.M, m0 + kRows), mt = m1 - m0;
    const std::int8_t* am = g.a + m0 * a_rs;
    // made at the chunk's first split block: its rows as u = a + 128, and transposed (the residual)
    std::int8_t* u = nullptr;
    std::int32_t* at = nullptr;
    for (std::int64_t n0 = n_begin; n0 < n_end;) {
      const std::int64_t b = n0 / 16;
      const std::uint8_t* wp = w + b * ps;
      const std::int32_t* rec = detail::s8_panel_record(g, b);
      const bool split = mt >= kSplitRows && detail::s8_panel_split(rec);
      const bool four = g.M == 1 && n_end - n0 > 48;  // one row: four panels at once
      if (split && u == nullptr) {
        u = thread_scratch<std::int8_t, URowsTag>(static_cast<std::size_t>(mt * a_rs));
        const __m256i flip = _mm256_set1_epi8(static_cast<char>(0x80));
        std::int64_t i = 0;
        for (; i + 32 <= mt * a_rs; i += 32)
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(u + i),
                              _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(am + i)), flip));
        for (; i < mt * a_rs; ++i) u[i] = static_cast<std::int8_t>(am[i] ^ 0x80);
        at = thread_scratch<std::int32_t, TransposeTag>(static_cast<std::size_t>(g.K * mt));
        transpose_s8_s32(am, mt, g.K, a_rs, at, mt);
      }
      std::uint8_t* slice = split ? thread_scratch<std::uint8_t, SliceTag>(static_cast<std::size_t>(kSteps * 64)) : nullptr;
      for (std::int64_t s0 = 0; s0 < K4; s0 += steps) {
        const std::int64_t s1 = std::min(K4, s0 + steps);
        const bool first = s0 == 0;
        if (four) {
          s8p_tile<1, 4, false>(g.a, a_rs, wp, ps, s0, s1, part, first);
        } else if (split) {
          split_slice(wp, rec, s0, s1, slice);
          // the next slice (this block's next K block, or the next block's first) fetched into L2 a
          // line per step by the first row tile, so the next copy finds it there
          const bool last = s1 >= K4;
          const std::uint8_t* next = last ? (n0 + 16 < n_end ? wp + ps : nullptr) : wp + s1 * 64;
          const std::int64_t lines = next ? std::min(last ? K4 : K4 - s1, steps) : 0;
          s8p_rows<true>(u + 4 * s0, a_rs, slice, 0, s1 - s0, mt, part, first, next, lines);
        } else {
          s8p_rows<false>(am, a_rs, wp, s0, s1, mt, part, first);
        }
      }
      const std::int64_t nn = std::min<std::int64_t>(four ? 64 : 16, n_end - n0);
      const std::int64_t part_rs = four ? 64 : 16;
      // corr, and for a split block 128 * sum w' off each column (the lanes then hold sum a * w')
      // and the entries' residual into the lanes
      std::int32_t off[64];
      for (std::int64_t j = 0; j < nn; ++j)
        off[j] = static_cast<std::int32_t>(static_cast<std::uint32_t>(g.corr[n0 + j]) -
                                           (split ? static_cast<std::uint32_t>(rec[1 + j]) : 0u));
      if (split) {
        struct ResidualTag {};
        residual_rows(rec, at, mt, part, part_rs, thread_scratch<std::uint32_t, ResidualTag>(static_cast<std::size_t>(mt)));
      }
      if (!four && nn == 16 && g.y_cs == 1) {
        // the same float operations as detail::requantize, 8 lanes at a time (no contraction:
        // a multiply, then an add, each rounded as the scalar form rounds them)
        const __m256i c0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(off));
        const __m256i c1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(off + 8));
        const __m256 sc0 = _mm256_loadu_ps(g.out_scale + n0), sc1 = _mm256_loadu_ps(g.out_scale + n0 + 8);
        const __m256 b0 = g.bias ? _mm256_loadu_ps(g.bias + n0) : _mm256_setzero_ps();
        const __m256 b1 = g.bias ? _mm256_loadu_ps(g.bias + n0 + 8) : _mm256_setzero_ps();
        for (std::int64_t m = m0; m < m1; ++m) {
          const std::int32_t* pr = part + (m - m0) * 16;
          __m256 y0 = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(pr)), c0)), sc0);
          __m256 y1 = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(pr + 8)), c1)), sc1);
          if (g.bias) {
            y0 = _mm256_add_ps(y0, b0);
            y1 = _mm256_add_ps(y1, b1);
          }
          _mm256_storeu_ps(g.y + m * g.y_rs + n0, y0);
          _mm256_storeu_ps(g.y + m * g.y_rs + n0 + 8, y1);
        }
        n0 += nn;
        continue;
      }
      for (std::int64_t m = m0; m < m1; ++m) {
        for (std::int64_t j = 0; j < nn; ++j) {
          const std::uint32_t acc = static_cast<std::uint32_t>(part[(m - m0) * part_rs + j]) +
                                    static_cast<std::uint32_t>(off[j]);
          g.y[m * g.y_rs + (n0 + j) * g.y_cs] = detail::requantize(acc, g, n0 + j);
        }
      }
      n0 += nn;
    }
  }
}

// Four weight rows against one activation row: the activation chunk is loaded once per four dots.
void gemm_s8(const QGemmArgs& g, std::int64_t n_begin, std::int64_t n_end) {
  if (g.panel) return gemm_s8_panel(g, n_begin, n_end);
  const std::int64_t K = g.K, K32 = K & ~std::int64_t{31};
  const __m256i ones = _mm256_set1_epi16(1);
  for (std::int64_t m = 0; m < g.M; ++m) {
    const std::int8_t* a = g.a + m * K;
    float* y = g.y + m * g.y_rs;  // column n at y[n * g.y_cs]
    std::int64_t n = n_begin;
    for (; n + 4 <= n_end; n += 4) {
      const std::int8_t* w0 = g.w + n * K;
      __m256i c0 = _mm256_setzero_si256(), c1 = c0, c2 = c0, c3 = c0;
      for (std::int64_t k = 0; k < K32; k += 32) {
        if (g.M <= 2 && (k & 63) == 0) {  // GEMV: each weight row once per call, four rows ahead into L2
          for (int j = 0; j < 4; ++j) __builtin_prefetch(w0 + (4 + j) * K + k, 0, 2);
        }
        const __m256i va = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + k));
        const __m256i ua = _mm256_sign_epi8(va, va);  // |a| (-128 -> 0x80 = 128 unsigned)
        c0 = _mm256_add_epi32(c0, madd_s8(ua, va, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w0 + k)), ones));
        c1 = _mm256_add_epi32(c1, madd_s8(ua, va, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w0 + K + k)), ones));
        c2 = _mm256_add_epi32(c2, madd_s8(ua, va, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w0 + 2 * K + k)), ones));
        c3 = _mm256_add_epi32(c3, madd_s8(ua, va, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w0 + 3 * K + k)), ones));
      }
      const __m256i cs[4] = {c0, c1, c2, c3};
      for (int j = 0; j < 4; ++j) {
        std::uint32_t acc = hsum(cs[j]) + static_cast<std::uint32_t>(g.corr[n + j]);
        acc = detail::dot_s8(a, g.w + (n + j) * K, K32, K, acc);
        y[(n + j) * g.y_cs] = detail::requantize(acc, g, n + j);
      }
    }
    for (; n < n_end; ++n) {
      const std::int8_t* w = g.w + n * K;
      __m256i c = _mm256_setzero_si256();
      for (std::int64_t k = 0; k < K32; k += 32) {
        const __m256i va = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + k));
        c = _mm256_add_epi32(c, madd_s8(_mm256_sign_epi8(va, va), va,
                                        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + k)), ones));
      }
      const std::uint32_t acc = detail::dot_s8(a, w, K32, K, hsum(c) + static_cast<std::uint32_t>(g.corr[n]));
      y[n * g.y_cs] = detail::requantize(acc, g, n);
    }
  }
}

// Ternary: per 128-weight block, 32 bytes hold four 32-code vectors (shift, mask 3); the codes
// {0, 1, 2} are vpmaddubsw's unsigned operand and the activations its signed one: pair sums
// <= 2 * 2 * 128 never saturate. Four weight rows per activation row share the activation loads.
void gemm_t2(const QGemmPackedArgs& g, std::int64_t n_begin, std::int64_t n_end) {
  const std::int64_t KB = g.K_pad / 4;  // bytes per weight row
  const __m256i ones = _mm256_set1_epi16(1), mask = _mm256_set1_epi8(3);
  for (std::int64_t m = 0; m < g.M; ++m) {
    const std::int8_t* a = g.a + m * g.K_pad;
    float* y = g.y + m * g.y_rs;  // column n at y[n * g.y_cs]
    std::int64_t n = n_begin;
    for (; n + 4 <= n_end; n += 4) {
      const std::uint8_t* w0 = g.w + n * KB;
      if (g.M <= 2) detail::prefetch_rows(g.w, n + 16, 4, n_end, KB);
      __m256i c[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256()};
      for (std::int64_t b = 0; b < g.K_pad; b += 128) {
        const __m256i a0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + b));
        const __m256i a1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + b + 32));
        const __m256i a2 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + b + 64));
        const __m256i a3 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + b + 96));
        for (int r = 0; r < 4; ++r) {
          const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w0 + r * KB + b / 4));
          __m256i s = _mm256_maddubs_epi16(_mm256_and_si256(v, mask), a0);
          s = _mm256_add_epi16(s, _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(v, 2), mask), a1));
          s = _mm256_add_epi16(s, _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(v, 4), mask), a2));
          s = _mm256_add_epi16(s, _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(v, 6), mask), a3));
          // four pair sums of |.| <= 512 each: |s| <= 2048, exact in int16
          c[r] = _mm256_add_epi32(c[r], _mm256_madd_epi16(s, ones));
        }
      }
      for (int r = 0; r < 4; ++r) y[(n + r) * g.y_cs] = detail::finish_t2(hsum(c[r]), g, m, n + r);
    }
    for (; n < n_end; ++n) y[n * g.y_cs] = detail::finish_t2(detail::dot_t2(a, g.w + n * KB, g.K_pad), g, m, n);
  }
}

// Binary: 32 weights = one 32-bit word; each byte of the word is broadcast to 8 lanes and masked
// with its lane's bit, and vpminub with 1 turns that into a 0 / 1 byte (1 where the weight is +1);
// vpmaddubsw of those bytes (unsigned) with the activations (signed) sums the activations there in
// pairs (<= 256; eight chunks add in int16 to <= 2048), widened per 256: five vector uops per 32
// weights and row (shuffle, and, min, maddubs, add), where a compare to 0xFF and an and with the
// activations took six (1.07-1.15x at 4096 x 4096, batch 1, on the Xeon of 2026-12-03).
inline __m256i bit_01(const std::uint8_t* w) {
  std::uint32_t word;
  std::memcpy(&word, w, 4);
  const __m256i bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(static_cast<int>(word)),
                                            _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2,
                                                             2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3));
  const __m256i bits = _mm256_set1_epi64x(static_cast<long long>(0x8040201008040201ULL));
  return _mm256_min_epu8(_mm256_and_si256(bytes, bits), _mm256_set1_epi8(1));
}

// Binary on the panel layout (QGemmPackedArgs::panel): lookup tables in the manner of T-MAC (Wei
// et al. 2024), exact. Each activation a = 16 * hi + lo splits into lo = a & 15 in [0, 15] and
// hi = a >> 4 in [-8, 7]; for each group of four activations, two 16-entry byte tables hold the
// sums of lo and of hi over the activations that index j's bits select ([0, 60] and [-32, 28]: exact
// in a byte). A panel step is 8 weights of 32 rows, one nibble per group: vpshufb looks up 32 rows'
// partial sums at once, the two groups of a step add in bytes, vpunpck{l,h}bw pairs (lo, hi) per row
// and vpmaddubsw by (1, 16) gives lo + 16 hi = the rows' sums over the step's set bits, in int16
// ([-1024, 1016]: 32 steps add exactly, -32768 included), widened every 32 steps. 15 vector uops
// per 256 weights where the row layout's bit-to-byte expansion takes five per 32.
//
// The tables of one activation row: per step s, 64 bytes [lo(2s) | lo(2s + 1) | hi(2s) | hi(2s + 1)];
// each 128-bit lane builds one group's table by four vpshufb that pick a[4 group + i] where bit i of
// the entry's index is set (0x80: zero) and three adds.
inline void b1_tables(const std::int8_t* a, std::int64_t S, std::uint8_t* t) {
  alignas(32) std::int8_t pick[4][32];
  for (int i = 0; i < 4; ++i)
    for (int lane = 0; lane < 2; ++lane)
      for (int j = 0; j < 16; ++j) pick[i][lane * 16 + j] = static_cast<std::int8_t>((j >> i) & 1 ? 4 * lane + i : -128);
  const __m256i p0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(pick[0]));
  const __m256i p1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(pick[1]));
  const __m256i p2 = _mm256_load_si256(reinterpret_cast<const __m256i*>(pick[2]));
  const __m256i p3 = _mm256_load_si256(reinterpret_cast<const __m256i*>(pick[3]));
  const __m256i low4 = _mm256_set1_epi8(15), eight = _mm256_set1_epi8(8);
  const auto sums = [&](__m256i v) {
    return _mm256_add_epi8(_mm256_add_epi8(_mm256_shuffle_epi8(v, p0), _mm256_shuffle_epi8(v, p1)),
                           _mm256_add_epi8(_mm256_shuffle_epi8(v, p2), _mm256_shuffle_epi8(v, p3)));
  };
  for (std::int64_t s = 0; s < S; ++s) {
    long long word;
    std::memcpy(&word, a + 8 * s, 8);
    const __m256i v = _mm256_set1_epi64x(word);  // a[8s .. 8s + 7] in both halves of each lane
    const __m256i lo = _mm256_and_si256(v, low4);
    // a >> 4 per byte, sign-extended from 4 bits: ((a >> 4) & 15) ^ 8 - 8
    const __m256i hi = _mm256_sub_epi8(_mm256_xor_si256(_mm256_and_si256(_mm256_srli_epi16(v, 4), low4), eight), eight);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(t + 64 * s), sums(lo));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(t + 64 * s + 32), sums(hi));
  }
}

inline __m256i bcast128(const std::uint8_t* p) {
  return _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

// Rows [32 R, 32 R + 32) of one activation row's tables t: their sums over the set bits, in order.
// pf: prefetch the weight stream this many bytes ahead (a line per two steps), or 0. Measured at
// 4096 x 4096, batch 1, DRAM regime (one process, interleaved; docs/benchmarks.md): 0 / 512 / 1024 /
// 2048 / 4096 / 8192 bytes ahead took 252 / 206 / 194 / 180 / 174 / 177 us.
constexpr std::int64_t kB1Ahead = 4096;
inline void b1_lut_block(const std::uint8_t* wb, const std::uint8_t* t, std::int64_t S, std::int32_t* out, std::int64_t pf) {
  const __m256i low4 = _mm256_set1_epi8(15), c116 = _mm256_set1_epi16(16 << 8 | 1);
  __m256i r0 = _mm256_setzero_si256(), r1 = r0, r2 = r0, r3 = r0;  // rows 0-7, 8-15, 16-23, 24-31 (int32)
  for (std::int64_t s0 = 0; s0 < S; s0 += 32) {
    const std::int64_t s1 = std::min(S, s0 + 32);
    __m256i a0 = _mm256_setzero_si256(), a1 = a0;  // int16: rows 0-7 | 16-23, rows 8-15 | 24-31
    for (std::int64_t s = s0; s < s1; ++s) {
      if (pf && (s & 1) == 0) _mm_prefetch(reinterpret_cast<const char*>(wb + 32 * s + pf), _MM_HINT_T0);
      const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb + 32 * s));
      const __m256i i0 = _mm256_and_si256(w, low4), i1 = _mm256_and_si256(_mm256_srli_epi16(w, 4), low4);
      const std::uint8_t* ts = t + 64 * s;
      const __m256i lo = _mm256_add_epi8(_mm256_shuffle_epi8(bcast128(ts), i0), _mm256_shuffle_epi8(bcast128(ts + 16), i1));
      const __m256i hi =
          _mm256_add_epi8(_mm256_shuffle_epi8(bcast128(ts + 32), i0), _mm256_shuffle_epi8(bcast128(ts + 48), i1));
      // bytes (lo, hi) per row -> lo + 16 hi: the unsigned operand is the constant, lo <= 120 and
      // hi in [-64, 56] are exact as signed bytes
      a0 = _mm256_add_epi16(a0, _mm256_maddubs_epi16(c116, _mm256_unpacklo_epi8(lo, hi)));
      a1 = _mm256_add_epi16(a1, _mm256_maddubs_epi16(c116, _mm256_unpackhi_epi8(lo, hi)));
    }
    r0 = _mm256_add_epi32(r0, _mm256_cvtepi16_epi32(_mm256_castsi256_si128(a0)));
    r1 = _mm256_add_epi32(r1, _mm256_cvtepi16_epi32(_mm256_castsi256_si128(a1)));
    r2 = _mm256_add_epi32(r2, _mm256_cvtepi16_epi32(_mm256_extracti128_si256(a0, 1)));
    r3 = _mm256_add_epi32(r3, _mm256_cvtepi16_epi32(_mm256_extracti128_si256(a1, 1)));
  }
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), r0);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 8), r1);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 16), r2);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 24), r3);
}

// Activation rows in chunks of up to 64 (their tables, 8 bytes per activation, stay in L2); per
// 32-row weight block every row of the chunk (the block, 4 K_pad bytes, stays in L1).
void gemm_b1_panel(const QGemmPackedArgs& g, std::int64_t n_begin, std::int64_t n_end) {
  const std::int64_t S = g.K_pad / 8, MC = std::min<std::int64_t>(g.M, 64);
  std::vector<std::uint8_t> tab(static_cast<std::size_t>(MC * S * 64));
  alignas(32) std::int32_t sums[32];
  for (std::int64_t m0 = 0; m0 < g.M; m0 += MC) {
    const std::int64_t mc = std::min(MC, g.M - m0);
    for (std::int64_t j = 0; j < mc; ++j) b1_tables(g.a + (m0 + j) * g.K_pad, S, tab.data() + j * S * 64);
    for (std::int64_t R = n_begin / 32; R * 32 < n_end; ++R) {
      const std::int64_t r_lo = std::max(n_begin, R * 32) - R * 32, r_hi = std::min(n_end, R * 32 + 32) - R * 32;
      for (std::int64_t j = 0; j < mc; ++j) {
        // the first activation row streams the block from memory (prefetched); the others find it in L1
        b1_lut_block(g.w + R * S * 32, tab.data() + j * S * 64, S, sums, j == 0 ? kB1Ahead : 0);
        for (std::int64_t r = r_lo; r < r_hi; ++r) {
          g.y[(m0 + j) * g.y_rs + (R * 32 + r) * g.y_cs] =
              detail::finish_b1(static_cast<std::uint32_t>(sums[r]), g, m0 + j, R * 32 + r);
        }
      }
    }
  }
}

void gemm_b1(const QGemmPackedArgs& g, std::int64_t n_begin, std::int64_t n_end) {
  if (g.panel) return gemm_b1_panel(g, n_begin, n_end);
  const std::int64_t KB = g.K_pad / 8;
  const __m256i ones16 = _mm256_set1_epi16(1);
  for (std::int64_t m = 0; m < g.M; ++m) {
    const std::int8_t* a = g.a + m * g.K_pad;
    float* y = g.y + m * g.y_rs;  // column n at y[n * g.y_cs]
    std::int64_t n = n_begin;
    for (; n + 4 <= n_end; n += 4) {
      const std::uint8_t* w0 = g.w + n * KB;
      if (g.M <= 2) detail::prefetch_rows(g.w, n + 16, 4, n_end, KB);
      __m256i c[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256()};
      for (std::int64_t k0 = 0; k0 < g.K_pad; k0 += 256) {  // up to 8 chunks of 32 summed in int16
        const std::int64_t k1 = std::min(g.K_pad, k0 + 256);
        __m256i s[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256()};
        for (std::int64_t k = k0; k < k1; k += 32) {
          const __m256i va = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + k));
          for (int r = 0; r < 4; ++r) {
            s[r] = _mm256_add_epi16(s[r], _mm256_maddubs_epi16(bit_01(w0 + r * KB + k / 8), va));
          }
        }
        for (int r = 0; r < 4; ++r) c[r] = _mm256_add_epi32(c[r], _mm256_madd_epi16(s[r], ones16));
      }
      for (int r = 0; r < 4; ++r) y[(n + r) * g.y_cs] = detail::finish_b1(hsum(c[r]), g, m, n + r);
    }
    for (; n < n_end; ++n) y[n * g.y_cs] = detail::finish_b1(detail::dot_b1(a, g.w + n * KB, g.K_pad), g, m, n);
  }
}

// W4A8: 16 bytes per 32-weight chunk; low and high nibbles are k = j and j + 16, so the two 16-byte
// halves of one 32-byte register line up with 32 consecutive activations. vpmaddubsw of the codes
// [0, 15] (unsigned) and the activations (signed): pair sums <= 2 * 15 * 128 = 3840; up to eight
// chunks add in int16 (30720 < 2^15) before vpmaddwd widens them.
inline __m256i w4_chunk(const std::int8_t* a, const std::uint8_t* w, __m128i low4, __m256i ones) {
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w));
  const __m256i c = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), low4), _mm_and_si128(v, low4));
  return _mm256_madd_epi16(_mm256_maddubs_epi16(c, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a))), ones);
}

// The eight int32 lanes of each of v[0..7] summed: [sum v0, ..., sum v7] (a transposing hadd tree).
inline __m256i hsum8(const __m256i* v) {
  const __m256i t0 = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
  const __m256i t1 = _mm256_hadd_epi32(_mm256_hadd_epi32(v[4], v[5]), _mm256_hadd_epi32(v[6], v[7]));
  return _mm256_add_epi32(_mm256_permute2x128_si256(t0, t1, 0x20), _mm256_permute2x128_si256(t0, t1, 0x31));
}

// The group code sums of one W4 row (groups of 32), eight at a time through hsum8.
inline void w4_row_sums(const std::int8_t* a, const std::uint8_t* w, std::int64_t G, std::int32_t* sums, __m128i low4,
                        __m256i ones) {
  std::int64_t gi = 0;
  for (; gi + 8 <= G; gi += 8) {
    __m256i v[8];
    for (int j = 0; j < 8; ++j) v[j] = w4_chunk(a + (gi + j) * 32, w + (gi + j) * 16, low4, ones);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(sums + gi), hsum8(v));
  }
  for (; gi < G; ++gi) sums[gi] = static_cast<std::int32_t>(hsum(w4_chunk(a + gi * 32, w + gi * 16, low4, ones)));
}

// Groups of 32 (w4a8_g32): the group sums of four weight rows, then their float64 combination four
// rows at once (w4_finish4.h: the baseline's bits).
void gemm_w4_g32(const QGemmW4Args& g, std::int64_t n_begin, std::int64_t n_end) {
  const __m256i ones = _mm256_set1_epi16(1);
  const __m128i low4 = _mm_set1_epi8(15);
  const std::int64_t G = g.K / 32;
  detail::w4_gemm_blocks(g, n_begin, n_end, [&](const std::int8_t* a, const std::uint8_t* w, std::int32_t* sums) {
    w4_row_sums(a, w, G, sums, low4, ones);
  });
}

// Rows [n, n + nr) of a float [rows, G] matrix as float64 in dst [G][16] (zeros past nr): 8 x 8
// tiles transposed in registers and widened, the last G % 8 columns one by one. A scalar loop (one
// convert and a 128-byte-strided store per value) took about 40 % of the W4A8 GEMV at 4096 x 4096.
inline void scales_f64_by_group(const float* src, std::int64_t G, std::int64_t n, int nr, double* dst) {
  std::int64_t g0 = 0;
  for (; g0 + 8 <= G; g0 += 8) {
    for (int r0 = 0; r0 < 16; r0 += 8) {
      __m256 v[8];
      for (int i = 0; i < 8; ++i) v[i] = r0 + i < nr ? _mm256_loadu_ps(src + (n + r0 + i) * G + g0) : _mm256_setzero_ps();
      // 8 x 8 transpose: t[j] holds column g0 + j of rows r0 .. r0 + 7
      const __m256 a0 = _mm256_unpacklo_ps(v[0], v[1]), a1 = _mm256_unpackhi_ps(v[0], v[1]);
      const __m256 a2 = _mm256_unpacklo_ps(v[2], v[3]), a3 = _mm256_unpackhi_ps(v[2], v[3]);
      const __m256 a4 = _mm256_unpacklo_ps(v[4], v[5]), a5 = _mm256_unpackhi_ps(v[4], v[5]);
      const __m256 a6 = _mm256_unpacklo_ps(v[6], v[7]), a7 = _mm256_unpackhi_ps(v[6], v[7]);
      const __m256 b0 = _mm256_shuffle_ps(a0, a2, 0x44), b1 = _mm256_shuffle_ps(a0, a2, 0xEE);
      const __m256 b2 = _mm256_shuffle_ps(a1, a3, 0x44), b3 = _mm256_shuffle_ps(a1, a3, 0xEE);
      const __m256 b4 = _mm256_shuffle_ps(a4, a6, 0x44), b5 = _mm256_shuffle_ps(a4, a6, 0xEE);
      const __m256 b6 = _mm256_shuffle_ps(a5, a7, 0x44), b7 = _mm256_shuffle_ps(a5, a7, 0xEE);
      const __m256 t[8] = {_mm256_permute2f128_ps(b0, b4, 0x20), _mm256_permute2f128_ps(b1, b5, 0x20),
                           _mm256_permute2f128_ps(b2, b6, 0x20), _mm256_permute2f128_ps(b3, b7, 0x20),
                           _mm256_permute2f128_ps(b0, b4, 0x31), _mm256_permute2f128_ps(b1, b5, 0x31),
                           _mm256_permute2f128_ps(b2, b6, 0x31), _mm256_permute2f128_ps(b3, b7, 0x31)};
      for (int j = 0; j < 8; ++j) {
        double* d = dst + (g0 + j) * 16 + r0;
        _mm256_storeu_pd(d, _mm256_cvtps_pd(_mm256_castps256_ps128(t[j])));
        _mm256_storeu_pd(d + 4, _mm256_cvtps_pd(_mm256_extractf128_ps(t[j], 1)));
      }
    }
  }
  for (; g0 < G; ++g0) {
    for (int r = 0; r < 16; ++r) dst[g0 * 16 + r] = r < nr ? static_cast<double>(src[(n + r) * G + g0]) : 0.0;
  }
}

// Groups of 32 (one chunk each), one activation row: the panel's chunks are contiguous (256 bytes
// each), so the block streams straight through; each chunk's 16 int32 group sums take the -8 Σa
// term from nag (per group, precomputed once per call) and go straight into the float64 combination
// (no int32 accumulation across chunks, no group counter).
inline void w4p_row_g32(const std::int8_t* a, const std::uint8_t* t, std::int64_t chunks, const double* scale,
                        const std::int32_t* zero, const std::int32_t* nag, const detail::NextBlockScales& next,
                        __m256d* t4) {
  const __m256i low4 = _mm256_set1_epi8(15), ones16 = _mm256_set1_epi16(1);
  for (std::int64_t ci = 0; ci < chunks; ++ci, t += 256) {
    for (int l = 0; l < 4; ++l) __builtin_prefetch(t + 8192 + 64 * l, 0, 2);  // the panel stream, 8 KiB ahead
    next.at_group(ci);
    __m256i s16[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
#pragma GCC unroll 4
    for (int e = 0; e < 4; ++e) {
      std::int32_t alo, ahi;
      std::memcpy(&alo, a + 32 * ci + 4 * e, 4);
      std::memcpy(&ahi, a + 32 * ci + 16 + 4 * e, 4);
      const __m256i vlo = _mm256_set1_epi32(alo), vhi = _mm256_set1_epi32(ahi);
#pragma GCC unroll 2
      for (int h = 0; h < 2; ++h) {
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t + e * 64 + h * 32));
        const __m256i lo = _mm256_and_si256(v, low4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4);
        s16[h] = _mm256_add_epi16(s16[h], _mm256_add_epi16(_mm256_maddubs_epi16(lo, vlo), _mm256_maddubs_epi16(hi, vhi)));
      }
    }
    const __m256i ag = _mm256_set1_epi32(nag[ci]);
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {
      __m256i v = _mm256_add_epi32(_mm256_madd_epi16(s16[h], ones16), ag);
      if (zero) v = _mm256_add_epi32(v, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(zero + ci * 16 + 8 * h)));
      const double* sc = scale + ci * 16 + 8 * h;
      t4[2 * h] = _mm256_fmadd_pd(_mm256_cvtepi32_pd(_mm256_castsi256_si128(v)), _mm256_loadu_pd(sc), t4[2 * h]);
      t4[2 * h + 1] = _mm256_fmadd_pd(_mm256_cvtepi32_pd(_mm256_extracti128_si256(v, 1)), _mm256_loadu_pd(sc + 4),
                                      t4[2 * h + 1]);
    }
  }
}

// The panel layout (pack_int4_panel): one activation row at a time against a block of 16 weight rows,
// one row per 32-bit lane in two 8-lane halves. vpmaddubsw of the nibbles [0, 15] and the broadcast
// activations a[k .. k + 3] (pair sums <= 3840; a chunk's eight add in int16, <= 30720), vpmaddwd to
// int32 per chunk, then the float64 combination in four 4-lane quarters, one row per lane, in the
// baseline's order (the product of an |acc| < 2^29 and a float32 scale is exact, so the fused
// multiply-add rounds as multiply-then-add): the baseline's bits with no horizontal sums.
void gemm_w4_panel(const QGemmW4Args& g, std::int64_t n_begin, std::int64_t n_end) {
  const std::int64_t KB = g.K / 2, steps = (KB + 63) / 64, G = g.K / g.group, chunks = g.K / 32, gc = g.group / 32;
  const __m256i low4 = _mm256_set1_epi8(15), ones16 = _mm256_set1_epi16(1), ones8 = _mm256_set1_epi8(1);
  std::vector<double> scale(static_cast<std::size_t>(G * 16));
  std::vector<std::int32_t> zero(static_cast<std::size_t>(G * 16));
  // one activation row, groups of 32: w4p_row_g32 (4-7 % faster at 4096 x 4096 than the general loop)
  const bool row_g32 = gc == 1 && g.M == 1;
  std::vector<std::int32_t> nag(static_cast<std::size_t>(row_g32 ? G : 0));  // -8 * a_gsum of the row, per group
  for (std::int64_t gi = 0; gi < static_cast<std::int64_t>(nag.size()); ++gi) nag[gi] = -8 * g.a_gsum[gi];
  std::vector<std::uint8_t> nib(static_cast<std::size_t>(g.M >= 2 ? chunks * 512 : 0));
  const auto nibbles = [&](const std::uint8_t* t, int e, int h, __m256i& lo, __m256i& hi) __attribute__((always_inline)) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t + e * 64 + h * 32));
    lo = _mm256_and_si256(v, low4);
    hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4);
  };
  for (std::int64_t n = n_begin; n < n_end; n += 16) {  // n_begin is a multiple of 16
    const int nr = static_cast<int>(std::min<std::int64_t>(16, n_end - n));
    const std::uint8_t* codes = g.w + (n / 16) * steps * 1024;
    const detail::NextBlockScales next(g.gscale, G, n, n_end);
    if (g.blocked_scales) {  // the block's [G][16] as they are, widened
      const float* sb = g.gscale + (n / 16) * G * 16;
      for (std::int64_t i = 0; i < G * 16; i += 4) _mm256_storeu_pd(scale.data() + i, _mm256_cvtps_pd(_mm_loadu_ps(sb + i)));
    } else {
      scales_f64_by_group(g.gscale, G, n, nr, scale.data());
    }
    if (g.act_offset != 0) {  // act_offset * sum q per group and row
      __m256i zs[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
      for (std::int64_t ci = 0, gdone = 0, left = gc; ci < chunks; ++ci) {  // no division per chunk
        const std::uint8_t* t = codes + (ci / 4) * 1024 + (ci % 4) * 256;
        for (int h = 0; h < 2; ++h) {
          __m256i s16 = _mm256_setzero_si256();
          for (int e = 0; e < 4; ++e) {
            __m256i lo, hi;
            nibbles(t, e, h, lo, hi);
            s16 = _mm256_add_epi16(s16, _mm256_add_epi16(_mm256_maddubs_epi16(lo, ones8), _mm256_maddubs_epi16(hi, ones8)));
          }
          zs[h] = _mm256_add_epi32(zs[h], _mm256_madd_epi16(s16, ones16));
        }
        if (--left == 0) {
          left = gc;
          for (int h = 0; h < 2; ++h) {
            const __m256i q = _mm256_sub_epi32(zs[h], _mm256_set1_epi32(static_cast<std::int32_t>(8 * g.group)));
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(zero.data() + gdone * 16 + 8 * h),
                                _mm256_mullo_epi32(q, _mm256_set1_epi32(g.act_offset)));
            zs[h] = _mm256_setzero_si256();
          }
          ++gdone;
        }
      }
    }
    // several activation rows: the block's nibbles unpacked once into bytes ([chunk][e][h][lo, hi]
    // x 32 bytes), so each row's pass loads them instead of masking and shifting them again
    // (1.04-1.11x from 13 to 23296 rows on Zen 4's AVX2 table, docs/benchmarks.md twenty-fourth session)
    const bool unpacked = g.M >= 2;
    if (unpacked) {
      for (std::int64_t ci = 0; ci < chunks; ++ci) {
        const std::uint8_t* t = codes + (ci / 4) * 1024 + (ci % 4) * 256;
        for (int e = 0; e < 4; ++e)
          for (int h = 0; h < 2; ++h) {
            __m256i lo, hi;
            nibbles(t, e, h, lo, hi);
            std::uint8_t* d = nib.data() + ((ci * 4 + e) * 2 + h) * 64;
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(d), lo);
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + 32), hi);
          }
      }
    }
    for (std::int64_t m = 0; m < g.M; ++m) {
      const std::int8_t* a = g.a + m * g.K;
      __m256i acc[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
      __m256d t4[4] = {_mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd()};
      if (row_g32) {
        w4p_row_g32(a, codes, chunks, scale.data(), g.act_offset != 0 ? zero.data() : nullptr, nag.data(), next, t4);
      } else
      for (std::int64_t ci = 0, gdone = 0, left = gc; ci < chunks; ++ci) {  // no division per chunk
        const std::uint8_t* t = codes + (ci / 4) * 1024 + (ci % 4) * 256;
        const std::int64_t k = ci * 32;
        if (g.M <= 2) {  // the panel stream, 8 KiB ahead into L2 (as the AVX-512 kernel)
          for (int l = 0; l < 4; ++l) __builtin_prefetch(t + 8192 + 64 * l, 0, 2);
        }
        __m256i s16[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
        for (int e = 0; e < 4; ++e) {
          std::int32_t alo, ahi;
          std::memcpy(&alo, a + k + 4 * e, 4);
          std::memcpy(&ahi, a + k + 16 + 4 * e, 4);
          const __m256i vlo = _mm256_set1_epi32(alo), vhi = _mm256_set1_epi32(ahi);
          for (int h = 0; h < 2; ++h) {
            __m256i lo, hi;
            if (unpacked) {
              const std::uint8_t* d = nib.data() + ((ci * 4 + e) * 2 + h) * 64;
              lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(d));
              hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(d + 32));
            } else {
              nibbles(t, e, h, lo, hi);
            }
            s16[h] = _mm256_add_epi16(s16[h], _mm256_add_epi16(_mm256_maddubs_epi16(lo, vlo), _mm256_maddubs_epi16(hi, vhi)));
          }
        }
        acc[0] = _mm256_add_epi32(acc[0], _mm256_madd_epi16(s16[0], ones16));
        acc[1] = _mm256_add_epi32(acc[1], _mm256_madd_epi16(s16[1], ones16));
        if (--left == 0) {
          left = gc;
          const std::int64_t gi = gdone++;
          if (m == 0) next.at_group(gi);
          const __m256i ag = _mm256_set1_epi32(8 * g.a_gsum[m * G + gi]);
          for (int h = 0; h < 2; ++h) {
            __m256i v = _mm256_sub_epi32(acc[h], ag);
            if (g.act_offset != 0) {
              v = _mm256_add_epi32(v, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(zero.data() + gi * 16 + 8 * h)));
            }
            const double* sc = scale.data() + gi * 16 + 8 * h;
            t4[2 * h] = _mm256_fmadd_pd(_mm256_cvtepi32_pd(_mm256_castsi256_si128(v)), _mm256_loadu_pd(sc), t4[2 * h]);
            t4[2 * h + 1] = _mm256_fmadd_pd(_mm256_cvtepi32_pd(_mm256_extracti128_si256(v, 1)), _mm256_loadu_pd(sc + 4),
                                            t4[2 * h + 1]);
            acc[h] = _mm256_setzero_si256();
          }
        }
      }
      alignas(32) float y[16];
      for (int q = 0; q < 4; ++q) {
        _mm_store_ps(y + 4 * q, _mm256_cvtpd_ps(_mm256_mul_pd(t4[q], _mm256_set1_pd(g.act_scale))));
      }
      for (int r = 0; r < nr; ++r) g.y[m * g.N + n + r] = g.bias ? y[r] + g.bias[n + r] : y[r];
    }
  }
}

void gemm_w4(const QGemmW4Args& g, std::int64_t n_begin, std::int64_t n_end) {
  if (g.panel) return gemm_w4_panel(g, n_begin, n_end);
  if (g.group == 32) return gemm_w4_g32(g, n_begin, n_end);
  const __m256i ones = _mm256_set1_epi16(1);
  const __m128i low4 = _mm_set1_epi8(15);
  const std::int64_t KB = g.K / 2, G = g.K / g.group;
  std::vector<std::int32_t> zt(static_cast<std::size_t>(G));
  for (std::int64_t n = n_begin; n < n_end; ++n) {
    const std::uint8_t* w = g.w + n * KB;
    detail::w4_zero_terms_row(g, w, zt.data());
    for (std::int64_t m = 0; m < g.M; ++m) {
      const std::int8_t* a = g.a + m * g.K;
      g.y[m * g.N + n] = detail::finish_w4(
          g, m, n,
          [&](std::int64_t gi) {
            __m256i acc32 = _mm256_setzero_si256();
            for (std::int64_t k0 = gi * g.group; k0 < (gi + 1) * g.group; k0 += 256) {
              const std::int64_t k1 = std::min((gi + 1) * g.group, k0 + 256);
              __m256i s16 = _mm256_setzero_si256();
              for (std::int64_t k = k0; k < k1; k += 32) {
                const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w + k / 2));
                const __m256i c = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), low4), _mm_and_si128(v, low4));
                const __m256i va = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + k));
                s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(c, va));
              }
              acc32 = _mm256_add_epi32(acc32, _mm256_madd_epi16(s16, ones));
            }
            return static_cast<std::int32_t>(hsum(acc32));
          },
          [&](std::int64_t gi) { return zt[static_cast<std::size_t>(gi)]; });
    }
  }
}

// XNOR (W1A1): popcount(a ^ w) 256 bits at a time by the nibble lookup (vpshufb on the low and high
// nibbles; Mula et al.), byte counts <= 8 per chunk added in uint8 for up to 31 chunks, then
// vpsadbw widens them. A block of 2 activation rows x 4 weight rows shares every load.
inline __m256i popcnt_bytes(__m256i v, __m256i lut, __m256i low4) {
  const __m256i lo = _mm256_shuffle_epi8(lut, _mm256_and_si256(v, low4));
  const __m256i hi = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(v, 4), low4));
  return _mm256_add_epi8(lo, hi);
}

inline std::int64_t hsum_u64(__m256i v) {
  const __m128i s = _mm_add_epi64(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  return _mm_cvtsi128_si64(s) + _mm_extract_epi64(s, 1);
}

// Rows with zero codes (padding, NaN) subtract popcount(z & w) chunk by chunk beside the xor
// counts (byte counts stay in [0, 8]: a zero code's sign bit is 0, so its weight bit is in the xor
// too); finish_xnor did it afterwards one dword at a time over the whole row, per output (60 % of
// a 3x3 XNOR conv's time on 4 x 4 images, where most positions touch the padding).
template <int MR, int NR>
void xnor_block(const QGemmXnorArgs& g, std::int64_t m, std::int64_t n, std::int64_t KB32) {
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2,
                                       3, 2, 3, 3, 4);
  const __m256i low4 = _mm256_set1_epi8(15), zero = _mm256_setzero_si256();
  bool hz[MR], any_zero = false;
  for (int i = 0; i < MR; ++i) any_zero |= (hz[i] = g.has_zero[m + i] != 0);
  std::int64_t tot[MR][NR] = {};
  for (std::int64_t b0 = 0; b0 < KB32; b0 += 31 * 32) {
    const std::int64_t b1 = std::min(KB32, b0 + 31 * 32);
    __m256i acc[MR][NR];
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) acc[i][j] = zero;
    for (std::int64_t b = b0; b < b1; b += 32) {
      __m256i a[MR];
      for (int i = 0; i < MR; ++i) a[i] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(g.a + (m + i) * g.KB + b));
      for (int j = 0; j < NR; ++j) {
        const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(g.w + (n + j) * g.KB + b));
        for (int i = 0; i < MR; ++i) acc[i][j] = _mm256_add_epi8(acc[i][j], popcnt_bytes(_mm256_xor_si256(a[i], w), lut, low4));
      }
      if (any_zero) {
        for (int i = 0; i < MR; ++i) {
          if (!hz[i]) continue;
          const __m256i z = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(g.z + (m + i) * g.KB + b));
          for (int j = 0; j < NR; ++j) {
            const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(g.w + (n + j) * g.KB + b));
            acc[i][j] = _mm256_sub_epi8(acc[i][j], popcnt_bytes(_mm256_and_si256(z, w), lut, low4));
          }
        }
      }
    }
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) tot[i][j] += hsum_u64(_mm256_sad_epu8(acc[i][j], zero));
  }
  for (int i = 0; i < MR; ++i) {
    const std::uint8_t* ar = g.a + (m + i) * g.KB;
    for (int j = 0; j < NR; ++j) {
      const std::uint8_t* wr = g.w + (n + j) * g.KB;
      std::int64_t c = tot[i][j] + detail::xor_count(ar, wr, KB32, g.KB);
      if (hz[i]) c -= detail::and_count(g.z + (m + i) * g.KB, wr, KB32, g.KB);
      g.y[(m + i) * g.y_rs + (n + j) * g.y_cs] = detail::finish_xnor_counted(c, g, m + i, n + j);
    }
  }
}

// Rows of fewer than 32 bytes (K < 256 bits: MobileNetV2's 1x1 convs from 16 channels) have no
// 32-byte chunk for xnor_block, which then counted each output by scalar dword popcounts and
// finish_xnor (1.6 ms for a batch-8 16 -> 96 channel 1x1 conv at 32 x 32, 4.5x oneDNN's fp32 one).
// Here eight outputs per vector: the eight rows' (y_rs == 1: NCHW planes) or the eight columns'
// (otherwise: row-major [M, N] tiles) dwords in the lanes, the other side's dword broadcast, byte
// popcounts summed over the row's D <= 7 dwords (<= 56 per byte), widened once, then finish_xnor's
// integer and float steps on eight lanes (the same operations in the same order: the same bits).
struct XnorSmallK {
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2,
                                       3, 2, 3, 3, 4);
  const __m256i low4 = _mm256_set1_epi8(15), ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);

  /// Per 32-bit lane: sum_d popcount(lanes[d] ^ broadcast(other[d])), minus the zero codes' bits of
  /// the weight: sum_d popcount(zlanes[d] & broadcast(other[d])) with the masks in the lanes, or
  /// sum_d popcount(lanes[d] & broadcast(zother[d])) with a broadcast mask (finish_xnor's correction).
  __m256i counts(const __m256i* lanes, const std::uint8_t* other, int D, const __m256i* zlanes,
                 const std::uint8_t* zother) const {
    __m256i c8 = _mm256_setzero_si256();
    for (int d = 0; d < D; ++d) {
      const __m256i o = _mm256_set1_epi32(static_cast<int>(detail::load32(other + 4 * d)));
      c8 = _mm256_add_epi8(c8, popcnt_bytes(_mm256_xor_si256(lanes[d], o), lut, low4));
      if (zlanes) c8 = _mm256_sub_epi8(c8, popcnt_bytes(_mm256_and_si256(zlanes[d], o), lut, low4));
      if (zother) {
        const __m256i zo = _mm256_set1_epi32(static_cast<int>(detail::load32(zother + 4 * d)));
        c8 = _mm256_sub_epi8(c8, popcnt_bytes(_mm256_and_si256(lanes[d], zo), lut, low4));
      }
    }
    // a zero code's bit counts in the xor (its sign bit is 0) and in the correction alike: every
    // byte stays in [0, 8 D]
    return _mm256_madd_epi16(_mm256_maddubs_epi16(c8, ones8), ones16);
  }
};

void xnor_small_k(const QGemmXnorArgs& g, std::int64_t n_begin, std::int64_t n_end) {
  const int D = static_cast<int>(g.KB / 4);
  const XnorSmallK k;
  alignas(32) std::int32_t buf[2 * 7 * 8];
  __m256i* lanes = reinterpret_cast<__m256i*>(buf);
  __m256i* zl = lanes + D;
  if (g.y_rs == 1) {  // eight rows in the lanes: contiguous stores along each column's plane
    std::int64_t m0 = 0;
    for (; m0 + 8 <= g.M; m0 += 8) {
      bool any_zero = false;
      for (int i = 0; i < 8; ++i) {
        const bool hz = g.has_zero[m0 + i] != 0;
        any_zero |= hz;
        for (int d = 0; d < D; ++d) {
          buf[d * 8 + i] = static_cast<std::int32_t>(detail::load32(g.a + (m0 + i) * g.KB + 4 * d));
          buf[(D + d) * 8 + i] = hz ? static_cast<std::int32_t>(detail::load32(g.z + (m0 + i) * g.KB + 4 * d)) : 0;
        }
      }
      const __m256i ak = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(g.a_k + m0));
      const __m256 rs = _mm256_loadu_ps(g.row_scale + m0);
      for (std::int64_t n = n_begin; n < n_end; ++n) {
        const __m256i c = k.counts(lanes, g.w + n * g.KB, D, any_zero ? zl : nullptr, nullptr);
        const __m256i acc = _mm256_sub_epi32(ak, _mm256_add_epi32(c, c));
        __m256 y = _mm256_mul_ps(_mm256_cvtepi32_ps(acc), _mm256_mul_ps(rs, _mm256_set1_ps(g.col_scale[n])));
        if (g.bias) y = _mm256_add_ps(y, _mm256_set1_ps(g.bias[n]));
        _mm256_storeu_ps(g.y + m0 + n * g.y_cs, y);
      }
    }
    for (; m0 < g.M; ++m0)
      for (std::int64_t n = n_begin; n < n_end; ++n)
        g.y[m0 + n * g.y_cs] = detail::finish_xnor(detail::xor_count(g.a + m0 * g.KB, g.w + n * g.KB, 0, g.KB), g, m0, n);
    return;
  }
  std::int64_t n0 = n_begin;  // eight columns in the lanes: contiguous stores along each row
  for (; n0 + 8 <= n_end; n0 += 8) {
    for (int i = 0; i < 8; ++i)
      for (int d = 0; d < D; ++d) buf[d * 8 + i] = static_cast<std::int32_t>(detail::load32(g.w + (n0 + i) * g.KB + 4 * d));
    const __m256 cs = _mm256_loadu_ps(g.col_scale + n0);
    const __m256 bias = g.bias ? _mm256_loadu_ps(g.bias + n0) : _mm256_setzero_ps();
    for (std::int64_t m = 0; m < g.M; ++m) {
      const bool hz = g.has_zero[m] != 0;
      const __m256i c = k.counts(lanes, g.a + m * g.KB, D, nullptr, hz ? g.z + m * g.KB : nullptr);
      const __m256i acc = _mm256_sub_epi32(_mm256_set1_epi32(g.a_k[m]), _mm256_add_epi32(c, c));
      __m256 y = _mm256_mul_ps(_mm256_cvtepi32_ps(acc), _mm256_mul_ps(_mm256_set1_ps(g.row_scale[m]), cs));
      if (g.bias) y = _mm256_add_ps(y, bias);
      _mm256_storeu_ps(g.y + m * g.y_rs + n0 * g.y_cs, y);
    }
  }
  for (; n0 < n_end; ++n0)
    for (std::int64_t m = 0; m < g.M; ++m)
      g.y[m * g.y_rs + n0 * g.y_cs] = detail::finish_xnor(detail::xor_count(g.a + m * g.KB, g.w + n0 * g.KB, 0, g.KB), g, m, n0);
}

void gemm_xnor(const QGemmXnorArgs& g, std::int64_t n_begin, std::int64_t n_end) {
  const std::int64_t KB32 = g.KB & ~std::int64_t{31};
  if (KB32 == 0 && g.KB > 0 && (g.y_rs == 1 || g.y_cs == 1)) {
    xnor_small_k(g, n_begin, n_end);
    return;
  }
  std::int64_t m = 0;
  for (; m + 2 <= g.M; m += 2) {
    std::int64_t n = n_begin;
    for (; n + 4 <= n_end; n += 4) xnor_block<2, 4>(g, m, n, KB32);
    for (; n < n_end; ++n) xnor_block<2, 1>(g, m, n, KB32);
  }
  for (; m < g.M; ++m) {
    std::int64_t n = n_begin;
    for (; n + 4 <= n_end; n += 4) {
      if (g.M <= 2) detail::prefetch_rows(g.w, n + 16, 4, n_end, g.KB);
      xnor_block<1, 4>(g, m, n, KB32);
    }
    for (; n < n_end; ++n) xnor_block<1, 1>(g, m, n, KB32);
  }
}

// Weight-only W4 (float activations): two weight rows at a time are dequantized into L1 buffers
// (loops.h's dequant_w4_row), then every activation row's dot
// product with them runs on FMAs, six activation rows x two weight rows per step (twelve
// accumulators share the loads).
inline float hsum_ps(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// U partial sums per output (k steps of 8 taken in turn): a few activation rows alone would wait on
// the FMA latency of one accumulator chain each.
template <int MR, int NR, int U = (MR <= 2 ? 4 : 1)>
void w4f_block(const QGemmW4FArgs& g, const float* const* wrow, std::int64_t m, std::int64_t n) {
  __m256 acc[MR][NR][U];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j)
      for (int u = 0; u < U; ++u) acc[i][j][u] = _mm256_setzero_ps();
  for (std::int64_t k = 0; k < g.K; k += 8 * U) {  // K is a multiple of 32
    for (int u = 0; u < U; ++u) {
      __m256 wv[NR];
      for (int j = 0; j < NR; ++j) wv[j] = _mm256_loadu_ps(wrow[j] + k + 8 * u);
      for (int i = 0; i < MR; ++i) {
        const __m256 xv = _mm256_loadu_ps(g.x + (m + i) * g.K + k + 8 * u);
        for (int j = 0; j < NR; ++j) acc[i][j][u] = _mm256_fmadd_ps(xv, wv[j], acc[i][j][u]);
      }
    }
  }
  for (int i = 0; i < MR; ++i) {
    for (int j = 0; j < NR; ++j) {
      __m256 t = acc[i][j][0];
      for (int u = 1; u < U; ++u) t = _mm256_add_ps(t, acc[i][j][u]);
      const float y = hsum_ps(t);
      g.y[(m + i) * g.N + n + j] = g.bias ? y + g.bias[n + j] : y;
    }
  }
}

template <int NR>
void w4f_rows(const QGemmW4FArgs& g, const float* const* wrow, std::int64_t n) {
  std::int64_t m = 0;
  for (; m + 6 <= g.M; m += 6) w4f_block<6, NR>(g, wrow, m, n);
  for (; m + 2 <= g.M; m += 2) w4f_block<2, NR>(g, wrow, m, n);
  for (; m < g.M; ++m) w4f_block<1, NR>(g, wrow, m, n);
}

// Below kW4fDirectRows activation rows: AVX-512's w4f_direct on 8 lanes. A 16-row panel block
// (pack_int4_panel's, or a row-layout block rearranged into it) runs as two halves of 8 weight rows, one row per lane;
// each code is dequantized in registers to the same float as there, (q - 8) - z, in one of two ways:
// D = 0: the nibble of v ^ 0x88888888, sign-extended by two shifts, is q - 8, then one conversion;
// D = 1: the nibble q, shifted down and masked, or-ed into the bits of 2^23 is the float 2^23 + q,
// and one subtraction of 2^23 + 8 leaves q - 8 (exact: both operands are integers below 2^24). D = 1
// trades two shifts and a conversion (Intel: ports 0 / 1, those of the FMAs) for a shift, two
// logic operations and an add (ports 0 / 1 / 5).
// Each row's FMAs run in the AVX-512 kernel's order (NA chains per row: 1 in its tile of 8 rows,
// 8 / MR in its tiles of 4 / 2 / 1; each group on the unscaled codes, folded in by one FMA with its
// scales), so below 9 rows (where the op calls this; AVX-512 runs these tiles too) both ISAs give
// the same bits. With 16 ymm registers MR * NA <= 8; the folded sums live in an L1 buffer (acc:
// [MR][NA][8]). Measured (2026-12-03, Intel Xeon model 207 with the AVX2 table, one thread, 384 x
// 1536 / 1536 x 384, hot cache, against AVX2-restricted MKL in the same run; docs/benchmarks.md):
// 8 rows D = 0 1.45-1.50x, D = 1 1.14-1.18x; the tiles of 4 / 2 / 1 rows 2.13 / 2.36 / 1.10x with
// D = 1, 1.75 / 2.05 / 0.98x with D = 0. Each tile is its own function (noinline: inlined into
// w4f_direct_block, a 12-row tile ran 1.07-1.12x FP32 against 1.16-1.24x). That 12-row tile (12
// chains) was removed: on an AVX2-only Zen 3 it ran 1.27x at 12 x 4096 x 4096 against the packed
// GEMM's 2.92x, so the op switches to the packed GEMM from 9 rows.
template <int MR, int NA, bool Z, int D = 0>
__attribute__((noinline)) void w4f_direct8(const QGemmW4FArgs& g, std::int64_t m, const std::int32_t* panel, int h, const float* sc,
                 const float* zc, float* acc, float* out) {
  static_assert(MR * NA <= 8, "16 ymm registers");
  const std::int64_t gc = g.group / 32, G = g.K / g.group;
  const __m256i flip = _mm256_set1_epi32(static_cast<int>(0x88888888u));
  const float* xp[MR];
  #pragma GCC unroll 12
  for (int i = 0; i < MR; ++i) xp[i] = g.x + (m + i) * g.K;
  for (int i = 0; i < MR * NA; ++i) _mm256_storeu_ps(acc + i * 8, _mm256_setzero_ps());
  for (std::int64_t gi = 0; gi < G; ++gi) {
    __m256 part[MR][NA];
    #pragma GCC unroll 12
    for (int i = 0; i < MR; ++i)
      #pragma GCC unroll 12
      for (int c = 0; c < NA; ++c) part[i][c] = _mm256_setzero_ps();
    const __m256 z = Z ? _mm256_loadu_ps(zc + gi * 16 + h * 8) : _mm256_setzero_ps();
    for (std::int64_t ci = gi * gc; ci < (gi + 1) * gc; ++ci) {
      const std::int32_t* t = panel + ((ci / 4) * 16 + (ci % 4) * 4) * 16 + h * 8;
      #pragma GCC unroll 4
      for (int e = 0; e < 4; ++e) {
        const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t + e * 16));
        const __m256i v = D == 0 ? _mm256_xor_si256(raw, flip) : raw;
        #pragma GCC unroll 12
        for (int jh = 0; jh < 8; ++jh) {  // byte j = jh / 2: k = 32 ci + 4e + j (low nibble), k + 16 (high)
          const int j = jh / 2, hi = jh % 2;
          __m256 w;
          if (D == 0) {
            w = _mm256_cvtepi32_ps(_mm256_srai_epi32(_mm256_slli_epi32(v, 28 - 8 * j - 4 * hi), 28));
          } else {
            const __m256i q = _mm256_and_si256(_mm256_srli_epi32(v, 8 * j + 4 * hi), _mm256_set1_epi32(0xF));
            w = _mm256_sub_ps(_mm256_castsi256_ps(_mm256_or_si256(q, _mm256_set1_epi32(0x4B000000))),
                              _mm256_set1_ps(8388616.f));
          }
          if (Z) w = _mm256_sub_ps(w, z);
          const std::int64_t k = ci * 32 + 4 * e + j + 16 * hi;
          #pragma GCC unroll 12
          for (int i = 0; i < MR; ++i) part[i][jh % NA] = _mm256_fmadd_ps(w, _mm256_broadcast_ss(xp[i] + k), part[i][jh % NA]);
        }
      }
    }
    const __m256 s = _mm256_loadu_ps(sc + gi * 16 + h * 8);
    #pragma GCC unroll 12
    for (int i = 0; i < MR; ++i)
      #pragma GCC unroll 12
      for (int c = 0; c < NA; ++c) {
        float* a = acc + (i * NA + c) * 8;
        _mm256_storeu_ps(a, _mm256_fmadd_ps(part[i][c], s, _mm256_loadu_ps(a)));
      }
  }
  for (int i = 0; i < MR; ++i) {
    __m256 y = _mm256_loadu_ps(acc + i * NA * 8);
    for (int c = 1; c < NA; ++c) y = _mm256_add_ps(y, _mm256_loadu_ps(acc + (i * NA + c) * 8));
    _mm256_storeu_ps(out + (m + i) * 16 + h * 8, y);
  }
}

// The activation rows over one 16-row block, into out[M][16] (bias added, lanes past nr dropped, by
// the caller): the AVX-512 kernel's register tiles of 8 rows (one chain per row) and 4 / 2 / 1 rows
// (2 / 4 / 8 chains) as they are.
template <bool Z>
void w4f_direct_block(const QGemmW4FArgs& g, const std::int32_t* panel, const float* sc, const float* zc,
                      float* acc, float* out) {
  for (int h = 0; h < 2; ++h) {
    std::int64_t m = 0;
    // the tiles of 4 / 2 / 1 rows with D = 1, the 8-row tile with D = 0 (the faster of the two for
    // each: w4f_direct8's comment)
    for (; m + 8 <= g.M; m += 8) w4f_direct8<8, 1, Z, 0>(g, m, panel, h, sc, zc, acc, out);
    for (; m + 4 <= g.M; m += 4) w4f_direct8<4, 2, Z, 1>(g, m, panel, h, sc, zc, acc, out);
    for (; m + 2 <= g.M; m += 2) w4f_direct8<2, 4, Z, 1>(g, m, panel, h, sc, zc, acc, out);
    for (; m < g.M; ++m) w4f_direct8<1, 8, Z, 1>(g, m, panel, h, sc, zc, acc, out);
  }
}

struct W4fDirectScratch;

// Below this many rows gemm_w4f runs in registers (w4f_direct_block; 16-48 rows ran 0.71-0.88x the
// time of the L1-buffer path below it). The op calls it below the table's w4f_packed_rows (9) only.
constexpr std::int64_t kW4fDirectRows = 64;
// The op's many-row path (the float GEMM) from this many rows.
constexpr std::int64_t kW4fGemmRows = 80;

// Below kW4fDirectRows rows on w4f_direct_block (16-row blocks; n_begin a multiple of 16); more rows
// (called directly, not by the op) dequantize two weight rows at a time into L1 for w4f_block.
void gemm_w4f(const QGemmW4FArgs& g, std::int64_t n_begin, std::int64_t n_end) {
  if (g.M < kW4fDirectRows) {
    const std::int64_t KB = g.K / 2, steps = (KB + 63) / 64, G = g.K / g.group;
    float* const scratch =
        detail::thread_scratch<float, W4fDirectScratch>(static_cast<std::size_t>(2 * G * 16 + 8 * 8 + g.M * 16));
    float* const sct = scratch;                // a [N, G] layout's block scales, [G][16]
    float* const zct = sct + G * 16;           // and zero points
    float* const acc = zct + G * 16;           // w4f_direct8's folded sums (MR * NA <= 8 vectors)
    float* const out = acc + 8 * 8;             // the block's outputs [M][16]
    std::int32_t* const pbuf =
        detail::thread_scratch<std::int32_t, W4fDirectScratch>(static_cast<std::size_t>(g.panel ? 0 : steps * 256));
    for (std::int64_t n = n_begin; n < n_end; n += 16) {
      const int nr = static_cast<int>(std::min<std::int64_t>(16, n_end - n));
      const std::int32_t* panel = pbuf;
      if (g.panel) {
        panel = reinterpret_cast<const std::int32_t*>(g.w + (n / 16) * steps * 1024);
      } else {  // the row layout's block in the panel's byte order (padded rows and bytes zero)
        auto* pb = reinterpret_cast<std::uint8_t*>(pbuf);
        std::memset(pb, 0, static_cast<std::size_t>(steps * 1024));
        for (int r = 0; r < nr; ++r)
          for (std::int64_t b = 0; b < KB; b += 4)
            std::memcpy(pb + detail::w4_panel_offset(KB, r, b), g.w + (n + r) * KB + b, 4);
      }
      const float* sc = g.gscale + (n / 16) * G * 16;
      const float* zc = g.gzero ? g.gzero + (n / 16) * G * 16 : nullptr;
      if (!g.blocked_scales) {
        for (std::int64_t gi = 0; gi < G; ++gi)
          for (int r = 0; r < 16; ++r) {
            sct[gi * 16 + r] = r < nr ? g.gscale[(n + r) * G + gi] : 0.f;
            zct[gi * 16 + r] = r < nr && g.gzero ? g.gzero[(n + r) * G + gi] : 0.f;
          }
        sc = sct;
        zc = g.gzero ? zct : nullptr;
      }
      if (zc != nullptr) {
        w4f_direct_block<true>(g, panel, sc, zc, acc, out);
      } else {
        w4f_direct_block<false>(g, panel, sc, zc, acc, out);
      }
      for (std::int64_t m = 0; m < g.M; ++m)
        for (int r = 0; r < nr; ++r) g.y[m * g.N + n + r] = g.bias ? out[m * 16 + r] + g.bias[n + r] : out[m * 16 + r];
    }
    return;
  }
  std::vector<float> buf(static_cast<std::size_t>(2 * g.K));
  std::vector<std::uint8_t> rowbuf(static_cast<std::size_t>(g.panel ? g.K / 2 : 0));
  const float* wrow[2] = {buf.data(), buf.data() + g.K};
  std::int64_t n = n_begin;
  for (; n + 2 <= n_end; n += 2) {
    detail::dequant_w4_row(g, n, buf.data(), rowbuf.data());
    detail::dequant_w4_row(g, n + 1, buf.data() + g.K, rowbuf.data());
    w4f_rows<2>(g, wrow, n);
  }
  for (; n < n_end; ++n) {
    detail::dequant_w4_row(g, n, buf.data(), rowbuf.data());
    w4f_rows<1>(g, wrow, n);
  }
}

void dequant_w4f(const QGemmW4FArgs& g, std::int64_t n_begin, std::int64_t n_end, float* w) {
  std::vector<std::uint8_t> rowbuf(static_cast<std::size_t>(g.panel ? g.K / 2 : 0));
  for (std::int64_t n = n_begin; n < n_end; ++n) detail::dequant_w4_row(g, n, w + (n - n_begin) * g.K, rowbuf.data());
}

// Channels-last depthwise conv (QDwConvArgs' nhwc form), 16 channels per step: the taps in pairs,
// vpmaddwd of the two taps' codes interleaved (per 128-bit lane) with their weights interleaved
// the same way once per call, so each pair adds x[t] * w[t] + x[t + 1] * w[t + 1] into int32 lanes
// (exact: |x| <= 128, |w| <= 127); the two accumulators' lanes (channels 0-3 / 8-11 and 4-7 /
// 12-15) are put back in order by one 128-bit permute each, then requantize's operations on 8
// lanes. Channels past the last 16 run loops.h's loop. P: the pair count when known at compile
// time (5: a 3 x 3 kernel, the pairs unrolled), else 0 (pairs at run time); the arguments' pointers
// are read into locals once, so the output stores do not make the compiler reload them per pixel.
template <int P>
void dwconv_nhwc_rows(const QDwConvArgs& g, std::int64_t oh_begin, std::int64_t oh_end, const std::int64_t* off,
                      const std::int16_t* wi, const std::int16_t* wi8, std::int64_t pairs_rt) {
  const std::int64_t C = g.C, taps = g.kh * g.kw, blocks = C / 16, pairs = P > 0 ? P : pairs_rt;
  // 8 channels past the 16-channel blocks, when there are: one 128-bit block (wi8 [pair][2][8])
  const std::int64_t c8 = blocks * 16, tail8 = wi8 != nullptr ? c8 + 8 : c8;
  const std::int64_t Wo = g.Wo, Wp = g.Wp, sh = g.sh, sw = g.sw;
  const std::int16_t* const x = g.x;
  const std::int16_t* const wt = g.w;
  const std::int32_t* const corr = g.corr;
  const float* const out_scale = g.out_scale;
  const float* const bias = g.bias;
  float* const yall = g.y;
  for (std::int64_t oh = oh_begin; oh < oh_end; ++oh) {
    for (std::int64_t ow = 0; ow < Wo; ++ow) {
      const std::int16_t* xp = x + ((oh * sh) * Wp + ow * sw) * C;  // tap (0, 0)
      float* y = yall + (oh * Wo + ow) * C;
      for (std::int64_t b = 0; b < blocks; ++b) {
        __m256i lo = _mm256_setzero_si256(), hi = _mm256_setzero_si256();
        const std::int16_t* w = wi + b * 32;
        const std::int16_t* xb = xp + b * 16;
        #pragma GCC unroll 8
        for (std::int64_t p = 0; p < pairs; ++p) {
          const __m256i x0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb + off[2 * p]));
          const __m256i x1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb + off[2 * p + 1]));
          const __m256i wl = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + p * blocks * 32));
          const __m256i wh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + p * blocks * 32 + 16));
          lo = _mm256_add_epi32(lo, _mm256_madd_epi16(_mm256_unpacklo_epi16(x0, x1), wl));
          hi = _mm256_add_epi32(hi, _mm256_madd_epi16(_mm256_unpackhi_epi16(x0, x1), wh));
        }
        const __m256i s[2] = {_mm256_permute2x128_si256(lo, hi, 0x20), _mm256_permute2x128_si256(lo, hi, 0x31)};
        for (int h = 0; h < 2; ++h) {
          const std::int64_t c = b * 16 + 8 * h;
          const __m256i acc = _mm256_add_epi32(s[h], _mm256_loadu_si256(reinterpret_cast<const __m256i*>(corr + c)));
          __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(acc), _mm256_loadu_ps(out_scale + c));
          if (bias) v = _mm256_add_ps(v, _mm256_loadu_ps(bias + c));
          _mm256_storeu_ps(y + c, v);
        }
      }
      if (wi8 != nullptr) {  // channels c8..c8 + 7: the same pairs at 128 bits (lo: 0-3, hi: 4-7, in order)
        __m128i lo = _mm_setzero_si128(), hi = _mm_setzero_si128();
        const std::int16_t* xb = xp + c8;
        #pragma GCC unroll 8
        for (std::int64_t p = 0; p < pairs; ++p) {
          const __m128i x0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(xb + off[2 * p]));
          const __m128i x1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(xb + off[2 * p + 1]));
          lo = _mm_add_epi32(lo, _mm_madd_epi16(_mm_unpacklo_epi16(x0, x1),
                                                _mm_loadu_si128(reinterpret_cast<const __m128i*>(wi8 + p * 16))));
          hi = _mm_add_epi32(hi, _mm_madd_epi16(_mm_unpackhi_epi16(x0, x1),
                                                _mm_loadu_si128(reinterpret_cast<const __m128i*>(wi8 + p * 16 + 8))));
        }
        const __m256i acc = _mm256_add_epi32(_mm256_set_m128i(hi, lo),
                                             _mm256_loadu_si256(reinterpret_cast<const __m256i*>(corr + c8)));
        __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(acc), _mm256_loadu_ps(out_scale + c8));
        if (bias) v = _mm256_add_ps(v, _mm256_loadu_ps(bias + c8));
        _mm256_storeu_ps(y + c8, v);
      }
      for (std::int64_t c = tail8; c < C; ++c) {  // the last channels
        std::int32_t a = 0;
        for (std::int64_t t = 0; t < taps; ++t) a += static_cast<std::int32_t>(xp[off[t] + c]) * wt[t * C + c];
        y[c] = detail::requantize(static_cast<std::uint32_t>(a) + static_cast<std::uint32_t>(corr[c]), g, c);
      }
    }
  }
}

// The AVX-512 table's stride-1 planes (avx512_dwconv.cpp) at 256 bits, 16 positions a step: the
// taps in pairs (two shifted 16-code loads interleaved per 128-bit lane against the pair's two
// weights broadcast as one int32, vpmaddwd: exact, |x| <= 128, |w| <= 127), the accumulators' lanes
// (positions 0-3 / 8-11 and 4-7 / 12-15) put back in order by one 128-bit permute each, then
// requantize's operations on 8 lanes. Output rows of 16+ pixels run row by row, the last step of a
// row moved back to end at Wo (its overlap with the step before recomputes the same outputs): whole
// loads and stores, nothing dropped. Narrower rows run dwconv_channels' flat run over the padded
// grid, keeping only the lanes of real columns (ow < Wo; each position's column in an int16 lane,
// stepped by 16 mod Wp), packed to the front by vpermps with an index from a 256-entry table (AVX2
// has no compress) and stored at the plane's next output (8 lanes while 8 more outputs remain, the
// next store overwriting the lanes past the count; under a mask of the count at the plane's end);
// its loads are whole (x carries 16 codes of slack past QDwConvArgs' own), the lanes past the run
// dropped. The same sums and requantization as dwconv_channels: the same bits. P: the pairs (5 for
// 3 x 3), 0 at run time (detail::dwconv_flat_fits; larger kernels and other strides: dwconv_channels).
struct LeftPack8 {  // idx[m]: the set bits of the 8-bit mask m in order, as 8 byte indices (zeros after)
  alignas(64) std::uint8_t idx[256][8];
  LeftPack8() : idx{} {
    for (int m = 0; m < 256; ++m)
      for (int e = 0, c = 0; e < 8; ++e)
        if (m >> e & 1) idx[m][c++] = static_cast<std::uint8_t>(e);
  }
};

// With several outputs per input channel (QDwConvArgs' Ng > 1) the consecutive output channels of a
// plane run G at a time (G <= 4): each pair's two loads and interleaves once, against the G
// channels' weights; the lanes to keep and their permute index once per step. The same operations
// per output: the same bits.
template <int P, int G>
void dwconv_planes_flat_group(const QDwConvArgs& g, std::int64_t n, std::int64_t np, const std::int64_t* off,
                              const std::int16_t* col0, const LeftPack8& pack) {
  const std::int64_t Wp = g.Wp, Wo = g.Wo, Ho = g.Ho, run = Ho * Wp, plane = Ho * Wo;
  std::int32_t wpair[G][detail::kDwFlatPairs];
  detail::DwPlaneChannel ch[G];
  for (int j = 0; j < G; ++j) ch[j] = detail::dwconv_plane_channel(g, n + j, np, wpair[j]);
  const std::int16_t* xc = ch[0].x;  // the G channels' plane
  // positions xb .. xb + 15's outputs of each channel, in order (8 + 8 lanes)
  const auto step = [&](const std::int16_t* xb, __m256 v[G][2]) {
    __m256i lo[G], hi[G];
    for (int j = 0; j < G; ++j) lo[j] = hi[j] = _mm256_setzero_si256();
#pragma GCC unroll 8
    for (std::int64_t p = 0; p < np; ++p) {  // (P: np a constant, unrolled)
      const __m256i x0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb + off[2 * p]));
      const __m256i x1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb + off[2 * p + 1]));
      const __m256i ul = _mm256_unpacklo_epi16(x0, x1), uh = _mm256_unpackhi_epi16(x0, x1);
      for (int j = 0; j < G; ++j) {
        const __m256i w = _mm256_set1_epi32(wpair[j][p]);
        lo[j] = _mm256_add_epi32(lo[j], _mm256_madd_epi16(ul, w));
        hi[j] = _mm256_add_epi32(hi[j], _mm256_madd_epi16(uh, w));
      }
    }
    for (int j = 0; j < G; ++j) {
      const __m256i cr = _mm256_set1_epi32(ch[j].corr);
      const __m256 os = _mm256_set1_ps(ch[j].scale);
      const __m256i s[2] = {_mm256_add_epi32(_mm256_permute2x128_si256(lo[j], hi[j], 0x20), cr),
                            _mm256_add_epi32(_mm256_permute2x128_si256(lo[j], hi[j], 0x31), cr)};
#pragma GCC unroll 2
      for (int h = 0; h < 2; ++h) {
        v[j][h] = _mm256_mul_ps(_mm256_cvtepi32_ps(s[h]), os);
        if (g.bias) v[j][h] = _mm256_add_ps(v[j][h], _mm256_set1_ps(ch[j].bias));
      }
    }
  };
  __m256 v[G][2];
  if (Wo >= 16) {
    for (std::int64_t oh = 0; oh < Ho; ++oh) {
      for (std::int64_t ow = 0;; ow += 16) {
        ow = std::min(ow, Wo - 16);
        step(xc + oh * Wp + ow, v);
        for (int j = 0; j < G; ++j) {
          _mm256_storeu_ps(ch[j].y + oh * Wo + ow, v[j][0]);
          _mm256_storeu_ps(ch[j].y + oh * Wo + ow + 8, v[j][1]);
        }
        if (ow + 16 >= Wo) break;
      }
    }
    return;
  }
  // the narrow rows' flat run: the step's advance (16 % Wp), Wp and Wo as int16 lanes, and the lane
  // numbers; o: the planes' next output
  const __m256i adv = _mm256_set1_epi16(static_cast<std::int16_t>(16 % Wp));
  const __m256i wp16 = _mm256_set1_epi16(static_cast<std::int16_t>(Wp));
  const __m256i wo16 = _mm256_set1_epi16(static_cast<std::int16_t>(Wo));
  const __m256i lanes = _mm256_setr_epi16(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  std::int64_t o = 0;
  __m256i col = _mm256_load_si256(reinterpret_cast<const __m256i*>(col0));
  for (std::int64_t t = 0; t < run; t += 16) {
    step(xc + t, v);
    // the lanes of real columns among the run's positions (as int16 lanes; then one byte each)
    const __m256i left = _mm256_set1_epi16(static_cast<std::int16_t>(std::min<std::int64_t>(16, run - t)));
    const __m256i keep16 = _mm256_and_si256(_mm256_cmpgt_epi16(wo16, col), _mm256_cmpgt_epi16(left, lanes));
    const std::uint32_t keep = static_cast<std::uint32_t>(_mm256_movemask_epi8(_mm256_packs_epi16(keep16, keep16)));
    col = _mm256_add_epi16(col, adv);
    col = _mm256_sub_epi16(col, _mm256_andnot_si256(_mm256_cmpgt_epi16(wp16, col), wp16));
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {
      const std::uint32_t mk = (keep >> (16 * h)) & 0xFFu;  // packs: positions 0-7 in bits 0-7, 8-15 in 16-23
      const int cnt = __builtin_popcount(mk);
      std::int64_t ix;
      std::memcpy(&ix, pack.idx[mk], sizeof ix);
      const __m256i perm = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(ix));
      if (plane - o >= 8) {  // whole stores: the lanes past cnt are overwritten by the next store
        for (int j = 0; j < G; ++j) _mm256_storeu_ps(ch[j].y + o, _mm256_permutevar8x32_ps(v[j][h], perm));
      } else {  // the planes' last outputs: vmaskmovps (slow on AMD), never past a plane
        const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(cnt), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        for (int j = 0; j < G; ++j) _mm256_maskstore_ps(ch[j].y + o, m, _mm256_permutevar8x32_ps(v[j][h], perm));
      }
      o += cnt;
    }
  }
}

template <int P>
void dwconv_planes_flat(const QDwConvArgs& g, std::int64_t n_begin, std::int64_t n_end, std::int64_t pairs) {
  static const LeftPack8 pack;
  const std::int64_t np = P > 0 ? P : pairs;
  detail::dwconv_plane_groups<16>(g, n_begin, n_end, np, [&](std::int64_t n, auto gc, const std::int64_t* off,
                                                          const std::int16_t* col0) {
    constexpr int G = decltype(gc)::value;
    dwconv_planes_flat_group<P, G>(g, n, np, off, col0, pack);
  });
}

void dwconv_planes(const QDwConvArgs& g, std::int64_t n_begin, std::int64_t n_end) {
  detail::dwconv_planes_with<&dwconv_planes_flat<5>, &dwconv_planes_flat<0>>(g, n_begin, n_end);
}

void dwconv_nhwc(const QDwConvArgs& g, std::int64_t oh_begin, std::int64_t oh_end) {
  const std::int64_t C = g.C, taps = g.kh * g.kw, pairs = (taps + 1) / 2, blocks = C / 16;
  const std::int64_t* off = detail::dwconv_pair_offsets(g);
  struct TagW;  // the interleaved weights, [pair][block][2][16] (every element written below)
  const BoundedScratch<std::int16_t, TagW> wi_buf(static_cast<std::size_t>(pairs * blocks * 32));
  std::int16_t* const wi = wi_buf.get();
  for (std::int64_t p = 0; p < pairs; ++p) {
    for (std::int64_t b = 0; b < blocks; ++b) {
      const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(g.w + 2 * p * C + b * 16));
      const __m256i w1 = 2 * p + 1 < taps
                             ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(g.w + (2 * p + 1) * C + b * 16))
                             : _mm256_setzero_si256();
      std::int16_t* d = wi + (p * blocks + b) * 32;
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(d), _mm256_unpacklo_epi16(w0, w1));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + 16), _mm256_unpackhi_epi16(w0, w1));
    }
  }
  struct TagW8;  // the 8 channels past the blocks, when there are: [pair][2][8]
  const std::int64_t n8 = C % 16 >= 8 ? pairs : 0;
  const BoundedScratch<std::int16_t, TagW8> wi8_buf(static_cast<std::size_t>(n8 * 16));
  std::int16_t* const wi8 = wi8_buf.get();
  for (std::int64_t p = 0; p < n8; ++p) {
    const std::int64_t c8 = blocks * 16;
    const __m128i w0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(g.w + 2 * p * C + c8));
    const __m128i w1 = 2 * p + 1 < taps ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(g.w + (2 * p + 1) * C + c8))
                                        : _mm_setzero_si128();
    _mm_storeu_si128(reinterpret_cast<__m128i*>(wi8 + p * 16), _mm_unpacklo_epi16(w0, w1));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(wi8 + p * 16 + 8), _mm_unpackhi_epi16(w0, w1));
  }
  const std::int16_t* w8 = n8 > 0 ? wi8 : nullptr;
  if (pairs == 5) {
    dwconv_nhwc_rows<5>(g, oh_begin, oh_end, off, wi, w8, pairs);
  } else {
    dwconv_nhwc_rows<0>(g, oh_begin, oh_end, off, wi, w8, pairs);
  }
}

// 8 x 8 blocks transposed in registers (floats: unpack, shuffle, 128-bit permute; int8 codes: widened
// to int16 by pmovsxbw, then unpacks of 16 / 32 / 64 bits, the last 1-7 columns in partial blocks);
// the other edges by the tiled loop.
void transpose_f32(const float* src, std::int64_t rows, std::int64_t cols, std::int64_t src_rs, float* dst,
                   std::int64_t dst_rs) {
  transpose_blocks(src, rows, cols, src_rs, dst, dst_rs, [](const float* p) { return _mm256_loadu_ps(p); });
}

void transpose_s8_s16(const std::int8_t* src, std::int64_t rows, std::int64_t cols, std::int64_t src_rs,
                      std::int16_t* dst, std::int64_t dst_rs) {
  const std::int64_t R = rows / 8 * 8, Cc = cols / 8 * 8;
  if (src_rs == cols && (cols == 1 || cols == 2 || cols == 4) && R > 0) {
    // contiguous rows of 1, 2 or 4 codes (an NCHW map of 1, 2 or 4 pixels, [C, H * W] -> [H * W, C]):
    // 8 rows' 8-32 bytes loaded at once, grouped by column with pshufb, each column's 8 codes widened
    // and stored
    const __m128i by4 = _mm_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    const __m128i by2 = _mm_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
    const auto put = [&](std::int64_t c, std::int64_t r0, __m128i eight) {  // the low 8 codes: column c's rows r0..r0 + 7
      _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + c * dst_rs + r0), _mm_cvtepi8_epi16(eight));
    };
    for (std::int64_t r0 = 0; r0 < R; r0 += 8) {
      const std::int8_t* p = src + r0 * cols;
      if (cols == 4) {  // [c0 of rows 0-3 | c1 | c2 | c3] for rows 0-3 and 4-7, then by column
        const __m128i a = _mm_shuffle_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)), by4);
        const __m128i b = _mm_shuffle_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16)), by4);
        const __m128i c01 = _mm_unpacklo_epi32(a, b), c23 = _mm_unpackhi_epi32(a, b);
        put(0, r0, c01);
        put(1, r0, _mm_srli_si128(c01, 8));
        put(2, r0, c23);
        put(3, r0, _mm_srli_si128(c23, 8));
      } else if (cols == 2) {
        const __m128i a = _mm_shuffle_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)), by2);
        put(0, r0, a);
        put(1, r0, _mm_srli_si128(a, 8));
      } else {
        std::int64_t b;
        std::memcpy(&b, p, 8);
        put(0, r0, _mm_cvtsi64_si128(b));
      }
    }
    if (R < rows) detail::transpose_tiled(src + R * src_rs, rows - R, cols, src_rs, dst + R, dst_rs);
    return;
  }
  const std::int64_t extent = (rows - 1) * src_rs + cols;  // the source's elements past src: [0, extent)
  // the 8 x 8 block at (r0, c0) of which the first cw columns exist (cw < 8: 8 bytes read where the
  // source goes on that far, the bytes past cw landing in transposed rows that are not stored; else
  // byte by byte)
  const auto block = [&](std::int64_t r0, std::int64_t c0, std::int64_t cw) {
    __m128i v[8];
    for (int i = 0; i < 8; ++i) {
      const std::int64_t o = (r0 + i) * src_rs + c0;
      std::int64_t b = 0;
      if (cw == 8 || o + 8 <= extent) {
        std::memcpy(&b, src + o, 8);
      } else {
        for (std::int64_t j = 0; j < cw; ++j) b |= static_cast<std::int64_t>(static_cast<std::uint8_t>(src[o + j])) << (8 * j);
      }
      v[i] = _mm_cvtepi8_epi16(_mm_cvtsi64_si128(b));
    }
    __m128i a[8], c[8];
    for (int i = 0; i < 4; ++i) {
      a[2 * i] = _mm_unpacklo_epi16(v[2 * i], v[2 * i + 1]);
      a[2 * i + 1] = _mm_unpackhi_epi16(v[2 * i], v[2 * i + 1]);
    }
    for (int i = 0; i < 2; ++i) {
      c[4 * i] = _mm_unpacklo_epi32(a[4 * i], a[4 * i + 2]);
      c[4 * i + 1] = _mm_unpackhi_epi32(a[4 * i], a[4 * i + 2]);
      c[4 * i + 2] = _mm_unpacklo_epi32(a[4 * i + 1], a[4 * i + 3]);
      c[4 * i + 3] = _mm_unpackhi_epi32(a[4 * i + 1], a[4 * i + 3]);
    }
    for (int i = 0; i < 4 && 2 * i < cw; ++i) {
      std::int16_t* d0 = dst + (c0 + 2 * i) * dst_rs + r0;
      _mm_storeu_si128(reinterpret_cast<__m128i*>(d0), _mm_unpacklo_epi64(c[i], c[4 + i]));
      if (2 * i + 1 < cw) _mm_storeu_si128(reinterpret_cast<__m128i*>(d0 + dst_rs), _mm_unpackhi_epi64(c[i], c[4 + i]));
    }
  };
  for (std::int64_t r0 = 0; r0 < R; r0 += 8) {
    for (std::int64_t c0 = 0; c0 < Cc; c0 += 8) block(r0, c0, 8);
    // the last 1-7 columns in the same blocks: a channels-last image of C codes from an NCHW map of
    // under 8 pixels (MobileNetV2's 2 x 2 maps: [C, 4] -> [4, C]) took the scalar loop, 23 % of a
    // depthwise XNOR conv on 8 x 960 x 2 x 2 (docs/benchmarks.md, fiftieth session)
    if (Cc < cols) block(r0, Cc, cols - Cc);
  }
  if (R < rows) detail::transpose_tiled(src + R * src_rs, rows - R, cols, src_rs, dst + R, dst_rs);
}

// int8 codes: 16 x 16 blocks in SSE registers (unpacks of 8, 16, 32 and 64 bits: 64 per block, 16
// loads and 16 stores), the last 1-15 columns in partial blocks; the last 1-15 rows by the tiled loop
// (the convs' NCHW codes into channels-last pixels).
void transpose_s8(const std::int8_t* src, std::int64_t rows, std::int64_t cols, std::int64_t src_rs, std::int8_t* dst,
                  std::int64_t dst_rs) {
  const std::int64_t R = rows / 16 * 16, Cc = cols / 16 * 16;
  if (src_rs == cols && (cols == 1 || cols == 2 || cols == 4) && R > 0) {
    // contiguous rows of 1, 2 or 4 codes (transpose_s8_s16's form): 16 rows' 16-64 bytes, grouped by
    // column with pshufb, each column's 16 codes stored
    const __m128i by4 = _mm_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    const __m128i by2 = _mm_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
    const auto put = [&](std::int64_t c, std::int64_t r0, __m128i v) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + c * dst_rs + r0), v);
    };
    const auto load = [](const std::int8_t* p) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)); };
    for (std::int64_t r0 = 0; r0 < R; r0 += 16) {
      const std::int8_t* p = src + r0 * cols;
      if (cols == 4) {  // rows 4g..4g + 3 by column (a[g]), then each column's four 4-row pieces
        __m128i a[4];
        for (int g = 0; g < 4; ++g) a[g] = _mm_shuffle_epi8(load(p + 16 * g), by4);
        const __m128i u0 = _mm_unpacklo_epi32(a[0], a[1]), u1 = _mm_unpacklo_epi32(a[2], a[3]);
        const __m128i v0 = _mm_unpackhi_epi32(a[0], a[1]), v1 = _mm_unpackhi_epi32(a[2], a[3]);
        put(0, r0, _mm_unpacklo_epi64(u0, u1));
        put(1, r0, _mm_unpackhi_epi64(u0, u1));
        put(2, r0, _mm_unpacklo_epi64(v0, v1));
        put(3, r0, _mm_unpackhi_epi64(v0, v1));
      } else if (cols == 2) {
        const __m128i a = _mm_shuffle_epi8(load(p), by2), b = _mm_shuffle_epi8(load(p + 16), by2);
        put(0, r0, _mm_unpacklo_epi64(a, b));
        put(1, r0, _mm_unpackhi_epi64(a, b));
      } else {
        put(0, r0, load(p));
      }
    }
    if (R < rows) detail::transpose_tiled(src + R * src_rs, rows - R, cols, src_rs, dst + R, dst_rs);
    return;
  }
  const std::int64_t extent = (rows - 1) * src_rs + cols;  // the source's elements past src: [0, extent)
  // the 16 x 16 block at (r0, c0) of which the first cw columns exist (cw < 16: 16 bytes read where
  // the source goes on that far, the bytes past cw landing in transposed rows that are not stored;
  // else byte by byte)
  const auto block = [&](std::int64_t r0, std::int64_t c0, std::int64_t cw) {
    __m128i r[16], a[16], b[16], c[16];
    for (int i = 0; i < 16; ++i) {
      const std::int64_t o = (r0 + i) * src_rs + c0;
      if (cw == 16 || o + 16 <= extent) {
        r[i] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + o));
      } else {
        alignas(16) std::int8_t row[16] = {};
        for (std::int64_t j = 0; j < cw; ++j) row[j] = src[o + j];
        r[i] = _mm_load_si128(reinterpret_cast<const __m128i*>(row));
      }
    }
    for (int k = 0; k < 8; ++k) {  // a[h * 8 + k]: rows 2k, 2k + 1, columns 8h..8h + 7, in pairs
      a[k] = _mm_unpacklo_epi8(r[2 * k], r[2 * k + 1]);
      a[k + 8] = _mm_unpackhi_epi8(r[2 * k], r[2 * k + 1]);
    }
    for (int h = 0; h < 2; ++h) {  // b[g * 4 + k]: rows 4k..4k + 3, columns 4g..4g + 3 (g = 2h + q)
      for (int k = 0; k < 4; ++k) {
        b[h * 8 + k] = _mm_unpacklo_epi16(a[h * 8 + 2 * k], a[h * 8 + 2 * k + 1]);
        b[h * 8 + 4 + k] = _mm_unpackhi_epi16(a[h * 8 + 2 * k], a[h * 8 + 2 * k + 1]);
      }
    }
    for (int g = 0; g < 4; ++g) {  // c[g * 4 + p * 2 + k]: rows 8k..8k + 7, columns 4g + 2p, 4g + 2p + 1
      for (int k = 0; k < 2; ++k) {
        c[g * 4 + k] = _mm_unpacklo_epi32(b[g * 4 + 2 * k], b[g * 4 + 2 * k + 1]);
        c[g * 4 + 2 + k] = _mm_unpackhi_epi32(b[g * 4 + 2 * k], b[g * 4 + 2 * k + 1]);
      }
    }
    for (int g = 0; g < 4; ++g) {
      for (int p = 0; p < 2; ++p) {  // columns 4g + 2p and 4g + 2p + 1: their 16 rows each
        const std::int64_t col = g * 4 + p * 2;
        std::int8_t* d = dst + (c0 + col) * dst_rs + r0;
        if (col < cw) _mm_storeu_si128(reinterpret_cast<__m128i*>(d), _mm_unpacklo_epi64(c[g * 4 + p * 2], c[g * 4 + p * 2 + 1]));
        if (col + 1 < cw)
          _mm_storeu_si128(reinterpret_cast<__m128i*>(d + dst_rs), _mm_unpackhi_epi64(c[g * 4 + p * 2], c[g * 4 + p * 2 + 1]));
      }
    }
  };
  for (std::int64_t r0 = 0; r0 < R; r0 += 16) {
    for (std::int64_t c0 = 0; c0 < Cc; c0 += 16) block(r0, c0, 16);
    if (Cc < cols) block(r0, Cc, cols - Cc);  // the last 1-15 columns (NCHW maps of 2 x 2, 3 x 3 pixels)
  }
  if (R < rows) detail::transpose_tiled(src + R * src_rs, rows - R, cols, src_rs, dst + R, dst_rs);
}

// QGemmKernels::clamp_f32: min(hi, max(lo, y)), y second (vmaxps / vminps return it for a NaN and
// for two zeros)
void clamp_f32(float* y, std::int64_t n, float lo, float hi) {
  const __m256 l = _mm256_set1_ps(lo), h = _mm256_set1_ps(hi);
  const auto clamp8 = [&](float* p) { _mm256_storeu_ps(p, _mm256_min_ps(h, _mm256_max_ps(l, _mm256_loadu_ps(p)))); };
  std::int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    for (int j = 0; j < 4; ++j) clamp8(y + i + 8 * j);
  }
  for (; i + 8 <= n; i += 8) clamp8(y + i);
  for (; i < n; ++i) y[i] = y[i] < lo ? lo : (y[i] > hi ? hi : y[i]);
}

}  // namespace

// linear_w8_weight_only's GEMM path from 96 rows (below it the middle path's tiles from 8; before
// them, at 16 rows the lane-sum kernel ran 0.68x FP32 and the GEMM path 0.93x)
constexpr std::int64_t kW8fGemmRows = 96;

const QGemmKernels* qgemm_avx2() {
  // dwconv: dwconv_planes above (other strides: loops.h's loop, vectorized by the compiler here);
  // dwconv_nhwc above
  // the weight-only GEMM path from 64 rows: at 48 rows it ran 1.02-1.10x gemm_w4f's time, at 64 rows 0.87-0.97x
  static const QGemmKernels k = [] {
    QGemmKernels t{&quantize_rows, &gemm_s8, &gemm_t2, &gemm_b1, &gemm_w4, &gemm_xnor, &gemm_w4f,
                   &dwconv_planes, &dwconv_nhwc, &transpose_f32,
                   &transpose_s8_s16, &transpose_s8, &dequant_w4f, kW4fGemmRows,
                   &detail::gemm_w8f_loop, &detail::dequant_w8f_rows, kW8fGemmRows};
    t.gemm_w8f_xt = &detail::gemm_w8f_xt;  // loops.h's tiles at 256 bits
    // 4096 x 4096 (MKL at AVX2), w8: the tiles ran 1.13x FP32 at 8 rows (lane sums 1.00x), 1.41x at 16
    // (GEMM path 0.78x), 0.98x at 64 (0.94x) and 0.83x at 128 (0.93x); w4: 0.97x at 8 rows (gemm_w4f
    // 1.12x), 1.28x at 16 (0.91x), 1.03x at 64 (GEMM path 0.94x), 0.82x at 96 (0.89x). MiniLM's
    // shapes at 16 rows: 1.15-1.55x against gemm_w4f's 0.86-1.15x.
    // (w8 from 8 rows: the lane sums ran 0.84-0.91x FP32 at 8 rows in the DRAM regime; AVX-512's lane
    // sums run 2.2x there and keep rows 8-11, so those rows' bits differ between the two tables)
    t.w8f_xt_rows = 8;
    t.wof_tile_rows = detail::kWofRows;
    // linear_w4_weight_only: the packed GEMM from 9 rows, in place of the middle path and the
    // dequantize-then-MKL path (4096 x 4096, MKL at AVX2, against FP32 in the same run: 16 / 32 / 64 /
    // 128 / 256 rows packed 1.33 / 1.14 / 1.00 / 0.97 / 0.91x, middle path 1.25 / 1.10 / 1.01 / 0.87 /
    // 0.88x, dequantize-then-MKL 0.81 / 0.86 / 0.85 / 0.92 / 0.89x; gemm_w4f's register tiles 1.26 /
    // 0.99 / 0.99 / 0.80 / 0.79x against packed 1.23 / 1.12 / 1.06 / 0.98 / 0.91x in another run).
    // From 9 rows, as measured on an AVX2-only CPU (AMD EPYC Zen 3, 2026-12-03, ninth session; one
    // layer, hot, FP32 in the same run): 4096 x 4096 at 9 / 10 / 11 / 12 / 13 rows gemm_w4f's tiles
    // 3.30 / 2.99 / 2.67 / 1.27 / 1.24x, packed 3.87 / 3.29 / 3.29 / 2.92 / 2.66x; MiniLM's shapes at
    // 12 rows 1.36-1.54x against 1.56-1.75x. The row layout's middle path (from the same threshold)
    // at 12 rows 1.94 / 1.08 / 1.07x (4096 x 4096, 1536 x 384, 384 x 1536), its tiles 0.95 / 1.04 /
    // 1.05x; at 9 rows 1.83x against 1.68x. At 8 rows the tiles stay (3.14-4.45x against packed
    // 3.63x). Ternary weight-only (the same kernel, one group per row) at 12 rows: packed 2.83x
    // against tiles 1.31x. (An Intel Xeon running this
    // table under AVX2 emulation had favoured the 12-row tile: 12 / 13 rows 1.55 / 1.45x against
    // packed 1.38 / 1.35x; AVX2 is this table's real CPUs, so Zen 3 decides.)
    t.gemm_w4f_packed = &detail::gemm_w4f_packed;  // loops.h's packed GEMM at 256 bits
    t.w4f_packed_rows = 9;
    t.gemm_w4f_xt = &detail::gemm_w4f_xt;  // the row layout's middle path, up to kW4fGemmRows
    t.wop_panel_cols = detail::kWopNC;
    t.clamp_f32 = &clamp_f32;
    t.quantize_s16 = &quantize_s16;
    t.pack_sign_zero = &pack_sign_zero;
    t.dwconv_flat = true;
    // W4A8 convs direct on their planes up to K = 1152 (3 x 3 from 128 channels). This table on Zen 5,
    // 3 x 3 convs against the patch rows and gemm_w4 (2 threads, docs/benchmarks.md, forty-seventh
    // session): K = 288 / 576 / 1152 0.79 / 0.81 / 0.94x the time, K = 2304 1.00-1.06x, 4608 1.08x.
    // (To be measured on an AVX2-only CPU, whose ports differ.)
    t.conv_w4 = &avx2::conv_w4;
    t.conv_w4_max_k = 1152;
    return t;
  }();
  return &k;
}

}  // namespace qatkit::kernels::cpu

#else

namespace qatkit::kernels::cpu {
const QGemmKernels* qgemm_avx2() { return nullptr; }
}  // namespace qatkit::kernels::cpu

#endif
