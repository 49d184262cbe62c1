// Torch-free CPU quantize family: integer codes from floats (quantize_affine) and back
// (dequantize_affine). Single-thread chunk functions over any split [begin, end), one table per
// ISA (isa.h); every ISA gives the same bits.
#pragma once

#include <cstdint>

#include "../../common/quantize_args.h"
#include "../isa.h"

namespace qatkit::kernels::cpu {

struct QuantizeKernels {
  void (*quantize)(const QuantizeArgs& args, std::int64_t begin, std::int64_t end);
  void (*dequantize)(const DequantizeArgs& args, std::int64_t begin, std::int64_t end);
};

const QuantizeKernels& quantize_baseline();
const QuantizeKernels* quantize_avx2();

inline const QuantizeKernels* quantize_kernels(Isa isa) { return table_for(isa, quantize_baseline(), &quantize_avx2); }
inline const QuantizeKernels& quantize_kernels() { return active_table(quantize_baseline(), &quantize_avx2); }

}  // namespace qatkit::kernels::cpu
