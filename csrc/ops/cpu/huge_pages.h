// Fresh CPU outputs backed by transparent huge pages where the kernel allows it.
#pragma once

#include <ATen/core/Tensor.h>

namespace qatkit::ops {

/// at::empty, plus madvise(MADV_HUGEPAGE) on large buffers (Linux). Large allocations are fresh
/// mmaps whose first touch faults once per 4 KiB page; for a 32 MiB fake-quant output that costs
/// several times the kernel itself. With the advice (THP mode "madvise" or "always") the same
/// buffer faults once per 2 MiB. Purely advisory: contents, strides and semantics are unchanged.
at::Tensor empty_cpu_output(at::IntArrayRef sizes, const at::TensorOptions& options);

}  // namespace qatkit::ops
