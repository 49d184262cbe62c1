// qatkit's C++ op API: thin calls into the dispatcher, so LibTorch callers get CPU, CUDA,
// Meta and autograd exactly as Python's torch.ops.qatkit does.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <string>
#include <tuple>

#include "macros.h"

namespace qatkit {

/// Fake-quantizes `input` (float32/float64/float16/bfloat16, any shape) with an affine quantizer:
///   y = (clamp(nearbyint(x * (1.0f / s)) + z, quant_min, quant_max) - z) * s
/// bit for bit as ATen's fake_quantize_per_{tensor,channel}_affine (math in float32 for the half
/// types, float64 for float64). Granularity follows the arguments:
///   - neither axis nor group_size: per-tensor, scale/zero_point hold one element;
///   - axis: per-channel along `axis` (negative allowed), scale/zero_point hold size(axis) elements;
///   - group_size: per-group along the last dim, scale shape input.shape[:-1] + [last / group_size]
///     (per-token: group_size = last dim, scale shape [..., 1]).
/// scale: float32, positive, normal. zero_point: int32 (any integer dtype) or an integer-valued
/// float tensor inside [quant_min, quant_max]. 1 <= quant_max - quant_min <= 65535.
/// NaN inputs give NaN, +-Inf saturate to the range ends. Output: contiguous, input's dtype.
/// Gradient: clipped straight-through estimator w.r.t. input (grad where the unclamped q lies in
/// [quant_min, quant_max], else 0); scale and zero_point receive no gradient.
/// Errors (c10::ValueError / c10::TypeError) name the argument, the expectation and the value.
QATKIT_API at::Tensor fake_quantize(const at::Tensor& input, const at::Tensor& scale, const at::Tensor& zero_point,
                                    std::int64_t quant_min, std::int64_t quant_max,
                                    std::optional<std::int64_t> axis = std::nullopt,
                                    std::optional<std::int64_t> group_size = std::nullopt);

/// fake_quantize into `out` (resized like ATen's out= ops; must have input's dtype and device and
/// must not overlap input). Not differentiable.
QATKIT_API at::Tensor& fake_quantize_out(at::Tensor& out, const at::Tensor& input, const at::Tensor& scale,
                                         const at::Tensor& zero_point, std::int64_t quant_min, std::int64_t quant_max,
                                         std::optional<std::int64_t> axis = std::nullopt,
                                         std::optional<std::int64_t> group_size = std::nullopt);

/// Fake quantization with a learned step size (LSQ, docs/papers.md §6.1) and optionally a learned
/// zero point (LSQ+, §6.2). Forward: fake_quantize(input, max(scale, eps), clamp(round(zp))).
/// Gradients (r = nearbyint(x / s), window [qmin - z, qmax - z]):
///   input: clipped STE;  scale: (r - x / s) inside, qmin - z / qmax - z below / above;
///   zero_point (float tensors only): 0 inside, -s outside;
/// scale and zero-point gradients are multiplied by grad_factor (LSQ's g = 1 / sqrt(N * Qp), or 1)
/// and reduced to the qparams' shapes inside the backward kernel. The eps clamp passes the
/// gradient straight through. Granularity arguments as for fake_quantize.
QATKIT_API at::Tensor fake_quantize_learnable(const at::Tensor& input, const at::Tensor& scale,
                                              const at::Tensor& zero_point, std::int64_t quant_min,
                                              std::int64_t quant_max, std::optional<std::int64_t> axis = std::nullopt,
                                              std::optional<std::int64_t> group_size = std::nullopt,
                                              double grad_factor = 1.0);

/// PACT (docs/papers.md §6.3): clip(input, 0, alpha) quantized unsigned with scale alpha / quant_max.
/// alpha: float32 tensor with one element (positive; checked on CPU). Gradients: input where
/// 0 <= x < alpha; alpha the sum of the incoming gradient where x >= alpha.
QATKIT_API at::Tensor pact_quantize(const at::Tensor& input, const at::Tensor& alpha, std::int64_t quant_max);

/// BitNet b1.58 activation quantizer (docs/papers.md §7.2), per token: s = max(max|x| over the last dim,
/// 1e-5) / quant_max, y = clamp(nearbyint(x / s), -quant_max - 1, quant_max) * s. Gradient: the
/// straight-through estimator with a constant scale (identity). CPU: NaN/Inf input raises.
QATKIT_API at::Tensor quantize_per_token(const at::Tensor& input, std::int64_t quant_max = 127);

/// quantize_per_token into `out` (resized like ATen's out= ops; input's dtype and device; must
/// not overlap input). Not differentiable.
QATKIT_API at::Tensor& quantize_per_token_out(at::Tensor& out, const at::Tensor& input, std::int64_t quant_max = 127);

/// The same with one scale for the whole tensor.
QATKIT_API at::Tensor quantize_per_tensor_dynamic(const at::Tensor& input, std::int64_t quant_max = 127);

/// Ternary weights, per tensor or per channel along `axis`: method "absmean" (BitNet b1.58:
/// clamp(nearbyint(W / gamma), -1, 1) * gamma, gamma = max(mean|W|, 1e-5)) or "twn" (TWN:
/// delta = 0.7 mean|W|, a = mean |W| over |W| > delta, y = sign(W) a where |W| > delta).
/// Gradient: straight-through (identity) with constant scales.
QATKIT_API at::Tensor ternarize(const at::Tensor& input, const std::string& method = "absmean",
                                std::optional<std::int64_t> axis = std::nullopt);

/// Binary quantizer: y = sign(x - center) * alpha. scaling "none" (alpha 1, center 0), "mean_abs"
/// (XNOR-Net alpha = mean|W|), "bitnet" (Sign(W - mean W) * mean|W|, Sign(0) = -1; both means from
/// float64 sums, rounded to float32: the _mean_and_mean_abs op), per tensor or
/// per channel along `axis`; elsewhere sign(0) = +1. With an int64 `seed` tensor: stochastic
/// BinaryConnect, +1 with probability hard_sigmoid(x - center), Philox-keyed by the seed and the
/// element index (same bits on CPU and CUDA). Gradient to the latent input (scales constant) by
/// `estimator`: "identity", "clipped_ste" (|v| <= 1), "approx_sign" (Bi-Real), "swish_sign"
/// (SignSwish with `beta`).
QATKIT_API at::Tensor binarize(const at::Tensor& input, const std::string& scaling = "none",
                               std::optional<std::int64_t> axis = std::nullopt,
                               const std::string& estimator = "clipped_ste", double beta = 1.0,
                               const std::optional<at::Tensor>& seed = std::nullopt);

/// binarize into `out` (resized like ATen's out= ops; not differentiable).
QATKIT_API at::Tensor& binarize_out(at::Tensor& out, const at::Tensor& input, const std::string& scaling = "none",
                                    std::optional<std::int64_t> axis = std::nullopt,
                                    const std::string& estimator = "clipped_ste", double beta = 1.0,
                                    const std::optional<at::Tensor>& seed = std::nullopt);

/// Integer codes of the affine quantizer: clamp(nearbyint(x * (1.0f / s)) + z, quant_min, quant_max)
/// in `dtype` (int8 default; uint8, int16, int32), with fake_quantize's arguments, checks and
/// rounding, so dequantize_affine(quantize_affine(x, ...), ...) == fake_quantize(x, ...) bit for bit
/// (output dtype = input dtype). NaN codes as the zero point; +-Inf saturate. [quant_min,
/// quant_max] must fit `dtype`. Not differentiable (no autograd kernel). Output contiguous.
QATKIT_API at::Tensor quantize_affine(const at::Tensor& input, const at::Tensor& scale, const at::Tensor& zero_point,
                                      std::int64_t quant_min, std::int64_t quant_max,
                                      std::optional<std::int64_t> axis = std::nullopt,
                                      std::optional<std::int64_t> group_size = std::nullopt,
                                      std::optional<at::ScalarType> dtype = std::nullopt);

/// "Not differentiable" below (the integer kernels, dequantize_affine, ternary_codes, binary_codes):
/// on tensors that require grad the call computes, and a backward through its float outputs throws
/// c10::NotImplementedError naming the op. The *_out functions above throw c10::Error on tensors
/// that require grad while grad mode is on, as ATen's out= functions do.
/// Integer-exact Linear, inference only (docs/integer.md, "static" form): the input's int8 codes
/// (quantize_affine with act_scale / act_zero_point / [act_quant_min, act_quant_max], an 8-bit
/// range) times int8 weight codes `weight` [N, K] (narrow range [-127, 127]: the caller checks it
/// once) summed exactly in int32, plus `corr` [N] (int32: bias_q + (shift - act_zero_point) *
/// rowsum(weight), shift = 128 for a [0, 255] range), converted to float32 and multiplied by
/// `out_scale` [N], then plus the float32 `bias` [N] when given (float-bias layers: two roundings).
/// `input_divisor` [K] (float32), when given, divides the input first, x / input_divisor as torch
/// divides (SmoothQuant's smoothing fused into the quantization pass: the same bits as dividing first).
/// input: float32 [..., K]; returns float32 [..., N]. `weight` may also be pack_int8_panel's layout
/// (N then comes from corr; the same bits, faster on CPU). Not differentiable.
QATKIT_API at::Tensor linear_int8(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& corr,
                                  const at::Tensor& out_scale, double act_scale, std::int64_t act_zero_point,
                                  std::int64_t act_quant_min, std::int64_t act_quant_max,
                                  const std::optional<at::Tensor>& bias = std::nullopt,
                                  const std::optional<at::Tensor>& input_divisor = std::nullopt);

/// A Conv2d (NCHW float32 input; groups >= 1, depthwise included: one GEMM per group) on the integer
/// kernels: the input quantized once per image, int8 patches (a zero-padded position holds the
/// code of 0) times the weight flattened to [N, C/groups*kh*kw] — int8 for weight_bits 8 (groups 1: or
/// pack_int8_panel's layout, N then corr's length), packed as
/// for linear_w2a8 / linear_w1a8 for 2 / 1 — with linear_int8's corr / requantization / bias;
/// returns float32 [B, N, Ho, Wo]. clamp_min / clamp_max (absent: no bound): the op writes
/// torch.clamp(y, clamp_min, clamp_max)'s values (y < min -> min, y > max -> max; NaN and -0.0 kept),
/// a fused Conv2d + ReLU (min 0), ReLU6 (0, 6) or Hardtanh; NaN bounds or min > max are errors.
/// Not differentiable.
QATKIT_API at::Tensor conv2d_int8(const at::Tensor& input, const at::Tensor& weight, std::int64_t weight_bits,
                                  at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                                  at::IntArrayRef dilation, const at::Tensor& corr, const at::Tensor& out_scale,
                                  double act_scale, std::int64_t act_zero_point, std::int64_t act_quant_min,
                                  std::int64_t act_quant_max, const std::optional<at::Tensor>& bias = std::nullopt,
                                  std::int64_t groups = 1, std::optional<double> clamp_min = std::nullopt,
                                  std::optional<double> clamp_max = std::nullopt);

/// W4A8 Linear with a float32 weight scale per group of K (docs/integer.md, "static_group"): per
/// group exact int32 code sums (with the input zero-point term, formed from the codes), combined in float64 in
/// group order with group_scale, times act_scale, then the optional float32 bias. weight: uint8
/// [N, K / 2] in the W4 kernel layout (kernels/common/qgemm_args.h, QGemmW4Args); K and
/// group_size multiples of 32, group_size <= 2^17; or the panel layout of pack_int4_panel (faster:
/// no per-call transposition). Not differentiable.
QATKIT_API at::Tensor linear_w4a8(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& group_scale,
                                  std::int64_t group_size, double act_scale,
                                  std::int64_t act_zero_point, std::int64_t act_quant_min, std::int64_t act_quant_max,
                                  const std::optional<at::Tensor>& bias = std::nullopt);

/// A Conv2d on linear_w4a8's arithmetic (the "static_group" form): the input quantized once, its
/// patch rows in PyTorch's (c, i, j) order — the order of the weight's groups of K = C / groups * kh
/// * kw (a zero-padded position holds the code of 0) — times the weight flattened to [N, K] and
/// packed as for linear_w4a8 (groups 1: or its panel layout), group_scale [N, K / group_size];
/// returns float32 [B, N, Ho, Wo] (channels_last for a channels_last input). The integer-exact
/// simulation's bits (qatkit.qat.integer); clamp_min / clamp_max as conv2d_int8's. Not differentiable.
QATKIT_API at::Tensor conv2d_w4a8(const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef kernel_size,
                                  at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                  const at::Tensor& group_scale, std::int64_t group_size, double act_scale,
                                  std::int64_t act_zero_point, std::int64_t act_quant_min, std::int64_t act_quant_max,
                                  const std::optional<at::Tensor>& bias = std::nullopt, std::int64_t groups = 1,
                                  std::optional<double> clamp_min = std::nullopt,
                                  std::optional<double> clamp_max = std::nullopt);

/// linear_w4a8's panel layout (kernels/common/qgemm_args.h, QGemmW4Args::panel) from the W4 row
/// layout (uint8 [N, K / 2], pack_int4_w4): uint8 [ceil(N / 16), ceil(K / 128), 1024], 16 rows
/// interleaved per 64-byte step, so the kernel reads one sequential stream with no transposition.
/// Same results as the row layout, bit for bit.
QATKIT_API at::Tensor pack_int4_panel(const at::Tensor& weight);

/// linear_int8's panel layout (kernels/common/qgemm_args.h, QGemmArgs::panel) from int8 weight
/// codes [N, K] (narrow range [-127, 127]): uint8 codes w + 128, [ceil(N / 16), ceil(K / 4), 64],
/// 16 rows x 4 k per 64-byte step (padding holds w = 0), so the CPU kernel's vpdpbusd adds 16 rows'
/// products into 16 lanes with no horizontal sums. Same results as the row layout, bit for bit.
QATKIT_API at::Tensor pack_int8_panel(const at::Tensor& weight);

/// linear_w1a8's panel layout (kernels/common/qgemm_args.h, QGemmPackedArgs::panel) from the binary
/// row layout (uint8 [N, K_pad / 8], pack_binary_b1): uint8 [ceil(N / 32), K_pad / 8, 32], the row
/// bytes transposed in blocks of 32 rows (zero rows past N), so the CPU kernel looks up 32 rows'
/// partial sums per byte shuffle (lookup tables of the activations). Same results as the row
/// layout, bit for bit.
QATKIT_API at::Tensor pack_binary_panel(const at::Tensor& weight);

/// linear_int8 with binary weights, 1 bit each (1 = +1; bit k % 8 of byte k / 8, the file's 1-bit
/// packing), uint8 [N, K_pad / 8], K_pad = K rounded up to a multiple of 32. Not differentiable.
QATKIT_API at::Tensor linear_w1a8(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& corr,
                                  const at::Tensor& out_scale, double act_scale, std::int64_t act_zero_point,
                                  std::int64_t act_quant_min, std::int64_t act_quant_max,
                                  const std::optional<at::Tensor>& bias = std::nullopt);

/// XNOR-Net Linear, inference only (docs/integer.md, "row" form with binary inputs): the input
/// (float32 [B, ..., K]) binarized per sample along dim 0 exactly as binary_codes(input, "bitnet", 0)
/// — codes in {-1, +1} (0 for NaN), scale alpha[b] — against binary weight codes packed 1 bit each
/// (uint8 [N, K_pad / 8], pack_binary_b1's layout); the exact int32 sum by XNOR + popcount, then
/// y = fp32(acc) * fp32(alpha[b] * weight_scale[n]) (+ bias[n]). Not differentiable.
QATKIT_API at::Tensor linear_w1a1(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& weight_scale,
                                  const std::optional<at::Tensor>& bias = std::nullopt);

/// A Conv2d (float32 [B, C, H, W], NCHW or channels_last) on linear_w1a1's arithmetic: the input
/// binarized per image, its code patches (zero padding: code 0, kept out of the sums) against the
/// weight flattened to [N, C/groups*kh*kw] and packed as for linear_w1a1. Returns float32
/// [B, N, Ho, Wo] in the input's memory format; clamp_min / clamp_max as conv2d_int8's. Not differentiable.
QATKIT_API at::Tensor conv2d_w1a1(const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef kernel_size,
                                  at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                  const at::Tensor& weight_scale, const std::optional<at::Tensor>& bias = std::nullopt,
                                  std::int64_t groups = 1, std::optional<double> clamp_min = std::nullopt,
                                  std::optional<double> clamp_max = std::nullopt);

/// Weight-only int4 Linear (float activations): weights in the W4 kernel layout (uint8 [N, K / 2],
/// pack_int4_w4) dequantized in registers as (q - group_zero) * group_scale (float32, the bits of
/// dequantize_affine; symmetric when group_zero is absent), times the float32 input with float32
/// accumulation (its own summation order: within a stated bound of F.linear on the dequantized
/// weight, docs/integer.md), plus bias. group_size: a multiple of 32 dividing K. Not differentiable.
QATKIT_API at::Tensor linear_w4_weight_only(const at::Tensor& input, const at::Tensor& weight,
                                            const at::Tensor& group_scale, std::int64_t group_size,
                                            const std::optional<at::Tensor>& group_zero = std::nullopt,
                                            const std::optional<at::Tensor>& bias = std::nullopt);

/// linear_int8 with ternary weights packed 2 bits each in the W2A8 kernel layout (uint8
/// [N, K_pad / 4], K_pad = K rounded up to a multiple of 128; kernels/common/qgemm_args.h,
/// QGemmPackedArgs); `corr` and the requantization as for linear_int8. Not differentiable.
QATKIT_API at::Tensor linear_w2a8(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& corr,
                                  const at::Tensor& out_scale, double act_scale, std::int64_t act_zero_point,
                                  std::int64_t act_quant_min, std::int64_t act_quant_max,
                                  const std::optional<at::Tensor>& bias = std::nullopt);

/// Weight-only int8 Linear (float activations): int8 weight codes [N, K] (any int8 value) times a
/// float32 scale per output channel (weight_scale [N]), dequantized as float(q) * scale[n] (the bits of
/// dequantize_affine), times the float32 input with float32 sums in the kernel's own order (within a
/// stated bound of F.linear on the dequantized weight, docs/integer.md), plus bias. Not differentiable.
QATKIT_API at::Tensor linear_w8_weight_only(const at::Tensor& input, const at::Tensor& weight,
                                            const at::Tensor& weight_scale,
                                            const std::optional<at::Tensor>& bias = std::nullopt);

/// Linear with per-token dynamic int8 inputs (docs/integer.md, "row" form: BitLinear / bitnet_b158,
/// or int8 weights with per-token activations): each row of the float32 input [..., K] quantized by
/// its own absmax, s[m] = fp32(max(max_k |x[m, k]|, 1e-5) / act_quant_max), to codes in
/// [-act_quant_max - 1, act_quant_max] (quantize_per_token's); the exact int32 sums against the
/// weight codes of weight_bits 8 (int8 [N, K] or pack_int8_panel), 2 (pack_ternary_t2) or 1
/// (pack_binary_b1 or pack_binary_panel), N = weight_scale's length; y = fp32(acc) *
/// fp32(s[m] * weight_scale[n]) (+ bias[n]). per_tensor: one scale s for the whole input (its absmax:
/// quantize_per_tensor_dynamic's). Returns float32 [..., N]. A NaN or Inf in a row (in the input,
/// per_tensor) raises on CPU. Not differentiable.
QATKIT_API at::Tensor linear_dynamic_int8(const at::Tensor& input, const at::Tensor& weight, std::int64_t weight_bits,
                                          const at::Tensor& weight_scale, std::int64_t act_quant_max = 127,
                                          const std::optional<at::Tensor>& bias = std::nullopt,
                                          bool per_tensor = false);

/// Floats from integer codes: y = (codes - z) * s, in float32 (float64 for a float64
/// `output_dtype`), rounded to `output_dtype` (float32 default). codes: int8 / uint8 / int16 /
/// int32; qparams laid out as for fake_quantize over the codes' shape. Not differentiable.
QATKIT_API at::Tensor dequantize_affine(const at::Tensor& codes, const at::Tensor& scale, const at::Tensor& zero_point,
                                        std::optional<std::int64_t> axis = std::nullopt,
                                        std::optional<std::int64_t> group_size = std::nullopt,
                                        std::optional<at::ScalarType> output_dtype = std::nullopt);

/// Ternary codes: (int8 codes in {-1, 0, 1}, float32 scale with one element per channel or one)
/// such that codes * scale (broadcast along `axis`, in the input's dtype) == ternarize(input,
/// method, axis) bit for bit. NaN input codes as 0. Not differentiable.
QATKIT_API std::tuple<at::Tensor, at::Tensor> ternary_codes(const at::Tensor& input,
                                                            const std::string& method = "absmean",
                                                            std::optional<std::int64_t> axis = std::nullopt);

/// Binary codes: (int8 codes in {-1, 1}, float32 scale) such that codes * scale == binarize(input,
/// scaling, axis) (deterministic) bit for bit; scaling "none" gives scale 1. NaN input codes as 0.
/// Not differentiable.
QATKIT_API std::tuple<at::Tensor, at::Tensor> binary_codes(const at::Tensor& input,
                                                           const std::string& scaling = "mean_abs",
                                                           std::optional<std::int64_t> axis = std::nullopt);

/// Packs integer weight codes [N, K] (int8 / uint8 / int16 / int32 / int64) into bytes [N, row_bytes],
/// rows independent, low bits first along K (docs/format.md): packing "offset" stores code +
/// offset in `bits` bits (1..8; bits 9..16 as little-endian uint16), "sign" 1 bit per binary code
/// (1 = +1), "base3" five ternary codes per byte. Every code must fit (ValueError on the CPU).
QATKIT_API at::Tensor pack_weights(const at::Tensor& codes, std::int64_t bits, std::int64_t offset = 0,
                                   const std::string& packing = "offset");

/// The inverse of pack_weights for rows of `k` codes: [N, k] in the narrowest signed dtype of
/// [-offset, 2^bits - 1 - offset] (int8, int16 or int32).
QATKIT_API at::Tensor unpack_weights(const at::Tensor& packed, std::int64_t bits, std::int64_t k,
                                     std::int64_t offset = 0, const std::string& packing = "offset");

/// Fused observer + fake quantize: when observer_on, update running_min / running_max in place
/// (moving average with `momentum`, an empty +-inf buffer taking the first value, or plain
/// min/max), recompute scale / zero_point into their buffers (choose_qparams' formulas); then
/// fake-quantize when fake_quant_on, else pass the input through. Flags are 1-element tensors read
/// on the device (no sync, no recompilation when toggled). Buffers: float32 (zero_point int32)
/// with one element per channel (axis) or one per tensor. Gradient: clipped STE when fake
/// quantizing, identity otherwise.
QATKIT_API at::Tensor fused_observe_fake_quantize(const at::Tensor& input, at::Tensor& running_min,
                                                  at::Tensor& running_max, at::Tensor& scale, at::Tensor& zero_point,
                                                  const at::Tensor& observer_on, const at::Tensor& fake_quant_on,
                                                  double momentum = 0.01, bool moving_average = true,
                                                  std::int64_t quant_min = -128, std::int64_t quant_max = 127,
                                                  bool symmetric = false,
                                                  std::optional<std::int64_t> axis = std::nullopt);

/// ternarize into `out` (resized like ATen's out= ops; not differentiable).
QATKIT_API at::Tensor& ternarize_out(at::Tensor& out, const at::Tensor& input, const std::string& method = "absmean",
                                     std::optional<std::int64_t> axis = std::nullopt);

/// Scale (float32) and zero point (int32) from the min/max of `input`, with 0 inside the range:
///   symmetric:  scale = max(|min|, |max|) / ((quant_max - quant_min) / 2), zero_point 0 for a
///               signed range (quant_min < 0), else the mid-point (quant_min + quant_max + 1) / 2;
///   asymmetric: scale = (max - min) / (quant_max - quant_min),
///               zero_point = clamp(quant_min - round(min / scale), quant_min, quant_max).
/// scale is never below float32 eps. Shapes: [1] per-tensor, [size(axis)] per-channel,
/// input.shape[:-1] + [last / group_size] per-group. Not differentiable.
QATKIT_API std::tuple<at::Tensor, at::Tensor> choose_qparams(const at::Tensor& input, std::int64_t quant_min,
                                                             std::int64_t quant_max, bool symmetric,
                                                             std::optional<std::int64_t> axis = std::nullopt,
                                                             std::optional<std::int64_t> group_size = std::nullopt);

/// The private ops (`torch.ops.qatkit._*`): building blocks of the public ops and their C++
/// autograd, callable from C++ for tests and custom kernels. Not a stable API.
namespace detail {

/// Lower-level binarization with given per-channel center / alpha (float32, or empty).
QATKIT_API at::Tensor binarize_apply(const at::Tensor& input, const std::optional<at::Tensor>& center,
                                     const std::optional<at::Tensor>& alpha, std::optional<std::int64_t> axis,
                                     bool zero_negative, const std::optional<at::Tensor>& seed);

/// The estimator backward of binarize: grad * estimator'(input - center) (the scales are constants),
/// and its out= form writing into `grad_input` (resized like ATen's out= ops).
QATKIT_API at::Tensor binarize_backward(const at::Tensor& grad, const at::Tensor& input,
                                        const std::optional<at::Tensor>& center, std::optional<std::int64_t> axis,
                                        const std::string& estimator, double beta);
QATKIT_API at::Tensor& binarize_backward_out(at::Tensor& grad_input, const at::Tensor& grad, const at::Tensor& input,
                                             const std::optional<at::Tensor>& center, std::optional<std::int64_t> axis,
                                             const std::string& estimator, double beta);

}  // namespace detail

// Deprecated aliases (one release): these names moved to qatkit::detail in 0.2.
[[deprecated("use qatkit::detail::binarize_apply")]] inline at::Tensor binarize_apply(
    const at::Tensor& input, const std::optional<at::Tensor>& center, const std::optional<at::Tensor>& alpha,
    std::optional<std::int64_t> axis, bool zero_negative, const std::optional<at::Tensor>& seed) {
  return detail::binarize_apply(input, center, alpha, axis, zero_negative, seed);
}
[[deprecated("use qatkit::detail::binarize_backward")]] inline at::Tensor binarize_backward(
    const at::Tensor& grad, const at::Tensor& input, const std::optional<at::Tensor>& center,
    std::optional<std::int64_t> axis, const std::string& estimator, double beta) {
  return detail::binarize_backward(grad, input, center, axis, estimator, beta);
}
[[deprecated("use qatkit::detail::binarize_backward_out")]] inline at::Tensor& binarize_backward_out(
    at::Tensor& grad_input, const at::Tensor& grad, const at::Tensor& input, const std::optional<at::Tensor>& center,
    std::optional<std::int64_t> axis, const std::string& estimator, double beta) {
  return detail::binarize_backward_out(grad_input, grad, input, center, axis, estimator, beta);
}

}  // namespace qatkit
