// _histogram_update: add the counts of each row of a [C, N] tensor, binned over that row's own
// [lo_c, hi_c], to a float64 [C, bins] histogram — the update of the histogram observers
// (python/qatkit/qat/histogram.py; docs/ptq.md §5). The bin of x is torch.histc's:
// (x - lo) * bins / (hi - lo) in the data's dtype, truncated, clamped to [0, bins - 1] (the top
// edge lands in the last bin; values outside the range land in the end bins: the observers widen
// the range to cover the data first).
//
// Kernels: CPU (cpu/histogram_kernel.cpp) a scalar loop with per-thread counts that rejects NaN;
// CUDA (cuda/histogram_kernel.cpp) ATen ops (bincount) with the same arithmetic, so CUDA counts
// equal CPU counts; Meta (meta/histogram_kernel.cpp) checks the arguments (the op has no outputs;
// bincount has no Meta kernel, so no device-generic composite can serve torch.compile).
#include <ATen/core/Tensor.h>
#include <fmt/format.h>
#include <torch/library.h>

#include "checks.h"
#include "histogram.h"
#include "op_handle.h"

TORCH_LIBRARY_FRAGMENT(qatkit, m) {
  m.def("_histogram_update(Tensor rows, Tensor(a!) histogram, Tensor lo, Tensor hi) -> ()",
        {at::Tag::pt2_compliant_tag});
}

namespace qatkit::ops {

void check_histogram_update_args(const at::Tensor& rows, const at::Tensor& histogram, const at::Tensor& lo,
                                 const at::Tensor& hi) {
  constexpr const char* op = "_histogram_update";
  TORCH_CHECK_VALUE(rows.dim() == 2, fmt::format("{}: rows must be 2-d [channels, values], got {} dims", op,
                                                 rows.dim()));
  TORCH_CHECK_TYPE(rows.scalar_type() == at::kFloat || rows.scalar_type() == at::kDouble,
                   fmt::format("{}: rows must be float32 or float64, got {}", op, c10::toString(rows.scalar_type())));
  TORCH_CHECK_TYPE(histogram.scalar_type() == at::kDouble,
                   fmt::format("{}: histogram must be float64, got {}", op, c10::toString(histogram.scalar_type())));
  TORCH_CHECK_VALUE(histogram.dim() == 2 && histogram.sym_size(0) == rows.sym_size(0) && histogram.sym_size(1) > 0,
                    fmt::format("{}: histogram must be [channels={}, bins >= 1], got {}", op,
                                rows.sym_size(0).guard_int(__FILE__, __LINE__), shape_str(histogram.sym_sizes())));
  TORCH_CHECK_VALUE(histogram.is_contiguous(), fmt::format("{}: histogram must be contiguous", op));
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"lo", lo}, {"hi", hi}}) {
    TORCH_CHECK_TYPE(t.scalar_type() == at::kDouble,
                     fmt::format("{}: {} must be float64, got {}", op, name, c10::toString(t.scalar_type())));
    TORCH_CHECK_VALUE(t.dim() == 1 && t.sym_size(0) == rows.sym_size(0),
                      fmt::format("{}: {} must be [channels={}], got {}", op, name,
                                  rows.sym_size(0).guard_int(__FILE__, __LINE__), shape_str(t.sym_sizes())));
  }
  for (const at::Tensor* t : {&histogram, &lo, &hi}) {
    TORCH_CHECK_VALUE(t->device() == rows.device(), fmt::format("{}: every tensor must be on rows' device {}, got {}",
                                                                op, rows.device().str(), t->device().str()));
  }
}

void histogram_update(const at::Tensor& rows, at::Tensor& histogram, const at::Tensor& lo, const at::Tensor& hi) {
  static auto op = op_handle<void(const at::Tensor&, at::Tensor&, const at::Tensor&, const at::Tensor&)>(
      "qatkit::_histogram_update");
  op.call(rows, histogram, lo, hi);
}


}  // namespace qatkit::ops
