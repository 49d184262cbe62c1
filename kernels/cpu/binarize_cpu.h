// Torch-free CPU binarize kernels (one portable implementation: the bodies are selects and
// one multiply, which the compiler vectorizes; the stochastic path is Philox-bound).
#pragma once

#include <cstdint>

#include "../common/fake_quant_args.h"

namespace qatkit::kernels::cpu {

/// Forward over elements [begin, end) (any split; elements are independent).
void binarize_forward(const BinarizeArgs& args, std::int64_t begin, std::int64_t end);

/// Backward over elements [begin, end).
void binarize_backward(const BinarizeBackwardArgs& args, std::int64_t begin, std::int64_t end);

}  // namespace qatkit::kernels::cpu
