// CPU kernels of the binarize family: the elementwise apply and the estimator backward, threaded
// with at::parallel_for over the torch-free functions of kernels/cpu/sign/sign_cpu.h.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../../../kernels/cpu/sign/sign_cpu.h"
#include "../binarize_checks.h"
#include "../fake_quantize_checks.h"
#include "huge_pages.h"

#include <tuple>

namespace qatkit::ops {
namespace {

constexpr std::int64_t kBinarizeGrain = 1 << 15;

at::Tensor binarize_apply_cpu(const at::Tensor& input, const std::optional<at::Tensor>& center,
                              const std::optional<at::Tensor>& alpha, std::optional<std::int64_t> axis,
                              bool zero_negative, const std::optional<at::Tensor>& seed) {
  at::Tensor y = empty_cpu_output(input.sizes(), input.options());
  const BinarizeLaunch l = prepare_binarize("_binarize_apply", input, center, alpha, axis, zero_negative, seed, y);
  at::parallel_for(0, l.args.numel, kBinarizeGrain,
                   [&](std::int64_t b, std::int64_t e) { kernels::cpu::sign_kernels().binarize_forward(l.args, b, e); });
  return y;
}

at::Tensor binarize_backward_cpu(const at::Tensor& grad, const at::Tensor& input,
                                 const std::optional<at::Tensor>& center, std::optional<std::int64_t> axis,
                                 c10::string_view estimator, double beta) {
  at::Tensor dx = empty_cpu_output(input.sizes(), input.options());
  const BinarizeBackwardLaunch l =
      prepare_binarize_backward("_binarize_backward", grad, input, center, axis, estimator, beta, dx);
  at::parallel_for(0, l.args.numel, kBinarizeGrain,
                   [&](std::int64_t b, std::int64_t e) { kernels::cpu::sign_kernels().binarize_backward(l.args, b, e); });
  return dx;
}

/// The estimator backward straight into `grad_input` (a temporary only when it is not contiguous).
at::Tensor& binarize_backward_out_cpu(const at::Tensor& grad, const at::Tensor& input,
                                      const std::optional<at::Tensor>& center, std::optional<std::int64_t> axis,
                                      c10::string_view estimator, double beta, at::Tensor& grad_input) {
  constexpr const char* op = "_binarize_backward.out";
  check_binarize_backward_args(op, grad, input, center, axis, beta);
  check_and_resize_out(op, input, grad_input);
  at::Tensor dst = grad_input.is_contiguous() ? grad_input : empty_cpu_output(input.sizes(), input.options());
  const BinarizeBackwardLaunch l = prepare_binarize_backward(op, grad, input, center, axis, estimator, beta, dst);
  at::parallel_for(0, l.args.numel, kBinarizeGrain,
                   [&](std::int64_t b, std::int64_t e) { kernels::cpu::sign_kernels().binarize_backward(l.args, b, e); });
  if (!grad_input.is_contiguous()) grad_input.copy_(dst);
  return grad_input;
}

/// binarize into `out`: statistics, then one elementwise pass straight into the destination.
at::Tensor& binarize_out_cpu(const at::Tensor& input, c10::string_view scaling, std::optional<std::int64_t> axis,
                             c10::string_view estimator, double beta, const std::optional<at::Tensor>& seed,
                             at::Tensor& out) {
  constexpr const char* op = "binarize.out";
  check_binarize_args(op, input, axis, beta, seed);
  const BinaryScaling sc = parse_scaling(op, scaling);
  (void)parse_estimator(op, estimator);
  check_and_resize_out(op, input, out);
  const at::Tensor x = input.contiguous();  // once, for the statistics and the kernel
  const BinaryStats st = binary_stats(x, sc, axis);
  at::Tensor dst = out.is_contiguous() ? out : empty_cpu_output(input.sizes(), input.options());
  const BinarizeLaunch l = prepare_binarize(op, x, st.center, st.alpha, axis, sc == BinaryScaling::kBitNet, seed, dst);
  at::parallel_for(0, l.args.numel, kBinarizeGrain,
                   [&](std::int64_t b, std::int64_t e) { kernels::cpu::sign_kernels().binarize_forward(l.args, b, e); });
  if (!out.is_contiguous()) out.copy_(dst);
  return out;
}

/// binary_codes: the statistics binarize uses, then the int8 codes in one pass (the composite
/// wrote binarize's float signs and converted them: five tensor passes and two float temporaries,
/// ~30 % of a loaded XNOR MobileNetV2's time). The same codes and scales, bit for bit.
std::tuple<at::Tensor, at::Tensor> binary_codes_cpu(const at::Tensor& input, c10::string_view scaling,
                                                    std::optional<std::int64_t> axis) {
  constexpr const char* op = "binary_codes";
  check_binarize_args(op, input, axis, 1.0, std::nullopt);
  const BinaryScaling sc = parse_scaling(op, scaling);
  const at::Tensor x = input.contiguous();
  const BinaryStats st = binary_stats(x, sc, axis);
  at::Tensor codes = at::empty(x.sizes(), x.options().dtype(at::kChar));
  const BinarizeLaunch l =
      prepare_binarize(op, x, st.center, std::nullopt, axis, sc == BinaryScaling::kBitNet, std::nullopt, codes);
  at::parallel_for(0, l.args.numel, kBinarizeGrain,
                   [&](std::int64_t b, std::int64_t e) { kernels::cpu::sign_kernels().binary_codes(l.args, b, e); });
  return {codes, binary_codes_scale(x, st, axis)};
}

}  // namespace

TORCH_LIBRARY_IMPL(qatkit, CPU, m) {
  m.impl("binary_codes", &binary_codes_cpu);
  m.impl("binarize.out", &binarize_out_cpu);
  m.impl("_binarize_apply", &binarize_apply_cpu);
  m.impl("_binarize_backward", &binarize_backward_cpu);
  m.impl("_binarize_backward.out", &binarize_backward_out_cpu);
}

}  // namespace qatkit::ops
