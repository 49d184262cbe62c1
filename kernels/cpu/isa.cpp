// Run-time choice of the CPU instruction set (best supported, or QATKIT_CPU_ISA / set_isa()).
#include "isa.h"

#include <atomic>
#include <cstdlib>
#include <cstring>

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

}  // namespace

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
  if (isa_supported(Isa::kAvx512)) return Isa::kAvx512;
  return isa_supported(Isa::kAvx2) ? Isa::kAvx2 : Isa::kBaseline;
}

std::atomic<int>& current() {
  static std::atomic<int> isa{static_cast<int>(initial())};
  return isa;
}

}  // namespace

const char* isa_name(Isa isa) {
  return isa == Isa::kAvx512 ? "avx512" : isa == Isa::kAvx2 ? "avx2" : "baseline";
}

bool isa_supported(Isa isa) {
  return isa == Isa::kBaseline || (isa == Isa::kAvx2 && cpu_has_avx2()) || (isa == Isa::kAvx512 && cpu_has_avx512());
}

Isa active_isa() { return static_cast<Isa>(current().load(std::memory_order_acquire)); }

bool set_isa(const char* name) {
  Isa isa;
  if (name == nullptr || !by_name(name, &isa) || !isa_supported(isa)) return false;
  current().store(static_cast<int>(isa), std::memory_order_release);
  return true;
}

}  // namespace qatkit::kernels::cpu
