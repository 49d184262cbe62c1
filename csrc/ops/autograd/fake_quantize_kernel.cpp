// Autograd for the fake-quantize family, in C++ so Python and LibTorch callers share it.
// The forward redispatches below autograd to `_fake_quantize_with_mask` and saves only the bit
// mask (1/32 of an fp32 input); the backward is the `_fake_quantize_backward` op, so
// torch.compile / torch.export see both halves as ops in the graph.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>
#include "../op_handle.h"
#include "unsupported.h"

namespace qatkit::ops {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptInt = std::optional<std::int64_t>;

at::Tensor call_backward(const at::Tensor& grad, const at::Tensor& mask) {
  static auto op = ops::op_handle<ops::sig::FakeQuantizeBackward>("qatkit::_fake_quantize_backward");
  return op.call(grad, mask);
}

/// d(grad_input)/d(grad) is the same mask, so the backward is its own derivative (double backward).
class FakeQuantizeBackwardFunction : public torch::autograd::Function<FakeQuantizeBackwardFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& grad, const at::Tensor& mask) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({mask});
    return call_backward(grad, mask);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor mask = ctx->get_saved_variables()[0];
    return {call_backward(grads[0], mask), at::Tensor()};
  }
};

/// Clipped straight-through estimator (docs/papers.md §0): d out / d input = 1 where the unclamped q
/// is inside [quant_min, quant_max], 0 elsewhere. scale and zero_point are constants here.
class FakeQuantizeFunction : public torch::autograd::Function<FakeQuantizeFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& scale,
                            const at::Tensor& zero_point, std::int64_t quant_min, std::int64_t quant_max, OptInt axis,
                            OptInt group_size) {
    static auto op = ops::op_handle<ops::sig::FakeQuantizeWithMask>("qatkit::_fake_quantize_with_mask");
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [out, mask] = op.call(input, scale, zero_point, quant_min, quant_max, axis, group_size, std::nullopt);
    ctx->save_for_backward({mask});
    return out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor mask = ctx->get_saved_variables()[0];
    at::Tensor grad_input = FakeQuantizeBackwardFunction::apply(grads[0], mask);
    return {grad_input, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor fake_quantize_autograd(const at::Tensor& input, const at::Tensor& scale, const at::Tensor& zero_point,
                                  std::int64_t quant_min, std::int64_t quant_max, OptInt axis, OptInt group_size) {
  check_no_forward_ad("fake_quantize", {&input, &scale, &zero_point});
  if (!(at::GradMode::is_enabled() && input.requires_grad())) {
    // No gradient needed: skip the mask (8 instead of 8.125 bytes per fp32 element).
    static auto op = ops::op_handle<ops::sig::FakeQuantize>("qatkit::fake_quantize");
    at::AutoDispatchBelowADInplaceOrView guard;
    return op.call(input, scale, zero_point, quant_min, quant_max, axis, group_size);
  }
  return FakeQuantizeFunction::apply(input, scale, zero_point, quant_min, quant_max, axis, group_size);
}

at::Tensor fake_quantize_backward_autograd(const at::Tensor& grad, const at::Tensor& mask) {
  return FakeQuantizeBackwardFunction::apply(grad, mask);
}

}  // namespace

TORCH_LIBRARY_IMPL(qatkit, Autograd, m) {
  m.impl("fake_quantize", &fake_quantize_autograd);
  m.impl("_fake_quantize_backward", &fake_quantize_backward_autograd);
}

}  // namespace qatkit::ops
