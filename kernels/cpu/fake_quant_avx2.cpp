// AVX2 + FMA + F16C fake-quantize chunk functions (this file alone is compiled with -mavx2 -mfma
// -mf16c; the run-time dispatcher only selects it on CPUs that support all three). FMA is never
// contracted here (-ffp-contract=off): results equal the baseline bit for bit.
#include "fake_quant_cpu.h"

#if defined(__AVX2__) && defined(__F16C__)
#include <immintrin.h>

#include <type_traits>

#include "binarize_loops.h"
#include "fake_quant_loops.h"

namespace qatkit::kernels::cpu {
namespace {

using detail::BFloat16;
using detail::Half;

inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const Half* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
inline __m256 load8(const BFloat16* p) {
  const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}
inline void store8(float* p, __m256 v) { _mm256_storeu_ps(p, v); }
inline void store8(Half* p, __m256 v) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
}
inline __m256i bf16_bits(__m256 v);
inline void store8(BFloat16* p, __m256 v) {
  const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(bf16_bits(v), bf16_bits(v)), 0x08);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(packed));
}

/// The fake-quant formula on 8 float lanes (lo = qmin - z, hi = qmax - z); returns the mask bits.
inline std::uint32_t fq8(__m256 x, __m256 vs, __m256 inv, __m256 lo, __m256 hi, __m256& y) {
  const __m256 r = _mm256_round_ps(_mm256_mul_ps(x, inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 in = _mm256_and_ps(_mm256_cmp_ps(r, lo, _CMP_GE_OQ), _mm256_cmp_ps(r, hi, _CMP_LE_OQ));
  // max/min return their second operand when either is NaN, so a NaN r passes through.
  y = _mm256_mul_ps(_mm256_min_ps(hi, _mm256_max_ps(lo, r)), vs);
  return static_cast<std::uint32_t>(_mm256_movemask_ps(in));
}

/// Round-half-to-even bfloat16 bits of 8 floats, one per 32-bit lane (NaN -> 0x7FC0, as c10).
inline __m256i bf16_bits(__m256 v) {
  const __m256i u = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  const __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7FFF)), lsb), 16);
  return _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7FC0), _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
}

struct Avx2Vec {
  template <typename S>
  static std::uint32_t fwd8_const(const S* x, S* y, float s, float inv, float z, float qmin, float qmax) {
    if constexpr (std::is_same_v<S, double>) {
      return detail::scalar8_const<S>(x, y, s, inv, z, qmin, qmax);
    } else {
      __m256 out;
      const std::uint32_t bits = fq8(load8(x), _mm256_set1_ps(s), _mm256_set1_ps(inv), _mm256_set1_ps(qmin - z),
                                     _mm256_set1_ps(qmax - z), out);
      store8(y, out);
      return bits;
    }
  }

