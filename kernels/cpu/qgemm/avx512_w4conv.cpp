// W4A8 convs directly on their padded planes (QConvW4Args) on AVX-512 VNNI: output pixels in the
// vector lanes, no patch rows.
#include "avx512_common.h"

#ifdef QATKIT_AVX512_KERNELS
#include "../../common/thread_scratch.h"

namespace qatkit::kernels::cpu::avx512 {
namespace {

// conv2d_w4a8's patch-row route built each pixel's K codes in PyTorch's (c, i, j) order (a group of K
// spans channels and taps in that order), one 8-byte copy per (c, i) run, then gemm_w4 on the rows
// and, for an NCHW output, a float transpose: on Zen 5 the copies were a quarter and the transpose a
// sixteenth of a 364 x 32 x 8 x 8 -> 64 conv's time. Here a tile holds 16 output pixels, one per
// 32-bit lane: dword (q, p) of the tile is pixel p's codes of taps 4q .. 4q + 3, read from the planes
// (where 16 pixels run along one output row at stride 1, 16 consecutive bytes per tap) and
// interleaved by byte unpacks, once per tile for every output channel. vpdpbusd of a tile's dwords
// (unsigned: the stored code + 128) and a weight row's four codes, broadcast, then sums a group's
// products of 16 pixels in 16 lanes; the group's init (QConvW4Args) takes out the 128 and the zero
// point, so each lane's acc[g] is finish_w4's integer, and the float64 combination is the same
// exact products summed in group order. Outputs go straight into the NCHW planes (or, for NHWC, 4
// channels of each pixel as one 16-byte store).

// Tiles of codes per chunk: every channel's pass re-reads the chunk, which stays in L2.
constexpr std::int64_t kChunkBytes = std::int64_t{384} << 10;

// Rows r0..r3 (16 pixels' codes of 4 consecutive taps) as 16 dwords (pixel p: its 4 codes), + 128.
inline __m512i interleave4(__m128i r0, __m128i r1, __m128i r2, __m128i r3) {
  const __m128i t0 = _mm_unpacklo_epi8(r0, r1), t1 = _mm_unpackhi_epi8(r0, r1);
  const __m128i t2 = _mm_unpacklo_epi8(r2, r3), t3 = _mm_unpackhi_epi8(r2, r3);
  __m512i v = _mm512_castsi128_si512(_mm_unpacklo_epi16(t0, t2));  // pixels 0-3
  v = _mm512_inserti32x4(v, _mm_unpackhi_epi16(t0, t2), 1);       // 4-7
  v = _mm512_inserti32x4(v, _mm_unpacklo_epi16(t1, t3), 2);       // 8-11
  v = _mm512_inserti32x4(v, _mm_unpackhi_epi16(t1, t3), 3);       // 12-15
  return _mm512_xor_si512(v, _mm512_set1_epi8(static_cast<char>(0x80)));
}

inline __m128i load16(const std::int8_t* p) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)); }

struct Tile {
  std::int64_t yo[16];  // lane p's output offset (channel 0)
  int nv = 0;           // valid lanes
  bool simple = false;  // 16 valid lanes, one image, consecutive pixels (yo[p] = yo[0] + p * y_ps)
};

// Every tap's 16 codes, row(o) for tap offset o, as the tile's dwords.
template <class Row>
inline void fill_quads(__m512i* out, std::int64_t quads, const std::int64_t* koff, const Row& row) {
  for (std::int64_t q = 0; q < quads; ++q) {
    const std::int64_t* o = koff + 4 * q;
    _mm512_storeu_si512(out + q, interleave4(row(o[0]), row(o[1]), row(o[2]), row(o[3])));
  }
}

inline __m128i load8(const std::int8_t* p) { return _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)); }

// The even bytes of a (pixels 0-7) then of b (8-15): 16 pixels at column stride 2.
inline __m128i even_bytes(__m128i a, __m128i b) {
  const __m128i m = _mm_set1_epi16(0x00FF);
  return _mm_packus_epi16(_mm_and_si128(a, m), _mm_and_si128(b, m));
}

