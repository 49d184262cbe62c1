// CPU kernel of _observer_update: the device-generic update (../fused_observer.cpp) written as a
// scalar loop over the channels once the batch min/max are known, plus the rejection of non-finite
// batches (a host read, free on the CPU).
//
// The device-generic form spells the update as ~25 ATen ops on one-element tensors (where / isinf
// / add / mul / div / clamp / round ...), ~160 us of dispatch per call on this machine, which made
// calibration of small layers several times slower than their forward pass. The loop below
// performs the same float32 operations in the same order (so its results are bit-identical to the
// composite: `tests/python/ops/test_fused_observer.py` compares both with torch.ao's observers),
// and this file is compiled with -ffp-contract=off so no multiply-add is fused.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/amax.h>
#include <ATen/ops/amin.h>
#include <ATen/ops/aminmax.h>
#include <fmt/format.h>
#include <torch/library.h>

#include <cfloat>
#include <cmath>

#include "../checks.h"
#include "../op_handle.h"
#include "../qparams_math.h"
#include "qparams_scalar.h"

namespace qatkit::ops {
namespace {

bool fast_path_applies(const at::Tensor& input, const at::Tensor& running_min, const at::Tensor& running_max,
                       const at::Tensor& scale, const at::Tensor& zero_point, const at::Tensor& observer_on) {
  for (const at::Tensor* t : {&running_min, &running_max, &scale, &zero_point, &observer_on}) {
    if (!t->is_cpu() || !t->is_contiguous()) return false;
  }
  return input.is_cpu() && running_min.scalar_type() == at::kFloat && running_max.scalar_type() == at::kFloat &&
         scale.scalar_type() == at::kFloat && zero_point.scalar_type() == at::kInt;
}

/// NaN printed as "nan" (a reduction may return one with the sign bit set: "-nan").
float unsigned_nan(float v) { return std::isnan(v) ? std::fabs(v) : v; }

/// The one-element flag's value read on the host (bool or any integer dtype; non-zero = set).
bool flag_is_set(const at::Tensor& flag) {
  return AT_DISPATCH_INTEGRAL_TYPES_AND(at::kBool, flag.scalar_type(), "observer_on",
                                        [&] { return *flag.const_data_ptr<scalar_t>() != scalar_t(0); });
}

void observer_update_cpu(const at::Tensor& input, at::Tensor& running_min, at::Tensor& running_max, at::Tensor& scale,
                         at::Tensor& zero_point, const at::Tensor& observer_on, double momentum, bool moving_average,
                         std::int64_t quant_min, std::int64_t quant_max, bool symmetric,
                         std::optional<std::int64_t> axis) {
  if (!fast_path_applies(input, running_min, running_max, scale, zero_point, observer_on) || input.numel() == 0) {
    observer_update_impl(input, running_min, running_max, scale, zero_point, observer_on, momentum, moving_average,
                         quant_min, quant_max, symmetric, axis, /*check_finite=*/true);
    return;
  }
  // the composite's argument checks (shapes, dtypes, devices, range), then the arithmetic
  constexpr const char* op = "_observer_update";
  const at::NoGradGuard no_grad;
  check_observer_update_args(op, input, running_min, running_max, scale, zero_point, observer_on, momentum, quant_min,
                             quant_max, axis);
  if (!flag_is_set(observer_on) || recomputing_in_backward()) return;
  at::Tensor cmin, cmax;
  if (axis.has_value()) {
    auto [lo, hi] = row_min_max(input.movedim(*axis, 0).reshape({input.size(*axis), -1}));
    cmin = lo.contiguous();
    cmax = hi.contiguous();
  } else {  // one fused pass over the whole tensor (amin + amax read it twice)
    auto [lo, hi] = at::aminmax(input);
    cmin = as_float(lo).reshape({1}).contiguous();
    cmax = as_float(hi).reshape({1}).contiguous();
  }
  const std::int64_t n = cmin.numel();
  const float* mn = cmin.data_ptr<float>();
  const float* mx = cmax.data_ptr<float>();
  for (std::int64_t i = 0; i < n; ++i) {
    const float width = mx[i] - mn[i];
    TORCH_CHECK_VALUE(std::isfinite(mn[i]) && std::isfinite(mx[i]) && std::isfinite(width),
                      fmt::format("{}: the observed batch holds NaN or Inf, or a range wider than float32 "
                                  "({}min={}, max={}); the observer state is unchanged",
                                  op, axis.has_value() ? fmt::format("channel {}: ", i) : std::string(),
                                  unsigned_nan(mn[i]), unsigned_nan(mx[i])));
  }
  float* rmin = running_min.data_ptr<float>();
  float* rmax = running_max.data_ptr<float>();
  float* sc = scale.data_ptr<float>();
  std::int32_t* zp = zero_point.data_ptr<std::int32_t>();
  const float m = static_cast<float>(momentum);
  for (std::int64_t i = 0; i < n; ++i) {
    float new_min, new_max;
    if (moving_average) {  // an empty (+-inf) running value starts at the first observation
      const float dmin = mn[i] - rmin[i];
      const float dmax = mx[i] - rmax[i];
      const float stepmin = dmin * m;
      const float stepmax = dmax * m;
      new_min = std::isinf(rmin[i]) ? mn[i] : rmin[i] + stepmin;
      new_max = std::isinf(rmax[i]) ? mx[i] : rmax[i] + stepmax;
    } else {
      new_min = std::fmin(rmin[i], mn[i]);
      new_max = std::fmax(rmax[i], mx[i]);
    }
    rmin[i] = new_min;
    rmax[i] = new_max;
    const auto [s, z] = qparams_scalar(new_min, new_max, quant_min, quant_max, symmetric);
    if (std::isfinite(new_min) && std::isfinite(new_max) && std::isfinite(s)) {
      sc[i] = s;
      zp[i] = z;
    }
  }
}

/// fused_observe_fake_quantize below autograd on the CPU: nobody needs the STE mask here (the
/// autograd kernel asks for it through the composite when it records a graph), and reading the
/// fake-quant switch is free, so the plain fake_quantize runs (a bool tensor per call less to write).
at::Tensor fused_observe_fake_quantize_cpu(const at::Tensor& input, at::Tensor& running_min, at::Tensor& running_max,
                                           at::Tensor& scale, at::Tensor& zero_point, const at::Tensor& observer_on,
                                           const at::Tensor& fake_quant_on, double momentum, bool moving_average,
                                           std::int64_t quant_min, std::int64_t quant_max, bool symmetric,
                                           std::optional<std::int64_t> axis) {
  check_flag("fused_observe_fake_quantize", "fake_quant_on", fake_quant_on, input);
  static auto fq = op_handle<sig::FakeQuantize>("qatkit::fake_quantize");
  observer_update_cpu(input, running_min, running_max, scale, zero_point, observer_on, momentum, moving_average,
                      quant_min, quant_max, symmetric, axis);
  if (!flag_is_set(fake_quant_on)) return input.clone();
  return fq.call(input, scale.reshape(-1), zero_point.reshape(-1), quant_min, quant_max, axis, std::nullopt);
}

}  // namespace

TORCH_LIBRARY_IMPL(qatkit, CPU, m) {
  m.impl("_observer_update", &observer_update_cpu);
  m.impl("fused_observe_fake_quantize", &fused_observe_fake_quantize_cpu);
}

}  // namespace qatkit::ops
