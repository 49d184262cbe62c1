// W4A8 (4-bit weights in groups of any multiple of 32, 8-bit activations) on AVX-512 VNNI.
#include "avx512_common.h"

#ifdef QATKIT_AVX512_KERNELS
namespace qatkit::kernels::cpu::avx512 {
namespace {

// ---------------------------------------------------------------- W4A8 (groups of any multiple of 32)

// Blocks of 16 weight rows, one row per 32-bit lane. Each 64-byte step of the 16 rows (4 chunks of
// 32 weights) is transposed once per block into a panel: dword e of the step, lane r, holds row r's
// bytes 4e .. 4e + 3, i.e. chunk e / 4's weights k = 4 (e % 4) + j (low nibbles) and k + 16 (high
// nibbles), j < 4. vpdpbusd of the nibbles and the broadcast activations a[k .. k + 3] then adds
// row r's four products in lane r, so the group sums of 16 rows arrive in 16 lanes with no
// horizontal step, and the float64 combination runs on two 8-lane halves, one row per lane, in the
// baseline's order (finish_w4: int32 acc, exact product, sum in group order; the product of an
// |acc| < 2^29 and a float32 scale is exact, so the fused multiply-add rounds as multiply-then-add).
// The zero-point terms come from the panel's code sums (vpdpbusd against ones), once per block.
#ifndef W4_PREFETCH
#define W4_PREFETCH 8192
#endif
struct W4Panel {
  const std::int32_t* codes = nullptr;  // [steps][16][16]: the block's panel (the weight's or buf's)
  std::vector<std::int32_t> buf;        // the row layout's block, transposed
  const float* scale = nullptr;         // [G][16]: the 16 rows' group scales (lane r: row r): the
  std::vector<float> scale_buf;         // blocked scales' block, or their rows transposed here
  std::vector<std::int32_t> zero;       // [G][16]: the rows' zero-point terms (when act_offset != 0)
  detail::NextBlockScales next;         // the next block's scales, a line per group by the first row
};

// The block's zero-point terms act_offset * sum q per group, lane r for row r, from its panel.
inline void w4_zero_terms(const QGemmW4Args& g, const std::int32_t* codes, std::int32_t* zero) {
  const std::int64_t chunks = g.K / 32, gc = g.group / 32;
  const __m512i low4 = _mm512_set1_epi8(15), ones = _mm512_set1_epi8(1);
  __m512i gsum = _mm512_setzero_si512();
  for (std::int64_t ci = 0, gdone = 0, left = gc; ci < chunks; ++ci) {  // no division per chunk
    const std::int32_t* t = codes + ((ci / 4) * 16 + (ci % 4) * 4) * 16;
    #pragma GCC unroll 4
    for (int e = 0; e < 4; ++e) {
      const __m512i v = _mm512_loadu_si512(t + e * 16);
      gsum = _mm512_dpbusd_epi32(gsum, _mm512_and_si512(v, low4), ones);
      gsum = _mm512_dpbusd_epi32(gsum, _mm512_and_si512(_mm512_srli_epi16(v, 4), low4), ones);
    }
    if (--left == 0) {
      left = gc;  // sum q = sum c - 8 * group, times act_offset
      const __m512i q = _mm512_sub_epi32(gsum, _mm512_set1_epi32(static_cast<std::int32_t>(8 * g.group)));
      _mm512_storeu_si512(zero + gdone++ * 16, _mm512_mullo_epi32(q, _mm512_set1_epi32(g.act_offset)));
      gsum = _mm512_setzero_si512();
    }
  }
}


// A block's 16 group scales (lane r: row r) as float64, exactly: rows 0-7 in lo, 8-15 in hi.
inline void w4_scales_f64(const float* scale, __m512d& lo, __m512d& hi) {
  const __m512 sf = _mm512_loadu_ps(scale);
  lo = _mm512_cvtps_pd(_mm512_castps512_ps256(sf));
  hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(sf), 1)));
}

// The 16 rows' outputs from their float64 sums (rows 0-7 in lo, 8-15 in hi): sum * act_scale, rounded
// to float32 once.
inline __m512 w4_outputs(__m512d lo, __m512d hi, __m512d act_scale) {
  const __m256 ylo = _mm512_cvtpd_ps(_mm512_mul_pd(lo, act_scale)), yhi = _mm512_cvtpd_ps(_mm512_mul_pd(hi, act_scale));
  return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_castps_pd(ylo)), _mm256_castps_pd(yhi), 1));
}

