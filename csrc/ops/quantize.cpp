// The quantize family: integer codes instead of fake-quantized floats, for convert, packing and
// every exporter. Not differentiable (no Autograd kernel: calling them on a tensor that requires
// grad gives outputs without a grad_fn, as torch.quantize_per_tensor does).
//   quantize_affine:   codes = clamp(rint(x * (1.0f / s)) + z, qmin, qmax) in an integer dtype, the
//                      rounding of fake_quantize, so dequantize_affine(quantize_affine(x)) equals
//                      fake_quantize(x) bit for bit (NaN codes as z and so dequantizes to 0).
//   dequantize_affine: y = (codes - z) * s, in float32 (float64 for a float64 output).
//   ternary_codes:     (codes in {-1, 0, 1}, scale) with codes * scale == ternarize(x).
//   binary_codes:      (codes in {-1, 1}, scale) with codes * scale == binarize(x) (deterministic).
// Schemas, checks and the C++ API live here; kernels in ops/{cpu,cuda,meta}/quantize_kernel.*;
// the codes ops are device-generic composites registered at CompositeExplicitAutograd.
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/amax.h>
#include <ATen/ops/nan_to_num.h>
#include <ATen/ops/ones.h>
#include <c10/util/Exception.h>
#include <fmt/format.h>
#include <torch/library.h>

#include <limits>

#include "binarize_checks.h"
#include "mean_abs.h"
#include "fake_quantize_checks.h"
#include "qatkit/ops.h"
#include "quantize_checks.h"
#include "op_handle.h"

TORCH_LIBRARY_FRAGMENT(qatkit, m) {
  m.def(
      "quantize_affine(Tensor input, Tensor scale, Tensor zero_point, int quant_min, int quant_max, int? axis=None, "
      "int? group_size=None, ScalarType? dtype=None) -> Tensor",
      {at::Tag::pt2_compliant_tag});
  m.def(
      "dequantize_affine(Tensor codes, Tensor scale, Tensor zero_point, int? axis=None, int? group_size=None, "
      "ScalarType? output_dtype=None) -> Tensor",
      {at::Tag::pt2_compliant_tag});
  m.def("ternary_codes(Tensor input, str method=\"absmean\", int? axis=None) -> (Tensor, Tensor)",
        {at::Tag::pt2_compliant_tag});
  m.def("binary_codes(Tensor input, str scaling=\"mean_abs\", int? axis=None) -> (Tensor, Tensor)",
        {at::Tag::pt2_compliant_tag});
}

