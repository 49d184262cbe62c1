// The sign family's AVX-512 table (F/BW, the same build flags as the integer GEMMs' files): the AVX2
// table with binary_codes' float32 runs 64 elements a step, and codes_s16 32 a step. The compare
// masks select the int32 codes, which pack to bytes: 2 compares per 16 elements against the AVX2
// loop's 3 per 8 (the AVX2 loop was compare-bound at ~3.5 elements a cycle on Zen 5, 17 % of a
// channels_last XNOR depthwise conv; docs/benchmarks.md, forty-ninth session). The same codes: the
// same subtraction and comparisons per element.
#include "sign_cpu.h"

#if defined(__AVX512F__) && defined(__AVX512BW__)
// GCC 12's AVX-512 intrinsics (permutexvar, cvtepi32_epi8) pass _mm512_undefined_* as their
// don't-care source operand, which its uninitialized-use analysis flags once inlined (a known false
// positive, as in qgemm/avx512_common.h): the warnings are off for this file only.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "loops.h"

namespace qatkit::kernels::cpu {
namespace {

/// 16 codes of sign(x - center) as int32 lanes: +1 where x - center > 0 (>= 0 unless
/// kZeroNegative: the at-zero code), 0 where it is NaN, else -1.
template <bool kZeroNegative>
__m512i codes16(__m512 x, __m512 c) {
  const __m512 v = _mm512_sub_ps(x, c);
  const __mmask16 up = _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), kZeroNegative ? _CMP_GT_OQ : _CMP_GE_OQ);
  const __mmask16 num = _mm512_cmp_ps_mask(v, v, _CMP_ORD_Q);  // false for NaN (up is false there too)
  return _mm512_mask_blend_epi32(up, _mm512_maskz_mov_epi32(num, _mm512_set1_epi32(-1)), _mm512_set1_epi32(1));
}

template <bool kZeroNegative>
void code_run_f32(const float* x, std::int8_t* y, std::int64_t n, float center) {
  const __m512 c = _mm512_set1_ps(center);
  // after packs_epi32 then packs_epi16, 128-bit lane i holds 4 codes each of a, b, c, d (dwords
  // 4i .. 4i + 3): the permutation puts a's 16 codes first, then b's, c's, d's
  const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  std::int64_t k = 0;
  for (; k + 64 <= n; k += 64) {
    const __m512i ab = _mm512_packs_epi32(codes16<kZeroNegative>(_mm512_loadu_ps(x + k), c),
                                          codes16<kZeroNegative>(_mm512_loadu_ps(x + k + 16), c));
    const __m512i cd = _mm512_packs_epi32(codes16<kZeroNegative>(_mm512_loadu_ps(x + k + 32), c),
                                          codes16<kZeroNegative>(_mm512_loadu_ps(x + k + 48), c));
    _mm512_storeu_si512(y + k, _mm512_permutexvar_epi32(order, _mm512_packs_epi16(ab, cd)));
  }
  for (; k < n; k += 16) {  // up to 16 at a time, the last under a mask
    const __mmask16 m = n - k >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (n - k)) - 1u);
    _mm_mask_storeu_epi8(y + k, m, _mm512_cvtepi32_epi8(codes16<kZeroNegative>(_mm512_maskz_loadu_ps(m, x + k), c)));
  }
}

template <bool kZeroNegative>
void codes_rows_s16(const float* x, std::int64_t rows, std::int64_t n, std::int16_t* y, std::int64_t y_rs, float center) {
  const __m512 c = _mm512_set1_ps(center);
  // after packs_epi32(a, b), 128-bit lane i holds a's codes 4i .. 4i + 3 then b's: qwords 0, 2, 4, 6
  // are a's 16 codes in order, 1, 3, 5, 7 b's
  const __m512i order = _mm512_setr_epi64(0, 2, 4, 6, 1, 3, 5, 7);
  const std::int64_t n32 = n / 32 * 32;
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * n;
    std::int16_t* yr = y + r * y_rs;
    for (std::int64_t k = 0; k < n32; k += 32) {
      const __m512i ab = _mm512_packs_epi32(codes16<kZeroNegative>(_mm512_loadu_ps(xr + k), c),
                                            codes16<kZeroNegative>(_mm512_loadu_ps(xr + k + 16), c));
      _mm512_storeu_si512(yr + k, _mm512_permutexvar_epi64(order, ab));
    }
    for (std::int64_t k = n32; k < n; k += 16) {  // the last 31 or fewer, 16 at a time (vpmovdw), under a mask
      const __mmask16 m = n - k >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (n - k)) - 1u);
      _mm256_mask_storeu_epi16(yr + k, m, _mm512_cvtepi32_epi16(codes16<kZeroNegative>(_mm512_maskz_loadu_ps(m, xr + k), c)));
    }
  }
}

/// SignKernels::codes_s16: codes16's int32 codes packed to int16, 32 a step (vpackssdw, vpermq).
void codes_s16_avx512(const float* x, std::int64_t rows, std::int64_t n, std::int16_t* y, std::int64_t y_rs,
                      float center, bool zero_negative) {
  if (zero_negative) {
    codes_rows_s16<true>(x, rows, n, y, y_rs, center);
  } else {
    codes_rows_s16<false>(x, rows, n, y, y_rs, center);
  }
}

void binary_codes_avx512(const BinarizeArgs& a, std::int64_t begin, std::int64_t end) {
  if (a.dtype != DType::kFloat32) return detail::binary_codes_impl(a, begin, end);
  const auto* x = static_cast<const float*>(a.input);
  auto* y = static_cast<std::int8_t*>(a.output);
  detail::for_each_run(begin, end, a.inner, a.channels, [&](std::int64_t b, std::int64_t e, std::int64_t ch) {
    const float center = a.center ? a.center[ch] : 0.f;
    if (a.zero_negative) {
      code_run_f32<true>(x + b, y + b, e - b, center);
    } else {
      code_run_f32<false>(x + b, y + b, e - b, center);
    }
  });
}

}  // namespace

const SignKernels* sign_avx512() {
  static const SignKernels* k = [] () -> const SignKernels* {
    const SignKernels* avx2 = sign_avx2();
    if (avx2 == nullptr) return nullptr;
    static SignKernels t = *avx2;
    t.binary_codes = &binary_codes_avx512;
    t.codes_s16 = &codes_s16_avx512;
    return &t;
  }();
  return k;
}

}  // namespace qatkit::kernels::cpu

#else

namespace qatkit::kernels::cpu {
const SignKernels* sign_avx512() { return nullptr; }
}  // namespace qatkit::kernels::cpu

#endif
