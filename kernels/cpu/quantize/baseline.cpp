// Portable quantize-family loops.
#include "loops.h"
#include "quantize_cpu.h"

namespace qatkit::kernels::cpu {

const QuantizeKernels& quantize_baseline() {
  static const QuantizeKernels k{&detail::quantize_impl, &detail::dequantize_impl};
  return k;
}

}  // namespace qatkit::kernels::cpu
