// The learned-step-size fake-quantize family (LSQ / LSQ+, docs/papers.md §6.1-6.2): schemas, the
// device-generic forward (effective qparams, then the fake_quantize op; registered once at
// CompositeExplicitAutograd) and the C++ API.
// The backward kernels live in ops/{cpu,meta}/fake_quantize_learnable_kernel.cpp.
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "fake_quantize_learnable_checks.h"
#include "op_handle.h"
#include "qatkit/ops.h"

TORCH_LIBRARY_FRAGMENT(qatkit, m) {
  const std::vector<at::Tag> tags{at::Tag::pt2_compliant_tag};
  m.def(
      "fake_quantize_learnable(Tensor input, Tensor scale, Tensor zero_point, int quant_min, int quant_max, "
      "int? axis=None, int? group_size=None, float grad_factor=1.0) -> Tensor",
      tags);
  // (grad_input, grad_scale, grad_zero_point); the qparam gradients are reduced to their shapes.
  m.def(
      "_fake_quantize_learnable_backward(Tensor grad, Tensor input, Tensor scale, Tensor zero_point, "
      "int quant_min, int quant_max, int? axis, int? group_size, float grad_factor) -> (Tensor, Tensor, Tensor)",
      tags);
}

namespace qatkit {
namespace ops {

using OptInt = std::optional<std::int64_t>;

/// Forward on any device: y = fake_quantize(x, max(scale, eps), clamp(round(zero_point))). The
/// qparam transforms are ATen ops on scale-sized tensors (no host sync).
at::Tensor fake_quantize_learnable_composite(const at::Tensor& input, const at::Tensor& scale,
                                          const at::Tensor& zero_point, std::int64_t quant_min, std::int64_t quant_max,
                                          OptInt axis, OptInt group_size, double grad_factor) {
  check_fake_quantize_args("fake_quantize_learnable", input, scale, zero_point, quant_min, quant_max, axis,
                                group_size);
  check_grad_factor("fake_quantize_learnable", grad_factor);  // only scales the backward, checked here too
  const auto [s, z] = effective_learned_qparams(scale, zero_point, quant_min, quant_max);
  return qatkit::fake_quantize(input, s, z, quant_min, quant_max, axis, group_size);
}

}  // namespace ops

using OptInt = std::optional<std::int64_t>;

at::Tensor fake_quantize_learnable(const at::Tensor& input, const at::Tensor& scale, const at::Tensor& zero_point,
                                   std::int64_t quant_min, std::int64_t quant_max, OptInt axis, OptInt group_size,
                                   double grad_factor) {
  static auto op = ops::op_handle<decltype(ops::fake_quantize_learnable_composite)>("qatkit::fake_quantize_learnable");
  return op.call(input, scale, zero_point, quant_min, quant_max, axis, group_size, grad_factor);
}

TORCH_LIBRARY_IMPL(qatkit, CompositeExplicitAutograd, m) {
  m.impl("fake_quantize_learnable", &ops::fake_quantize_learnable_composite);
}

}  // namespace qatkit
