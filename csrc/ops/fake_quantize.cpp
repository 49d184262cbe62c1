// The fake-quantize op family: schemas (the contract shared by C++, Python and docs) and the
// dispatcher-calling C++ API. Kernels live in ops/{cpu,cuda,meta,autograd}/.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "qatkit/ops.h"
#include "op_handle.h"

namespace {

// Every op is safe for torch.compile / torch.export (the out= overload through its
// Functionalize kernel in ops/functionalize/).
const std::vector<at::Tag> kTags{at::Tag::pt2_compliant_tag};

}  // namespace

TORCH_LIBRARY_FRAGMENT(qatkit, m) {
  m.def(
      "fake_quantize(Tensor input, Tensor scale, Tensor zero_point, int quant_min, int quant_max, "
      "int? axis=None, int? group_size=None) -> Tensor",
      kTags);
  m.def(
      "fake_quantize.out(Tensor input, Tensor scale, Tensor zero_point, int quant_min, int quant_max, "
      "int? axis=None, int? group_size=None, *, Tensor(a!) out) -> Tensor(a!)",
      kTags);
  // Forward that also returns the STE bit mask (bit i of byte i/8), saved for the backward. An
  // `enabled` tensor holding 0 (read on the device) makes it an identity with an all-ones mask.
  m.def(
      "_fake_quantize_with_mask(Tensor input, Tensor scale, Tensor zero_point, int quant_min, int quant_max, "
      "int? axis=None, int? group_size=None, Tensor? enabled=None) -> (Tensor, Tensor)",
      kTags);
  m.def("_fake_quantize_backward(Tensor grad, Tensor mask) -> Tensor", kTags);
}

namespace qatkit {

at::Tensor fake_quantize(const at::Tensor& input, const at::Tensor& scale, const at::Tensor& zero_point,
                         std::int64_t quant_min, std::int64_t quant_max, std::optional<std::int64_t> axis,
                         std::optional<std::int64_t> group_size) {
  static auto op = ops::op_handle<ops::sig::FakeQuantize>("qatkit::fake_quantize");
  return op.call(input, scale, zero_point, quant_min, quant_max, axis, group_size);
}

at::Tensor& fake_quantize_out(at::Tensor& out, const at::Tensor& input, const at::Tensor& scale,
                              const at::Tensor& zero_point, std::int64_t quant_min, std::int64_t quant_max,
                              std::optional<std::int64_t> axis, std::optional<std::int64_t> group_size) {
  static auto op =
      ops::op_handle<ops::sig::FakeQuantizeOut>("qatkit::fake_quantize", "out");
  return op.call(input, scale, zero_point, quant_min, quant_max, axis, group_size, out);
}

}  // namespace qatkit