  template <typename S>
  static std::uint32_t fwd16_const(const S* x, S* y, float s, float inv, float z, float qmin, float qmax) {
    if constexpr (std::is_same_v<S, BFloat16>) {
      // 16 bf16 in one 256-bit load; unpacking against zero puts elements 0-3,8-11 in `lo` and
      // 4-7,12-15 in `hi`, and packus restores the order, so no cross-lane shuffles are needed.
      const __m256 vs = _mm256_set1_ps(s), vinv = _mm256_set1_ps(inv);
      const __m256 lo = _mm256_set1_ps(qmin - z), hi = _mm256_set1_ps(qmax - z);
      const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x));
      const __m256i zero = _mm256_setzero_si256();
      __m256 ylo, yhi;
      const std::uint32_t mlo = fq8(_mm256_castsi256_ps(_mm256_unpacklo_epi16(zero, raw)), vs, vinv, lo, hi, ylo);
      const std::uint32_t mhi = fq8(_mm256_castsi256_ps(_mm256_unpackhi_epi16(zero, raw)), vs, vinv, lo, hi, yhi);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(y), _mm256_packus_epi32(bf16_bits(ylo), bf16_bits(yhi)));
      return (mlo & 0xFu) | ((mhi & 0xFu) << 4) | ((mlo & 0xF0u) << 4) | ((mhi & 0xF0u) << 8);
    } else {
      return fwd8_const<S>(x, y, s, inv, z, qmin, qmax) | (fwd8_const<S>(x + 8, y + 8, s, inv, z, qmin, qmax) << 8);
    }
  }

  template <typename S>
  static std::uint32_t fwd8_vary(const S* x, S* y, const float* s, const float* z, float qmin, float qmax) {
    if constexpr (std::is_same_v<S, double>) {
      return detail::scalar8_vary<S>(x, y, s, z, qmin, qmax);
    } else {
      const __m256 vs = _mm256_loadu_ps(s);
      const __m256 inv = _mm256_div_ps(_mm256_set1_ps(1.0f), vs);  // IEEE division: equals 1.0f / s exactly
      const __m256 vz = _mm256_loadu_ps(z);
      __m256 out;
      const std::uint32_t bits =
          fq8(load8(x), vs, inv, _mm256_sub_ps(_mm256_set1_ps(qmin), vz), _mm256_sub_ps(_mm256_set1_ps(qmax), vz), out);
      store8(y, out);
      return bits;
    }
  }

  /// LSQ gradients of 8 elements; the float terms are widened to float64 and added to the lanes.
  template <typename S>
  static void lsq8(const S* x, const S* dy, S* dx, float s, float inv, float lo, float hi, double* ds, double* dz) {
    if constexpr (std::is_same_v<S, double>) {
      detail::lsq8_scalar<S>(x, dy, dx, s, inv, lo, hi, ds, dz);
    } else {
      const __m256 vx = load8(x), vdy = load8(dy);
      const __m256 vlo = _mm256_set1_ps(lo), vhi = _mm256_set1_ps(hi), sign = _mm256_set1_ps(-0.0f);
      const __m256 xs = _mm256_mul_ps(vx, _mm256_set1_ps(inv));
      const __m256 r = _mm256_round_ps(xs, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      const __m256 below = _mm256_cmp_ps(r, vlo, _CMP_LT_OQ), above = _mm256_cmp_ps(r, vhi, _CMP_GT_OQ);
      const __m256 in = _mm256_and_ps(_mm256_cmp_ps(r, vlo, _CMP_GE_OQ), _mm256_cmp_ps(r, vhi, _CMP_LE_OQ));
      store8(dx, _mm256_and_ps(in, vdy));
      // factor = in ? r - xs : below ? lo : above ? hi : 0 (NaN: 0)
      __m256 factor = _mm256_and_ps(in, _mm256_sub_ps(r, xs));
      factor = _mm256_or_ps(factor, _mm256_and_ps(below, vlo));
      factor = _mm256_or_ps(factor, _mm256_and_ps(above, vhi));
      const __m256 gs = _mm256_mul_ps(vdy, factor);
      const __m256 gz =
          _mm256_and_ps(_mm256_or_ps(below, above), _mm256_xor_ps(sign, _mm256_mul_ps(vdy, _mm256_set1_ps(s))));
      _mm256_store_pd(ds, _mm256_add_pd(_mm256_load_pd(ds), _mm256_cvtps_pd(_mm256_castps256_ps128(gs))));
      _mm256_store_pd(ds + 4, _mm256_add_pd(_mm256_load_pd(ds + 4), _mm256_cvtps_pd(_mm256_extractf128_ps(gs, 1))));
      _mm256_store_pd(dz, _mm256_add_pd(_mm256_load_pd(dz), _mm256_cvtps_pd(_mm256_castps256_ps128(gz))));
      _mm256_store_pd(dz + 4, _mm256_add_pd(_mm256_load_pd(dz + 4), _mm256_cvtps_pd(_mm256_extractf128_ps(gz, 1))));
    }
  }

  template <typename S>
  static void bwd8(const S* g, std::uint8_t bits, S* dx) {
    if constexpr (std::is_same_v<S, float>) {
      const __m256i sel = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
      const __m256i m = _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(bits), sel), sel);
      _mm256_storeu_ps(dx, _mm256_and_ps(_mm256_castsi256_ps(m), _mm256_loadu_ps(g)));
    } else if constexpr (std::is_same_v<S, double>) {
      const __m256i lo = _mm256_setr_epi64x(1, 2, 4, 8), hi = _mm256_setr_epi64x(16, 32, 64, 128);
      const __m256i b = _mm256_set1_epi64x(bits);
      const __m256i mlo = _mm256_cmpeq_epi64(_mm256_and_si256(b, lo), lo);
      const __m256i mhi = _mm256_cmpeq_epi64(_mm256_and_si256(b, hi), hi);
      _mm256_storeu_pd(dx, _mm256_and_pd(_mm256_castsi256_pd(mlo), _mm256_loadu_pd(g)));
      _mm256_storeu_pd(dx + 4, _mm256_and_pd(_mm256_castsi256_pd(mhi), _mm256_loadu_pd(g + 4)));
    } else {
      const __m128i sel = _mm_setr_epi16(1, 2, 4, 8, 16, 32, 64, 128);
      const __m128i m = _mm_cmpeq_epi16(_mm_and_si128(_mm_set1_epi16(bits), sel), sel);
      const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(g));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(dx), _mm_and_si128(m, v));
    }
  }
};

