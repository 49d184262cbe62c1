// CPU kernel of choose_qparams: the device-generic implementation plus the NaN / Inf check of the
// data (a host read, free on the CPU; see ../choose_qparams.cpp).
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "../qparams_math.h"

namespace qatkit::ops {
namespace {

std::tuple<at::Tensor, at::Tensor> choose_qparams_cpu(const at::Tensor& input, std::int64_t quant_min,
                                                      std::int64_t quant_max, bool symmetric,
                                                      std::optional<std::int64_t> axis,
                                                      std::optional<std::int64_t> group_size) {
  return choose_qparams_impl(input, quant_min, quant_max, symmetric, axis, group_size, /*check_finite=*/true);
}

}  // namespace

TORCH_LIBRARY_IMPL(qatkit, CPU, m) { m.impl("choose_qparams", &choose_qparams_cpu); }

}  // namespace qatkit::ops
