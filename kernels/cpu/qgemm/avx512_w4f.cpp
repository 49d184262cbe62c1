// Weight-only W4 (float activations): register tiles on AVX-512 and AMX-BF16 tiles (the amx table).
#include "avx512_common.h"

#ifdef QATKIT_AVX512_KERNELS
namespace qatkit::kernels::cpu::avx512 {
namespace {

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

}  // namespace

void add_w4f(QGemmKernels& t) {
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
}

#ifdef QATKIT_AMX_KERNELS
void add_w4f_amx(QGemmKernels& t) {
  if (cpu_has_amx_bf16()) {
    t.gemm_w4f_amx = &gemm_w4f_amx;
    t.w4f_amx_rows = kW4fAmxRows;
  }
}
#endif

}  // namespace qatkit::kernels::cpu::avx512
#endif
