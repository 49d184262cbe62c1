// Integer GEMM compiled with -mavx2: int8 x int8 products through vpmaddubsw with the sign trick
// (|a| as the unsigned operand, sign(a) moved onto the weight, which the narrow range [-127, 127]
// keeps from overflowing: |a| * |w| <= 128 * 127, a pair sum <= 32512 < 2^15, so the int16 sums
// never saturate), vpmaddwd to int32. Exact integer sums: the same bits as the baseline.
#include "qgemm_cpu.h"

#if defined(__AVX2__)
#include <immintrin.h>

#include "loops.h"

namespace qatkit::kernels::cpu {
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

// Four weight rows against one activation row: the activation chunk is loaded once per four dots.
void gemm_s8(const QGemmArgs& g, std::int64_t n_begin, std::int64_t n_end) {
  const std::int64_t K = g.K, K32 = K & ~std::int64_t{31};
  const __m256i ones = _mm256_set1_epi16(1);
  for (std::int64_t m = 0; m < g.M; ++m) {
    const std::int8_t* a = g.a + m * K;
    float* y = g.y + m * g.N;
    std::int64_t n = n_begin;
    for (; n + 4 <= n_end; n += 4) {
      const std::int8_t* w0 = g.w + n * K;
      __m256i c0 = _mm256_setzero_si256(), c1 = c0, c2 = c0, c3 = c0;
      for (std::int64_t k = 0; k < K32; k += 32) {
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
        y[n + j] = detail::requantize(acc, g, n + j);
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
      y[n] = detail::requantize(acc, g, n);
    }
  }
}

// Ternary: per 128-weight block, 32 bytes hold four 32-code vectors (shift, mask 3); the codes
// {0, 1, 2} are vpmaddubsw's unsigned operand and the activations its signed one: pair sums
// <= 2 * 2 * 128 never saturate. Four weight rows per activation row share the activation loads.
void gemm_t2(const QGemmT2Args& g, std::int64_t n_begin, std::int64_t n_end) {
  const std::int64_t KB = g.K_pad / 4;  // bytes per weight row
  const __m256i ones = _mm256_set1_epi16(1), mask = _mm256_set1_epi8(3);
  for (std::int64_t m = 0; m < g.M; ++m) {
    const std::int8_t* a = g.a + m * g.K_pad;
    float* y = g.y + m * g.N;
    std::int64_t n = n_begin;
    for (; n + 4 <= n_end; n += 4) {
      const std::uint8_t* w0 = g.w + n * KB;
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
      for (int r = 0; r < 4; ++r) y[n + r] = detail::finish_t2(hsum(c[r]), g, m, n + r);
    }
    for (; n < n_end; ++n) y[n] = detail::finish_t2(detail::dot_t2(a, g.w + n * KB, g.K_pad), g, m, n);
  }
}

}  // namespace

const QGemmKernels* qgemm_avx2() {
  static const QGemmKernels k{&detail::quantize_rows, &gemm_s8, &gemm_t2};
  return &k;
}

}  // namespace qatkit::kernels::cpu

#else

namespace qatkit::kernels::cpu {
const QGemmKernels* qgemm_avx2() { return nullptr; }
}  // namespace qatkit::kernels::cpu

#endif
