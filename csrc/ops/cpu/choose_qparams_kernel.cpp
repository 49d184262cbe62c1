// CPU kernel of choose_qparams: the rows' min/max (ATen reductions, one fused aminmax pass for a
// whole tensor), the NaN / Inf check of the data (a host read, free on the CPU), then the qparams
// as a scalar loop (qparams_scalar.h: the composite's float32 operations in the same order, so the
// results are bit identical to ../choose_qparams.cpp). The composite spells the qparams as ~12
// ATen ops on channel-sized tensors, ~25 us of dispatch per call: this op runs once per layer per
// QAT step and per calibration pass.
#include <ATen/core/Tensor.h>
#include <ATen/ops/aminmax.h>
#include <ATen/ops/empty.h>
#include <fmt/format.h>
#include <torch/library.h>

#include <cmath>

#include "../checks.h"
#include "../fake_quantize_checks.h"
#include "../qparams_math.h"
#include "qparams_scalar.h"

namespace qatkit::ops {
namespace {

std::tuple<at::Tensor, at::Tensor> choose_qparams_cpu(const at::Tensor& input, std::int64_t quant_min,
                                                      std::int64_t quant_max, bool symmetric,
                                                      std::optional<std::int64_t> axis,
                                                      std::optional<std::int64_t> group_size) {
  constexpr const char* kOp = "choose_qparams";
  check_input_and_range(kOp, input, quant_min, quant_max, axis, group_size);
  auto [rows, out_shape] = qparams_rows(input, axis, group_size);
  at::Tensor mn, mx;
  if (rows.size(0) == 1 && rows.size(1) > 0) {
    auto [lo, hi] = at::aminmax(rows);
    mn = as_float(lo).reshape({1}).contiguous();
    mx = as_float(hi).reshape({1}).contiguous();
  } else {
    auto [lo, hi] = row_min_max(rows);
    mn = lo.contiguous();
    mx = hi.contiguous();
  }
  const std::int64_t n = mn.numel();
  const float* pmn = mn.const_data_ptr<float>();
  const float* pmx = mx.const_data_ptr<float>();
  at::Tensor scale = at::empty({n}, input.options().dtype(at::kFloat));
  at::Tensor zero_point = at::empty({n}, input.options().dtype(at::kInt));
  float* ps = scale.mutable_data_ptr<float>();
  std::int32_t* pz = zero_point.mutable_data_ptr<std::int32_t>();
  for (std::int64_t i = 0; i < n; ++i) {
    TORCH_CHECK_VALUE(std::isfinite(pmn[i]) && std::isfinite(pmx[i]),
                      fmt::format("{}: input must be finite, found NaN or Inf", kOp));
    const auto [s, z] = qparams_scalar(pmn[i], pmx[i], quant_min, quant_max, symmetric);
    ps[i] = s;
    pz[i] = z;
  }
  return {scale.reshape_symint(out_shape), zero_point.reshape_symint(out_shape)};
}

}  // namespace

TORCH_LIBRARY_IMPL(qatkit, CPU, m) { m.impl("choose_qparams", &choose_qparams_cpu); }

}  // namespace qatkit::ops
