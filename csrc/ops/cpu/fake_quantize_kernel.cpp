// CPU kernels of the fake-quantize family: value checks, then the torch-free chunk functions of
// kernels/cpu threaded with at::parallel_for (chunks aligned to mask bytes).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>

#include "../../../kernels/cpu/fake_quant_cpu.h"
#include "../fake_quantize_common.h"
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
                  std::optional<std::int64_t> group_size, at::Tensor& out, std::uint8_t* mask) {
    PreparedFakeQuant p = prepare_fake_quantize(op, input, scale, zero_point, quant_min, quant_max, axis, group_size);
    check_qparam_values(op, p.scale, p.zero_point, quant_min, quant_max);
    if (p.args.numel == 0) return;
    kernels::FakeQuantArgs a = p.args;
    a.input = p.input.const_data_ptr();
    a.output = out.mutable_data_ptr();
    a.mask = mask;
    a.scale = p.scale.const_data_ptr<float>();
    a.zero_point = p.zero_point.const_data_ptr<float>();
    const auto& k = kernels::cpu::active_kernels();
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
  kernels::FakeQuantBackwardArgs a;
  a.grad_output = g.const_data_ptr();
  a.mask = m.const_data_ptr<std::uint8_t>();
  a.grad_input = dx.mutable_data_ptr();
  a.numel = g.numel();
  a.dtype = kernel_dtype(g);
  const auto& k = kernels::cpu::active_kernels();
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
