// The integer kernels' activation quantization on AVX-512 (quantize_rows, quantize_s16): the AVX2
// table's Codes8 at 16 lanes, the tails under masks (no scalar loop). quantize_code's bits
// (fake_quant_scalar.h): round-half-even of x * inv_s, clamped to [qmin - z, qmax - z], NaN as z;
// a NaN product needs a NaN x (act_scale is a normal float32, so inv_s is finite), which the blend
// catches, so every lane equals the scalar form and the AVX2 table's codes.
#include "avx512_common.h"

#ifdef QATKIT_AVX512_KERNELS
namespace qatkit::kernels::cpu::avx512 {
namespace {

struct Codes16 {
  __m512 inv, lo, hi;
  __m512i off;

  explicit Codes16(const ActQuantArgs& q)
      : inv(_mm512_set1_ps(q.inv_scale)), lo(_mm512_set1_ps(static_cast<float>(q.quant_min - q.zero_point))),
        hi(_mm512_set1_ps(static_cast<float>(q.quant_max - q.zero_point))),
        off(_mm512_set1_epi32(q.zero_point - q.shift)) {}

  // v's codes (int32 lanes); nan collects the lanes where v is NaN
  __m512i operator()(__m512 v, __mmask16& nan) const {
    const __mmask16 isnan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    nan = static_cast<__mmask16>(nan | isnan);
    __m512 r = _mm512_roundscale_ps(_mm512_mul_ps(v, inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    r = _mm512_min_ps(_mm512_max_ps(r, lo), hi);
    r = _mm512_mask_blend_ps(isnan, r, _mm512_setzero_ps());  // NaN -> code z
    return _mm512_add_epi32(_mm512_cvtps_epi32(r), off);
  }
};

inline void report_nan(__mmask16 nan, const ActQuantArgs& q) {
  if (nan != 0 && q.nan_seen) __atomic_store_n(q.nan_seen, 1, __ATOMIC_RELAXED);
}

// 32 codes (int32 lanes, two vectors) as int16 in order, and 64 (four vectors) as int8: vpackssdw /
// vpacksswb (signed saturation, as vpmovsdw / vpmovsdb: the codes are within [-256, 255] anyway)
// interleave 128-bit lanes, which one vpermq puts back. The main loops run whole vectors with plain
// loads and one 64-byte store; 16-float steps under run-time masks (a masked load and a masked
// narrowing store each) ran a 38 MB channels-last pass at ~20 GB/s on Zen 5, where torch's own
// passes over it read ~55 GB/s (whole vectors: 2.7x faster; plain vpmovsdw stores measured alike, so
// the masks, not the narrowing, cost it; docs/benchmarks.md, forty-sixth session).
inline __m512i pack32_s16(__m512i c0, __m512i c1) {
  return _mm512_permutexvar_epi64(_mm512_setr_epi64(0, 2, 4, 6, 1, 3, 5, 7), _mm512_packs_epi32(c0, c1));
}
inline __m512i pack64_s8(__m512i c0, __m512i c1, __m512i c2, __m512i c3) {
  const __m512i b = _mm512_packs_epi16(_mm512_packs_epi32(c0, c1), _mm512_packs_epi32(c2, c3));
  // dword j of 128-bit lane l holds codes 16 j + 4 l .. + 3: dword order 0, 4, 8, 12, 1, 5, ...
  return _mm512_permutexvar_epi32(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), b);
}

// Rows [begin, end) of K floats (with q.divisor, x / d first: IEEE division, row by row), as int8.
void quantize_rows(const float* x, std::int8_t* a, std::int64_t K, const ActQuantArgs& q, std::int64_t begin,
                   std::int64_t end) {
  const Codes16 codes(q);
  __mmask16 nan = 0;
  // the floats [i, i + len) (len <= 16), divided by d[0 .. len) when d is set, into a[i ..)
  const auto step = [&](const float* xs, const float* d, std::int8_t* out, std::int64_t len) {
    const __mmask16 m = len == 16 ? __mmask16{0xFFFF} : static_cast<__mmask16>((1u << len) - 1);
    __m512 v = _mm512_maskz_loadu_ps(m, xs);
    if (d) v = _mm512_div_ps(v, _mm512_mask_loadu_ps(_mm512_set1_ps(1.f), m, d));
    _mm_mask_storeu_epi8(out, m, _mm512_cvtsepi32_epi8(codes(v, nan)));
  };
  if (q.divisor) {
    const float* d = q.divisor;
    const auto div = [&](const float* xs, std::int64_t k) {
      return codes(_mm512_div_ps(_mm512_loadu_ps(xs + k), _mm512_loadu_ps(d + k)), nan);
    };
    for (std::int64_t r = begin; r < end; ++r) {
      const float* xr = x + r * K;
      std::int8_t* ar = a + r * K;
      std::int64_t k = 0;
      for (; k + 64 <= K; k += 64)
        _mm512_storeu_si512(ar + k, pack64_s8(div(xr, k), div(xr, k + 16), div(xr, k + 32), div(xr, k + 48)));
      for (; k < K; k += 16) step(xr + k, d + k, ar + k, std::min<std::int64_t>(16, K - k));
    }
  } else {
    const std::int64_t n1 = end * K;
    std::int64_t i = begin * K;
    for (; i + 64 <= n1; i += 64) {  // whole vectors: 64 floats, one 64-byte store
      const __m512i c0 = codes(_mm512_loadu_ps(x + i), nan), c1 = codes(_mm512_loadu_ps(x + i + 16), nan);
      const __m512i c2 = codes(_mm512_loadu_ps(x + i + 32), nan), c3 = codes(_mm512_loadu_ps(x + i + 48), nan);
      _mm512_storeu_si512(a + i, pack64_s8(c0, c1, c2, c3));
    }
    for (; i < n1; i += 16) step(x + i, nullptr, a + i, std::min<std::int64_t>(16, n1 - i));
  }
  report_nan(nan, q);
}

// quantize_rows' codes of rows of n floats (row r at x + r * n), stored as int16 at a + r * a_rs.
// 32 floats a step, one 64-byte store; a row's last step (n not a multiple of 32: a depthwise plane's
// 28-float rows) loads whole vectors that read on into the next rows where the rows continue (only
// the last row's loads are masked), counts NaNs only in its own lanes and stores under a mask. One
// call per plane: per-row calls with two masked 16-float steps each were 28 % of an 8 x 256 x 28 x
// 28 NCHW depthwise conv's time on Zen 5 (docs/benchmarks.md, forty-eighth session).
void quantize_s16(const float* x, std::int64_t rows, std::int64_t n, std::int16_t* a, std::int64_t a_rs,
                  const ActQuantArgs& q) {
  const Codes16 codes(q);
  __mmask16 nan = 0;
  const std::int64_t total = rows * n;
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * n;
    std::int16_t* ar = a + r * a_rs;
    std::int64_t i = 0;
    for (; i + 32 <= n; i += 32) {  // whole vectors: 32 floats, one 64-byte store
      const __m512i c0 = codes(_mm512_loadu_ps(xr + i), nan), c1 = codes(_mm512_loadu_ps(xr + i + 16), nan);
      _mm512_storeu_si512(ar + i, pack32_s16(c0, c1));
    }
    if (i < n) {  // the row's last len < 32 floats
      const std::int64_t len = n - i, ahead = total - (r * n + i);  // floats readable from xr + i
      const __mmask32 keep = static_cast<__mmask32>((std::uint64_t{1} << len) - 1);
      const __mmask16 k0 = static_cast<__mmask16>(keep), k1 = static_cast<__mmask16>(keep >> 16);
      __m512 v0, v1;
      if (ahead >= 32) {
        v0 = _mm512_loadu_ps(xr + i);
        v1 = _mm512_loadu_ps(xr + i + 16);
      } else {
        v0 = _mm512_maskz_loadu_ps(k0, xr + i);
        v1 = _mm512_maskz_loadu_ps(k1, xr + i + 16);
      }
      __mmask16 n0 = 0, n1 = 0;
      const __m512i c0 = codes(v0, n0), c1 = codes(v1, n1);
      nan = static_cast<__mmask16>(nan | (n0 & k0) | (n1 & k1));
      _mm512_mask_storeu_epi16(ar + i, keep, pack32_s16(c0, c1));
    }
  }
  report_nan(nan, q);
}

// QGemmKernels::clamp_f32: min(hi, max(lo, y)), y second (vmaxps / vminps return it for a NaN and
// for two zeros)
void clamp_f32(float* y, std::int64_t n, float lo, float hi) {
  const __m512 l = _mm512_set1_ps(lo), h = _mm512_set1_ps(hi);
  std::int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    for (int j = 0; j < 4; ++j) {
      _mm512_storeu_ps(y + i + 16 * j, _mm512_min_ps(h, _mm512_max_ps(l, _mm512_loadu_ps(y + i + 16 * j))));
    }
  }
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, _mm512_min_ps(h, _mm512_max_ps(l, _mm512_loadu_ps(y + i))));
  if (i < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
    _mm512_mask_storeu_ps(y + i, m, _mm512_min_ps(h, _mm512_max_ps(l, _mm512_maskz_loadu_ps(m, y + i))));
  }
}

}  // namespace

void add_quantize(QGemmKernels& t) {
  t.quantize_rows = &quantize_rows;
  t.quantize_s16 = &quantize_s16;
  t.clamp_f32 = &clamp_f32;
}

}  // namespace qatkit::kernels::cpu::avx512
#endif
