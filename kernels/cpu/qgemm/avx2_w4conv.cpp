// W4A8 convs directly on their padded planes (QConvDirectArgs) on AVX2: output pixels in the vector
// lanes, no patch rows (conv_tiles.h: the tiles).
#include "qgemm_cpu.h"

#if defined(__AVX2__)
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "../../common/thread_scratch.h"

namespace qatkit::kernels::cpu::avx2 {
namespace {

#include "conv_tiles.h"

// A tile's 16 pixels as two 8-lane halves: vpmaddubsw of a half's dwords (unsigned: the stored code
// + 128, at most 255) and a weight row's four codes in [-8, 7], broadcast, gives each pixel two pair
// sums of |.| <= 2 * 255 * 8 = 4080 (no saturation); a chunk of 32 codes adds its eight quads' pairs
// in int16 (|.| <= 32640 < 2^15), vpmaddwd against ones then gives each lane's int32 chunk sum, and
// each group adds its chunks and its init (QConvDirectArgs): finish_w4's integer per lane. The float64
// sums live in a stack array (16 ymm registers hold the int16 sums of 2 halves x 4 channels).

inline void store4_256(std::uint8_t* dst, __m128i a, __m128i b, __m128i c, __m128i d) {
  const __m256i m = _mm256_set1_epi8(static_cast<char>(0x80));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), _mm256_xor_si256(_mm256_set_m128i(b, a), m));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + 32), _mm256_xor_si256(_mm256_set_m128i(d, c), m));
}

// One tile (A) x NB output channels from n: each half's 8 outputs before the bias.
template <int NB, int GC>
inline void tile_outputs(const QConvDirectArgs& g, const std::uint8_t* A, std::int64_t n, __m256 out[2][NB]) {
  const std::int64_t G = g.K / g.group, gc = GC > 0 ? GC : g.group / 32;
  const __m256i ones = _mm256_set1_epi16(1);
  const std::int8_t* wr[NB];
  #pragma GCC unroll 8
  for (int j = 0; j < NB; ++j) wr[j] = g.w + (n + j) * g.K;
  alignas(32) double t[2][NB][8] = {};
  for (std::int64_t gi = 0; gi < G; ++gi) {
    __m256i acc[2][NB];
    #pragma GCC unroll 8
    for (int j = 0; j < NB; ++j) acc[0][j] = acc[1][j] = _mm256_set1_epi32(g.init[(n + j) * G + gi]);
    for (std::int64_t c = 0; c < gc; ++c) {  // chunks of 32 codes: eight quads
      const std::int64_t q0 = (gi * gc + c) * 8;
      __m256i s16[2][NB];
      #pragma GCC unroll 8
      for (int u = 0; u < 8; ++u) {
        const __m256i a0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(A + (q0 + u) * 64));
        const __m256i a1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(A + (q0 + u) * 64 + 32));
        #pragma GCC unroll 8
        for (int j = 0; j < NB; ++j) {
          std::int32_t wv;
          std::memcpy(&wv, wr[j] + 4 * (q0 + u), 4);
          const __m256i wb = _mm256_set1_epi32(wv);
          const __m256i p0 = _mm256_maddubs_epi16(a0, wb), p1 = _mm256_maddubs_epi16(a1, wb);
          s16[0][j] = u == 0 ? p0 : _mm256_add_epi16(s16[0][j], p0);
          s16[1][j] = u == 0 ? p1 : _mm256_add_epi16(s16[1][j], p1);
        }
      }
      #pragma GCC unroll 8
      for (int j = 0; j < NB; ++j) {
        acc[0][j] = _mm256_add_epi32(acc[0][j], _mm256_madd_epi16(s16[0][j], ones));
        acc[1][j] = _mm256_add_epi32(acc[1][j], _mm256_madd_epi16(s16[1][j], ones));
      }
    }
    #pragma GCC unroll 8
    for (int j = 0; j < NB; ++j) {  // exact products, summed in group order (finish_w4)
      const __m256d s = _mm256_set1_pd(static_cast<double>(g.gscale[(n + j) * G + gi]));
      #pragma GCC unroll 2
      for (int h = 0; h < 2; ++h) {
        double* th = t[h][j];
        _mm256_store_pd(th, _mm256_fmadd_pd(_mm256_cvtepi32_pd(_mm256_castsi256_si128(acc[h][j])), s, _mm256_load_pd(th)));
        _mm256_store_pd(th + 4, _mm256_fmadd_pd(_mm256_cvtepi32_pd(_mm256_extracti128_si256(acc[h][j], 1)), s,
                                                _mm256_load_pd(th + 4)));
      }
    }
  }
  const __m256d as = _mm256_set1_pd(g.act_scale);
  #pragma GCC unroll 8
  for (int j = 0; j < NB; ++j) {
    #pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {
      out[h][j] = _mm256_set_m128(_mm256_cvtpd_ps(_mm256_mul_pd(_mm256_load_pd(t[h][j] + 4), as)),
                                  _mm256_cvtpd_ps(_mm256_mul_pd(_mm256_load_pd(t[h][j]), as)));
    }
  }
}

