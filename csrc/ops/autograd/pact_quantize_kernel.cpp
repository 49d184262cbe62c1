// Autograd of PACT (docs/papers.md §6.3): STE through the rounding; the input gradient passes where
// 0 <= x < alpha, alpha collects the gradient of the elements clipped at alpha (x >= alpha).
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

class PactQuantizeFunction : public torch::autograd::Function<PactQuantizeFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& alpha,
                            std::int64_t quant_max) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({input, alpha});
    return pact_quantize(input, alpha, quant_max);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto op =
        op_handle<sig::PactQuantizeBackward>("qatkit::_pact_quantize_backward");
    const auto saved = ctx->get_saved_variables();
    auto [dx, dalpha] = op.call(grads[0], saved[0], saved[1]);
    return {dx, dalpha, at::Tensor()};
  }
};

at::Tensor pact_quantize_autograd(const at::Tensor& input, const at::Tensor& alpha, std::int64_t quant_max) {
  check_no_forward_ad("pact_quantize", {&input, &alpha});
  return PactQuantizeFunction::apply(input, alpha, quant_max);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> pact_quantize_backward_autograd(const at::Tensor& grad, const at::Tensor& input,
                                                                   const at::Tensor& alpha) {
  check_no_double_backward("_pact_quantize_backward", {&grad, &input, &alpha});
  static auto op = op_handle<sig::PactQuantizeBackward>("qatkit::_pact_quantize_backward");
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(grad, input, alpha);
}

TORCH_LIBRARY_IMPL(qatkit, Autograd, m) {
  m.impl("pact_quantize", &pact_quantize_autograd);
  m.impl("_pact_quantize_backward", &pact_quantize_backward_autograd);
}

}  // namespace qatkit::ops
