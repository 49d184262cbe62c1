// Integer GEMM compiled with AVX-512 F/BW/VL + VNNI (on top of AVX2): vpdpbusd multiplies 64
// unsigned x signed byte pairs and adds each group of four into an int32 lane without any int16
// step, so no product needs the AVX2 table's sign trick:
//   W8A8:    (a + 128) as the unsigned operand, w as the signed one; 128 * sum_k w[n, k] comes off
//            (summed once per column block with vpdpbusd against ones); K's last step masked.
//   ternary: the 2-bit codes {0, 1, 2} unsigned, the activations signed (finish_t2 as everywhere).
//   binary:  the weight bits are a byte mask as they stand (__mmask64: bit i selects byte i, the
//            1-bit file layout's order), expanded to bytes {0, 1}: vpdpbusd of those and the
//            activations sums the activations at set bits.
//   XNOR:    vpopcntq on 64 bytes at a time where the CPU has AVX512_VPOPCNTDQ (else AVX2's kernel).
// Exact integer sums throughout (modulo 2^32, as the baseline), so every output has the baseline's
// bits. W4A8: vpdpbusd on the nibbles of 16 weight rows at once, one row per lane. Weight-only W4
// (float activations): the same panel, dequantized in registers into float32 FMAs.
#include "qgemm_cpu.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
// GCC 12's AVX-512 intrinsics (broadcast / extract / reduce) pass _mm512_undefined_* as their
// don't-care source operand, which its uninitialized-use analysis flags once inlined here (a known
// false positive): the warnings are off for this file only.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "loops.h"

namespace qatkit::kernels::cpu {
namespace {

inline std::uint32_t hsum(__m512i v) { return static_cast<std::uint32_t>(_mm512_reduce_add_epi32(v)); }

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

// Transposes a 16 x 16 matrix of dwords held as 16 rows: r[e] becomes column e (lane i = old r[i][e]).
inline void transpose16(__m512i r[16]) {
  __m512i t[16];
  #pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  __m512i u[16];  // u[4i + j], 128-bit lane L: element 4L + j of rows 4i .. 4i + 3
  #pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {
    u[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
    u[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
    u[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    u[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
  #pragma GCC unroll 4
  for (int j = 0; j < 4; ++j) {  // 4 x 4 transpose of 128-bit lanes across u[j], u[4 + j], u[8 + j], u[12 + j]
    const __m512i v0 = _mm512_shuffle_i32x4(u[j], u[4 + j], 0x44), v1 = _mm512_shuffle_i32x4(u[j], u[4 + j], 0xEE);
    const __m512i v2 = _mm512_shuffle_i32x4(u[8 + j], u[12 + j], 0x44), v3 = _mm512_shuffle_i32x4(u[8 + j], u[12 + j], 0xEE);
    r[j] = _mm512_shuffle_i32x4(v0, v2, 0x88);
    r[4 + j] = _mm512_shuffle_i32x4(v0, v2, 0xDD);
    r[8 + j] = _mm512_shuffle_i32x4(v1, v3, 0x88);
    r[12 + j] = _mm512_shuffle_i32x4(v1, v3, 0xDD);
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

// The AMX kernels need a compiler with AMX intrinsics (GCC 11+, clang 12+); without them the table
// "amx" is absent (qgemm_amx returns nullptr) and AMX CPUs run the AVX-512 table.
#if defined(__has_include)
#if __has_include(<amxtileintrin.h>) || __has_include(<amxintrin.h>)
#define QATKIT_AMX_KERNELS 1
#endif
#endif

#ifdef QATKIT_AMX_KERNELS
// Intel AMX (AMX-TILE + AMX-INT8: Sapphire Rapids and later; the table "amx", isa.h): tdpbsud
// multiplies a tile of 16 activation rows x 64 bytes (signed) by a tile of 16 rows x 64 bytes of
// the weight (unsigned, four k per 32-bit lane: a panel's 16 steps as they lie, 1 KiB contiguous)
// and adds the 16 x 16 int32 dot products into a third tile: 16 K-steps of a 16 x 16 output block
// per instruction. Its sums are sum_k a * (w + 128), as vpdpbusd's (exact, modulo 2^32), so
// s8p_finish gives the same bits from them. Compiled for AMX in this function alone (the target
// attribute; the file's flags stay F/BW/VL/VNNI) and chosen at run time (isa.cpp: the CPU's cpuid,
// the OS's XCR0 and Linux's permission for the tile data).
// This thread's scratch of n T, 64-byte aligned (a tile row that crosses a cache line costs two
// accesses: tiles from a vector's 16-byte aligned storage ran 1.3-1.5x slower).
template <class T, class Tag>
T* amx_scratch(std::size_t n) {
  const auto p = reinterpret_cast<std::uintptr_t>(detail::thread_scratch<T, Tag>(n + 64 / sizeof(T)));
  return reinterpret_cast<T*>((p + 63) & ~std::uintptr_t{63});
}

struct alignas(64) AmxTileConfig {
  std::uint8_t palette = 1, start_row = 0;
  std::uint8_t reserved[14] = {};
  std::uint16_t colsb[16] = {};
  std::uint8_t rows[16] = {};
};

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

// ---------------------------------------------------------------- ternary (W2A8)

// 64 code bytes = two 128-weight blocks; shift 2i and mask 3 give the codes of k = 32i + j of the
// first block in bytes 0-31 and of the second in bytes 32-63, so the activations are the two
// matching 32-byte runs. An odd last block runs with the upper half masked to zero.
inline __m512i t2_act(const std::int8_t* a, std::int64_t b, int i, bool two) {
  const __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + b + 32 * i));
  const __m256i hi = two ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + b + 128 + 32 * i)) : _mm256_setzero_si256();
  return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

template <int MR, int NR>
void t2_block(const QGemmPackedArgs& g, std::int64_t m, std::int64_t n) {
  const std::int64_t KB = g.K_pad / 4;
  const __m512i mask3 = _mm512_set1_epi8(3);
  __m512i acc[MR][NR];
  #pragma GCC unroll 4
  for (int i = 0; i < MR; ++i)
    #pragma GCC unroll 4
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_si512();
  for (std::int64_t b = 0; b < g.K_pad; b += 256) {
    const bool two = b + 256 <= g.K_pad;
    __m512i w[NR];
    #pragma GCC unroll 4
    for (int j = 0; j < NR; ++j) {
      const std::uint8_t* p = g.w + (n + j) * KB + b / 4;
      w[j] = two ? _mm512_loadu_si512(p) : _mm512_maskz_loadu_epi8(0xFFFFFFFFull, p);
    }
    #pragma GCC unroll 4
    for (int s = 0; s < 4; ++s) {
      __m512i c[NR];
      #pragma GCC unroll 4
      for (int j = 0; j < NR; ++j) c[j] = _mm512_and_si512(_mm512_srli_epi16(w[j], 2 * s), mask3);
      #pragma GCC unroll 4
      for (int i = 0; i < MR; ++i) {
        const __m512i av = t2_act(g.a + (m + i) * g.K_pad, b, s, two);
        #pragma GCC unroll 4
        for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], c[j], av);
      }
    }
  }
  #pragma GCC unroll 4
  for (int i = 0; i < MR; ++i)
    #pragma GCC unroll 4
    for (int j = 0; j < NR; ++j)
      g.y[(m + i) * g.y_rs + (n + j) * g.y_cs] = detail::finish_t2(hsum(acc[i][j]), g, m + i, n + j);
}

// ---------------------------------------------------------------- binary (W1A8)

// Activations at K_pad (a multiple of 32): 64-byte steps, a last 32-byte step masked.
template <int MR, int NR>
void b1_block(const QGemmPackedArgs& g, std::int64_t m, std::int64_t n) {
  const std::int64_t KB = g.K_pad / 8;
  const __m512i ones = _mm512_set1_epi8(1);
  __m512i acc[MR][NR];
  #pragma GCC unroll 4
  for (int i = 0; i < MR; ++i)
    #pragma GCC unroll 4
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_si512();
  for (std::int64_t k = 0; k < g.K_pad; k += 64) {
    const bool full = k + 64 <= g.K_pad;
    __mmask64 wm[NR];
    #pragma GCC unroll 4
    for (int j = 0; j < NR; ++j) {
      const std::uint8_t* p = g.w + (n + j) * KB + k / 8;
      std::uint64_t bits;
      if (full) {
        std::memcpy(&bits, p, 8);
      } else {
        std::uint32_t half;
        std::memcpy(&half, p, 4);
        bits = half;
      }
      wm[j] = _cvtu64_mask64(bits);
    }
    __m512i wb[NR];  // the bits as bytes {0, 1}: the unsigned operand, so sum_k bit_k * a_k is one vpdpbusd
    #pragma GCC unroll 4
    for (int j = 0; j < NR; ++j) wb[j] = _mm512_maskz_mov_epi8(wm[j], ones);
    #pragma GCC unroll 4
    for (int i = 0; i < MR; ++i) {
      const std::int8_t* ap = g.a + (m + i) * g.K_pad + k;
      const __m512i a = full ? _mm512_loadu_si512(ap) : _mm512_maskz_loadu_epi8(0xFFFFFFFFull, ap);
      #pragma GCC unroll 4
      for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], wb[j], a);
    }
  }
  #pragma GCC unroll 4
  for (int i = 0; i < MR; ++i)
    #pragma GCC unroll 4
    for (int j = 0; j < NR; ++j)
      g.y[(m + i) * g.y_rs + (n + j) * g.y_cs] = detail::finish_b1(hsum(acc[i][j]), g, m + i, n + j);
}

// Sums each of 16 vectors' lanes: lane i of the result is the sum of r[i]'s 16 lanes (modulo 2^32).
inline __m512i reduce16(__m512i r[16]) {
  __m512i p[8], q[4];
  for (int i = 0; i < 8; ++i)  // per 128-bit lane: [r0 lanes 0+2, r1 0+2, r0 1+3, r1 1+3]
    p[i] = _mm512_add_epi32(_mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]), _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]));
  for (int i = 0; i < 4; ++i)  // per 128-bit lane: the lane's sums of r[4i .. 4i + 3] in order
    q[i] = _mm512_add_epi32(_mm512_unpacklo_epi64(p[2 * i], p[2 * i + 1]), _mm512_unpackhi_epi64(p[2 * i], p[2 * i + 1]));
  // across 128-bit lanes: 0x88 takes lanes (0, 2) of each source, 0xDD lanes (1, 3)
  const __m512i s0 = _mm512_add_epi32(_mm512_shuffle_i32x4(q[0], q[1], 0x88), _mm512_shuffle_i32x4(q[0], q[1], 0xDD));
  const __m512i s1 = _mm512_add_epi32(_mm512_shuffle_i32x4(q[2], q[3], 0x88), _mm512_shuffle_i32x4(q[2], q[3], 0xDD));
  // s0 lanes: [q0 (0+1), q0 (2+3), q1 (0+1), q1 (2+3)] -> one more fold gives [q0, q1, q2, q3]
  return _mm512_add_epi32(_mm512_shuffle_i32x4(s0, s1, 0x88), _mm512_shuffle_i32x4(s0, s1, 0xDD));
}

// Outputs y[m, n .. n + 16) of the packed kernels from their int32 sums: requantize's operations
// (float(acc) * out_scale, + bias) in vectors, so its bits; a conv's columns y_cs apart.
inline void store_requantized16(const QGemmPackedArgs& g, std::int64_t m, std::int64_t n, __m512i acc) {
  __m512 y = _mm512_mul_ps(_mm512_cvtepi32_ps(acc), _mm512_loadu_ps(g.out_scale + n));
  if (g.bias) y = _mm512_add_ps(y, _mm512_loadu_ps(g.bias + n));
  if (g.y_cs == 1) {
    _mm512_storeu_ps(g.y + m * g.y_rs + n, y);
  } else {
    alignas(64) float t[16];
    _mm512_store_ps(t, y);
    for (int j = 0; j < 16; ++j) g.y[m * g.y_rs + (n + j) * g.y_cs] = t[j];
  }
}

// GEMV weight streams: rows this far ahead of the block in hand are prefetched into L2 a line or a
// few per K step, spread over the arithmetic (32 KiB ahead at K = 4096 for 1-bit rows; 48-128 rows
// measured alike; a burst of prefetches per block ran ~1.35x slower).
constexpr std::int64_t kAhead = 64;

