// Intel AMX-BF16 costs behind linear_w4_weight_only's tiles (kernels/cpu/qgemm/avx512_w4f.cpp,
// "weight-only W4 on AMX-BF16 tiles"; docs/benchmarks.md, thirty-seventh session), per step of one
// row tile against four 16-column blocks (what 4 x 512 weights cost at 12 rows):
//   tdp     12 tdpbf16ps (three activation parts x four blocks), the A tiles reloaded per step and
//           one B tile reloaded per block;
//   cvt     four blocks' B tiles converted from a 4-bit panel step (16 rows of 16 words each):
//           "gather" = vpermt2b of each byte's two nibbles then vpermw, "shift" = the codes shifted
//           right by 4t bits, then one vpermw (the kernel's);
//   fold    the four C tiles stored to L1, and their 12 rows each folded into sums by FMAs;
// and the three together, which show whether the tile unit's work and the vector work overlap.
// A dependent vpaddd chain (latency 1) gives the core clock. Build and run: bash scripts/amx_throughput.sh
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <initializer_list>

namespace {

struct alignas(64) TileConfig {
  std::uint8_t palette = 1, start_row = 0;
  std::uint8_t reserved[14] = {};
  std::uint16_t colsb[16] = {};
  std::uint8_t rows[16] = {};
};

alignas(64) std::uint16_t A[8][16 * 32];
alignas(64) std::uint16_t B[4][16 * 32];
alignas(64) std::uint32_t panel[8][64];  // a block's panel step: 4 vectors of 16 lanes
alignas(64) std::uint32_t ring[4][256];  // converted B tiles
alignas(64) float cbuf[4][256];

constexpr long kIters = 400000;

template <class F>
double ns_per_iter(F&& f) {
  for (long i = 0; i < kIters / 10; ++i) f(i);
  const auto t0 = std::chrono::steady_clock::now();
  for (long i = 0; i < kIters; ++i) f(i);
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / kIters * 1e9;
}

__attribute__((noinline)) void cvt_gather(std::uint32_t* dst, const std::uint32_t* src, __m512i lut, const __m512i* ctl) {
  const __m512i low4 = _mm512_set1_epi8(15);
  for (int e = 0; e < 4; ++e) {
    const __m512i v = _mm512_load_si512(src + e * 16);
    const __m512i lo = _mm512_and_si512(v, low4), hi = _mm512_and_si512(_mm512_srli_epi32(v, 4), low4);
    for (int j = 0; j < 4; ++j) {
      const __m512i idx = _mm512_maskz_permutex2var_epi8(0x5555555555555555ull, lo, ctl[j], hi);
      _mm512_store_si512(dst + (4 * e + j) * 16, _mm512_permutexvar_epi16(idx, lut));
    }
  }
}

__attribute__((noinline)) void cvt_shift(std::uint32_t* dst, const std::uint32_t* src, __m512i lut, const __m512i*) {
  for (int e = 0; e < 4; ++e) {  // row 4e + t: the codes shifted right by 4t bits, one vpermw
    const __m512i v = _mm512_load_si512(src + e * 16);
#pragma GCC unroll 4
    for (int t = 0; t < 4; ++t) _mm512_store_si512(dst + (4 * e + t) * 16, _mm512_permutexvar_epi16(_mm512_srli_epi32(v, 4 * t), lut));
  }
}

#define QK_BLOCK(c, b)                 \
  _tile_loadd(3, B[b], 64);            \
  _tile_dpbf16ps(c, 0, 3);             \
  _tile_dpbf16ps(c, 1, 3);             \
  _tile_dpbf16ps(c, 2, 3);

__attribute__((target("amx-tile,amx-bf16"))) void run(int rows) {
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.rows[t] = static_cast<std::uint8_t>(t == 3 ? 16 : rows);
    cfg.colsb[t] = 64;
  }
  _tile_loadconfig(&cfg);
  for (int t = 4; t < 8; ++t) {
    if (t == 4) _tile_zero(4);
    if (t == 5) _tile_zero(5);
    if (t == 6) _tile_zero(6);
    if (t == 7) _tile_zero(7);
  }
  // bf16 of c - 8 for the 16 codes c, written twice (an index's fifth bit selects the same entry)
  const __m512i lut16 = _mm512_castsi256_si512(_mm256_setr_epi16(
      -16128, -16160, -16192, -16224, -16256, -16320, -16384, -16512, 0, 16256, 16384, 16448, 16512, 16544, 16576, 16608));
  const __m512i lut = _mm512_inserti64x4(lut16, _mm512_castsi512_si256(lut16), 1);
  __m512i ctl[4];
  alignas(64) std::uint8_t cb[64];
  for (int j = 0; j < 4; ++j) {
    for (int n = 0; n < 16; ++n) {
      cb[4 * n] = static_cast<std::uint8_t>(4 * n + j);
      cb[4 * n + 1] = 0;
      cb[4 * n + 2] = static_cast<std::uint8_t>(64 + 4 * n + j);
      cb[4 * n + 3] = 0;
    }
    ctl[j] = _mm512_load_si512(cb);
  }
  __m512 acc[4][16];
  for (auto& a : acc)
    for (auto& r : a) r = _mm512_setzero_ps();
  const __m512 s = _mm512_set1_ps(0.5f);
  const auto tdp = [&](long i) {
    _tile_loadd(0, A[i & 7], 64);
    _tile_loadd(1, A[(i + 1) & 7], 64);
    _tile_loadd(2, A[(i + 2) & 7], 64);
    QK_BLOCK(4, 0) QK_BLOCK(5, 1) QK_BLOCK(6, 2) QK_BLOCK(7, 3)
  };
  const auto cvt = [&](long i, bool shift) {
    for (int b = 0; b < 4; ++b) (shift ? cvt_shift : cvt_gather)(ring[b], panel[(i + b) & 7], lut, ctl);
  };
  const auto fold = [&](long) {
    _tile_stored(4, cbuf[0], 64);
    _tile_stored(5, cbuf[1], 64);
    _tile_stored(6, cbuf[2], 64);
    _tile_stored(7, cbuf[3], 64);
    for (int b = 0; b < 4; ++b) {
      for (int r = 0; r < rows; ++r) acc[b][r] = _mm512_fmadd_ps(_mm512_load_ps(cbuf[b] + r * 16), s, acc[b][r]);
    }
    _tile_zero(4);
    _tile_zero(5);
    _tile_zero(6);
    _tile_zero(7);
  };
  const double t_tdp = ns_per_iter(tdp);
  const double t_gather = ns_per_iter([&](long i) { cvt(i, false); });
  const double t_shift = ns_per_iter([&](long i) { cvt(i, true); });
  const double t_fold = ns_per_iter(fold);
  const double t_all = ns_per_iter([&](long i) {
    tdp(i);
    cvt(i, true);
    fold(i);
  });
  std::printf("| %d | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f |\n", rows, t_tdp, t_gather, t_shift, t_fold,
              t_tdp + t_shift + t_fold, t_all);
  float sink = 0;
  for (auto& a : acc)
    for (auto& r : a) sink += _mm512_reduce_add_ps(r);
  if (sink == 12345.f) std::printf("%f\n", sink);
  _tile_release();
}

