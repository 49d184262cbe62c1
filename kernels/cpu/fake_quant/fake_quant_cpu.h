// Torch-free CPU fake-quant family: fake quantize forward / mask backward, LSQ and PACT
// backward, qparam validity. Single-thread chunk functions, one table per ISA (isa.h).
#pragma once

#include <cstdint>

#include "../../common/fake_quant_args.h"
#include "../isa.h"

namespace qatkit::kernels::cpu {

/// One instruction-set implementation. Each function processes elements [begin, end) of a
/// launch on the calling thread; for forward/backward `begin` must be a multiple of 8 (mask bytes
/// are then owned by exactly one chunk, so chunks can run on different threads), `end` a
/// multiple of 8 or numel.
struct FakeQuantKernels {
  void (*forward)(const FakeQuantArgs& args, std::int64_t begin, std::int64_t end);
  void (*backward)(const FakeQuantBackwardArgs& args, std::int64_t begin, std::int64_t end);
  /// True if scale[0..n) are positive, finite, normal floats and zero_point[0..n) integers in
  /// [qmin, qmax] (NaN fails). qparams can be as large as the input (group_size 1), so this is
  /// vectorized like the kernels.
  bool (*qparams_valid)(const float* scale, const float* zero_point, std::int64_t n, float qmin, float qmax);
  /// LSQ backward over a run [begin, end) whose elements all use channel c: writes grad_input and
  /// returns the sums of the per-element scale and zero-point gradients (before grad_factor).
  /// Terms are accumulated in float64 in 8 lanes (element j of the run into lane j % 8) and the
  /// lanes combined in a fixed order, so every ISA returns the same bits.
  void (*lsq_backward_run)(const LsqBackwardArgs& args, std::int64_t begin, std::int64_t end, std::int64_t c,
                           double* dscale_sum, double* dzero_point_sum);
  /// LSQ backward when qparams change every element (inner == 1): elements [begin, end) of one row,
  /// element i uses channel i % channels, whose terms are added to dscale_acc[c], dzero_point_acc[c].
  void (*lsq_backward_row)(const LsqBackwardArgs& args, std::int64_t begin, std::int64_t end, double* dscale_acc,
                           double* dzero_point_acc);
  /// PACT backward over [begin, end): writes grad_input, returns the alpha-gradient sum of the
  /// range (float64, 8 lanes combined in a fixed order, like lsq_backward_run).
  double (*pact_backward_run)(const PactBackwardArgs& args, std::int64_t begin, std::int64_t end);
};

/// Portable C++ implementation (always available).
const FakeQuantKernels& fake_quant_baseline();
/// AVX2 + FMA + F16C implementation, or nullptr when this build has none (non-x86).
const FakeQuantKernels* fake_quant_avx2();

/// The table of `isa`, or nullptr when this build or CPU cannot run it.
inline const FakeQuantKernels* fake_quant_kernels(Isa isa) {
  return table_for(isa, fake_quant_baseline(), &fake_quant_avx2);
}
/// The table of the active ISA.
inline const FakeQuantKernels& fake_quant_kernels() { return active_table(fake_quant_baseline(), &fake_quant_avx2); }

}  // namespace qatkit::kernels::cpu
