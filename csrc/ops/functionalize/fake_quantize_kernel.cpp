// Functionalization of the out= overloads (fake_quantize, quantize_per_token, ternarize, binarize and its backward), so
// torch.compile / torch.export can trace code that calls the out= overload: run the functional op below
// functionalization, then replace the (functional) `out` with the result, as ATen's generated kernels do for its own
// out= ops. The overload is deliberately not tagged `out`: torch 2.13's Inductor lowers functional custom ops to a
// tagged out overload and then passes defaulted arguments twice.
#include <ATen/FunctionalTensorWrapper.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <vector>

#include "qatkit/ops.h"

namespace qatkit::ops {
namespace {

using OptInt = std::optional<std::int64_t>;
namespace fimpl = at::functionalization::impl;

at::Tensor unwrap(const at::Tensor& t) {
  if (!fimpl::isFunctionalTensor(t)) return t;
  fimpl::sync(t);
  return fimpl::from_functional_tensor(t);
}

/// Functionalizes an out= overload: run `functional` (below functionalization) on the unwrapped
/// inputs and replace the functional `out` with its result; a plain (non-functional) `out` is
/// written in place by `out_call` instead.
template <class Functional, class OutCall>
at::Tensor& functionalize_out(const char* op, at::Tensor& out, const std::vector<at::Tensor>& inputs,
                              Functional functional, OutCall out_call) {
  std::vector<at::Tensor> unwrapped;
  bool any_functional = false;
  for (const at::Tensor& t : inputs) {
    any_functional |= fimpl::isFunctionalTensor(t);
    unwrapped.push_back(unwrap(t));
  }
  c10::impl::ExcludeDispatchKeyGuard guard(c10::DispatchKey::Functionalize);
  if (!fimpl::isFunctionalTensor(out)) {
    TORCH_CHECK(!any_functional, op, ": out must be a functional tensor when the inputs are");
    return out_call(unwrapped, out);
  }
  const at::Tensor out_ = fimpl::from_functional_tensor(out);
  TORCH_CHECK_TYPE(out_.scalar_type() == unwrapped[0].scalar_type(), op, ": out must have input's dtype ",
                   unwrapped[0].scalar_type(), ", got ", out_.scalar_type());
  const at::Tensor result = functional(unwrapped);
  fimpl::replace_(out, result);
  fimpl::commit_update(out);
  fimpl::sync(out);
  return out;
}

at::Tensor& fake_quantize_out_functionalize(const at::Tensor& input, const at::Tensor& scale,
                                            const at::Tensor& zero_point, std::int64_t quant_min,
                                            std::int64_t quant_max, OptInt axis, OptInt group_size, at::Tensor& out) {
  return functionalize_out(
      "fake_quantize.out", out, {input, scale, zero_point},
      [&](const std::vector<at::Tensor>& u) {
        return fake_quantize(u[0], u[1], u[2], quant_min, quant_max, axis, group_size);
      },
      [&](const std::vector<at::Tensor>& u, at::Tensor& o) -> at::Tensor& {
        return fake_quantize_out(o, u[0], u[1], u[2], quant_min, quant_max, axis, group_size);
      });
}

at::Tensor& quantize_per_token_out_functionalize(const at::Tensor& input, std::int64_t quant_max, at::Tensor& out) {
  return functionalize_out(
      "quantize_per_token.out", out, {input},
      [&](const std::vector<at::Tensor>& u) { return quantize_per_token(u[0], quant_max); },
      [&](const std::vector<at::Tensor>& u, at::Tensor& o) -> at::Tensor& {
        return quantize_per_token_out(o, u[0], quant_max);
      });
}

at::Tensor& ternarize_out_functionalize(const at::Tensor& input, c10::string_view method,
                                        std::optional<std::int64_t> axis, at::Tensor& out) {
  const std::string m(method);
  return functionalize_out(
      "ternarize.out", out, {input}, [&](const std::vector<at::Tensor>& u) { return ternarize(u[0], m, axis); },
      [&](const std::vector<at::Tensor>& u, at::Tensor& o) -> at::Tensor& { return ternarize_out(o, u[0], m, axis); });
}

at::Tensor& binarize_out_functionalize(const at::Tensor& input, c10::string_view scaling, OptInt axis,
                                       c10::string_view estimator, double beta, const std::optional<at::Tensor>& seed,
                                       at::Tensor& out) {
  const std::string sc(scaling), est(estimator);
  std::vector<at::Tensor> inputs{input};
  if (seed.has_value() && seed->defined()) inputs.push_back(*seed);
  return functionalize_out(
      "binarize.out", out, inputs,
      [&](const std::vector<at::Tensor>& u) {
        return binarize(u[0], sc, axis, est, beta, u.size() > 1 ? std::optional<at::Tensor>(u[1]) : std::nullopt);
      },
      [&](const std::vector<at::Tensor>& u, at::Tensor& o) -> at::Tensor& {
        return binarize_out(o, u[0], sc, axis, est, beta,
                            u.size() > 1 ? std::optional<at::Tensor>(u[1]) : std::nullopt);
      });
}

at::Tensor& binarize_backward_out_functionalize(const at::Tensor& grad, const at::Tensor& input,
                                                const std::optional<at::Tensor>& center, OptInt axis,
                                                c10::string_view estimator, double beta, at::Tensor& grad_input) {
  const std::string est(estimator);
  std::vector<at::Tensor> inputs{grad, input};
  if (center.has_value() && center->defined()) inputs.push_back(*center);
  const auto opt_center = [](const std::vector<at::Tensor>& u) {
    return u.size() > 2 ? std::optional<at::Tensor>(u[2]) : std::nullopt;
  };
  return functionalize_out(
      "_binarize_backward.out", grad_input, inputs,
      [&](const std::vector<at::Tensor>& u) { return qatkit::detail::binarize_backward(u[0], u[1], opt_center(u), axis, est, beta); },
      [&](const std::vector<at::Tensor>& u, at::Tensor& o) -> at::Tensor& {
        return qatkit::detail::binarize_backward_out(o, u[0], u[1], opt_center(u), axis, est, beta);
      });
}

}  // namespace

TORCH_LIBRARY_IMPL(qatkit, Functionalize, m) {
  m.impl("_binarize_backward.out", &binarize_backward_out_functionalize);
  m.impl("binarize.out", &binarize_out_functionalize);
  m.impl("ternarize.out", &ternarize_out_functionalize);
  m.impl("fake_quantize.out", &fake_quantize_out_functionalize);
  m.impl("quantize_per_token.out", &quantize_per_token_out_functionalize);
}

}  // namespace qatkit::ops
