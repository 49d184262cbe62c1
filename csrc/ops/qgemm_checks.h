// Argument checks of the integer GEMM family, shared by its CPU and Meta kernels.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

#include "../../kernels/common/qgemm_args.h"

namespace qatkit::ops {

/// linear_int8's (weight_bits 2: linear_w2a8's, 1: linear_w1a8's) checks (dtypes, shapes, devices, the 8-bit activation range, a finite positive
/// scale); returns the activation shift (128 for a [0, 255] range, else 0).
std::int32_t check_linear_int8_args(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& corr,
                                    const at::Tensor& out_scale, double act_scale, std::int64_t zp, std::int64_t qmin,
                                    std::int64_t qmax, const std::optional<at::Tensor>& bias, int weight_bits = 8);

/// linear_w8_weight_only's checks: float32 input [..., K], int8 weight [N, K], float32 weight_scale
/// [N], bias, devices.
void check_linear_w8_weight_only_args(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& weight_scale,
                                      const std::optional<at::Tensor>& bias);

/// linear_w8_weight_only's kernel arguments (contiguous checked operands, y [..., N]).
inline kernels::QGemmW8FArgs w8f_args(const at::Tensor& x, const at::Tensor& w, const at::Tensor& ws,
                                      const at::Tensor& b, at::Tensor& y) {
  kernels::QGemmW8FArgs g;
  g.x = x.const_data_ptr<float>();
  g.w = w.const_data_ptr<std::int8_t>();
  g.scale = ws.const_data_ptr<float>();
  g.bias = b.defined() ? b.const_data_ptr<float>() : nullptr;
  g.y = y.mutable_data_ptr<float>();
  g.N = w.size(0);
  g.K = w.size(1);
  g.M = g.N ? y.numel() / g.N : 0;
  return g;
}

/// linear_w4_weight_only's kernel arguments (contiguous checked operands; gz / b may be undefined; y
/// [..., N] with N from w4_weight_only_rows). The panel layout and blocked scales follow the ranks.
inline kernels::QGemmW4FArgs w4f_args(const at::Tensor& x, const at::Tensor& w, const at::Tensor& gs,
                                      const at::Tensor& gz, const at::Tensor& b, at::Tensor& y, std::int64_t group) {
  kernels::QGemmW4FArgs g;
  g.x = x.const_data_ptr<float>();
  g.w = w.const_data_ptr<std::uint8_t>();
  g.gscale = gs.const_data_ptr<float>();
  g.gzero = gz.defined() ? gz.const_data_ptr<float>() : nullptr;
  g.bias = b.defined() ? b.const_data_ptr<float>() : nullptr;
  g.y = y.mutable_data_ptr<float>();
  g.N = y.size(-1);
  g.K = x.size(-1);
  g.M = g.N ? y.numel() / g.N : 0;
  g.panel = w.dim() == 3;
  g.blocked_scales = gs.dim() == 3;
  g.group = group;
  return g;
}

/// linear_int8's input_divisor (when given): float32 [K] on the input's device.
void check_input_divisor(const at::Tensor& input, const std::optional<at::Tensor>& input_divisor);

/// linear_dynamic_int8's checks: weight_bits 8 / 2 / 1 and its layouts (as linear_int8 /
/// linear_w2a8 / linear_w1a8, N from weight_scale for the panels), weight_scale float32 [N], bias,
/// devices, act_quant_max in [1, 127].
void check_linear_dynamic_int8_args(const at::Tensor& input, const at::Tensor& weight, std::int64_t weight_bits,
                                    const at::Tensor& weight_scale, std::int64_t act_quant_max,
                                    const std::optional<at::Tensor>& bias);

/// The activation quantization of the integer kernels: quantize_affine's x * (1 / s) rounding with
/// the op's qparams, shifted into int8 by `shift`.
kernels::ActQuantArgs act_quant_args(double act_scale, std::int64_t zero_point, std::int64_t quant_min,
                                     std::int64_t quant_max, std::int32_t shift);

/// Rows of `input` ([..., K] -> the product of the leading dims) and the output shape [..., N].
std::pair<std::int64_t, std::vector<std::int64_t>> rows_and_output_shape(const at::Tensor& input, std::int64_t N);

/// conv2d_int8's shape checks (4-D input, 2-element int lists, the weight's bytes per row for
/// C*kh*kw at weight_bits); returns the output's (H, W). The dtype / qparam checks are
/// check_linear_int8_args' on the weight and a [B, C*kh*kw]-shaped view.
std::array<std::int64_t, 2> check_conv2d_int8_args(const at::Tensor& input, const at::Tensor& weight, std::int64_t bits,
                                                  at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                                  at::IntArrayRef padding, at::IntArrayRef dilation,
                                                  std::int64_t groups = 1);

/// linear_w4a8's weight / group checks (the input dtype and activation range are
/// check_linear_int8_args', called on an int8-shaped stand-in). With a panel weight group_scale may
/// come in the panel's blocks [N / 16, K / group_size, 16], as linear_w4_weight_only's.
void check_linear_w4a8_args(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& gscale,
                            std::int64_t group, const std::optional<at::Tensor>& bias,
                            const char* op = "linear_w4a8");

/// The activation qparams of the integer kernels (a finite float32 act_scale > 0, an 8-bit range
/// inside [-128, 127] or [0, 255], the zero point in it), errors naming `op`; returns the shift
/// (128 for a [0, 255] range, else 0).
std::int32_t check_act_qparams(const char* op, double act_scale, std::int64_t zp, std::int64_t qmin, std::int64_t qmax);

/// A conv's geometry (4-D input, kernel_size / stride / padding / dilation as two integers in
/// bounds that keep every size in int64, the padded input at least the dilated kernel); returns the
/// output's (H, W). Errors name `op`.
std::array<std::int64_t, 2> check_conv2d_geometry(const char* op, const at::Tensor& input, at::IntArrayRef kernel_size,
                                                  at::IntArrayRef stride, at::IntArrayRef padding,
                                                  at::IntArrayRef dilation);

/// conv2d_w4a8's output size and activation shift.
struct Conv2dW4A8Shape {
  std::int64_t ho, wo;
  std::int32_t shift;
};

/// conv2d_w4a8's checks: float32 input, the geometry, groups dividing C and N (group_scale's rows; a
/// panel weight with groups 1), linear_w4a8's weight / group / bias checks on a patch row of K = C /
/// groups * kh * kw, the activation qparams.
Conv2dW4A8Shape check_conv2d_w4a8_args(const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef kernel_size,
                                       at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                       const at::Tensor& gscale, std::int64_t group, double act_scale, std::int64_t zp,
                                       std::int64_t qmin, std::int64_t qmax, const std::optional<at::Tensor>& bias,
                                       std::int64_t groups);

/// Dim d of t as an integer, guarding only that dim when t has symbolic sizes (torch.export /
/// dynamic shapes: size(d) would specialize every dim, the batch dim included).
inline std::int64_t static_dim(const at::Tensor& t, std::int64_t d) { return t.sym_size(d).guard_int(__FILE__, __LINE__); }

/// pack_int4_panel on any device (ATen ops).
at::Tensor pack_int4_panel_composite(const at::Tensor& weight);

/// pack_int8_panel's checks (int8 [N, K], K < 2^24); returns its output shape [NB + X, K4, 64]: the
/// panel's blocks and the split records' (QGemmArgs, kernels/common/qgemm_args.h).
std::array<std::int64_t, 3> check_pack_int8_panel_args(const at::Tensor& weight);

/// A checked pack_int8_panel weight for N outputs and K inputs as a kernel operand: contiguous, its
/// data 64-byte aligned (a copy otherwise), and *tail set to its split records (nullptr: exact codes).
at::Tensor s8_panel_operand(const at::Tensor& weight, std::int64_t N, std::int64_t K, const std::int32_t** tail);

/// pack_binary_panel on any device (ATen ops).
at::Tensor pack_binary_panel_composite(const at::Tensor& weight);

/// linear_w4a8's largest group (QGemmW4Args: exact int32 group sums and float64 products).
constexpr std::int64_t kMaxW4A8Group = std::int64_t{1} << 17;

/// linear_w1a1 / conv2d_w1a1's checks (float32 input with a batch dim, uint8 weight [N, K_pad / 8]
/// for K inputs per output, weight_scale float32 [N], bias); returns K_pad / 8.
std::int64_t check_w1a1_args(const char* op, const at::Tensor& input, std::int64_t K, const at::Tensor& weight,
                             const at::Tensor& weight_scale, const std::optional<at::Tensor>& bias);

/// linear_w4_weight_only's checks (float32 input, uint8 weight [N, K / 2] or the panel layout
/// [ceil(N / 16), ceil(K / 128), 1024] with N group_scale's rows, group_size a multiple of
/// 32 dividing K, float32 group_scale / group_zero [N, K / group_size], bias, devices). With a
/// panel weight the scales (and zero points) may come in the panel's blocks, [N / 16, K / group_size,
/// 16] (element [n / 16, g, n % 16]; N a multiple of 16): the kernels read a block's scales as they are.
void check_linear_w4_weight_only_args(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& gscale,
                                      std::int64_t group, const std::optional<at::Tensor>& gzero,
                                      const std::optional<at::Tensor>& bias);

/// linear_w4_weight_only's and linear_w4a8's N: group_scale's rows, or 16 per block of blocked scales.
std::int64_t w4_weight_only_rows(const at::Tensor& group_scale);

/// The convs' fused clamp (clamp_min / clamp_max: a ReLU, ReLU6 or Hardtanh after the conv) as
/// float32 bounds (torch.clamp casts its scalars to the tensor's dtype), -inf / +inf where absent.
/// NaN bounds and clamp_min > clamp_max are errors naming `op`.
std::pair<float, float> check_output_clamp(const char* op, std::optional<double> clamp_min,
                                           std::optional<double> clamp_max);

/// Whether conv2d_int8 reads its input as NHWC and gives a channels_last output: an input whose
/// strides suggest channels_last (torch's rule for its own convs' outputs,
/// Tensor::suggest_memory_format). Every device and Meta give the output this format, so a
/// channels_last model stays channels_last through its integer convs (the CPU kernels then skip the
/// layout passes: docs/integer.md "Channels-last convs").
inline bool conv_channels_last_io(const at::Tensor& input) {
  return input.dim() == 4 && input.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
}

}  // namespace qatkit::ops
