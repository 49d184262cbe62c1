// W4A8 convs directly on their padded planes (QConvW4Args) on AVX-512 VNNI: output pixels in the
// vector lanes, no patch rows (w4conv_tiles.h: the tiles).
#include "avx512_common.h"

#ifdef QATKIT_AVX512_KERNELS
#include "../../common/thread_scratch.h"

namespace qatkit::kernels::cpu::avx512 {
namespace {

#include "w4conv_tiles.h"

// vpdpbusd of a tile's dwords (unsigned: the stored code + 128) and a weight row's four codes,
// broadcast, sums a group's products of 16 pixels in 16 lanes; the group's init (QConvW4Args) takes
// out the 128 and the zero point, so each lane's acc[g] is finish_w4's integer, and the float64
// combination is the same exact products summed in group order.

// A tile's four quarters as one vector, + 128.
inline void store4_512(std::uint8_t* dst, __m128i a, __m128i b, __m128i c, __m128i d) {
  __m512i v = _mm512_castsi128_si512(a);
  v = _mm512_inserti32x4(v, b, 1);
  v = _mm512_inserti32x4(v, c, 2);
  v = _mm512_inserti32x4(v, d, 3);
  _mm512_storeu_si512(dst, _mm512_xor_si512(v, _mm512_set1_epi8(static_cast<char>(0x80))));
}

// TL tiles (A, tile_bytes apart) x NB output channels from n: the 16 lanes' outputs before the bias.
template <int TL, int NB, int GQ>
inline void tiles_outputs(const QConvW4Args& g, const std::uint8_t* A, std::int64_t tile_bytes, std::int64_t n,
                          __m512 out[TL][NB]) {
  const std::int64_t G = g.K / g.group, gq = GQ > 0 ? GQ : g.group / 4;
  const std::int8_t* wr[NB];
  #pragma GCC unroll 8
  for (int j = 0; j < NB; ++j) wr[j] = g.w + (n + j) * g.K;
  __m512d tlo[TL][NB], thi[TL][NB];
  #pragma GCC unroll 8
  for (int i = 0; i < TL; ++i) {
    #pragma GCC unroll 8
    for (int j = 0; j < NB; ++j) tlo[i][j] = thi[i][j] = _mm512_setzero_pd();
  }
  for (std::int64_t gi = 0; gi < G; ++gi) {
    __m512i acc[TL][NB];
    #pragma GCC unroll 8
    for (int j = 0; j < NB; ++j) {
      const __m512i init = _mm512_set1_epi32(g.init[(n + j) * G + gi]);
      #pragma GCC unroll 8
      for (int i = 0; i < TL; ++i) acc[i][j] = init;
    }
    const std::uint8_t* ag = A + gi * gq * 64;
    const std::int64_t wg = gi * gq * 4;
    const auto quad = [&](std::int64_t u) {
      __m512i a[TL];
      #pragma GCC unroll 8
      for (int i = 0; i < TL; ++i) a[i] = _mm512_loadu_si512(ag + i * tile_bytes + u * 64);
      #pragma GCC unroll 8
      for (int j = 0; j < NB; ++j) {
        std::int32_t wv;
        std::memcpy(&wv, wr[j] + wg + 4 * u, 4);
        const __m512i wb = _mm512_set1_epi32(wv);
        #pragma GCC unroll 8
        for (int i = 0; i < TL; ++i) acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], a[i], wb);
      }
    };
    if constexpr (GQ > 0) {
      #pragma GCC unroll 16
      for (int u = 0; u < GQ; ++u) quad(u);
    } else {
      for (std::int64_t u = 0; u < gq; ++u) quad(u);
    }
    #pragma GCC unroll 8
    for (int j = 0; j < NB; ++j) {  // exact products, summed in group order (finish_w4)
      const __m512d s = _mm512_set1_pd(static_cast<double>(g.gscale[(n + j) * G + gi]));
      #pragma GCC unroll 8
      for (int i = 0; i < TL; ++i) {
        tlo[i][j] = _mm512_fmadd_pd(_mm512_cvtepi32_pd(_mm512_castsi512_si256(acc[i][j])), s, tlo[i][j]);
        thi[i][j] = _mm512_fmadd_pd(_mm512_cvtepi32_pd(_mm512_extracti64x4_epi64(acc[i][j], 1)), s, thi[i][j]);
      }
    }
  }
  const __m512d as = _mm512_set1_pd(g.act_scale);
  #pragma GCC unroll 8
  for (int i = 0; i < TL; ++i) {
    #pragma GCC unroll 8
    for (int j = 0; j < NB; ++j) {
      const __m256 lo = _mm512_cvtpd_ps(_mm512_mul_pd(tlo[i][j], as)), hi = _mm512_cvtpd_ps(_mm512_mul_pd(thi[i][j], as));
      out[i][j] = _mm512_castpd_ps(
          _mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_castps_pd(lo)), _mm256_castps_pd(hi), 1));
    }
  }
}