// acc += vpdpbusd(u, s) in place: GCC 12 copies the accumulator of _mm512_dpbusd_epi32 into a
// fresh register and back on every call inside an unrolled loop (two moves per product, which fill
// the front end); the asm form keeps it where it is.
inline void dpbusd_inplace(__m512i& acc, __m512i u, __m512i s) {
  asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(u), "v"(s));
}

// sum_k bit[r, k] * a[k] of 8 weight rows (rows KB bytes apart) in 8 accumulators: 8 independent
// vpdpbusd chains (latency hidden), each row's 64 bits loaded straight into a mask register. pf (or
// null): 8 rows further on (K_pad bytes), prefetched into L2 one line per step (kAhead).
inline void b1_dot8(const std::uint8_t* w, std::int64_t KB, const std::int8_t* ap, std::int64_t K_pad, const char* pf,
                    __m512i* out) {
  const __m512i ones = _mm512_set1_epi8(1);
  __m512i c0 = _mm512_setzero_si512(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0, c7 = c0;
  const auto step = [&](__m512i a, std::int64_t byte, bool full) {
    const auto bits = [&](int j) {
      std::uint64_t b = 0;
      std::memcpy(&b, w + j * KB + byte, full ? 8 : 4);
      return _mm512_maskz_mov_epi8(_cvtu64_mask64(b), ones);
    };
    dpbusd_inplace(c0, bits(0), a);
    dpbusd_inplace(c1, bits(1), a);
    dpbusd_inplace(c2, bits(2), a);
    dpbusd_inplace(c3, bits(3), a);
    dpbusd_inplace(c4, bits(4), a);
    dpbusd_inplace(c5, bits(5), a);
    dpbusd_inplace(c6, bits(6), a);
    dpbusd_inplace(c7, bits(7), a);
  };
  std::int64_t k = 0;
  if (pf) {
    for (; k + 64 <= K_pad; k += 64) {
      _mm_prefetch(pf + k, _MM_HINT_T1);
      step(_mm512_loadu_si512(ap + k), k / 8, true);
    }
  }
  for (; k + 64 <= K_pad; k += 64) step(_mm512_loadu_si512(ap + k), k / 8, true);
  if (k < K_pad) step(_mm512_maskz_loadu_epi8(0xFFFFFFFFull, ap + k), k / 8, false);  // a last 32-byte step
  out[0] = c0, out[1] = c1, out[2] = c2, out[3] = c3, out[4] = c4, out[5] = c5, out[6] = c6, out[7] = c7;
}

// The binary GEMV: 16 weight rows against one activation row (two passes of eight rows), one
// 16-lane reduction and the requantization of 16 outputs in vectors (the scalar form's operations).
void b1_gemv16(const QGemmPackedArgs& g, std::int64_t m, std::int64_t n, const char* pf) {
  const std::int64_t KB = g.K_pad / 8;
  const std::int8_t* ap = g.a + m * g.K_pad;
  __m512i acc[16];
  b1_dot8(g.w + n * KB, KB, ap, g.K_pad, pf, acc);
  b1_dot8(g.w + (n + 8) * KB, KB, ap, g.K_pad, pf ? pf + 8 * KB : nullptr, acc + 8);
  // finish_b1: 2 * sum_set - a_sum + corr, then requantize
  const __m512i s = _mm512_add_epi32(
      _mm512_sub_epi32(_mm512_slli_epi32(reduce16(acc), 1), _mm512_set1_epi32(g.a_sum[m])),
      _mm512_loadu_si512(g.corr + n));
  store_requantized16(g, m, n, s);
}

// Bytes per weight row of the packed kernels (the ternary and binary layouts, XNOR's).
inline std::int64_t row_bytes(const QGemmPackedArgs& g, int bits) { return g.K_pad * bits / 8; }
inline std::int64_t row_bytes(const QGemmXnorArgs& g, int) { return g.KB; }

// Register blocks over 16-column blocks. With fewer than 4 activation rows each weight row is read
// once per call, in rows of a few hundred bytes that the hardware prefetcher does not follow far
// enough: the rows two blocks ahead are prefetched into L2 (Bits: the layout's bits per weight).
template <class Args, int Bits, void (*B44)(const Args&, std::int64_t, std::int64_t),
          void (*B41)(const Args&, std::int64_t, std::int64_t), void (*B14)(const Args&, std::int64_t, std::int64_t),
          void (*B11)(const Args&, std::int64_t, std::int64_t)>
void blocked(const Args& g, std::int64_t n_begin, std::int64_t n_end) {
  const std::int64_t rb = row_bytes(g, Bits);
  for (std::int64_t n0 = n_begin; n0 < n_end; n0 += 16) {  // 16 weight rows stay in L1 across every m
    const std::int64_t n1 = std::min(n_end, n0 + 16);
    if (g.M < 4 && n0 + 32 < n_end) {
      const char* next = reinterpret_cast<const char*>(g.w + (n0 + 32) * rb);
      const std::int64_t bytes = std::min<std::int64_t>(16, n_end - n0 - 32) * rb;
      for (std::int64_t o = 0; o < bytes; o += 64) _mm_prefetch(next + o, _MM_HINT_T1);
    }
    std::int64_t m = 0;
    for (; m + 4 <= g.M; m += 4) {
      std::int64_t n = n0;
      for (; n + 4 <= n1; n += 4) B44(g, m, n);
      for (; n < n1; ++n) B41(g, m, n);
    }
    for (; m < g.M; ++m) {
      std::int64_t n = n0;
      for (; n + 4 <= n1; n += 4) B14(g, m, n);
      for (; n < n1; ++n) B11(g, m, n);
    }
  }
}

// The ternary GEMV. One activation row laid out once per call as the steps read it (re: 64 bytes
// per code shift s of each 256-weight step, the two matching 32-byte runs, zeros past an odd last
// block), then 16 weight rows in four passes of four rows x four code shifts (t2_dot4; vpdpbusd in
// place), the stream 64 rows ahead prefetched into L2 a few lines per step, one 16-lane reduction,
// the requantization in vectors (finish_t2's operations).
inline void t2_layout_row(const std::int8_t* a, std::int64_t K_pad, std::int8_t* re) {  // re: K_pad rounded up to 256
  for (std::int64_t b = 0; b < K_pad; b += 256)
    for (int s = 0; s < 4; ++s) _mm512_storeu_si512(re + b + 64 * s, t2_act(a, b, s, b + 256 <= K_pad));
}

// 4 weight rows, the codes of shift s masked in place (w & (3 << 2s): 4^s times the code) into an
// accumulator of their own: no shift per product, where vpsrlw and vpdpbusd share one port (the
// shift form ran at ~8 cycles per 64 weight bytes on the model 167 Xeon: 4 of each on port 0). A
// lane's sum of shift s is a multiple of 4^s, so the >> 2s that combines them is exact (|sum| <=
// 256 K_pad: int32 for K_pad < 2^23, as the shift form's). pf: 4 rows further on (K_pad bytes).
inline void t2_dot4(const std::uint8_t* w, std::int64_t KB, const std::int8_t* re, std::int64_t K_pad, const char* pf,
                    __m512i* out) {
  __m512i c[4][4];
  #pragma GCC unroll 4
  for (int r = 0; r < 4; ++r)
    #pragma GCC unroll 4
    for (int s = 0; s < 4; ++s) c[r][s] = _mm512_setzero_si512();
  for (std::int64_t b = 0; b < K_pad; b += 256) {
    const bool two = b + 256 <= K_pad;
    if (pf) {  // 4 rows' worth of the stream ahead (4 x KB = K_pad bytes): 256 bytes per step
      #pragma GCC unroll 4
      for (int l = 0; l < 4; ++l) _mm_prefetch(pf + b + 64 * l, _MM_HINT_T1);
    }
    __m512i wv[4];
    #pragma GCC unroll 4
    for (int r = 0; r < 4; ++r) {
      const std::uint8_t* p = w + r * KB + b / 4;
      wv[r] = two ? _mm512_loadu_si512(p) : _mm512_maskz_loadu_epi8(0xFFFFFFFFull, p);
    }
    #pragma GCC unroll 4
    for (int s = 0; s < 4; ++s) {
      const __m512i av = _mm512_loadu_si512(re + b + 64 * s);
      const __m512i mask = _mm512_set1_epi8(static_cast<char>(3 << (2 * s)));
      #pragma GCC unroll 4
      for (int r = 0; r < 4; ++r) dpbusd_inplace(c[r][s], _mm512_and_si512(wv[r], mask), av);
    }
  }
  #pragma GCC unroll 4
  for (int r = 0; r < 4; ++r) {
    out[r] = _mm512_add_epi32(_mm512_add_epi32(c[r][0], _mm512_srai_epi32(c[r][1], 2)),
                              _mm512_add_epi32(_mm512_srai_epi32(c[r][2], 4), _mm512_srai_epi32(c[r][3], 6)));
  }
}

void t2_gemv16(const QGemmPackedArgs& g, std::int64_t m, std::int64_t n, const std::int8_t* re, const char* pf) {
  const std::int64_t KB = g.K_pad / 4;
  __m512i acc[16];
  #pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) t2_dot4(g.w + (n + 4 * i) * KB, KB, re, g.K_pad, pf ? pf + 4 * i * KB : nullptr, acc + 4 * i);
  // finish_t2: sum_ac - a_sum + corr, then requantize
  const __m512i s = _mm512_add_epi32(_mm512_sub_epi32(reduce16(acc), _mm512_set1_epi32(g.a_sum[m])),
                                     _mm512_loadu_si512(g.corr + n));
  store_requantized16(g, m, n, s);
}

void gemm_t2(const QGemmPackedArgs& g, std::int64_t n_begin, std::int64_t n_end) {
  if (g.M < 4) {  // GEMV: 16 rows at a time, the rest by the register blocks
    const std::int64_t rb = row_bytes(g, 2);
    const std::int64_t Kr = (g.K_pad + 255) / 256 * 256;  // whole steps: an odd last block's upper half zero
    std::vector<std::int8_t> re(static_cast<std::size_t>(g.M * Kr));
    for (std::int64_t m = 0; m < g.M; ++m) t2_layout_row(g.a + m * g.K_pad, g.K_pad, re.data() + m * Kr);
    std::int64_t n0 = n_begin;
    for (; n0 + 16 <= n_end; n0 += 16) {
      const char* pf = n0 + kAhead + 16 <= n_end ? reinterpret_cast<const char*>(g.w + (n0 + kAhead) * rb) : nullptr;
      for (std::int64_t m = 0; m < g.M; ++m) t2_gemv16(g, m, n0, re.data() + m * Kr, m == 0 ? pf : nullptr);
    }
    if (n0 == n_end) return;
    n_begin = n0;
  }
  blocked<QGemmPackedArgs, 2, t2_block<4, 4>, t2_block<4, 1>, t2_block<1, 4>, t2_block<1, 1>>(g, n_begin, n_end);
}

// Binary on the panel layout (QGemmPackedArgs::panel) with 4 or more activation rows: per step (8
// weights of 32 rows) and 16-row half, the half's 16 bytes broadcast to every 128-bit chunk, vpshufb
// copies row L's byte into all four bytes of lane L, and an and with (1, 2, 4, 8) (then (16, 32, 64,
// 128)) and vpminub with 1 give the 0 / 1 bytes of k = 8 s .. 8 s + 3 (+ 4 .. 7) of the 16 rows: one
// row per 32-bit lane, so vpdpbusd with four broadcast activations adds 16 rows' sums into 16 lanes
// (no horizontal sums). Five uops expand 128 weights for MR activation rows, two vpdpbusd per row:
// the vpdpbusd rate of the row layout's blocks at MR = 4, where the lookup tables (fewer uops per
// weight for one activation row, but every row its own lookups) ran 1.4x slower at batch 64.
// idx: byte p holds p / 4 (in every 128-bit chunk, the chunk's four lanes' rows 4c .. 4c + 3).
template <int MR>
void b1p_block(const QGemmPackedArgs& g, std::int64_t m, std::int64_t R, std::int64_t n_begin, std::int64_t n_end,
               __m512i idx) {
  const std::int64_t S = g.K_pad / 8;
  const std::uint8_t* wb = g.w + R * S * 32;
  const __m512i blo = _mm512_set1_epi32(0x08040201), bhi = _mm512_set1_epi32(static_cast<int>(0x80402010u));
  const __m512i ones = _mm512_set1_epi8(1);
  __m512i acc[MR][2];  // [activation row][half]
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 2
    for (int j = 0; j < 2; ++j) acc[i][j] = _mm512_setzero_si512();
  for (std::int64_t s = 0; s < S; ++s) {
    __m512i wv[4];
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {
      const __m512i rep = _mm512_shuffle_epi8(
          _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wb + 32 * s + 16 * h))), idx);
      wv[2 * h] = _mm512_min_epu8(_mm512_and_si512(rep, blo), ones);
      wv[2 * h + 1] = _mm512_min_epu8(_mm512_and_si512(rep, bhi), ones);
    }
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const std::int8_t* ap = g.a + (m + i) * g.K_pad + 8 * s;
      std::int32_t a_lo, a_hi;
      std::memcpy(&a_lo, ap, 4);
      std::memcpy(&a_hi, ap + 4, 4);
      const __m512i v0 = _mm512_set1_epi32(a_lo), v1 = _mm512_set1_epi32(a_hi);
      dpbusd_inplace(acc[i][0], wv[0], v0);
      dpbusd_inplace(acc[i][1], wv[2], v0);
      dpbusd_inplace(acc[i][0], wv[1], v1);
      dpbusd_inplace(acc[i][1], wv[3], v1);
    }
  }
  for (int i = 0; i < MR; ++i) {
    for (int h = 0; h < 2; ++h) {
      const std::int64_t n = R * 32 + 16 * h;
      const __m512i sums = acc[i][h];
      if (n >= n_begin && n + 16 <= n_end) {  // finish_b1: 2 * sum_set - a_sum + corr, then requantize
        const __m512i t = _mm512_add_epi32(
            _mm512_sub_epi32(_mm512_slli_epi32(sums, 1), _mm512_set1_epi32(g.a_sum[m + i])),
            _mm512_loadu_si512(g.corr + n));
        store_requantized16(g, m + i, n, t);
      } else {
        alignas(64) std::int32_t t[16];
        _mm512_store_si512(t, sums);
        for (std::int64_t r = std::max(n, n_begin); r < std::min(n + 16, n_end); ++r)
          g.y[(m + i) * g.y_rs + r * g.y_cs] = detail::finish_b1(static_cast<std::uint32_t>(t[r - n]), g, m + i, r);
      }
    }
  }
}

