// PACT (docs/papers.md §6.3): clip activations to a learned [0, alpha], then quantize unsigned with
// scale alpha / quant_max. Schemas, the device-generic forward (registered once at
// CompositeExplicitAutograd) and the C++ API; the CPU forward (adds the alpha value check) and the
// backward kernels live in ops/{cpu,cuda,meta}/pact_quantize_kernel.cpp, autograd in ops/autograd/.
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "op_handle.h"
#include "pact_checks.h"
#include "qatkit/ops.h"
#include "exact_div.h"

TORCH_LIBRARY_FRAGMENT(qatkit, m) {
  const std::vector<at::Tag> tags{at::Tag::pt2_compliant_tag};
  m.def("pact_quantize(Tensor input, Tensor alpha, int quant_max) -> Tensor", tags);
  // (grad_input, grad_alpha)
  m.def("_pact_quantize_backward(Tensor grad, Tensor input, Tensor alpha) -> (Tensor, Tensor)", tags);
}

namespace qatkit {
namespace ops {

/// clip(x, 0, alpha) quantized to quant_max + 1 levels equals fake_quantize(x, alpha / quant_max,
/// 0, 0, quant_max): the clamp of the code at 0 and quant_max is the clip. alpha / quant_max is
/// one float32 division on the device (no host sync).
at::Tensor pact_quantize_composite(const at::Tensor& input, const at::Tensor& alpha, std::int64_t quant_max) {
  check_pact_args("pact_quantize", input, alpha, quant_max);
  const at::Tensor zero = at::zeros({1}, alpha.options().dtype(at::kInt));
  return qatkit::fake_quantize(input, div_exact(alpha.reshape({1}), static_cast<double>(quant_max)), zero, 0, quant_max);
}

}  // namespace ops

at::Tensor pact_quantize(const at::Tensor& input, const at::Tensor& alpha, std::int64_t quant_max) {
  static auto op = ops::op_handle<decltype(ops::pact_quantize_composite)>("qatkit::pact_quantize");
  return op.call(input, alpha, quant_max);
}

TORCH_LIBRARY_IMPL(qatkit, CompositeExplicitAutograd, m) { m.impl("pact_quantize", &ops::pact_quantize_composite); }

}  // namespace qatkit
