// AVX2 + FMA + F16C fake-quant chunk functions (this file is compiled with -mavx2 -mfma -mf16c;
// isa.cpp only selects it on CPUs that support all three). FMA is never contracted here
// (-ffp-contract=off): results equal the baseline bit for bit.
#include "fake_quant_cpu.h"

#if defined(__AVX2__) && defined(__F16C__)
#include <immintrin.h>

#include <type_traits>

#include "../avx2_io.h"
#include "loops.h"

namespace qatkit::kernels::cpu {
namespace {

using detail::BFloat16;
using detail::bf16_bits;
using detail::Half;
using detail::load8;
using detail::store8;

/// The fake-quant formula on 8 float lanes (lo = qmin - z, hi = qmax - z); returns the mask bits.
inline std::uint32_t fq8(__m256 x, __m256 vs, __m256 inv, __m256 lo, __m256 hi, __m256& y) {
  const __m256 r = _mm256_round_ps(_mm256_mul_ps(x, inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 in = _mm256_and_ps(_mm256_cmp_ps(r, lo, _CMP_GE_OQ), _mm256_cmp_ps(r, hi, _CMP_LE_OQ));
  // max/min return their second operand when either is NaN, so a NaN r passes through.
  // + 0: a -0 code becomes +0, as in fake_quant_value
  y = _mm256_mul_ps(_mm256_add_ps(_mm256_min_ps(hi, _mm256_max_ps(lo, r)), _mm256_setzero_ps()), vs);
  return static_cast<std::uint32_t>(_mm256_movemask_ps(in));
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

}  // namespace

const FakeQuantKernels* fake_quant_avx2() {
  static const FakeQuantKernels k{&detail::forward_dispatch<Avx2Vec>, &detail::backward_dispatch<Avx2Vec>,
                                  &qparams_valid_avx2,                &detail::lsq_run_dispatch<Avx2Vec>,
                                  &detail::lsq_row_dispatch,          &detail::pact_run_dispatch};
  return &k;
}

}  // namespace qatkit::kernels::cpu

#else  // compiler without AVX2 support for this file: the baseline is the only path

namespace qatkit::kernels::cpu {
const FakeQuantKernels* fake_quant_avx2() { return nullptr; }
}  // namespace qatkit::kernels::cpu

#endif
