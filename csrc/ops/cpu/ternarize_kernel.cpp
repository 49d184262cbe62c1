// See ternarize_kernel.h.
#include "ternarize_kernel.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../../../kernels/cpu/reduce/reduce_cpu.h"
#include "../../../kernels/cpu/sign/sign_cpu.h"
#include "../binarize_checks.h"
#include "../ternarize_common.h"
#include "huge_pages.h"

namespace qatkit::ops {

at::Tensor twn_cpu(const at::Tensor& input, const at::Tensor& mean_abs, std::optional<std::int64_t> axis,
                   at::Tensor* out) {
  constexpr std::int64_t kBlock = 1 << 15;
  const at::Tensor x = input.contiguous();
  // statistics read channels as contiguous runs: another channel axis moves to the front (a copy)
  const std::int64_t ax = axis.has_value() ? (*axis < 0 ? *axis + input.dim() : *axis) : 0;
  const at::Tensor xs = ax == 0 ? x : x.movedim(ax, 0).contiguous();
  const std::int64_t n = x.numel();
  const std::int64_t channels = mean_abs.numel();
  const std::int64_t row = n / channels;
  // delta = 0.7 * mean|W| in float32, then in the input's dtype (tiny per-channel tensors)
  const at::Tensor delta = as_float(mean_abs.reshape(-1).mul(0.7).to(x.scalar_type())).contiguous();
  const float* d = delta.const_data_ptr<float>();
  const auto es = static_cast<std::int64_t>(x.element_size());
  const char* xp = static_cast<const char*>(xs.const_data_ptr());
  const kernels::DType dt = kernel_dtype(x);
  const auto& k = kernels::cpu::reduce_kernels();
  at::Tensor alpha = at::empty({channels}, x.options().dtype(at::kDouble));
  double* a = alpha.mutable_data_ptr<double>();
  if (!axis.has_value()) {
    const std::int64_t blocks = (n + kBlock - 1) / kBlock;
    std::vector<double> sums(blocks);
    std::vector<std::int64_t> counts(blocks);
    at::parallel_for(0, blocks, 1, [&](std::int64_t b0, std::int64_t b1) {
      for (std::int64_t b = b0; b < b1; ++b)
        k.twn_stats(xp + b * kBlock * es, dt, std::min(kBlock, n - b * kBlock), d[0], &sums[b], &counts[b]);
    });
    double sum = 0.0;
    std::int64_t count = 0;
    for (std::int64_t b = 0; b < blocks; ++b) sum += sums[b], count += counts[b];
    a[0] = sum / static_cast<double>(std::max<std::int64_t>(count, 1));
  } else {
    at::parallel_for(0, channels, std::max<std::int64_t>(1, kBlock / std::max<std::int64_t>(row, 1)),
                     [&](std::int64_t c0, std::int64_t c1) {
                       for (std::int64_t c = c0; c < c1; ++c) {
                         double sum = 0.0;
                         std::int64_t count = 0;
                         k.twn_stats(xp + c * row * es, dt, row, d[c], &sum, &count);
                         a[c] = sum / static_cast<double>(std::max<std::int64_t>(count, 1));
                       }
                     });
  }
  // alpha in the input's dtype (no channel keeps 0 elements' worth of garbage: count 0 gives 0)
  const at::Tensor alpha_f = as_float(alpha.to(x.scalar_type())).contiguous();
  const bool direct = out != nullptr && out->is_contiguous();
  at::Tensor y = direct ? *out : empty_cpu_output(x.sizes(), x.options());
  kernels::TernaryArgs args;
  args.input = x.const_data_ptr();
  args.output = y.mutable_data_ptr();
  args.alpha = alpha_f.const_data_ptr<float>();
  args.threshold = d;
  args.numel = n;
  std::tie(args.inner, args.channels) = binary_layout(x, axis);
  args.dtype = dt;
  at::parallel_for(0, n, kBlock, [&](std::int64_t b, std::int64_t e) { kernels::cpu::sign_kernels().ternary_forward(args, b, e); });
  if (out != nullptr && !direct) {
    out->copy_(y);
    return *out;
  }
  return y;
}

namespace {

constexpr TernarizeBackend kCpuBackend{/*check_finite=*/true, /*twn=*/&twn_cpu};

at::Tensor ternarize_cpu(const at::Tensor& input, c10::string_view method, std::optional<std::int64_t> axis) {
  return ternarize_impl("ternarize", input, method, axis, nullptr, kCpuBackend);
}

at::Tensor& ternarize_out_cpu(const at::Tensor& input, c10::string_view method, std::optional<std::int64_t> axis,
                              at::Tensor& out) {
  ternarize_impl("ternarize.out", input, method, axis, &out, kCpuBackend);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(qatkit, CPU, m) {
  m.impl("ternarize", &ternarize_cpu);
  m.impl("ternarize.out", &ternarize_out_cpu);
}

}  // namespace qatkit::ops
