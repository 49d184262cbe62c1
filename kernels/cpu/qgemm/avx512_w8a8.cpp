// W8A8 on AVX-512 VNNI (the row and panel layouts) and on AMX-INT8 tiles (the amx table).
#include "avx512_common.h"

#ifdef QATKIT_AVX512_KERNELS
namespace qatkit::kernels::cpu::avx512 {
namespace {

// ---------------------------------------------------------------- W8A8

// K in steps of 64 bytes, the last one masked (masked-out bytes load as 0: w = 0 adds nothing, whatever
// a + 128 is there), so no tail runs scalar (small-K convs: K = 32 is one masked step).
inline __m512i load_k(const std::int8_t* p, std::int64_t k, std::int64_t K) {
  return k + 64 <= K ? _mm512_loadu_si512(p + k) : _mm512_maskz_loadu_epi8((std::uint64_t{1} << (K - k)) - 1, p + k);
}

// One MR x NR register block over K's [k0, k1): au holds the activation rows flipped to a + 128
// (unsigned) once per call; part keeps the block's int32 lanes between K blocks (K blocking: the
// 16 weight rows' slice of one K block and the activation tile's stay in L1 while every tile of the
// column block passes over them); the last K block forms the outputs.
template <int MR, int NR>
void s8_block(const QGemmArgs& g, const std::uint8_t* au, std::int64_t m, std::int64_t n, std::int64_t k0,
              std::int64_t k1, std::int32_t* part, const std::uint32_t* wsum) {
  __m512i acc[MR][NR];
  #pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
    #pragma GCC unroll 4
    for (int j = 0; j < NR; ++j) acc[i][j] = k0 == 0 ? _mm512_setzero_si512() : _mm512_loadu_si512(part + (i * 16 + j) * 16);
  // row pointers hoisted (the compiler reloads g.K after every load otherwise: it may alias)
  const std::uint8_t* ap[MR];
  const std::int8_t* wp[NR];
  #pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) ap[i] = au + (m + i) * g.K;
  #pragma GCC unroll 4
  for (int j = 0; j < NR; ++j) wp[j] = g.w + (n + j) * g.K;
  // full steps, then the masked one: no branch inside the loop, so the accumulators stay in registers
  const auto step = [&](std::int64_t k, __mmask64 mask) __attribute__((always_inline)) {
    __m512i w[NR];  // NR weight rows in registers, then one activation row at a time: MR x NR + NR + 1 registers
    #pragma GCC unroll 4
    for (int j = 0; j < NR; ++j) w[j] = _mm512_maskz_loadu_epi8(mask, wp[j] + k);
    #pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const __m512i a = _mm512_maskz_loadu_epi8(mask, ap[i] + k);
      #pragma GCC unroll 4
      for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], a, w[j]);
    }
  };
  const std::int64_t k64 = k0 + ((k1 - k0) & ~std::int64_t{63});
  for (std::int64_t k = k0; k < k64; k += 64) step(k, ~__mmask64{0});
  if (k64 < k1) step(k64, (std::uint64_t{1} << (k1 - k64)) - 1);
  if (k1 < g.K) {
    #pragma GCC unroll 8
    for (int i = 0; i < MR; ++i)
      #pragma GCC unroll 4
      for (int j = 0; j < NR; ++j) _mm512_storeu_si512(part + (i * 16 + j) * 16, acc[i][j]);
    return;
  }
  #pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    #pragma GCC unroll 4
    for (int j = 0; j < NR; ++j) {
      const std::uint32_t s = hsum(acc[i][j]) - 128u * wsum[j] + static_cast<std::uint32_t>(g.corr[n + j]);
      g.y[(m + i) * g.y_rs + (n + j) * g.y_cs] = detail::requantize(s, g, n + j);
    }
  }
}