// One row's outputs of the block at column nj (its first nr): + bias, stored under a mask.
inline void w4_store(const QGemmW4Args& g, float* y_row, std::int64_t nj, int nr, __m512 y) {
  const __mmask16 mask = static_cast<__mmask16>((1u << nr) - 1);
  if (g.bias) y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(mask, g.bias + nj));
  _mm512_mask_storeu_ps(y_row + nj, mask, y);
}

// MR activation rows against one packed block: y[m + i, n .. n + nr).
template <int MR>
void w4_panel_rows(const QGemmW4Args& g, std::int64_t m, std::int64_t n, int nr, const W4Panel& p) {
  const std::int64_t G = g.K / g.group, chunks = g.K / 32, gc = g.group / 32;
  const __m512i low4 = _mm512_set1_epi8(15);
  constexpr int NA = MR == 1 ? 4 : MR == 4 ? 2 : 1;  // independent vpdpbusd chains per row (latency, not throughput)
  __m512i acc[MR][NA];
  __m512d tlo[MR], thi[MR];
  // each group's first accumulator starts at -8 * (the row's group code sum): the codes' offset of 8
  // taken out where the group starts, not by a subtraction per group and row at its end
  #pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    #pragma GCC unroll 8
    for (int j = 0; j < NA; ++j) acc[i][j] = _mm512_setzero_si512();
    if (G > 0) acc[i][0] = _mm512_set1_epi32(-8 * g.a_gsum[(m + i) * G]);
    tlo[i] = _mm512_setzero_pd();
    thi[i] = _mm512_setzero_pd();
  }
  const std::int8_t* a[MR];
  #pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) a[i] = g.a + (m + i) * g.K;
  for (std::int64_t ci = 0, gdone = 0, left = gc; ci < chunks; ++ci) {  // no division per chunk
    const std::int32_t* t = p.codes + ((ci / 4) * 16 + (ci % 4) * 4) * 16;
    const std::int64_t k = ci * 32;
    if (MR == 1) {  // one pass per block streams the panel: fetch ahead of the hardware prefetcher
      #pragma GCC unroll 8
      for (int l = 0; l < 4; ++l) _mm_prefetch(reinterpret_cast<const char*>(t) + W4_PREFETCH + 64 * l, _MM_HINT_T1);
    }
    #pragma GCC unroll 8
    for (int e = 0; e < 4; ++e) {
      const __m512i v = _mm512_loadu_si512(t + e * 16);
      const __m512i lo = _mm512_and_si512(v, low4), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), low4);
      #pragma GCC unroll 8
      for (int i = 0; i < MR; ++i) {
        std::int32_t alo, ahi;
        std::memcpy(&alo, a[i] + k + 4 * e, 4);
        std::memcpy(&ahi, a[i] + k + 16 + 4 * e, 4);
        __m512i& c0 = acc[i][(2 * e) % NA];
        __m512i& c1 = acc[i][(2 * e + 1) % NA];
        c0 = _mm512_dpbusd_epi32(c0, lo, _mm512_set1_epi32(alo));
        c1 = _mm512_dpbusd_epi32(c1, hi, _mm512_set1_epi32(ahi));
      }
    }
    if (--left == 0) {
      left = gc;
      const std::int64_t gi = gdone++;
      if (m == 0) p.next.at_group(gi);
      __m512d slo, shi;
      w4_scales_f64(p.scale + gi * 16, slo, shi);
      #pragma GCC unroll 8
      for (int i = 0; i < MR; ++i) {
        __m512i v = acc[i][0];
        #pragma GCC unroll 8
        for (int j = 1; j < NA; ++j) v = _mm512_add_epi32(v, acc[i][j]);
        if (g.act_offset != 0) v = _mm512_add_epi32(v, _mm512_loadu_si512(p.zero.data() + gi * 16));
        tlo[i] = _mm512_fmadd_pd(_mm512_cvtepi32_pd(_mm512_castsi512_si256(v)), slo, tlo[i]);
        thi[i] = _mm512_fmadd_pd(_mm512_cvtepi32_pd(_mm512_extracti64x4_epi64(v, 1)), shi, thi[i]);
        #pragma GCC unroll 8
        for (int j = 0; j < NA; ++j) acc[i][j] = _mm512_setzero_si512();
        if (gi + 1 < G) acc[i][0] = _mm512_set1_epi32(-8 * g.a_gsum[(m + i) * G + gi + 1]);
      }
    }
  }
  const __m512d as = _mm512_set1_pd(g.act_scale);
  #pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) w4_store(g, g.y + (m + i) * g.N, n, nr, w4_outputs(tlo[i], thi[i], as));
}

