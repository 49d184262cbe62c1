// Autograd of binarize: the statistics (center, alpha) are computed once, below autograd, and
// held constant (as in the papers' training code); the gradient reaches the latent input through
// the chosen sign estimator (`_binarize_backward`).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "../binarize_checks.h"
#include "qatkit/ops.h"
#include "../op_handle.h"
#include "unsupported.h"

namespace qatkit::ops {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class BinarizeFunction : public torch::autograd::Function<BinarizeFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, c10::string_view scaling,
                            std::optional<std::int64_t> axis, c10::string_view estimator, double beta,
                            const std::optional<at::Tensor>& seed) {
    at::AutoDispatchBelowADInplaceOrView guard;
    constexpr const char* op = "binarize";
    check_binarize_args(op, input, axis, beta, seed);
    const BinaryScaling sc = parse_scaling(op, scaling);
    (void)parse_estimator(op, estimator);
    const at::Tensor x = input.contiguous();  // once, for the statistics, the kernel and the backward
    const BinaryStats st = binary_stats(x, sc, axis);
    ctx->save_for_backward({x, st.center});
    ctx->saved_data["axis"] = axis;
    ctx->saved_data["estimator"] = std::string(estimator);
    ctx->saved_data["beta"] = beta;
    return qatkit::detail::binarize_apply(x, st.center, st.alpha, axis, sc == BinaryScaling::kBitNet, seed);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto op = op_handle<sig::BinarizeBackward>("qatkit::_binarize_backward");
    const auto saved = ctx->get_saved_variables();
    const std::optional<at::Tensor> center = saved[1].defined() ? std::optional<at::Tensor>(saved[1]) : std::nullopt;
    const std::string estimator = ctx->saved_data["estimator"].toStringRef();
    at::Tensor dx = op.call(grads[0], saved[0], center, ctx->saved_data["axis"].toOptional<std::int64_t>(), estimator,
                            ctx->saved_data["beta"].toDouble());
    return {dx, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor binarize_autograd(const at::Tensor& input, c10::string_view scaling, std::optional<std::int64_t> axis,
                             c10::string_view estimator, double beta, const std::optional<at::Tensor>& seed) {
  check_no_forward_ad("binarize", {&input});
  return BinarizeFunction::apply(input, scaling, axis, estimator, beta, seed);
}

}  // namespace

at::Tensor binarize_backward_autograd(const at::Tensor& grad, const at::Tensor& input,
                                     const std::optional<at::Tensor>& center, std::optional<std::int64_t> axis,
                                     c10::string_view estimator, double beta) {
  check_no_double_backward("_binarize_backward", {&grad, &input, center ? &*center : nullptr});
  static auto op = op_handle<sig::BinarizeBackward>("qatkit::_binarize_backward");
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(grad, input, center, axis, estimator, beta);
}

TORCH_LIBRARY_IMPL(qatkit, Autograd, m) {
  m.impl("binarize", &binarize_autograd);
  m.impl("_binarize_backward", &binarize_backward_autograd);
}

}  // namespace qatkit::ops
