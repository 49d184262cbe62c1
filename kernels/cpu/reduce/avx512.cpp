// The reduce family's AVX-512 table (F/BW, the same build flags as the integer GEMMs' files): the
// AVX2 table with sum_abssum and sum_abssum_runs of float32 runs in 512-bit registers.
//
// sum x and sum |x| are float64 chains, element j of a run into lane j % 8 (ReduceKernels::
// sum_abssum): the bits every ISA, the converted model's simulation and binarize's statistics
// share. Here each chain is one zmm register (8 lanes), each 8 floats one conversion, two adds and
// an and: 13.6 G elements a second on Zen 5 against the AVX2 loop's 10.4 (two 4-lane registers per
// chain, two conversions and an extract per 8). One run's two chains wait on the add's latency;
// runs are independent, so R runs side by side (an XNOR conv's images) keep 2R chains in flight,
// each run's adds in its own order: the same bits. Two runs: 20.7 G elements a second, four 20.4
// (bound by the loop's operations): sum_runs is 2 (docs/benchmarks.md, fiftieth session).
// (A form that summed blocks of one run in any order where no addition could round was tried and
// dropped: a float64 sum of ~10^5 float32 activations does round; docs/benchmarks.md, fiftieth
// session.)
#include "reduce_cpu.h"

#if defined(__AVX512F__) && defined(__AVX512BW__)
// GCC 12's AVX-512 intrinsics pass _mm512_undefined_* as a don't-care operand, which its
// uninitialized-use analysis flags once inlined (the known false positive of sign/avx512.cpp and
// qgemm/avx512_common.h): the warnings are off for this file only.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <cmath>

#include "loops.h"

namespace qatkit::kernels::cpu {
namespace {

template <int R>
void sum_abssum_f32_runs(const float* const* x, std::int64_t n, SumAbsLanes* const* l) {
  const __m512i magnitude = _mm512_set1_epi64(0x7FFFFFFFFFFFFFFF);
  __m512d s[R], a[R];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
    s[r] = _mm512_loadu_pd(l[r]->s);
    a[r] = _mm512_loadu_pd(l[r]->a);
  }
  std::int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const __m512d v = _mm512_cvtps_pd(_mm256_loadu_ps(x[r] + i));  // exact
      s[r] = _mm512_add_pd(s[r], v);
      a[r] = _mm512_add_pd(a[r], _mm512_castsi512_pd(_mm512_and_si512(_mm512_castpd_si512(v), magnitude)));
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
    _mm512_storeu_pd(l[r]->s, s[r]);
    _mm512_storeu_pd(l[r]->a, a[r]);
    for (std::int64_t k = i; k < n; ++k) {  // the tail (under 8: lanes 0..), as the portable loop's
      const double v = static_cast<double>(x[r][k]);
      l[r]->s[k - i] += v;
      l[r]->a[k - i] += std::fabs(v);
    }
  }
}

void sum_abssum_avx512(const void* x, DType dt, std::int64_t n, SumAbsLanes* l) {
  if (dt != DType::kFloat32) return reduce_avx2()->sum_abssum(x, dt, n, l);
  const float* f = static_cast<const float*>(x);
  sum_abssum_f32_runs<1>(&f, n, &l);
}

void sum_abssum_runs_avx512(const void* const* x, DType dt, std::int64_t n, SumAbsLanes* const* l, int runs) {
  if (dt != DType::kFloat32) return reduce_avx2()->sum_abssum_runs(x, dt, n, l, runs);
  const auto* f = reinterpret_cast<const float* const*>(x);
  int r = 0;
  for (; r + 4 <= runs; r += 4) sum_abssum_f32_runs<4>(f + r, n, l + r);
  switch (runs - r) {
    case 3:
      return sum_abssum_f32_runs<3>(f + r, n, l + r);
    case 2:
      return sum_abssum_f32_runs<2>(f + r, n, l + r);
    case 1:
      return sum_abssum_f32_runs<1>(f + r, n, l + r);
    default:
      return;
  }
}

}  // namespace

const ReduceKernels* reduce_avx512() {
  static const ReduceKernels* k = []() -> const ReduceKernels* {
    const ReduceKernels* avx2 = reduce_avx2();
    if (avx2 == nullptr) return nullptr;
    static ReduceKernels t = *avx2;
    t.sum_abssum = &sum_abssum_avx512;
    t.sum_abssum_runs = &sum_abssum_runs_avx512;
    t.sum_runs = 2;
    return &t;
  }();
  return k;
}

}  // namespace qatkit::kernels::cpu

#else

namespace qatkit::kernels::cpu {
const ReduceKernels* reduce_avx512() { return nullptr; }
}  // namespace qatkit::kernels::cpu

#endif
