// Argument checks and launch preparation of the quantize family (quantize_affine,
// dequantize_affine), shared by its CPU, CUDA and Meta kernels.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>

#include "../../kernels/common/quantize_args.h"

namespace qatkit::ops {

/// Code dtype of quantize_affine: `dtype` or int8; TypeError unless int8 / uint8 / int16 / int32.
at::ScalarType code_dtype(const char* op, std::optional<at::ScalarType> dtype);

/// Output dtype of dequantize_affine: `output_dtype` or float32; TypeError unless floating.
at::ScalarType dequantize_dtype(const char* op, std::optional<at::ScalarType> output_dtype);

/// quantize_affine: fake_quantize's checks plus [quant_min, quant_max] inside the code dtype.
void check_quantize_args(const char* op, const at::Tensor& input, const at::Tensor& scale, const at::Tensor& zero_point,
                         std::int64_t quant_min, std::int64_t quant_max, std::optional<std::int64_t> axis,
                         std::optional<std::int64_t> group_size, at::ScalarType dtype);

/// dequantize_affine: codes int8 / uint8 / int16 / int32 and the qparam layout checks of
/// fake_quantize applied to the codes' shape.
void check_dequantize_args(const char* op, const at::Tensor& codes, const at::Tensor& scale,
                           const at::Tensor& zero_point, std::optional<std::int64_t> axis,
                           std::optional<std::int64_t> group_size);

/// Kernel code type of an accepted code dtype.
kernels::CodeType kernel_code_type(at::ScalarType dtype);

/// [min, max] of an integer code dtype.
std::pair<std::int64_t, std::int64_t> code_range(at::ScalarType dtype);

/// Contiguous operands kept alive for a quantize launch.
struct QuantizeLaunch {
  at::Tensor input, scale, zero_point;
  kernels::QuantizeArgs args;
};
/// Checks (shapes, dtypes, devices; values on CPU) and describes a launch writing `codes`
/// (contiguous, input's shape, the code dtype).
QuantizeLaunch prepare_quantize(const char* op, const at::Tensor& input, const at::Tensor& scale,
                                const at::Tensor& zero_point, std::int64_t quant_min, std::int64_t quant_max,
                                std::optional<std::int64_t> axis, std::optional<std::int64_t> group_size,
                                at::Tensor& codes);

struct DequantizeLaunch {
  at::Tensor codes, scale, zero_point;
  kernels::DequantizeArgs args;
};
/// Checks and describes a launch writing `out` (contiguous, the codes' shape, output dtype).
DequantizeLaunch prepare_dequantize(const char* op, const at::Tensor& codes, const at::Tensor& scale,
                                    const at::Tensor& zero_point, std::optional<std::int64_t> axis,
                                    std::optional<std::int64_t> group_size, at::Tensor& out);

}  // namespace qatkit::ops