// MR activation rows against NP consecutive packed blocks at once: y[m + i, n .. n + 16 NP) (the
// last block's nr_last rows). w4_panel_rows keeps one block's float64 group sums in registers (two
// per row), which leaves room for one block: every broadcast activation quad feeds one block's
// vpdpbusd pair. Here the float64 sums live in a small scratch (a load and a store per group and 8
// lanes) and the registers hold MR x NP int32 chains, each broadcast feeding NP blocks. The int32
// group sums and the float64 combination (exact products, added in group order from 0) are
// w4_panel_rows' own: the same bits. On Zen 5 (6 rows x 2 blocks) this ran 10-14 % faster than
// w4_panel_rows<8> at 64-6272 rows; what is left between W4A8 and W8A8 there is the per-group
// float64 step itself (vcvtdq2pd and the FMA, which shares vpdpbusd's two pipes): with one group per
// row the two ran at the same speed, with groups of 32 W4A8 took ~1.45x W8A8's time
// (docs/benchmarks.md, forty-fourth session).
template <int MR, int NP>
void w4_panel_tile(const QGemmW4Args& g, std::int64_t m, std::int64_t n, int nr_last, const W4Panel* const* p) {
  const std::int64_t G = g.K / g.group, chunks = g.K / 32, gc = g.group / 32;
  const __m512i low4 = _mm512_set1_epi8(15);
  __m512i acc[MR][NP];
  alignas(64) double t[MR][NP][16];
  const std::int8_t* a[MR];
  const std::int32_t* ag[MR];
  #pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    a[i] = g.a + (m + i) * g.K;
    ag[i] = g.a_gsum + (m + i) * G;
    const __m512i start = _mm512_set1_epi32(G > 0 ? -8 * ag[i][0] : 0);  // the codes' offset of 8
    #pragma GCC unroll 4
    for (int j = 0; j < NP; ++j) {
      acc[i][j] = start;
      _mm512_store_pd(t[i][j], _mm512_setzero_pd());
      _mm512_store_pd(t[i][j] + 8, _mm512_setzero_pd());
    }
  }
  for (std::int64_t ci = 0, gdone = 0, left = gc; ci < chunks; ++ci) {  // no division per chunk
    const std::int64_t off = ((ci / 4) * 16 + (ci % 4) * 4) * 16, k = ci * 32;
    #pragma GCC unroll 4
    for (int e = 0; e < 4; ++e) {
      __m512i lo[NP], hi[NP];
      #pragma GCC unroll 4
      for (int j = 0; j < NP; ++j) {
        const __m512i v = _mm512_loadu_si512(p[j]->codes + off + e * 16);
        lo[j] = _mm512_and_si512(v, low4);
        hi[j] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low4);
      }
      #pragma GCC unroll 8
      for (int i = 0; i < MR; ++i) {
        std::int32_t alo, ahi;
        std::memcpy(&alo, a[i] + k + 4 * e, 4);
        std::memcpy(&ahi, a[i] + k + 16 + 4 * e, 4);
        const __m512i blo = _mm512_set1_epi32(alo), bhi = _mm512_set1_epi32(ahi);
        #pragma GCC unroll 4
        for (int j = 0; j < NP; ++j) {
          acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], lo[j], blo);
          acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], hi[j], bhi);
        }
      }
    }
    if (--left == 0) {
      left = gc;
      const std::int64_t gi = gdone++;
      if (m == 0) p[NP - 1]->next.at_group(gi);
      __m512d slo[NP], shi[NP];
      #pragma GCC unroll 4
      for (int j = 0; j < NP; ++j) w4_scales_f64(p[j]->scale + gi * 16, slo[j], shi[j]);
      #pragma GCC unroll 8
      for (int i = 0; i < MR; ++i) {
        const __m512i next = _mm512_set1_epi32(gi + 1 < G ? -8 * ag[i][gi + 1] : 0);
        #pragma GCC unroll 4
        for (int j = 0; j < NP; ++j) {
          __m512i v = acc[i][j];
          if (g.act_offset != 0) v = _mm512_add_epi32(v, _mm512_loadu_si512(p[j]->zero.data() + gi * 16));
          _mm512_store_pd(t[i][j], _mm512_fmadd_pd(_mm512_cvtepi32_pd(_mm512_castsi512_si256(v)), slo[j],
                                                   _mm512_load_pd(t[i][j])));
          _mm512_store_pd(t[i][j] + 8, _mm512_fmadd_pd(_mm512_cvtepi32_pd(_mm512_extracti64x4_epi64(v, 1)), shi[j],
                                                       _mm512_load_pd(t[i][j] + 8)));
          acc[i][j] = next;
        }
      }
    }
  }
  const __m512d as = _mm512_set1_pd(g.act_scale);
  #pragma GCC unroll 4
  for (int j = 0; j < NP; ++j) {
    #pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      w4_store(g, g.y + (m + i) * g.N, n + 16 * j, j + 1 < NP ? 16 : nr_last,
               w4_outputs(_mm512_load_pd(t[i][j]), _mm512_load_pd(t[i][j] + 8), as));
    }
  }
}

