// The W4A8 GEMM (QGemmW4Args) around a per-ISA group-sum routine, for the AVX2 and AVX-512 files:
// blocks of four weight rows; per block the rows' group scales and zero-point terms are transposed
// once (group-major, four rows per 128 bits), then for every activation row the four rows' group
// sums and finish_w4's float64 combination for the four rows at once, one row per float64 lane.
// Each lane runs finish_w4's operations in its order (int32 acc, exact product, sum in group order,
// * act_scale, to float32, + bias), so the bits are the baseline's; the four lanes are four
// independent dependency chains, and the block's 4 x K / 2 weight bytes stay in L1 across rows.
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <vector>

#include "../../common/qgemm_args.h"
#include "loops.h"

namespace qatkit::kernels::cpu::detail {
namespace {

/// y[m, n .. n + 3]: sums[r * G + g] the group code sums of row n + r; tg / tc [G][4] the rows'
/// group scales / zero-point terms, group-major. Groups of 32.
inline void w4_finish4(const QGemmW4Args& g, std::int64_t m, std::int64_t n, const std::int32_t* sums, std::int64_t G,
                       const float* tg, const std::int32_t* tc) {
  const std::int32_t* ag = g.a_gsum + m * G;
  __m256d t = _mm256_setzero_pd();
  const auto step = [&](std::int64_t gi, __m128i gs) {
    const __m128i acc = _mm_add_epi32(_mm_sub_epi32(gs, _mm_set1_epi32(8 * ag[gi])),
                                      _mm_loadu_si128(reinterpret_cast<const __m128i*>(tc + 4 * gi)));
    t = _mm256_add_pd(t, _mm256_mul_pd(_mm256_cvtepi32_pd(acc), _mm256_cvtps_pd(_mm_loadu_ps(tg + 4 * gi))));
  };
  std::int64_t gi = 0;
  for (; gi + 4 <= G; gi += 4) {  // a 4 x 4 transpose: rows x groups -> groups x rows
    const __m128i r0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(sums + gi));
    const __m128i r1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(sums + G + gi));
    const __m128i r2 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(sums + 2 * G + gi));
    const __m128i r3 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(sums + 3 * G + gi));
    const __m128i t01l = _mm_unpacklo_epi32(r0, r1), t01h = _mm_unpackhi_epi32(r0, r1);
    const __m128i t23l = _mm_unpacklo_epi32(r2, r3), t23h = _mm_unpackhi_epi32(r2, r3);
    step(gi, _mm_unpacklo_epi64(t01l, t23l));
    step(gi + 1, _mm_unpackhi_epi64(t01l, t23l));
    step(gi + 2, _mm_unpacklo_epi64(t01h, t23h));
    step(gi + 3, _mm_unpackhi_epi64(t01h, t23h));
  }
  for (; gi < G; ++gi) step(gi, _mm_setr_epi32(sums[gi], sums[G + gi], sums[2 * G + gi], sums[3 * G + gi]));
  __m128 y = _mm256_cvtpd_ps(_mm256_mul_pd(t, _mm256_set1_pd(g.act_scale)));
  if (g.bias) y = _mm_add_ps(y, _mm_loadu_ps(g.bias + n));
  _mm_storeu_ps(g.y + m * g.N + n, y);
}

/// Output columns [n_begin, n_end) of every row; row_sums(a_row, w_row, sums) writes the G group
/// code sums of one weight row against one activation row (a row of ones gives the code sums that
/// form the zero-point terms, once per block).
template <class RowSums>
void w4_gemm_blocks(const QGemmW4Args& g, std::int64_t n_begin, std::int64_t n_end, const RowSums& row_sums) {
  const std::int64_t KB = g.K / 2, G = g.K / g.group;
  std::vector<std::int32_t> sums(static_cast<std::size_t>(4 * G)), tc(static_cast<std::size_t>(4 * G));
  std::vector<float> tg(static_cast<std::size_t>(4 * G));
  const std::vector<std::int8_t> ones(static_cast<std::size_t>(g.K), 1);
  std::int64_t n = n_begin;
  for (; n + 4 <= n_end; n += 4) {
    if (g.act_offset != 0) {
      for (int r = 0; r < 4; ++r) row_sums(ones.data(), g.w + (n + r) * KB, sums.data() + r * G);
    }
    for (std::int64_t gi = 0; gi < G; ++gi) {
      for (int r = 0; r < 4; ++r) {
        tg[static_cast<std::size_t>(4 * gi + r)] = g.gscale[g.scale_index(n + r, gi)];
        tc[static_cast<std::size_t>(4 * gi + r)] = g.act_offset != 0 ? w4_zero_term(g, sums[static_cast<std::size_t>(r * G + gi)]) : 0;
      }
    }
    for (std::int64_t m = 0; m < g.M; ++m) {
      for (int r = 0; r < 4; ++r) row_sums(g.a + m * g.K, g.w + (n + r) * KB, sums.data() + r * G);
      w4_finish4(g, m, n, sums.data(), G, tg.data(), tc.data());
    }
  }
  for (; n < n_end; ++n) {
    const std::uint8_t* w = g.w + n * KB;
    w4_zero_terms_row(g, w, tc.data());  // groups of 32 here
    for (std::int64_t m = 0; m < g.M; ++m) {
      row_sums(g.a + m * g.K, w, sums.data());
      g.y[m * g.N + n] = finish_w4(
          g, m, n, [&](std::int64_t i) { return sums[static_cast<std::size_t>(i)]; },
          [&](std::int64_t i) { return tc[static_cast<std::size_t>(i)]; });
    }
  }
}

}  // namespace
}  // namespace qatkit::kernels::cpu::detail
