// The sign-family loops compiled with -mavx2 -mfma -mf16c (the compiler turns the selects into
// AVX2 blends, about twice the baseline's speed), and binary_codes' float32 runs in explicit AVX2;
// same bits as the baseline.
#include "sign_cpu.h"

#if defined(__AVX2__) && defined(__F16C__)
#include <immintrin.h>

#include "loops.h"

namespace qatkit::kernels::cpu {
namespace {

/// 8 codes of sign(x - center) at p as int32 lanes: +1, -1, the at-zero code where x == center
/// (at_zero_up: -1 lanes where it is +1), 0 for NaN.
inline __m256i codes8(const float* p, __m256 center, __m256i at_zero_up) {
  const __m256 zero = _mm256_setzero_ps();
  const __m256 v = _mm256_sub_ps(_mm256_loadu_ps(p), center);
  const __m256i gt = _mm256_castps_si256(_mm256_cmp_ps(v, zero, _CMP_GT_OQ));
  const __m256i eq = _mm256_castps_si256(_mm256_cmp_ps(v, zero, _CMP_EQ_OQ));
  const __m256i num = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_ORD_Q));  // -1, or 0 for NaN
  const __m256i up = _mm256_or_si256(gt, _mm256_and_si256(eq, at_zero_up));  // -1 where the code is +1
  return _mm256_sub_epi32(_mm256_sub_epi32(num, up), up);                    // -1 -> +1 where up
}

/// detail::code_run for float32 in explicit AVX2: the int8 code of sign(x - center) (the at-zero
/// code where x == center, 0 for NaN), 32 elements per step, the compare masks' lanes as int32
/// codes packed to bytes. The compiler's vectorization of the scalar select chain ran 0.73 cycles
/// per element on Zen 4, a tenth of an XNOR layer's time (docs/benchmarks.md, twenty-first session).
/// The same codes: the same subtraction and comparisons per element.
void code_run_f32(const float* x, std::int8_t* y, std::int64_t n, float center, bool zero_negative) {
  const __m256 c = _mm256_set1_ps(center);
  const __m256i up0 = zero_negative ? _mm256_setzero_si256() : _mm256_set1_epi32(-1);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  std::int64_t k = 0;
  for (; k + 32 <= n; k += 32) {
    const __m256i ab = _mm256_packs_epi32(codes8(x + k, c, up0), codes8(x + k + 8, c, up0));
    const __m256i cd = _mm256_packs_epi32(codes8(x + k + 16, c, up0), codes8(x + k + 24, c, up0));
    // bytes per 128-bit half: a0-3 b0-3 c0-3 d0-3 | a4-7 b4-7 c4-7 d4-7; dwords back in order
    const __m256i abcd = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(ab, cd), order);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + k), abcd);
  }
  detail::code_run<float>(x + k, y + k, n - k, center, zero_negative);
}

/// SignKernels::codes_s16: code_run_f32's codes, 16 a step, packed to int16 (vpackssdw, then the
/// 64-bit quarters back in order); each row's last n % 16 by the portable loop.
void codes_s16_avx2(const float* x, std::int64_t rows, std::int64_t n, std::int16_t* y, std::int64_t y_rs,
                    float center, bool zero_negative) {
  const __m256 c = _mm256_set1_ps(center);
  const __m256i up0 = zero_negative ? _mm256_setzero_si256() : _mm256_set1_epi32(-1);
  const std::int64_t n16 = n / 16 * 16;
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * n;
    std::int16_t* yr = y + r * y_rs;
    for (std::int64_t k = 0; k < n16; k += 16) {
      const __m256i ab = _mm256_packs_epi32(codes8(xr + k, c, up0), codes8(xr + k + 8, c, up0));  // a0-3 b0-3 | a4-7 b4-7
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(yr + k), _mm256_permute4x64_epi64(ab, 0xD8));
    }
    if (n16 < n) detail::code_rows_s16(xr + n16, 1, n - n16, yr + n16, 0, center, zero_negative);
  }
}

void binary_codes_avx2(const BinarizeArgs& a, std::int64_t begin, std::int64_t end) {
  if (a.dtype != DType::kFloat32) return detail::binary_codes_impl(a, begin, end);
  const auto* x = static_cast<const float*>(a.input);
  auto* y = static_cast<std::int8_t*>(a.output);
  detail::for_each_run(begin, end, a.inner, a.channels, [&](std::int64_t b, std::int64_t e, std::int64_t ch) {
    code_run_f32(x + b, y + b, e - b, a.center ? a.center[ch] : 0.f, a.zero_negative);
  });
}

}  // namespace

const SignKernels* sign_avx2() {
  static const SignKernels k{&detail::binarize_forward_impl, &detail::ternary_forward_impl,
                             &detail::binarize_backward_impl, &binary_codes_avx2, &codes_s16_avx2};
  return &k;
}

}  // namespace qatkit::kernels::cpu

#else

namespace qatkit::kernels::cpu {
const SignKernels* sign_avx2() { return nullptr; }
}  // namespace qatkit::kernels::cpu

#endif
