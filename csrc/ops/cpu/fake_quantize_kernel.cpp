// CPU kernels of the fake-quantize family: value checks, then the torch-free chunk functions of
// kernels/cpu threaded with at::parallel_for (chunks aligned to mask bytes).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>

#include "../../../kernels/cpu/fake_quant/fake_quant_cpu.h"
#include "../fake_quantize_checks.h"
#include "../fake_quantize_glue.h"
#include "huge_pages.h"

namespace qatkit::ops {
namespace {

// ~32K elements per task: large enough to amortise scheduling, small enough to balance 2+ cores.
constexpr std::int64_t kGrainBytes = 4096;

struct CpuBackend {
  static at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
    return empty_cpu_output(sizes, options);
  }

  static void run(const char* op, const at::Tensor& input, const at::Tensor& scale, const at::Tensor& zero_point,
                  std::int64_t quant_min, std::int64_t quant_max, std::optional<std::int64_t> axis,
                  std::optional<std::int64_t> group_size, at::Tensor& out, std::uint8_t* mask,
                  const std::optional<at::Tensor>& enabled) {
    const PreparedFakeQuant p =
        prepare_fake_quantize(op, input, scale, zero_point, quant_min, quant_max, axis, group_size, out, mask, enabled);
    // a disabled launch never reads the qparams (they may not be initialized yet)
    if (p.args.enabled == nullptr || *p.args.enabled != 0) {
      check_qparam_values(op, p.scale, p.zero_point, quant_min, quant_max);
    }
    if (p.args.numel == 0) return;
    const kernels::FakeQuantArgs& a = p.args;
    const auto& k = kernels::cpu::fake_quant_kernels();
    at::parallel_for(0, kernels::mask_bytes(a.numel), kGrainBytes,
                     [&](std::int64_t b0, std::int64_t b1) { k.forward(a, b0 * 8, std::min(b1 * 8, a.numel)); });
  }
};

at::Tensor fake_quantize_backward_cpu(const at::Tensor& grad, const at::Tensor& mask) {
  check_backward_args(grad, mask);
  const at::Tensor g = grad.contiguous();
  const at::Tensor m = mask.contiguous();
  at::Tensor dx = empty_cpu_output(grad.sizes(), grad.options());
  if (g.numel() == 0) return dx;
  const kernels::FakeQuantBackwardArgs a = backward_args(g, m, dx);
  const auto& k = kernels::cpu::fake_quant_kernels();
  at::parallel_for(0, kernels::mask_bytes(a.numel), kGrainBytes,
                   [&](std::int64_t b0, std::int64_t b1) { k.backward(a, b0 * 8, std::min(b1 * 8, a.numel)); });
  return dx;
}

using Glue = FakeQuantizeGlue<CpuBackend>;

}  // namespace

TORCH_LIBRARY_IMPL(qatkit, CPU, m) {
  m.impl("fake_quantize", &Glue::forward);
  m.impl("fake_quantize.out", &Glue::forward_out);
  m.impl("_fake_quantize_with_mask", &Glue::forward_with_mask);
  m.impl("_fake_quantize_backward", &fake_quantize_backward_cpu);
}

}  // namespace qatkit::ops
