// Meta kernel of linear_int8: the CPU kernel's checks, SymInt sizes, a contiguous float32 output.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../qgemm_checks.h"

namespace qatkit::ops {
namespace {

at::Tensor linear_int8_meta(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& corr,
                            const at::Tensor& out_scale, double act_scale, std::int64_t act_zero_point,
                            std::int64_t act_quant_min, std::int64_t act_quant_max,
                           const std::optional<at::Tensor>& bias) {
  check_linear_int8_args(input, weight, corr, out_scale, act_scale, act_zero_point, act_quant_min, act_quant_max, bias);
  std::vector<c10::SymInt> shape(input.sym_sizes().begin(), input.sym_sizes().end());
  shape.back() = weight.sym_size(0);
  return at::empty_symint(shape, input.options());
}

at::Tensor linear_w2a8_meta(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& corr,
                            const at::Tensor& out_scale, double act_scale, std::int64_t act_zero_point,
                            std::int64_t act_quant_min, std::int64_t act_quant_max,
                            const std::optional<at::Tensor>& bias) {
  check_linear_int8_args(input, weight, corr, out_scale, act_scale, act_zero_point, act_quant_min, act_quant_max, bias,
                         true);
  std::vector<c10::SymInt> shape(input.sym_sizes().begin(), input.sym_sizes().end());
  shape.back() = weight.sym_size(0);
  return at::empty_symint(shape, input.options());
}

}  // namespace

TORCH_LIBRARY_IMPL(qatkit, Meta, m) {
  m.impl("linear_int8", &linear_int8_meta);
  m.impl("linear_w2a8", &linear_w2a8_meta);
}

}  // namespace qatkit::ops