// A few activation rows (GEMV; the weight streams once per row): the sign trick on 64 bytes,
// |a| unsigned times w negated where a < 0 (w in [-127, 127], so the negation is exact), so
// vpdpbusd needs no weight-sum pass; four weight rows per step, each prefetched into L2 four rows
// ahead (the next block's same offset), which keeps the DRAM stream ahead of the arithmetic.
void gemv_s8(const QGemmArgs& g, std::int64_t n_begin, std::int64_t n_end) {
  const std::int64_t K = g.K, K64 = K & ~std::int64_t{63};
  const __m512i zero = _mm512_setzero_si512();
  for (std::int64_t m = 0; m < g.M; ++m) {
    const std::int8_t* a = g.a + m * K;
    const auto row_step = [&](const std::int8_t* w, std::int64_t k, __mmask64 mask, __m512i& c) __attribute__((always_inline)) {
      const __m512i va = _mm512_maskz_loadu_epi8(mask, a + k);
      const __m512i wv = _mm512_maskz_loadu_epi8(mask, w + k);
      c = _mm512_dpbusd_epi32(c, _mm512_abs_epi8(va), _mm512_mask_sub_epi8(wv, _mm512_movepi8_mask(va), zero, wv));
    };
    std::int64_t n = n_begin;
    for (; n + 4 <= n_end; n += 4) {
      const std::int8_t* w0 = g.w + n * K;
      __m512i c[4] = {zero, zero, zero, zero};
      for (std::int64_t k = 0; k < K64; k += 64) {
        const __m512i va = _mm512_loadu_si512(a + k);
        const __m512i ua = _mm512_abs_epi8(va);
        const __mmask64 neg = _mm512_movepi8_mask(va);
        #pragma GCC unroll 4
        for (int j = 0; j < 4; ++j) {
          const std::int8_t* w = w0 + j * K;
          _mm_prefetch(reinterpret_cast<const char*>(w + 4 * K + k), _MM_HINT_T1);
          const __m512i wv = _mm512_loadu_si512(w + k);
          c[j] = _mm512_dpbusd_epi32(c[j], ua, _mm512_mask_sub_epi8(wv, neg, zero, wv));
        }
      }
      if (K64 < K) {
        const __mmask64 mask = (std::uint64_t{1} << (K - K64)) - 1;
        for (int j = 0; j < 4; ++j) row_step(w0 + j * K, K64, mask, c[j]);
      }
      for (int j = 0; j < 4; ++j) {
        const std::uint32_t s = hsum(c[j]) + static_cast<std::uint32_t>(g.corr[n + j]);
        g.y[m * g.y_rs + (n + j) * g.y_cs] = detail::requantize(s, g, n + j);
      }
    }
    for (; n < n_end; ++n) {
      __m512i c = zero;
      for (std::int64_t k = 0; k < K; k += 64) {
        row_step(g.w + n * K, k, k + 64 <= K ? ~__mmask64{0} : (std::uint64_t{1} << (K - k)) - 1, c);
      }
      g.y[m * g.y_rs + n * g.y_cs] = detail::requantize(hsum(c) + static_cast<std::uint32_t>(g.corr[n]), g, n);
    }
  }
}


// ---------------------------------------------------------------- W8A8, panel layout

// The panel layout (QGemmArgs): a step of one 16-row panel is 16 rows x 4 k in 16 lanes, so
// vpdpbusd of it (unsigned: w + 128) and a broadcast of four activations (signed) adds 64 products
// into the 16 rows' lanes; MR activation rows x NR panels of accumulators (6 x 4: 24 + 4 weight
// registers), NR weight loads and MR broadcasts per 24 vpdpbusd, no horizontal sums. part holds a
// tile's lanes between K blocks ([row][64 columns]).
template <int MR, int NR>
void s8p_tile(const std::int8_t* a, std::int64_t a_rs, const std::uint8_t* w0, std::int64_t ps, std::int64_t s0,
              std::int64_t s1, std::int32_t* part, bool first) {
  __m512i acc[MR][NR];
  #pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
    #pragma GCC unroll 4
    for (int j = 0; j < NR; ++j) acc[i][j] = first ? _mm512_setzero_si512() : _mm512_loadu_si512(part + i * 64 + j * 16);
  const std::int8_t* ap[MR];
  const std::uint8_t* wp[NR];
  #pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) ap[i] = a + i * a_rs;
  #pragma GCC unroll 4
  for (int j = 0; j < NR; ++j) wp[j] = w0 + j * ps;
  for (std::int64_t s = s0; s < s1; ++s) {
    __m512i w[NR];
    #pragma GCC unroll 4
    for (int j = 0; j < NR; ++j) w[j] = _mm512_loadu_si512(wp[j] + s * 64);
    #pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      std::int32_t four;
      std::memcpy(&four, ap[i] + 4 * s, 4);
      const __m512i b = _mm512_set1_epi32(four);
      #pragma GCC unroll 4
      for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], w[j], b);
    }
  }
  #pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
    #pragma GCC unroll 4
    for (int j = 0; j < NR; ++j) _mm512_storeu_si512(part + i * 64 + j * 16, acc[i][j]);
}

