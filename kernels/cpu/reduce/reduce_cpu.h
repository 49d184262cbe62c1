// Torch-free CPU reductions behind the dynamic, binary and ternary quantizers' statistics:
// max |x|, sum |x| (alone, or with sum x) and the TWN statistic. Single-thread functions, one table per ISA (isa.h).
#pragma once

#include <cstdint>

#include "../../common/dtype.h"
#include "../isa.h"

namespace qatkit::kernels::cpu {

/// Float64 lane accumulators of sum x and sum |x| (ReduceKernels::sum_abssum): element j of a run
/// goes into lane j % 8. A run may continue an earlier one on the same lanes when the earlier runs'
/// lengths are multiples of 8 (then its elements take the lanes they would in one long run).
struct SumAbsLanes {
  double s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  double a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  /// The lanes combined in abssum's fixed order (elem.h's lane_sum).
  static double total(const double* v) { return ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7])); }
  double sum() const { return total(s); }
  double abssum() const { return total(a); }
};

struct ReduceKernels {
  /// max |x| over n elements of `dtype` (float32 result); *finite is cleared if any element is
  /// NaN or +-Inf. The statistic of the per-token / dynamic absmax quantizers.
  float (*absmax)(const void* x, DType dtype, std::int64_t n, bool* finite);
  /// sum |x| over n elements in float64: element j into lane j % 8, lanes combined in a fixed
  /// order, so every ISA returns the same bits (mean |W| of the binary / ternary scalings).
  double (*abssum)(const void* x, DType dtype, std::int64_t n);
  /// sum x and sum |x| over n elements in one pass, float64, added into `lanes`: abssum's lanes for
  /// both, so from zeroed lanes `lanes->abssum()` is abssum's result, and both are the same bits on
  /// every ISA. The centre and the scale of the 'bitnet' binarization.
  void (*sum_abssum)(const void* x, DType dtype, std::int64_t n, SumAbsLanes* lanes);
  /// sum_abssum of `runs` separate runs of n elements each (x[r] into lanes[r]) in one pass: the
  /// same bits as `runs` sum_abssum calls. A run's chains wait on the add's latency (one float64 add
  /// per lane every 8 elements); runs side by side keep more adds in flight.
  void (*sum_abssum_runs)(const void* const* x, DType dtype, std::int64_t n, SumAbsLanes* const* lanes, int runs);
  /// How many runs sum_abssum_runs takes side by side to best effect (1: no gain over single calls).
  int sum_runs = 1;
  /// TWN statistic over n elements of `dtype`: *sum = sum of |x| over |x| > delta (float64, 8
  /// lanes combined in a fixed order: the same bits on every ISA), *count = how many.
  void (*twn_stats)(const void* x, DType dtype, std::int64_t n, float delta, double* sum, std::int64_t* count);
};

const ReduceKernels& reduce_baseline();
const ReduceKernels* reduce_avx2();
/// The AVX2 table with sum_abssum and sum_abssum_runs of float32 runs in 512-bit registers, two
/// runs side by side (kernels/cpu/reduce/avx512.cpp).
const ReduceKernels* reduce_avx512();

inline const ReduceKernels* reduce_kernels(Isa isa) {
  return table_for(isa, reduce_baseline(), &reduce_avx2, &reduce_avx512);
}
inline const ReduceKernels& reduce_kernels() { return active_table(reduce_baseline(), &reduce_avx2, &reduce_avx512); }

}  // namespace qatkit::kernels::cpu