// One or a few activation rows against kW4Streams 16-row blocks of the panel at once (the GEMV of a
// batch-1 call). One block at a time reads one sequential stream, which the L2 streamer follows one
// 4 KiB page at a time: a plain read of 10 MiB on the model 167 Xeon's two threads reached 23-26 GB/s
// that way and 29-32 GB/s reading four 32 KiB blocks in turn. Each stream is prefetched
// W4_GEMV_PREFETCH bytes ahead into L1 and each block's scales 4 groups ahead (the T0 hint ran ~6 %
// faster than T2 here; docs/benchmarks.md, 2026-12-06, thirty-ninth session).
// The blocks share each broadcast activation quad; block j keeps two vpdpbusd
// chains (low / high nibbles), and, where act_offset != 0, a third that sums its codes (the nibble
// pair's sum, at most 30, against ones), so the zero-point terms cost no second pass over the codes.
// Per group and block, the int32 sum is the same as w4_panel_rows' (integer addition, exact), and
// the float64 combination runs in the same order: the same bits.
constexpr int kW4Streams = 4;
#ifndef W4_GEMV_PREFETCH
#define W4_GEMV_PREFETCH 2048
#endif

template <bool ZT>
void w4_gemv_blocks(const QGemmW4Args& g, std::int64_t m, std::int64_t n, int nr_last, const std::int32_t* const* codes,
                    const float* const* scale) {
  constexpr int NB = kW4Streams;
  const std::int64_t G = g.K / g.group, chunks = g.K / 32, gc = g.group / 32;
  const __m512i high4 = _mm512_set1_epi8(static_cast<char>(0xF0)), ones = _mm512_set1_epi8(1);
  const __m512i group_codes = _mm512_set1_epi32(static_cast<std::int32_t>(8 * g.group));
  const __m512i offset = _mm512_set1_epi32(g.act_offset);
  __m512i c0[NB], c1[NB], cs[NB];
  __m512d tlo[NB], thi[NB];
  const std::int8_t* a = g.a + m * g.K;
  const std::int32_t* ag = g.a_gsum + m * G;
  __m512i start = _mm512_set1_epi32(G > 0 ? -8 * ag[0] : 0);  // the codes' offset of 8, as w4_panel_rows
  #pragma GCC unroll 4
  for (int j = 0; j < NB; ++j) {
    c0[j] = start;
    c1[j] = cs[j] = _mm512_setzero_si512();
    tlo[j] = thi[j] = _mm512_setzero_pd();
  }
  for (std::int64_t ci = 0, gdone = 0, left = gc; ci < chunks; ++ci) {
    const std::int64_t off = ((ci / 4) * 16 + (ci % 4) * 4) * 16, k = ci * 32;
    #pragma GCC unroll 4
    for (int j = 0; j < NB; ++j) {  // each stream W4_GEMV_PREFETCH bytes ahead, into L1
      #pragma GCC unroll 4
      for (int l = 0; l < 4; ++l) {
        _mm_prefetch(reinterpret_cast<const char*>(codes[j] + off) + W4_GEMV_PREFETCH + 64 * l, _MM_HINT_T0);
      }
    }
    #pragma GCC unroll 4
    for (int e = 0; e < 4; ++e) {
      std::int32_t alo, ahi;
      std::memcpy(&alo, a + k + 4 * e, 4);
      std::memcpy(&ahi, a + k + 16 + 4 * e, 4);
      const __m512i blo = _mm512_set1_epi32(alo), bhi = _mm512_set1_epi32(ahi);
      #pragma GCC unroll 4
      for (int j = 0; j < NB; ++j) {
        const __m512i v = _mm512_loadu_si512(codes[j] + off + e * 16);
        const __m512i hi16 = _mm512_and_si512(v, high4), lo = _mm512_xor_si512(v, hi16);  // 16 c_hi, c_lo
        c0[j] = _mm512_dpbusd_epi32(c0[j], lo, blo);
        c1[j] = _mm512_dpbusd_epi32(c1[j], hi16, bhi);  // 16 x the high nibbles' sum
        if (ZT) cs[j] = _mm512_dpbusd_epi32(cs[j], _mm512_add_epi8(lo, _mm512_srli_epi16(hi16, 4)), ones);
      }
    }
    if (--left == 0) {
      left = gc;
      const std::int64_t gi = gdone++;
      if (m == 0) {  // each block's scales ([G][16]: a line per group), 4 groups ahead
        #pragma GCC unroll 4
        for (int j = 0; j < NB; ++j) _mm_prefetch(reinterpret_cast<const char*>(scale[j] + (gi + 4) * 16), _MM_HINT_T0);
      }
      start = _mm512_set1_epi32(gi + 1 < G ? -8 * ag[gi + 1] : 0);
      #pragma GCC unroll 4
      for (int j = 0; j < NB; ++j) {
        __m512i v = _mm512_add_epi32(c0[j], _mm512_srai_epi32(c1[j], 4));  // a multiple of 16: exact
        if (ZT) v = _mm512_add_epi32(v, _mm512_mullo_epi32(_mm512_sub_epi32(cs[j], group_codes), offset));
        __m512d slo, shi;
        w4_scales_f64(scale[j] + gi * 16, slo, shi);
        tlo[j] = _mm512_fmadd_pd(_mm512_cvtepi32_pd(_mm512_castsi512_si256(v)), slo, tlo[j]);
        thi[j] = _mm512_fmadd_pd(_mm512_cvtepi32_pd(_mm512_extracti64x4_epi64(v, 1)), shi, thi[j]);
        c0[j] = start;
        c1[j] = cs[j] = _mm512_setzero_si512();
      }
    }
  }
  const __m512d as = _mm512_set1_pd(g.act_scale);
  #pragma GCC unroll 4
  for (int j = 0; j < NB; ++j) w4_store(g, g.y + m * g.N, n + 16 * j, j + 1 < NB ? 16 : nr_last, w4_outputs(tlo[j], thi[j], as));
}

