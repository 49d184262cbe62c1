// See binarize_cpu.h: the loops live in binarize_loops.h, built once per ISA into the kernel
// tables of fake_quant_cpu.h; these entry points use the active table.
#include "binarize_cpu.h"

#include "fake_quant_cpu.h"

namespace qatkit::kernels::cpu {

void binarize_forward(const BinarizeArgs& args, std::int64_t begin, std::int64_t end) {
  active_kernels().binarize_forward(args, begin, end);
}

void binarize_backward(const BinarizeBackwardArgs& args, std::int64_t begin, std::int64_t end) {
  active_kernels().binarize_backward(args, begin, end);
}

}  // namespace qatkit::kernels::cpu