void gemm_b1(const QGemmPackedArgs& g, std::int64_t n_begin, std::int64_t n_end) {
  if (g.panel) {
    if (g.M < 4) return qgemm_avx2()->gemm_b1(g, n_begin, n_end);  // the lookup-table kernel
    alignas(64) std::int8_t lane_of[64];
    for (int p = 0; p < 64; ++p) lane_of[p] = static_cast<std::int8_t>(p / 4);
    const __m512i idx = _mm512_load_si512(lane_of);
    for (std::int64_t R = n_begin / 32; R * 32 < n_end; ++R) {  // 32 weight rows stay in L1 across every m
      std::int64_t m = 0;
      for (; m + 8 <= g.M; m += 8) b1p_block<8>(g, m, R, n_begin, n_end, idx);
      for (; m + 4 <= g.M; m += 4) b1p_block<4>(g, m, R, n_begin, n_end, idx);
      for (; m < g.M; ++m) b1p_block<1>(g, m, R, n_begin, n_end, idx);
    }
    return;
  }
  if (g.M < 4) {  // GEMV: 16 rows at a time, the rest by the register blocks
    const std::int64_t rb = row_bytes(g, 1);
    std::int64_t n0 = n_begin;
    for (; n0 + 16 <= n_end; n0 += 16) {
      const char* pf = n0 + kAhead + 16 <= n_end ? reinterpret_cast<const char*>(g.w + (n0 + kAhead) * rb) : nullptr;
      for (std::int64_t m = 0; m < g.M; ++m) b1_gemv16(g, m, n0, m == 0 ? pf : nullptr);
    }
    if (n0 == n_end) return;
    n_begin = n0;
  }
  blocked<QGemmPackedArgs, 1, b1_block<4, 4>, b1_block<4, 1>, b1_block<1, 4>, b1_block<1, 1>>(g, n_begin, n_end);
}

// ---------------------------------------------------------------- XNOR (W1A1)

// popcount(a ^ w) by vpopcntq (AVX512_VPOPCNTDQ: Ice Lake and later, Zen 4), 64 bytes of each pair
// per step into 64-bit lanes: xor, popcount, add, three uops per 512 weight-activation pairs where
// the nibble-lookup popcount took eight. Compiled for that extension alone (the target attribute;
// the file's flags stay F/BW/VL/VNNI) and chosen at run time; a CPU without it (Skylake-X, Cascade
// Lake) runs the AVX2 table's XNOR kernel. The last step of a row is masked (zero bytes count 0).
template <int MR, int NR>
__attribute__((target("avx512vpopcntdq"))) void xnor_block(const QGemmXnorArgs& g, std::int64_t m, std::int64_t n) {
  __m512i acc[MR][NR];
#pragma GCC unroll 4
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_si512();
  for (std::int64_t b = 0; b < g.KB; b += 64) {
    const __mmask64 mask = b + 64 <= g.KB ? ~__mmask64{0} : (std::uint64_t{1} << (g.KB - b)) - 1;
    __m512i a[MR];
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i) a[i] = _mm512_maskz_loadu_epi8(mask, g.a + (m + i) * g.KB + b);
#pragma GCC unroll 4
    for (int j = 0; j < NR; ++j) {
      const __m512i w = _mm512_maskz_loadu_epi8(mask, g.w + (n + j) * g.KB + b);
#pragma GCC unroll 4
      for (int i = 0; i < MR; ++i) acc[i][j] = _mm512_add_epi64(acc[i][j], _mm512_popcnt_epi64(_mm512_xor_si512(a[i], w)));
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j)
      g.y[(m + i) * g.y_rs + (n + j) * g.y_cs] =
          detail::finish_xnor(_mm512_reduce_add_epi64(acc[i][j]), g, m + i, n + j);
}

// XNOR on 16 weight rows transposed by qwords: per block, wt[q][r] = qword q of row r (zeros past
// KB and past the block's rows), so one vpopcntq of a broadcast activation qword xor wt[q] counts 8
// rows' differing bits into 8 int64 lanes: no horizontal sums, no partial 64-byte steps (a 3x3 conv
// over 32 channels has rows of 36 bytes), and the finish (finish_xnor's operations: the zero-mask
// correction, a_k - 2 * count, float(acc) * (row_scale * col_scale), + bias) runs on 8 lanes at
// once. MR activation rows per pass share each wt load.
// One pass of xnor_rows_t over the qwords: acc += popcount(a ^ w) (XOR), or acc -= popcount(z & w)
// (the zero-mask correction, rows with has_zero only; QGemmXnorArgs reads z nowhere else).
template <int MR, bool ZeroPass>
__attribute__((target("avx512vpopcntdq"))) inline void xnor_pass_t(const QGemmXnorArgs& g, std::int64_t m,
                                                                   const std::uint64_t* wt, std::int64_t Q,
                                                                   __m512i (&acc)[MR][2]) {
  const std::uint8_t* rows = ZeroPass ? g.z : g.a;
  const std::int64_t Qf = g.KB / 8;  // whole qwords of an activation row; a 4-byte tail when KB % 8
  for (std::int64_t q = 0; q < Q; ++q) {
    const __m512i w0 = _mm512_loadu_si512(wt + q * 16), w1 = _mm512_loadu_si512(wt + q * 16 + 8);
    #pragma GCC unroll 4
    for (int i = 0; i < MR; ++i) {
      const std::uint8_t* r = rows + (m + i) * g.KB + q * 8;
      std::uint64_t v = 0;
      if (ZeroPass && !g.has_zero[m + i]) {
      } else if (q < Qf) {
        std::memcpy(&v, r, 8);
      } else {
        std::uint32_t t;
        std::memcpy(&t, r, 4);
        v = t;
      }
      const __m512i a = _mm512_set1_epi64(static_cast<long long>(v));
      if (ZeroPass) {
        acc[i][0] = _mm512_sub_epi64(acc[i][0], _mm512_popcnt_epi64(_mm512_and_si512(a, w0)));
        acc[i][1] = _mm512_sub_epi64(acc[i][1], _mm512_popcnt_epi64(_mm512_and_si512(a, w1)));
      } else {
        acc[i][0] = _mm512_add_epi64(acc[i][0], _mm512_popcnt_epi64(_mm512_xor_si512(a, w0)));
        acc[i][1] = _mm512_add_epi64(acc[i][1], _mm512_popcnt_epi64(_mm512_xor_si512(a, w1)));
      }
    }
  }
}

