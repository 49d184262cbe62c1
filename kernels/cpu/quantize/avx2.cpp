// The quantize-family loops compiled with -mavx2 -mfma -mf16c (vectorized rounding and
// conversions); same bits as the baseline.
#include "quantize_cpu.h"

#if defined(__AVX2__) && defined(__F16C__)
#include "loops.h"

namespace qatkit::kernels::cpu {

const QuantizeKernels* quantize_avx2() {
  static const QuantizeKernels k{&detail::quantize_impl, &detail::dequantize_impl};
  return &k;
}

}  // namespace qatkit::kernels::cpu

#else

namespace qatkit::kernels::cpu {
const QuantizeKernels* quantize_avx2() { return nullptr; }
}  // namespace qatkit::kernels::cpu

#endif
