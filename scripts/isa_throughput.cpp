// Vector-integer instruction throughput of this x86 core (AVX2): each test runs 12 independent
// register chains of one instruction (or an alternating pair) in inline assembly, timed by rdtsc;
// a dependent vpaddd chain (latency 1) gives the core clock in TSC ticks, so results are per core
// cycle. Used to see which of the integer GEMM's instructions share pipes (docs/benchmarks.md,
// "W8A8 at batch 64"). Build and run: bash scripts/isa_throughput.sh
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
  return 0;
}
