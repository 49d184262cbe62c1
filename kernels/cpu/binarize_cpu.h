// Torch-free CPU binarize kernels: entry points over the active ISA's loops (binarize_loops.h,
// built into each table of fake_quant_cpu.h; the stochastic path is Philox-bound).
#pragma once

#include <cstdint>

#include "../common/fake_quant_args.h"

namespace qatkit::kernels::cpu {

/// Forward over elements [begin, end) (any split; elements are independent).
void binarize_forward(const BinarizeArgs& args, std::int64_t begin, std::int64_t end);

/// Backward over elements [begin, end).
void binarize_backward(const BinarizeBackwardArgs& args, std::int64_t begin, std::int64_t end);

}  // namespace qatkit::kernels::cpu
