// W4A8 convs directly on their padded planes (QConvDirectArgs) on AVX-512 VNNI: output pixels in the
// vector lanes, no patch rows (conv_tiles.h: the tiles).
#include "avx512_common.h"

#ifdef QATKIT_AVX512_KERNELS
#include "../../common/thread_scratch.h"

namespace qatkit::kernels::cpu::avx512 {
namespace {

#include "conv_tiles.h"

// vpdpbusd of a tile's dwords (unsigned: the stored code + 128) and a weight row's four codes,
// broadcast, sums a group's products of 16 pixels in 16 lanes; the group's init (QConvDirectArgs) takes
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

// One quad of TL tiles (the quad's dwords at a + i * tile_bytes) against NB weight rows' four codes
// at wr[j] + wo, broadcast: acc[i][j] += their products, pixel by pixel.
template <int TL, int NB>
inline void dpbusd_quad(__m512i acc[TL][NB], const std::uint8_t* a, std::int64_t tile_bytes,
                        const std::int8_t* const wr[NB], std::int64_t wo) {
  __m512i v[TL];
  #pragma GCC unroll 8
  for (int i = 0; i < TL; ++i) v[i] = _mm512_loadu_si512(a + i * tile_bytes);
  #pragma GCC unroll 8
  for (int j = 0; j < NB; ++j) {
    std::int32_t four;
    std::memcpy(&four, wr[j] + wo, 4);
    const __m512i b = _mm512_set1_epi32(four);
    #pragma GCC unroll 8
    for (int i = 0; i < TL; ++i) acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], v[i], b);
  }
}

// TL tiles (A, tile_bytes apart) x NB output channels from n: the 16 lanes' outputs before the bias.
template <int TL, int NB, int GQ>
inline void tiles_outputs(const QConvDirectArgs& g, const std::uint8_t* A, std::int64_t tile_bytes, std::int64_t n,
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
    const auto quad = [&](std::int64_t u) { dpbusd_quad<TL, NB>(acc, ag + u * 64, tile_bytes, wr, wg + 4 * u); };
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
inline void store_tile(const QConvDirectArgs& g, const Tile& t, std::int64_t n, __m512 v[NB]) {
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
inline void tiles_pass(const QConvDirectArgs& g, const std::uint8_t* A, const Tile* tiles, std::int64_t t, std::int64_t n) {
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
void channels_pass(const QConvDirectArgs& g, const std::uint8_t* A, const Tile* tiles, std::int64_t nt, std::int64_t n) {
  std::int64_t t = 0;
  for (; t + CW4_TL <= nt; t += CW4_TL) tiles_pass<CW4_TL, NB>(g, A, tiles, t, n);
  for (; t < nt; ++t) tiles_pass<1, NB>(g, A, tiles, t, n);
}

// conv_s8: TL tiles (A, tile_bytes apart) x NB output channels from n, int32 sums over every quad
// (no groups), then fp32(acc) * out_scale: the 16 lanes' outputs before the bias.
template <int TL, int NB>
inline void s8_tiles_outputs(const QConvDirectArgs& g, const std::uint8_t* A, std::int64_t tile_bytes, std::int64_t n,
                             __m512 out[TL][NB]) {
  const std::int64_t quads = g.K / 4;
  const std::int8_t* wr[NB];
  __m512i acc[TL][NB];
  #pragma GCC unroll 8
  for (int j = 0; j < NB; ++j) {
    wr[j] = g.w + (n + j) * g.K;
    const __m512i init = _mm512_set1_epi32(g.init[n + j]);
    #pragma GCC unroll 8
    for (int i = 0; i < TL; ++i) acc[i][j] = init;
  }
  #pragma GCC unroll 4
  for (std::int64_t q = 0; q < quads; ++q) dpbusd_quad<TL, NB>(acc, A + q * 64, tile_bytes, wr, 4 * q);
  #pragma GCC unroll 8
  for (int j = 0; j < NB; ++j) {  // the one requantization: int32 -> float32, times the scale
    const __m512 sc = _mm512_set1_ps(g.out_scale[n + j]);
    #pragma GCC unroll 8
    for (int i = 0; i < TL; ++i) out[i][j] = _mm512_mul_ps(_mm512_cvtepi32_ps(acc[i][j]), sc);
  }
}

template <int TL, int NB>
inline void s8_tiles_pass(const QConvDirectArgs& g, const std::uint8_t* A, const Tile* tiles, std::int64_t t,
                          std::int64_t n) {
  const std::int64_t tile_bytes = g.K * 16;
  __m512 out[TL][NB];
  s8_tiles_outputs<TL, NB>(g, A + t * tile_bytes, tile_bytes, n, out);
  #pragma GCC unroll 4
  for (int i = 0; i < TL; ++i) store_tile<NB>(g, tiles[t + i], n, out[i]);
}

#ifndef CS8_TL  // conv_s8's tile shape
#define CS8_TL 4
#endif
template <int NB>
void s8_channels_pass(const QConvDirectArgs& g, const std::uint8_t* A, const Tile* tiles, std::int64_t nt,
                      std::int64_t n) {
  std::int64_t t = 0;
  for (; t + CS8_TL <= nt; t += CS8_TL) s8_tiles_pass<CS8_TL, NB>(g, A, tiles, t, n);
  for (; t < nt; ++t) s8_tiles_pass<1, NB>(g, A, tiles, t, n);
}

void conv_s8(const QConvDirectArgs& g, std::int64_t m_begin, std::int64_t m_end) {
  conv_tiles_chunks(g, m_begin, m_end, store4_512, [&](const std::uint8_t* A, const Tile* tiles, std::int64_t nt) {
    std::int64_t n = 0;
    for (; n + 4 <= g.N; n += 4) s8_channels_pass<4>(g, A, tiles, nt, n);
    for (; n < g.N; ++n) s8_channels_pass<1>(g, A, tiles, nt, n);
  });
}

void conv_w4(const QConvDirectArgs& g, std::int64_t m_begin, std::int64_t m_end) {
  conv_tiles_chunks(g, m_begin, m_end, store4_512, [&](const std::uint8_t* A, const Tile* tiles, std::int64_t nt) {
    std::int64_t n = 0;
    for (; n + CW4_NB <= g.N; n += CW4_NB) channels_pass<CW4_NB>(g, A, tiles, nt, n);
    for (; n < g.N; ++n) channels_pass<1>(g, A, tiles, nt, n);
  });
}

}  // namespace

void add_dconv(QGemmKernels& t) {
  t.conv_w4 = &conv_w4;
  t.conv_w4_max_k = 0;  // every K (the table starts as a copy of the AVX2 one, which bounds it)
  // int8 convs direct up to K = 256: stems and narrow inputs. On Zen 5 (2 threads, against the patch
  // rows and the panel GEMM, docs/benchmarks.md, forty-seventh session): K = 27 (3 x 3 over 3
  // channels) 2.0-2.2x faster, 147 (7 x 7 over 3, stride 2) 1.9-2.0x, 144 1.2-1.4x, 216 1.2x; K =
  // 288 within the noise (0.75-0.94 against 0.78-0.98 ms), 576 0.9-1.0x, 2304-4608 0.85-0.95x: the
  // panel GEMM's 6 x 4 tiles of 16 channels run the larger ones faster than 4 tiles x 4 channels here.
  t.conv_s8 = &conv_s8;
  t.conv_s8_max_k = 256;
}

}  // namespace qatkit::kernels::cpu::avx512
#endif
