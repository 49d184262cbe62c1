// Torch-free CPU fake-quantize kernels: single-thread chunk functions behind a run-time ISA choice.
#pragma once

#include <cstdint>

#include "../common/fake_quant_args.h"

namespace qatkit::kernels::cpu {

/// One instruction-set implementation. Each function processes elements [begin, end) of a
/// launch on the calling thread; `begin` must be a multiple of 8 (mask bytes are then owned by
/// exactly one chunk, so chunks can run on different threads), `end` a multiple of 8 or numel.
struct FakeQuantKernels {
  const char* isa;
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
  /// max |x| over n elements of `dtype` (float32 result); *finite is cleared if any element is
  /// NaN or +-Inf. The statistic of the per-token / dynamic absmax quantizers.
  float (*absmax)(const void* x, DType dtype, std::int64_t n, bool* finite);
  /// sum |x| over n elements in float64: element j into lane j % 8, lanes combined in a fixed
  /// order, so every ISA returns the same bits (mean |W| of the binary / ternary scalings).
  double (*abssum)(const void* x, DType dtype, std::int64_t n);
  /// Binarize forward / estimator backward over elements [begin, end) (any split; see
  /// binarize_cpu.h). Selects and one multiply: every ISA returns the same bits.
  void (*binarize_forward)(const BinarizeArgs& args, std::int64_t begin, std::int64_t end);
  void (*binarize_backward)(const BinarizeBackwardArgs& args, std::int64_t begin, std::int64_t end);
  /// TWN statistic over n elements of `dtype`: *sum = sum of |x| over |x| > delta (float64, 8
  /// lanes combined in a fixed order: the same bits on every ISA), *count = how many.
  void (*twn_stats)(const void* x, DType dtype, std::int64_t n, float delta, double* sum, std::int64_t* count);
};

/// Portable C++ implementation (always available).
const FakeQuantKernels& baseline_kernels();
/// AVX2 + FMA + F16C implementation, or nullptr when not compiled in or not supported by this CPU.
const FakeQuantKernels* avx2_kernels();

/// The implementation in use: the best one this CPU supports, unless overridden by
/// set_isa() or the QATKIT_CPU_ISA environment variable ("baseline" or "avx2").
const FakeQuantKernels& active_kernels();
/// Selects an implementation by name; returns false (and changes nothing) for an unknown or
/// unsupported name.
bool set_isa(const char* name);

}  // namespace qatkit::kernels::cpu