template <int MR>
__attribute__((target("avx512vpopcntdq"))) void xnor_rows_t(const QGemmXnorArgs& g, std::int64_t m, std::int64_t n,
                                                            int nr, const std::uint64_t* wt, std::int64_t Q) {
  __m512i acc[MR][2];
  #pragma GCC unroll 4
  for (int i = 0; i < MR; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_si512();
  xnor_pass_t<MR, false>(g, m, wt, Q, acc);
  bool any_zero = false;
  #pragma GCC unroll 4
  for (int i = 0; i < MR; ++i) any_zero = any_zero || g.has_zero[m + i];
  if (any_zero) xnor_pass_t<MR, true>(g, m, wt, Q, acc);
  #pragma GCC unroll 4
  for (int i = 0; i < MR; ++i) {
    const __m256 rs = _mm256_set1_ps(g.row_scale[m + i]);
    const __m256i ak = _mm256_set1_epi32(g.a_k[m + i]);
    for (int h = 0; h < 2 && 8 * h < nr; ++h) {
      const __mmask8 mask = static_cast<__mmask8>(nr - 8 * h >= 8 ? 0xFF : (1u << (nr - 8 * h)) - 1);
      const __m256i cnt = _mm512_cvtepi64_epi32(acc[i][h]);
      const __m256i v = _mm256_sub_epi32(ak, _mm256_add_epi32(cnt, cnt));
      const __m256 sc = _mm256_mul_ps(rs, _mm256_maskz_loadu_ps(mask, g.col_scale + n + 8 * h));
      __m256 y = _mm256_mul_ps(_mm256_cvtepi32_ps(v), sc);
      if (g.bias) y = _mm256_add_ps(y, _mm256_maskz_loadu_ps(mask, g.bias + n + 8 * h));
      if (g.y_cs == 1) {
        _mm256_mask_storeu_ps(g.y + (m + i) * g.y_rs + n + 8 * h, mask, y);
      } else {
        alignas(32) float t[8];
        _mm256_store_ps(t, y);
        for (int j = 0; j < 8 && 8 * h + j < nr; ++j) g.y[(m + i) * g.y_rs + (n + 8 * h + j) * g.y_cs] = t[j];
      }
    }
  }
}

// Rows of 4 bytes (K <= 32: a 1x1 conv from up to 32 channels): the 16 weight rows' dwords in the 16
// lanes of one register, so one vpopcntd of a broadcast activation dword xor them counts 16 outputs,
// and the finish (the same operations per lane as xnor_rows_t's) runs on 16 lanes. With rows this
// short the per-output finish is most of the work: 8 x 16 x 32 x 32 -> 96 spent 35 % of its time in
// xnor_rows_t; this form ran it 1.08-1.16x, 1x1 convs and a 32-input Linear 1.01-1.28x
// (docs/benchmarks.md, twentieth session).
template <int MR>
__attribute__((target("avx512vpopcntdq"))) void xnor_rows_d(const QGemmXnorArgs& g, std::int64_t m, std::int64_t n,
                                                            int nr, __m512i w) {
  const __mmask16 mask = static_cast<__mmask16>(nr >= 16 ? 0xFFFF : (1u << nr) - 1);
  const __m512 cs = _mm512_maskz_loadu_ps(mask, g.col_scale + n);
  const __m512 bias = g.bias ? _mm512_maskz_loadu_ps(mask, g.bias + n) : _mm512_setzero_ps();
#pragma GCC unroll 4
  for (int i = 0; i < MR; ++i) {
    std::uint32_t v;
    std::memcpy(&v, g.a + (m + i) * 4, 4);
    __m512i cnt = _mm512_popcnt_epi32(_mm512_xor_si512(_mm512_set1_epi32(static_cast<int>(v)), w));
    if (g.has_zero[m + i]) {
      std::uint32_t z;
      std::memcpy(&z, g.z + (m + i) * 4, 4);
      cnt = _mm512_sub_epi32(cnt, _mm512_popcnt_epi32(_mm512_and_si512(_mm512_set1_epi32(static_cast<int>(z)), w)));
    }
    const __m512i d = _mm512_sub_epi32(_mm512_set1_epi32(g.a_k[m + i]), _mm512_add_epi32(cnt, cnt));
    __m512 y = _mm512_mul_ps(_mm512_cvtepi32_ps(d), _mm512_mul_ps(_mm512_set1_ps(g.row_scale[m + i]), cs));
    if (g.bias) y = _mm512_add_ps(y, bias);
    if (g.y_cs == 1) {
      _mm512_mask_storeu_ps(g.y + (m + i) * g.y_rs + n, mask, y);
    } else {
      alignas(64) float t[16];
      _mm512_store_ps(t, y);
      for (int j = 0; j < nr; ++j) g.y[(m + i) * g.y_rs + (n + j) * g.y_cs] = t[j];
    }
  }
}

__attribute__((target("avx512vpopcntdq"))) void gemm_xnor_t(const QGemmXnorArgs& g, std::int64_t n_begin,
                                                            std::int64_t n_end) {
  if (g.KB == 4) {
    for (std::int64_t n = n_begin; n < n_end; n += 16) {
      const int nr = static_cast<int>(std::min<std::int64_t>(16, n_end - n));
      const __m512i w = _mm512_maskz_loadu_epi32(static_cast<__mmask16>(nr >= 16 ? 0xFFFF : (1u << nr) - 1), g.w + n * 4);
      std::int64_t m = 0;
      for (; m + 4 <= g.M; m += 4) xnor_rows_d<4>(g, m, n, nr, w);
      for (; m < g.M; ++m) xnor_rows_d<1>(g, m, n, nr, w);
    }
    return;
  }
  const std::int64_t Q = (g.KB + 7) / 8;
  std::vector<std::uint64_t> wt(static_cast<std::size_t>(Q * 16));
  for (std::int64_t n = n_begin; n < n_end; n += 16) {
    const int nr = static_cast<int>(std::min<std::int64_t>(16, n_end - n));
    std::fill(wt.begin(), wt.end(), std::uint64_t{0});
    for (int r = 0; r < nr; ++r)
      for (std::int64_t q = 0; q < Q; ++q)
        std::memcpy(&wt[static_cast<std::size_t>(q * 16 + r)], g.w + (n + r) * g.KB + q * 8,
                    static_cast<std::size_t>(std::min<std::int64_t>(8, g.KB - q * 8)));
    std::int64_t m = 0;
    for (; m + 4 <= g.M; m += 4) xnor_rows_t<4>(g, m, n, nr, wt.data(), Q);
    for (; m < g.M; ++m) xnor_rows_t<1>(g, m, n, nr, wt.data(), Q);
  }
}

// The transposed kernel for rows of up to this many bytes (K <= 4096) from 32 activation rows on,
// and for rows of up to 64 bytes (K <= 512: convs' patch rows) from 4 on; the 64-byte-step blocks
// otherwise. One process, A/B on 4096-column weights (docs/benchmarks.md, 2026-12-03 third
// session): transposed / blocks time 0.81 at K = 4096 with 64 rows, 0.84 with 32, 1.14 with 16,
// 1.0 at K = 8192 and 16384; 0.83-0.90 at K = 288 with 8-256 rows.
#ifndef XNOR_T_MAX_KB
#define XNOR_T_MAX_KB 512
#endif

void gemm_xnor(const QGemmXnorArgs& g, std::int64_t n_begin, std::int64_t n_end) {
  if (g.M >= 4 && g.KB <= XNOR_T_MAX_KB && (g.M >= 32 || g.KB <= 64)) {
    gemm_xnor_t(g, n_begin, n_end);
    return;
  }
  blocked<QGemmXnorArgs, 8, xnor_block<4, 4>, xnor_block<4, 1>, xnor_block<1, 4>, xnor_block<1, 1>>(g, n_begin, n_end);
}

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

// Rows [n, n + nr) of a float [rows, G] matrix transposed into dst [G][16] (zeros past nr).
inline void transpose_rows_f32(const float* src, std::int64_t G, std::int64_t n, int nr, float* dst) {
  for (std::int64_t g0 = 0; g0 < G; g0 += 16) {
    const int ng = static_cast<int>(std::min<std::int64_t>(16, G - g0));
    const __mmask16 mask = static_cast<__mmask16>((1u << ng) - 1);
    __m512i r[16];
    #pragma GCC unroll 16
    for (int i = 0; i < 16; ++i) {
      r[i] = i < nr ? _mm512_castps_si512(_mm512_maskz_loadu_ps(mask, src + (n + i) * G + g0)) : _mm512_setzero_si512();
    }
    transpose16(r);
    for (int e = 0; e < ng; ++e) _mm512_storeu_si512(dst + (g0 + e) * 16, r[e]);
  }
}

// The row layout's block transposed into the panel layout (the bytes pack_int4_panel would hold).
inline void w4_pack_panel(const std::uint8_t* w, std::int64_t K, std::int64_t n, int nr, std::int32_t* codes) {
  const std::int64_t KB = K / 2, steps = (KB + 63) / 64;
  for (std::int64_t s = 0; s < steps; ++s) {
    const std::int64_t b = s * 64;
    const __mmask64 mask = b + 64 <= KB ? ~__mmask64{0} : (__mmask64{1} << (KB - b)) - 1;
    __m512i r[16];
    #pragma GCC unroll 16
    for (int i = 0; i < 16; ++i) r[i] = i < nr ? _mm512_maskz_loadu_epi8(mask, w + (n + i) * KB + b) : _mm512_setzero_si512();
    transpose16(r);
    #pragma GCC unroll 16
    for (int e = 0; e < 16; ++e) _mm512_storeu_si512(codes + (s * 16 + e) * 16, r[e]);
  }
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
      const __m512 sf = _mm512_loadu_ps(p.scale + gi * 16);  // as float64 (exact), rows 0-7 / 8-15
      const __m512d slo = _mm512_cvtps_pd(_mm512_castps512_ps256(sf));
      const __m512d shi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(sf), 1)));
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
  const __mmask16 mask = static_cast<__mmask16>((1u << nr) - 1);
  const __m512 b = g.bias ? _mm512_maskz_loadu_ps(mask, g.bias + n) : _mm512_setzero_ps();
  #pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    const __m256 ylo = _mm512_cvtpd_ps(_mm512_mul_pd(tlo[i], as)), yhi = _mm512_cvtpd_ps(_mm512_mul_pd(thi[i], as));
    __m512 y = _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_castps_pd(ylo)), _mm256_castps_pd(yhi), 1));
    if (g.bias) y = _mm512_add_ps(y, b);
    _mm512_mask_storeu_ps(g.y + (m + i) * g.N + n, mask, y);
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
        const __m512 sf = _mm512_loadu_ps(scale[j] + gi * 16);
        const __m512d slo = _mm512_cvtps_pd(_mm512_castps512_ps256(sf));
        const __m512d shi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(sf), 1)));
        tlo[j] = _mm512_fmadd_pd(_mm512_cvtepi32_pd(_mm512_castsi512_si256(v)), slo, tlo[j]);
        thi[j] = _mm512_fmadd_pd(_mm512_cvtepi32_pd(_mm512_extracti64x4_epi64(v, 1)), shi, thi[j]);
        c0[j] = start;
        c1[j] = cs[j] = _mm512_setzero_si512();
      }
    }
  }
  const __m512d as = _mm512_set1_pd(g.act_scale);
  #pragma GCC unroll 4
  for (int j = 0; j < NB; ++j) {
    const int nr = j + 1 < NB ? 16 : nr_last;
    const __mmask16 mask = static_cast<__mmask16>((1u << nr) - 1);
    const std::int64_t nj = n + 16 * j;
    const __m256 ylo = _mm512_cvtpd_ps(_mm512_mul_pd(tlo[j], as)), yhi = _mm512_cvtpd_ps(_mm512_mul_pd(thi[j], as));
    __m512 y = _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_castps_pd(ylo)), _mm256_castps_pd(yhi), 1));
    if (g.bias) y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(mask, g.bias + nj));
    _mm512_mask_storeu_ps(g.y + m * g.N + nj, mask, y);
  }
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

void gemm_w4(const QGemmW4Args& g, std::int64_t n_begin, std::int64_t n_end) {
  const std::int64_t steps = (g.K / 2 + 63) / 64, G = g.K / g.group;
  W4Panel p;
  if (!g.panel) p.buf.resize(static_cast<std::size_t>(steps * 256));
  if (!g.blocked_scales) p.scale_buf.resize(static_cast<std::size_t>(G * 16));
  p.zero.resize(static_cast<std::size_t>(G * 16));
  std::int64_t n = n_begin;
  if (g.panel && g.M < 4) n = gemm_w4_gemv(g, n_begin, n_end);  // one stream per block at a time below
  for (; n < n_end; n += 16) {  // n_begin is a multiple of 16
    const int nr = static_cast<int>(std::min<std::int64_t>(16, n_end - n));
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
    std::int64_t m = 0;
    for (; m + 8 <= g.M; m += 8) w4_panel_rows<8>(g, m, n, nr, p);
    for (; m + 4 <= g.M; m += 4) w4_panel_rows<4>(g, m, n, nr, p);
    for (; m < g.M; ++m) w4_panel_rows<1>(g, m, n, nr, p);
  }
}

// ---------------------------------------------------------------- weight-only W4 (float activations)

// The register tiles: the weight codes are dequantized in registers (eight 16-row vectors per
// 64-byte panel step: float(q) from a 16-entry table, minus the zero point) and go straight into the
// FMAs, no L1 round trip; rows in tiles of 12 / 8 / 4 / 2 / 1, with 8 / MR FMA chains per row below
// 8 rows. The tile's activations come transposed, xt[k * MR + i] (w4f_transpose_tile), so the MR
// broadcasts of one k read one run of MR floats rather than MR rows K floats apart (about 5 %
// on MiniLM's layer shapes, docs/benchmarks.md). Each group's sum runs on the unscaled codes in its own accumulators, folded into
// the row's sum by one FMA with the group's scales at its end: two multiplies per 32 weights fewer
// than scaling every weight (12 rows: 28.75 instead of 30 vector uops per 24 FMAs). One-hot inputs
// still read each weight as fp32((q - z) * s), the float form's bits (0 * s + the product, one rounding).
// One-row tiles (GEMVs) on the weight's own panel prefetch its stream kW4fGemvAhead bytes ahead, four
// lines per 32 k, on into the next 16-row block (contiguous): 4096 x 4096 at batch 1, DRAM regime, on
// Zen 4 683 / 662 / 733 us without it against 508 / 537 / 558 us (1.23-1.34x), distances 512-8192 and
// either hint within a few % of that (docs/benchmarks.md, 2026-12-04, fourteenth session). Tiles of
// more rows re-read a block from cache after its first tile; prefetching there ran 3 % slower on
// MiniLM's layers.
constexpr std::int64_t kW4fGemvAhead = 2048;