// One tile's outputs of NB channels from n (+ bias) into y.
template <int NB>
inline void store_tile(const QConvDirectArgs& g, const Tile& t, std::int64_t n, __m256 v[2][NB]) {
  #pragma GCC unroll 8
  for (int j = 0; j < NB; ++j) {
    if (g.bias) {
      const __m256 b = _mm256_set1_ps(g.bias[n + j]);
      v[0][j] = _mm256_add_ps(v[0][j], b);
      v[1][j] = _mm256_add_ps(v[1][j], b);
    }
  }
  float* y = g.y + t.yo[0] + n * g.y_cs;
  if (t.simple && g.y_ps == 1) {  // NCHW: 16 consecutive pixels of each channel's plane
    #pragma GCC unroll 8
    for (int j = 0; j < NB; ++j) {
      _mm256_storeu_ps(y + j * g.y_cs, v[0][j]);
      _mm256_storeu_ps(y + j * g.y_cs + 8, v[1][j]);
    }
    return;
  }
  if constexpr (NB == 4) {
    if (t.simple && g.y_cs == 1) {  // NHWC: pixel p's 4 channels, one 16-byte store (4 x 4 transposes)
      const std::int64_t ps = g.y_ps;
      #pragma GCC unroll 2
      for (int h = 0; h < 2; ++h) {
        const __m256 t0 = _mm256_unpacklo_ps(v[h][0], v[h][1]), t1 = _mm256_unpackhi_ps(v[h][0], v[h][1]);
        const __m256 t2 = _mm256_unpacklo_ps(v[h][2], v[h][3]), t3 = _mm256_unpackhi_ps(v[h][2], v[h][3]);
        const __m256 r[4] = {
            _mm256_castpd_ps(_mm256_unpacklo_pd(_mm256_castps_pd(t0), _mm256_castps_pd(t2))),  // pixels 4L
            _mm256_castpd_ps(_mm256_unpackhi_pd(_mm256_castps_pd(t0), _mm256_castps_pd(t2))),  // 4L + 1
            _mm256_castpd_ps(_mm256_unpacklo_pd(_mm256_castps_pd(t1), _mm256_castps_pd(t3))),  // 4L + 2
            _mm256_castpd_ps(_mm256_unpackhi_pd(_mm256_castps_pd(t1), _mm256_castps_pd(t3)))}; // 4L + 3
        float* yh = y + 8 * h * ps;
        #pragma GCC unroll 4
        for (int e = 0; e < 4; ++e) {
          _mm_storeu_ps(yh + e * ps, _mm256_castps256_ps128(r[e]));
          _mm_storeu_ps(yh + (4 + e) * ps, _mm256_extractf128_ps(r[e], 1));
        }
      }
      return;
    }
  }
  alignas(32) float buf[16];
  for (int j = 0; j < NB; ++j) {
    _mm256_store_ps(buf, v[0][j]);
    _mm256_store_ps(buf + 8, v[1][j]);
    for (int p = 0; p < t.nv; ++p) g.y[t.yo[p] + (n + j) * g.y_cs] = buf[p];
  }
}

template <int NB>
void channels_pass(const QConvDirectArgs& g, const std::uint8_t* A, const Tile* tiles, std::int64_t nt, std::int64_t n) {
  const std::int64_t tile_bytes = g.K * 16;
  for (std::int64_t t = 0; t < nt; ++t) {
    __m256 out[2][NB];
    if (g.group == 32) {  // one chunk per group: its loop gone
      tile_outputs<NB, 1>(g, A + t * tile_bytes, n, out);
    } else {
      tile_outputs<NB, 0>(g, A + t * tile_bytes, n, out);
    }
    store_tile<NB>(g, tiles[t], n, out);
  }
}

}  // namespace

void conv_w4(const QConvDirectArgs& g, std::int64_t m_begin, std::int64_t m_end) {
  conv_tiles_chunks(g, m_begin, m_end, store4_256, [&](const std::uint8_t* A, const Tile* tiles, std::int64_t nt) {
    std::int64_t n = 0;
    for (; n + 4 <= g.N; n += 4) channels_pass<4>(g, A, tiles, nt, n);
    for (; n < g.N; ++n) channels_pass<1>(g, A, tiles, nt, n);
  });
}

}  // namespace qatkit::kernels::cpu::avx2
#endif
