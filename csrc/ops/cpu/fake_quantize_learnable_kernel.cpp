// CPU backward of the learned-step-size fake quantizer: one pass over x and dY writes dX and
// reduces the scale / zero-point gradients to the qparams' shapes in float64, with no
// input-sized temporaries. The reduction order is fixed (independent of the thread count):
//   per-tensor: blocks of kLsqBlock elements, block sums added in order;
//   channels with inner > 1: one task per channel, runs added in order;
//   inner == 1 (per-channel along the innermost dim): tasks own disjoint channel ranges.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../../../kernels/cpu/fake_quant/fake_quant_cpu.h"
#include "../fake_quantize_learnable_checks.h"
#include "huge_pages.h"

namespace qatkit::ops {
namespace {

constexpr std::int64_t kLsqBlock = 1 << 15;

std::tuple<at::Tensor, at::Tensor, at::Tensor> fake_quantize_learnable_backward_cpu(
    const at::Tensor& grad, const at::Tensor& input, const at::Tensor& scale, const at::Tensor& zero_point,
    std::int64_t quant_min, std::int64_t quant_max, std::optional<std::int64_t> axis,
    std::optional<std::int64_t> group_size, double grad_factor) {
  constexpr const char* op = "_fake_quantize_learnable_backward";
  check_learnable_backward_args(op, grad, input, scale, zero_point, quant_min, quant_max, axis, group_size,
                                grad_factor);
  const auto [s_eff, z_eff] = effective_learned_qparams(scale, zero_point, quant_min, quant_max);
  at::Tensor dx = empty_cpu_output(input.sizes(), input.options());
  const PreparedFakeQuant p =
      prepare_fake_quantize(op, input, s_eff, z_eff, quant_min, quant_max, axis, group_size, dx, nullptr);
  check_qparam_values(op, p.scale, p.zero_point, quant_min, quant_max);
  const at::Tensor g = grad.contiguous();

  const kernels::LsqBackwardArgs a = lsq_backward_args(p, g, dx);

  const std::int64_t channels = scale.numel();
  std::vector<double> ds(channels, 0.0), dz(channels, 0.0);
  const auto& k = kernels::cpu::fake_quant_kernels();
  if (a.fq.numel > 0) {
    if (channels == 1) {
      const std::int64_t blocks = (a.fq.numel + kLsqBlock - 1) / kLsqBlock;
      std::vector<double> ps(blocks), pz(blocks);
      at::parallel_for(0, blocks, 1, [&](std::int64_t b0, std::int64_t b1) {
        for (std::int64_t b = b0; b < b1; ++b) {
          k.lsq_backward_run(a, b * kLsqBlock, std::min(a.fq.numel, (b + 1) * kLsqBlock), 0, &ps[b], &pz[b]);
        }
      });
      for (std::int64_t b = 0; b < blocks; ++b) {
        ds[0] += ps[b];
        dz[0] += pz[b];
      }
    } else if (a.fq.inner > 1) {
      const std::int64_t outer = a.fq.numel / (a.fq.inner * a.fq.channels);
      const std::int64_t grain = std::max<std::int64_t>(1, kLsqBlock / (a.fq.inner * outer));
      at::parallel_for(0, a.fq.channels, grain, [&](std::int64_t c0, std::int64_t c1) {
        for (std::int64_t c = c0; c < c1; ++c) {
          for (std::int64_t o = 0; o < outer; ++o) {
            const std::int64_t begin = (o * a.fq.channels + c) * a.fq.inner;
            double s1, z1;
            k.lsq_backward_run(a, begin, begin + a.fq.inner, c, &s1, &z1);
            ds[c] += s1;
            dz[c] += z1;
          }
        }
      });
    } else {
      const std::int64_t outer = a.fq.numel / a.fq.channels;
      const std::int64_t grain = std::max<std::int64_t>(64, kLsqBlock / outer);
      at::parallel_for(0, a.fq.channels, grain, [&](std::int64_t c0, std::int64_t c1) {
        for (std::int64_t o = 0; o < outer; ++o) {
          k.lsq_backward_row(a, o * a.fq.channels + c0, o * a.fq.channels + c1, ds.data(), dz.data());
        }
      });
    }
  }
  at::Tensor dscale = at::empty(scale.sizes(), scale.options().dtype(at::kFloat));
  at::Tensor dzero = at::empty(zero_point.sizes(), zero_point.options().dtype(at::kFloat));
  float* dsp = dscale.mutable_data_ptr<float>();
  float* dzp = dzero.mutable_data_ptr<float>();
  for (std::int64_t c = 0; c < channels; ++c) {
    dsp[c] = static_cast<float>(ds[c] * grad_factor);
    dzp[c] = static_cast<float>(dz[c] * grad_factor);
  }
  return {dx, dscale, dzero};
}

/// The composite forward after the value checks of the caller's scale and zero point (host reads,
/// free on the CPU), so a NaN names `scale` as passed, not the effective qparams.
at::Tensor fake_quantize_learnable_cpu(const at::Tensor& input, const at::Tensor& scale, const at::Tensor& zero_point,
                                       std::int64_t quant_min, std::int64_t quant_max,
                                       std::optional<std::int64_t> axis, std::optional<std::int64_t> group_size,
                                       double grad_factor) {
  constexpr const char* op = "fake_quantize_learnable";
  check_fake_quantize_args(op, input, scale, zero_point, quant_min, quant_max, axis, group_size);
  check_learned_qparam_values(op, scale, zero_point);
  return fake_quantize_learnable_composite(input, scale, zero_point, quant_min, quant_max, axis, group_size,
                                           grad_factor);
}

}  // namespace

TORCH_LIBRARY_IMPL(qatkit, CPU, m) {
  m.impl("fake_quantize_learnable", &fake_quantize_learnable_cpu);
  m.impl("_fake_quantize_learnable_backward", &fake_quantize_learnable_backward_cpu);
}

}  // namespace qatkit::ops
