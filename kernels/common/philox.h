// Counter-based random numbers (Philox4x32-10, Salmon et al. SC'11): the same bits on CPU and
// CUDA for a (key, counter) pair, no state, so stochastic ops are reproducible and compile-safe.
#pragma once

#include <cstdint>

#include "macros.h"

namespace qatkit::kernels {
namespace {  // internal linkage: compiled into several instruction-set translation units

QATKIT_HD void philox_round(std::uint32_t (&c)[4], const std::uint32_t (&k)[2]) {
  const std::uint64_t p0 = static_cast<std::uint64_t>(0xD2511F53u) * c[0];
  const std::uint64_t p1 = static_cast<std::uint64_t>(0xCD9E8D57u) * c[2];
  const std::uint32_t hi0 = static_cast<std::uint32_t>(p0 >> 32), lo0 = static_cast<std::uint32_t>(p0);
  const std::uint32_t hi1 = static_cast<std::uint32_t>(p1 >> 32), lo1 = static_cast<std::uint32_t>(p1);
  c[0] = hi1 ^ c[1] ^ k[0];
  c[1] = lo1;
  c[2] = hi0 ^ c[3] ^ k[1];
  c[3] = lo0;
}

/// First 32-bit word of Philox4x32-10 for a 64-bit key and a 64-bit counter.
QATKIT_HD std::uint32_t philox_u32(std::uint64_t key, std::uint64_t counter) {
  std::uint32_t c[4] = {static_cast<std::uint32_t>(counter), static_cast<std::uint32_t>(counter >> 32), 0u, 0u};
  std::uint32_t k[2] = {static_cast<std::uint32_t>(key), static_cast<std::uint32_t>(key >> 32)};
  for (int r = 0; r < 10; ++r) {
    philox_round(c, k);
    if (r < 9) {
      k[0] += 0x9E3779B9u;
      k[1] += 0xBB67AE85u;
    }
  }
  return c[0];
}

/// Uniform float in [0, 1) with 24 random bits (exactly representable, identical everywhere).
QATKIT_HD float philox_uniform(std::uint64_t key, std::uint64_t counter) {
  return static_cast<float>(philox_u32(key, counter) >> 8) * (1.0f / 16777216.0f);
}

}  // namespace
}  // namespace qatkit::kernels
