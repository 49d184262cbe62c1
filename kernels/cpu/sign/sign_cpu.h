// Torch-free CPU sign family: binarize forward, ternary forward and the sign estimators'
// backward. Single-thread chunk functions over any split [begin, end) (elements are
// independent), one table per ISA (isa.h). Selects and one multiply: every ISA gives the same bits.
#pragma once

#include <cstdint>

#include "../../common/sign_args.h"
#include "../isa.h"

namespace qatkit::kernels::cpu {

struct SignKernels {
  void (*binarize_forward)(const BinarizeArgs& args, std::int64_t begin, std::int64_t end);
  void (*ternary_forward)(const TernaryArgs& args, std::int64_t begin, std::int64_t end);
  void (*binarize_backward)(const BinarizeBackwardArgs& args, std::int64_t begin, std::int64_t end);
  /// binary_codes: int8 codes of sign(x - center) (the deterministic binarize's signs, NaN -> 0) into
  /// args.output (int8; alpha and seed unused).
  void (*binary_codes)(const BinarizeArgs& args, std::int64_t begin, std::int64_t end);
  /// binary_codes' codes of float32 rows as int16 (the depthwise XNOR conv's padded pixels or
  /// planes): row r's n elements at x + r * n, its codes at y + r * y_rs.
  void (*codes_s16)(const float* x, std::int64_t rows, std::int64_t n, std::int16_t* y, std::int64_t y_rs,
                    float center, bool zero_negative);
};

const SignKernels& sign_baseline();
const SignKernels* sign_avx2();
/// The AVX2 table with binary_codes' float32 runs in AVX-512 (kernels/cpu/sign/avx512.cpp).
const SignKernels* sign_avx512();

inline const SignKernels* sign_kernels(Isa isa) { return table_for(isa, sign_baseline(), &sign_avx2, &sign_avx512); }
inline const SignKernels& sign_kernels() { return active_table(sign_baseline(), &sign_avx2, &sign_avx512); }

}  // namespace qatkit::kernels::cpu
