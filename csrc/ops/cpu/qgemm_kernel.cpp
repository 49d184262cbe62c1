// CPU kernels of the integer GEMM family's Linears: linear_int8 (and its packed 2- and 1-bit forms,
// linear_w2a8 / linear_w1a8), linear_dynamic_int8, linear_w4a8, linear_w1a1, the weight-only
// linear_w8_weight_only / linear_w4_weight_only, and pack_int8_panel. The input rows are quantized
// to int8 (threaded over rows), then the ISA table's GEMM runs over chunks of rows or blocks of
// output columns (each block streams its weight rows once for every input row: batch-1 GEMV and
// batched GEMM share one loop). The convs: qgemm_conv_kernel.cpp.
#include "qgemm_kernel_common.h"

namespace qatkit::ops {
namespace {

// Rows per thread's chunk where a Linear splits its input rows across threads (each thread quantizes
// its rows and runs the whole weight on them, one parallel region), or 0 where it splits the output
// columns (each thread streams part of the weight for every row, after a region that quantizes the
// rows). Column blocks make every thread read rows that another thread quantized, and write half of
// each output row, which the next layer's thread of that row then reads: on a VM whose two vCPUs sit
// on different CCDs (a 400 ns core-to-core round trip instead of 60 ns), that traffic took the digits
// MLP's w8a8 forward from 195 us to 330 us (docs/benchmarks.md, twenty-third session). Rows go by
// thread where there are rows for every thread (M >= 32) and the weight is small enough for each
// core to read all of it from its caches (<= 2 MiB); a chunk does at least 2^18 multiply-adds, so a
// small product runs on one thread.
std::int64_t row_chunk(std::int64_t M, std::int64_t N, std::int64_t K, std::int64_t weight_bytes,
                       std::int64_t max_weight_bytes = std::int64_t{2} << 20) {
  if (M < 32 || weight_bytes > max_weight_bytes || at::get_num_threads() < 2) return 0;
  const std::int64_t macs = std::max<std::int64_t>(1, N * K);
  return std::max<std::int64_t>(16, ((std::int64_t{1} << 18) + macs - 1) / macs);
}

// The launch of rows [m0, m1) of g (activation rows a_rs codes apart, y [M, N] row-major).
template <class Args>
Args rows_of(const Args& g, std::int64_t m0, std::int64_t m1, std::int64_t a_rs) {
  Args r = g;
  r.a += m0 * a_rs;
  r.a_sum += m0;
  r.y += m0 * g.y_rs;
  r.M = m1 - m0;
  return r;
}

// 2- and 1-bit Linear weights from this many input rows run the int8 GEMM on their codes widened
// to int8 (linear_core), where the widened weight stays in the caches (N * K <= kLinearWidenBytes):
// the packed kernels equal linear_int8 on the unpacked codes, and from 16 rows the int8 panel GEMM
// ran 1.4-6x (ternary) and 1.1-1.45x (binary) faster on Zen 4 (docs/benchmarks.md, twenty-third
// session); below it the packed kernels read a quarter / an eighth of the bytes.
constexpr std::int64_t kLinearWidenRows = 16;
constexpr std::int64_t kLinearWidenBytes = std::int64_t{2} << 20;

// A 2- or 1-bit Linear weight (pack_ternary_t2, pack_binary_b1 or pack_binary_panel: panel) as
// pack_int8_panel of its [N, K] codes.
at::Tensor widened_linear_weight(const at::Tensor& w, int bits, bool panel, std::int64_t N, std::int64_t K) {
  at::Tensor codes = at::empty({N, K}, w.options().dtype(at::kChar));
  const auto* src = static_cast<const std::uint8_t*>(w.const_data_ptr());
  auto* dst = codes.data_ptr<std::int8_t>();
  const std::int64_t rb = w.size(1);  // bytes per row (the binary panel: per step of 32 rows)
  at::parallel_for(0, N, 16, [&](std::int64_t n0, std::int64_t n1) {
    for (std::int64_t n = n0; n < n1; ++n) {
      for (std::int64_t t = 0; t < K; ++t) {
        // the binary panel: byte n % 32 of step t / 8 in block n / 32 (kernels/common/qgemm_args.h)
        dst[n * K + t] = static_cast<std::int8_t>(
            panel ? (((src[((n / 32) * rb + t / 8) * 32 + n % 32] >> (t % 8)) & 1u) != 0 ? 1 : -1)
                  : weight_code(src, bits, false, rb, n, t));
      }
    }
  });
  return qatkit::pack_int8_panel(codes);
}

// linear_int8 (weight_bits 8) and the packed low-bit kernels (2: ternary, 1: binary): activation
// rows quantized into a buffer (zero-padded to the packed kernels' K_pad, with their sums) by
// quantize_row(m, x_row, a_row), then the GEMM, followed by finish(m0, m1, n0, n1)
// (linear_dynamic_int8's per-row scales): per chunk of rows (row_chunk), or over blocks of 16 output
// columns (a multiple of the AVX2 kernels' 4) after a region that quantizes every row.
template <class QuantizeRow, class Finish>
void linear_core(const at::Tensor& x, const at::Tensor& w, int weight_bits, std::int64_t M, std::int64_t N,
                 const std::int32_t* corr, const float* out_scale, const float* bias, float* y,
                 const QuantizeRow& quantize_row, const Finish& finish, const std::function<void()>& quantized = {}) {
  const bool panel = weight_bits == 8 && w.dim() == 3;  // pack_int8_panel: rows of ceil(K / 4) * 4
  const bool panel1 = weight_bits == 1 && w.dim() == 3;  // pack_binary_panel: K_pad / 8 = dim 1
  const std::int64_t K = x.size(-1);
  if (weight_bits != 8 && M >= kLinearWidenRows && N * K <= kLinearWidenBytes) {
    // derived from the constant weight alone: held between calls (cached_weight_form)
    const at::Tensor wide = cached_weight_form(w, {5, weight_bits, panel1, N, K, 0, 0, 0}, [&] {
      return widened_linear_weight(w, weight_bits, panel1, N, K);
    });
    linear_core(x, wide, 8, M, N, corr, out_scale, bias, y, quantize_row, finish, quantized);
    return;
  }
  const std::int64_t K_row = panel ? (K + 3) / 4 * 4 : weight_bits == 8 ? K : w.size(1) * (8 / weight_bits);
  // not zero-filled on this thread: each row writes its own padding (in its chunk's thread)
  const std::unique_ptr<std::int8_t[]> a(new std::int8_t[static_cast<std::size_t>(M * K_row)]);
  std::vector<std::int32_t> a_sum(static_cast<std::size_t>(M), 0);
  const float* xp = x.data_ptr<float>();
  const auto quantize = [&](std::int64_t b0, std::int64_t e0) {
    for (std::int64_t m = b0; m < e0; ++m) {
      std::int8_t* row = a.get() + m * K_row;
      quantize_row(m, xp + m * K, row);
      if (K_row > K) std::memset(row + K, 0, static_cast<std::size_t>(K_row - K));
      if (weight_bits == 8 && !panel) continue;  // the row-layout int8 kernel needs no sums
      std::int32_t s = 0;
      for (std::int64_t i = 0; i < K; ++i) s += row[i];
      a_sum[static_cast<std::size_t>(m)] = s;
    }
  };
  const std::int64_t chunk = row_chunk(M, N, K, N * K_row * weight_bits / 8);
  const bool by_rows = chunk > 0;
  if (!by_rows) {
    at::parallel_for(0, M, std::max<std::int64_t>(1, 16384 / std::max<std::int64_t>(K_row, 1)), quantize);
    if (quantized) quantized();
  }
  const auto& k = kernels::cpu::qgemm_kernels();
  // blocks of 16 output columns (the binary panel's 32: its kernel works on whole 32-row blocks)
  const std::int64_t nb = panel1 ? 32 : 16;
  const auto columns = [&](const auto& gemm) {
    if (by_rows) {
      at::parallel_for(0, M, chunk, [&](std::int64_t m0, std::int64_t m1) {
        quantize(m0, m1);
        gemm(m0, m1, 0, N);
        finish(m0, m1, 0, N);
      });
      if (quantized) quantized();
      return;
    }
    at::parallel_for(0, (N + nb - 1) / nb, 1, [&](std::int64_t b0, std::int64_t e0) {
      const std::int64_t n0 = b0 * nb, n1 = std::min(N, e0 * nb);
      gemm(0, M, n0, n1);
      finish(0, M, n0, n1);
    });
  };
  if (weight_bits == 8) {
    kernels::QGemmArgs g;
    const at::Tensor wo = panel ? s8_panel_operand(w, N, K, &g.tail) : w;
    g.a = a.get();
    g.w = static_cast<const std::int8_t*>(wo.const_data_ptr());
    g.a_sum = a_sum.data();
    g.panel = panel;
    g.corr = corr;
    g.out_scale = out_scale;
    g.bias = bias;
    g.y = y;
    g.M = M;
    g.N = N;
    g.K = K;
    g.y_rs = N;
    columns([&](std::int64_t m0, std::int64_t m1, std::int64_t n0, std::int64_t n1) {
      k.gemm_s8(rows_of(g, m0, m1, K_row), n0, n1);
    });
    return;
  }
  kernels::QGemmPackedArgs g;
  g.a = a.get();
  g.a_sum = a_sum.data();
  g.w = w.data_ptr<std::uint8_t>();
  g.panel = panel1;
  g.corr = corr;
  g.out_scale = out_scale;
  g.bias = bias;
  g.y = y;
  g.M = M;
  g.N = N;
  g.K_pad = K_row;
  g.y_rs = N;
  const auto gemm = weight_bits == 2 ? k.gemm_t2 : k.gemm_b1;
  columns([&](std::int64_t m0, std::int64_t m1, std::int64_t n0, std::int64_t n1) {
    gemm(rows_of(g, m0, m1, K_row), n0, n1);
  });
}

at::Tensor linear_cpu(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& corr,
                      const at::Tensor& out_scale, double act_scale, std::int64_t act_zero_point,
                      std::int64_t act_quant_min, std::int64_t act_quant_max, const std::optional<at::Tensor>& bias,
                      int weight_bits, const float* divisor = nullptr) {
  const std::int32_t shift = check_linear_int8_args(input, weight, corr, out_scale, act_scale, act_zero_point,
                                                    act_quant_min, act_quant_max, bias, weight_bits);
  const at::Tensor x = input.contiguous(), w = weight.contiguous(), c = corr.contiguous(), os = out_scale.contiguous();
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  const std::int64_t N = w.dim() == 3 ? c.size(0) : w.size(0);  // a panel weight: N is corr's length
  const auto rows = rows_and_output_shape(x, N);
  at::Tensor y = at::empty(rows.second, input.options());
  if (y.numel() == 0) return y;
  kernels::ActQuantArgs q = act_quant_args(act_scale, act_zero_point, act_quant_min, act_quant_max, shift);
  q.divisor = divisor;
  std::int32_t nan_seen = 0;  // set by the row quantization (the NaN rule without a second pass)
  q.nan_seen = &nan_seen;
  const auto& k = kernels::cpu::qgemm_kernels();
  const std::int64_t K = x.size(-1);
  linear_core(x, w, weight_bits, rows.first, N, c.data_ptr<std::int32_t>(), os.data_ptr<float>(),
              b.defined() ? b.data_ptr<float>() : nullptr, y.data_ptr<float>(),
              [&](std::int64_t, const float* xr, std::int8_t* ar) { k.quantize_rows(xr, ar, K, q, 0, 1); },
              [](std::int64_t, std::int64_t, std::int64_t, std::int64_t) {});
  if (__atomic_load_n(&nan_seen, __ATOMIC_RELAXED)) {  // the rows holding a NaN (x contiguous here)
    fill_nan_rows(divisor ? at::div(x, at::from_blob(const_cast<float*>(divisor), {K}, x.options())) : x, y);
  }
  return y;
}

// linear_dynamic_int8: the kernels above with corr 0 and out_scale 1 (fp32(acc) * 1 is exact, so
// they leave fp32(acc)), each row quantized by its own scale (quantize_per_token's rule), then per
// column block y = y * fp32(s[m] * weight_scale[n]) (+ bias[n]) while the block is in cache: the
// "row" form's operations (this file compiles with -ffp-contract=off: no fused multiply-add). A row
// holding NaN or Inf has no finite scale: an error, as quantize_per_token's.
at::Tensor linear_dynamic_int8_cpu(const at::Tensor& input, const at::Tensor& weight, std::int64_t weight_bits,
                                   const at::Tensor& weight_scale, std::int64_t act_quant_max,
                                   const std::optional<at::Tensor>& bias, bool per_tensor) {
  check_linear_dynamic_int8_args(input, weight, weight_bits, weight_scale, act_quant_max, bias);
  const at::Tensor x = input.contiguous(), w = weight.contiguous(), ws = weight_scale.contiguous();
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  const std::int64_t N = ws.size(0), K = x.size(-1);
  const auto rows = rows_and_output_shape(x, N);
  const std::int64_t M = rows.first;
  at::Tensor y = at::empty(rows.second, input.options());
  if (y.numel() == 0) return y;
  const std::vector<std::int32_t> zeros(static_cast<std::size_t>(N), 0);
  const std::vector<float> ones(static_cast<std::size_t>(N), 1.f);
  std::vector<float> row_scale(static_cast<std::size_t>(M));
  const auto& k = kernels::cpu::qgemm_kernels();
  const float qmax = static_cast<float>(act_quant_max);
  // amax as torch's amax (a NaN propagates), clamp_min(1e-5) (NaN stays NaN), / qmax: float32
  const auto scale_of = [&](const float* v, std::int64_t n) {
    float amax = 0.f;
    bool nan = false;
    for (std::int64_t i = 0; i < n; ++i) {
      const float a = std::fabs(v[i]);
      nan |= a != a;
      amax = a > amax ? a : amax;
    }
    return nan ? std::numeric_limits<float>::quiet_NaN() : std::max(amax, 1e-5f) / qmax;
  };
  if (per_tensor) {  // quantize_per_tensor_dynamic's one scale: max over the rows' scales (the same float ops)
    std::vector<float> part(static_cast<std::size_t>(M));
    const float* xp = x.data_ptr<float>();
    at::parallel_for(0, M, std::max<std::int64_t>(1, 16384 / std::max<std::int64_t>(K, 1)), [&](std::int64_t b0, std::int64_t e0) {
      for (std::int64_t m = b0; m < e0; ++m) part[static_cast<std::size_t>(m)] = scale_of(xp + m * K, K);
    });
    float s = part[0];
    for (const float p : part) s = (p != p || p > s) ? p : s;  // a NaN stays
    std::fill(row_scale.begin(), row_scale.end(), s);
  }
  const auto quantize_row = [&](std::int64_t m, const float* xr, std::int8_t* ar) {
    const float s = per_tensor ? row_scale[static_cast<std::size_t>(m)] : scale_of(xr, K);
    row_scale[static_cast<std::size_t>(m)] = s;
    kernels::ActQuantArgs q;
    q.inv_scale = 1.0f / s;  // quantize_affine's 1 / s (float32)
    q.zero_point = 0;
    q.quant_min = -static_cast<std::int32_t>(act_quant_max) - 1;
    q.quant_max = static_cast<std::int32_t>(act_quant_max);
    k.quantize_rows(xr, ar, K, q, 0, 1);
  };
  float* yp = y.data_ptr<float>();
  const float* wsp = ws.data_ptr<float>();
  const float* bp = b.defined() ? b.data_ptr<float>() : nullptr;
  const auto finish = [&](std::int64_t m0, std::int64_t m1, std::int64_t n0, std::int64_t n1) {
    for (std::int64_t m = m0; m < m1; ++m) {
      const float sm = row_scale[static_cast<std::size_t>(m)];
      float* yr = yp + m * N;
      if (bp) {
        for (std::int64_t n = n0; n < n1; ++n) yr[n] = yr[n] * (sm * wsp[n]) + bp[n];
      } else {
        for (std::int64_t n = n0; n < n1; ++n) yr[n] = yr[n] * (sm * wsp[n]);
      }
    }
  };
  linear_core(x, w, static_cast<int>(weight_bits), M, N, zeros.data(), ones.data(), nullptr, yp, quantize_row, finish,
              [&] {  // after the rows' quantization, before the GEMM: quantize_per_token's NaN / Inf rule
                for (std::int64_t m = 0; m < M; ++m) {
                  TORCH_CHECK_VALUE(std::isfinite(row_scale[static_cast<std::size_t>(m)]),
                                    per_tensor ? fmt::format("linear_dynamic_int8: the input holds NaN or Inf: its "
                                                             "per-tensor scale max|x| / {} is not finite",
                                                             act_quant_max)
                                               : fmt::format("linear_dynamic_int8: input row {} (of the {} rows "
                                                             "[..., K] flattens to) holds NaN or Inf: its per-token "
                                                             "scale max|x| / {} is not finite (quantize_per_token "
                                                             "raises on it too)", m, M, act_quant_max));
                }
              });
  return y;
}

at::Tensor linear_int8_cpu(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& corr,
                           const at::Tensor& out_scale, double act_scale, std::int64_t act_zero_point,
                           std::int64_t act_quant_min, std::int64_t act_quant_max,
                           const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& input_divisor) {
  check_input_divisor(input, input_divisor);
  const at::Tensor d = input_divisor.has_value() ? input_divisor->contiguous() : at::Tensor();
  return linear_cpu(input, weight, corr, out_scale, act_scale, act_zero_point, act_quant_min, act_quant_max, bias, 8,
                    d.defined() ? d.const_data_ptr<float>() : nullptr);
}

at::Tensor linear_w2a8_cpu(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& corr,
                           const at::Tensor& out_scale, double act_scale, std::int64_t act_zero_point,
                           std::int64_t act_quant_min, std::int64_t act_quant_max,
                           const std::optional<at::Tensor>& bias) {
  return linear_cpu(input, weight, corr, out_scale, act_scale, act_zero_point, act_quant_min, act_quant_max, bias, 2);
}

at::Tensor linear_w1a8_cpu(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& corr,
                           const at::Tensor& out_scale, double act_scale, std::int64_t act_zero_point,
                           std::int64_t act_quant_min, std::int64_t act_quant_max,
                           const std::optional<at::Tensor>& bias) {
  return linear_cpu(input, weight, corr, out_scale, act_scale, act_zero_point, act_quant_min, act_quant_max, bias, 1);
}

at::Tensor linear_w4a8_impl(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& group_scale,
                            std::int64_t group_size, double act_scale,
                           std::int64_t act_zero_point, std::int64_t act_quant_min, std::int64_t act_quant_max,
                           const std::optional<at::Tensor>& bias) {
  check_linear_w4a8_args(input, weight, group_scale, group_size, bias);
  // N: group_scale's rows, or 16 per block of blocked scales
  const std::int64_t K = input.size(-1), N = w4_weight_only_rows(group_scale), G = K / group_size;
  // dtype / activation-range checks on an int8 stand-in of the weight's [N, K] shape
  const std::int32_t shift = check_linear_int8_args(input, at::empty({N, K}, weight.options().dtype(at::kChar)),
                                                    at::empty({N}, group_scale.options().dtype(at::kInt)),
                                                    at::empty({N}, group_scale.options()),
                                                    act_scale, act_zero_point, act_quant_min, act_quant_max, bias);
  const at::Tensor x = input.contiguous(), w = weight.contiguous(), gs = group_scale.contiguous();
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  const auto rows = rows_and_output_shape(x, N);
  const std::int64_t M = rows.first;
  const std::vector<std::int64_t>& shape = rows.second;
  at::Tensor y = at::empty(shape, input.options());
  if (y.numel() == 0) return y;
  // not zero-filled: every row is written by its quantization before it is read (a zero fill was a
  // serial pass over M * K bytes per call)
  const std::unique_ptr<std::int8_t[]> a_buf(new std::int8_t[static_cast<std::size_t>(M * K)]);
  const std::unique_ptr<std::int32_t[]> gsum_buf(new std::int32_t[static_cast<std::size_t>(M * G)]);
  std::int8_t* const a = a_buf.get();
  std::int32_t* const a_gsum = gsum_buf.get();
  kernels::ActQuantArgs q = act_quant_args(act_scale, act_zero_point, act_quant_min, act_quant_max, shift);
  std::int32_t nan_seen = 0;  // set by the row quantization: linear_w4a8_cpu's NaN rule reads it
  q.nan_seen = &nan_seen;
  const auto& k = kernels::cpu::qgemm_kernels();
  const float* xp = x.data_ptr<float>();
  const auto quantize = [&](std::int64_t b0, std::int64_t e0) {
    k.quantize_rows(xp, a, K, q, b0, e0);
    for (std::int64_t m = b0; m < e0; ++m) row_group_sums(a + m * K, G, group_size, a_gsum + m * G);
  };
  const std::int64_t chunk = row_chunk(M, N, K, N * K / 2);
  if (chunk == 0) at::parallel_for(0, M, 1, quantize);
  kernels::QGemmW4Args g;
  g.a = a;
  g.a_gsum = a_gsum;
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
  if (chunk > 0) {
    at::parallel_for(0, M, chunk, [&](std::int64_t m0, std::int64_t m1) {
      quantize(m0, m1);
      kernels::QGemmW4Args r = g;
      r.a += m0 * K;
      r.a_gsum += m0 * G;
      r.y += m0 * N;
      r.M = m1 - m0;
      k.gemm_w4(r, 0, N);
    });
  } else {
    at::parallel_for(0, (N + 15) / 16, 1, [&](std::int64_t b0, std::int64_t e0) {
      k.gemm_w4(g, b0 * 16, std::min(N, e0 * 16));
    });
  }
  if (__atomic_load_n(&nan_seen, __ATOMIC_RELAXED)) fill_nan_rows(x, y);  // nan_outputs.h
  return y;
}

at::Tensor linear_w4a8_cpu(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& group_scale,
                           std::int64_t group_size, double act_scale, std::int64_t act_zero_point,
                           std::int64_t act_quant_min, std::int64_t act_quant_max,
                           const std::optional<at::Tensor>& bias) {
  return linear_w4a8_impl(input, weight, group_scale, group_size, act_scale, act_zero_point, act_quant_min,
                          act_quant_max, bias);
}

at::Tensor linear_w1a1_cpu(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& weight_scale,
                           const std::optional<at::Tensor>& bias) {
  const std::int64_t K = input.dim() > 0 ? input.size(-1) : 0;
  const std::int64_t KB = check_w1a1_args("linear_w1a1", input, K, weight, weight_scale, bias);
  const at::Tensor w = weight.contiguous(), ws = weight_scale.contiguous();
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  const std::int64_t N = w.size(0);
  const auto rows = rows_and_output_shape(input, N);
  const std::int64_t M = rows.first;
  at::Tensor y = at::empty(rows.second, input.options());
  if (y.numel() == 0) return y;
  // the codes and alphas binarize("bitnet", axis 0) scales: one op, so the bits are binary_codes'
  const auto [codes_t, alpha_t] = qatkit::binary_codes(input.contiguous(), "bitnet", 0);
  const at::Tensor codes = codes_t.contiguous(), alpha = alpha_t.contiguous();
  const std::int8_t* cp = codes.data_ptr<std::int8_t>();
  const float* ap = alpha.data_ptr<float>();
  const std::int64_t per_sample = M / input.size(0);
  XnorRows r(M, KB);
  const auto set_rows = [&](std::int64_t b0, std::int64_t e0) {
    for (std::int64_t m = b0; m < e0; ++m) r.set_row(m, KB, K, ap[m / per_sample], cp + m * K);
  };
  const at::Tensor wt = xnor_weight_blocks(weight, w, N, KB);  // the GEMM's weight blocks, held
  kernels::QGemmXnorArgs g = r.args(w, ws, b, y.data_ptr<float>(), M, N, KB, wt);
  g.y_rs = N;
  const auto& k = kernels::cpu::qgemm_kernels();
  // row chunks per thread (row_chunk; the work counted in weight bytes: a popcount covers 64 pairs)
  // up to 128 KiB of weight bits: there 1.0-1.1x the column blocks (the digits model's XNOR layer
  // in the far placement 1.3x), while from 256 KiB (64 x 2048 x 1024) each thread streaming all the
  // bits ran 0.86-0.88x (docs/benchmarks.md, twenty-third session)
  const std::int64_t chunk = row_chunk(M, N, KB, N * KB, std::int64_t{128} << 10);
  if (chunk > 0) {
    at::parallel_for(0, M, chunk, [&](std::int64_t m0, std::int64_t m1) {
      set_rows(m0, m1);
      k.gemm_xnor(rows_of(g, m0, m1), 0, N);
    });
    return y;
  }
  at::parallel_for(0, M, std::max<std::int64_t>(1, 16384 / std::max<std::int64_t>(K, 1)), set_rows);
  at::parallel_for(0, (N + 15) / 16, 1, [&](std::int64_t b0, std::int64_t e0) { k.gemm_xnor(g, b0 * 16, std::min(N, e0 * 16)); });
  return y;
}

// The weight-only ops' paths by activation rows M (the kernel table's thresholds, measured on 4096 x
// 4096 and MiniLM's layer shapes: docs/benchmarks.md, 2026-12-03, sixth to eighth sessions):
//   linear_w4_weight_only: below w4f_packed_rows the table's gemm_w4f (in-register dequantization);
//     from it (the row layout: from w4f_gemm_rows, the middle path between) the packed GEMM (AVX2:
//     blocks of rows and of K, each weight panel dequantized once per block of rows into a
//     per-thread buffer, register tiles straight into y). The baseline and AVX-512 tables have no
//     packed GEMM: gemm_w4f below w4f_gemm_rows (AVX-512: its register tiles for every row count,
//     either layout), the float-GEMM path below from there.
//   linear_w8_weight_only: below w8f_xt_rows gemm_w8f (lane sums); below w8f_gemm_rows the middle
//     path (register tiles on the transposed activations); from w8f_gemm_rows the weight dequantized
//     block by block and the float GEMM (MKL) on each block. (The packed GEMM on int8 rows ran
//     0.72-0.91x FP32 where these ran 0.85-1.5x: a panel of the [N, K] codes is 32 runs of K-block
//     bytes, one DRAM miss after another, where w4's panel layout is one contiguous run per block.)

// The weight-only kernels' many-row path: blocks of weight rows dequantized (dequant(b0, e0, buf): rows
// [b0, b0 + e0) into buf) into one buffer, each block's float GEMM (MKL / oneDNN) written in place into its
// output columns, the bias added after the sum. Blocks of at most 8 MiB of floats, as equal as 16-row
// steps allow: MiniLM's layers (up to 2.3 MiB) run as one GEMM (with 2 MiB blocks its 1536-wide layers
// ran as 1360 + 176 and 336 + 48 rows, the small GEMM slow and the large one copied: 0.85x FP32 per
// layer); the buffer is reused, so a large weight never becomes a fresh [N, K] float allocation per call.
template <class Dequant>
void gemm_on_dequantized_blocks(const at::Tensor& x, at::Tensor& y, const at::Tensor& b, std::int64_t M, std::int64_t N,
                                std::int64_t K, const Dequant& dequant) {
  // K = 0 (an empty sum: y = the bias) is one block; it divided by zero here before (SIGFPE)
  const std::int64_t cap = K > 0 ? std::max<std::int64_t>(16, (std::int64_t{8} << 20) / (4 * K) / 16 * 16) : N;
  const std::int64_t nblocks = (N + cap - 1) / cap;
  const std::int64_t nb = std::min(N, ((N + nblocks - 1) / nblocks + 15) / 16 * 16);
  at::Tensor wf = at::empty({nb, K}, x.options());
  const at::Tensor x2 = x.reshape({M, K});
  at::Tensor y2 = y.view({M, N});
  for (std::int64_t n0 = 0; n0 < N; n0 += nb) {
    const std::int64_t n1 = std::min(N, n0 + nb);
    float* buf = wf.data_ptr<float>();
    at::parallel_for(n0, n1, 16, [&](std::int64_t b0, std::int64_t e0) { dequant(b0, e0, buf + (b0 - n0) * K); });
    const at::Tensor wt = wf.narrow(0, 0, n1 - n0).t();
    if (n1 - n0 == N) {
      at::mm_out(y2, x2, wt);
    } else {  // the block's columns of y: row-major with leading dimension N, which BLAS writes in place
      at::Tensor yb = y2.narrow(1, n0, n1 - n0);
      at::mm_out(yb, x2, wt);
    }
  }
  if (b.defined()) y2.add_(b);  // after the sum, one rounding (the kernels' "+ bias[n]")
}

// The weight-only kernels' middle path: blocks of activation rows transposed (xt = x^T, zero rows up
// to a multiple of 16) and the table's register tiles on them (loops.h's wof_columns), the threads
// splitting the output columns. A block's transpose stays within 1 MiB (half the 2 MiB L2 of the
// machines measured), so it stays in L2 while every weight row passes over it; each further block
// dequantizes the weight again (amortized over its rows).
template <class Args>
void weight_only_xt(const at::Tensor& x, at::Tensor& y, const Args& g,
                    void (*gemm_xt)(const Args&, const kernels::WofXtArgs&, std::int64_t, std::int64_t)) {
  const std::int64_t M = g.M, N = g.N, K = g.K;
  const std::int64_t mc = std::max<std::int64_t>(32, (std::int64_t{1} << 18) / std::max<std::int64_t>(K, 1) / 32 * 32);
  const std::int64_t cap = (std::min(M, mc) + 15) / 16 * 16;
  at::Tensor xt = at::empty({std::max<std::int64_t>(K, 1), cap}, x.options());
  const float* xp = x.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const auto& k = kernels::cpu::qgemm_kernels();
  const std::int64_t tile = k.wof_tile_rows;
  for (std::int64_t m0 = 0; m0 < M; m0 += mc) {
    const std::int64_t rows = std::min(mc, M - m0), Mp = (rows + 15) / 16 * 16;
    if (Mp != rows) xt.zero_();
    for (std::int64_t t0 = 0; t0 < rows; t0 += tile) {  // panel by panel (WofXtArgs' layout)
      k.transpose_f32(xp + (m0 + t0) * K, std::min(tile, rows - t0), K, K, xt.data_ptr<float>() + t0 * K,
                      std::min(tile, Mp - t0));
    }
    const kernels::WofXtArgs c{xt.data_ptr<float>(), yp + m0 * N, rows, Mp};
    at::parallel_for(0, N, 48, [&](std::int64_t n0, std::int64_t n1) { gemm_xt(g, c, n0, n1); });
  }
}

// A weight-only kernel's call: from packed_rows (where the table has a packed GEMM) the packed GEMM,
// its threads splitting the output columns in whole panels; else from gemm_rows activation rows the
// float GEMM on blocks of dequantized rows; from xt_rows (where the table has the middle path) the
// register tiles on the transposed activations; below them the table's kernel over blocks of 16
// output columns.
template <class Args>
void weight_only_gemm(const at::Tensor& x, at::Tensor& y, const at::Tensor& b, const Args& g, std::int64_t gemm_rows,
                      void (*dequant)(const Args&, std::int64_t, std::int64_t, float*),
                      void (*gemm)(const Args&, std::int64_t, std::int64_t), std::int64_t xt_rows,
                      void (*gemm_xt)(const Args&, const kernels::WofXtArgs&, std::int64_t, std::int64_t),
                      void (*packed)(const Args&, std::int64_t, std::int64_t), std::int64_t packed_rows) {
  const std::int64_t N = g.N;
  if (packed && g.M >= packed_rows) {
    const std::int64_t nc = kernels::cpu::qgemm_kernels().wop_panel_cols, panels = (N + nc - 1) / nc;
    at::parallel_for(0, panels, 1, [&](std::int64_t b0, std::int64_t e0) { packed(g, b0 * nc, std::min(N, e0 * nc)); });
    return;
  }
  if (g.M >= gemm_rows) {
    gemm_on_dequantized_blocks(x, y, b, g.M, N, g.K,
                               [&](std::int64_t b0, std::int64_t e0, float* buf) { dequant(g, b0, e0, buf); });
    return;
  }
  if (gemm_xt && g.M >= xt_rows) {
    weight_only_xt(x, y, g, gemm_xt);
    return;
  }
  at::parallel_for(0, (N + 15) / 16, 1, [&](std::int64_t b0, std::int64_t e0) { gemm(g, b0 * 16, std::min(N, e0 * 16)); });
}

at::Tensor linear_w4_weight_only_cpu(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& group_scale,
                                     std::int64_t group_size, const std::optional<at::Tensor>& group_zero,
                                     const std::optional<at::Tensor>& bias) {
  check_linear_w4_weight_only_args(input, weight, group_scale, group_size, group_zero, bias);
  const at::Tensor x = input.contiguous(), w = weight.contiguous(), gs = group_scale.contiguous();
  const at::Tensor gz = group_zero.has_value() ? group_zero->contiguous() : at::Tensor();
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  // a panel weight: N from group_scale
  at::Tensor y = at::empty(rows_and_output_shape(x, w4_weight_only_rows(gs)).second, input.options());
  if (y.numel() == 0) return y;
  kernels::QGemmW4FArgs g = w4f_args(x, w, gs, gz, b, y, group_size);
  const auto& k = kernels::cpu::qgemm_kernels();
  // the amx table's bf16 tiles (symmetric groups; every thread splits the rows itself). A value the
  // tiles cannot take exactly makes every thread return false: then the float kernels below
  if (k.gemm_w4f_amx != nullptr && !gz.defined() && g.M >= k.w4f_amx_rows && g.K > 0 && group_size % 32 == 0) {
    const std::int64_t N = g.N;
    std::atomic<bool> done{true};
    at::parallel_for(0, (N + 31) / 32, 1, [&](std::int64_t b0, std::int64_t e0) {  // pairs of blocks
      if (!k.gemm_w4f_amx(g, b0 * 32, std::min(N, e0 * 32))) done.store(false, std::memory_order_relaxed);
    });
    if (done.load()) return y;
  }
  // the panel layout: the packed GEMM from w4f_packed_rows; the row layout: the middle path from
  // there, the packed GEMM from w4f_gemm_rows (its panels read short runs of each row: docs/integer.md)
  weight_only_gemm(x, y, b, g, k.w4f_gemm_rows, k.dequant_w4f, k.gemm_w4f, k.w4f_packed_rows,
                   g.panel ? nullptr : k.gemm_w4f_xt, k.gemm_w4f_packed,
                   g.panel ? k.w4f_packed_rows : k.w4f_gemm_rows);
  return y;
}

at::Tensor linear_w8_weight_only_cpu(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& weight_scale,
                                     const std::optional<at::Tensor>& bias) {
  check_linear_w8_weight_only_args(input, weight, weight_scale, bias);
  const at::Tensor x = input.contiguous(), w = weight.contiguous(), ws = weight_scale.contiguous();
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  const std::int64_t N = w.size(0);
  const auto rows = rows_and_output_shape(x, N);
  at::Tensor y = at::empty(rows.second, input.options());
  if (y.numel() == 0) return y;
  const kernels::QGemmW8FArgs g = w8f_args(x, w, ws, b, y);
  const auto& k = kernels::cpu::qgemm_kernels();
  weight_only_gemm(x, y, b, g, k.w8f_gemm_rows, k.dequant_w8f, k.gemm_w8f, k.w8f_xt_rows, k.gemm_w8f_xt,
                   static_cast<void (*)(const kernels::QGemmW8FArgs&, std::int64_t, std::int64_t)>(nullptr),
                   std::int64_t{0});
  return y;
}

// pack_int8_panel: the exact codes' panel (4 codes of a row per 32-bit store), then each block's
// split record (split_record), blocks in parallel.
at::Tensor pack_int8_panel_cpu(const at::Tensor& weight) {
  const auto shape = check_pack_int8_panel_args(weight);
  const std::int64_t N = weight.size(0), K = weight.size(1), NB = (N + 15) / 16, K4 = shape[1], X = shape[0] - NB;
  const at::Tensor w = weight.contiguous();
  at::Tensor out = at::empty({NB + X, K4, 64}, weight.options().dtype(at::kByte));
  const std::int8_t* src = w.const_data_ptr<std::int8_t>();
  std::uint8_t* dst = out.mutable_data_ptr<std::uint8_t>();
  std::fill(dst + NB * K4 * 64, dst + (NB + X) * K4 * 64, std::uint8_t{0});
  auto* tail = reinterpret_cast<std::int32_t*>(dst + NB * K4 * 64);
  at::parallel_for(0, NB, 1, [&](std::int64_t b0, std::int64_t b1) {
    SplitEntries ent;
    for (std::int64_t b = b0; b < b1; ++b) {
      std::uint8_t* blk = dst + b * K4 * 64;
      for (std::int64_t l = 0; l < 16; ++l) {
        const std::int64_t n = 16 * b + l;
        for (std::int64_t s0 = 0; s0 < K4; ++s0) {
          std::uint32_t v = 0;  // the codes of k = 4 s0 .. 4 s0 + 3 (0 past K or N), as w + 128
          if (n < N) std::memcpy(&v, src + n * K + 4 * s0, static_cast<std::size_t>(std::min<std::int64_t>(4, K - 4 * s0)));
          v ^= 0x80808080u;
          std::memcpy(blk + s0 * 64 + 4 * l, &v, 4);
        }
      }
      split_record(blk, K4, tail + b * kernels::s8_tail_words(K4), ent);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(qatkit, CPU, m) {
  m.impl("pack_int8_panel", &pack_int8_panel_cpu);
  m.impl("linear_w4_weight_only", &linear_w4_weight_only_cpu);
  m.impl("linear_w1a1", &linear_w1a1_cpu);
  m.impl("linear_w4a8", &linear_w4a8_cpu);
  m.impl("linear_int8", &linear_int8_cpu);
  m.impl("linear_dynamic_int8", &linear_dynamic_int8_cpu);
  m.impl("linear_w8_weight_only", &linear_w8_weight_only_cpu);
  m.impl("linear_w2a8", &linear_w2a8_cpu);
  m.impl("linear_w1a8", &linear_w1a8_cpu);
}

}  // namespace qatkit::ops
