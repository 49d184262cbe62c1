// Meta kernel of _histogram_update: the argument checks (the op mutates its histogram and returns
// nothing, so there is no output to describe).
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "../histogram.h"

namespace qatkit::ops {
namespace {

void histogram_update_meta(const at::Tensor& rows, at::Tensor& histogram, const at::Tensor& lo, const at::Tensor& hi) {
  check_histogram_update_args(rows, histogram, lo, hi);
}

}  // namespace

TORCH_LIBRARY_IMPL(qatkit, Meta, m) { m.impl("_histogram_update", &histogram_update_meta); }

}  // namespace qatkit::ops
