// The sign-family loops compiled with -mavx2 -mfma -mf16c (the compiler turns the selects into
// AVX2 blends, about twice the baseline's speed); same bits as the baseline.
#include "sign_cpu.h"

#if defined(__AVX2__) && defined(__F16C__)
#include "loops.h"

namespace qatkit::kernels::cpu {

const SignKernels* sign_avx2() {
  static const SignKernels k{&detail::binarize_forward_impl, &detail::ternary_forward_impl,
                             &detail::binarize_backward_impl, &detail::binary_codes_impl};
  return &k;
}

}  // namespace qatkit::kernels::cpu

#else

namespace qatkit::kernels::cpu {
const SignKernels* sign_avx2() { return nullptr; }
}  // namespace qatkit::kernels::cpu

#endif
