// The integer GEMM family (inference only: a call on tensors that require grad runs, and a backward
// through its output raises, csrc/ops/autograd/no_gradient_kernel.cpp). docs/integer.md, "static" form:
//   linear_w2a8: the same with ternary weights packed 2 bits each in the kernel layout of
//                kernels/common/qgemm_args.h (QGemmPackedArgs; uint8 [N, K_pad / 4], K_pad the input's K
//                rounded up to a multiple of 128; qatkit.qat.integer packs it from the codes).
//   linear_w1a8: the same with binary weights, 1 bit each (1 = +1, bit k % 8 of byte k / 8: the file's
//                1-bit packing), rows of K_pad / 8 bytes, K_pad = K rounded up to a multiple of 32.
//   conv2d_int8: a Conv2d (NCHW; groups and depthwise too, one GEMM per group) on those kernels: the
//                input quantized once per image,
//                its int8 patches (im2col on codes; a zero-padded position holds the code of 0)
//                times the weight flattened to [N, C*kh*kw] (weight_bits 8: int8; 2 / 1: packed as
//                for linear_w2a8 / linear_w1a8), written straight into the NCHW output.
//   linear_w4a8: 4-bit symmetric weights with a float32 scale per group of K (the "static_group" form
//                of docs/integer.md): int32 code sums per group (the input zero-point term formed
//                from the weight codes in the kernel), combined in float64 in group order, times
//                act_scale, then the bias; weight in the W4 kernel layout (QGemmW4Args).
//   linear_w4_weight_only: 4-bit weights (W4 layout, scale and optional zero point per group) with
//                float activations: each weight dequantized in registers ((q - z) * s, float32:
//                dequantize_affine's bits) and float32 FMAs in the kernel's own order (a float
//                kernel: within docs/integer.md's bound of F.linear on the dequantized weight).
//   linear_w1a1: XNOR-Net (binary weights and inputs): the input binarized per sample (dim 0) as
//                binary_codes(input, "bitnet", 0) — codes in {-1, +1} (0 for NaN), scale alpha[b] —
//                its bits XNOR the packed weight bits (pack_binary_b1), popcount to the exact int32
//                sum, y = fp32(acc) * fp32(alpha[b] * weight_scale[n]) (+ bias[n]): the "row" form.
//   conv2d_w1a1: a Conv2d on that arithmetic: the input binarized per image, patches of its codes
//                (zero padding: code 0, which has no bit; QGemmXnorArgs' zero mask keeps it out of
//                the sum, as the float layer's zero padding of its binarized input). groups > 1 on
//                conv2d_int8's grouped / depthwise kernels on the codes (the same exact sums and
//                requantization). The output in the input's memory format.
//   linear_int8: y[..., n] = fp32(sum_k a[k] * w[n, k] + corr[n]) * out_scale[n] (+ bias[n]), where
//                a = quantize_affine(x, act_scale, act_zero_point, act_quant_min, act_quant_max) - shift
//                (shift = 128 for a [0, 255] range, else 0) and corr[n] = bias_q[n] + (shift -
//                act_zero_point) * sum_k w[n, k] (int32, precomputed once per layer by the caller:
//                qatkit.qat.integer). Weight codes must lie in the narrow range [-127, 127]: the
//                AVX2 kernel's int16 pair sums rely on it; the op does not scan the weight on every
//                call (a [-128] code would cost a pass over the weight per call), the callers check
//                it once when they build the layer.
//   linear_w8_weight_only: int8 weights (a float32 scale per output channel) with float activations:
//                each weight float(q) * scale[n] (float32: dequantize_affine's bits), float32 fused
//                multiply-adds in 16 lanes summed in a fixed tree (the same operations on every ISA);
//                from the table's GEMM row count on, blocks of dequantized rows and the float GEMM
//                (MKL / oneDNN). A float kernel, within docs/integer.md's bound.
//   linear_dynamic_int8: the "row" form of docs/integer.md with per-token int8 inputs (BitLinear /
//                bitnet_b158, or int8 weights with per-token dynamic activations): each input row
//                quantized by its own absmax, s[m] = fp32(max(max_k |x[m, k]|, 1e-5) / act_quant_max),
//                codes quantize_affine(x, s[m], 0, -act_quant_max - 1, act_quant_max) (what
//                quantize_per_token gives), the int32 sums of linear_int8 / linear_w2a8 / linear_w1a8's
//                kernels (weight_bits 8 / 2 / 1, their layouts), y = fp32(acc) * fp32(s[m] *
//                weight_scale[n]) (+ bias[n]): multiply, then add. per_tensor: one scale for the
//                whole input, s = fp32(max(max |x|, 1e-5) / act_quant_max) (quantize_per_tensor_dynamic's).
//   conv2d_w4a8: a Conv2d on linear_w4a8's arithmetic (the "static_group" form of a conv): patch rows
//                of the input's codes in PyTorch's (c, i, j) order, the order of the weight's groups.
// Schema, checks and the C++ API live here; kernels in ops/{cpu,meta,cuda}/qgemm_kernel.cpp (the CPU
// convs in ops/cpu/qgemm_conv_kernel.cpp).
#include "qgemm_checks.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <c10/util/StringUtil.h>
#include <fmt/format.h>
#include <torch/library.h>

#include <array>
#include <cmath>
#include <limits>
#include <tuple>

#include "checks.h"
#include "op_handle.h"
#include "qatkit/ops.h"