double clock_ghz() {
  __m512i v = _mm512_set1_epi32(1);
  const auto t0 = std::chrono::steady_clock::now();
  constexpr long n = 50000000;
  for (long i = 0; i < n; ++i) __asm__ volatile("vpaddd %0, %0, %0" : "+v"(v));
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return n / s / 1e9;
}

}  // namespace

int main() {
  constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  if (syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) != 0) {
    std::fprintf(stderr, "amx_throughput: Linux refused the AMX tile state\n");
    return 1;
  }
  for (auto& a : A)
    for (auto& v : a) v = 0x3F80;  // bf16 1.0
  for (auto& b : B)
    for (auto& v : b) v = 0x3F80;
  for (int i = 0; i < 8; ++i)
    for (int j = 0; j < 64; ++j) panel[i][j] = 0x76543210u + static_cast<std::uint32_t>(i * 64 + j);
  std::printf("core clock about %.2f GHz (a dependent vpaddd chain)\n\n", clock_ghz());
  std::printf("ns per step of one row tile x four 16-column blocks (4 x 512 weights):\n\n");
  std::printf("| rows | tdp (12 tdpbf16ps) | cvt gather | cvt shift | fold | sum (shift) | all three, one loop |\n");
  std::printf("|---|---|---|---|---|---|---|\n");
  for (int rows : {16, 12, 4}) run(rows);
  return 0;
}