// Batches of 1-3 rows on the panel layout: kW4Streams blocks at a time through w4_gemv_blocks; the
// last blocks (fewer than kW4Streams) through w4_panel_rows. Returns the first row it left.
std::int64_t gemm_w4_gemv(const QGemmW4Args& g, std::int64_t n_begin, std::int64_t n_end) {
  constexpr int NB = kW4Streams;
  const std::int64_t steps = (g.K / 2 + 63) / 64, G = g.K / g.group;
  // the blocks' scales: blocked ones as they are, else their rows transposed here (at batch 1 that
  // transpose took a fifth of the kernel's instructions: docs/benchmarks.md, thirty-ninth session)
  std::vector<float> buf(static_cast<std::size_t>(g.blocked_scales ? 0 : NB * G * 16));
  std::int64_t n = n_begin;
  for (; n + 16 * (NB - 1) < n_end; n += 16 * NB) {  // NB blocks, the last one possibly partial
    const std::int32_t* codes[NB];
    const float* scale[NB];
    int nr_last = 16;
    for (int j = 0; j < NB; ++j) {
      const std::int64_t nj = n + 16 * j;
      const int nr = static_cast<int>(std::min<std::int64_t>(16, n_end - nj));
      codes[j] = reinterpret_cast<const std::int32_t*>(g.w + (nj / 16) * steps * 1024);
      if (g.blocked_scales) {
        scale[j] = g.gscale + (nj / 16) * G * 16;
      } else {
        transpose_rows_f32(g.gscale, G, nj, nr, buf.data() + j * G * 16);
        scale[j] = buf.data() + j * G * 16;
      }
      nr_last = nr;
    }
    for (std::int64_t m = 0; m < g.M; ++m) {
      if (g.act_offset != 0) {
        w4_gemv_blocks<true>(g, m, n, nr_last, codes, scale);
      } else {
        w4_gemv_blocks<false>(g, m, n, nr_last, codes, scale);
      }
    }
  }
  return n;
}