template <int MR>
void w4f_direct(const QGemmW4FArgs& g, const float* xt, std::int64_t m, std::int64_t n, int nr,
                const std::int32_t* panel, const float* sc, const float* zc, __m512 lut,
                const detail::NextBlockScales& next, bool prefetch = false) {
  constexpr int NA = MR >= 8 ? 1 : 8 / MR;
  __m512 acc[MR][NA];
  #pragma GCC unroll 12
  for (int i = 0; i < MR; ++i)
    #pragma GCC unroll 8
    for (int c = 0; c < NA; ++c) acc[i][c] = _mm512_setzero_ps();
  const std::int64_t gc = g.group / 32, G = g.K / g.group;
  for (std::int64_t gi = 0; gi < G; ++gi) {
    __m512 part[MR][NA];  // the group's sums of (q - z) * x
    #pragma GCC unroll 12
    for (int i = 0; i < MR; ++i)
      #pragma GCC unroll 8
      for (int c = 0; c < NA; ++c) part[i][c] = _mm512_setzero_ps();
    const __m512 z = zc != nullptr ? _mm512_loadu_ps(zc + gi * 16) : _mm512_setzero_ps();
    for (std::int64_t ci = gi * gc; ci < (gi + 1) * gc; ++ci) {
      const std::int32_t* t = panel + ((ci / 4) * 16 + (ci % 4) * 4) * 16;
      if (MR == 1 && prefetch) {
        const char* ahead = reinterpret_cast<const char*>(t) + kW4fGemvAhead;
        #pragma GCC unroll 4
        for (int l = 0; l < 4; ++l) _mm_prefetch(ahead + 64 * l, _MM_HINT_NTA);
      }
      #pragma GCC unroll 4
      for (int e = 0; e < 4; ++e) {
        const __m512i v = _mm512_loadu_si512(t + e * 16);
        #pragma GCC unroll 4
        for (int j = 0; j < 4; ++j) {
          __m512 wl = _mm512_permutexvar_ps(_mm512_srli_epi32(v, 8 * j), lut);      // k = 32 ci + 4e + j
          __m512 wh = _mm512_permutexvar_ps(_mm512_srli_epi32(v, 8 * j + 4), lut);  // k + 16
          if (zc != nullptr) {
            wl = _mm512_sub_ps(wl, z);
            wh = _mm512_sub_ps(wh, z);
          }
          const float* xl = xt + (ci * 32 + 4 * e + j) * MR;
          #pragma GCC unroll 12
          for (int i = 0; i < MR; ++i) {
            part[i][(2 * j) % NA] = _mm512_fmadd_ps(wl, _mm512_set1_ps(xl[i]), part[i][(2 * j) % NA]);
            part[i][(2 * j + 1) % NA] = _mm512_fmadd_ps(wh, _mm512_set1_ps(xl[16 * MR + i]), part[i][(2 * j + 1) % NA]);
          }
        }
      }
    }
    next.at_group(gi);
    const __m512 s = _mm512_loadu_ps(sc + gi * 16);
    #pragma GCC unroll 12
    for (int i = 0; i < MR; ++i)
      #pragma GCC unroll 8
      for (int c = 0; c < NA; ++c) acc[i][c] = _mm512_fmadd_ps(part[i][c], s, acc[i][c]);
  }
  const __mmask16 mask = static_cast<__mmask16>((1u << nr) - 1);
  const __m512 b = g.bias ? _mm512_maskz_loadu_ps(mask, g.bias + n) : _mm512_setzero_ps();
  #pragma GCC unroll 12
  for (int i = 0; i < MR; ++i) {
    #pragma GCC unroll 8
    for (int c = 1; c < NA; ++c) acc[i][0] = _mm512_add_ps(acc[i][0], acc[i][c]);
    if (g.bias) acc[i][0] = _mm512_add_ps(acc[i][0], b);
    _mm512_mask_storeu_ps(g.y + (m + i) * g.N + n, mask, acc[i][0]);
  }
}

// Activation rows [m, m + mr) transposed into xt[k * mr + i], 16 values of K per 16 x 16 transpose.
inline void w4f_transpose_tile(const float* x, std::int64_t K, int mr, float* xt) {
  const __mmask16 mask = static_cast<__mmask16>((1u << mr) - 1);
  for (std::int64_t k0 = 0; k0 < K; k0 += 16) {  // K is a multiple of 32
    __m512i r[16];
    #pragma GCC unroll 16
    for (int i = 0; i < 16; ++i) r[i] = i < mr ? _mm512_loadu_si512(x + i * K + k0) : _mm512_setzero_si512();
    transpose16(r);
    #pragma GCC unroll 16
    for (int e = 0; e < 16; ++e) _mm512_mask_storeu_epi32(xt + (k0 + e) * mr, mask, r[e]);
  }
}

// The row tiles of up to 12 activation rows (12 / 8 / 4 / 2 / 1) over one 16-row weight block; the
// first prefetches the next block's scales. (Prefetching the next block's codes as well ran 3 %
// slower on MiniLM's 37 layers.)
inline void w4f_direct_rows(const QGemmW4FArgs& g, const float* xt, std::int64_t n, int nr, const std::int32_t* panel,
                            const float* sc, const float* zc, __m512 lut, const detail::NextBlockScales& next) {
  const detail::NextBlockScales none;
  std::int64_t m = 0;
  for (; m + 12 <= g.M; m += 12) w4f_direct<12>(g, xt + m * g.K, m, n, nr, panel, sc, zc, lut, m == 0 ? next : none);
  for (; m + 8 <= g.M; m += 8) w4f_direct<8>(g, xt + m * g.K, m, n, nr, panel, sc, zc, lut, m == 0 ? next : none);
  for (; m + 4 <= g.M; m += 4) w4f_direct<4>(g, xt + m * g.K, m, n, nr, panel, sc, zc, lut, m == 0 ? next : none);
  for (; m + 2 <= g.M; m += 2) w4f_direct<2>(g, xt + m * g.K, m, n, nr, panel, sc, zc, lut, m == 0 ? next : none);
  for (; m < g.M; ++m) w4f_direct<1>(g, g.x + m * g.K, m, n, nr, panel, sc, zc, lut, m == 0 ? next : none, g.panel);
}

// The weight's 16-row blocks (the panel, or the row layout transposed per block), each block's scales
// (and zero points) as 16-lane vectors per group: the blocked layout's own (g.blocked_scales), or
// transposed from [N, G] per block; every activation row in the register tiles (w4f_direct_rows), the
// tiles' rows transposed once per call (per pass, below) into this thread's scratch (the op calls
// gemm_w4f below w4f_gemm_rows only: 384 rows, every row count on AMD). The tiles replaced an L1 buffer of dequantized weights from
// 13 rows and the packed GEMM (loops.h) from 32: 4096 x 4096, DRAM regime, 2 threads, against FP32
// in the same run, 16 / 32 / 64 / 128 / 256 rows ran 2.56 / 1.85 / 1.33 / 1.11 / 0.94x on the
// tiles, against the buffer's 1.38x at 16 and the packed GEMM's 1.35 / 1.20 / 0.99 / 0.86 / 0.73x;
// MiniLM's layer shapes, hot: 1.07-1.22x at 64-96 rows, 0.97-1.09x at 128 (packed 0.79-0.95x).
// The transposed rows of one pass stay within kW4fXtFloats (8 MiB, this thread's scratch keeps it):
// more rows run in passes of a multiple of 12 rows (the same tiles, so the same bits), the weight
// streamed once per pass (K = 4096: one pass below 512 rows).
constexpr std::int64_t kW4fXtFloats = std::int64_t{2} << 20;

void gemm_w4f_pass(const QGemmW4FArgs& g, std::int64_t n_begin, std::int64_t n_end, float* xt) {
  const std::int64_t KB = g.K / 2, steps = (KB + 63) / 64, G = g.K / g.group;
  std::vector<std::int32_t> buf(static_cast<std::size_t>(g.panel ? 0 : steps * 256));  // the row layout's block, transposed
  const std::size_t nsc = static_cast<std::size_t>(g.blocked_scales ? 0 : G * 16);
  std::vector<float> scb(nsc), zcb(g.gzero ? nsc : 0);
  // the tiles' rows transposed (xt[m * K + k * MR + i] for the tile at m; 1-row tiles read x)
  {
    std::int64_t m = 0;
    for (const int mr : {12, 8, 4, 2}) {
      for (; m + mr <= g.M; m += mr) w4f_transpose_tile(g.x + m * g.K, g.K, mr, xt + m * g.K);
    }
  }
  const __m512 lut = _mm512_setr_ps(-8.f, -7.f, -6.f, -5.f, -4.f, -3.f, -2.f, -1.f, 0.f, 1.f, 2.f, 3.f, 4.f, 5.f, 6.f, 7.f);
  for (std::int64_t n = n_begin; n < n_end; n += 16) {  // n_begin is a multiple of 16
    const int nr = static_cast<int>(std::min<std::int64_t>(16, n_end - n));
    const std::int32_t* panel = buf.data();  // the block's panel: the weight's own (pack_int4_panel), or buf
    if (g.panel) {
      panel = reinterpret_cast<const std::int32_t*>(g.w + (n / 16) * steps * 1024);
    } else {
      w4_pack_panel(g.w, g.K, n, nr, buf.data());
    }
    const float* sc = scb.data();
    const float* zc = g.gzero ? zcb.data() : nullptr;
    if (g.blocked_scales) {
      sc = g.gscale + (n / 16) * G * 16;
      if (g.gzero) zc = g.gzero + (n / 16) * G * 16;
    } else {
      transpose_rows_f32(g.gscale, G, n, nr, scb.data());
      if (g.gzero) transpose_rows_f32(g.gzero, G, n, nr, zcb.data());
    }
    // the next block's scales, prefetched group by group: either layout's block starts (n + 16) * G floats in
    w4f_direct_rows(g, xt, n, nr, panel, sc, zc, lut, detail::NextBlockScales(g.gscale, G, n, n_end));
  }
}

void gemm_w4f(const QGemmW4FArgs& g, std::int64_t n_begin, std::int64_t n_end) {
  std::int64_t mc = g.M;
  if (g.M * g.K > kW4fXtFloats) {  // passes as equal as multiples of 12 allow
    const std::int64_t cap = std::max<std::int64_t>(12, kW4fXtFloats / g.K / 12 * 12);
    const std::int64_t passes = (g.M + cap - 1) / cap;
    mc = ((g.M + passes - 1) / passes + 11) / 12 * 12;
  }
  float* xt = detail::thread_scratch<float, struct W4fRows>(static_cast<std::size_t>(std::min(g.M, mc) * g.K));
  for (std::int64_t m0 = 0; m0 < g.M; m0 += mc) {
    QGemmW4FArgs p = g;
    p.x = g.x + m0 * g.K;
    p.y = g.y + m0 * g.N;
    p.M = std::min(mc, g.M - m0);
    gemm_w4f_pass(p, n_begin, n_end, xt);
  }
}

#ifdef QATKIT_AMX_KERNELS
// ---------------------------------------------------------------- weight-only W4 on AMX-BF16 tiles

