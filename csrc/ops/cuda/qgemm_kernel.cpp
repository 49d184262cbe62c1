// CUDA kernels of the integer GEMM family (linear_int8, linear_dynamic_int8, linear_w2a8, linear_w1a8, linear_w4a8,
// linear_w4_weight_only, linear_w8_weight_only, conv2d_int8, conv2d_w4a8): the CPU's
// checks, the input rows quantized into an int8 buffer on the device, then the torch-free
// launchers of kernels/cuda/qgemm_cuda.h on the current stream; the same bits as the CPU.
// conv2d_int8 and conv2d_w4a8 run im2col, then the Linear kernels per group. linear_w1a1 / conv2d_w1a1 (XNOR) run
// the W1A8 kernels on the per-sample binary codes (inputs of scale 1).
#include <ATen/Context.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/abs.h>
#include <ATen/ops/amax.h>
#include <ATen/ops/clamp_min.h>
#include <ATen/ops/mul.h>
#include <ATen/ops/add.h>
#include <ATen/ops/div.h>
#include <ATen/ops/full.h>
#include <ATen/ops/_int_mm.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/im2col.h>
#include <ATen/ops/gt.h>
#include <ATen/ops/lt.h>
#include <ATen/ops/masked_fill.h>
#include <ATen/ops/mm.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>
#include <utility>
#include <vector>

#include "../../../kernels/cuda/qgemm_cuda.h"
#include "../nan_outputs.h"
#include "../qgemm_checks.h"
#include "qatkit/ops.h"

