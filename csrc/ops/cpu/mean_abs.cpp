// See mean_abs.h.
#include "mean_abs.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <tuple>
#include <vector>

#include "../../../kernels/cpu/reduce/reduce_cpu.h"
#include "../fake_quantize_checks.h"
#include "../mean_abs.h"

namespace qatkit::ops {

namespace {

/// S float64 sums per channel (or per tensor) of `input`, each divided by the run's length into a
/// float32 vector: sums(p, count, dt, m, out) fills out[r][0..S) for the count runs of m elements at
/// p[0..count), count up to `group` (runs side by side: ReduceKernels::sum_abssum_runs). Other axes
/// than 0 move to the front first (a copy) so every channel is one contiguous run; a whole tensor is
/// summed in blocks of 2^15 elements in parallel, the blocks' sums then added in order: the same
/// bits for any thread count. Undefined tensors for an empty input.
template <std::size_t S, class Sums>
std::array<at::Tensor, S> channel_means(const at::Tensor& input, std::optional<std::int64_t> axis, int group,
                                        const Sums& sums) {
  constexpr std::int64_t kBlock = 1 << 15;
  constexpr int kMaxGroup = 8;
  const int G = std::clamp(group, 1, kMaxGroup);
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
  std::array<at::Tensor, S> out;
  std::array<float*, S> o{};
  for (std::size_t i = 0; i < S; ++i) {
    out[i] = at::empty({channels}, x.options().dtype(at::kFloat));
    o[i] = out[i].template mutable_data_ptr<float>();
  }
  // runs [u0, u1) of length len(u) at start(u), G at a time (the last group of a range may be
  // shorter, and a run of another length goes alone), each run's S sums to done(u, sums)
  const auto runs = [&](std::int64_t u0, std::int64_t u1, const auto& start, const auto& len, const auto& done) {
    for (std::int64_t u = u0; u < u1;) {
      int g = 1;
      while (g < G && u + g < u1 && len(u + g) == len(u)) ++g;
      const char* p[kMaxGroup];
      std::array<double, S> r[kMaxGroup] = {};
      for (int j = 0; j < g; ++j) p[j] = start(u + j);
      sums(p, g, dt, len(u), r);
      for (int j = 0; j < g; ++j) done(u + j, r[j]);
      u += g;
    }
  };
  if (per_tensor) {
    const std::int64_t blocks = (n + kBlock - 1) / kBlock;
    std::vector<std::array<double, S>> partial(static_cast<std::size_t>(blocks));
    at::parallel_for(0, blocks, 1, [&](std::int64_t b0, std::int64_t b1) {
      runs(
          b0, b1, [&](std::int64_t b) { return xp + b * kBlock * es; },
          [&](std::int64_t b) { return std::min(kBlock, n - b * kBlock); },
          [&](std::int64_t b, const std::array<double, S>& r) { partial[static_cast<std::size_t>(b)] = r; });
    });
    for (std::size_t i = 0; i < S; ++i) {
      double sum = 0.0;
      for (const auto& p : partial) sum += p[i];
      o[i][0] = static_cast<float>(sum / static_cast<double>(n));
    }
  } else {
    at::parallel_for(0, channels, std::max<std::int64_t>(1, kBlock / std::max<std::int64_t>(row, 1)),
                     [&](std::int64_t c0, std::int64_t c1) {
                       runs(
                           c0, c1, [&](std::int64_t c) { return xp + c * row * es; }, [&](std::int64_t) { return row; },
                           [&](std::int64_t c, const std::array<double, S>& r) {
                             for (std::size_t i = 0; i < S; ++i) o[i][c] = static_cast<float>(r[i] / static_cast<double>(row));
                           });
                     });
  }
  return out;
}

}  // namespace

at::Tensor mean_abs_cpu(const at::Tensor& input, std::optional<std::int64_t> axis) {
  const auto& k = kernels::cpu::reduce_kernels();
  return channel_means<1>(input, axis, 1,
                          [&](const char* const* p, int count, kernels::DType dt, std::int64_t m, std::array<double, 1>* r) {
                            for (int j = 0; j < count; ++j) r[j][0] = k.abssum(p[j], dt, m);
                          })[0];
}

std::tuple<at::Tensor, at::Tensor> mean_and_mean_abs_cpu(const at::Tensor& input, std::optional<std::int64_t> axis) {
  const auto& k = kernels::cpu::reduce_kernels();
  // mean_abs_cpu's runs and divisions, and sum_abssum's |x| sum is abssum's: the scale is its bits
  // channels (or a whole tensor's blocks) side by side, as many as the table takes to effect
  const auto r = channel_means<2>(
      input, axis, k.sum_runs,
      [&](const char* const* p, int count, kernels::DType dt, std::int64_t m, std::array<double, 2>* s) {
        kernels::cpu::SumAbsLanes lanes[8];
        kernels::cpu::SumAbsLanes* lp[8];
        for (int j = 0; j < count; ++j) lp[j] = &lanes[j];
        k.sum_abssum_runs(reinterpret_cast<const void* const*>(p), dt, m, lp, count);
        for (int j = 0; j < count; ++j) s[j] = {lanes[j].sum(), lanes[j].abssum()};
      });
  return {r[0], r[1]};
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
