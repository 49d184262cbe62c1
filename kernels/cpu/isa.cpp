// Run-time choice of the CPU instruction set (best supported, or QATKIT_CPU_ISA / set_isa()).
#include "isa.h"

#include <atomic>
#include <cstdlib>
#include <cstring>

#if (defined(__x86_64__) || defined(__i386__)) && defined(__linux__)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace qatkit::kernels::cpu {
namespace {

bool cpu_has_avx2() {
#if defined(__x86_64__) || defined(__i386__)
  static const bool ok =
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c") &&
      __builtin_cpu_supports("popcnt");
  return ok;
#else
  return false;
#endif
}

bool cpu_has_avx512() {
#if defined(__x86_64__) || defined(__i386__)
  static const bool ok = cpu_has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
  return ok;
#else
  return false;
#endif
}

// Intel AMX with int8 tiles, usable by this process: the CPU's cpuid (leaf 7: AMX-TILE, EDX bit 24;
// AMX-INT8, bit 25), the OS's XCR0 (tile config and data state, bits 17 and 18) and, on Linux, the
// permission for the 8 KiB tile data state that the kernel grants per process on request
// (arch_prctl ARCH_REQ_XCOMP_PERM); without it the first tile instruction raises SIGILL.
bool cpu_has_amx() {
#if (defined(__x86_64__) || defined(__i386__)) && defined(__linux__)
  static const bool ok = [] {
    if (!cpu_has_avx512()) return false;
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !((d >> 24) & 1u) || !((d >> 25) & 1u)) return false;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !((c >> 27) & 1u)) return false;  // OSXSAVE: xgetbv works
    unsigned lo = 0, hi = 0;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if (((lo >> 17) & 3u) != 3u) return false;
    constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return ok;
#else
  return false;
#endif
}

}  // namespace

bool cpu_has_amx_bf16() {
#if (defined(__x86_64__) || defined(__i386__)) && defined(__linux__)
  // AMX-BF16 (leaf 7 EDX bit 22), on top of cpu_has_amx's tile state and permission.
  static const bool ok = [] {
    if (!cpu_has_amx()) return false;
    unsigned a = 0, b = 0, c = 0, d = 0;
    return __get_cpuid_count(7, 0, &a, &b, &c, &d) && ((d >> 22) & 1u);
  }();
  return ok;
#else
  return false;
#endif
}

bool cpu_is_amd() {
#if defined(__x86_64__) || defined(__i386__)
  static const bool amd = __builtin_cpu_is("amd");
  return amd;
#else
  return false;
#endif
}

namespace {

bool by_name(const char* name, Isa* out) {
  for (int i = 0; i < kIsaCount; ++i) {
    const Isa isa = static_cast<Isa>(i);
    if (std::strcmp(name, isa_name(isa)) == 0) {
      *out = isa;
      return true;
    }
  }
  return false;
}

Isa initial() {
  Isa isa;
  if (const char* env = std::getenv("QATKIT_CPU_ISA")) {
    if (by_name(env, &isa) && isa_supported(isa)) return isa;
  }
  if (isa_supported(Isa::kAmx)) return Isa::kAmx;
  if (isa_supported(Isa::kAvx512)) return Isa::kAvx512;
  return isa_supported(Isa::kAvx2) ? Isa::kAvx2 : Isa::kBaseline;
}

std::atomic<int>& current() {
  static std::atomic<int> isa{static_cast<int>(initial())};
  return isa;
}

}  // namespace

const char* isa_name(Isa isa) {
  return isa == Isa::kAmx ? "amx" : isa == Isa::kAvx512 ? "avx512" : isa == Isa::kAvx2 ? "avx2" : "baseline";
}

bool isa_supported(Isa isa) {
  return isa == Isa::kBaseline || (isa == Isa::kAvx2 && cpu_has_avx2()) || (isa == Isa::kAvx512 && cpu_has_avx512()) ||
         (isa == Isa::kAmx && cpu_has_amx());
}

Isa active_isa() { return static_cast<Isa>(current().load(std::memory_order_acquire)); }

bool set_isa(const char* name) {
  Isa isa;
  if (name == nullptr || !by_name(name, &isa) || !isa_supported(isa)) return false;
  current().store(static_cast<int>(isa), std::memory_order_release);
  return true;
}

}  // namespace qatkit::kernels::cpu