// Rows [m0, m1) against NR panels over steps [s0, s1): tiles of 6 rows, then one of the rest.
template <int NR>
void s8p_rows(const std::int8_t* a, std::int64_t a_rs, const std::uint8_t* w0, std::int64_t ps, std::int64_t s0,
              std::int64_t s1, std::int64_t m0, std::int64_t m1, std::int32_t* part) {
  const bool first = s0 == 0;
  std::int64_t m = m0;
  for (; m + 6 <= m1; m += 6) s8p_tile<6, NR>(a + m * a_rs, a_rs, w0, ps, s0, s1, part + (m - m0) * 64, first);
  const auto rest = [&](auto mr) { s8p_tile<decltype(mr)::value, NR>(a + m * a_rs, a_rs, w0, ps, s0, s1, part + (m - m0) * 64, first); };
  switch (m1 - m) {
    case 5: rest(std::integral_constant<int, 5>{}); break;
    case 4: rest(std::integral_constant<int, 4>{}); break;
    case 3: rest(std::integral_constant<int, 3>{}); break;
    case 2: rest(std::integral_constant<int, 2>{}); break;
    case 1: rest(std::integral_constant<int, 1>{}); break;
    default: break;
  }
}

// The requantization of a tile group's sums: part holds rows [m0, m1) x np panels of 16 columns from
// n0 ([row][64 columns] int32, sum_k a * (w + 128)); 16 columns per vector (masked at N's edge; the
// scalar form's operations, so its bits), stored by the output's strides.
inline void s8p_finish(const QGemmArgs& g, const std::int32_t* part, std::int64_t m0, std::int64_t m1, std::int64_t n0,
                       int np, std::int64_t n_end) {
  for (int j = 0; j < np; ++j) {
    const std::int64_t n = n0 + 16 * j;
    const __mmask16 mask = static_cast<__mmask16>((1u << std::min<std::int64_t>(16, n_end - n)) - 1);
    const __m512i corr = _mm512_maskz_loadu_epi32(mask, g.corr + n);
    const __m512 os = _mm512_maskz_loadu_ps(mask, g.out_scale + n);
    const __m512 bias = g.bias ? _mm512_maskz_loadu_ps(mask, g.bias + n) : _mm512_setzero_ps();
    // row m's 16 outputs: sum a * w = sum a * (w + 128) - 128 * a_sum, modulo 2^32 as the scalar sums
    const auto out = [&](std::int64_t m) {
      const std::uint32_t off = 0u - 128u * static_cast<std::uint32_t>(g.a_sum[m]);
      const __m512i acc = _mm512_add_epi32(_mm512_loadu_si512(part + (m - m0) * 64 + 16 * j),
                                           _mm512_add_epi32(corr, _mm512_set1_epi32(static_cast<std::int32_t>(off))));
      __m512 y = _mm512_mul_ps(_mm512_cvtepi32_ps(acc), os);
      if (g.bias) y = _mm512_add_ps(y, bias);
      return y;
    };
    if (g.y_cs == 1) {
      for (std::int64_t m = m0; m < m1; ++m) _mm512_mask_storeu_ps(g.y + m * g.y_rs + n, mask, out(m));
    } else if (g.y_rs == 1) {
      // a conv's [N, L] output (column n at n * L, its rows consecutive): 16 rows' outputs
      // transposed, each column's 16 rows one store (16-lane scatters ran ~85 % of this function's
      // time on Zen 4, where they are microcoded: docs/benchmarks.md, 2026-12-04 fourteenth session)
      for (std::int64_t mb = m0; mb < m1; mb += 16) {
        const int mr = static_cast<int>(std::min<std::int64_t>(16, m1 - mb));
        __m512i r[16];
        #pragma GCC unroll 16
        for (int i = 0; i < 16; ++i) r[i] = i < mr ? _mm512_castps_si512(out(mb + i)) : _mm512_setzero_si512();
        transpose16(r);
        const __mmask16 rows = static_cast<__mmask16>((1u << mr) - 1);
        const int nr = static_cast<int>(std::min<std::int64_t>(16, n_end - n));
        for (int c = 0; c < nr; ++c) _mm512_mask_storeu_epi32(g.y + mb + (n + c) * g.y_cs, rows, r[c]);
      }
    } else {  // any other strides: the 16 columns y_cs apart, one by one
      for (std::int64_t m = m0; m < m1; ++m) {
        alignas(64) float t[16];
        _mm512_store_ps(t, out(m));
        const int nr = static_cast<int>(std::min<std::int64_t>(16, n_end - n));
        for (int c = 0; c < nr; ++c) g.y[m * g.y_rs + (n + c) * g.y_cs] = t[c];
      }
    }
  }
}