TORCH_LIBRARY_FRAGMENT(qatkit, m) {
  m.def(
      "linear_int8(Tensor input, Tensor weight, Tensor corr, Tensor out_scale, float act_scale, int act_zero_point, "
      "int act_quant_min, int act_quant_max, Tensor? bias=None, Tensor? input_divisor=None) -> Tensor",
      {at::Tag::pt2_compliant_tag});
  m.def(
      "conv2d_int8(Tensor input, Tensor weight, int weight_bits, int[2] kernel_size, int[2] stride, int[2] padding, "
      "int[2] dilation, Tensor corr, Tensor out_scale, float act_scale, int act_zero_point, int act_quant_min, "
      "int act_quant_max, Tensor? bias=None, int groups=1, float? clamp_min=None, float? clamp_max=None) -> Tensor",
      {at::Tag::pt2_compliant_tag});
  m.def(
      "linear_w4a8(Tensor input, Tensor weight, Tensor group_scale, int group_size, "
      "float act_scale, int act_zero_point, int act_quant_min, int act_quant_max, Tensor? bias=None) -> Tensor",
      {at::Tag::pt2_compliant_tag});
  m.def(
      "conv2d_w4a8(Tensor input, Tensor weight, int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation, "
      "Tensor group_scale, int group_size, float act_scale, int act_zero_point, int act_quant_min, int act_quant_max, "
      "Tensor? bias=None, int groups=1, float? clamp_min=None, float? clamp_max=None) -> Tensor",
      {at::Tag::pt2_compliant_tag});
  m.def("pack_int4_panel(Tensor weight) -> Tensor", {at::Tag::pt2_compliant_tag});
  m.def("pack_int8_panel(Tensor weight) -> Tensor", {at::Tag::pt2_compliant_tag});
  m.def("pack_binary_panel(Tensor weight) -> Tensor", {at::Tag::pt2_compliant_tag});
  m.def(
      "linear_w1a8(Tensor input, Tensor weight, Tensor corr, Tensor out_scale, float act_scale, int act_zero_point, "
      "int act_quant_min, int act_quant_max, Tensor? bias=None) -> Tensor",
      {at::Tag::pt2_compliant_tag});
  m.def(
      "linear_w4_weight_only(Tensor input, Tensor weight, Tensor group_scale, int group_size, Tensor? group_zero=None, "
      "Tensor? bias=None) -> Tensor",
      {at::Tag::pt2_compliant_tag});
  m.def("linear_w1a1(Tensor input, Tensor weight, Tensor weight_scale, Tensor? bias=None) -> Tensor",
        {at::Tag::pt2_compliant_tag});
  m.def(
      "conv2d_w1a1(Tensor input, Tensor weight, int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation, "
      "Tensor weight_scale, Tensor? bias=None, int groups=1, float? clamp_min=None, float? clamp_max=None) -> Tensor",
      {at::Tag::pt2_compliant_tag});
  m.def("linear_w8_weight_only(Tensor input, Tensor weight, Tensor weight_scale, Tensor? bias=None) -> Tensor",
        {at::Tag::pt2_compliant_tag});
  m.def(
      "linear_dynamic_int8(Tensor input, Tensor weight, int weight_bits, Tensor weight_scale, int act_quant_max=127, "
      "Tensor? bias=None, bool per_tensor=False) -> Tensor",
      {at::Tag::pt2_compliant_tag});
  m.def(
      "linear_w2a8(Tensor input, Tensor weight, Tensor corr, Tensor out_scale, float act_scale, int act_zero_point, "
      "int act_quant_min, int act_quant_max, Tensor? bias=None) -> Tensor",
      {at::Tag::pt2_compliant_tag});
}

