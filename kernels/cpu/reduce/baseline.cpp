// Portable reductions: the loops of loops.h, left to the compiler's vectorizer.
#include "loops.h"
#include "reduce_cpu.h"

namespace qatkit::kernels::cpu {

const ReduceKernels& reduce_baseline() {
  static const ReduceKernels k{&detail::absmax_scalar, &detail::abssum_scalar, &detail::sum_abssum_scalar,
                                &detail::sum_abssum_runs_scalar, 1, &detail::twn_stats_scalar};
  return k;
}

}  // namespace qatkit::kernels::cpu
