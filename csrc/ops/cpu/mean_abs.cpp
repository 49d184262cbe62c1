// See mean_abs.h.
#include "mean_abs.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../../../kernels/cpu/reduce/reduce_cpu.h"
#include "../fake_quantize_checks.h"
#include "../mean_abs.h"

namespace qatkit::ops {

at::Tensor mean_abs_cpu(const at::Tensor& input, std::optional<std::int64_t> axis) {
  constexpr std::int64_t kBlock = 1 << 15;
  const bool per_tensor = !axis.has_value();
  // other axes: move the channel axis to the front (a copy) so every channel is one contiguous
  // run; the statistic is then the same float64, fixed-order sum for any axis
  const std::int64_t ax = per_tensor ? 0 : (*axis < 0 ? *axis + input.dim() : *axis);
  const at::Tensor x = (ax == 0 ? input : input.movedim(ax, 0)).contiguous();
  const std::int64_t n = x.numel();
  const std::int64_t channels = per_tensor ? 1 : x.size(0);
  if (n == 0 || channels == 0) return {};
  const std::int64_t row = n / channels;
  const auto es = static_cast<std::int64_t>(x.element_size());
  const char* xp = static_cast<const char*>(x.const_data_ptr());
  const kernels::DType dt = kernel_dtype(x);
  const auto& k = kernels::cpu::reduce_kernels();
  at::Tensor out = at::empty({channels}, x.options().dtype(at::kFloat));
  float* o = out.mutable_data_ptr<float>();
  if (per_tensor) {
    const std::int64_t blocks = (n + kBlock - 1) / kBlock;
    std::vector<double> partial(blocks);
    at::parallel_for(0, blocks, 1, [&](std::int64_t b0, std::int64_t b1) {
      for (std::int64_t b = b0; b < b1; ++b)
        partial[b] = k.abssum(xp + b * kBlock * es, dt, std::min(kBlock, n - b * kBlock));
    });
    double sum = 0.0;
    for (double p : partial) sum += p;
    o[0] = static_cast<float>(sum / static_cast<double>(n));
  } else {
    at::parallel_for(0, channels, std::max<std::int64_t>(1, kBlock / std::max<std::int64_t>(row, 1)),
                     [&](std::int64_t c0, std::int64_t c1) {
                       for (std::int64_t c = c0; c < c1; ++c) {
                         o[c] = static_cast<float>(k.abssum(xp + c * row * es, dt, row) / static_cast<double>(row));
                       }
                     });
  }
  return out;
}

std::tuple<at::Tensor, at::Tensor> mean_and_mean_abs_cpu(const at::Tensor& input, std::optional<std::int64_t> axis) {
  constexpr std::int64_t kBlock = 1 << 15;
  const bool per_tensor = !axis.has_value();
  const std::int64_t ax = per_tensor ? 0 : (*axis < 0 ? *axis + input.dim() : *axis);
  const at::Tensor x = (ax == 0 ? input : input.movedim(ax, 0)).contiguous();
  const std::int64_t n = x.numel();
  const std::int64_t channels = per_tensor ? 1 : x.size(0);
  if (n == 0 || channels == 0) return {};
  const std::int64_t row = n / channels;
  const auto es = static_cast<std::int64_t>(x.element_size());
  const char* xp = static_cast<const char*>(x.const_data_ptr());
  const kernels::DType dt = kernel_dtype(x);
  const auto& k = kernels::cpu::reduce_kernels();
  at::Tensor mean = at::empty({channels}, x.options().dtype(at::kFloat));
  at::Tensor mabs = at::empty({channels}, x.options().dtype(at::kFloat));
  float* m = mean.mutable_data_ptr<float>();
  float* a = mabs.mutable_data_ptr<float>();
  // mean_abs_cpu's blocks and division: the scale is its bits
  if (per_tensor) {
    const std::int64_t blocks = (n + kBlock - 1) / kBlock;
    std::vector<double> ps(blocks), pa(blocks);
    at::parallel_for(0, blocks, 1, [&](std::int64_t b0, std::int64_t b1) {
      for (std::int64_t b = b0; b < b1; ++b)
        k.sum_abssum(xp + b * kBlock * es, dt, std::min(kBlock, n - b * kBlock), &ps[b], &pa[b]);
    });
    double s = 0.0, sa = 0.0;
    for (std::int64_t b = 0; b < blocks; ++b) s += ps[b], sa += pa[b];
    m[0] = static_cast<float>(s / static_cast<double>(n));
    a[0] = static_cast<float>(sa / static_cast<double>(n));
  } else {
    at::parallel_for(0, channels, std::max<std::int64_t>(1, kBlock / std::max<std::int64_t>(row, 1)),
                     [&](std::int64_t c0, std::int64_t c1) {
                       for (std::int64_t c = c0; c < c1; ++c) {
                         double s = 0.0, sa = 0.0;
                         k.sum_abssum(xp + c * row * es, dt, row, &s, &sa);
                         m[c] = static_cast<float>(s / static_cast<double>(row));
                         a[c] = static_cast<float>(sa / static_cast<double>(row));
                       }
                     });
  }
  return {mean, mabs};
}

namespace {

/// The CPU kernel: the float64 abs-sum for the layouts it covers, else the composite L1 norm.
at::Tensor mean_abs_cpu_kernel(const at::Tensor& input, std::optional<std::int64_t> axis) {
  check_input_and_range("_mean_abs", input, -1, 1, axis, std::nullopt);
  at::Tensor fast = mean_abs_cpu(input, axis);
  return fast.defined() ? fast : mean_abs_composite(input, axis);
}

/// The CPU kernel: sum x and sum |x| in one float64 pass (ReduceKernels::sum_abssum).
std::tuple<at::Tensor, at::Tensor> mean_and_mean_abs_cpu_kernel(const at::Tensor& input,
                                                                std::optional<std::int64_t> axis) {
  check_input_and_range("_mean_and_mean_abs", input, -1, 1, axis, std::nullopt);
  auto fast = mean_and_mean_abs_cpu(input, axis);
  return std::get<0>(fast).defined() ? fast : mean_and_mean_abs_composite(input, axis);
}

}  // namespace

TORCH_LIBRARY_IMPL(qatkit, CPU, m) {
  m.impl("_mean_abs", &mean_abs_cpu_kernel);
  m.impl("_mean_and_mean_abs", &mean_and_mean_abs_cpu_kernel);
}

}  // namespace qatkit::ops
