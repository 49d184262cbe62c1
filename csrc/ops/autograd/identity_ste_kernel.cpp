// Straight-through estimator with constant scales (docs/papers.md §0, §7.2): the BitNet recipe
// x + stopgrad(q(x) - x), i.e. the incoming gradient passes unchanged. Shared by the dynamic
// activation quantizers and ternarize, whose data-derived scales are constants in the backward.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "qatkit/ops.h"
#include "unsupported.h"

namespace qatkit::ops {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

/// Runs `forward` below autograd; the gradient w.r.t. input is the incoming gradient.
template <class Fn>
class IdentitySte : public torch::autograd::Function<IdentitySte<Fn>> {
 public:
  template <class... Args>
  static at::Tensor forward(AutogradContext* /*ctx*/, const at::Tensor& input, Args... args) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return Fn::call(input, args...);
  }
  static variable_list backward(AutogradContext* /*ctx*/, variable_list grads) {
    variable_list out{grads[0]};
    out.resize(Fn::kNumArgs);
    return out;
  }
};

struct PerToken {
  static constexpr std::size_t kNumArgs = 2;
  static at::Tensor call(const at::Tensor& x, std::int64_t qmax) { return quantize_per_token(x, qmax); }
};
struct PerTensorDynamic {
  static constexpr std::size_t kNumArgs = 2;
  static at::Tensor call(const at::Tensor& x, std::int64_t qmax) { return quantize_per_tensor_dynamic(x, qmax); }
};
struct Ternarize {
  static constexpr std::size_t kNumArgs = 3;
  static at::Tensor call(const at::Tensor& x, std::string method, std::optional<std::int64_t> axis) {
    return ternarize(x, method, axis);
  }
};

at::Tensor per_token_autograd(const at::Tensor& x, std::int64_t qmax) {
  check_no_forward_ad("quantize_per_token", {&x});
  return IdentitySte<PerToken>::apply(x, qmax);
}
at::Tensor per_tensor_dynamic_autograd(const at::Tensor& x, std::int64_t qmax) {
  check_no_forward_ad("quantize_per_tensor_dynamic", {&x});
  return IdentitySte<PerTensorDynamic>::apply(x, qmax);
}
at::Tensor ternarize_autograd(const at::Tensor& x, c10::string_view method, std::optional<std::int64_t> axis) {
  check_no_forward_ad("ternarize", {&x});
  return IdentitySte<Ternarize>::apply(x, std::string(method), axis);
}

}  // namespace

TORCH_LIBRARY_IMPL(qatkit, Autograd, m) {
  m.impl("quantize_per_token", &per_token_autograd);
  m.impl("quantize_per_tensor_dynamic", &per_tensor_dynamic_autograd);
  m.impl("ternarize", &ternarize_autograd);
}

}  // namespace qatkit::ops
