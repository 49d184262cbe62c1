// CPU kernels of the quantize family: value checks, then the torch-free chunk functions of
// kernels/cpu/quantize threaded with at::parallel_for.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "../../../kernels/cpu/quantize/quantize_cpu.h"
#include "../fake_quantize_checks.h"
#include "../quantize_checks.h"
#include "huge_pages.h"

namespace qatkit::ops {
namespace {

constexpr std::int64_t kQuantizeGrain = 1 << 15;

at::Tensor quantize_affine_cpu(const at::Tensor& input, const at::Tensor& scale, const at::Tensor& zero_point,
                               std::int64_t quant_min, std::int64_t quant_max, std::optional<std::int64_t> axis,
                               std::optional<std::int64_t> group_size, std::optional<at::ScalarType> dtype) {
  constexpr const char* op = "quantize_affine";
  at::Tensor codes = empty_cpu_output(input.sizes(), input.options().dtype(code_dtype(op, dtype)));
  const QuantizeLaunch l =
      prepare_quantize(op, input, scale, zero_point, quant_min, quant_max, axis, group_size, codes);
  check_qparam_values(op, l.scale, l.zero_point, quant_min, quant_max);
  const auto& k = kernels::cpu::quantize_kernels();
  at::parallel_for(0, l.args.numel, kQuantizeGrain, [&](std::int64_t b, std::int64_t e) { k.quantize(l.args, b, e); });
  return codes;
}

at::Tensor dequantize_affine_cpu(const at::Tensor& codes, const at::Tensor& scale, const at::Tensor& zero_point,
                                 std::optional<std::int64_t> axis, std::optional<std::int64_t> group_size,
                                 std::optional<at::ScalarType> output_dtype) {
  constexpr const char* op = "dequantize_affine";
  at::Tensor out = empty_cpu_output(codes.sizes(), codes.options().dtype(dequantize_dtype(op, output_dtype)));
  const DequantizeLaunch l = prepare_dequantize(op, codes, scale, zero_point, axis, group_size, out);
  const auto [lo, hi] = code_range(codes.scalar_type());
  check_qparam_values(op, l.scale, l.zero_point, lo, hi);
  const auto& k = kernels::cpu::quantize_kernels();
  at::parallel_for(0, l.args.numel, kQuantizeGrain, [&](std::int64_t b, std::int64_t e) { k.dequantize(l.args, b, e); });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(qatkit, CPU, m) {
  m.impl("quantize_affine", &quantize_affine_cpu);
  m.impl("dequantize_affine", &dequantize_affine_cpu);
}

}  // namespace qatkit::ops
