// Portable sign-family loops (SSE2 vectorized by the compiler).
#include "loops.h"
#include "sign_cpu.h"

namespace qatkit::kernels::cpu {

const SignKernels& sign_baseline() {
  static const SignKernels k{&detail::binarize_forward_impl, &detail::ternary_forward_impl,
                             &detail::binarize_backward_impl, &detail::binary_codes_impl, &detail::code_rows_s16};
  return k;
}

}  // namespace qatkit::kernels::cpu