// linear_w4_weight_only on AMX-BF16 tiles (the amx table where the CPU has AMX-BF16,
// cpu_has_amx_bf16). tdpbf16ps multiplies 16 rows x 32 bf16 of activations by 32 bf16 x 16 columns
// of the weight (pairs of k per 32-bit lane) and adds the products into 16 x 16 float32 sums; every
// product is rounded into the sum once, as an FMA chain's. The codes' values c - 8 are exact in bf16.
// The activations are not: each float32 x is split into three bf16 parts, hi = x with its low 16
// bits cleared, mid = (x - hi) the same way, lo = x - hi - mid, and hi + mid + lo == x exactly (each
// difference is exact, and 24 significant bits fill three 8-bit significands; the parts truncate
// towards zero, so they share x's sign). The three parts' tiles run against the same weight tile
// into the same sums: a group's sum of x * (c - 8) over its 32-k steps with 3 x 32 roundings per
// step instead of 32 (stacked batches: three sums of 32 each, added after), then folded into the row's sum by one FMA with the group's scales, as the
// register tiles do (w4f_direct). The tiles treat subnormal bf16 inputs as zero and flush subnormal
// results, so w4f_amx_split refuses any row set holding 0 < |x| < 2^-100 (the smallest part of a
// larger x is at least 2^-123, normal) or a non-finite value (x - hi would be NaN for Inf); the
// op then runs the AVX-512 table's float kernels for the whole output instead (their bits). (AMX's sums of the same
// products come out within the bound of docs/integer.md in their own bits: the register tiles' and
// the tiles' roundings differ.)
//
// The A tiles: per 16-row tile rt, per 32-k step ks, per part p, 16 rows x 16 words at
// ((rt * KS + ks) * 3 + p) * 256; word r of a row holds the part of k = 32 ks + k_lo(r) in its low
// half and of k + 2 in its high half, the pairs of the B tiles' row r (W4fAmxB), so both sides pair
// the same k.
// stacked (rows <= 5): one tile per step, part p of row m in tile row p * rows + m (tile rows
// 3 * rows to 15 zero), the three parts' sums of a row then separate rows of the same C tile.
bool w4f_amx_split(const float* x, std::int64_t rows, std::int64_t K, std::uint32_t* a, bool stacked = false) {
  const std::int64_t KS = K / 32;
  const __m512i keep = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u)), absm = _mm512_set1_epi32(0x7FFFFFFF);
  const __m512i one = _mm512_set1_epi32(1);
  // word r's two values (W4fAmxB's pairing): k_lo(r) = 4 (r >> 2) + ((r & 3) >> 1) + 16 (r & 1), and k_lo(r) + 2
  alignas(64) std::int32_t il[16], ih[16];
  for (int r = 0; r < 16; ++r) {
    il[r] = 4 * (r >> 2) + ((r & 3) >> 1) + 16 * (r & 1);
    ih[r] = il[r] + 2;
  }
  const __m512i pair[2] = {_mm512_load_si512(il), _mm512_load_si512(ih)};
  // the range check as two vector accumulators (one unsigned min / max per vector; the masks are
  // compared once at the end): 0 and 2^-100 <= |x| < Inf split exactly, i.e. |x| - 1 (unsigned,
  // 0 wraps) >= 2^-100's bits - 1 and |x| < Inf's bits
  __m512i lo_acc = _mm512_set1_epi32(-1), hi_acc = _mm512_setzero_si512();
  for (std::int64_t m = 0; m < rows; ++m) {
    const float* xr = x + m * K;
    std::uint32_t* row = a + ((m / 16) * KS * 3 * 256) + (m % 16) * 16;
    for (std::int64_t ks = 0; ks < KS; ++ks) {
      __m512i part[3][2];
      std::uint32_t* const dst[3] = {stacked ? a + ks * 256 + m * 16 : row + (ks * 3) * 256,
                                     stacked ? a + ks * 256 + (rows + m) * 16 : row + (ks * 3 + 1) * 256,
                                     stacked ? a + ks * 256 + (2 * rows + m) * 16 : row + (ks * 3 + 2) * 256};
      const __m512 x0 = _mm512_loadu_ps(xr + ks * 32), x1 = _mm512_loadu_ps(xr + ks * 32 + 16);
      #pragma GCC unroll 2
      for (int h = 0; h < 2; ++h) {
        const __m512i v = _mm512_castps_si512(_mm512_permutex2var_ps(x0, pair[h], x1));
        const __m512i ab = _mm512_and_si512(v, absm);
        lo_acc = _mm512_min_epu32(lo_acc, _mm512_sub_epi32(ab, one));
        hi_acc = _mm512_max_epu32(hi_acc, ab);
        part[0][h] = _mm512_and_si512(v, keep);
        const __m512 r1 = _mm512_sub_ps(_mm512_castsi512_ps(v), _mm512_castsi512_ps(part[0][h]));
        part[1][h] = _mm512_and_si512(_mm512_castps_si512(r1), keep);
        part[2][h] = _mm512_castps_si512(_mm512_sub_ps(r1, _mm512_castsi512_ps(part[1][h])));
      }
      #pragma GCC unroll 3
      for (int p = 0; p < 3; ++p) {
        // low half: k_lo(r) (the part's high 16 bits), high half: k_lo(r) + 2
        const __m512i w = _mm512_ternarylogic_epi32(_mm512_srli_epi32(part[p][0], 16), part[p][1], keep, 0xF8);
        _mm512_store_si512(dst[p], w);
      }
    }
  }
  const bool ok = _mm512_cmplt_epu32_mask(lo_acc, _mm512_set1_epi32((27 << 23) - 1)) == 0 &&
                  _mm512_cmpge_epu32_mask(hi_acc, _mm512_set1_epi32(0x7F800000)) == 0;
  // the tiles' rows past `rows` zero: rows [rows, tr) of the last tile, tr the tiles' row count
  // (gemm_w4f_amx's tr: rows rounded up to 4; stacked: 3 rows rounded up to 4); rows from tr on are
  // not loaded
  if (stacked) {
    for (std::int64_t ks = 0; ks < KS; ++ks) {
      for (std::int64_t r = 3 * rows; r < (3 * rows + 3) / 4 * 4; ++r) _mm512_store_si512(a + ks * 256 + r * 16, _mm512_setzero_si512());
    }
    return ok;
  }
  for (std::int64_t m = rows; m < (rows + 3) / 4 * 4; ++m) {
    std::uint32_t* row = a + ((m / 16) * KS * 3 * 256) + (m % 16) * 16;
    for (std::int64_t ks = 0; ks < KS * 3; ++ks) _mm512_store_si512(row + ks * 256, _mm512_setzero_si512());
  }
  return ok;
}

// The B tiles' converter: a 16-column block's step (256 bytes of its panel, pack_int4_panel's layout
// or the row layout's block in it) into 16 rows x 16 words. Row r = 4e + t reads the e-th vector of
// the step shifted right by 4t bits: each 16-bit half of a lane then starts with the nibble at
// position t (low half) or 4 + t (high half) of the lane's 8, and vpermw looks both up at once in a
// 16-entry table written twice (an index's fifth bit, the next nibble's lowest, selects the same
// entry). One shuffle per row: 1.3x faster in the kernel (2.1x alone, scripts/amx_throughput.sh)
// than gathering each byte's two nibbles first (vpermt2b, then vpermw). Position p of lane n holds column n's code at k = 4e + p / 2 (p even:
// byte p / 2's low nibble) or k = 16 + 4e + (p - 1) / 2 (p odd), so row r pairs k_lo(r) = 4e +
// (t >> 1) + 16 (t & 1) in its low halves with k_lo(r) + 2 in its high halves (w4f_amx_split
// pairs the activations the same way).
struct W4fAmxB {
  __m512i lut;
  W4fAmxB() {
    alignas(64) std::uint16_t tbl[32];
    for (int c = 0; c < 32; ++c) {
      const float f = static_cast<float>((c & 15) - 8);
      std::uint32_t bits;
      std::memcpy(&bits, &f, 4);
      tbl[c] = static_cast<std::uint16_t>(bits >> 16);
    }
    lut = _mm512_load_si512(tbl);
  }
  // step ks of a block's panel into dst (16 x 16 words)
  void operator()(const std::int32_t* panel, std::int64_t ks, std::uint32_t* dst) const {
    const std::int32_t* t = panel + ((ks / 4) * 16 + (ks % 4) * 4) * 16;
    #pragma GCC unroll 4
    for (int e = 0; e < 4; ++e) {
      const __m512i v = _mm512_loadu_si512(t + e * 16);
      _mm512_storeu_si512(dst + (4 * e) * 16, _mm512_permutexvar_epi16(v, lut));
      _mm512_storeu_si512(dst + (4 * e + 1) * 16, _mm512_permutexvar_epi16(_mm512_srli_epi32(v, 4), lut));
      _mm512_storeu_si512(dst + (4 * e + 2) * 16, _mm512_permutexvar_epi16(_mm512_srli_epi32(v, 8), lut));
      _mm512_storeu_si512(dst + (4 * e + 3) * 16, _mm512_permutexvar_epi16(_mm512_srli_epi32(v, 12), lut));
    }
  }
};

// Tiles: A 0-2 (the parts lo, mid, hi of one 32-k step of up to 16 rows: MR rows in the tiles,
// the split zero-fills the rows past M), B 3 (a block's step, reloaded per block: the tile unit
// keeps up), C 4-7: NB (1 or 2) blocks' sums, the even groups' in 4 / 5, the odd groups' in 6 / 7,
// so one group's tiles run while the other's sums are folded. Two blocks share each A tile (at K =
// 1536 a row tile's A tiles, 144 KiB, come from L2). (The tile intrinsics take literal tile
// numbers: P selects 4 / 5 or 6 / 7 through if constexpr.) One group: its steps' three parts into
// the C tiles, the small parts first; B from the blocks' converted steps (bsrc(ks, b)), converting
// ahead where conv says so.
#define QATKIT_W4F_AMX_TDP3(c) \
  _tile_dpbf16ps(c, 0, 3);     \
  _tile_dpbf16ps(c, 1, 3);     \
  _tile_dpbf16ps(c, 2, 3);
template <int P, int NB, bool S, class BSrc, class Conv>
__attribute__((target("amx-tile,amx-bf16"))) inline void w4f_amx_group(const std::uint32_t* at, std::int64_t gi,
                                                                        std::int64_t gc, const BSrc& bsrc,
                                                                        const Conv& conv) {
  if constexpr (P == 0) {
    _tile_zero(4);
    if constexpr (NB == 2) _tile_zero(5);
  } else {
    _tile_zero(6);
    if constexpr (NB == 2) _tile_zero(7);
  }
  for (std::int64_t ks = gi * gc; ks < (gi + 1) * gc; ++ks) {
    if constexpr (S) {  // the stacked parts: one tile, one tdpbf16ps per block
      _tile_loadd(0, at + ks * 256, 64);
      _tile_loadd(3, bsrc(ks, 0), 64);
      if constexpr (P == 0) _tile_dpbf16ps(4, 0, 3);
      else _tile_dpbf16ps(6, 0, 3);
      if constexpr (NB == 2) {
        _tile_loadd(3, bsrc(ks, 1), 64);
        if constexpr (P == 0) _tile_dpbf16ps(5, 0, 3);
        else _tile_dpbf16ps(7, 0, 3);
      }
      conv(ks);
      continue;
    }
    const std::uint32_t* ap = at + ks * 3 * 256;
    _tile_loadd(0, ap + 512, 64);
    _tile_loadd(1, ap + 256, 64);
    _tile_loadd(2, ap, 64);
    _tile_loadd(3, bsrc(ks, 0), 64);
    if constexpr (P == 0) {
      QATKIT_W4F_AMX_TDP3(4)
    } else {
      QATKIT_W4F_AMX_TDP3(6)
    }
    if constexpr (NB == 2) {
      _tile_loadd(3, bsrc(ks, 1), 64);
      if constexpr (P == 0) {
        QATKIT_W4F_AMX_TDP3(5)
      } else {
        QATKIT_W4F_AMX_TDP3(7)
      }
    }
    conv(ks);
  }
}
#undef QATKIT_W4F_AMX_TDP3

// A group's sums folded into the row sums (registers): acc = sums * s for the first group, then
// fma(sums, s, acc), w4f_direct's operations. The sums go through L1 (no tile-to-register move).
template <int P, int NB, int MR, bool S>
__attribute__((target("amx-tile,amx-bf16"))) inline void w4f_amx_fold(const float* const sc[2], std::int64_t gi,
                                                                       float (*cbuf)[256], __m512 (&acc)[NB][MR]) {
  if constexpr (P == 0) {
    _tile_stored(4, cbuf[0], 64);
    if constexpr (NB == 2) _tile_stored(5, cbuf[1], 64);
  } else {
    _tile_stored(6, cbuf[0], 64);
    if constexpr (NB == 2) _tile_stored(7, cbuf[1], 64);
  }
  #pragma GCC unroll 2
  for (int b = 0; b < NB; ++b) {
    const __m512 s = _mm512_loadu_ps(sc[b] + gi * 16);
    #pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      __m512 t = _mm512_load_ps(cbuf[b] + i * 16);
      if constexpr (S) {  // a row's three part sums, the small ones first: (lo + mid) + hi
        t = _mm512_add_ps(_mm512_add_ps(_mm512_load_ps(cbuf[b] + (2 * MR + i) * 16), _mm512_load_ps(cbuf[b] + (MR + i) * 16)), t);
      }
      acc[b][i] = gi == 0 ? _mm512_mul_ps(t, s) : _mm512_fmadd_ps(t, s, acc[b][i]);
    }
  }
}

