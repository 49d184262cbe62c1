// Meta kernels of the fake-quantize family: the same shape/dtype/device checks as the real
// kernels, SymInt sizes, outputs with the real kernels' (contiguous) strides.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../fake_quantize_checks.h"

namespace qatkit::ops {
namespace {

at::Tensor fake_quantize_meta(const at::Tensor& input, const at::Tensor& scale, const at::Tensor& zero_point,
                              std::int64_t quant_min, std::int64_t quant_max, std::optional<std::int64_t> axis,
                              std::optional<std::int64_t> group_size) {
  check_fake_quantize_args("fake_quantize", input, scale, zero_point, quant_min, quant_max, axis, group_size);
  return at::empty_symint(input.sym_sizes(), input.options());
}

at::Tensor& fake_quantize_out_meta(const at::Tensor& input, const at::Tensor& scale, const at::Tensor& zero_point,
                                   std::int64_t quant_min, std::int64_t quant_max, std::optional<std::int64_t> axis,
                                   std::optional<std::int64_t> group_size, at::Tensor& out) {
  check_fake_quantize_args("fake_quantize.out", input, scale, zero_point, quant_min, quant_max, axis, group_size);
  check_and_resize_out("fake_quantize.out", input, out);
  return out;
}

std::tuple<at::Tensor, at::Tensor> fake_quantize_with_mask_meta(const at::Tensor& input, const at::Tensor& scale,
                                                                const at::Tensor& zero_point, std::int64_t quant_min,
                                                                std::int64_t quant_max,
                                                                std::optional<std::int64_t> axis,
                                                                std::optional<std::int64_t> group_size,
                                                                const std::optional<at::Tensor>& enabled) {
  check_fake_quantize_args("fake_quantize", input, scale, zero_point, quant_min, quant_max, axis, group_size);
  check_enabled_flag("fake_quantize", input, enabled);
  at::Tensor out = at::empty_symint(input.sym_sizes(), input.options());
  c10::SymInt bytes = (input.sym_numel() + 7) / 8;
  at::Tensor mask = at::empty_symint({bytes}, input.options().dtype(at::kByte));
  return {out, mask};
}

at::Tensor fake_quantize_backward_meta(const at::Tensor& grad, const at::Tensor& mask) {
  check_backward_args(grad, mask);
  return at::empty_symint(grad.sym_sizes(), grad.options());
}

}  // namespace

TORCH_LIBRARY_IMPL(qatkit, Meta, m) {
  m.impl("fake_quantize", &fake_quantize_meta);
  m.impl("fake_quantize.out", &fake_quantize_out_meta);
  m.impl("_fake_quantize_with_mask", &fake_quantize_with_mask_meta);
  m.impl("_fake_quantize_backward", &fake_quantize_backward_meta);
}

}  // namespace qatkit::ops
