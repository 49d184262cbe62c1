// Meta kernel of linear_int8: the CPU kernel's checks, SymInt sizes, a contiguous float32 output.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <utility>

#include "../qgemm_checks.h"

namespace qatkit::ops {
namespace {

// A Linear-shaped output: the input's (symbolic) sizes with the last one n (or dim 0 of `rows`).
at::Tensor linear_output(const at::Tensor& input, c10::SymInt n) {
  std::vector<c10::SymInt> shape(input.sym_sizes().begin(), input.sym_sizes().end());
  shape.back() = std::move(n);
  return at::empty_symint(shape, input.options());
}
at::Tensor linear_output(const at::Tensor& input, const at::Tensor& rows) { return linear_output(input, rows.sym_size(0)); }

// A conv's NCHW output with the input's (possibly symbolic) batch size, so torch.export keeps a
// dynamic batch dim dynamic (the shape checks read the concrete C, H, W).
at::Tensor conv_output(const at::Tensor& input, std::int64_t N, std::int64_t ho, std::int64_t wo) {
  return at::empty_symint({input.sym_size(0), c10::SymInt(N), c10::SymInt(ho), c10::SymInt(wo)}, input.options());
}

at::Tensor linear_int8_meta(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& corr,
                            const at::Tensor& out_scale, double act_scale, std::int64_t act_zero_point,
                            std::int64_t act_quant_min, std::int64_t act_quant_max,
                           const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& input_divisor) {
  check_linear_int8_args(input, weight, corr, out_scale, act_scale, act_zero_point, act_quant_min, act_quant_max, bias);
  check_input_divisor(input, input_divisor);
  return linear_output(input, weight.dim() == 3 ? corr : weight);  // a panel weight: N is corr's length
}

at::Tensor linear_w2a8_meta(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& corr,
                            const at::Tensor& out_scale, double act_scale, std::int64_t act_zero_point,
                            std::int64_t act_quant_min, std::int64_t act_quant_max,
                            const std::optional<at::Tensor>& bias) {
  check_linear_int8_args(input, weight, corr, out_scale, act_scale, act_zero_point, act_quant_min, act_quant_max, bias,
                         2);
  return linear_output(input, weight);
}

at::Tensor linear_w1a8_meta(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& corr,
                            const at::Tensor& out_scale, double act_scale, std::int64_t act_zero_point,
                            std::int64_t act_quant_min, std::int64_t act_quant_max,
                            const std::optional<at::Tensor>& bias) {
  check_linear_int8_args(input, weight, corr, out_scale, act_scale, act_zero_point, act_quant_min, act_quant_max, bias,
                         1);
  return linear_output(input, weight.dim() == 3 ? corr : weight);  // a panel weight: N is corr's length
}

at::Tensor linear_w8_weight_only_meta(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& weight_scale,
                                      const std::optional<at::Tensor>& bias) {
  check_linear_w8_weight_only_args(input, weight, weight_scale, bias);
  return linear_output(input, weight);
}

at::Tensor linear_dynamic_int8_meta(const at::Tensor& input, const at::Tensor& weight, std::int64_t weight_bits,
                                   const at::Tensor& weight_scale, std::int64_t act_quant_max,
                                   const std::optional<at::Tensor>& bias, bool) {
  check_linear_dynamic_int8_args(input, weight, weight_bits, weight_scale, act_quant_max, bias);
  return linear_output(input, weight_scale);  // N is weight_scale's length (every layout)
}

at::Tensor conv2d_int8_meta(const at::Tensor& input, const at::Tensor& weight, std::int64_t weight_bits,
                            at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                            at::IntArrayRef dilation, const at::Tensor& corr, const at::Tensor& out_scale,
                            double act_scale, std::int64_t act_zero_point, std::int64_t act_quant_min,
                            std::int64_t act_quant_max, const std::optional<at::Tensor>& bias, std::int64_t groups,
                            std::optional<double> clamp_min, std::optional<double> clamp_max) {
  check_output_clamp("conv2d_int8", clamp_min, clamp_max);
  const auto [ho, wo] =
      check_conv2d_int8_args(input, weight, weight_bits, kernel_size, stride, padding, dilation, groups);
  const std::int64_t K = static_dim(input, 1) / groups * kernel_size[0] * kernel_size[1];
  const bool panel = weight.dim() == 3;  // pack_int8_panel: N is corr's length, K the patch length
  check_linear_int8_args(at::empty({1, weight_bits == 8 && !panel ? weight.size(1) : K}, input.options()), weight, corr,
                         out_scale, act_scale, act_zero_point, act_quant_min, act_quant_max, bias,
                         static_cast<int>(weight_bits));
  at::Tensor y = conv_output(input, panel ? corr.size(0) : weight.size(0), ho, wo);
  return conv_channels_last_io(input) ? y.contiguous(at::MemoryFormat::ChannelsLast) : y;
}

at::Tensor linear_w4a8_meta(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& group_scale,
                            std::int64_t group_size, double act_scale,
                            std::int64_t act_zero_point, std::int64_t act_quant_min, std::int64_t act_quant_max,
                            const std::optional<at::Tensor>& bias) {
  check_linear_w4a8_args(input, weight, group_scale, group_size, bias);
  const std::int64_t N = w4_weight_only_rows(group_scale), K = static_dim(input, -1);  // or 16 per block
  check_linear_int8_args(input, at::empty({N, K}, weight.options().dtype(at::kChar)),
                         at::empty({N}, group_scale.options().dtype(at::kInt)), at::empty({N}, group_scale.options()), act_scale,
                         act_zero_point, act_quant_min, act_quant_max, bias);
  std::vector<c10::SymInt> shape(input.sym_sizes().begin(), input.sym_sizes().end());
  shape.back() = group_scale.dim() == 3 ? group_scale.sym_size(0) * 16 : group_scale.sym_size(0);
  return at::empty_symint(shape, input.options());
}

at::Tensor conv2d_w4a8_meta(const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef kernel_size,
                            at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                            const at::Tensor& group_scale, std::int64_t group_size, double act_scale,
                            std::int64_t act_zero_point, std::int64_t act_quant_min, std::int64_t act_quant_max,
                            const std::optional<at::Tensor>& bias, std::int64_t groups,
                            std::optional<double> clamp_min, std::optional<double> clamp_max) {
  check_output_clamp("conv2d_w4a8", clamp_min, clamp_max);
  const auto shp = check_conv2d_w4a8_args(input, weight, kernel_size, stride, padding, dilation, group_scale, group_size,
                                          act_scale, act_zero_point, act_quant_min, act_quant_max, bias, groups);
  at::Tensor y = conv_output(input, group_scale.size(0), shp.ho, shp.wo);
  return conv_channels_last_io(input) ? y.contiguous(at::MemoryFormat::ChannelsLast) : y;
}

at::Tensor linear_w1a1_meta(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& weight_scale,
                            const std::optional<at::Tensor>& bias) {
  check_w1a1_args("linear_w1a1", input, input.dim() > 0 ? static_dim(input, -1) : 0, weight, weight_scale, bias);
  return linear_output(input, weight);
}

at::Tensor conv2d_w1a1_meta(const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef kernel_size,
                            at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                            const at::Tensor& weight_scale, const std::optional<at::Tensor>& bias,
                            std::int64_t groups, std::optional<double> clamp_min, std::optional<double> clamp_max) {
  check_output_clamp("conv2d_w1a1", clamp_min, clamp_max);
  const auto [ho, wo] = check_conv2d_int8_args(input, weight, 1, kernel_size, stride, padding, dilation, groups);
  check_w1a1_args("conv2d_w1a1", input, static_dim(input, 1) / groups * kernel_size[0] * kernel_size[1], weight,
                  weight_scale, bias);
  at::Tensor y = conv_output(input, weight.size(0), ho, wo);
  return conv_channels_last_io(input) ? y.contiguous(at::MemoryFormat::ChannelsLast) : y;
}

at::Tensor linear_w4_weight_only_meta(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& group_scale,
                                      std::int64_t group_size, const std::optional<at::Tensor>& group_zero,
                                      const std::optional<at::Tensor>& bias) {
  check_linear_w4_weight_only_args(input, weight, group_scale, group_size, group_zero, bias);
  return linear_output(input, c10::SymInt(w4_weight_only_rows(group_scale)));  // group_scale's rows, or 16 per block
}

at::Tensor pack_int8_panel_meta(const at::Tensor& weight) {
  const auto shape = check_pack_int8_panel_args(weight);
  return at::empty({shape[0], shape[1], shape[2]}, weight.options().dtype(at::kByte));
}

}  // namespace

TORCH_LIBRARY_IMPL(qatkit, Meta, m) {
  m.impl("pack_int8_panel", &pack_int8_panel_meta);
  m.impl("linear_w4_weight_only", &linear_w4_weight_only_meta);
  m.impl("linear_w1a1", &linear_w1a1_meta);
  m.impl("conv2d_w1a1", &conv2d_w1a1_meta);
  m.impl("linear_w4a8", &linear_w4a8_meta);
  m.impl("conv2d_w4a8", &conv2d_w4a8_meta);
  m.impl("conv2d_int8", &conv2d_int8_meta);
  m.impl("linear_int8", &linear_int8_meta);
  m.impl("linear_dynamic_int8", &linear_dynamic_int8_meta);
  m.impl("linear_w8_weight_only", &linear_w8_weight_only_meta);
  m.impl("linear_w2a8", &linear_w2a8_meta);
  m.impl("linear_w1a8", &linear_w1a8_meta);
}

}  // namespace qatkit::ops