// One row tile (mr <= MR rows of A tiles at) against NB 16-column blocks: their B tiles from bt[b]
// (every step converted, KS x 1 KiB) or, where bt[0] is null, converted from the blocks' panels two
// steps ahead into a three-slot ring in L1 (a step's stores have retired and reached L1 before the
// tile load that reads them); y rows [0, mr), block b's nr[b] columns at y + 16 b, plus the bias
// after the sum.
template <int MR, int NB, bool S = false>
__attribute__((target("amx-tile,amx-bf16"))) void w4f_amx_tile(const W4fAmxB& cvt, const std::uint32_t* at,
                                                               const std::int32_t* const panel[2],
                                                               const std::uint32_t* const bt[2],
                                                               const float* const sc[2], std::int64_t KS,
                                                               std::int64_t gc, int mr, const int nr[2],
                                                               const float* bias, float* y, std::int64_t ldy) {
  alignas(64) std::uint32_t ring[3][NB][256];
  alignas(64) float cbuf[2][NB][256];
  __m512 acc[NB][MR];
  const std::int64_t G = KS / gc;
  const auto run = [&](const auto& bsrc, const auto& conv) {
    for (std::int64_t gi = 0; gi < G; gi += 2) {
      w4f_amx_group<0, NB, S>(at, gi, gc, bsrc, conv);
      if (gi + 1 < G) w4f_amx_group<1, NB, S>(at, gi + 1, gc, bsrc, conv);
      w4f_amx_fold<0, NB, MR, S>(sc, gi, cbuf[0], acc);
      if (gi + 1 < G) w4f_amx_fold<1, NB, MR, S>(sc, gi + 1, cbuf[1], acc);
    }
  };
  if (bt[0] != nullptr) {
    run([&](std::int64_t ks, int b) { return bt[b] + ks * 256; }, [](std::int64_t) {});
  } else {
    for (std::int64_t ks = 0; ks < std::min<std::int64_t>(2, KS); ++ks) {
      for (int b = 0; b < NB; ++b) cvt(panel[b], ks, ring[ks][b]);
    }
    run([&](std::int64_t ks, int b) { return ring[ks % 3][b]; },
        [&](std::int64_t ks) {
          if (ks + 2 < KS) {
            for (int b = 0; b < NB; ++b) cvt(panel[b], ks + 2, ring[(ks + 2) % 3][b]);
          }
        });
  }
  #pragma GCC unroll 2
  for (int b = 0; b < NB; ++b) {
    const __mmask16 mask = static_cast<__mmask16>((1u << nr[b]) - 1);
    const __m512 bv = bias ? _mm512_maskz_loadu_ps(mask, bias + 16 * b) : _mm512_setzero_ps();
    #pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      if (i < mr) _mm512_mask_storeu_ps(y + i * ldy + 16 * b, mask, bias ? _mm512_add_ps(acc[b][i], bv) : acc[b][i]);
    }
  }
}

// The tiles run every row count (kW4fAmxRows); up to kW4fAmxStackRows rows the three parts stack
// in one tile (3 x 5 = 15 rows: one tdpbf16ps per block and step instead of three; the parts' sums
// are separate rows of C, added (lo + mid) + hi before the fold, so these batches' bits differ from
// larger ones', within the same bound). A chunk of rows' A tiles take at most kW4fAmxChunkBytes
// (at least one row tile). 4096 x 4096 in the DRAM regime at 1 / 2 / 3 rows ran 1.34-1.42x /
// 1.17-1.27x / 1.59-1.72x the register tiles stacked (docs/benchmarks.md, thirty-seventh session).
constexpr std::int64_t kW4fAmxRows = 1, kW4fAmxStackRows = 5, kW4fAmxChunkBytes = std::int64_t{1} << 20;

// Output columns [n_begin, n_end) of every row. This thread splits the rows itself, chunk by chunk
// (a line's round trip between the VM's vCPUs costs 60-400 ns: tiles another thread wrote ran
// slower than the float rows read here), and returns false where a value has no exact split (the op
// then runs the float kernels). Per chunk, per pair of 16-column blocks: a chunk of one
// row tile converts the blocks' steps as it goes; a chunk of more converts them first (2 x KS KiB,
// reused by each row tile).
__attribute__((target("amx-tile,amx-bf16"))) bool gemm_w4f_amx(const QGemmW4FArgs& g, std::int64_t n_begin,
                                                                std::int64_t n_end) {
  static const W4fAmxB cvt;
  if (g.K < 32 || g.group % 32 != 0) return false;  // (the op sends neither)
  const std::int64_t KS = g.K / 32, G = g.K / g.group, gc = g.group / 32, KB = g.K / 2, steps = (KB + 63) / 64;
  const std::int64_t chunk = std::max<std::int64_t>(1, kW4fAmxChunkBytes / (KS * 3 * 1024)) * 16;
  const std::int64_t mc = std::min(g.M, chunk);
  std::uint32_t* a = amx_scratch<std::uint32_t, struct W4fAmxA>(static_cast<std::size_t>((mc + 15) / 16 * KS * 3 * 256));
  std::uint32_t* bt = g.M > 16 ? amx_scratch<std::uint32_t, struct W4fAmxBt>(static_cast<std::size_t>(2 * KS * 256)) : nullptr;
  std::int32_t* buf = g.panel ? nullptr : detail::thread_scratch<std::int32_t, struct W4fAmxPanel>(static_cast<std::size_t>(2 * steps * 256));
  float* scb = g.blocked_scales ? nullptr : detail::thread_scratch<float, struct W4fAmxScales>(static_cast<std::size_t>(2 * G * 16));
  AmxTileConfig cfg;
  int configured = 0;
  for (std::int64_t m0 = 0; m0 < g.M; m0 += mc) {
    const std::int64_t rows = std::min(mc, g.M - m0);
    const bool stacked = g.M <= kW4fAmxStackRows;  // one chunk: M rows x 3 parts in one tile
    if (!w4f_amx_split(g.x + m0 * g.K, rows, g.K, a, stacked)) {
      if (configured) _tile_release();
      return false;
    }
    for (std::int64_t n = n_begin; n < n_end; n += 32) {
      const int nb = n + 16 < n_end ? 2 : 1;
      const std::int32_t* panel[2] = {};
      const float* sc[2] = {};
      const std::uint32_t* bp[2] = {};
      int nr[2] = {0, 0};
      for (int b = 0; b < nb; ++b) {
        const std::int64_t nn = n + 16 * b;
        nr[b] = static_cast<int>(std::min<std::int64_t>(16, n_end - nn));
        if (g.panel) {
          panel[b] = reinterpret_cast<const std::int32_t*>(g.w + (nn / 16) * steps * 1024);
        } else {
          w4_pack_panel(g.w, g.K, nn, nr[b], buf + b * steps * 256);
          panel[b] = buf + b * steps * 256;
        }
        if (g.blocked_scales) {
          sc[b] = g.gscale + (nn / 16) * G * 16;
        } else {
          transpose_rows_f32(g.gscale, G, nn, nr[b], scb + b * G * 16);
          sc[b] = scb + b * G * 16;
        }
        if (rows > 16) {  // the row tiles share the block's converted steps
          for (std::int64_t ks = 0; ks < KS; ++ks) cvt(panel[b], ks, bt + (b * KS + ks) * 256);
          bp[b] = bt + b * KS * 256;
        }
      }
      for (std::int64_t m = 0; m < rows; m += 16) {
        const int mr = static_cast<int>(std::min<std::int64_t>(16, rows - m));
        const int tr = stacked ? (3 * mr + 3) / 4 * 4 : (mr + 3) / 4 * 4;  // the A and C tiles' rows
        if (configured != tr) {
          for (int t = 0; t < 8; ++t) {
            cfg.rows[t] = static_cast<std::uint8_t>(t == 3 ? 16 : tr);
            cfg.colsb[t] = 64;
          }
          _tile_loadconfig(&cfg);
          configured = tr;
        }
        const std::uint32_t* at = a + (m / 16) * KS * 3 * 256;
        const float* bias = g.bias ? g.bias + n : nullptr;
        float* y = g.y + (m0 + m) * g.N + n;
        if (stacked) {
          const auto run = [&](auto rows_c) {
            constexpr int R = decltype(rows_c)::value;
            if (nb == 2) w4f_amx_tile<R, 2, true>(cvt, at, panel, bp, sc, KS, gc, mr, nr, bias, y, g.N);
            else w4f_amx_tile<R, 1, true>(cvt, at, panel, bp, sc, KS, gc, mr, nr, bias, y, g.N);
          };
          switch (mr) {
            case 1: run(std::integral_constant<int, 1>{}); break;
            case 2: run(std::integral_constant<int, 2>{}); break;
            case 3: run(std::integral_constant<int, 3>{}); break;
            case 4: run(std::integral_constant<int, 4>{}); break;
            default: run(std::integral_constant<int, 5>{}); break;
          }
          continue;
        }
        // two blocks per A tile up to 12 rows (2 x 12 row sums in registers); 16 rows one block at a time
        if (tr == 16) {
          for (int b = 0; b < nb; ++b) {
            const std::int32_t* p1[2] = {panel[b], nullptr};
            const std::uint32_t* b1[2] = {bp[b], nullptr};
            const float* s1[2] = {sc[b], nullptr};
            const int n1[2] = {nr[b], 0};
            w4f_amx_tile<16, 1>(cvt, at, p1, b1, s1, KS, gc, mr, n1, bias ? bias + 16 * b : nullptr, y + 16 * b, g.N);
          }
        } else if (nb == 2) {
          switch (tr / 4) {
            case 3: w4f_amx_tile<12, 2>(cvt, at, panel, bp, sc, KS, gc, mr, nr, bias, y, g.N); break;
            case 2: w4f_amx_tile<8, 2>(cvt, at, panel, bp, sc, KS, gc, mr, nr, bias, y, g.N); break;
            default: w4f_amx_tile<4, 2>(cvt, at, panel, bp, sc, KS, gc, mr, nr, bias, y, g.N); break;
          }
        } else {
          switch (tr / 4) {
            case 3: w4f_amx_tile<12, 1>(cvt, at, panel, bp, sc, KS, gc, mr, nr, bias, y, g.N); break;
            case 2: w4f_amx_tile<8, 1>(cvt, at, panel, bp, sc, KS, gc, mr, nr, bias, y, g.N); break;
            default: w4f_amx_tile<4, 1>(cvt, at, panel, bp, sc, KS, gc, mr, nr, bias, y, g.N); break;
          }
        }
      }
    }
  }
  if (configured) _tile_release();
  return true;
}
#endif  // QATKIT_AMX_KERNELS

// Channels-last depthwise conv (QDwConvArgs' nhwc form), 32 channels per step: the AVX2 table's
// form at 512 bits (pairs of taps, their codes interleaved per 128-bit lane against the weights
// interleaved the same way once per call) with vpdpwssd adding each pair's two products into the
// int32 lanes (the same exact sums: |x| <= 128, |w| <= 127), the two accumulators' lanes (channels
// 0-3, 8-11, 16-19, 24-27 and 4-7, 12-15, ...) put back in order by two vpermt2d, then requantize's
// operations on 16 lanes; a last block of fewer than 32 channels under masks (no scalar tail). Any
// kernel size (pairs at run time); 3 x 3 kernels take dwconv_nhwc_rows3x3 below.
void dwconv_nhwc_rows(const QDwConvArgs& g, std::int64_t oh_begin, std::int64_t oh_end, const std::int64_t* off,
                      const std::int16_t* wi, std::int64_t pairs) {
  const std::int64_t C = g.C, blocks = (C + 31) / 32;
  const std::int64_t Wo = g.Wo, Wp = g.Wp, sh = g.sh, sw = g.sw;
  const std::int16_t* const x = g.x;
  const std::int32_t* const corr = g.corr;
  const float* const out_scale = g.out_scale;
  const float* const bias = g.bias;
  float* const yall = g.y;
  const __m512i idx0 = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
  const __m512i idx1 = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
  for (std::int64_t oh = oh_begin; oh < oh_end; ++oh) {
    for (std::int64_t ow = 0; ow < Wo; ++ow) {
      const std::int16_t* xp = x + ((oh * sh) * Wp + ow * sw) * C;  // tap (0, 0)
      float* y = yall + (oh * Wo + ow) * C;
      for (std::int64_t b = 0; b < blocks; ++b) {
        const std::int64_t c0 = b * 32, nc = std::min<std::int64_t>(32, C - c0);
        const __mmask32 m = nc == 32 ? ~__mmask32{0} : static_cast<__mmask32>((1u << nc) - 1);
        __m512i lo = _mm512_setzero_si512(), hi = _mm512_setzero_si512();
        const std::int16_t* w = wi + b * 64;
        const std::int16_t* xb = xp + c0;
        #pragma GCC unroll 8
        for (std::int64_t p = 0; p < pairs; ++p) {
          const __m512i x0 = _mm512_maskz_loadu_epi16(m, xb + off[2 * p]);
          const __m512i x1 = _mm512_maskz_loadu_epi16(m, xb + off[2 * p + 1]);
          const __m512i wl = _mm512_loadu_si512(w + p * blocks * 64);
          const __m512i wh = _mm512_loadu_si512(w + p * blocks * 64 + 32);
          lo = _mm512_dpwssd_epi32(lo, _mm512_unpacklo_epi16(x0, x1), wl);
          hi = _mm512_dpwssd_epi32(hi, _mm512_unpackhi_epi16(x0, x1), wh);
        }
        const __m512i s[2] = {_mm512_permutex2var_epi32(lo, idx0, hi), _mm512_permutex2var_epi32(lo, idx1, hi)};
        for (int h = 0; h < 2 && 16 * h < nc; ++h) {
          const std::int64_t c = c0 + 16 * h, nh = std::min<std::int64_t>(16, nc - 16 * h);
          const __mmask16 mh = nh == 16 ? __mmask16{0xFFFF} : static_cast<__mmask16>((1u << nh) - 1);
          const __m512i acc = _mm512_add_epi32(s[h], _mm512_maskz_loadu_epi32(mh, corr + c));
          __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(acc), _mm512_maskz_loadu_ps(mh, out_scale + c));
          if (bias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mh, bias + c));
          _mm512_mask_storeu_ps(y + c, mh, v);
        }
      }
    }
  }
}

