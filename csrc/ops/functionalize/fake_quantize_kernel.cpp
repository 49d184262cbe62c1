// Functionalization of fake_quantize.out, so torch.compile / torch.export can trace code that
// calls the out= overload: run the functional op below functionalization, then replace the
// (functional) `out` with the result, as ATen's generated kernels do for its own out= ops.
// The overload is deliberately not tagged `out`: torch 2.13's Inductor lowers functional custom
// ops to a tagged out overload and then passes defaulted arguments twice.
#include <ATen/FunctionalTensorWrapper.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

namespace qatkit::ops {
namespace {

using OptInt = std::optional<std::int64_t>;
namespace fimpl = at::functionalization::impl;

at::Tensor unwrap(const at::Tensor& t) {
  if (!fimpl::isFunctionalTensor(t)) return t;
  fimpl::sync(t);
  return fimpl::from_functional_tensor(t);
}

at::Tensor& fake_quantize_out_functionalize(const at::Tensor& input, const at::Tensor& scale,
                                            const at::Tensor& zero_point, std::int64_t quant_min,
                                            std::int64_t quant_max, OptInt axis, OptInt group_size, at::Tensor& out) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("qatkit::fake_quantize", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, std::int64_t,
                                         std::int64_t, OptInt, OptInt)>();
  static auto out_op = c10::Dispatcher::singleton()
                           .findSchemaOrThrow("qatkit::fake_quantize", "out")
                           .typed<at::Tensor&(const at::Tensor&, const at::Tensor&, const at::Tensor&, std::int64_t,
                                              std::int64_t, OptInt, OptInt, at::Tensor&)>();
  const at::Tensor input_ = unwrap(input), scale_ = unwrap(scale), zero_point_ = unwrap(zero_point);
  if (!fimpl::isFunctionalTensor(out)) {
    // Nothing to functionalize: a plain out tensor is written in place.
    TORCH_CHECK(!fimpl::isFunctionalTensor(input) && !fimpl::isFunctionalTensor(scale) &&
                    !fimpl::isFunctionalTensor(zero_point),
                "fake_quantize.out: out must be a functional tensor when the inputs are");
    c10::impl::ExcludeDispatchKeyGuard guard(c10::DispatchKey::Functionalize);
    return out_op.call(input_, scale_, zero_point_, quant_min, quant_max, axis, group_size, out);
  }
  at::Tensor result;
  {
    c10::impl::ExcludeDispatchKeyGuard guard(c10::DispatchKey::Functionalize);
    // Check out's dtype/device like the real out= kernels (on the unwrapped tensor).
    at::Tensor out_ = fimpl::from_functional_tensor(out);
    TORCH_CHECK_TYPE(out_.scalar_type() == input_.scalar_type(), "fake_quantize.out: out must have input's dtype ",
                     input_.scalar_type(), ", got ", out_.scalar_type());
    result = op.call(input_, scale_, zero_point_, quant_min, quant_max, axis, group_size);
  }
  fimpl::replace_(out, result);
  fimpl::commit_update(out);
  fimpl::sync(out);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(qatkit, Functionalize, m) { m.impl("fake_quantize.out", &fake_quantize_out_functionalize); }

}  // namespace qatkit::ops
