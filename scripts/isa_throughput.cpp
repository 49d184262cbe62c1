// Vector-integer instruction throughput of this x86 core (AVX2): each test runs 12 independent
// register chains of one instruction (or an alternating pair) in inline assembly, timed by rdtsc;
// a dependent vpaddd chain (latency 1) gives the core clock in TSC ticks, so results are per core
// cycle. Used to see which of the integer GEMM's instructions share pipes (docs/benchmarks.md,
// "W8A8 at batch 64"). The second table times the int4 weight-only packed GEMM's inner loops per k
// of a 12-row x 8-column product (12 FMAs): its register tile on a dequantized panel in L1, the
// dequantization alone, and the two fused (each weight vector dequantized in registers straight into
// the FMAs), which measures whether the dequantization can hide under the FMAs (docs/benchmarks.md,
// "int4_weight_only: fusing the dequantization"). Build and run: bash scripts/isa_throughput.sh
#include <x86intrin.h>

#include <cstdint>
#include <cstdio>

namespace {

constexpr long long kIters = 20000000;

#define QK_OP12(op)                                                                                          \
  op " %%ymm12,%%ymm0,%%ymm0\n" op " %%ymm12,%%ymm1,%%ymm1\n" op " %%ymm12,%%ymm2,%%ymm2\n" op             \
     " %%ymm12,%%ymm3,%%ymm3\n" op " %%ymm12,%%ymm4,%%ymm4\n" op " %%ymm12,%%ymm5,%%ymm5\n" op              \
     " %%ymm12,%%ymm6,%%ymm6\n" op " %%ymm12,%%ymm7,%%ymm7\n" op " %%ymm12,%%ymm8,%%ymm8\n" op              \
     " %%ymm12,%%ymm9,%%ymm9\n" op " %%ymm12,%%ymm10,%%ymm10\n" op " %%ymm12,%%ymm11,%%ymm11\n"
#define QK_PAIR6(a, b)                                                                                       \
  a " %%ymm12,%%ymm0,%%ymm0\n" b " %%ymm12,%%ymm1,%%ymm1\n" a " %%ymm12,%%ymm2,%%ymm2\n" b                 \
    " %%ymm12,%%ymm3,%%ymm3\n" a " %%ymm12,%%ymm4,%%ymm4\n" b " %%ymm12,%%ymm5,%%ymm5\n" a                  \
    " %%ymm12,%%ymm6,%%ymm6\n" b " %%ymm12,%%ymm7,%%ymm7\n" a " %%ymm12,%%ymm8,%%ymm8\n" b                  \
    " %%ymm12,%%ymm9,%%ymm9\n" a " %%ymm12,%%ymm10,%%ymm10\n" b " %%ymm12,%%ymm11,%%ymm11\n"
#define QK_CLOBBER "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12"
#define QK_TEST(name, body)                                                              \
  {                                                                                      \
    const std::uint64_t t0 = __rdtsc();                                                  \
    for (long long i = 0; i < kIters; ++i) __asm__ volatile(body ::: QK_CLOBBER);        \
    const double t = static_cast<double>(__rdtsc() - t0) / kIters / 12;                  \
    std::printf("| %-22s | %6.3f | %5.2f |\n", name, t, cycle / t);                      \
  }

// Per k of the weight-only tile: x rows' values at %0 (12 floats per k), a code vector at %1, the
// scales at %2, a dequantized panel row at %3, constants at %4 (8 x 15, 8 x 8); ymm0-11 the 12
// accumulators, ymm12 the weight vector, ymm13 a broadcast, ymm14 / ymm15 scratch.
#define QK_B12(OFF)                                                                           \
  "vbroadcastss " #OFF "+0(%0),%%ymm13\n vfmadd231ps %%ymm13,%%ymm12,%%ymm0\n"                 \
  "vbroadcastss " #OFF "+4(%0),%%ymm13\n vfmadd231ps %%ymm13,%%ymm12,%%ymm1\n"                 \
  "vbroadcastss " #OFF "+8(%0),%%ymm13\n vfmadd231ps %%ymm13,%%ymm12,%%ymm2\n"                 \
  "vbroadcastss " #OFF "+12(%0),%%ymm13\n vfmadd231ps %%ymm13,%%ymm12,%%ymm3\n"                \
  "vbroadcastss " #OFF "+16(%0),%%ymm13\n vfmadd231ps %%ymm13,%%ymm12,%%ymm4\n"                \
  "vbroadcastss " #OFF "+20(%0),%%ymm13\n vfmadd231ps %%ymm13,%%ymm12,%%ymm5\n"                \
  "vbroadcastss " #OFF "+24(%0),%%ymm13\n vfmadd231ps %%ymm13,%%ymm12,%%ymm6\n"                \
  "vbroadcastss " #OFF "+28(%0),%%ymm13\n vfmadd231ps %%ymm13,%%ymm12,%%ymm7\n"                \
  "vbroadcastss " #OFF "+32(%0),%%ymm13\n vfmadd231ps %%ymm13,%%ymm12,%%ymm8\n"                \
  "vbroadcastss " #OFF "+36(%0),%%ymm13\n vfmadd231ps %%ymm13,%%ymm12,%%ymm9\n"                \
  "vbroadcastss " #OFF "+40(%0),%%ymm13\n vfmadd231ps %%ymm13,%%ymm12,%%ymm10\n"               \
  "vbroadcastss " #OFF "+44(%0),%%ymm13\n vfmadd231ps %%ymm13,%%ymm12,%%ymm11\n"
// loops.h's w4_panel_chunk: float((q >> s & 15) - 8) * scale
#define QK_DQ(SH)                                                                                       \
  "vmovdqu (%1),%%ymm15\n vpsrld $" #SH ",%%ymm15,%%ymm12\n vpand (%4),%%ymm12,%%ymm12\n"               \
  "vpsubd 32(%4),%%ymm12,%%ymm12\n vcvtdq2ps %%ymm12,%%ymm12\n vmulps (%2),%%ymm12,%%ymm12\n"
// the packed GEMM's tile: 6 rows x 2 vectors (12 FMAs per k)
#define QK_T6X2(OFF)                                                                                                \
  "vmovups (%3),%%ymm12\n vmovups 32(%3),%%ymm14\n"                                                                  \
  "vbroadcastss " #OFF "+0(%0),%%ymm13\n vfmadd231ps %%ymm13,%%ymm12,%%ymm0\n vfmadd231ps %%ymm13,%%ymm14,%%ymm1\n"  \
  "vbroadcastss " #OFF "+4(%0),%%ymm13\n vfmadd231ps %%ymm13,%%ymm12,%%ymm2\n vfmadd231ps %%ymm13,%%ymm14,%%ymm3\n"  \
  "vbroadcastss " #OFF "+8(%0),%%ymm13\n vfmadd231ps %%ymm13,%%ymm12,%%ymm4\n vfmadd231ps %%ymm13,%%ymm14,%%ymm5\n"  \
  "vbroadcastss " #OFF "+12(%0),%%ymm13\n vfmadd231ps %%ymm13,%%ymm12,%%ymm6\n vfmadd231ps %%ymm13,%%ymm14,%%ymm7\n" \
  "vbroadcastss " #OFF "+16(%0),%%ymm13\n vfmadd231ps %%ymm13,%%ymm12,%%ymm8\n vfmadd231ps %%ymm13,%%ymm14,%%ymm9\n" \
  "vbroadcastss " #OFF "+20(%0),%%ymm13\n vfmadd231ps %%ymm13,%%ymm12,%%ymm10\n vfmadd231ps %%ymm13,%%ymm14,%%ymm11\n"
#define QK_CLOBBER16 QK_CLOBBER, "xmm13", "xmm14", "xmm15", "memory"
alignas(64) float g_x[64];
alignas(64) std::int32_t g_codes[8] = {0x12345678, 0x23456781, 0x34567812, 0x45678123,
                                       0x56781234, 0x67812345, 0x78123456, 0x01234567};
alignas(64) float g_scale[8] = {0.1f, 0.2f, 0.3f, 0.4f, 0.5f, 0.6f, 0.7f, 0.8f};
alignas(64) float g_panel[16];
alignas(64) std::int32_t g_const[16] = {15, 15, 15, 15, 15, 15, 15, 15, 8, 8, 8, 8, 8, 8, 8, 8};
#define QK_TILE(name, body)                                                                                      \
  {                                                                                                              \
    const std::uint64_t t0 = __rdtsc();                                                                          \
    for (long long i = 0; i < kIters; ++i)                                                                       \
      __asm__ volatile(body ::"r"(g_x), "r"(g_codes), "r"(g_scale), "r"(g_panel), "r"(g_const) : QK_CLOBBER16); \
    const double t = static_cast<double>(__rdtsc() - t0) / kIters / 4;                                           \
    std::printf("| %-44s | %6.3f | %5.2f |\n", name, t, t / cycle);                                              \
  }

}  // namespace