// A 3 x 3 kernel (5 pairs) with the loops swapped: per output row and block of 32 channels, the
// block's 10 interleaved weight vectors and its requantization constants stay in registers across
// the row's pixels (per pixel and block: 10 code loads, where the per-pixel form, dwconv_nhwc_rows,
// also loads 10 weight vectors and 6 constants: its loads, one 512-bit load a cycle on Zen 4, bounded
// it; 1.02-1.36x on MobileNetV2's shapes, docs/benchmarks.md, nineteenth session). The same
// operations per output: the same bits.
void dwconv_nhwc_rows3x3(const QDwConvArgs& g, std::int64_t oh_begin, std::int64_t oh_end, const std::int64_t* off,
                         const std::int16_t* wi) {
  constexpr int P = 5;
  const std::int64_t C = g.C, blocks = (C + 31) / 32;
  const std::int64_t Wo = g.Wo, Wp = g.Wp, sh = g.sh, step = g.sw * C;
  const std::int16_t* const x = g.x;
  const std::int32_t* const corr = g.corr;
  const float* const out_scale = g.out_scale;
  const float* const bias = g.bias;
  float* const yall = g.y;
  std::int64_t o[2 * P];
  for (int t = 0; t < 2 * P; ++t) o[t] = off[t];
  const __m512i idx0 = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
  const __m512i idx1 = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
  for (std::int64_t oh = oh_begin; oh < oh_end; ++oh) {
    for (std::int64_t b = 0; b < blocks; ++b) {
      const std::int64_t c0 = b * 32, nc = std::min<std::int64_t>(32, C - c0);
      const __mmask32 m = nc == 32 ? ~__mmask32{0} : static_cast<__mmask32>((1u << nc) - 1);
      const std::int64_t n1 = std::max<std::int64_t>(0, std::min<std::int64_t>(16, nc - 16));
      const __mmask16 m0 = nc >= 16 ? __mmask16{0xFFFF} : static_cast<__mmask16>((1u << nc) - 1);
      const __mmask16 m1 = n1 == 16 ? __mmask16{0xFFFF} : static_cast<__mmask16>((1u << n1) - 1);
      __m512i wl[P], wh[P];
#pragma GCC unroll 8
      for (int p = 0; p < P; ++p) {
        wl[p] = _mm512_loadu_si512(wi + (p * blocks + b) * 64);
        wh[p] = _mm512_loadu_si512(wi + (p * blocks + b) * 64 + 32);
      }
      const __m512i cr0 = _mm512_maskz_loadu_epi32(m0, corr + c0), cr1 = _mm512_maskz_loadu_epi32(m1, corr + c0 + 16);
      const __m512 os0 = _mm512_maskz_loadu_ps(m0, out_scale + c0), os1 = _mm512_maskz_loadu_ps(m1, out_scale + c0 + 16);
      const __m512 bs0 = bias ? _mm512_maskz_loadu_ps(m0, bias + c0) : _mm512_setzero_ps();
      const __m512 bs1 = bias ? _mm512_maskz_loadu_ps(m1, bias + c0 + 16) : _mm512_setzero_ps();
      const std::int16_t* xb = x + (oh * sh) * Wp * C + c0;  // pixel (oh, 0)'s tap (0, 0)
      float* y = yall + oh * Wo * C + c0;
      for (std::int64_t ow = 0; ow < Wo; ++ow, xb += step, y += C) {
        __m512i lo = _mm512_setzero_si512(), hi = _mm512_setzero_si512();
#pragma GCC unroll 8
        for (int p = 0; p < P; ++p) {
          const __m512i x0 = _mm512_maskz_loadu_epi16(m, xb + o[2 * p]);
          const __m512i x1 = _mm512_maskz_loadu_epi16(m, xb + o[2 * p + 1]);
          lo = _mm512_dpwssd_epi32(lo, _mm512_unpacklo_epi16(x0, x1), wl[p]);
          hi = _mm512_dpwssd_epi32(hi, _mm512_unpackhi_epi16(x0, x1), wh[p]);
        }
        const __m512i s0 = _mm512_add_epi32(_mm512_permutex2var_epi32(lo, idx0, hi), cr0);
        __m512 v0 = _mm512_mul_ps(_mm512_cvtepi32_ps(s0), os0);
        if (bias) v0 = _mm512_add_ps(v0, bs0);
        _mm512_mask_storeu_ps(y, m0, v0);
        if (n1 > 0) {
          const __m512i s1 = _mm512_add_epi32(_mm512_permutex2var_epi32(lo, idx1, hi), cr1);
          __m512 v1 = _mm512_mul_ps(_mm512_cvtepi32_ps(s1), os1);
          if (bias) v1 = _mm512_add_ps(v1, bs1);
          _mm512_mask_storeu_ps(y + 16, m1, v1);
        }
      }
    }
  }
}

void dwconv_nhwc(const QDwConvArgs& g, std::int64_t oh_begin, std::int64_t oh_end) {
  const std::int64_t C = g.C, taps = g.kh * g.kw, pairs = (taps + 1) / 2, blocks = (C + 31) / 32;
  const std::vector<std::int64_t> off = detail::dwconv_pair_offsets(g);
  std::vector<std::int16_t> wi(static_cast<std::size_t>(pairs * blocks * 64));  // [pair][block][2][32]
  for (std::int64_t p = 0; p < pairs; ++p) {
    for (std::int64_t b = 0; b < blocks; ++b) {
      const std::int64_t c0 = b * 32, nc = std::min<std::int64_t>(32, C - c0);
      const __mmask32 m = nc == 32 ? ~__mmask32{0} : static_cast<__mmask32>((1u << nc) - 1);
      const __m512i w0 = _mm512_maskz_loadu_epi16(m, g.w + 2 * p * C + c0);
      const __m512i w1 = 2 * p + 1 < taps ? _mm512_maskz_loadu_epi16(m, g.w + (2 * p + 1) * C + c0)
                                          : _mm512_setzero_si512();
      std::int16_t* d = wi.data() + (p * blocks + b) * 64;
      _mm512_storeu_si512(d, _mm512_unpacklo_epi16(w0, w1));
      _mm512_storeu_si512(d + 32, _mm512_unpackhi_epi16(w0, w1));
    }
  }
  if (pairs == 5) {
    dwconv_nhwc_rows3x3(g, oh_begin, oh_end, off.data(), wi.data());
  } else {
    dwconv_nhwc_rows(g, oh_begin, oh_end, off.data(), wi.data(), pairs);
  }
}

}  // namespace

const QGemmKernels* qgemm_avx512() {
  static const QGemmKernels k = [] {
    QGemmKernels t = *qgemm_avx2();  // activation quantization
    t.gemm_w4f = &gemm_w4f;
    // linear_w4_weight_only: gemm_w4f's register tiles below 384 rows on both layouts (its comment),
    // then dequantize-then-MKL (MiniLM's layer shapes, hot, against FP32 in the same run: 416 rows
    // tiles 0.83-0.91x, MKL path 0.84-0.88x; 1024 rows 0.72-0.83x against 0.86-0.95x); no packed GEMM
    // nor middle path (the row layout, 4096 x 4096, DRAM regime: 32 / 64 / 128 / 256 rows tiles
    // 1.53 / 1.19 / 1.04 / 0.94x, middle path then packed GEMM 1.17 / 0.79 / 0.91 / 0.84x)
    // On AMD (measured on Zen 4, whose 512-bit operations run through 256-bit pipes, and where the
    // MKL path's GEMM is MKL's, as FP32's) the tiles run every row count: MiniLM's layer shapes and
    // 4096 x 4096, same process, against FP32, 384-2048 rows: tiles 1.03-1.46x, the AVX2 table's
    // packed GEMM 0.95-1.31x (tiles / packed 0.97-1.15x, 11 of 13 cases ahead), the MKL path
    // 0.86-1.10x; 8192 rows tiles 1.04-1.29x, packed 1.07-1.22x (docs/benchmarks.md, seventeenth
    // session). Other CPUs switch to the MKL path at 384 rows, as tuned on the Intel Xeon.
    t.w4f_gemm_rows = cpu_is_amd() ? std::numeric_limits<std::int64_t>::max() : 384;
    t.gemm_w4f_packed = nullptr;  // the AVX2 table's (t's): loops.h's packed GEMM, AVX2's alone
    t.w4f_packed_rows = 0;
    t.gemm_w4f_xt = nullptr;
    t.gemm_s8 = &gemm_s8;
    t.dwconv_nhwc = &dwconv_nhwc;
    t.gemm_w4 = &gemm_w4;
    t.gemm_t2 = &gemm_t2;
    t.gemm_b1 = &gemm_b1;
    t.gemm_w8f = &detail::gemm_w8f_loop;  // loops.h's loop at 512 bits
    t.dequant_w8f = &detail::dequant_w8f_rows;
    // linear_w8_weight_only: the middle path's tiles from 12 rows, the GEMM path from 128 (4096 x
    // 4096: 8 rows: lane sums 1.96-2.39x FP32, tiles 1.94-2.14x; 12 rows 2.12-2.17x against 2.38-2.48x;
    // 16 rows 0.96-1.01x against 1.40-1.79x, 32 rows 0.72-0.77x against 1.38-1.63x; 64 rows tiles
    // 1.04-1.05x, GEMM path 0.78-0.83x; 128 rows 0.74-1.01x against 0.81-0.95x; 160 rows 0.78x against 0.86x)
    // On AMD (Zen 4, same process against FP32, MiniLM's shapes and 4096 x 4096) the tiles run every
    // row count: 128-384 rows tiles 1.00-1.16x (4096 x 4096, 256 rows: 1.53x), the GEMM path
    // 0.84-0.97x (1.21x); 640-2048 rows 0.97-1.20x against 0.88-1.05x (docs/benchmarks.md,
    // seventeenth session).
    t.w8f_gemm_rows = cpu_is_amd() ? std::numeric_limits<std::int64_t>::max() : 128;
    t.w8f_xt_rows = 12;
    t.gemm_w8f_xt = &detail::gemm_w8f_xt;  // loops.h's tiles at 512 bits
    t.wof_tile_rows = detail::kWofRows;
    // XNOR: vpopcntq where the CPU has it, else the AVX2 table's kernel (t's already)
    if (__builtin_cpu_supports("avx512vpopcntdq")) t.gemm_xnor = &gemm_xnor;
    return t;
  }();
  return &k;
}

const QGemmKernels* qgemm_amx() {
#ifdef QATKIT_AMX_KERNELS
  static const QGemmKernels k = [] {
    QGemmKernels t = *qgemm_avx512();
    t.gemm_s8 = &gemm_s8_amx;
    if (cpu_has_amx_bf16()) {
      t.gemm_w4f_amx = &gemm_w4f_amx;
      t.w4f_amx_rows = kW4fAmxRows;
    }
    return t;
  }();
  return &k;
#else
  return nullptr;
#endif
}

}  // namespace qatkit::kernels::cpu

#else

namespace qatkit::kernels::cpu {
const QGemmKernels* qgemm_avx512() { return nullptr; }
const QGemmKernels* qgemm_amx() { return nullptr; }
}  // namespace qatkit::kernels::cpu

#endif