namespace qatkit {
namespace ops {

namespace {

/// The input dtype and the weight's layout for `weight_bits` (int8 [N, K] or pack_int8_panel's
/// panel; 2 / 1 bits packed [N, K_pad / 4 or 8], or pack_binary_panel's panel), the panels' N taken
/// from n_ref (a 1-D tensor [N] named n_name); returns N (symbolic under torch.export).
c10::SymInt check_gemm_weight(const char* op, const at::Tensor& input, const at::Tensor& weight, int weight_bits,
                              const at::Tensor& n_ref, const char* n_name) {
  const bool packed = weight_bits < 8;
  TORCH_CHECK_TYPE(input.scalar_type() == at::kFloat,
                   fmt::format("{}: input must be float32, got {}", op, c10::toString(input.scalar_type())));
  TORCH_CHECK_VALUE(input.dim() >= 1, fmt::format("{}: input must have at least 1 dimension, got a 0-d tensor", op));
  const bool panel = !packed && weight.dim() == 3;  // pack_int8_panel's layout
  const bool panel1 = weight_bits == 1 && weight.dim() == 3;  // pack_binary_panel's layout
  if (packed) {
    TORCH_CHECK_TYPE(weight.scalar_type() == at::kByte,
                     fmt::format("{}: weight must be uint8 ({}-bit codes, packed), got {}", op, weight_bits,
                                 c10::toString(weight.scalar_type())));
  } else if (panel) {
    TORCH_CHECK_TYPE(weight.scalar_type() == at::kByte,
                     fmt::format("{}: a 3-D panel weight (pack_int8_panel) must be uint8, got {}", op,
                                 c10::toString(weight.scalar_type())));
  } else {
    TORCH_CHECK_TYPE(weight.scalar_type() == at::kChar,
                     fmt::format("{}: weight must be int8 codes, got {}", op, c10::toString(weight.scalar_type())));
  }
  TORCH_CHECK_VALUE(weight.dim() == 2 || panel || panel1,
                    fmt::format("{}: weight must be 2-D{}, got {} dims", op,
                                weight_bits == 1 ? " [N, K_pad / 8] or a 3-D panel (pack_binary_panel)"
                                : packed         ? ""
                                                 : " [N, K] or a 3-D panel (pack_int8_panel)",
                                weight.dim()));
  if (panel1) {
    // N comes from n_ref (the panel pads it to a multiple of 32); bytes per row are dim 1
    TORCH_CHECK_VALUE(n_ref.dim() == 1, fmt::format("{}: {} must be 1-D [N], got {} dims", op, n_name, n_ref.dim()));
    const std::int64_t n = static_dim(n_ref, 0);
    TORCH_CHECK_VALUE(weight.size(0) == (n + 31) / 32 && weight.size(2) == 32,
                      fmt::format("{}: a panel weight (pack_binary_panel) for N = {} ({}'s length) must have shape "
                                  "[{}, K_pad / 8, 32], got {}", op, n, n_name, (n + 31) / 32, shape_str(weight.sizes())));
  }
  if (panel) {
    // N comes from n_ref (the panel pads it to a multiple of 16)
    TORCH_CHECK_VALUE(n_ref.dim() == 1, fmt::format("{}: {} must be 1-D [N], got {} dims", op, n_name, n_ref.dim()));
    const std::int64_t n = static_dim(n_ref, 0), k = static_dim(input, -1);
    // [NB + X, K4, 64] with X the split records' blocks (pack_int8_panel), or [NB, K4, 64] (exact codes)
    const std::int64_t nb = (n + 15) / 16, k4 = (k + 3) / 4, x = kernels::s8_tail_blocks(nb, k4);
    TORCH_CHECK_VALUE((weight.size(0) == nb + x || weight.size(0) == nb) && weight.size(1) == k4 && weight.size(2) == 64,
                      fmt::format("{}: a panel weight (pack_int8_panel) for N = {} ({}'s length), K = {} must have "
                                  "shape [{}, {}, 64] (or [{}, {}, 64] without the split records), got {}", op, n,
                                  n_name, k, nb + x, k4, nb, k4, shape_str(weight.sizes())));
  }
  const auto N = panel || panel1 ? n_ref.sym_size(0) : weight.sym_size(0);
  const auto K = panel ? input.sym_size(-1) : weight.sym_size(1);
  if (packed) {
    const std::int64_t per_byte = 8 / weight_bits, block = weight_bits == 2 ? 128 : 32;
    const auto k_in = input.sym_size(-1), k_pad = K * per_byte;
    TORCH_CHECK_VALUE(k_pad % block == 0 && k_in <= k_pad && k_pad < k_in + block,
                      fmt::format("{}: weight [N, K_pad / {}] must hold the input's K = {} rounded up to a multiple of "
                                  "{} (K_pad / {} = {}), got {} bytes per row", op, per_byte, int_str(k_in), block,
                                  per_byte, int_str((k_in + block - 1) / block * (block / per_byte)), int_str(K)));
  } else {
    TORCH_CHECK_VALUE(input.sym_size(-1) == K,
                      fmt::format("{}: input's last dim must be K = {} (weight [N, K]), got {}", op, int_str(K),
                                  int_str(input.sym_size(-1))));
  }
  return N;
}

void check_float_bias(const char* op, const at::Tensor& input, const std::optional<at::Tensor>& bias,
                      const c10::SymInt& N) {
  if (!bias.has_value()) return;
  TORCH_CHECK_TYPE(bias->scalar_type() == at::kFloat,
                   fmt::format("{}: bias must be float32, got {}", op, c10::toString(bias->scalar_type())));
  TORCH_CHECK_VALUE(bias->dim() == 1 && bias->sym_size(0) == N,
                    fmt::format("{}: bias must have shape [N] = [{}], got {}", op, int_str(N),
                                shape_str(bias->sym_sizes())));
  TORCH_CHECK_VALUE(bias->device() == input.device(),
                    fmt::format("{}: every tensor must be on the input's device {}, got {}", op,
                                input.device().str(), bias->device().str()));
}

/// weight_scale float32 [N], the bias, and every tensor on the input's device.
void check_scale_bias_devices(const char* op, const at::Tensor& input, const at::Tensor& weight,
                              const at::Tensor& weight_scale, const std::optional<at::Tensor>& bias,
                              const c10::SymInt& N) {
  TORCH_CHECK_TYPE(weight_scale.scalar_type() == at::kFloat,
                   fmt::format("{}: weight_scale must be float32, got {}", op, c10::toString(weight_scale.scalar_type())));
  TORCH_CHECK_VALUE(weight_scale.dim() == 1 && weight_scale.sym_size(0) == N,
                    fmt::format("{}: weight_scale must have shape [N] = [{}], got {}", op, int_str(N),
                                shape_str(weight_scale.sym_sizes())));
  check_float_bias(op, input, bias, N);
  for (const at::Tensor* t : {&weight, &weight_scale}) {
    TORCH_CHECK_VALUE(t->device() == input.device(),
                      fmt::format("{}: every tensor must be on the input's device {}, got {}", op, input.device().str(),
                                  t->device().str()));
  }
}

}  // namespace

std::int32_t check_linear_int8_args(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& corr,
                                    const at::Tensor& out_scale, double act_scale, std::int64_t zp, std::int64_t qmin,
                                    std::int64_t qmax, const std::optional<at::Tensor>& bias, int weight_bits) {
  const char* op = weight_bits == 2 ? "linear_w2a8" : weight_bits == 1 ? "linear_w1a8" : "linear_int8";
  const auto N = check_gemm_weight(op, input, weight, weight_bits, corr, "corr");
  TORCH_CHECK_TYPE(corr.scalar_type() == at::kInt,
                   fmt::format("{}: corr must be int32, got {}", op, c10::toString(corr.scalar_type())));
  TORCH_CHECK_VALUE(corr.dim() == 1 && corr.sym_size(0) == N,
              fmt::format("{}: corr must have shape [N] = [{}], got {}", op, int_str(N), shape_str(corr.sym_sizes())));
  TORCH_CHECK_TYPE(out_scale.scalar_type() == at::kFloat,
                   fmt::format("{}: out_scale must be float32, got {}", op, c10::toString(out_scale.scalar_type())));
  TORCH_CHECK_VALUE(out_scale.dim() == 1 && out_scale.sym_size(0) == N,
              fmt::format("{}: out_scale must have shape [N] = [{}], got {}", op, int_str(N),
                          shape_str(out_scale.sym_sizes())));
  check_float_bias(op, input, bias, N);
  for (const at::Tensor* t : {&weight, &corr, &out_scale}) {
    TORCH_CHECK_VALUE(t->device() == input.device(),
                fmt::format("{}: every tensor must be on the input's device {}, got {}", op, input.device().str(),
                            t->device().str()));
  }
  return check_act_qparams(op, act_scale, zp, qmin, qmax);
}

std::int32_t check_act_qparams(const char* op, double act_scale, std::int64_t zp, std::int64_t qmin,
                               std::int64_t qmax) {
  const float s = static_cast<float>(act_scale);
  // normal, as fake_quantize's / quantize_affine's scales: 1 / s of a subnormal s is Inf in float32,
  // which saturated every code where the QAT layer refuses the scale
  TORCH_CHECK_VALUE(std::isfinite(s) && s >= std::numeric_limits<float>::min(),
                    fmt::format("{}: act_scale must be a finite float32 > 0 and normal (>= 1.1754944e-38, as "
                                "fake_quantize's scales), got {}", op, act_scale));
  TORCH_CHECK_VALUE(qmin <= qmax && qmax - qmin <= 255 && (qmin >= 0 ? qmax <= 255 : (qmin >= -128 && qmax <= 127)),
              fmt::format("{}: [act_quant_min, act_quant_max] must be an 8-bit range inside [-128, 127] or [0, 255], "
                          "got [{}, {}]", op, qmin, qmax));
  TORCH_CHECK_VALUE(zp >= qmin && zp <= qmax,
              fmt::format("{}: act_zero_point must lie in [{}, {}], got {}", op, qmin, qmax, zp));
  return qmin >= 0 ? 128 : 0;
}

void check_linear_w8_weight_only_args(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& weight_scale,
                                      const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "linear_w8_weight_only";
  TORCH_CHECK_TYPE(input.scalar_type() == at::kFloat,
                   fmt::format("{}: input must be float32, got {}", op, c10::toString(input.scalar_type())));
  TORCH_CHECK_VALUE(input.dim() >= 1, fmt::format("{}: input must have at least 1 dimension, got a 0-d tensor", op));
  TORCH_CHECK_TYPE(weight.scalar_type() == at::kChar,
                   fmt::format("{}: weight must be int8 codes, got {}", op, c10::toString(weight.scalar_type())));
  TORCH_CHECK_VALUE(weight.dim() == 2, fmt::format("{}: weight must be 2-D [N, K], got {} dims", op, weight.dim()));
  TORCH_CHECK_VALUE(input.sym_size(-1) == weight.sym_size(1),
                    fmt::format("{}: input's last dim must be K = {} (weight [N, K]), got {}", op,
                                int_str(weight.sym_size(1)), int_str(input.sym_size(-1))));
  const auto N = weight.sym_size(0);
  check_scale_bias_devices(op, input, weight, weight_scale, bias, N);
}

void check_linear_dynamic_int8_args(const at::Tensor& input, const at::Tensor& weight, std::int64_t weight_bits,
                                    const at::Tensor& weight_scale, std::int64_t act_quant_max,
                                    const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "linear_dynamic_int8";
  TORCH_CHECK_VALUE(weight_bits == 8 || weight_bits == 2 || weight_bits == 1,
                    fmt::format("{}: weight_bits must be 8, 2 or 1, got {}", op, weight_bits));
  const auto N = check_gemm_weight(op, input, weight, static_cast<int>(weight_bits), weight_scale, "weight_scale");
  check_scale_bias_devices(op, input, weight, weight_scale, bias, N);
  TORCH_CHECK_VALUE(act_quant_max >= 1 && act_quant_max <= 127,
                    fmt::format("{}: act_quant_max must lie in [1, 127] (codes [-act_quant_max - 1, act_quant_max] "
                                "fit int8), got {}", op, act_quant_max));
}

std::array<std::int64_t, 2> check_conv2d_geometry(const char* op, const at::Tensor& input, at::IntArrayRef kernel_size,
                                                  at::IntArrayRef stride, at::IntArrayRef padding,
                                                  at::IntArrayRef dilation) {
  TORCH_CHECK_VALUE(input.dim() == 4, fmt::format("{}: input must be 4-D [B, C, H, W], got {} dims", op, input.dim()));
  for (auto [name, v, lo] : {std::tuple{"kernel_size", kernel_size, 1}, std::tuple{"stride", stride, 1},
                             std::tuple{"padding", padding, 0}, std::tuple{"dilation", dilation, 1}}) {
    TORCH_CHECK_VALUE(v.size() == 2 && v[0] >= lo && v[1] >= lo,
                      fmt::format("{}: {} must be two integers >= {}, got {}", op, name, lo, shape_str(v)));
  }
  // bounds under which no size below overflows int64 (a corrupt file's geometry is an error, not
  // undefined arithmetic): kernel sides to 4096, strides and dilations to 65536, padding to 2^24
  for (auto [name, v, hi] : {std::tuple{"kernel_size", kernel_size, std::int64_t{1} << 12},
                             std::tuple{"stride", stride, std::int64_t{1} << 16},
                             std::tuple{"padding", padding, std::int64_t{1} << 24},
                             std::tuple{"dilation", dilation, std::int64_t{1} << 16}}) {
    TORCH_CHECK_VALUE(v[0] <= hi && v[1] <= hi, fmt::format("{}: {} must be at most {}, got {}", op, name, hi, shape_str(v)));
  }
  const std::int64_t C = static_dim(input, 1), H = static_dim(input, 2), W = static_dim(input, 3);
  const std::int64_t ho = (H + 2 * padding[0] - dilation[0] * (kernel_size[0] - 1) - 1) / stride[0] + 1;
  const std::int64_t wo = (W + 2 * padding[1] - dilation[1] * (kernel_size[1] - 1) - 1) / stride[1] + 1;
  TORCH_CHECK_VALUE(H + 2 * padding[0] >= dilation[0] * (kernel_size[0] - 1) + 1 &&
                        W + 2 * padding[1] >= dilation[1] * (kernel_size[1] - 1) + 1,
                    fmt::format("{}: the (padded) input {}x{} is smaller than the dilated kernel", op, H, W));
  // one padded image's codes ((H + 2 ph) x (W + 2 pw) x C, the largest per-image buffer) and the
  // patch row's K = C / groups * kh * kw stay far from int64's range
  constexpr std::int64_t kMaxImage = std::int64_t{1} << 40;
  const std::int64_t Hp = H + 2 * padding[0], Wp = W + 2 * padding[1];
  TORCH_CHECK_VALUE(C <= kMaxImage / (kernel_size[0] * kernel_size[1]),
                    fmt::format("{}: {} input channels x a {} x {} kernel is more than 2^40 codes per patch row", op, C,
                                kernel_size[0], kernel_size[1]));
  TORCH_CHECK_VALUE(Hp <= kMaxImage / Wp && C <= kMaxImage / (Hp * Wp),
                    fmt::format("{}: the padded input ({} x {} pixels of {} channels) is larger than 2^40 codes", op,
                                Hp, Wp, C));
  return {ho, wo};
}

std::pair<float, float> check_output_clamp(const char* op, std::optional<double> clamp_min,
                                           std::optional<double> clamp_max) {
  constexpr float inf = std::numeric_limits<float>::infinity();
  TORCH_CHECK_VALUE(!(clamp_min && std::isnan(*clamp_min)) && !(clamp_max && std::isnan(*clamp_max)),
                    fmt::format("{}: clamp_min and clamp_max must not be NaN, got {} and {}", op,
                                clamp_min ? fmt::format("{}", *clamp_min) : "None",
                                clamp_max ? fmt::format("{}", *clamp_max) : "None"));
  const float lo = clamp_min ? static_cast<float>(*clamp_min) : -inf;
  const float hi = clamp_max ? static_cast<float>(*clamp_max) : inf;
  TORCH_CHECK_VALUE(lo <= hi, fmt::format("{}: clamp_min ({}) must be at most clamp_max ({})", op, lo, hi));
  return {lo, hi};
}

std::array<std::int64_t, 2> check_conv2d_int8_args(const at::Tensor& input, const at::Tensor& weight, std::int64_t bits,
                                                  at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                                  at::IntArrayRef padding, at::IntArrayRef dilation,
                                                  std::int64_t groups) {
  constexpr const char* op = "conv2d_int8";
  TORCH_CHECK_VALUE(bits == 8 || bits == 2 || bits == 1, fmt::format("{}: weight_bits must be 8, 2 or 1, got {}", op, bits));
  const auto [ho, wo] = check_conv2d_geometry(op, input, kernel_size, stride, padding, dilation);
  const std::int64_t C = static_dim(input, 1);
  if (weight.dim() == 3) {  // pack_int8_panel's layout (groups == 1; its shape against corr's N: the linear checks)
    TORCH_CHECK_VALUE(bits == 8 && groups == 1,
                      fmt::format("{}: a 3-D panel weight (pack_int8_panel) needs weight_bits 8 and groups 1, got {} "
                                  "and {}", op, bits, groups));
    return {ho, wo};
  }
  TORCH_CHECK_VALUE(weight.dim() == 2, fmt::format("{}: weight must be 2-D [N, C/groups*kh*kw] (or packed), or a 3-D "
                                                   "panel (pack_int8_panel), got {} dims", op, weight.dim()));
  TORCH_CHECK_VALUE(groups >= 1 && C % groups == 0 && weight.size(0) % groups == 0,
                    fmt::format("{}: groups must be >= 1 and divide the input channels {} and the output channels {}, "
                                "got {}", op, C, weight.size(0), groups));
  const std::int64_t K = C / groups * kernel_size[0] * kernel_size[1];
  const std::int64_t per_byte = 8 / bits, block = bits == 2 ? 128 : 32;
  const std::int64_t want = (K + block - 1) / block * block / per_byte;
  // int8 weights: [N, K], or zero-padded to a multiple of 32 (small-K convs then run vectorized)
  TORCH_CHECK_VALUE(weight.size(1) == want || (bits == 8 && weight.size(1) == K),
                    fmt::format("{}: weight must have {} bytes per row for C/groups*kh*kw = {} at {} bit(s){}, got {}", op,
                                want, K, bits, bits == 8 ? fmt::format(" (or {})", K) : "", weight.size(1)));
  return {ho, wo};
}

kernels::ActQuantArgs act_quant_args(double act_scale, std::int64_t zero_point, std::int64_t quant_min,
                                     std::int64_t quant_max, std::int32_t shift) {
  kernels::ActQuantArgs q;
  q.inv_scale = 1.0f / static_cast<float>(act_scale);
  q.zero_point = static_cast<std::int32_t>(zero_point);
  q.quant_min = static_cast<std::int32_t>(quant_min);
  q.quant_max = static_cast<std::int32_t>(quant_max);
  q.shift = shift;
  return q;
}

std::pair<std::int64_t, std::vector<std::int64_t>> rows_and_output_shape(const at::Tensor& input, std::int64_t N) {
  // the ops' checks ask for input.dim() >= 1 first; this keeps shape.back() defined on its own
  TORCH_CHECK_VALUE(input.dim() >= 1, "rows_and_output_shape: input must have at least 1 dim, got 0");
  std::int64_t M = 1;
  for (std::int64_t d = 0; d + 1 < input.dim(); ++d) M *= input.size(d);
  std::vector<std::int64_t> shape(input.sizes().begin(), input.sizes().end());
  shape.back() = N;
  return {M, shape};
}

// The operand tensors on the input's device, and an optional float32 [N] bias there too.
static void check_devices_and_bias(const char* op, const at::Tensor& input, std::initializer_list<const at::Tensor*> operands,
                            const std::optional<at::Tensor>& bias, std::int64_t N) {
  for (const at::Tensor* t : operands) {
    TORCH_CHECK_VALUE(t->device() == input.device(),
                      fmt::format("{}: every tensor must be on the input's device {}, got {}", op, input.device().str(),
                                  t->device().str()));
  }
  if (bias.has_value()) {
    TORCH_CHECK_VALUE(bias->scalar_type() == at::kFloat && bias->dim() == 1 && bias->size(0) == N &&
                          bias->device() == input.device(),
                      fmt::format("{}: bias must be float32 [{}] on the input's device, got {} {}", op, N,
                                  c10::toString(bias->scalar_type()), shape_str(bias->sizes())));
  }
}

// The W4 weight layout (uint8 [N, K / 2]) against the input's K and the group size; returns {N, G}.
// linear_w4a8 also takes the panel layout (3-D, pack_int4_panel): N then comes from group_scale.
static std::pair<std::int64_t, std::int64_t> check_w4_weight(const char* op, const at::Tensor& input,
                                                             const at::Tensor& weight, std::int64_t group,
                                                             const at::Tensor* gscale = nullptr) {
  TORCH_CHECK_VALUE(input.dim() >= 1, fmt::format("{}: input must have at least 1 dimension, got a 0-d tensor", op));
  TORCH_CHECK_TYPE(weight.scalar_type() == at::kByte,
                   fmt::format("{}: weight must be uint8 (4-bit codes, packed), got {}", op,
                               c10::toString(weight.scalar_type())));
  const std::int64_t K = static_dim(input, -1);
  TORCH_CHECK_VALUE(group >= 32 && group % 32 == 0 && K % group == 0,
                    fmt::format("{}: group_size must be a multiple of 32 that divides K = {}, got {}", op, K, group));
  // a 3-D group_scale: the panel's blocked scales [N / 16, G, 16] (block_w4_scales), with a panel
  // weight of N / 16 blocks
  const bool blocked = gscale != nullptr && gscale->dim() == 3;
  TORCH_CHECK_VALUE(!blocked || weight.dim() == 3,
                    fmt::format("{}: a 3-D group_scale (blocked [N / 16, K / group_size, 16]) needs a panel weight "
                                "(pack_int4_panel), got a {}-D weight", op, weight.dim()));
  if (gscale != nullptr && weight.dim() == 3) {
    TORCH_CHECK_VALUE(blocked || gscale->dim() == 2,
                      fmt::format("{}: group_scale must be 2-D [N, K / group_size], got {} dims", op, gscale->dim()));
    const std::int64_t N = blocked ? gscale->size(0) * 16 : gscale->size(0);
    TORCH_CHECK_VALUE(weight.size(0) == (N + 15) / 16 && weight.size(1) == (K + 127) / 128 && weight.size(2) == 1024,
                      fmt::format("{}: a panel weight (pack_int4_panel) for N = {} ({}), K = {} must have shape [{}, "
                                  "{}, 1024], got {}", op, N, blocked ? "16 x group_scale's blocks" : "group_scale's rows",
                                  K, (N + 15) / 16, (K + 127) / 128, shape_str(weight.sizes())));
    return {N, K / group};
  }
  TORCH_CHECK_VALUE(weight.dim() == 2, fmt::format("{}: weight must be 2-D [N, K / 2]{}, got {} dims", op,
                                                   gscale != nullptr ? " or a 3-D panel (pack_int4_panel)" : "",
                                                   weight.dim()));
  TORCH_CHECK_VALUE(weight.size(1) * 2 == K,
                    fmt::format("{}: weight must have K / 2 = {} bytes per row, got {}", op, K / 2, weight.size(1)));
  return {weight.size(0), K / group};
}

// The panel layout of linear_w4a8 (QGemmW4Args): rows padded to a multiple of 16 and row bytes to a
// multiple of 64 with zeros, then [N/16, 16 rows, S steps, 16 dwords, 4] -> [N/16, S, 16 dwords, 16
// rows, 4]: ATen ops only, so every device and Meta run it.
at::Tensor pack_int4_panel_composite(const at::Tensor& weight) {
  TORCH_CHECK_TYPE(weight.scalar_type() == at::kByte, fmt::format("pack_int4_panel: weight must be uint8 (pack_int4_w4's "
                                                                  "layout), got {}", c10::toString(weight.scalar_type())));
  TORCH_CHECK_VALUE(weight.dim() == 2 && weight.size(1) % 16 == 0,
                    fmt::format("pack_int4_panel: weight must be 2-D [N, K / 2] with K a multiple of 32 (pack_int4_w4's "
                                "layout), got {}", shape_str(weight.sizes())));
  const std::int64_t N = weight.size(0), KB = weight.size(1), NB = (N + 15) / 16, S = (KB + 63) / 64;
  const at::Tensor p = at::constant_pad_nd(weight, {0, S * 64 - KB, 0, NB * 16 - N}, 0);
  return p.reshape({NB, 16, S, 16, 4}).permute({0, 2, 3, 1, 4}).reshape({NB, S, 1024}).contiguous();
}

// The panel layout of linear_int8 (QGemmArgs): codes w + 128 (w ^ 0x80 as bytes), rows padded to a
// multiple of 16 and K to a multiple of 4 with w = 0, then [N/16, 16 rows, K/4 steps, 4] -> [N/16,
// K/4 steps, 16 rows, 4]: ATen ops only, so every device and Meta run it.
at::Tensor pack_binary_panel_composite(const at::Tensor& weight) {
  TORCH_CHECK_TYPE(weight.scalar_type() == at::kByte,
                   fmt::format("pack_binary_panel: weight must be uint8 (pack_binary_b1's layout), got {}",
                               c10::toString(weight.scalar_type())));
  TORCH_CHECK_VALUE(weight.dim() == 2 && weight.size(1) % 4 == 0,
                    fmt::format("pack_binary_panel: weight must be 2-D [N, K_pad / 8] with K_pad a multiple of 32 "
                                "(pack_binary_b1's layout), got {}", shape_str(weight.sizes())));
  const std::int64_t N = weight.size(0), KB = weight.size(1), NB = (N + 31) / 32;
  const at::Tensor p = at::constant_pad_nd(weight, {0, 0, 0, NB * 32 - N}, 0);
  return p.reshape({NB, 32, KB}).permute({0, 2, 1}).contiguous();
}

std::array<std::int64_t, 3> check_pack_int8_panel_args(const at::Tensor& weight) {
  TORCH_CHECK_TYPE(weight.scalar_type() == at::kChar,
                   fmt::format("pack_int8_panel: weight must be int8 codes, got {}", c10::toString(weight.scalar_type())));
  TORCH_CHECK_VALUE(weight.dim() == 2,
                    fmt::format("pack_int8_panel: weight must be 2-D [N, K], got {} dims", weight.dim()));
  const std::int64_t N = weight.size(0), K = weight.size(1), NB = (N + 15) / 16, K4 = (K + 3) / 4;
  TORCH_CHECK_VALUE(K < (std::int64_t{1} << 24),
                    fmt::format("pack_int8_panel: weight's K must be below 2^24 (the split records' k field), got {}", K));
  return {NB + kernels::s8_tail_blocks(NB, K4), K4, 64};
}

at::Tensor s8_panel_operand(const at::Tensor& weight, std::int64_t N, std::int64_t K, const std::int32_t** tail) {
  at::Tensor w = weight.contiguous();
  if (reinterpret_cast<std::uintptr_t>(w.const_data_ptr()) % 64 != 0) w = w.clone();
  const std::int64_t NB = (N + 15) / 16, K4 = (K + 3) / 4;
  *tail = w.size(0) > NB ? reinterpret_cast<const std::int32_t*>(static_cast<const std::uint8_t*>(w.const_data_ptr()) +
                                                                NB * K4 * 64)
                         : nullptr;
  return w;
}

void check_linear_w4a8_args(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& gscale,
                            std::int64_t group, const std::optional<at::Tensor>& bias, const char* op) {
  // the panel's blocked scales [N / 16, G, 16] (block_w4_scales) go with a panel weight of N / 16 blocks
  const bool blocked = gscale.dim() == 3;
  const auto [N, G] = check_w4_weight(op, input, weight, group, &gscale);
  // |acc_g| <= 2040 * group_size (|code - zero_point| <= 255, |q| <= 8): every int32 partial sum
  // fits and the float64 product acc_g * scale is exact (< 2^53) for groups up to 2^17
  TORCH_CHECK_VALUE(group <= kMaxW4A8Group,
                    fmt::format("{}: group_size must be at most {} (exact int32 group sums), got {}", op,
                                kMaxW4A8Group, group));
  TORCH_CHECK_TYPE(gscale.scalar_type() == at::kFloat,
                   fmt::format("{}: group_scale must be float32, got {}", op, c10::toString(gscale.scalar_type())));
  if (blocked) {
    TORCH_CHECK_VALUE(gscale.size(1) == G && gscale.size(2) == 16,
                      fmt::format("{}: group_scale must have the blocked shape [{}, {}, 16], got {}", op, N / 16, G,
                                  shape_str(gscale.sizes())));
  } else {
    TORCH_CHECK_VALUE(gscale.dim() == 2 && gscale.size(0) == N && gscale.size(1) == G,
                      fmt::format("{}: group_scale must have shape [{}, {}], got {}", op, N, G,
                                  shape_str(gscale.sizes())));
  }
  check_devices_and_bias(op, input, {&weight, &gscale}, bias, N);
}

Conv2dW4A8Shape check_conv2d_w4a8_args(const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef kernel_size,
                                       at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                       const at::Tensor& gscale, std::int64_t group, double act_scale, std::int64_t zp,
                                       std::int64_t qmin, std::int64_t qmax, const std::optional<at::Tensor>& bias,
                                       std::int64_t groups) {
  constexpr const char* op = "conv2d_w4a8";
  TORCH_CHECK_TYPE(input.scalar_type() == at::kFloat,
                   fmt::format("{}: input must be float32, got {}", op, c10::toString(input.scalar_type())));
  const auto [ho, wo] = check_conv2d_geometry(op, input, kernel_size, stride, padding, dilation);
  const std::int64_t C = static_dim(input, 1);
  TORCH_CHECK_VALUE(gscale.dim() == 2, fmt::format("{}: group_scale must be 2-D [N, C/groups*kh*kw / group_size], got {} "
                                                   "dims", op, gscale.dim()));
  const std::int64_t N = gscale.size(0);
  TORCH_CHECK_VALUE(groups >= 1 && C % groups == 0 && N % groups == 0,
                    fmt::format("{}: groups must be >= 1 and divide the input channels {} and the output channels {} "
                                "(group_scale's rows), got {}", op, C, N, groups));
  TORCH_CHECK_VALUE(weight.dim() != 3 || groups == 1,
                    fmt::format("{}: a 3-D panel weight (pack_int4_panel) needs groups 1, got {}", op, groups));
  // the weight and group checks of linear_w4a8 on a patch row's [1, K] (K = C / groups * kh * kw)
  const std::int64_t K = C / groups * kernel_size[0] * kernel_size[1];
  check_linear_w4a8_args(at::empty({1, K}, input.options()), weight, gscale, group, bias, op);
  return {ho, wo, check_act_qparams(op, act_scale, zp, qmin, qmax)};
}

std::int64_t check_w1a1_args(const char* op, const at::Tensor& input, std::int64_t K, const at::Tensor& weight,
                             const at::Tensor& weight_scale, const std::optional<at::Tensor>& bias) {
  TORCH_CHECK_TYPE(input.scalar_type() == at::kFloat,
                   fmt::format("{}: input must be float32, got {}", op, c10::toString(input.scalar_type())));
  TORCH_CHECK_VALUE(input.dim() >= 2, fmt::format("{}: input must have a batch dim and a feature dim (binarized per "
                                                  "sample along dim 0), got {} dims", op, input.dim()));
  TORCH_CHECK_TYPE(weight.scalar_type() == at::kByte,
                   fmt::format("{}: weight must be uint8 (1-bit codes, packed), got {}", op,
                               c10::toString(weight.scalar_type())));
  TORCH_CHECK_VALUE(weight.dim() == 2, fmt::format("{}: weight must be 2-D [N, K_pad / 8], got {} dims", op, weight.dim()));
  const std::int64_t KB = (K + 31) / 32 * 4;
  TORCH_CHECK_VALUE(weight.size(1) == KB,
                    fmt::format("{}: weight must have K_pad / 8 = {} bytes per row (K = {} rounded up to a multiple of "
                                "32), got {}", op, KB, K, weight.size(1)));
  const std::int64_t N = weight.size(0);
  TORCH_CHECK_TYPE(weight_scale.scalar_type() == at::kFloat,
                   fmt::format("{}: weight_scale must be float32, got {}", op, c10::toString(weight_scale.scalar_type())));
  TORCH_CHECK_VALUE(weight_scale.dim() == 1 && weight_scale.size(0) == N,
                    fmt::format("{}: weight_scale must have shape [N] = [{}], got {}", op, N,
                                shape_str(weight_scale.sizes())));
  check_devices_and_bias(op, input, {&weight, &weight_scale}, bias, N);
  return KB;
}

void check_linear_w4_weight_only_args(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& gscale,
                                      std::int64_t group, const std::optional<at::Tensor>& gzero,
                                      const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "linear_w4_weight_only";
  TORCH_CHECK_TYPE(input.scalar_type() == at::kFloat,
                   fmt::format("{}: input must be float32, got {}", op, c10::toString(input.scalar_type())));
  // the panel's blocked scales [N / 16, G, 16] (block_w4_scales) go with a panel weight of N / 16 blocks
  const bool blocked = gscale.dim() == 3;
  const auto [N, G] = check_w4_weight(op, input, weight, group, &gscale);
  for (auto [name, t] : {std::pair<const char*, const at::Tensor*>{"group_scale", &gscale},
                         {"group_zero", gzero.has_value() ? &*gzero : nullptr}}) {
    if (!t) continue;
    TORCH_CHECK_TYPE(t->scalar_type() == at::kFloat,
                     fmt::format("{}: {} must be float32, got {}", op, name, c10::toString(t->scalar_type())));
    if (blocked) {
      TORCH_CHECK_VALUE(t->dim() == 3 && t->size(0) == N / 16 && t->size(1) == G && t->size(2) == 16,
                        fmt::format("{}: {} must have the blocked shape [{}, {}, 16] (as group_scale), got {}", op,
                                    name, N / 16, G, shape_str(t->sizes())));
    } else {
      TORCH_CHECK_VALUE(t->dim() == 2 && t->size(0) == N && t->size(1) == G,
                        fmt::format("{}: {} must have shape [{}, {}], got {}", op, name, N, G, shape_str(t->sizes())));
    }
    TORCH_CHECK_VALUE(t->device() == input.device(),
                      fmt::format("{}: every tensor must be on the input's device {}, got {}", op, input.device().str(),
                                  t->device().str()));
  }
  check_devices_and_bias(op, input, {&weight}, bias, N);
}

std::int64_t w4_weight_only_rows(const at::Tensor& group_scale) {
  return group_scale.dim() == 3 ? group_scale.size(0) * 16 : group_scale.size(0);
}

}  // namespace ops

at::Tensor linear_w4_weight_only(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& group_scale,
                                 std::int64_t group_size, const std::optional<at::Tensor>& group_zero,
                                 const std::optional<at::Tensor>& bias) {
  static auto op = ops::op_handle<decltype(linear_w4_weight_only)>("qatkit::linear_w4_weight_only");
  return op.call(input, weight, group_scale, group_size, group_zero, bias);
}

at::Tensor linear_w1a1(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& weight_scale,
                       const std::optional<at::Tensor>& bias) {
  static auto op = ops::op_handle<decltype(linear_w1a1)>("qatkit::linear_w1a1");
  return op.call(input, weight, weight_scale, bias);
}

at::Tensor conv2d_w1a1(const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef kernel_size,
                       at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                       const at::Tensor& weight_scale, const std::optional<at::Tensor>& bias, std::int64_t groups,
                       std::optional<double> clamp_min, std::optional<double> clamp_max) {
  static auto op = ops::op_handle<decltype(conv2d_w1a1)>("qatkit::conv2d_w1a1");
  return op.call(input, weight, kernel_size, stride, padding, dilation, weight_scale, bias, groups, clamp_min,
                 clamp_max);
}

at::Tensor linear_w4a8(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& group_scale,
                       std::int64_t group_size, double act_scale,
                       std::int64_t act_zero_point, std::int64_t act_quant_min, std::int64_t act_quant_max,
                       const std::optional<at::Tensor>& bias) {
  static auto op = ops::op_handle<decltype(linear_w4a8)>("qatkit::linear_w4a8");
  return op.call(input, weight, group_scale, group_size, act_scale, act_zero_point, act_quant_min,
                 act_quant_max, bias);
}

at::Tensor conv2d_w4a8(const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef kernel_size,
                       at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                       const at::Tensor& group_scale, std::int64_t group_size, double act_scale,
                       std::int64_t act_zero_point, std::int64_t act_quant_min, std::int64_t act_quant_max,
                       const std::optional<at::Tensor>& bias, std::int64_t groups, std::optional<double> clamp_min,
                       std::optional<double> clamp_max) {
  static auto op = ops::op_handle<decltype(conv2d_w4a8)>("qatkit::conv2d_w4a8");
  return op.call(input, weight, kernel_size, stride, padding, dilation, group_scale, group_size, act_scale,
                 act_zero_point, act_quant_min, act_quant_max, bias, groups, clamp_min, clamp_max);
}

at::Tensor conv2d_int8(const at::Tensor& input, const at::Tensor& weight, std::int64_t weight_bits,
                       at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                       at::IntArrayRef dilation, const at::Tensor& corr, const at::Tensor& out_scale, double act_scale,
                       std::int64_t act_zero_point, std::int64_t act_quant_min, std::int64_t act_quant_max,
                       const std::optional<at::Tensor>& bias, std::int64_t groups, std::optional<double> clamp_min,
                       std::optional<double> clamp_max) {
  static auto op = ops::op_handle<decltype(conv2d_int8)>("qatkit::conv2d_int8");
  return op.call(input, weight, weight_bits, kernel_size, stride, padding, dilation, corr, out_scale, act_scale,
                 act_zero_point, act_quant_min, act_quant_max, bias, groups, clamp_min, clamp_max);
}

at::Tensor linear_int8(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& corr,
                       const at::Tensor& out_scale, double act_scale, std::int64_t act_zero_point,
                       std::int64_t act_quant_min, std::int64_t act_quant_max, const std::optional<at::Tensor>& bias,
                       const std::optional<at::Tensor>& input_divisor) {
  static auto op = ops::op_handle<decltype(linear_int8)>("qatkit::linear_int8");
  return op.call(input, weight, corr, out_scale, act_scale, act_zero_point, act_quant_min, act_quant_max, bias,
                 input_divisor);
}

void ops::check_input_divisor(const at::Tensor& input, const std::optional<at::Tensor>& input_divisor) {
  if (!input_divisor.has_value()) return;
  const at::Tensor& d = *input_divisor;
  TORCH_CHECK_TYPE(d.scalar_type() == at::kFloat,
                   fmt::format("linear_int8: input_divisor must be float32, got {}", c10::toString(d.scalar_type())));
  TORCH_CHECK_VALUE(d.dim() == 1 && d.sym_size(0) == input.sym_size(-1),
                    fmt::format("linear_int8: input_divisor must have shape [K] = [{}] (input's last dim), got {}",
                                int_str(input.sym_size(-1)), shape_str(d.sym_sizes())));
  TORCH_CHECK_VALUE(d.device() == input.device(),
                    fmt::format("linear_int8: input_divisor must be on the input's device {}, got {}",
                                input.device().str(), d.device().str()));
}

at::Tensor linear_w1a8(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& corr,
                       const at::Tensor& out_scale, double act_scale, std::int64_t act_zero_point,
                       std::int64_t act_quant_min, std::int64_t act_quant_max, const std::optional<at::Tensor>& bias) {
  static auto op = ops::op_handle<decltype(linear_w1a8)>("qatkit::linear_w1a8");
  return op.call(input, weight, corr, out_scale, act_scale, act_zero_point, act_quant_min, act_quant_max, bias);
}

at::Tensor linear_w2a8(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& corr,
                       const at::Tensor& out_scale, double act_scale, std::int64_t act_zero_point,
                       std::int64_t act_quant_min, std::int64_t act_quant_max, const std::optional<at::Tensor>& bias) {
  static auto op = ops::op_handle<decltype(linear_w2a8)>("qatkit::linear_w2a8");
  return op.call(input, weight, corr, out_scale, act_scale, act_zero_point, act_quant_min, act_quant_max, bias);
}

at::Tensor linear_w8_weight_only(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& weight_scale,
                                 const std::optional<at::Tensor>& bias) {
  static auto op = ops::op_handle<decltype(linear_w8_weight_only)>("qatkit::linear_w8_weight_only");
  return op.call(input, weight, weight_scale, bias);
}

at::Tensor linear_dynamic_int8(const at::Tensor& input, const at::Tensor& weight, std::int64_t weight_bits,
                               const at::Tensor& weight_scale, std::int64_t act_quant_max,
                               const std::optional<at::Tensor>& bias, bool per_tensor) {
  static auto op = ops::op_handle<decltype(linear_dynamic_int8)>("qatkit::linear_dynamic_int8");
  return op.call(input, weight, weight_bits, weight_scale, act_quant_max, bias, per_tensor);
}

at::Tensor pack_int4_panel(const at::Tensor& weight) {
  static auto op = ops::op_handle<decltype(pack_int4_panel)>("qatkit::pack_int4_panel");
  return op.call(weight);
}

at::Tensor pack_int8_panel(const at::Tensor& weight) {
  static auto op = ops::op_handle<decltype(pack_int8_panel)>("qatkit::pack_int8_panel");
  return op.call(weight);
}

at::Tensor pack_binary_panel(const at::Tensor& weight) {
  static auto op = ops::op_handle<decltype(pack_binary_panel)>("qatkit::pack_binary_panel");
  return op.call(weight);
}

}  // namespace qatkit

TORCH_LIBRARY_IMPL(qatkit, CompositeExplicitAutograd, m) {
  m.impl("pack_int4_panel", &qatkit::ops::pack_int4_panel_composite);
  m.impl("pack_binary_panel", &qatkit::ops::pack_binary_panel_composite);
}