namespace qatkit {
namespace ops {

namespace {
bool is_code_dtype(at::ScalarType t) {
  return t == at::kChar || t == at::kByte || t == at::kShort || t == at::kInt;
}
}  // namespace

std::pair<std::int64_t, std::int64_t> code_range(at::ScalarType dtype) {
  switch (dtype) {
    case at::kByte:
      return {0, 255};
    case at::kShort:
      return {std::numeric_limits<std::int16_t>::min(), std::numeric_limits<std::int16_t>::max()};
    case at::kInt:
      return {std::numeric_limits<std::int32_t>::min(), std::numeric_limits<std::int32_t>::max()};
    default:
      return {-128, 127};
  }
}

at::ScalarType code_dtype(const char* op, std::optional<at::ScalarType> dtype) {
  const at::ScalarType t = dtype.value_or(at::kChar);
  TORCH_CHECK_TYPE(is_code_dtype(t), fmt::format("{}: dtype must be int8, uint8, int16 or int32, got {}", op,
                                                 c10::toString(t)));
  return t;
}

at::ScalarType dequantize_dtype(const char* op, std::optional<at::ScalarType> output_dtype) {
  const at::ScalarType t = output_dtype.value_or(at::kFloat);
  TORCH_CHECK_TYPE(t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16,
                   fmt::format("{}: output_dtype must be float32, float64, float16 or bfloat16, got {}", op,
                               c10::toString(t)));
  return t;
}

void check_quantize_args(const char* op, const at::Tensor& input, const at::Tensor& scale, const at::Tensor& zero_point,
                         std::int64_t quant_min, std::int64_t quant_max, std::optional<std::int64_t> axis,
                         std::optional<std::int64_t> group_size, at::ScalarType dtype) {
  check_fake_quantize_args(op, input, scale, zero_point, quant_min, quant_max, axis, group_size);
  const auto [lo, hi] = code_range(dtype);
  TORCH_CHECK_VALUE(quant_min >= lo && quant_max <= hi,
                    fmt::format("{}: [quant_min, quant_max] = [{}, {}] must fit the code dtype {} ([{}, {}])", op,
                                quant_min, quant_max, c10::toString(dtype), lo, hi));
}

void check_dequantize_args(const char* op, const at::Tensor& codes, const at::Tensor& scale,
                           const at::Tensor& zero_point, std::optional<std::int64_t> axis,
                           std::optional<std::int64_t> group_size) {
  TORCH_CHECK_TYPE(is_code_dtype(codes.scalar_type()),
                   fmt::format("{}: codes must be int8, uint8, int16 or int32, got {}", op,
                               c10::toString(codes.scalar_type())));
  check_granularity(op, codes, axis, group_size);
  check_qparams_layout(op, codes, scale, zero_point, axis, group_size);
}

kernels::CodeType kernel_code_type(at::ScalarType t) {
  switch (t) {
    case at::kByte:
      return kernels::CodeType::kUInt8;
    case at::kShort:
      return kernels::CodeType::kInt16;
    case at::kInt:
      return kernels::CodeType::kInt32;
    default:
      return kernels::CodeType::kInt8;
  }
}

QuantizeLaunch prepare_quantize(const char* op, const at::Tensor& input, const at::Tensor& scale,
                                const at::Tensor& zero_point, std::int64_t quant_min, std::int64_t quant_max,
                                std::optional<std::int64_t> axis, std::optional<std::int64_t> group_size,
                                at::Tensor& codes) {
  check_quantize_args(op, input, scale, zero_point, quant_min, quant_max, axis, group_size, codes.scalar_type());
  QuantizeLaunch l;
  l.input = input.contiguous();
  l.scale = scale.contiguous();
  l.zero_point = as_float(zero_point).contiguous();
  kernels::QuantizeArgs& a = l.args;
  a.input = l.input.const_data_ptr();
  a.codes = codes.mutable_data_ptr();
  a.scale = l.scale.const_data_ptr<float>();
  a.zero_point = l.zero_point.const_data_ptr<float>();
  a.numel = input.numel();
  std::tie(a.inner, a.channels) = affine_layout(input, axis, group_size);
  a.quant_min = static_cast<float>(quant_min);
  a.quant_max = static_cast<float>(quant_max);
  a.dtype = kernel_dtype(input);
  a.code_type = kernel_code_type(codes.scalar_type());
  return l;
}

DequantizeLaunch prepare_dequantize(const char* op, const at::Tensor& codes, const at::Tensor& scale,
                                    const at::Tensor& zero_point, std::optional<std::int64_t> axis,
                                    std::optional<std::int64_t> group_size, at::Tensor& out) {
  check_dequantize_args(op, codes, scale, zero_point, axis, group_size);
  DequantizeLaunch l;
  l.codes = codes.contiguous();
  l.scale = scale.contiguous();
  l.zero_point = as_float(zero_point).contiguous();
  kernels::DequantizeArgs& a = l.args;
  a.codes = l.codes.const_data_ptr();
  a.output = out.mutable_data_ptr();
  a.scale = l.scale.const_data_ptr<float>();
  a.zero_point = l.zero_point.const_data_ptr<float>();
  a.numel = codes.numel();
  std::tie(a.inner, a.channels) = affine_layout(codes, axis, group_size);
  a.dtype = kernel_dtype(out);
  a.code_type = kernel_code_type(codes.scalar_type());
  return l;
}

}  // namespace ops

namespace {

/// int8 {-1, 0, +1} from the sign of y (NaN gives 0: integers have no NaN).
at::Tensor sign_codes(const at::Tensor& y) { return y.gt(0).to(at::kChar).sub(y.lt(0).to(at::kChar)); }

/// int8 {-1, +1} (0 for NaN) from binarize's unscaled output, whose values are +-1 or NaN: two
/// vectorized passes (sign_codes' five cost 4 ns per element on CPU, most of an XNOR conv's call).
at::Tensor unit_sign_codes(const at::Tensor& y) { return y.nan_to_num(0.0).to(at::kChar); }

std::tuple<at::Tensor, at::Tensor> ternary_codes_composite(const at::Tensor& input, c10::string_view method,
                                                           std::optional<std::int64_t> axis) {
  const at::Tensor x = input.contiguous();
  const at::Tensor y = ternarize(x, std::string(method), axis);  // checks the arguments
  const c10::SymInt channels = axis.has_value() ? x.sym_size(*axis) : c10::SymInt(1);
  at::Tensor scale;
  if (x.sym_numel() == 0) {
    scale = at::ones_symint({channels}, x.options().dtype(at::kFloat));
  } else if (method == "absmean") {
    scale = ops::mean_abs(x, axis).reshape(-1).clamp_min(1e-5f);  // ternarize's gamma
  } else {
    // TWN: y is +-a or 0 with a already in the input's dtype, so max |y| is a exactly (0 when a
    // channel keeps no element, where every code is 0 too)
    const std::vector<std::int64_t> dims = ops::reduction_dims(x, axis);
    scale = ops::as_float(dims.empty() ? y.abs() : at::amax(y.abs(), dims)).reshape(-1);
  }
  return {sign_codes(y), scale};
}

std::tuple<at::Tensor, at::Tensor> binary_codes_composite(const at::Tensor& input, c10::string_view scaling,
                                                          std::optional<std::int64_t> axis) {
  constexpr const char* op = "binary_codes";
  ops::check_binarize_args(op, input, axis, 1.0, std::nullopt);
  const ops::BinaryScaling sc = ops::parse_scaling(op, scaling);
  const at::Tensor x = input.contiguous();
  const ops::BinaryStats st = ops::binary_stats(x, sc, axis);
  // the signs binarize would scale: the same center and zero convention, alpha 1
  const at::Tensor signs =
      detail::binarize_apply(x, st.center, std::nullopt, axis, sc == ops::BinaryScaling::kBitNet, std::nullopt);
  return {unit_sign_codes(signs), ops::binary_codes_scale(x, st, axis)};
}

}  // namespace

at::Tensor quantize_affine(const at::Tensor& input, const at::Tensor& scale, const at::Tensor& zero_point,
                           std::int64_t quant_min, std::int64_t quant_max, std::optional<std::int64_t> axis,
                           std::optional<std::int64_t> group_size, std::optional<at::ScalarType> dtype) {
  static auto op = ops::op_handle<decltype(quantize_affine)>("qatkit::quantize_affine");
  return op.call(input, scale, zero_point, quant_min, quant_max, axis, group_size, dtype);
}

at::Tensor dequantize_affine(const at::Tensor& codes, const at::Tensor& scale, const at::Tensor& zero_point,
                             std::optional<std::int64_t> axis, std::optional<std::int64_t> group_size,
                             std::optional<at::ScalarType> output_dtype) {
  static auto op = ops::op_handle<decltype(dequantize_affine)>("qatkit::dequantize_affine");
  return op.call(codes, scale, zero_point, axis, group_size, output_dtype);
}

std::tuple<at::Tensor, at::Tensor> ternary_codes(const at::Tensor& input, const std::string& method,
                                                 std::optional<std::int64_t> axis) {
  static auto op = ops::op_handle<ops::sig::TernaryCodes>("qatkit::ternary_codes");
  return op.call(input, method, axis);
}

std::tuple<at::Tensor, at::Tensor> binary_codes(const at::Tensor& input, const std::string& scaling,
                                                std::optional<std::int64_t> axis) {
  static auto op = ops::op_handle<ops::sig::BinaryCodes>("qatkit::binary_codes");
  return op.call(input, scaling, axis);
}

}  // namespace qatkit

TORCH_LIBRARY_IMPL(qatkit, CompositeExplicitAutograd, m) {
  m.impl("ternary_codes", &qatkit::ternary_codes_composite);
  m.impl("binary_codes", &qatkit::binary_codes_composite);
}
