// AVX2 + F16C reductions (max |x|, sum |x|, sum x with sum |x|, the TWN statistic); the same lane
// assignment as the portable loops, so the same bits. Compiled with -mavx2 -mfma -mf16c; float64
// input takes the portable loops.
#include "reduce_cpu.h"

#if defined(__AVX2__) && defined(__F16C__)
#include <immintrin.h>

#include "../avx2_io.h"
#include "loops.h"

namespace qatkit::kernels::cpu {
namespace {

using detail::BFloat16;
using detail::Half;
using detail::load8;

template <typename S>
float absmax_avx2_typed(const S* x, std::int64_t n, bool* finite) {
  const __m256 sign = _mm256_set1_ps(-0.0f), big = _mm256_set1_ps(3.40282347e+38f);
  __m256 m0 = _mm256_setzero_ps(), m1 = _mm256_setzero_ps();
  __m256 ok = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
  std::int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256 a0 = _mm256_andnot_ps(sign, load8(x + i)), a1 = _mm256_andnot_ps(sign, load8(x + i + 8));
    ok = _mm256_and_ps(ok, _mm256_and_ps(_mm256_cmp_ps(a0, big, _CMP_LE_OQ), _mm256_cmp_ps(a1, big, _CMP_LE_OQ)));
    m0 = _mm256_max_ps(a0, m0);  // NaN in the first operand returns m0: NaN never wins
    m1 = _mm256_max_ps(a1, m1);
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, _mm256_max_ps(m0, m1));
  float m = 0.f;
  for (float v : lanes) m = v > m ? v : m;
  if (_mm256_movemask_ps(ok) != 0xFF) *finite = false;
  const float tail = detail::absmax_scalar_typed(x + i, n - i, finite);
  return tail > m ? tail : m;
}

float absmax_avx2(const void* x, DType dt, std::int64_t n, bool* finite) {
  switch (dt) {
    case DType::kFloat32:
      return absmax_avx2_typed(static_cast<const float*>(x), n, finite);
    case DType::kFloat16:
      return absmax_avx2_typed(static_cast<const Half*>(x), n, finite);
    case DType::kBFloat16:
      return absmax_avx2_typed(static_cast<const BFloat16*>(x), n, finite);
    case DType::kFloat64:
      break;
  }
  return detail::absmax_scalar(x, dt, n, finite);
}

/// sum |x|: lanes 0-3 and 4-7 of each 8-element step in two float64 accumulators, the same lane
/// assignment (and so the same bits) as the portable loop.
template <typename S>
double abssum_avx2_typed(const S* x, std::int64_t n) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256d lo = _mm256_setzero_pd(), hi = _mm256_setzero_pd();
  std::int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 a = _mm256_andnot_ps(sign, load8(x + i));
    lo = _mm256_add_pd(lo, _mm256_cvtps_pd(_mm256_castps256_ps128(a)));
    hi = _mm256_add_pd(hi, _mm256_cvtps_pd(_mm256_extractf128_ps(a, 1)));
  }
  alignas(32) double lanes[8];
  _mm256_store_pd(lanes, lo);
  _mm256_store_pd(lanes + 4, hi);
  for (int k = 0; i < n; ++i, ++k) {
    const double v = static_cast<double>(detail::Elem<S>::load(x[i]));
    lanes[k] += v < 0 ? -v : v;
  }
  return detail::lane_sum(lanes);
}

double abssum_avx2(const void* x, DType dt, std::int64_t n) {
  switch (dt) {
    case DType::kFloat32:
      return abssum_avx2_typed(static_cast<const float*>(x), n);
    case DType::kFloat16:
      return abssum_avx2_typed(static_cast<const Half*>(x), n);
    case DType::kBFloat16:
      return abssum_avx2_typed(static_cast<const BFloat16*>(x), n);
    case DType::kFloat64:
      break;
  }
  return detail::abssum_scalar(x, dt, n);
}

/// sum x and sum |x| (see ReduceKernels::sum_abssum): abssum_avx2's two accumulators for |x| and two
/// more for x, independent chains. Each 8 elements are converted once; |x| is the float64 value with
/// its sign bit cleared (the conversion is exact, so the same value abssum adds).
template <typename S>
void sum_abssum_avx2_typed(const S* x, std::int64_t n, SumAbsLanes* l) {
  const __m256d sign = _mm256_set1_pd(-0.0);
  __m256d slo = _mm256_loadu_pd(l->s), shi = _mm256_loadu_pd(l->s + 4);
  __m256d alo = _mm256_loadu_pd(l->a), ahi = _mm256_loadu_pd(l->a + 4);
  std::int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = load8(x + i);
    const __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v)), hi = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
    slo = _mm256_add_pd(slo, lo);
    shi = _mm256_add_pd(shi, hi);
    alo = _mm256_add_pd(alo, _mm256_andnot_pd(sign, lo));
    ahi = _mm256_add_pd(ahi, _mm256_andnot_pd(sign, hi));
  }
  _mm256_storeu_pd(l->s, slo);
  _mm256_storeu_pd(l->s + 4, shi);
  _mm256_storeu_pd(l->a, alo);
  _mm256_storeu_pd(l->a + 4, ahi);
  for (int k = 0; i < n; ++i, ++k) {
    const double v = static_cast<double>(detail::Elem<S>::load(x[i]));
    l->s[k] += v;
    l->a[k] += v < 0 ? -v : v;
  }
}

