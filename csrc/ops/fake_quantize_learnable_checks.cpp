// Checks and launch preparation of the learned-step-size family (see the header).
#include "fake_quantize_learnable_checks.h"

#include <cfloat>

namespace qatkit::ops {

void check_learnable_backward_args(const char* op, const at::Tensor& grad, const at::Tensor& input,
                                   const at::Tensor& scale, const at::Tensor& zero_point, std::int64_t quant_min,
                                   std::int64_t quant_max, std::optional<std::int64_t> axis,
                                   std::optional<std::int64_t> group_size) {
  check_fake_quantize_args(op, input, scale, zero_point, quant_min, quant_max, axis, group_size);
  check_like(op, "grad", grad, input);
}

std::pair<at::Tensor, at::Tensor> effective_learned_qparams(const at::Tensor& scale, const at::Tensor& zero_point,
                                                            std::int64_t quant_min, std::int64_t quant_max) {
  return {scale.clamp_min(FLT_EPSILON), as_float(zero_point).round().clamp(quant_min, quant_max)};
}

kernels::LsqBackwardArgs lsq_backward_args(const PreparedFakeQuant& p, const at::Tensor& grad, at::Tensor& grad_input) {
  kernels::LsqBackwardArgs a;
  a.fq = p.args;
  a.grad_output = grad.const_data_ptr();
  a.grad_input = grad_input.mutable_data_ptr();
  return a;
}

}  // namespace qatkit::ops
