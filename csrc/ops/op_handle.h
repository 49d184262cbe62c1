// Typed dispatcher handles for the C++ API and the autograd kernels' redispatch. The C++ signature
// is spelled once: `op_handle<decltype(kernel)>(...)` where a kernel of the op is in the same file,
// else one alias below (the op's kernel signature in C++ types; the dispatcher checks it against
// the schema when the handle is built).
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdint>
#include <optional>
#include <tuple>

namespace qatkit::ops {

template <class Fn>
c10::TypedOperatorHandle<Fn> op_handle(const char* name, const char* overload = "") {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, overload).template typed<Fn>();
}

namespace sig {

using OptInt = std::optional<std::int64_t>;

/// qatkit::binarize
using Binarize = at::Tensor(const at::Tensor&, c10::string_view, OptInt, c10::string_view, double, const std::optional<at::Tensor>&);
/// qatkit::_binarize_apply
using BinarizeApply = at::Tensor(const at::Tensor&, const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, OptInt, bool, const std::optional<at::Tensor>&);
/// qatkit::_binarize_backward
using BinarizeBackward = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, OptInt, c10::string_view, double);
/// qatkit::_binarize_backward.out
using BinarizeBackwardOut = at::Tensor&(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, OptInt, c10::string_view, double, at::Tensor&);
/// qatkit::binarize.out
using BinarizeOut = at::Tensor&(const at::Tensor&, c10::string_view, OptInt, c10::string_view, double, const std::optional<at::Tensor>&, at::Tensor&);
/// qatkit::binary_codes
using BinaryCodes = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, c10::string_view, OptInt);
/// qatkit::fake_quantize
using FakeQuantize = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, std::int64_t, std::int64_t, OptInt, OptInt);
/// qatkit::_fake_quantize_backward
using FakeQuantizeBackward = at::Tensor(const at::Tensor&, const at::Tensor&);
/// qatkit::_fake_quantize_learnable_backward
using FakeQuantizeLearnableBackward = std::tuple<at::Tensor, at::Tensor, at::Tensor>( const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, std::int64_t, std::int64_t, OptInt, OptInt, double);
/// qatkit::fake_quantize.out
using FakeQuantizeOut = at::Tensor&(const at::Tensor&, const at::Tensor&, const at::Tensor&, std::int64_t, std::int64_t, OptInt, OptInt, at::Tensor&);
/// qatkit::_fake_quantize_with_mask
using FakeQuantizeWithMask = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&, std::int64_t, std::int64_t, OptInt, OptInt, const std::optional<at::Tensor>&);
/// qatkit::fused_observe_fake_quantize
using FusedObserveFakeQuantize = at::Tensor(const at::Tensor&, at::Tensor&, at::Tensor&, at::Tensor&, at::Tensor&, const at::Tensor&, const at::Tensor&, double, bool, std::int64_t, std::int64_t, bool, OptInt);
/// qatkit::_observer_update
using ObserverUpdate = void(const at::Tensor&, at::Tensor&, at::Tensor&, at::Tensor&, at::Tensor&, const at::Tensor&, double, bool, std::int64_t, std::int64_t, bool, OptInt);
/// qatkit::_pact_quantize_backward
using PactQuantizeBackward = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&);
/// qatkit::quantize_per_tensor_dynamic
using QuantizePerTensorDynamic = at::Tensor(const at::Tensor&, std::int64_t);
/// qatkit::quantize_per_token
using QuantizePerToken = at::Tensor(const at::Tensor&, std::int64_t);
/// qatkit::quantize_per_token.out
using QuantizePerTokenOut = at::Tensor&(const at::Tensor&, std::int64_t, at::Tensor&);
/// qatkit::ternary_codes
using TernaryCodes = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, c10::string_view, OptInt);

}  // namespace sig

}  // namespace qatkit::ops
