// choose_qparams: scale / zero point from the min/max of a tensor. The computation is a short
// chain of ATen ops (aminmax, elementwise), so one device-generic implementation with SymInt
// shapes, registered once at CompositeExplicitAutograd, serves CUDA, Meta and other backends; the
// CPU kernel (cpu/choose_qparams_kernel.cpp) runs the same with the NaN/Inf value check, which
// reads data (on an accelerator that would cost a host sync).
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/aminmax.h>
#include <ATen/ops/full.h>
#include <ATen/ops/full_like.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/zeros.h>
#include <c10/core/GradMode.h>
#include <fmt/format.h>
#include <torch/library.h>

#include <cfloat>
#include <vector>

#include "fake_quantize_checks.h"
#include "autograd/unsupported.h"
#include "exact_div.h"
#include "op_handle.h"
#include "qatkit/ops.h"
#include "qparams_math.h"

TORCH_LIBRARY_FRAGMENT(qatkit, m) {
  m.def(
      "choose_qparams(Tensor input, int quant_min, int quant_max, bool symmetric, int? axis=None, "
      "int? group_size=None) -> (Tensor scale, Tensor zero_point)",
      {at::Tag::pt2_compliant_tag});
}

namespace qatkit {
namespace ops {

std::pair<at::Tensor, at::Tensor> row_min_max(const at::Tensor& rows) {
  if (rows.sym_size(1) == 0) {  // no elements per row: the range is {0}
    at::Tensor z = at::zeros_symint({rows.sym_size(0)}, rows.options().dtype(at::kFloat));
    return {z, z.clone()};
  }
  // amin + amax: ATen's fused aminmax over a dim is several times slower on the CPU
  return {as_float(rows.amin(1)), as_float(rows.amax(1))};
}

std::pair<at::Tensor, at::Tensor> qparams_from_min_max(const at::Tensor& mn, const at::Tensor& mx,
                                                       std::int64_t quant_min, std::int64_t quant_max, bool symmetric) {
  // Same float32 arithmetic as torch.ao's MinMaxObserver._calculate_qparams.
  const at::Tensor min_neg = mn.clamp_max(0);
  const at::Tensor max_pos = mx.clamp_min(0);
  if (symmetric) {
    const at::Tensor amax = min_neg.neg().maximum(max_pos);
    const at::Tensor scale = div_exact(amax, static_cast<float>(quant_max - quant_min) / 2.0f).clamp_min(FLT_EPSILON);
    const std::int64_t mid = quant_min < 0 ? 0 : (quant_min + quant_max + 1) / 2;
    return {scale, at::full_like(scale, mid, scale.options().dtype(at::kInt))};
  }
  const at::Tensor scale = div_exact(max_pos.sub(min_neg), static_cast<float>(quant_max - quant_min)).clamp_min(FLT_EPSILON);
  return {scale, min_neg.div(scale).round().neg().add(quant_min).clamp(quant_min, quant_max).to(at::kInt)};
}

std::pair<at::Tensor, std::vector<c10::SymInt>> qparams_rows(const at::Tensor& input,
                                                              std::optional<std::int64_t> axis,
                                                              std::optional<std::int64_t> group_size) {
  // rows: one row per (channel | group | tensor); out_shape: the shape scale is returned in.
  if (axis.has_value()) {
    const std::int64_t ax = *axis < 0 ? *axis + input.dim() : *axis;
    // the row length spelled out: a -1 is ambiguous when a dim is 0 (a Linear(16, 0) weight)
    c10::SymInt inner = 1;
    for (std::int64_t d = 0; d < input.dim(); ++d) {
      if (d != ax) inner = inner * input.sym_size(d);
    }
    return {input.movedim(ax, 0).reshape_symint({input.sym_size(ax), inner}), {input.sym_size(ax)}};
  }
  if (group_size.has_value()) {
    std::vector<c10::SymInt> out_shape(input.sym_sizes().begin(), input.sym_sizes().end());
    out_shape.back() = out_shape.back() / *group_size;
    return {input.reshape_symint({input.sym_numel() / *group_size, *group_size}), std::move(out_shape)};
  }
  return {input.reshape_symint({1, input.sym_numel()}), {c10::SymInt(1)}};
}

std::tuple<at::Tensor, at::Tensor> choose_qparams_impl(const at::Tensor& input, std::int64_t quant_min,
                                                       std::int64_t quant_max, bool symmetric,
                                                       std::optional<std::int64_t> axis,
                                                       std::optional<std::int64_t> group_size, bool check_finite) {
  constexpr const char* kOp = "choose_qparams";
  check_input_and_range(kOp, input, quant_min, quant_max, axis, group_size);
  auto [rows, out_shape] = qparams_rows(input, axis, group_size);
  auto [mn, mx] = row_min_max(rows);
  if (check_finite) {
    TORCH_CHECK_VALUE(at::isfinite(mn).all().item<bool>() && at::isfinite(mx).all().item<bool>(),
                      fmt::format("{}: input must be finite, found NaN or Inf", kOp));
  }
  auto [scale, zero_point] = qparams_from_min_max(mn, mx, quant_min, quant_max, symmetric);
  return {scale.reshape_symint(out_shape).contiguous(), zero_point.reshape_symint(out_shape).contiguous()};
}

}  // namespace ops

namespace {

using OptInt = std::optional<std::int64_t>;

std::tuple<at::Tensor, at::Tensor> choose_qparams_composite(const at::Tensor& input, std::int64_t quant_min,
                                                            std::int64_t quant_max, bool symmetric, OptInt axis,
                                                            OptInt group_size) {
  return ops::choose_qparams_impl(input, quant_min, quant_max, symmetric, axis, group_size, /*check_finite=*/false);
}

/// qparams are statistics of the data, not functions to differentiate: outputs never require grad.
std::tuple<at::Tensor, at::Tensor> choose_qparams_autograd(const at::Tensor& input, std::int64_t quant_min,
                                                           std::int64_t quant_max, bool symmetric, OptInt axis,
                                                           OptInt group_size) {
  ops::check_no_forward_ad("choose_qparams", {&input});  // (nested / sparse inputs)
  at::AutoDispatchBelowADInplaceOrView guard;
  at::NoGradGuard no_grad;
  return choose_qparams(input, quant_min, quant_max, symmetric, axis, group_size);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> choose_qparams(const at::Tensor& input, std::int64_t quant_min,
                                                  std::int64_t quant_max, bool symmetric, OptInt axis,
                                                  OptInt group_size) {
  static auto op = ops::op_handle<decltype(choose_qparams_composite)>("qatkit::choose_qparams");
  return op.call(input, quant_min, quant_max, symmetric, axis, group_size);
}

TORCH_LIBRARY_IMPL(qatkit, CompositeExplicitAutograd, m) { m.impl("choose_qparams", &choose_qparams_composite); }
TORCH_LIBRARY_IMPL(qatkit, Autograd, m) { m.impl("choose_qparams", &choose_qparams_autograd); }

}  // namespace qatkit