void sum_abssum_avx2(const void* x, DType dt, std::int64_t n, SumAbsLanes* l) {
  switch (dt) {
    case DType::kFloat32:
      return sum_abssum_avx2_typed(static_cast<const float*>(x), n, l);
    case DType::kFloat16:
      return sum_abssum_avx2_typed(static_cast<const Half*>(x), n, l);
    case DType::kBFloat16:
      return sum_abssum_avx2_typed(static_cast<const BFloat16*>(x), n, l);
    case DType::kFloat64:
      break;
  }
  detail::sum_abssum_scalar(x, dt, n, l);
}

/// sum_abssum_runs (see ReduceKernels): one run at a time. (Two runs side by side, eight chains in
/// flight, ran at the same 10.4 G elements a second as one on Zen 5: this loop is bound by its
/// conversions and adds, not the chains' latency; docs/benchmarks.md, fiftieth session.)
void sum_abssum_runs_avx2(const void* const* x, DType dt, std::int64_t n, SumAbsLanes* const* l, int runs) {
  detail::sum_abssum_runs_each(&sum_abssum_avx2, x, dt, n, l, runs);
}

/// TWN statistic (see ReduceKernels::twn_stats): |x| > delta selects by mask, then the same
/// lane split and fixed combination as the portable loop (so the same bits).
template <typename S>
void twn_stats_avx2_typed(const S* x, std::int64_t n, float delta, double* sum, std::int64_t* count) {
  const __m256 sign = _mm256_set1_ps(-0.0f), d = _mm256_set1_ps(delta);
  __m256d lo = _mm256_setzero_pd(), hi = _mm256_setzero_pd();
  __m256i hits = _mm256_setzero_si256();  // 8 x int32 counts per call chunk (n < 2^31 per lane)
  std::int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 a = _mm256_andnot_ps(sign, load8(x + i));
    const __m256 m = _mm256_cmp_ps(a, d, _CMP_GT_OQ);
    const __m256 kept = _mm256_and_ps(a, m);
    lo = _mm256_add_pd(lo, _mm256_cvtps_pd(_mm256_castps256_ps128(kept)));
    hi = _mm256_add_pd(hi, _mm256_cvtps_pd(_mm256_extractf128_ps(kept, 1)));
    hits = _mm256_sub_epi32(hits, _mm256_castps_si256(m));  // a true lane is -1
  }
  alignas(32) double lanes[8];
  alignas(32) std::int32_t h[8];
  _mm256_store_pd(lanes, lo);
  _mm256_store_pd(lanes + 4, hi);
  _mm256_store_si256(reinterpret_cast<__m256i*>(h), hits);
  std::int64_t counts[8];
  for (int k = 0; k < 8; ++k) counts[k] = h[k];
  for (int k = 0; i < n; ++i, ++k) {
    const float v = detail::Elem<S>::load(x[i]);
    const float av = v < 0.f ? -v : v;
    const int hit = av > delta;
    lanes[k] += static_cast<double>(av) * static_cast<double>(hit);
    counts[k] += hit;
  }
  *sum = detail::lane_sum(lanes);
  *count = counts[0] + counts[1] + counts[2] + counts[3] + counts[4] + counts[5] + counts[6] + counts[7];
}

void twn_stats_avx2(const void* x, DType dt, std::int64_t n, float delta, double* sum, std::int64_t* count) {
  switch (dt) {
    case DType::kFloat32:
      return twn_stats_avx2_typed(static_cast<const float*>(x), n, delta, sum, count);
    case DType::kFloat16:
      return twn_stats_avx2_typed(static_cast<const Half*>(x), n, delta, sum, count);
    case DType::kBFloat16:
      return twn_stats_avx2_typed(static_cast<const BFloat16*>(x), n, delta, sum, count);
    case DType::kFloat64:
      break;
  }
  detail::twn_stats_scalar(x, dt, n, delta, sum, count);
}

}  // namespace

const ReduceKernels* reduce_avx2() {
  static const ReduceKernels k{&absmax_avx2, &abssum_avx2, &sum_abssum_avx2, &sum_abssum_runs_avx2, 1, &twn_stats_avx2};
  return &k;
}

}  // namespace qatkit::kernels::cpu

#else

namespace qatkit::kernels::cpu {
const ReduceKernels* reduce_avx2() { return nullptr; }
}  // namespace qatkit::kernels::cpu

#endif