bool qparams_valid_avx2(const float* s, const float* z, std::int64_t n, float qmin, float qmax) {
  const __m256 smin = _mm256_set1_ps(1.17549435e-38f), smax = _mm256_set1_ps(3.40282347e+38f);
  const __m256 zmin = _mm256_set1_ps(qmin), zmax = _mm256_set1_ps(qmax);
  __m256 ok = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
  std::int64_t c = 0;
  for (; c + 8 <= n; c += 8) {
    const __m256 vs = _mm256_loadu_ps(s + c), vz = _mm256_loadu_ps(z + c);
    const __m256 s_ok = _mm256_and_ps(_mm256_cmp_ps(vs, smin, _CMP_GE_OQ), _mm256_cmp_ps(vs, smax, _CMP_LE_OQ));
    const __m256 z_in = _mm256_and_ps(_mm256_cmp_ps(vz, zmin, _CMP_GE_OQ), _mm256_cmp_ps(vz, zmax, _CMP_LE_OQ));
    const __m256 z_int =
        _mm256_cmp_ps(_mm256_round_ps(vz, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), vz, _CMP_EQ_OQ);
    ok = _mm256_and_ps(ok, _mm256_and_ps(s_ok, _mm256_and_ps(z_in, z_int)));
  }
  return _mm256_movemask_ps(ok) == 0xFF && detail::qparams_valid_scalar(s + c, z + c, n - c, qmin, qmax);
}

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

/// TWN statistic (see FakeQuantKernels::twn_stats): |x| > delta selects by mask, then the same
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
  twn_stats_portable(x, dt, n, delta, sum, count);
}

}  // namespace

const FakeQuantKernels* avx2_kernels() {
  static const FakeQuantKernels k{"avx2",
                                  &detail::forward_dispatch<Avx2Vec>,
                                  &detail::backward_dispatch<Avx2Vec>,
                                  &qparams_valid_avx2,
                                  &detail::lsq_run_dispatch<Avx2Vec>,
                                  &detail::lsq_row_dispatch,
                                  &detail::pact_run_dispatch,
                                  &absmax_avx2,
                                  &abssum_avx2,
                                  &binarize_forward_impl,
                                  &binarize_backward_impl,
                                  &twn_stats_avx2};
  static const bool supported =
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  return supported ? &k : nullptr;
}

}  // namespace qatkit::kernels::cpu

#else  // compiler without AVX2 support for this file: the baseline is the only path

namespace qatkit::kernels::cpu {
const FakeQuantKernels* avx2_kernels() { return nullptr; }
}  // namespace qatkit::kernels::cpu

#endif
