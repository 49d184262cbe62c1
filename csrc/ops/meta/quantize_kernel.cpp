// Meta kernels of the quantize family: the real kernels' checks, SymInt sizes, contiguous outputs.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../quantize_checks.h"

namespace qatkit::ops {
namespace {

at::Tensor quantize_affine_meta(const at::Tensor& input, const at::Tensor& scale, const at::Tensor& zero_point,
                                std::int64_t quant_min, std::int64_t quant_max, std::optional<std::int64_t> axis,
                                std::optional<std::int64_t> group_size, std::optional<at::ScalarType> dtype) {
  constexpr const char* op = "quantize_affine";
  const at::ScalarType t = code_dtype(op, dtype);
  check_quantize_args(op, input, scale, zero_point, quant_min, quant_max, axis, group_size, t);
  return at::empty_symint(input.sym_sizes(), input.options().dtype(t));
}

at::Tensor dequantize_affine_meta(const at::Tensor& codes, const at::Tensor& scale, const at::Tensor& zero_point,
                                  std::optional<std::int64_t> axis, std::optional<std::int64_t> group_size,
                                  std::optional<at::ScalarType> output_dtype) {
  constexpr const char* op = "dequantize_affine";
  const at::ScalarType t = dequantize_dtype(op, output_dtype);
  check_dequantize_args(op, codes, scale, zero_point, axis, group_size);
  return at::empty_symint(codes.sym_sizes(), codes.options().dtype(t));
}

}  // namespace

TORCH_LIBRARY_IMPL(qatkit, Meta, m) {
  m.impl("quantize_affine", &quantize_affine_meta);
  m.impl("dequantize_affine", &dequantize_affine_meta);
}

}  // namespace qatkit::ops
