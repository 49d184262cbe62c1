// The binarize family (docs/papers.md §4 BinaryConnect, §5 XNOR-Net / STE, §7.1 BitNet; Bi-Real's
// ApproxSign and BNN+'s SignSwish estimators): schemas, the device-generic kernels (registered
// once at CompositeExplicitAutograd) and the C++ API. Checks and statistics: binarize_checks.*;
// elementwise kernels: ops/{cpu,cuda,meta}/binarize_kernel.*; autograd: ops/autograd/.
#include "binarize_checks.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <fmt/format.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "qatkit/ops.h"
#include "op_handle.h"

TORCH_LIBRARY_FRAGMENT(qatkit, m) {
  const std::vector<at::Tag> tags{at::Tag::pt2_compliant_tag};
  m.def(
      "binarize(Tensor input, str scaling=\"none\", int? axis=None, str estimator=\"clipped_ste\", "
      "float beta=1.0, Tensor? seed=None) -> Tensor",
      tags);
  m.def(
      "binarize.out(Tensor input, str scaling=\"none\", int? axis=None, str estimator=\"clipped_ste\", "
      "float beta=1.0, Tensor? seed=None, *, Tensor(a!) out) -> Tensor(a!)",
      tags);
  // y = sign(x - center) * alpha (stochastic with a seed); center / alpha per channel or None.
  m.def(
      "_binarize_apply(Tensor input, Tensor? center, Tensor? alpha, int? axis, bool zero_negative, "
      "Tensor? seed) -> Tensor",
      tags);
  m.def("_binarize_backward(Tensor grad, Tensor input, Tensor? center, int? axis, str estimator, float beta) -> Tensor",
        tags);
  m.def(
      "_binarize_backward.out(Tensor grad, Tensor input, Tensor? center, int? axis, str estimator, float beta, *, "
      "Tensor(a!) grad_input) -> Tensor(a!)",
      tags);
}

namespace qatkit {

namespace {

at::Tensor binarize_kernel(const at::Tensor& input, c10::string_view scaling, std::optional<std::int64_t> axis,
                           c10::string_view estimator, double beta, const std::optional<at::Tensor>& seed) {
  constexpr const char* op = "binarize";
  ops::check_binarize_args(op, input, axis, beta, seed);
  const ops::BinaryScaling sc = ops::parse_scaling(op, scaling);
  (void)ops::parse_estimator(op, estimator);  // validated here too; used by the backward
  const at::Tensor x = input.contiguous();    // once, for the statistics and the kernel
  const ops::BinaryStats st = ops::binary_stats(x, sc, axis);
  return detail::binarize_apply(x, st.center, st.alpha, axis, sc == ops::BinaryScaling::kBitNet, seed);
}

/// out= off the CPU (and the shape/dtype contract on Meta): the functional kernel, then a copy.
at::Tensor& binarize_out_generic(const at::Tensor& input, c10::string_view scaling, std::optional<std::int64_t> axis,
                                 c10::string_view estimator, double beta, const std::optional<at::Tensor>& seed,
                                 at::Tensor& out) {
  ops::check_binarize_args("binarize.out", input, axis, beta, seed);
  ops::check_and_resize_out("binarize.out", input, out);
  if (!out.is_meta()) out.copy_(binarize_kernel(input, scaling, axis, estimator, beta, seed));
  return out;
}

/// _binarize_backward.out off the CPU (and the shape/dtype contract on Meta): the functional kernel, then a copy.
at::Tensor& binarize_backward_out_generic(const at::Tensor& grad, const at::Tensor& input,
                                          const std::optional<at::Tensor>& center, std::optional<std::int64_t> axis,
                                          c10::string_view estimator, double beta, at::Tensor& grad_input) {
  constexpr const char* op = "_binarize_backward.out";
  ops::check_binarize_backward_args(op, grad, input, center, axis, beta);
  (void)ops::parse_estimator(op, estimator);
  ops::check_and_resize_out(op, input, grad_input);
  if (!grad_input.is_meta()) {
    grad_input.copy_(detail::binarize_backward(grad, input, center, axis, std::string(estimator), beta));
  }
  return grad_input;
}

}  // namespace

namespace detail {

at::Tensor binarize_backward(const at::Tensor& grad, const at::Tensor& input, const std::optional<at::Tensor>& center,
                             std::optional<std::int64_t> axis, const std::string& estimator, double beta) {
  static auto op = ops::op_handle<ops::sig::BinarizeBackward>("qatkit::_binarize_backward");
  return op.call(grad, input, center, axis, estimator, beta);
}

at::Tensor& binarize_backward_out(at::Tensor& grad_input, const at::Tensor& grad, const at::Tensor& input,
                                  const std::optional<at::Tensor>& center, std::optional<std::int64_t> axis,
                                  const std::string& estimator, double beta) {
  static auto op = ops::op_handle<ops::sig::BinarizeBackwardOut>("qatkit::_binarize_backward", "out");
  return op.call(grad, input, center, axis, estimator, beta, grad_input);
}

}  // namespace detail

at::Tensor& binarize_out(at::Tensor& out, const at::Tensor& input, const std::string& scaling,
                         std::optional<std::int64_t> axis, const std::string& estimator, double beta,
                         const std::optional<at::Tensor>& seed) {
  static auto op = ops::op_handle<ops::sig::BinarizeOut>("qatkit::binarize", "out");
  return op.call(input, scaling, axis, estimator, beta, seed, out);
}

at::Tensor binarize(const at::Tensor& input, const std::string& scaling, std::optional<std::int64_t> axis,
                    const std::string& estimator, double beta, const std::optional<at::Tensor>& seed) {
  static auto op = ops::op_handle<ops::sig::Binarize>("qatkit::binarize");
  return op.call(input, scaling, axis, estimator, beta, seed);
}

at::Tensor detail::binarize_apply(const at::Tensor& input, const std::optional<at::Tensor>& center,
                                  const std::optional<at::Tensor>& alpha, std::optional<std::int64_t> axis, bool zero_negative,
                          const std::optional<at::Tensor>& seed) {
  static auto op =
      ops::op_handle<ops::sig::BinarizeApply>("qatkit::_binarize_apply");
  return op.call(input, center, alpha, axis, zero_negative, seed);
}

TORCH_LIBRARY_IMPL(qatkit, CompositeExplicitAutograd, m) {
  m.impl("binarize", &binarize_kernel);
  m.impl("binarize.out", &binarize_out_generic);
  m.impl("_binarize_backward.out", &binarize_backward_out_generic);
}

}  // namespace qatkit
