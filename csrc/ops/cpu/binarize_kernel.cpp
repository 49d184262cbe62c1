// CPU kernels of the binarize family: the elementwise apply and the estimator backward, threaded
// with at::parallel_for over the torch-free functions of kernels/cpu/binarize_cpu.h.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "../../../kernels/cpu/binarize_cpu.h"
#include "../binarize_common.h"
#include "../fake_quantize_common.h"
#include "huge_pages.h"

namespace qatkit::ops {
namespace {

constexpr std::int64_t kGrain = 1 << 15;

at::Tensor binarize_apply_cpu(const at::Tensor& input, const std::optional<at::Tensor>& center,
                              const std::optional<at::Tensor>& alpha, std::optional<std::int64_t> axis,
                              bool zero_negative, const std::optional<at::Tensor>& seed) {
  constexpr const char* op = "_binarize_apply";
  check_binarize_args(op, input, axis, 1.0, seed);
  check_binary_stats_shape(op, input, center, alpha, axis);
  const at::Tensor x = input.contiguous();
  at::Tensor y = empty_cpu_output(input.sizes(), input.options());
  at::Tensor center_keep, alpha_keep, seed_keep;
  kernels::BinarizeArgs a;
  a.input = x.const_data_ptr();
  a.output = y.mutable_data_ptr();
  a.center = optional_float_ptr(center, center_keep);
  a.alpha = optional_float_ptr(alpha, alpha_keep);
  if (seed.has_value() && seed->defined()) {
    seed_keep = seed->contiguous();
    a.seed = seed_keep.const_data_ptr<std::int64_t>();
  }
  a.numel = x.numel();
  std::tie(a.inner, a.channels) = binary_layout(x, axis);
  a.zero_negative = zero_negative;
  a.dtype = kernel_dtype(x);
  at::parallel_for(0, a.numel, kGrain,
                   [&](std::int64_t b, std::int64_t e) { kernels::cpu::binarize_forward(a, b, e); });
  return y;
}

at::Tensor binarize_backward_cpu(const at::Tensor& grad, const at::Tensor& input,
                                 const std::optional<at::Tensor>& center, std::optional<std::int64_t> axis,
                                 c10::string_view estimator, double beta) {
  constexpr const char* op = "_binarize_backward";
  check_binarize_backward_args(op, grad, input, center, axis, beta);
  const at::Tensor x = input.contiguous(), g = grad.contiguous();
  at::Tensor dx = empty_cpu_output(input.sizes(), input.options());
  at::Tensor center_keep;
  kernels::BinarizeBackwardArgs a;
  a.input = x.const_data_ptr();
  a.grad_output = g.const_data_ptr();
  a.grad_input = dx.mutable_data_ptr();
  a.center = optional_float_ptr(center, center_keep);
  a.numel = x.numel();
  std::tie(a.inner, a.channels) = binary_layout(x, axis);
  a.estimator = parse_estimator(op, estimator);
  a.beta = static_cast<float>(beta);
  a.dtype = kernel_dtype(x);
  at::parallel_for(0, a.numel, kGrain,
                   [&](std::int64_t b, std::int64_t e) { kernels::cpu::binarize_backward(a, b, e); });
  return dx;
}

}  // namespace

TORCH_LIBRARY_IMPL(qatkit, CPU, m) {
  m.impl("_binarize_apply", &binarize_apply_cpu);
  m.impl("_binarize_backward", &binarize_backward_cpu);
}

}  // namespace qatkit::ops