// The panel GEMM: per chunk of rows (their activations' K block stays in L2), per group of four
// panels (64 columns), per K block (the group's slice, 4 x 96 steps x 64 bytes = 24 KiB, stays in
// L1 while every row tile passes over it), then s8p_finish.
void gemm_s8_panel(const QGemmArgs& g, std::int64_t n_begin, std::int64_t n_end) {
  constexpr std::int64_t kSteps = 96, kRows = 192;
  const std::int64_t K4 = (g.K + 3) / 4, a_rs = 4 * K4, ps = 64 * K4;
  const std::uint8_t* w = reinterpret_cast<const std::uint8_t*>(g.w);
  // a single tile of rows reuses nothing across K blocks: the whole K in one pass
  const std::int64_t steps = g.M <= 6 ? K4 : kSteps;
  std::vector<std::int32_t> part(static_cast<std::size_t>(std::min(g.M, kRows) * 64));
  for (std::int64_t m0 = 0; m0 < g.M; m0 += kRows) {
    const std::int64_t m1 = std::min(g.M, m0 + kRows);
    for (std::int64_t n0 = n_begin; n0 < n_end; n0 += 64) {
      const int np = static_cast<int>(std::min<std::int64_t>(4, (n_end - n0 + 15) / 16));
      const std::uint8_t* w0 = w + (n0 / 16) * ps;
      for (std::int64_t s0 = 0; s0 < K4; s0 += steps) {
        const std::int64_t s1 = std::min(K4, s0 + steps);
        switch (np) {
          case 4: s8p_rows<4>(g.a, a_rs, w0, ps, s0, s1, m0, m1, part.data()); break;
          case 3: s8p_rows<3>(g.a, a_rs, w0, ps, s0, s1, m0, m1, part.data()); break;
          case 2: s8p_rows<2>(g.a, a_rs, w0, ps, s0, s1, m0, m1, part.data()); break;
          default: s8p_rows<1>(g.a, a_rs, w0, ps, s0, s1, m0, m1, part.data()); break;
        }
      }
      s8p_finish(g, part.data(), m0, m1, n0, np, n_end);
    }
  }
}

// ---------------------------------------------------------------- W8A8, panel layout, AMX

#ifdef QATKIT_AMX_KERNELS
// Intel AMX (AMX-TILE + AMX-INT8: Sapphire Rapids and later; the table "amx", isa.h): tdpbsud
// multiplies a tile of 16 activation rows x 64 bytes (signed) by a tile of 16 rows x 64 bytes of
// the weight (unsigned, four k per 32-bit lane: a panel's 16 steps as they lie, 1 KiB contiguous)
// and adds the 16 x 16 int32 dot products into a third tile: 16 K-steps of a 16 x 16 output block
// per instruction. Its sums are sum_k a * (w + 128), as vpdpbusd's (exact, modulo 2^32), so
// s8p_finish gives the same bits from them. Compiled for AMX in this function alone (the target
// attribute; the file's flags stay F/BW/VL/VNNI) and chosen at run time (isa.cpp: the CPU's cpuid,
// the OS's XCR0 and Linux's permission for the tile data).

