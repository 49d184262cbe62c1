// The histogram observers' update op (histogram.cpp): declarations shared with its CPU kernel.
#pragma once

#include <ATen/core/Tensor.h>

namespace qatkit::ops {

/// The argument checks of _histogram_update (dims, dtypes, shapes, devices), raising ValueError /
/// TypeError naming the argument.
void check_histogram_update_args(const at::Tensor& rows, const at::Tensor& histogram, const at::Tensor& lo,
                                 const at::Tensor& hi);

/// histogram[c] += the counts of rows[c] binned over [lo[c], hi[c]] (see histogram.cpp).
void histogram_update(const at::Tensor& rows, at::Tensor& histogram, const at::Tensor& lo, const at::Tensor& hi);

}  // namespace qatkit::ops