#ifndef W4_TILE_PANELS  // w4_panel_tile's shape (Zen 5: 6 x 2 ran 2-5 % faster than 8 x 2 and 4 x 4)
#define W4_TILE_PANELS 2
#endif
#ifndef W4_TILE_ROWS
#define W4_TILE_ROWS 6
#endif

void gemm_w4(const QGemmW4Args& g, std::int64_t n_begin, std::int64_t n_end) {
  constexpr int NP = W4_TILE_PANELS, MR = W4_TILE_ROWS;
  const std::int64_t steps = (g.K / 2 + 63) / 64, G = g.K / g.group;
  W4Panel panels[NP];
  for (W4Panel& p : panels) {
    if (!g.panel) p.buf.resize(static_cast<std::size_t>(steps * 256));
    if (!g.blocked_scales) p.scale_buf.resize(static_cast<std::size_t>(G * 16));
    p.zero.resize(static_cast<std::size_t>(G * 16));
  }
  const auto prepare = [&](W4Panel& p, std::int64_t n, int nr) {
    if (g.panel) {
      p.codes = reinterpret_cast<const std::int32_t*>(g.w + (n / 16) * steps * 1024);
    } else {
      w4_pack_panel(g.w, g.K, n, nr, p.buf.data());
      p.codes = p.buf.data();
    }
    p.next = detail::NextBlockScales(g.gscale, G, n, n_end);
    if (g.act_offset != 0) w4_zero_terms(g, p.codes, p.zero.data());
    if (g.blocked_scales) {
      p.scale = g.gscale + (n / 16) * G * 16;
    } else {
      transpose_rows_f32(g.gscale, G, n, nr, p.scale_buf.data());
      p.scale = p.scale_buf.data();
    }
  };
  std::int64_t n = n_begin;
  if (g.panel && g.M < 4) n = gemm_w4_gemv(g, n_begin, n_end);  // one stream per block at a time below
  // NP blocks at a time where there are NP and 4 rows or more (w4_panel_tile), else one (n_begin is
  // a multiple of 16)
  for (; g.M >= 4 && n + 16 * (NP - 1) < n_end; n += 16 * NP) {
    const W4Panel* ps[NP];
    int nr_last = 16;
    for (int j = 0; j < NP; ++j) {
      nr_last = static_cast<int>(std::min<std::int64_t>(16, n_end - n - 16 * j));
      prepare(panels[j], n + 16 * j, nr_last);
      ps[j] = &panels[j];
    }
    std::int64_t m = 0;
    for (; m + MR <= g.M; m += MR) w4_panel_tile<MR, NP>(g, m, n, nr_last, ps);
    for (; m + 4 <= g.M; m += 4) w4_panel_tile<4, NP>(g, m, n, nr_last, ps);
    for (; m < g.M; ++m) {
      for (int j = 0; j < NP; ++j) w4_panel_rows<1>(g, m, n + 16 * j, j + 1 < NP ? 16 : nr_last, panels[j]);
    }
  }
  for (; n < n_end; n += 16) {
    const int nr = static_cast<int>(std::min<std::int64_t>(16, n_end - n));
    W4Panel& p = panels[0];
    prepare(p, n, nr);
    std::int64_t m = 0;
    for (; m + 8 <= g.M; m += 8) w4_panel_rows<8>(g, m, n, nr, p);
    for (; m + 4 <= g.M; m += 4) w4_panel_rows<4>(g, m, n, nr, p);
    for (; m < g.M; ++m) w4_panel_rows<1>(g, m, n, nr, p);
  }
}

}  // namespace

void add_w4a8(QGemmKernels& t) { t.gemm_w4 = &gemm_w4; }

}  // namespace qatkit::kernels::cpu::avx512
#endif
