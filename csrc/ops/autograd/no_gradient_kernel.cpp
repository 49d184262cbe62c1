// Autograd of the ops that have no gradient: the integer kernels (inference only), the code
// producers that feed them, dequantize_affine and the internal statistics ops. Without an Autograd
// kernel, torch's fallback for custom ops gave their float outputs a grad_fn that only warned at
// backward ("may lead to silently incorrect behavior") and handed back no gradient: a loss through a
// loaded integer model trained nothing before its first integer layer, silently. Here the call runs
// below autograd as before (a forward on tensors that require grad still works, as in a model run
// without torch.no_grad()), and its float outputs get a node whose backward raises an error that
// names the op and what to use instead, through the op _no_gradient, so that a traced backward
// records the error instead of failing torch.compile's forward (csrc/ops/no_gradient.cpp).
// Forward-mode AD raises at the call (check_no_forward_ad), and so does an out= overload on tensors
// that require grad, as torch's own out= ops do.
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <c10/core/GradMode.h>
#include <fmt/format.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <string>
#include <string_view>
#include <vector>

#include "../no_gradient.h"
#include "../op_handle.h"
#include "unsupported.h"

namespace qatkit::ops {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

/// The node of a no-gradient call: forward runs the op below autograd on the boxed stack and returns
/// its floating-point outputs (the stack's own tensors, which thereby get this node as grad_fn);
/// backward raises.
class NoGradient : public torch::autograd::Function<NoGradient> {
 public:
  static variable_list forward(AutogradContext* ctx, at::TensorList need, const c10::OperatorHandle* op,
                               c10::DispatchKeySet ks, torch::jit::Stack* stack) {
    ctx->saved_data["op"] = std::string(op->schema().name().substr(op->schema().name().find("::") + 2));
    ctx->saved_data["n"] = static_cast<std::int64_t>(need.size());
    for (std::size_t i = 0; i < need.size(); ++i) {  // the inputs' sizes, not the inputs (nothing is kept alive)
      ctx->saved_data[fmt::format("size{}", i)] = c10::IValue(need[i].sym_sizes());
      ctx->saved_data[fmt::format("dtype{}", i)] = need[i].scalar_type();
    }
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      op->redispatchBoxed(ks & c10::after_ADInplaceOrView_keyset, stack);
    }
    variable_list out;
    for (const c10::IValue& v : torch::jit::last(*stack, op->schema().returns().size())) {
      if (v.isTensor() && v.toTensor().defined() && v.toTensor().is_floating_point()) out.push_back(v.toTensor());
    }
    return out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const std::string op = ctx->saved_data["op"].toStringRef();
    at::Tensor g;
    for (const at::Tensor& t : grads) {
      if (t.defined()) {
        g = t;
        break;
      }
    }
    if (!g.defined()) raise_no_gradient(op);
    // each input's gradient from _no_gradient: eager, its kernel raises here; traced, it is recorded
    // and raises when the compiled backward runs
    static auto no_grad_op = op_handle<at::Tensor(const at::Tensor&, c10::string_view, c10::SymIntArrayRef,
                                                  at::ScalarType)>("qatkit::_no_gradient");
    const auto n = ctx->saved_data["n"].toInt();
    variable_list out;
    for (std::int64_t i = 0; i < n; ++i) {
      const auto size = ctx->saved_data[fmt::format("size{}", i)].toSymIntVector();
      out.push_back(no_grad_op.call(g, op, size, ctx->saved_data[fmt::format("dtype{}", i)].toScalarType()));
    }
    out.resize(out.size() + 3);  // op, ks, stack: not tensors
    return out;
  }
};

void no_gradient_kernel(const c10::OperatorHandle& op, c10::DispatchKeySet ks, torch::jit::Stack* stack) {
  const std::string& full = op.schema().name();
  const char* name = full.c_str() + full.find("::") + 2;  // into the schema's string: no copy per call
  const auto args = torch::jit::last(*stack, op.schema().arguments().size());
  variable_list need;
  for (const c10::IValue& v : args) {
    if (!v.isTensor()) continue;
    const at::Tensor& t = v.toTensor();
    check_no_forward_ad(name, {&t});
    if (t.defined() && t.requires_grad()) need.push_back(t);
  }
  // the out= overloads: torch's rule for its own ops (no autograd through out=), not a silent
  // detached result
  TORCH_CHECK(need.empty() || !c10::GradMode::is_enabled() || !op.schema().is_mutable(),
              fmt::format("qatkit::{}.{}: functions with out=... arguments don't support automatic differentiation, "
                          "but one of the arguments requires grad; call qatkit::{} without out= to differentiate, or "
                          "run under torch.no_grad()",
                          name, op.schema().overload_name(), name));
  if (need.empty() || !c10::GradMode::is_enabled()) {
    at::AutoDispatchBelowADInplaceOrView guard;
    op.redispatchBoxed(ks & c10::after_ADInplaceOrView_keyset, stack);
    return;
  }
  NoGradient::apply(at::TensorList(need), &op, ks, stack);  // a TensorList: the edges (a vector is no input)
}

}  // namespace

TORCH_LIBRARY_IMPL(qatkit, Autograd, m) {
  for (const char* op : {"linear_int8", "linear_dynamic_int8", "linear_w4a8", "linear_w2a8", "linear_w1a8",
                         "linear_w1a1", "linear_w4_weight_only", "linear_w8_weight_only", "conv2d_int8", "conv2d_w1a1", "conv2d_w4a8",
                         "binary_codes", "ternary_codes", "dequantize_affine", "_mean_abs", "_mean_and_mean_abs",
                         "_binarize_apply", "_fake_quantize_with_mask", "_no_gradient"}) {
    m.impl(op, torch::CppFunction::makeFromBoxedFunction<&no_gradient_kernel>());
  }
  for (const char* op : {"fake_quantize.out", "quantize_per_token.out", "ternarize.out", "binarize.out",
                         "_binarize_backward.out"}) {
    m.impl(op, torch::CppFunction::makeFromBoxedFunction<&no_gradient_kernel>());
  }
}

}  // namespace qatkit::ops
