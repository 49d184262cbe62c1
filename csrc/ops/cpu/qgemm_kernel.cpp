// CPU kernel of linear_int8: quantize the input rows to int8 (threaded over rows), then the int8
// GEMM threaded over blocks of output columns (each block streams its weight rows once for every
// input row: batch-1 GEMV and batched GEMM share one loop).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <vector>

#include "../../../kernels/cpu/qgemm/qgemm_cpu.h"
#include "../qgemm_checks.h"

namespace qatkit::ops {
namespace {

at::Tensor linear_int8_cpu(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& corr,
                           const at::Tensor& out_scale, double act_scale, std::int64_t act_zero_point,
                           std::int64_t act_quant_min, std::int64_t act_quant_max,
                           const std::optional<at::Tensor>& bias) {
  const std::int32_t shift =
      check_linear_int8_args(input, weight, corr, out_scale, act_scale, act_zero_point, act_quant_min, act_quant_max, bias);
  const at::Tensor x = input.contiguous(), w = weight.contiguous(), c = corr.contiguous(), os = out_scale.contiguous();
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  const std::int64_t N = w.size(0), K = w.size(1);
  std::int64_t M = 1;
  for (std::int64_t d = 0; d + 1 < x.dim(); ++d) M *= x.size(d);
  std::vector<std::int64_t> shape(input.sizes().begin(), input.sizes().end());
  shape.back() = N;
  at::Tensor y = at::empty(shape, input.options());
  if (y.numel() == 0) return y;
  std::vector<std::int8_t> a(static_cast<std::size_t>(M * K));
  kernels::ActQuantArgs q;
  q.inv_scale = 1.0f / static_cast<float>(act_scale);  // quantize_affine's x * (1 / s)
  q.zero_point = static_cast<std::int32_t>(act_zero_point);
  q.quant_min = static_cast<std::int32_t>(act_quant_min);
  q.quant_max = static_cast<std::int32_t>(act_quant_max);
  q.shift = shift;
  const auto& k = kernels::cpu::qgemm_kernels();
  const float* xp = x.data_ptr<float>();
  at::parallel_for(0, M, std::max<std::int64_t>(1, 16384 / std::max<std::int64_t>(K, 1)),
                   [&](std::int64_t b, std::int64_t e) { k.quantize_rows(xp, a.data(), K, q, b, e); });
  kernels::QGemmArgs g;
  g.a = a.data();
  g.w = w.data_ptr<std::int8_t>();
  g.corr = c.data_ptr<std::int32_t>();
  g.out_scale = os.data_ptr<float>();
  g.bias = b.defined() ? b.data_ptr<float>() : nullptr;
  g.y = y.data_ptr<float>();
  g.M = M;
  g.N = N;
  g.K = K;
  // blocks of 16 columns (a multiple of the AVX2 kernel's 4) whose weight rows are ~ 64 KiB or less
  at::parallel_for(0, (N + 15) / 16, 1, [&](std::int64_t b, std::int64_t e) {
    k.gemm_s8(g, b * 16, std::min(N, e * 16));
  });
  return y;
}

at::Tensor linear_w2a8_cpu(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& corr,
                           const at::Tensor& out_scale, double act_scale, std::int64_t act_zero_point,
                           std::int64_t act_quant_min, std::int64_t act_quant_max,
                           const std::optional<at::Tensor>& bias) {
  const std::int32_t shift = check_linear_int8_args(input, weight, corr, out_scale, act_scale, act_zero_point,
                                                    act_quant_min, act_quant_max, bias, true);
  const at::Tensor x = input.contiguous(), w = weight.contiguous(), c = corr.contiguous(), os = out_scale.contiguous();
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  const std::int64_t N = w.size(0), K_pad = w.size(1) * 4, K = x.size(-1);
  std::int64_t M = 1;
  for (std::int64_t d = 0; d + 1 < x.dim(); ++d) M *= x.size(d);
  std::vector<std::int64_t> shape(input.sizes().begin(), input.sizes().end());
  shape.back() = N;
  at::Tensor y = at::empty(shape, input.options());
  if (y.numel() == 0) return y;
  // activation codes padded with 0 up to K_pad (padded weights are 0 too: code 1), and their sums
  std::vector<std::int8_t> a(static_cast<std::size_t>(M * K_pad), 0);
  std::vector<std::int32_t> a_sum(static_cast<std::size_t>(M), 0);
  kernels::ActQuantArgs q;
  q.inv_scale = 1.0f / static_cast<float>(act_scale);
  q.zero_point = static_cast<std::int32_t>(act_zero_point);
  q.quant_min = static_cast<std::int32_t>(act_quant_min);
  q.quant_max = static_cast<std::int32_t>(act_quant_max);
  q.shift = shift;
  const auto& k = kernels::cpu::qgemm_kernels();
  const float* xp = x.data_ptr<float>();
  at::parallel_for(0, M, 1, [&](std::int64_t b0, std::int64_t e0) {
    for (std::int64_t m = b0; m < e0; ++m) {
      std::int8_t* row = a.data() + m * K_pad;
      k.quantize_rows(xp + m * K, row, K, q, 0, 1);
      std::int32_t s = 0;
      for (std::int64_t i = 0; i < K; ++i) s += row[i];
      a_sum[static_cast<std::size_t>(m)] = s;
    }
  });
  kernels::QGemmT2Args g;
  g.a = a.data();
  g.a_sum = a_sum.data();
  g.w = w.data_ptr<std::uint8_t>();
  g.corr = c.data_ptr<std::int32_t>();
  g.out_scale = os.data_ptr<float>();
  g.bias = b.defined() ? b.data_ptr<float>() : nullptr;
  g.y = y.data_ptr<float>();
  g.M = M;
  g.N = N;
  g.K_pad = K_pad;
  at::parallel_for(0, (N + 15) / 16, 1, [&](std::int64_t b0, std::int64_t e0) {
    k.gemm_t2(g, b0 * 16, std::min(N, e0 * 16));
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(qatkit, CPU, m) {
  m.impl("linear_int8", &linear_int8_cpu);
  m.impl("linear_w2a8", &linear_w2a8_cpu);
}

}  // namespace qatkit::ops