// Tiles: C 0-3 (row block r, panel p at 2 r + p), A 4-5 (row blocks), B 6-7 (panels). R row blocks
// (ap[r]: the block's repacked chunks, 1 KiB each) x P panels (wp[p]: K16 whole chunks of 16 steps,
// 1 KiB each; then bt[p], the K tail's zero-padded copy, when tail); the sums go to part ([row][64
// columns], 256 bytes per row).
template <int R, int P>
__attribute__((target("amx-tile,amx-int8"))) void s8p_amx_block(const std::int8_t* const ap[2],
                                                                  const std::uint8_t* const wp[2], std::int64_t K16,
                                                                  const std::uint8_t* const bt[2], bool tail,
                                                                  std::int32_t* part) {
  _tile_zero(0);
  if constexpr (P == 2) _tile_zero(1);
  if constexpr (R == 2) _tile_zero(2);
  if constexpr (R == 2 && P == 2) _tile_zero(3);
  const auto step = [&](std::int64_t s, const std::uint8_t* b0, const std::uint8_t* b1) {
    _tile_loadd(4, ap[0] + s * 1024, 64);
    if constexpr (R == 2) _tile_loadd(5, ap[1] + s * 1024, 64);
    _tile_loadd(6, b0, 64);
    if constexpr (P == 2) _tile_loadd(7, b1, 64);
    _tile_dpbsud(0, 4, 6);
    if constexpr (P == 2) _tile_dpbsud(1, 4, 7);
    if constexpr (R == 2) _tile_dpbsud(2, 5, 6);
    if constexpr (R == 2 && P == 2) _tile_dpbsud(3, 5, 7);
  };
  for (std::int64_t s = 0; s < K16; ++s) step(s, wp[0] + s * 1024, wp[1] + s * 1024);
  if (tail) step(K16, bt[0], bt[1]);
  _tile_stored(0, part, 256);
  if constexpr (P == 2) _tile_stored(1, part + 16, 256);
  if constexpr (R == 2) _tile_stored(2, part + 16 * 64, 256);
  if constexpr (R == 2 && P == 2) _tile_stored(3, part + 16 * 64 + 16, 256);
}

