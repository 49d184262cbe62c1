// See huge_pages.h.
#include "huge_pages.h"

#include <ATen/ops/empty.h>

#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

namespace qatkit::ops {

at::Tensor empty_cpu_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor t = at::empty(sizes, options);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr std::size_t kMinBytes = 4u << 20;  // at least two huge pages, or it cannot help
  const std::size_t bytes = t.nbytes();
  if (bytes >= kMinBytes) {
    const auto page = static_cast<std::uintptr_t>(sysconf(_SC_PAGESIZE));
    const auto begin = reinterpret_cast<std::uintptr_t>(t.mutable_data_ptr());
    const std::uintptr_t lo = (begin + page - 1) & ~(page - 1);
    const std::uintptr_t hi = (begin + bytes) & ~(page - 1);
    if (hi > lo) (void)madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);  // advisory: errors ignored
  }
#endif
  return t;
}

}  // namespace qatkit::ops
