// CPU backward of PACT: one pass writes dX and sums dY over the clipped elements for alpha, in
// fixed blocks whose float64 sums are added in order (independent of the thread count).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <c10/util/Exception.h>
#include <fmt/format.h>

#include <algorithm>
#include <cfloat>
#include <vector>

#include "../../../kernels/cpu/fake_quant/fake_quant_cpu.h"
#include "../pact_checks.h"
#include "huge_pages.h"

namespace qatkit::ops {
namespace {

constexpr std::int64_t kPactBlock = 1 << 15;

std::tuple<at::Tensor, at::Tensor> pact_quantize_backward_cpu(const at::Tensor& grad, const at::Tensor& input,
                                                              const at::Tensor& alpha) {
  constexpr const char* op = "_pact_quantize_backward";
  check_pact_backward_args(op, grad, input, alpha);
  const at::Tensor x = input.contiguous(), g = grad.contiguous(), alpha_c = alpha.contiguous();
  check_pact_alpha_value(op, *alpha_c.const_data_ptr<float>());
  at::Tensor dx = empty_cpu_output(input.sizes(), input.options());
  kernels::PactBackwardArgs a;
  a.input = x.const_data_ptr();
  a.grad_output = g.const_data_ptr();
  a.grad_input = dx.mutable_data_ptr();
  a.alpha = alpha_c.const_data_ptr<float>();
  a.numel = x.numel();
  a.dtype = kernel_dtype(x);
  const std::int64_t blocks = (a.numel + kPactBlock - 1) / kPactBlock;
  std::vector<double> partial(blocks, 0.0);
  const auto& k = kernels::cpu::fake_quant_kernels();
  at::parallel_for(0, blocks, 1, [&](std::int64_t b0, std::int64_t b1) {
    for (std::int64_t b = b0; b < b1; ++b)
      partial[b] = k.pact_backward_run(a, b * kPactBlock, std::min(a.numel, (b + 1) * kPactBlock));
  });
  double sum = 0.0;
  for (double p : partial) sum += p;
  at::Tensor dalpha = at::empty(alpha.sizes(), alpha.options());
  *dalpha.mutable_data_ptr<float>() = static_cast<float>(sum);
  return {dx, dalpha};
}

/// The composite forward after the value check of alpha (a host read, free on the CPU).
at::Tensor pact_quantize_cpu(const at::Tensor& input, const at::Tensor& alpha, std::int64_t quant_max) {
  check_pact_args("pact_quantize", input, alpha, quant_max);
  const float a = alpha.item<float>();
  check_pact_alpha_value("pact_quantize", a);
  // the step alpha / quant_max must be a float32 normal, as every scale (else Inf / NaN outputs)
  TORCH_CHECK_VALUE(a / static_cast<float>(quant_max) >= FLT_MIN,
                    fmt::format("pact_quantize: alpha / quant_max must be at least {} (float32 normal), got alpha={} "
                                "quant_max={}",
                                FLT_MIN, a, quant_max));
  return pact_quantize_composite(input, alpha, quant_max);
}

}  // namespace

TORCH_LIBRARY_IMPL(qatkit, CPU, m) {
  m.impl("pact_quantize", &pact_quantize_cpu);
  m.impl("_pact_quantize_backward", &pact_quantize_backward_cpu);
}

}  // namespace qatkit::ops