namespace qatkit::ops {
namespace {

// The weight-only kernels' path beyond 16 rows (vector form): the weights dequantized once per
// call into float32 [N, K] (each to the bits the kernels use), then cuBLAS's float32 GEMM and the
// bias add: a float kernel within the same bound (docs/integer.md), taken only while float32
// matmuls run in IEEE float32 (no TF32: it would leave the bound).
bool fp32_gemm_is_ieee() {
  const auto& ctx = at::globalContext();
  return !ctx.allowTF32CuBLAS() && ctx.float32MatmulPrecision() == at::Float32MatmulPrecision::HIGHEST;
}

bool dequantize_then_gemm(std::int64_t M) { return M > 16 && kernels::cuda::use_vector_form() && fp32_gemm_is_ieee(); }

// y[M, N] = x[M, K] . wd[N, K]^T (+ bias), cuBLAS float32
void float_gemm(const at::Tensor& x, const at::Tensor& wd, const at::Tensor& b, std::int64_t M, at::Tensor& y) {
  at::Tensor yv = y.view({M, wd.size(0)});
  at::mm_out(yv, x.reshape({M, wd.size(1)}), wd.t());
  if (b.defined()) yv.add_(b.view({1, wd.size(0)}));
}

// The integer GEMM of linear_int8 / w2a8 / w1a8 on already-checked operands into y ([M, N]); rows
// quantized with q (row_scale non-null: 1 / row_scale[m] per row).
void linear_cuda_core(const at::Tensor& x, const at::Tensor& weight, int weight_bits, std::int64_t N,
                      const at::Tensor& c, const at::Tensor& os, const at::Tensor& b, const kernels::ActQuantArgs& q,
                      const float* row_scale, at::Tensor& y) {
  const auto stream = c10::cuda::getCurrentCUDAStream();
  // pack_binary_panel's layout back to rows (the CUDA kernel reads the row layout; the same bits)
  const at::Tensor w = weight_bits == 1 && weight.dim() == 3
                           ? weight.permute({0, 2, 1}).reshape({-1, weight.size(1)}).narrow(0, 0, N).contiguous()
                           : weight.contiguous();
  const bool panel = weight_bits == 8 && w.dim() == 3;  // pack_int8_panel: rows of ceil(K / 4) * 4
  const std::int64_t K = x.size(-1), M = y.numel() / N;
  const std::int64_t K_row = panel ? (K + 3) / 4 * 4 : weight_bits == 8 ? K : w.size(1) * (8 / weight_bits);
  at::Tensor a = at::empty({M, K_row}, x.options().dtype(at::kChar));
  at::Tensor a_sum = at::empty({M}, x.options().dtype(at::kInt));
  C10_CUDA_CHECK(kernels::cuda::launch_quantize_rows(x.data_ptr<float>(), a.data_ptr<std::int8_t>(),
                                                     a_sum.data_ptr<std::int32_t>(), M, K, K_row, q, stream, row_scale));
  if (M > 16 && N % 8 == 0 && kernels::cuda::use_vector_form() &&
      (weight_bits == 8 ? !panel && K % 8 == 0 : K_row % 8 == 0 && w.size(0) == N)) {
    // cuBLASLt's int8 GEMM (torch._int_mm: int32 accumulators, exact within the caller's int32
    // bound) on the int8 rows (ternary / binary: their signed codes unpacked on the device, whose
    // sums are the packed kernels' sum a * c - sum a), then the plain kernel's requantization as
    // separate ATen ops: int32 + corr (wraps as the kernels' sums), one int32 -> float32
    // conversion, one multiply, then the bias add.
    at::Tensor rows = w;
    if (weight_bits != 8) {
      rows = at::empty({N, K_row}, x.options().dtype(at::kChar));
      C10_CUDA_CHECK(kernels::cuda::launch_unpack_codes(w.data_ptr<std::uint8_t>(), rows.data_ptr<std::int8_t>(), N,
                                                        K_row, weight_bits, stream));
    }
    at::Tensor v = at::_int_mm(a, rows.t()).add_(c.view({1, N})).to(at::kFloat).mul_(os.view({1, N}));
    if (b.defined()) v.add_(b.view({1, N}));
    y.view({M, N}).copy_(v);
    return;
  }
  if (weight_bits == 8) {
    kernels::QGemmArgs g;
    g.a = a.data_ptr<std::int8_t>();
    g.w = static_cast<const std::int8_t*>(w.const_data_ptr());
    g.a_sum = a_sum.data_ptr<std::int32_t>();
    g.panel = panel;
    g.corr = c.data_ptr<std::int32_t>();
    g.out_scale = os.data_ptr<float>();
    g.bias = b.defined() ? b.data_ptr<float>() : nullptr;
    g.y = y.data_ptr<float>();
    g.M = M;
    g.N = N;
    g.K = K;
    g.y_rs = N;
    C10_CUDA_CHECK(kernels::cuda::launch_gemm_s8(g, stream));
  } else {
    kernels::QGemmPackedArgs g;
    g.a = a.data_ptr<std::int8_t>();
    g.a_sum = a_sum.data_ptr<std::int32_t>();
    g.w = w.data_ptr<std::uint8_t>();
    g.corr = c.data_ptr<std::int32_t>();
    g.out_scale = os.data_ptr<float>();
    g.bias = b.defined() ? b.data_ptr<float>() : nullptr;
    g.y = y.data_ptr<float>();
    g.M = M;
    g.N = N;
    g.K_pad = K_row;
    g.y_rs = N;
    C10_CUDA_CHECK(kernels::cuda::launch_gemm_packed(g, weight_bits, stream));
  }
}

at::Tensor linear_cuda(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& corr,
                       const at::Tensor& out_scale, double act_scale, std::int64_t act_zero_point,
                       std::int64_t act_quant_min, std::int64_t act_quant_max, const std::optional<at::Tensor>& bias,
                       int weight_bits) {
  const std::int32_t shift = check_linear_int8_args(input, weight, corr, out_scale, act_scale, act_zero_point,
                                                    act_quant_min, act_quant_max, bias, weight_bits);
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor x = input.contiguous(), c = corr.contiguous(), os = out_scale.contiguous();
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  const std::int64_t N = weight.dim() == 3 ? c.size(0) : weight.size(0);  // a panel weight: N is corr's length
  at::Tensor y = at::empty(rows_and_output_shape(x, N).second, input.options());
  if (y.numel() == 0) return y;
  linear_cuda_core(x, weight, weight_bits, N, c, os, b,
                   act_quant_args(act_scale, act_zero_point, act_quant_min, act_quant_max, shift), nullptr, y);
  fill_nan_rows(x, y);  // NaN inputs (nan_outputs.h): also the im2col rows of conv2d_int8's grouped GEMMs
  return y;
}

// linear_dynamic_int8: the row scales by ATen ops (amax, clamp_min, / qmax: float32, as
// quantize_per_token and the CPU), the kernels above with corr 0 and out_scale 1 (leaving
// fp32(acc)), then y * fp32(s[m] * weight_scale[n]) (+ bias): separate ATen ops, no fused multiply-add.
at::Tensor linear_dynamic_int8_cuda(const at::Tensor& input, const at::Tensor& weight, std::int64_t weight_bits,
                                    const at::Tensor& weight_scale, std::int64_t act_quant_max,
                                    const std::optional<at::Tensor>& bias, bool per_tensor) {
  check_linear_dynamic_int8_args(input, weight, weight_bits, weight_scale, act_quant_max, bias);
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor x = input.contiguous(), ws = weight_scale.contiguous();
  const std::int64_t N = ws.size(0), K = x.size(-1);
  at::Tensor y = at::empty(rows_and_output_shape(x, N).second, input.options());
  if (y.numel() == 0) return y;
  const std::int64_t M = y.numel() / N;
  // the divisor a device tensor: ATen's CUDA division by a CPU scalar multiplies by its reciprocal
  // (not the CPU's quotient); by a tensor it divides
  const at::Tensor qmax = at::full({}, static_cast<double>(act_quant_max), x.options());
  const at::Tensor amax = per_tensor ? x.abs().amax().expand({M}) : x.reshape({M, K}).abs().amax({1});
  const at::Tensor s = at::div(amax.clamp_min(1e-5), qmax).contiguous();
  kernels::ActQuantArgs q;
  q.quant_min = -static_cast<std::int32_t>(act_quant_max) - 1;
  q.quant_max = static_cast<std::int32_t>(act_quant_max);
  linear_cuda_core(x, weight, static_cast<int>(weight_bits), N, at::zeros({N}, x.options().dtype(at::kInt)),
                   at::ones({N}, x.options()), at::Tensor(), q, s.data_ptr<float>(), y);
  const at::Tensor m = at::mul(s.reshape({M, 1}), ws.reshape({1, N}));  // fp32(s[m] * weight_scale[n])
  y.view({M, N}).mul_(m);
  if (bias.has_value()) y.view({M, N}).add_(bias->reshape({1, N}));
  return y;
}

at::Tensor linear_int8_cuda(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& corr,
                            const at::Tensor& out_scale, double s, std::int64_t z, std::int64_t lo, std::int64_t hi,
                            const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& input_divisor) {
  check_input_divisor(input, input_divisor);
  if (input_divisor.has_value()) {
    // the division as its own pass (IEEE division: the CPU kernel's fused x / d gives the same bits)
    return linear_cuda(input.div(*input_divisor), weight, corr, out_scale, s, z, lo, hi, bias, 8);
  }
  return linear_cuda(input, weight, corr, out_scale, s, z, lo, hi, bias, 8);
}

at::Tensor linear_w2a8_cuda(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& corr,
                            const at::Tensor& out_scale, double s, std::int64_t z, std::int64_t lo, std::int64_t hi,
                            const std::optional<at::Tensor>& bias) {
  return linear_cuda(input, weight, corr, out_scale, s, z, lo, hi, bias, 2);
}

at::Tensor linear_w1a8_cuda(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& corr,
                            const at::Tensor& out_scale, double s, std::int64_t z, std::int64_t lo, std::int64_t hi,
                            const std::optional<at::Tensor>& bias) {
  return linear_cuda(input, weight, corr, out_scale, s, z, lo, hi, bias, 1);
}

at::Tensor linear_w4a8_cuda(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& group_scale,
                            std::int64_t group_size, double act_scale, std::int64_t act_zero_point,
                            std::int64_t act_quant_min, std::int64_t act_quant_max,
                            const std::optional<at::Tensor>& bias) {
  check_linear_w4a8_args(input, weight, group_scale, group_size, bias);
  // N: group_scale's rows, or 16 per block of blocked scales
  const std::int64_t K = input.size(-1), N = w4_weight_only_rows(group_scale);
  const std::int32_t shift = check_linear_int8_args(input, at::empty({N, K}, weight.options().dtype(at::kChar)),
                                                    at::empty({N}, group_scale.options().dtype(at::kInt)),
                                                    at::empty({N}, group_scale.options()), act_scale, act_zero_point,
                                                    act_quant_min, act_quant_max, bias);
  const c10::cuda::CUDAGuard guard(input.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor x = input.contiguous(), w = weight.contiguous(), gs = group_scale.contiguous();
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  const auto rows = rows_and_output_shape(x, N);
  const std::int64_t M = rows.first;
  at::Tensor y = at::empty(rows.second, input.options());
  if (y.numel() == 0) return y;
  at::Tensor a = at::empty({M, K}, input.options().dtype(at::kChar));
  const kernels::ActQuantArgs q = act_quant_args(act_scale, act_zero_point, act_quant_min, act_quant_max, shift);
  C10_CUDA_CHECK(kernels::cuda::launch_quantize_rows(x.data_ptr<float>(), a.data_ptr<std::int8_t>(), nullptr, M, K, K, q,
                                                     stream));
  kernels::QGemmW4Args g;
  g.a = a.data_ptr<std::int8_t>();
  g.w = w.data_ptr<std::uint8_t>();
  g.gscale = gs.data_ptr<float>();
  g.act_offset = shift - static_cast<std::int32_t>(act_zero_point);
  g.panel = w.dim() == 3;
  g.blocked_scales = gs.dim() == 3;
  g.bias = b.defined() ? b.data_ptr<float>() : nullptr;
  g.act_scale = static_cast<double>(static_cast<float>(act_scale));
  g.y = y.data_ptr<float>();
  g.M = M;
  g.N = N;
  g.K = K;
  g.group = group_size;
  C10_CUDA_CHECK(kernels::cuda::launch_gemm_w4(g, stream));
  fill_nan_rows(x, y);  // NaN inputs (nan_outputs.h): also the im2col rows of conv2d_w4a8
  return y;
}

at::Tensor linear_w4_weight_only_cuda(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& group_scale,
                                      std::int64_t group_size, const std::optional<at::Tensor>& group_zero,
                                      const std::optional<at::Tensor>& bias) {
  check_linear_w4_weight_only_args(input, weight, group_scale, group_size, group_zero, bias);
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor x = input.contiguous(), w = weight.contiguous(), gs = group_scale.contiguous();
  const at::Tensor gz = group_zero.has_value() ? group_zero->contiguous() : at::Tensor();
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  const std::int64_t N = w4_weight_only_rows(gs), K = x.size(-1);  // a panel weight: N from group_scale
  const auto rows = rows_and_output_shape(x, N);
  at::Tensor y = at::empty(rows.second, input.options());
  if (y.numel() == 0) return y;
  kernels::QGemmW4FArgs g = w4f_args(x, w, gs, gz, b, y, group_size);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  if (dequantize_then_gemm(g.M)) {
    at::Tensor wd = at::empty({N, K}, x.options());
    C10_CUDA_CHECK(kernels::cuda::launch_dequantize_w4f(g, wd.data_ptr<float>(), stream));
    float_gemm(x, wd, b, g.M, y);
    return y;
  }
  C10_CUDA_CHECK(kernels::cuda::launch_gemm_w4f(g, stream));
  return y;
}

at::Tensor linear_w8_weight_only_cuda(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& weight_scale,
                                      const std::optional<at::Tensor>& bias) {
  check_linear_w8_weight_only_args(input, weight, weight_scale, bias);
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor x = input.contiguous(), w = weight.contiguous(), ws = weight_scale.contiguous();
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  const std::int64_t N = w.size(0);
  const auto rows = rows_and_output_shape(x, N);
  at::Tensor y = at::empty(rows.second, input.options());
  if (y.numel() == 0) return y;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const kernels::QGemmW8FArgs g = w8f_args(x, w, ws, b, y);
  if (dequantize_then_gemm(rows.first)) {
    at::Tensor wd = at::empty({N, x.size(-1)}, x.options());
    C10_CUDA_CHECK(kernels::cuda::launch_dequantize_w8f(g, wd.data_ptr<float>(), stream));
    float_gemm(x, wd, b, rows.first, y);
    return y;
  }
  C10_CUDA_CHECK(kernels::cuda::launch_gemm_w8f(g, stream));
  return y;
}

// conv2d_int8: im2col of the float input, zero padding in float (x = 0 quantizes to the zero point
// exactly, the code the CPU pads its quantized image with), then per group the Linear kernels above
// on the patch rows [B * L, C/groups * kh * kw] (int8 weight rows zero-padded to 32: the patch rows
// padded with x = 0, whose products with the zero weights vanish). The same codes, exact int32
// sums and requantization: the CPU's bits. One launch sequence per group; depthwise convs (groups ==
// C > 1) instead run one direct kernel (launch_conv_dw_s8: the same codes, sums and requantization;
// ternary / binary weights unpacked to their signed int8 codes first).
at::Tensor conv2d_int8_cuda_nchw(const at::Tensor& input, const at::Tensor& weight, std::int64_t weight_bits,
                                 at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                                 at::IntArrayRef dilation, const at::Tensor& corr, const at::Tensor& out_scale,
                                 double s, std::int64_t z, std::int64_t lo, std::int64_t hi,
                                 const std::optional<at::Tensor>& bias, std::int64_t groups) {
  const auto [ho, wo] = check_conv2d_int8_args(input, weight, weight_bits, kernel_size, stride, padding, dilation, groups);
  const std::int64_t B = input.size(0), C = input.size(1);
  const std::int64_t K = C / groups * kernel_size[0] * kernel_size[1];
  const bool panel = weight.dim() == 3;  // pack_int8_panel (groups 1): N from corr
  const std::int64_t Kw = weight_bits == 8 && !panel ? weight.size(1) : K;  // int8 rows: K or padded to 32
  const std::int32_t shift = check_linear_int8_args(at::empty({1, Kw}, input.options()), weight, corr, out_scale, s, z,
                                                    lo, hi, bias, static_cast<int>(weight_bits));
  const c10::cuda::CUDAGuard guard(input.device());
  const std::int64_t N = panel ? corr.size(0) : weight.size(0), Ng = N / groups, L = ho * wo;
  at::Tensor y = at::empty({B, N, ho, wo}, input.options());
  if (y.numel() == 0) return y;
  const at::Tensor w = weight.contiguous(), c = corr.contiguous(), os = out_scale.contiguous();
  if (groups == C && groups > 1 && !panel) {
    const auto stream = c10::cuda::getCurrentCUDAStream();
    at::Tensor codes = w;  // int8 rows of Kw codes; 2 / 1 bits: their signed codes, K_pad per row
    if (weight_bits != 8) {
      const std::int64_t K_pad = w.size(1) * (8 / weight_bits);
      codes = at::empty({N, K_pad}, input.options().dtype(at::kChar));
      C10_CUDA_CHECK(kernels::cuda::launch_unpack_codes(w.data_ptr<std::uint8_t>(), codes.data_ptr<std::int8_t>(), N,
                                                        K_pad, static_cast<int>(weight_bits), stream));
    }
    const at::Tensor x = input.contiguous();
    const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
    kernels::cuda::QConvDwArgs g;
    g.x = x.data_ptr<float>();
    g.w = codes.data_ptr<std::int8_t>();
    g.w_rs = codes.size(1);
    g.corr = c.data_ptr<std::int32_t>();
    g.out_scale = os.data_ptr<float>();
    g.bias = b.defined() ? b.data_ptr<float>() : nullptr;
    g.y = y.data_ptr<float>();
    g.B = B;
    g.C = C;
    g.H = input.size(2);
    g.W = input.size(3);
    g.N = N;
    g.Ho = ho;
    g.Wo = wo;
    g.kh = static_cast<int>(kernel_size[0]);
    g.kw = static_cast<int>(kernel_size[1]);
    g.sh = static_cast<int>(stride[0]);
    g.sw = static_cast<int>(stride[1]);
    g.ph = static_cast<int>(padding[0]);
    g.pw = static_cast<int>(padding[1]);
    g.dh = static_cast<int>(dilation[0]);
    g.dw = static_cast<int>(dilation[1]);
    g.q = act_quant_args(s, z, lo, hi, shift);
    C10_CUDA_CHECK(kernels::cuda::launch_conv_dw_s8(g, stream));
    fill_nan_windows(x, y, kernel_size, stride, padding, dilation, groups);  // NaN inputs (nan_outputs.h)
    return y;
  }
  const at::Tensor cols = at::im2col(input.contiguous(), {kernel_size[0], kernel_size[1]}, dilation, padding, stride);
  for (std::int64_t g = 0; g < groups; ++g) {
    at::Tensor xg = cols.narrow(1, g * K, K).transpose(1, 2).reshape({B * L, K});
    if (Kw > K) xg = at::constant_pad_nd(xg, {0, Kw - K}, 0.0);
    const std::optional<at::Tensor> bg =
        bias.has_value() ? std::optional<at::Tensor>(bias->narrow(0, g * Ng, Ng)) : std::nullopt;
    const at::Tensor yg = linear_cuda(xg, panel ? w : w.narrow(0, g * Ng, Ng), c.narrow(0, g * Ng, Ng),
                                      os.narrow(0, g * Ng, Ng), s, z, lo, hi, bg, static_cast<int>(weight_bits));
    y.narrow(1, g * Ng, Ng).copy_(yg.view({B, L, Ng}).permute({0, 2, 1}).reshape({B, Ng, ho, wo}));
  }
  return y;
}

// The convs' fused clamp (clamp_min / clamp_max, checked by check_output_clamp): torch.clamp's
// values in place as two masked fills, y < lo -> lo and y > hi -> hi (false for NaN and for -0.0
// against 0, which stay as they are: the CPU's bits).
void clamp_output(at::Tensor& y, std::pair<float, float> bounds) {
  if (bounds.first > -std::numeric_limits<float>::infinity()) y.masked_fill_(y.lt(bounds.first), bounds.first);
  if (bounds.second < std::numeric_limits<float>::infinity()) y.masked_fill_(y.gt(bounds.second), bounds.second);
}

// conv2d_int8 in the input's memory format (ops::conv_channels_last_io: every device's rule), with
// the fused clamp (a Conv2d + ReLU / ReLU6 / Hardtanh, as on the CPU)
at::Tensor conv2d_int8_cuda(const at::Tensor& input, const at::Tensor& weight, std::int64_t weight_bits,
                            at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                            at::IntArrayRef dilation, const at::Tensor& corr, const at::Tensor& out_scale, double s,
                            std::int64_t z, std::int64_t lo, std::int64_t hi, const std::optional<at::Tensor>& bias,
                            std::int64_t groups, std::optional<double> clamp_min,
                            std::optional<double> clamp_max) {
  const auto bounds = check_output_clamp("conv2d_int8", clamp_min, clamp_max);
  const at::Tensor y = conv2d_int8_cuda_nchw(input, weight, weight_bits, kernel_size, stride, padding, dilation, corr,
                                             out_scale, s, z, lo, hi, bias, groups);
  at::Tensor out = conv_channels_last_io(input) ? y.contiguous(at::MemoryFormat::ChannelsLast) : y;
  clamp_output(out, bounds);
  return out;
}

// conv2d_w4a8: im2col on the float input (a padded position holds 0.0, which quantizes to the code of
// 0, the CPU's padding code), then linear_w4a8's kernel on each conv group's patch rows ((c, i, j)
// order, the weight's): the CPU's bits. The output in the input's memory format.
at::Tensor conv2d_w4a8_cuda(const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef kernel_size,
                            at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                            const at::Tensor& group_scale, std::int64_t group_size, double s, std::int64_t z,
                            std::int64_t lo, std::int64_t hi, const std::optional<at::Tensor>& bias,
                            std::int64_t groups, std::optional<double> clamp_min,
                            std::optional<double> clamp_max) {
  const auto bounds = check_output_clamp("conv2d_w4a8", clamp_min, clamp_max);
  const Conv2dW4A8Shape shp = check_conv2d_w4a8_args(input, weight, kernel_size, stride, padding, dilation, group_scale,
                                                     group_size, s, z, lo, hi, bias, groups);
  const c10::cuda::CUDAGuard guard(input.device());
  const std::int64_t B = input.size(0), C = input.size(1), K = C / groups * kernel_size[0] * kernel_size[1];
  const std::int64_t N = group_scale.size(0), Ng = N / groups, L = shp.ho * shp.wo;
  at::Tensor y = at::empty({B, N, shp.ho, shp.wo}, input.options());
  if (y.numel() > 0 && K == 0) {  // no input channels: an empty sum, y = the bias
    y.zero_();
    if (bias.has_value()) y.add_(bias->reshape({1, N, 1, 1}));
  } else if (y.numel() > 0) {
    const at::Tensor w = weight.contiguous(), gs = group_scale.contiguous();
    const at::Tensor cols = at::im2col(input.contiguous(), {kernel_size[0], kernel_size[1]}, dilation, padding, stride);
    for (std::int64_t g = 0; g < groups; ++g) {
      const at::Tensor xg = cols.narrow(1, g * K, K).transpose(1, 2).reshape({B * L, K});
      const std::optional<at::Tensor> bg =
          bias.has_value() ? std::optional<at::Tensor>(bias->narrow(0, g * Ng, Ng)) : std::nullopt;
      const at::Tensor yg = linear_w4a8_cuda(xg, groups == 1 ? w : w.narrow(0, g * Ng, Ng),
                                             gs.narrow(0, g * Ng, Ng), group_size, s, z, lo, hi, bg);
      y.narrow(1, g * Ng, Ng).copy_(yg.view({B, L, Ng}).permute({0, 2, 1}).reshape({B, Ng, shp.ho, shp.wo}));
    }
  }
  clamp_output(y, bounds);
  return conv_channels_last_io(input) ? y.contiguous(at::MemoryFormat::ChannelsLast) : y;
}

// XNOR (linear_w1a1 / conv2d_w1a1, the "row" form of docs/integer.md) on the W1A8 kernels: the
// input's per-sample codes and alphas from binary_codes(input, "bitnet", 0) on the device, the codes
// in {-1, 0, +1} as float inputs of scale 1 (each quantizes to itself; zero padding and the K_pad
// tail hold code 0), whose exact int32 sums against the +-1 weight bits are the popcount's sums;
// corr 0 and out_scale 1 leave fp32(acc), then y * fp32(alpha[b] * weight_scale[n]) (+ bias) as
// separate ATen ops: the CPU kernel's requantization (kernels/cpu/qgemm/loops.h). The weight is
// pack_binary_b1's rows, which linear_w1a8 and conv2d_int8 (weight_bits 1) read as they are. The
// codes are the device's: the bitnet centre is a float32 mean in the device's order (docs/gpu.md).
kernels::ActQuantArgs unit_codes() { return act_quant_args(1.0, 0, -128, 127, 0); }

// y ([M, N] rows, sample b owning rows [b * M / B, (b + 1) * M / B)) times fp32(alpha[b] * ws[n]), + bias
void xnor_requantize(at::Tensor& y, const at::Tensor& alpha, const at::Tensor& ws, const std::optional<at::Tensor>& bias,
                     std::int64_t M, std::int64_t N) {
  const std::int64_t B = alpha.size(0);
  const at::Tensor m = at::mul(alpha.reshape({B, 1, 1}), ws.reshape({1, 1, N}));  // fp32(alpha[b] * ws[n])
  at::Tensor yv = y.view({B, M / B, N});
  yv.mul_(m);
  if (bias.has_value()) yv.add_(bias->reshape({1, 1, N}));
}

at::Tensor linear_w1a1_cuda(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& weight_scale,
                            const std::optional<at::Tensor>& bias) {
  const std::int64_t K = input.dim() > 0 ? input.size(-1) : 0;
  check_w1a1_args("linear_w1a1", input, K, weight, weight_scale, bias);
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor w = weight.contiguous(), ws = weight_scale.contiguous();
  const std::int64_t N = w.size(0);
  const auto rows = rows_and_output_shape(input, N);
  const std::int64_t M = rows.first;
  at::Tensor y = at::empty(rows.second, input.options());
  if (y.numel() == 0) return y;
  const auto [codes, alpha] = qatkit::binary_codes(input.contiguous(), "bitnet", 0);
  const at::Tensor xc = codes.to(at::kFloat).reshape({M, K});
  linear_cuda_core(xc, w, 1, N, at::zeros({N}, input.options().dtype(at::kInt)), at::ones({N}, input.options()),
                   at::Tensor(), unit_codes(), nullptr, y);
  xnor_requantize(y, alpha, ws, bias, M, N);
  return y;
}

at::Tensor conv2d_w1a1_cuda(const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef kernel_size,
                            at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                            const at::Tensor& weight_scale, const std::optional<at::Tensor>& bias,
                            std::int64_t groups, std::optional<double> clamp_min,
                            std::optional<double> clamp_max) {
  const auto bounds = check_output_clamp("conv2d_w1a1", clamp_min, clamp_max);
  const auto [ho, wo] = check_conv2d_int8_args(input, weight, 1, kernel_size, stride, padding, dilation, groups);
  const std::int64_t B = input.size(0), C = input.size(1);
  const std::int64_t K = C / groups * kernel_size[0] * kernel_size[1];
  check_w1a1_args("conv2d_w1a1", input, K, weight, weight_scale, bias);
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor ws = weight_scale.contiguous();
  const std::int64_t N = weight.size(0);
  const auto format = conv_channels_last_io(input) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  if (B * N * ho * wo == 0) return at::empty({B, N, ho, wo}, input.options().memory_format(format));
  const auto [codes, alpha] = qatkit::binary_codes(input.contiguous(), "bitnet", 0);
  // the codes in the input's format: conv2d_int8_cuda gives its output in that format
  at::Tensor y = conv2d_int8_cuda(codes.to(at::kFloat).contiguous(format), weight, 1, kernel_size, stride, padding,
                                  dilation, at::zeros({N}, input.options().dtype(at::kInt)),
                                  at::ones({N}, input.options()), 1.0, 0, -128, 127, std::nullopt, groups, std::nullopt,
                                  std::nullopt);
  const at::Tensor m = at::mul(alpha.reshape({B, 1, 1, 1}), ws.reshape({1, N, 1, 1}));  // fp32(alpha[b] * ws[n])
  y.mul_(m);
  if (bias.has_value()) y.add_(bias->reshape({1, N, 1, 1}));
  clamp_output(y, bounds);
  return y;
}

// pack_int8_panel: made by the CPU kernel (its split records need a pass per block; a load-time step)
at::Tensor pack_int8_panel_cuda(const at::Tensor& weight) {
  check_pack_int8_panel_args(weight);
  return qatkit::pack_int8_panel(weight.cpu()).to(weight.device());
}

}  // namespace

TORCH_LIBRARY_IMPL(qatkit, CUDA, m) {
  m.impl("pack_int8_panel", &pack_int8_panel_cuda);
  m.impl("linear_w4a8", &linear_w4a8_cuda);
  m.impl("conv2d_w4a8", &conv2d_w4a8_cuda);
  m.impl("linear_w4_weight_only", &linear_w4_weight_only_cuda);
  m.impl("linear_int8", &linear_int8_cuda);
  m.impl("linear_dynamic_int8", &linear_dynamic_int8_cuda);
  m.impl("linear_w8_weight_only", &linear_w8_weight_only_cuda);
  m.impl("linear_w2a8", &linear_w2a8_cuda);
  m.impl("linear_w1a8", &linear_w1a8_cuda);
  m.impl("conv2d_int8", &conv2d_int8_cuda);
  m.impl("linear_w1a1", &linear_w1a1_cuda);
  m.impl("conv2d_w1a1", &conv2d_w1a1_cuda);
}

}  // namespace qatkit::ops