// One tile's outputs of NB channels from n (+ bias) into y.
template <int NB>
inline void store_tile(const QConvW4Args& g, const Tile& t, std::int64_t n, __m512 v[NB]) {
  #pragma GCC unroll 8
  for (int j = 0; j < NB; ++j) {
    if (g.bias) v[j] = _mm512_add_ps(v[j], _mm512_set1_ps(g.bias[n + j]));
  }
  float* y = g.y + t.yo[0] + n * g.y_cs;
  if (t.simple && g.y_ps == 1) {  // NCHW: 16 consecutive pixels of each channel's plane
    #pragma GCC unroll 8
    for (int j = 0; j < NB; ++j) _mm512_storeu_ps(y + j * g.y_cs, v[j]);
    return;
  }
  if constexpr (NB == 4) {
    if (t.simple && g.y_cs == 1) {  // NHWC: pixel p's 4 channels, one 16-byte store (4 x 4 transposes)
      const __m512 t0 = _mm512_unpacklo_ps(v[0], v[1]), t1 = _mm512_unpackhi_ps(v[0], v[1]);
      const __m512 t2 = _mm512_unpacklo_ps(v[2], v[3]), t3 = _mm512_unpackhi_ps(v[2], v[3]);
      const __m512 r[4] = {
          _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t0), _mm512_castps_pd(t2))),  // pixels 4L
          _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t0), _mm512_castps_pd(t2))),  // 4L + 1
          _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t1), _mm512_castps_pd(t3))),  // 4L + 2
          _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t1), _mm512_castps_pd(t3)))}; // 4L + 3
      const std::int64_t ps = g.y_ps;
      #pragma GCC unroll 4
      for (int e = 0; e < 4; ++e) {
        _mm_storeu_ps(y + e * ps, _mm512_castps512_ps128(r[e]));
        _mm_storeu_ps(y + (4 + e) * ps, _mm512_extractf32x4_ps(r[e], 1));
        _mm_storeu_ps(y + (8 + e) * ps, _mm512_extractf32x4_ps(r[e], 2));
        _mm_storeu_ps(y + (12 + e) * ps, _mm512_extractf32x4_ps(r[e], 3));
      }
      return;
    }
  }
  alignas(64) float buf[16];
  for (int j = 0; j < NB; ++j) {
    _mm512_store_ps(buf, v[j]);
    for (int p = 0; p < t.nv; ++p) g.y[t.yo[p] + (n + j) * g.y_cs] = buf[p];
  }
}

// TL tiles from tile t against NB channels from n, stored.
template <int TL, int NB>
inline void tiles_pass(const QConvW4Args& g, const std::uint8_t* A, const Tile* tiles, std::int64_t t, std::int64_t n) {
  const std::int64_t tile_bytes = g.K * 16;
  __m512 out[TL][NB];
  if (g.group == 32) {  // groups of 32: the quads of a group unrolled
    tiles_outputs<TL, NB, 8>(g, A + t * tile_bytes, tile_bytes, n, out);
  } else {
    tiles_outputs<TL, NB, 0>(g, A + t * tile_bytes, tile_bytes, n, out);
  }
  #pragma GCC unroll 4
  for (int i = 0; i < TL; ++i) store_tile<NB>(g, tiles[t + i], n, out[i]);
}

#ifndef CW4_TL
#define CW4_TL 2
#endif
#ifndef CW4_NB
#define CW4_NB 4
#endif
template <int NB>
void channels_pass(const QConvW4Args& g, const std::uint8_t* A, const Tile* tiles, std::int64_t nt, std::int64_t n) {
  std::int64_t t = 0;
  for (; t + CW4_TL <= nt; t += CW4_TL) tiles_pass<CW4_TL, NB>(g, A, tiles, t, n);
  for (; t < nt; ++t) tiles_pass<1, NB>(g, A, tiles, t, n);
}

void conv_w4(const QConvW4Args& g, std::int64_t m_begin, std::int64_t m_end) {
  conv_w4_chunks(g, m_begin, m_end, store4_512, [&](const std::uint8_t* A, const Tile* tiles, std::int64_t nt) {
    std::int64_t n = 0;
    for (; n + CW4_NB <= g.N; n += CW4_NB) channels_pass<CW4_NB>(g, A, tiles, nt, n);
    for (; n < g.N; ++n) channels_pass<1>(g, A, tiles, nt, n);
  });
}

}  // namespace

void add_w4conv(QGemmKernels& t) {
  t.conv_w4 = &conv_w4;
  t.conv_w4_max_k = 0;  // every K (the table starts as a copy of the AVX2 one, which bounds it)
}

}  // namespace qatkit::kernels::cpu::avx512
#endif