// The panel GEMM on AMX tiles: per chunk of rows, the activations repacked into A tiles (per
// 16-row block, per chunk of 16 steps, 16 rows x 64 bytes contiguous; zeros past M and past K):
// rows a_rs = 4 KiB apart at K = 4096 fall into one L1 set, so tiles loaded from the rows in place
// kept missing L1 (measured slower). Then per group of four panels (64 columns), per pair of panels
// and pair of 16-row blocks, the whole K (the pair's panels, 2 x 64 KiB at K = 4096, stay in L2
// while the chunk's row blocks pass over them), then s8p_finish. A panel's K tail (K not a
// multiple of 64) is copied into zero-padded tiles: past it lies the next panel.
__attribute__((target("amx-tile,amx-int8"))) void gemm_s8_panel_amx(const QGemmArgs& g, std::int64_t n_begin,
                                                                      std::int64_t n_end) {
  constexpr std::int64_t kRows = 192;
  const std::int64_t K4 = (g.K + 3) / 4, a_rs = 4 * K4, ps = 64 * K4, K16 = K4 / 16, kt = K4 % 16;
  const std::int64_t chunks = K16 + (kt ? 1 : 0);
  const std::uint8_t* w = reinterpret_cast<const std::uint8_t*>(g.w);
  const std::int64_t chunk_rows = std::min(g.M, kRows), padded = (chunk_rows + 15) / 16 * 16;
  // this thread's scratch, 64-byte aligned (kept between calls: every byte the tiles read is
  // written below, zeros included where rows or K fall short)
  const std::size_t npart = static_cast<std::size_t>(padded * 64), napack = static_cast<std::size_t>(padded * chunks * 64);
  std::int32_t* part = amx_scratch<std::int32_t, struct S8AmxPart>(npart);
  std::int8_t* apack = amx_scratch<std::int8_t, struct S8AmxA>(napack);  // [block][chunk][16][64]
  alignas(64) std::uint8_t btail[4][1024];  // the group's panels' K tails, zero padded
  AmxTileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.rows[t] = 16;
    cfg.colsb[t] = 64;
  }
  _tile_loadconfig(&cfg);
  for (std::int64_t m0 = 0; m0 < g.M; m0 += kRows) {
    const std::int64_t m1 = std::min(g.M, m0 + kRows), nrb = (m1 - m0 + 15) / 16;
    if ((m1 - m0) % 16 != 0 || kt) std::memset(apack, 0, napack);
    for (std::int64_t m = m0; m < m1; ++m) {
      const std::int64_t r = (m - m0) / 16, i = (m - m0) % 16;
      const std::int8_t* src = g.a + m * a_rs;
      std::int8_t* dst = apack + (r * chunks * 16 + i) * 64;
      for (std::int64_t c = 0; c < K16; ++c) std::memcpy(dst + c * 1024, src + c * 64, 64);
      if (kt) std::memcpy(dst + K16 * 1024, src + K16 * 64, static_cast<std::size_t>(4 * kt));
    }
    for (std::int64_t n0 = n_begin; n0 < n_end; n0 += 64) {
      const int np = static_cast<int>(std::min<std::int64_t>(4, (n_end - n0 + 15) / 16));
      const std::uint8_t* w0 = w + (n0 / 16) * ps;
      if (kt) {
        std::memset(btail, 0, sizeof(btail));
        for (int p = 0; p < np; ++p) std::memcpy(btail[p], w0 + p * ps + K16 * 1024, static_cast<std::size_t>(kt * 64));
      }
      for (int p = 0; p < np; p += 2) {
        const std::uint8_t* wp[2] = {w0 + p * ps, w0 + (p + 1) * ps};
        const std::uint8_t* bt[2] = {btail[p], btail[std::min(p + 1, 3)]};
        const bool two_p = p + 1 < np;
        for (std::int64_t r = 0; r < nrb; r += 2) {
          const std::int8_t* ap[2] = {apack + r * chunks * 1024, r + 1 < nrb ? apack + (r + 1) * chunks * 1024 : nullptr};
          std::int32_t* pp = part + r * 16 * 64 + p * 16;
          const bool two_r = r + 1 < nrb;
          if (two_r && two_p) s8p_amx_block<2, 2>(ap, wp, K16, bt, kt != 0, pp);
          else if (two_r) s8p_amx_block<2, 1>(ap, wp, K16, bt, kt != 0, pp);
          else if (two_p) s8p_amx_block<1, 2>(ap, wp, K16, bt, kt != 0, pp);
          else s8p_amx_block<1, 1>(ap, wp, K16, bt, kt != 0, pp);
        }
      }
      s8p_finish(g, part, m0, m1, n0, np, n_end);
    }
  }
  _tile_release();
}

// The AMX table's W8A8: the tiles from kAmxRows activation rows on the panel layout, for K and N
// of at least 64, the AVX-512 kernels otherwise (a GEMV streams the weight once per row either
// way). Hot, 2 threads, Intel Xeon model 167, AMX against AVX-512 VNNI on MobileNetV2-like shapes
// (M, N, K): (8192, 16, 32) 0.86x, (8192, 96, 16) 0.75x, (2048, 144, 24) 0.78x, (512, 192, 32)
// 0.82x, (8192, 32, 288) 0.93x, (2048, 24, 144) 0.94x, (8192, 64, 64) 0.90-1.00x: a tile of a short
// K is mostly zeros, and a narrow N repacks the rows for little work; (512, 64, 192) 0.99-1.00x,
// (2048, 64, 576) 1.08x, (512, 128, 1152) 1.27-1.33x, (128, 960, 160) 1.48-1.58x, (128, 1280, 320)
// 1.94-2.04x (docs/benchmarks.md, thirty-sixth session).
constexpr std::int64_t kAmxRows = 16, kAmxMinK = 128, kAmxMinN = 64;
void gemm_s8(const QGemmArgs& g, std::int64_t n_begin, std::int64_t n_end);
void gemm_s8_amx(const QGemmArgs& g, std::int64_t n_begin, std::int64_t n_end) {
  if (g.panel && g.M >= kAmxRows && g.K >= kAmxMinK && g.N >= kAmxMinN) return gemm_s8_panel_amx(g, n_begin, n_end);
  gemm_s8(g, n_begin, n_end);
}
#endif  // QATKIT_AMX_KERNELS

