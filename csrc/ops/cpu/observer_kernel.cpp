// CPU kernel of _observer_update: the device-generic update plus the rejection of non-finite
// batches (a host read, free on the CPU; see ../fused_observer.cpp).
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "../qparams_math.h"

namespace qatkit::ops {
namespace {

void observer_update_cpu(const at::Tensor& input, at::Tensor& running_min, at::Tensor& running_max, at::Tensor& scale,
                         at::Tensor& zero_point, const at::Tensor& observer_on, double momentum, bool moving_average,
                         std::int64_t quant_min, std::int64_t quant_max, bool symmetric,
                         std::optional<std::int64_t> axis) {
  observer_update_impl(input, running_min, running_max, scale, zero_point, observer_on, momentum, moving_average,
                       quant_min, quant_max, symmetric, axis, /*check_finite=*/true);
}

}  // namespace

TORCH_LIBRARY_IMPL(qatkit, CPU, m) { m.impl("_observer_update", &observer_update_cpu); }

}  // namespace qatkit::ops