// The tile of pixels [m0, m0 + nv) into A (K / 4 dwords of 16 lanes); lanes past nv repeat the last
// pixel (their outputs are not stored). vt: K * 16 + 16 bytes of scratch.
void build_tile(const QConvW4Args& g, std::int64_t m0, int nv, std::uint8_t* A, std::int8_t* vt, Tile& tile) {
  std::int64_t xo[16];
  for (int p = 0; p < 16; ++p) {
    const std::int64_t m = m0 + std::min(p, nv - 1), b = m / g.L, l = m % g.L;
    xo[p] = b * g.img + (l / g.wo) * g.row + (l % g.wo) * g.col;
    tile.yo[p] = b * g.y_img + l * g.y_ps;
  }
  tile.nv = nv;
  bool simple = nv == 16;
  for (int p = 1; p < 16; ++p) simple = simple && tile.yo[p] == tile.yo[0] + p * g.y_ps;
  tile.simple = simple;
  // the lanes' runs: consecutive pixels of one output row (xo a column stride apart)
  const std::int64_t cs = g.col;
  int runs = 0;
  int start[16];
  const std::int8_t* src[16];
  for (int p = 0; p < 16; ++p) {
    if (p == 0 || xo[p] != xo[p - 1] + cs) {
      start[runs] = p;
      src[runs++] = g.x + xo[p];
    }
  }
  const std::int64_t quads = g.K / 4;
  const std::int64_t* koff = g.koff;
  auto* out = reinterpret_cast<__m512i*>(A);
  // one run of 16, two of 8 or four of 4 (a tile over 1, 2 or 4 rows of a 16+, 8 or 4 pixel wide
  // output) at column stride 1 or 2: each tap's codes from one to four loads put together in a register
  // (at stride 2 the even bytes of twice as many)
  const bool even = runs == 1 || (runs == 2 && start[1] == 8) || (runs == 4 && start[1] == 4 && start[2] == 8 && start[3] == 12);
  if (even && cs == 1) {
    const std::int8_t *x0 = src[0], *x1 = src[runs > 1 ? 1 : 0], *x2 = src[runs > 2 ? 2 : 0], *x3 = src[runs > 2 ? 3 : 0];
    if (runs == 1) return fill_quads(out, quads, koff, [&](std::int64_t o) { return load16(x0 + o); });
    if (runs == 2) {
      return fill_quads(out, quads, koff, [&](std::int64_t o) { return _mm_unpacklo_epi64(load8(x0 + o), load8(x1 + o)); });
    }
    return fill_quads(out, quads, koff, [&](std::int64_t o) {
      std::int32_t v[4];
      std::memcpy(v, x0 + o, 4);
      std::memcpy(v + 1, x1 + o, 4);
      std::memcpy(v + 2, x2 + o, 4);
      std::memcpy(v + 3, x3 + o, 4);
      return _mm_setr_epi32(v[0], v[1], v[2], v[3]);
    });
  }
  if (even && cs == 2) {  // reads one byte past a run's last code (the planes' slack covers the last)
    const std::int8_t *x0 = src[0], *x1 = src[runs > 1 ? 1 : 0], *x2 = src[runs > 2 ? 2 : 0], *x3 = src[runs > 2 ? 3 : 0];
    if (runs == 1) return fill_quads(out, quads, koff, [&](std::int64_t o) { return even_bytes(load16(x0 + o), load16(x0 + o + 16)); });
    if (runs == 2) return fill_quads(out, quads, koff, [&](std::int64_t o) { return even_bytes(load16(x0 + o), load16(x1 + o)); });
    return fill_quads(out, quads, koff, [&](std::int64_t o) {
      return even_bytes(_mm_unpacklo_epi64(load8(x0 + o), load8(x1 + o)), _mm_unpacklo_epi64(load8(x2 + o), load8(x3 + o)));
    });
  }
  // otherwise each tap's row of 16 codes assembled in vt, byte by byte where the column stride is
  // not 1, else by one 16-byte copy per run in lane order (each copy's excess is overwritten by the
  // next run's, the last one's by the next tap's row; the planes have 64 bytes of slack past their end)
  const std::int64_t K = g.K;
  if (cs != 1) {
    for (std::int64_t k = 0; k < K; ++k)
      for (int p = 0; p < 16; ++p) vt[k * 16 + p] = g.x[xo[p] + koff[k]];
  } else {
    for (std::int64_t k = 0; k < K; ++k) {
      std::int8_t* row = vt + k * 16;
      for (int r = 0; r < runs; ++r) std::memcpy(row + start[r], src[r] + koff[k], 16);
    }
  }
  for (std::int64_t q = 0; q < quads; ++q) {
    const std::int8_t* v = vt + q * 64;
    _mm512_storeu_si512(out + q, interleave4(load16(v), load16(v + 16), load16(v + 32), load16(v + 48)));
  }
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
  if (m_end <= m_begin || g.N <= 0) return;
  const std::int64_t tile_bytes = g.K * 16;
  const std::int64_t chunk_tiles = std::max<std::int64_t>(1, kChunkBytes / tile_bytes);
  struct TagA {};
  struct TagV {};
  struct TagT {};
  const BoundedScratch<std::uint8_t, TagA> a_buf(static_cast<std::size_t>(chunk_tiles * tile_bytes));
  const BoundedScratch<std::int8_t, TagV> v_buf(static_cast<std::size_t>(tile_bytes + 16));
  const BoundedScratch<Tile, TagT> t_buf(static_cast<std::size_t>(chunk_tiles));
  std::uint8_t* A = a_buf.get();
  Tile* tiles = t_buf.get();
  for (std::int64_t m0 = m_begin; m0 < m_end; m0 += chunk_tiles * 16) {
    const std::int64_t nt = std::min(chunk_tiles, (m_end - m0 + 15) / 16);
    for (std::int64_t t = 0; t < nt; ++t) {
      const std::int64_t mt = m0 + 16 * t;
      build_tile(g, mt, static_cast<int>(std::min<std::int64_t>(16, m_end - mt)), A + t * tile_bytes, v_buf.get(),
                 tiles[t]);
    }
    std::int64_t n = 0;
    for (; n + CW4_NB <= g.N; n += CW4_NB) channels_pass<CW4_NB>(g, A, tiles, nt, n);
    for (; n < g.N; ++n) channels_pass<1>(g, A, tiles, nt, n);
  }
}

}  // namespace

void add_w4conv(QGemmKernels& t) { t.conv_w4 = &conv_w4; }

}  // namespace qatkit::kernels::cpu::avx512
#endif
