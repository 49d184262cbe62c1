// _mean_abs: mean |x| per tensor or per channel (float32, one element per channel), the
// statistic of the binary / ternary scalings; _mean_and_mean_abs: the mean too, in the same pass
// and the same float64 order (the 'bitnet' binarization's centre and scale). Ops of their own so
// eager and compiled graphs run the same kernel: on the CPU the kernel tier's float64 sums (fixed
// order, one pass; cpu/mean_abs.cpp); elsewhere (CUDA, Meta) float64 ATen reductions here,
// registered once at CompositeExplicitAutograd.
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/linalg_vector_norm.h>
#include <ATen/ops/sum.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "fake_quantize_checks.h"
#include "mean_abs.h"
#include "op_handle.h"
#include "exact_div.h"

TORCH_LIBRARY_FRAGMENT(qatkit, m) {
  m.def("_mean_abs(Tensor input, int? axis=None) -> Tensor", {at::Tag::pt2_compliant_tag});
  m.def("_mean_and_mean_abs(Tensor input, int? axis=None) -> (Tensor, Tensor)", {at::Tag::pt2_compliant_tag});
}

namespace qatkit::ops {

at::Tensor mean_abs_composite(const at::Tensor& input, std::optional<std::int64_t> axis) {
  check_input_and_range("_mean_abs", input, -1, 1, axis, std::nullopt);
  const std::vector<std::int64_t> dims = reduction_dims(input, axis);
  const c10::SymInt channels = axis.has_value() ? input.sym_size(*axis < 0 ? *axis + input.dim() : *axis) : 1;
  // no dims left (per channel along the only axis): |x| itself (an empty dim list reduces everything)
  if (dims.empty()) return as_float(input.abs()).reshape_symint({channels});
  // float64 accumulation, as the CPU kernel's abs-sum: the float32 mean is then the same on every
  // device in all but a vanishing share of cases (a float32 accumulation in CUDA's order moved
  // XNOR's per-sample scale in its last bits against the CPU's: docs/gpu.md, 2026-12-04)
  const auto acc = at::kDouble;
  const double count = static_cast<double>(input.sym_numel().guard_int(__FILE__, __LINE__)) /
                       static_cast<double>(std::max<std::int64_t>(1, channels.guard_int(__FILE__, __LINE__)));
  return as_float(div_exact(at::linalg_vector_norm(input, 1, dims, false, acc), count)).reshape_symint({channels});
}

at::Tensor mean_abs(const at::Tensor& input, std::optional<std::int64_t> axis) {
  static auto op = op_handle<decltype(mean_abs_composite)>("qatkit::_mean_abs");
  return op.call(input, axis);
}

std::tuple<at::Tensor, at::Tensor> mean_and_mean_abs_composite(const at::Tensor& input,
                                                               std::optional<std::int64_t> axis) {
  check_input_and_range("_mean_and_mean_abs", input, -1, 1, axis, std::nullopt);
  const std::vector<std::int64_t> dims = reduction_dims(input, axis);
  const c10::SymInt channels = axis.has_value() ? input.sym_size(*axis < 0 ? *axis + input.dim() : *axis) : 1;
  // no dims left (per channel along the only axis): a copy of x (an empty dim list would reduce
  // everything; a view would alias the input, which the CPU kernel's output does not)
  if (dims.empty()) return {as_float(input).reshape_symint({channels}).clone(), mean_abs_composite(input, axis)};
  // a float64 sum divided as the CPU kernel divides (div_exact), like _mean_abs
  const double count = static_cast<double>(input.sym_numel().guard_int(__FILE__, __LINE__)) /
                       static_cast<double>(std::max<std::int64_t>(1, channels.guard_int(__FILE__, __LINE__)));
  at::Tensor mean = as_float(div_exact(at::sum(input, dims, false, at::kDouble), count)).reshape_symint({channels});
  return {mean, mean_abs_composite(input, axis)};
}

std::tuple<at::Tensor, at::Tensor> mean_and_mean_abs(const at::Tensor& input, std::optional<std::int64_t> axis) {
  static auto op = op_handle<decltype(mean_and_mean_abs_composite)>("qatkit::_mean_and_mean_abs");
  return op.call(input, axis);
}

TORCH_LIBRARY_IMPL(qatkit, CompositeExplicitAutograd, m) {
  m.impl("_mean_abs", &mean_abs_composite);
  m.impl("_mean_and_mean_abs", &mean_and_mean_abs_composite);
}

}  // namespace qatkit::ops
