// What this build of libqatkit contains (version, torch it was built against, CUDA, CPU ISA).
#pragma once

#include <string>

#include "macros.h"

namespace qatkit {

struct BuildInfo {
  std::string version;        ///< qatkit version
  std::string torch_version;  ///< torch version the library was compiled against
  bool cuda = false;          ///< CUDA kernels compiled into the library
  std::string cpu_isa;        ///< CPU kernel implementation in use ("amx", "avx512", "avx2" or "baseline")
  /// The "amx" table runs linear_w4_weight_only (symmetric groups, every batch) on AMX-BF16 tiles
  /// on this CPU: its outputs then keep the weight-only float bound in their own bits
  /// (docs/integer.md), where the other tables share theirs.
  bool amx_bf16 = false;
};

QATKIT_API BuildInfo build_info();

/// Selects the CPU kernel implementation ("amx", "avx512", "avx2" or "baseline"); returns false if unknown or
/// unsupported on this CPU. For tests and benchmarks; results are identical either way, except
/// linear_w4_weight_only on "amx" where amx_bf16 is true (within the same float bound).
QATKIT_API bool set_cpu_isa(const std::string& name);

}  // namespace qatkit
