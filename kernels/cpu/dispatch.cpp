// Run-time choice of the CPU instruction set (best supported, or QATKIT_CPU_ISA / set_isa()).
#include <atomic>
#include <cstdlib>
#include <cstring>

#include "fake_quant_cpu.h"

namespace qatkit::kernels::cpu {
namespace {

const FakeQuantKernels* by_name(const char* name) {
  if (std::strcmp(name, "baseline") == 0) return &baseline_kernels();
  if (std::strcmp(name, "avx2") == 0) return avx2_kernels();
  return nullptr;
}

const FakeQuantKernels* initial() {
  if (const char* env = std::getenv("QATKIT_CPU_ISA")) {
    if (const FakeQuantKernels* k = by_name(env)) return k;
  }
  const FakeQuantKernels* best = avx2_kernels();
  return best ? best : &baseline_kernels();
}

std::atomic<const FakeQuantKernels*>& current() {
  static std::atomic<const FakeQuantKernels*> k{initial()};
  return k;
}

}  // namespace

const FakeQuantKernels& active_kernels() { return *current().load(std::memory_order_acquire); }

bool set_isa(const char* name) {
  const FakeQuantKernels* k = name ? by_name(name) : nullptr;
  if (!k) return false;
  current().store(k, std::memory_order_release);
  return true;
}

}  // namespace qatkit::kernels::cpu