int main() {
  const std::uint64_t t0 = __rdtsc();
  for (long long i = 0; i < kIters; ++i) {
    __asm__ volatile(
        "vpaddd %%ymm12,%%ymm0,%%ymm0\n vpaddd %%ymm12,%%ymm0,%%ymm0\n vpaddd %%ymm12,%%ymm0,%%ymm0\n"
        "vpaddd %%ymm12,%%ymm0,%%ymm0\n vpaddd %%ymm12,%%ymm0,%%ymm0\n vpaddd %%ymm12,%%ymm0,%%ymm0\n"
        "vpaddd %%ymm12,%%ymm0,%%ymm0\n vpaddd %%ymm12,%%ymm0,%%ymm0\n" ::: "xmm0", "xmm12");
  }
  const double cycle = static_cast<double>(__rdtsc() - t0) / kIters / 8;
  std::printf("core cycle = %.3f TSC ticks (a dependent vpaddd chain)\n\n", cycle);
  std::printf("| instructions (12 chains) | TSC ticks / instr | instr / cycle |\n|---|---|---|\n");
  QK_TEST("vpaddd", QK_OP12("vpaddd"))
  QK_TEST("vpxor", QK_OP12("vpxor"))
  QK_TEST("vpmaddwd", QK_OP12("vpmaddwd"))
  QK_TEST("vpmaddubsw", QK_OP12("vpmaddubsw"))
  QK_TEST("vpsignb", QK_OP12("vpsignb"))
  QK_TEST("vpshufb", QK_OP12("vpshufb"))
  QK_TEST("vpsrlvd", QK_OP12("vpsrlvd"))
  QK_TEST("vpmaddubsw + vpmaddwd", QK_PAIR6("vpmaddubsw", "vpmaddwd"))
  QK_TEST("vpsignb + vpmaddwd", QK_PAIR6("vpsignb", "vpmaddwd"))
  QK_TEST("vpaddd + vpmaddwd", QK_PAIR6("vpaddd", "vpmaddwd"))
  QK_TEST("vfmadd231ps", QK_OP12("vfmadd231ps"))
  QK_TEST("vfmadd231ps + vpmaddubsw", QK_PAIR6("vfmadd231ps", "vpmaddubsw"))
  QK_TEST("vfmadd231ps + vpsignb", QK_PAIR6("vfmadd231ps", "vpsignb"))
  std::printf("\n| int4 weight-only, per k of 12 rows x 8 columns (12 FMAs) | TSC ticks | core cycles |\n|---|---|---|\n");
  QK_TILE("tile 6 x 16 on a dequantized panel (loops.h)", QK_T6X2(0) QK_T6X2(24) QK_T6X2(48) QK_T6X2(72))
  QK_TILE("dequantization alone, stored (w4_panel_chunk)",
          QK_DQ(0) "vmovups %%ymm12,(%3)\n" QK_DQ(4) "vmovups %%ymm12,32(%3)\n" QK_DQ(8) "vmovups %%ymm12,(%3)\n"
          QK_DQ(12) "vmovups %%ymm12,32(%3)\n")
  QK_TILE("tile 12 x 8 on a dequantized panel", "vmovups (%3),%%ymm12\n" QK_B12(0) "vmovups (%3),%%ymm12\n" QK_B12(48)
          "vmovups (%3),%%ymm12\n" QK_B12(96) "vmovups (%3),%%ymm12\n" QK_B12(144))
  QK_TILE("tile 12 x 8, dequantized in registers (fused)", QK_DQ(0) QK_B12(0) QK_DQ(4) QK_B12(48) QK_DQ(8) QK_B12(96)
          QK_DQ(12) QK_B12(144))
  return 0;
}