void gemm_s8(const QGemmArgs& g, std::int64_t n_begin, std::int64_t n_end) {
  if (g.panel) return gemm_s8_panel(g, n_begin, n_end);
  if (g.M < 4) return gemv_s8(g, n_begin, n_end);
  const __m512i ones = _mm512_set1_epi8(1), flip = _mm512_set1_epi8(static_cast<char>(0x80));
  constexpr std::int64_t kKBlock = 1024;  // 16 weight rows' slice (16 KiB) + a 4-row tile's (4 KiB): L1
  std::vector<std::uint8_t> au(static_cast<std::size_t>(g.M * g.K));  // a + 128, once per call
  for (std::int64_t i = 0; i < g.M * g.K; i += 64) {
    const __mmask64 mask = i + 64 <= g.M * g.K ? ~__mmask64{0} : (std::uint64_t{1} << (g.M * g.K - i)) - 1;
    _mm512_mask_storeu_epi8(au.data() + i, mask, _mm512_xor_si512(_mm512_maskz_loadu_epi8(mask, g.a + i), flip));
  }
  std::vector<std::int32_t> part(static_cast<std::size_t>(g.K > kKBlock ? g.M * 256 : 0));  // [m][16 columns][16 lanes]
  for (std::int64_t n0 = n_begin; n0 < n_end; n0 += 16) {
    const std::int64_t n1 = std::min(n_end, n0 + 16);
    std::uint32_t wsum[16];  // sum_k w[n, k] of this block's rows, four rows' chains at a time
    std::int64_t n = n0;
    for (; n + 4 <= n1; n += 4) {
      __m512i s[4] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512()};
      for (std::int64_t k = 0; k < g.K; k += 64) {
        #pragma GCC unroll 4
        for (int j = 0; j < 4; ++j) s[j] = _mm512_dpbusd_epi32(s[j], ones, load_k(g.w + (n + j) * g.K, k, g.K));
      }
      for (int j = 0; j < 4; ++j) wsum[n + j - n0] = hsum(s[j]);
    }
    for (; n < n1; ++n) {
      __m512i s = _mm512_setzero_si512();
      for (std::int64_t k = 0; k < g.K; k += 64) s = _mm512_dpbusd_epi32(s, ones, load_k(g.w + n * g.K, k, g.K));
      wsum[n - n0] = hsum(s);
    }
    for (std::int64_t k0 = 0; k0 < g.K; k0 += kKBlock) {
      const std::int64_t k1 = std::min(g.K, k0 + kKBlock);
      std::int64_t m = 0;
      for (; m + 6 <= g.M; m += 6) {
        std::int64_t n = n0;
        for (; n + 4 <= n1; n += 4) s8_block<6, 4>(g, au.data(), m, n, k0, k1, part.data() + (m * 16 + (n - n0)) * 16, wsum + (n - n0));
        for (; n < n1; ++n) s8_block<6, 1>(g, au.data(), m, n, k0, k1, part.data() + (m * 16 + (n - n0)) * 16, wsum + (n - n0));
      }
      for (; m + 4 <= g.M; m += 4) {
        std::int64_t n = n0;
        for (; n + 4 <= n1; n += 4) s8_block<4, 4>(g, au.data(), m, n, k0, k1, part.data() + (m * 16 + (n - n0)) * 16, wsum + (n - n0));
        for (; n < n1; ++n) s8_block<4, 1>(g, au.data(), m, n, k0, k1, part.data() + (m * 16 + (n - n0)) * 16, wsum + (n - n0));
      }
      for (; m < g.M; ++m) {
        std::int64_t n = n0;
        for (; n + 4 <= n1; n += 4) s8_block<1, 4>(g, au.data(), m, n, k0, k1, part.data() + (m * 16 + (n - n0)) * 16, wsum + (n - n0));
        for (; n < n1; ++n) s8_block<1, 1>(g, au.data(), m, n, k0, k1, part.data() + (m * 16 + (n - n0)) * 16, wsum + (n - n0));
      }
    }
  }
}


}  // namespace

void add_w8a8(QGemmKernels& t) { t.gemm_s8 = &gemm_s8; }

#ifdef QATKIT_AMX_KERNELS
void add_w8a8_amx(QGemmKernels& t) { t.gemm_s8 = &gemm_s8_amx; }
#endif

}  // namespace qatkit::kernels::cpu::avx512
#endif
