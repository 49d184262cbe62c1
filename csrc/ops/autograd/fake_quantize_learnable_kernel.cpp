// Autograd of the learned-step-size fake quantizer (LSQ / LSQ+, docs/papers.md §6.1-6.2): saves the
// input and qparams, and calls the `_fake_quantize_learnable_backward` op, which returns the
// clipped-STE input gradient and the reduced scale / zero-point gradients.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "qatkit/ops.h"
#include "../op_handle.h"
#include "unsupported.h"

namespace qatkit::ops {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptInt = std::optional<std::int64_t>;

class FakeQuantizeLearnableFunction : public torch::autograd::Function<FakeQuantizeLearnableFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& scale,
                            const at::Tensor& zero_point, std::int64_t quant_min, std::int64_t quant_max, OptInt axis,
                            OptInt group_size, double grad_factor) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({input, scale, zero_point});
    ctx->saved_data["quant_min"] = quant_min;
    ctx->saved_data["quant_max"] = quant_max;
    ctx->saved_data["axis"] = axis;
    ctx->saved_data["group_size"] = group_size;
    ctx->saved_data["grad_factor"] = grad_factor;
    return fake_quantize_learnable(input, scale, zero_point, quant_min, quant_max, axis, group_size, grad_factor);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto op = op_handle<sig::FakeQuantizeLearnableBackward>("qatkit::_fake_quantize_learnable_backward");
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& zero_point = saved[2];
    auto [dx, dscale, dzero] =
        op.call(grads[0], saved[0], saved[1], zero_point, ctx->saved_data["quant_min"].toInt(),
                ctx->saved_data["quant_max"].toInt(), ctx->saved_data["axis"].toOptional<std::int64_t>(),
                ctx->saved_data["group_size"].toOptional<std::int64_t>(), ctx->saved_data["grad_factor"].toDouble());
    // An integer zero point is a constant; a floating one is learned (LSQ+).
    at::Tensor dz = at::isFloatingType(zero_point.scalar_type()) ? dzero.to(zero_point.scalar_type()) : at::Tensor();
    return {dx, dscale, dz, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor fake_quantize_learnable_autograd(const at::Tensor& input, const at::Tensor& scale,
                                            const at::Tensor& zero_point, std::int64_t quant_min,
                                            std::int64_t quant_max, OptInt axis, OptInt group_size,
                                            double grad_factor) {
  check_no_forward_ad("fake_quantize_learnable", {&input, &scale, &zero_point});
  return FakeQuantizeLearnableFunction::apply(input, scale, zero_point, quant_min, quant_max, axis, group_size,
                                              grad_factor);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> fake_quantize_learnable_backward_autograd(
    const at::Tensor& grad, const at::Tensor& input, const at::Tensor& scale, const at::Tensor& zero_point,
    std::int64_t quant_min, std::int64_t quant_max, OptInt axis, OptInt group_size, double grad_factor) {
  check_no_double_backward("_fake_quantize_learnable_backward", {&grad, &input, &scale, &zero_point});
  static auto op = op_handle<sig::FakeQuantizeLearnableBackward>("qatkit::_fake_quantize_learnable_backward");
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(grad, input, scale, zero_point, quant_min, quant_max, axis, group_size, grad_factor);
}

TORCH_LIBRARY_IMPL(qatkit, Autograd, m) {
  m.impl("fake_quantize_learnable", &fake_quantize_learnable_autograd);
  m.impl("_fake_quantize_learnable_backward", &fake_quantize_learnable_backward_autograd);
}

}  // namespace qatkit::ops
