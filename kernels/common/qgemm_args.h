// Plain-data launch description of the integer GEMM family (inference only; docs/integer.md,
// "static" form): y[m, n] = fp32(sum_k a[m, k] * w[n, k] + corr[n]) * out_scale[n] (+ bias[n]), with
// a the shifted int8 activation codes and w int8 weight codes in the narrow range [-127, 127].
#pragma once

#include <cstdint>

#include "macros.h"

namespace qatkit::kernels {

/// Activation quantization of one row: a = clamp(nearbyint(x * inv_scale) + zero_point, qmin, qmax)
/// - shift (NaN codes as the zero point, as quantize_affine); the codes ops' rounding, so a + shift
/// equals ops.quantize_affine's codes bit for bit.
struct ActQuantArgs {
  float inv_scale = 1.f;
  std::int32_t zero_point = 0;
  std::int32_t quant_min = -128;
  std::int32_t quant_max = 127;
  std::int32_t shift = 0;  ///< 0 for [-128, 127] codes, 128 for [0, 255]: a fits int8
  /// [K] per-column divisors applied first, x[k] / divisor[k] (IEEE division, as torch's x / d:
  /// SmoothQuant's input smoothing fused into the quantization), or nullptr
  const float* divisor = nullptr;
  /// When set, the CPU quantize_rows (and quantize_s16) stores 1 here (a relaxed atomic store; never 0) if any value
  /// it quantized (after the divisor) was NaN: the static ops' NaN rule (docs/integer.md, "NaN
  /// inputs") without a second pass over the input
  std::int32_t* nan_seen = nullptr;
};

/// The GEMM on already-quantized rows. corr[n] folds the int32 bias and the zero-point term:
/// corr[n] = bias_q[n] + (shift - zero_point) * sum_k w[n, k]. Sums wrap modulo 2^32 (unsigned
/// arithmetic), so the result is exact whenever the true value fits int32 (the caller's bound).
///
/// The panel layout (pack_int8_panel; panel = true): the weight as uint8 codes w + 128 in blocks of
/// 16 rows (rows past N hold w = 0), K in steps of 4 (k past K holds w = 0); per block and step 64
/// bytes, byte r * 4 + j holding row r's k = 4 * step + j: [ceil(N / 16), ceil(K / 4), 64]. A step
/// is one 32-bit lane per row, so vpdpbusd of a step and a broadcast of four activations adds 16
/// rows' products into 16 lanes (no horizontal sums; the unsigned operand is the weight's). The
/// activation rows then have K4 = ceil(K / 4) * 4 bytes, zero padded, and a_sum[m] = sum_k a[m, k]:
///   sum_k a * w = sum_k a * (w + 128) - 128 * a_sum[m].
///
/// The split records (pack_int8_panel's output since 2026-12-04; docs/integer.md, "W8A8 without
/// VNNI: the split form"): AVX2 without VNNI can multiply u = a + 128 in [0, 255] (vpmaddubsw's
/// unsigned operand) by the weight (signed), two products per saturating int16 sum, when every pair
/// of a lane's consecutive k (4s + 2p, 4s + 2p + 1) is safe: codes of different signs (or a zero),
/// or |w0| + |w1| <= 128, so |u0 w0 + u1 w1| <= 255 * 128 < 2^15. The split codes w' equal w except
/// at each unsafe pair's second k, where w1' = sign(w1) (128 - |w0|) and the entry r = w1 - w1'
/// (|r| <= 126) is listed: sum_k a w = sum_k u w' - 128 sum_k w' + sum_entries a[k] r. The panel
/// keeps the exact codes (every other kernel reads them as they are); after its NB = ceil(N / 16)
/// blocks the weight tensor holds NB records of s8_tail_words(K4) int32 words ([NB + X, K4, 64],
/// X = s8_tail_blocks(NB, K4), the records from byte NB * K4 * 64):
///   [0]        the entry count c, or -1: more than s8_tail_cap(K4) unsafe pairs (the sign trick
///              runs this block);
///   [1, 17)    128 * sum_k w'[16 b + l, k] per lane l;
///   [17, 34)   off[0..16]: lane l's entries are words [34 + off[l], 34 + off[l + 1]);
///   [34, ...)  entries k | (r << 24): k < 2^24, r an int8 in the top byte, by lane, then by k.
/// A 3-D panel with exactly NB blocks (no records) runs the sign trick everywhere.
QATKIT_HD constexpr std::int64_t s8_tail_cap(std::int64_t K4) { return K4 / 2 + 4; }
QATKIT_HD constexpr std::int64_t s8_tail_words(std::int64_t K4) { return 34 + s8_tail_cap(K4); }
QATKIT_HD constexpr std::int64_t s8_tail_blocks(std::int64_t NB, std::int64_t K4) {
  return K4 == 0 ? 0 : (NB * s8_tail_words(K4) * 4 + K4 * 64 - 1) / (K4 * 64);
}

struct QGemmArgs {
  const std::int8_t* a = nullptr;  ///< [M, K], row stride K (panel: [M, K4], row stride K4, zero padded)
  const std::int8_t* w = nullptr;  ///< [N, K], row stride K (panel: the layout above, as bytes)
  const std::int32_t* a_sum = nullptr;  ///< [M] (panel only)
  bool panel = false;
  /// the panel's split records (above; s8_tail_words(K4) words per block), or nullptr
  const std::int32_t* tail = nullptr;
  const std::int32_t* corr = nullptr;
  const float* out_scale = nullptr;
  const float* bias = nullptr;  ///< float bias added after the requantization, or nullptr
  float* y = nullptr;  ///< y[m * y_rs + n * y_cs]: [M, N] row-major (y_rs = N, y_cs = 1), or a conv's [N, L]
  std::int64_t M = 0, N = 0, K = 0;
  std::int64_t y_rs = 0, y_cs = 1;
};

/// Packed low-bit weights against int8 activation rows zero-padded to K_pad.
/// Ternary (W2A8), 2 bits each, a kernel layout made at load from the file's codes: the code
/// c = w + 1 in {0, 1, 2}; K padded to a multiple of 128 with c = 1 (w = 0); per 128-weight block,
/// byte j (j < 32) holds the codes of k = j, j + 32, j + 64, j + 96 in bits 0-1, 2-3, 4-5, 6-7, so
/// four shifts and a mask give 32 consecutive codes; row n is K_pad / 4 bytes;
/// sum_k a * w = sum_k a * c - sum_k a.
/// Binary (W1A8), 1 bit each (1 = +1, bit k % 8 of byte k / 8: the file's packing), K padded to a
/// multiple of 32 (padded activations are 0, so padded bits add nothing); row n is K_pad / 8 bytes;
/// sum_k a * w = 2 * sum_{bit = 1} a - sum_k a.
/// a_sum[m] = sum_k a[m, k] is formed with the activation codes.
///
/// The binary panel layout (pack_binary_panel; panel = true, binary only): the row layout's bytes
/// transposed in blocks of 32 rows (zero rows past N): [ceil(N / 32), K_pad / 8, 32], byte r of step
/// s holding row r's byte s (k = 8 s .. 8 s + 7), so one 32-byte load is 8 weights of 32 rows: two
/// 4-bit indices per row into lookup tables of the activations' partial sums (docs/integer.md,
/// "binary lookup tables"; T-MAC, Wei et al. 2024).
struct QGemmPackedArgs {
  const std::int8_t* a = nullptr;      ///< [M, K_pad], zero padded
  const std::int32_t* a_sum = nullptr; ///< [M]
  const std::uint8_t* w = nullptr;     ///< [N, K_pad / 4] (ternary), [N, K_pad / 8] (binary) or the binary panel
  bool panel = false;                  ///< binary weights in the panel layout above
  const std::int32_t* corr = nullptr;
  const float* out_scale = nullptr;
  const float* bias = nullptr;
  float* y = nullptr;  ///< y[m * y_rs + n * y_cs], as QGemmArgs
  std::int64_t M = 0, N = 0, K_pad = 0;
  std::int64_t y_rs = 0, y_cs = 1;
};

/// W4A8 with group-wise weight scales (docs/integer.md, "static_group" form). Weights: 4-bit codes
/// c = q + 8 in [0, 15] (symmetric q in [-8, 7]); per 32-weight chunk 16 bytes, byte j holding
/// k = j in its low nibble and k = j + 16 in its high nibble; row n is K / 2 bytes; K and the
/// group size are multiples of 32. Per group g of output (m, n):
///   acc_g = sum_{k in g} a * c - 8 * a_gsum[m, g] + act_offset * sum_{k in g} q   (int32, exact)
///   t = sum_g double(acc_g) * double(gscale[n, g])                  (float64, in group order)
///   y = float(t * double(act_scale)) (+ bias[n], float32)
/// with act_offset = shift - zero_point (the input's zero-point term; the kernels form sum q from
/// the codes they read, so no per-group operand besides the scale streams from memory). Exact for
/// group <= 2^19: every partial sum then fits int32.
struct QGemmW4Args {
  const std::int8_t* a = nullptr;       ///< [M, K]
  const std::int32_t* a_gsum = nullptr; ///< [M, G]
  const std::uint8_t* w = nullptr;      ///< [N, K / 2], or the panel layout below
  const float* gscale = nullptr;        ///< [N, G], or the panel's blocks (blocked_scales)
  std::int32_t act_offset = 0;          ///< shift - zero_point
  /// The panel layout (pack_int4_panel): blocks of 16 rows (zero rows past N), K / 2 bytes in steps
  /// of 64 (zero bytes past K / 2); per block and step 1024 bytes, byte e * 64 + r * 4 + j holding
  /// row r's byte 4e + j of that step: one row per 32-bit lane, K's chunks in order (dword e is
  /// chunk e / 4, k = 4 (e % 4) + j in its low nibbles and k + 16 in its high nibbles).
  bool panel = false;
  /// gscale in the panel's blocks [N / 16, G, 16] (element [n / 16, g, n % 16]; N a multiple of 16,
  /// with the panel layout): a block's 16 rows' scales of a group are one vector, read without a
  /// transpose (QGemmW4FArgs::blocked_scales)
  bool blocked_scales = false;
  const float* bias = nullptr;
  double act_scale = 1.0;
  float* y = nullptr;                   ///< [M, N]
  std::int64_t M = 0, N = 0, K = 0, group = 32;

  /// The index of row n's group gi in gscale, in either layout.
  QATKIT_HD std::int64_t scale_index(std::int64_t n, std::int64_t gi) const {
    const std::int64_t G = K / group;
    return blocked_scales ? ((n / 16) * G + gi) * 16 + n % 16 : n * G + gi;
  }
};

/// Offset of byte b of W4 row n (KB = K / 2 bytes per row) in the panel layout (QGemmW4Args::panel).
QATKIT_HD constexpr std::int64_t w4_panel_offset(std::int64_t KB, std::int64_t n, std::int64_t b) {
  return (n / 16) * ((KB + 63) / 64) * 1024 + (n % 16) * 4 + (b / 64) * 1024 + (b % 64 / 4) * 64 + b % 4;
}

/// XNOR-Net W1A1 (docs/integer.md, "row" form, binary inputs): activation and weight codes in
/// {-1, +1} as bits (1 = +1; bit k % 8 of byte k / 8, the file's 1-bit packing), rows of KB bytes
/// (K padded to a multiple of 32 with 0 bits in both). An activation code 0 (a NaN input, or a conv's
/// zero padding: 0 has no 1-bit code) is a 0 bit plus a 1 in the row's zero mask z, so
///   acc = a_k[m] - 2 * (popcount(a_m ^ w_n) - popcount(w_n & z_m)),   a_k[m] = K - |z_m|
/// (exact int32: sum over the non-zero codes of a * w), and
///   y = fp32(acc) * fp32(row_scale[m] * col_scale[n]) (+ bias[n])   (float32: multiply, then add).
struct QGemmXnorArgs {
  const std::uint8_t* a = nullptr;       ///< [M, KB] activation sign bits
  const std::uint8_t* z = nullptr;       ///< [M, KB] zero-code masks (read only where has_zero[m])
  const std::uint8_t* has_zero = nullptr;  ///< [M]
  const std::int32_t* a_k = nullptr;     ///< [M]
  const std::uint8_t* w = nullptr;       ///< [N, KB] weight sign bits
  /// Optional: w's rows in blocks of 16 (block n / 16, its Q = ceil(KB / 8) 8-byte words each in
  /// 16 row lanes, rows past N and bytes past KB zero: [ceil(N / 16), Q, 16] words), the layout the
  /// table's gemm_xnor builds per call otherwise; read only where QGemmKernels::xnor_blocks_max_kb
  /// covers KB and with column ranges that start at a multiple of 16.
  const std::uint64_t* wt = nullptr;
  const float* row_scale = nullptr;      ///< [M] the activation scale of row m (its sample's alpha)
  const float* col_scale = nullptr;      ///< [N] the weight scale of channel n
  const float* bias = nullptr;
  float* y = nullptr;  ///< y[m * y_rs + n * y_cs], as QGemmArgs
  std::int64_t M = 0, N = 0, KB = 0;
  std::int64_t y_rs = 0, y_cs = 1;
};

/// A depthwise conv (groups == C; Ng = N / C output channels per input channel) on one image's
/// codes, directly (no im2col): x the image's shifted activation codes (as QGemmArgs' a) zero-point
/// padded to [C, Hp, Wp] (int16), w the weight codes [N, kh * kw] (int16: int8, ternary or binary
/// codes alike), and output n = c * Ng + r of input channel c:
///   acc[n, oh, ow] = sum_{i, j} x[c, oh * sh + i * dh, ow * sw + j * dw] * w[n, i * kw + j]   (int32, exact)
///   y = fp32(acc + corr[n]) * out_scale[n] (+ bias[n])   (QGemmArgs' requantization, the same bits)
/// Channels-last (dwconv_nhwc, one output channel per input channel, N = C): x [Hp, Wp, C], w
/// [kh * kw, C], y [Ho, Wo, C]; the same sums and requantization.
struct QDwConvArgs {
  const std::int16_t* x = nullptr;  ///< [C, Hp, Wp], then (kw - 1) * dw + 16 codes of slack (any values)
  const std::int16_t* w = nullptr;  ///< [N, kh * kw]
  const std::int32_t* corr = nullptr;
  const float* out_scale = nullptr;
  const float* bias = nullptr;
  float* y = nullptr;               ///< [N, Ho, Wo]
  std::int64_t Hp = 0, Wp = 0, Ng = 1, kh = 1, kw = 1, sh = 1, sw = 1, dh = 1, dw = 1, Ho = 0, Wo = 0;
  std::int64_t C = 0;  ///< the channels (dwconv_nhwc)
  /// dwconv at stride 1 only: tap t = i * kw + j read at offset tap_off[t] from an output's position
  /// on the flat run (null: i * dh * Wp + j * dw). A stride-2 conv's planes split into their four
  /// row / column parity planes (QGemmKernels::split_planes_s16) are a stride-1 run over them: tap
  /// (i, j) reads parity plane (i % 2, j % 2) at row + i / 2, column + j / 2.
  const std::int64_t* tap_off = nullptr;
};

/// A conv computed directly on its input's padded planes, output pixels in vector lanes
/// (QGemmKernels::conv_w4, conv_s8): no patch rows. Pixel m = b * L + l of the batch (l = oh * wo +
/// ow) reads tap k = (c, i, j) of the conv group's planes at x[b * img + oh * row + ow * col +
/// koff[k]]; the stored code x = code - shift is read as the unsigned x + 128.
/// conv_w4 (conv2d_w4a8's "static_group" form): each output is finish_w4's: acc[g] =
/// sum_{k in g} (code - zp) * q as init[n, g] + sum_{k in g} (x + 128) * q (init = (act_offset -
/// 128) * sum_{k in g} q: the same integer), t = sum_g f64(acc[g]) * f64(gscale[n, g]) in group
/// order, y = fp32(t * act_scale) + bias.
/// conv_s8 (conv2d_int8's "static" form; group = K, G = 1): acc = init[n] + sum_k (x + 128) * w
/// modulo 2^32 with init[n] = corr[n] - 128 * sum_k w[n, k], i.e. QGemmArgs' sum_k x * w + corr[n];
/// y = fp32(acc) * out_scale[n] (+ bias[n]).
struct QConvDirectArgs {
  const std::int8_t* x = nullptr;       ///< the conv group's first plane of image 0 (codes - shift)
  const std::int64_t* koff = nullptr;   ///< [K]: tap k's offset from its pixel's base
  std::int64_t img = 0, row = 0, col = 1, L = 0, wo = 1;
  const std::int8_t* w = nullptr;       ///< [N, K] codes (conv_w4: q in [-8, 7]), PyTorch's (c, i, j) order
  const std::int32_t* init = nullptr;  ///< [N, G]
  const float* gscale = nullptr;        ///< [N, G] (conv_w4)
  const float* out_scale = nullptr;     ///< [N] (conv_s8)
  const float* bias = nullptr;
  double act_scale = 1.0;               ///< conv_w4
  /// output pixel m = b * L + l, channel n at y[b * y_img + l * y_ps + n * y_cs] (NCHW: y_ps 1,
  /// y_cs L; NHWC: y_ps N_total, y_cs 1)
  float* y = nullptr;
  std::int64_t y_img = 0, y_ps = 1, y_cs = 0;
  std::int64_t M = 0, N = 0, K = 0, group = 32;
};

/// Weight-only 4-bit (float activations): the W4 layout of QGemmW4Args (c = q + 8), each weight
/// dequantized as w = (float(q) - zero[n, g]) * scale[n, g] (float32; zero 0 when gzero is null:
/// the bits of dequantize_affine), y[m, n] = sum_k x[m, k] * w[n, k] in float32 (the ISA's own
/// summation order) + bias[n].
struct QGemmW4FArgs {
  const float* x = nullptr;             ///< [M, K]
  const std::uint8_t* w = nullptr;      ///< [N, K / 2], or QGemmW4Args' panel layout (panel)
  const float* gscale = nullptr;        ///< [N, G]
  const float* gzero = nullptr;         ///< [N, G] or nullptr (symmetric)
  const float* bias = nullptr;
  float* y = nullptr;                   ///< [M, N]
  std::int64_t M = 0, N = 0, K = 0, group = 32;
  bool panel = false;  ///< w in pack_int4_panel's layout (QGemmW4Args::panel): no per-call transpose
  /// gscale / gzero in the panel's blocks [N / 16, G, 16] (element [n / 16, g, n % 16]; N a multiple
  /// of 16): a block's 16 rows' scales of a group are one vector, read without a transpose
  bool blocked_scales = false;

  /// The index of row n's group gi in gscale / gzero, in either layout.
  QATKIT_HD std::int64_t scale_index(std::int64_t n, std::int64_t gi) const {
    const std::int64_t G = K / group;
    return blocked_scales ? ((n / 16) * G + gi) * 16 + n % 16 : n * G + gi;
  }
};

/// Weight-only int8 (float activations): int8 codes q [N, K] and a float32 scale per output
/// channel, each weight dequantized as w = float(q) * scale[n] (float32: the bits of
/// dequantize_affine), y[m, n] = sum_k x[m, k] * w[n, k] in float32 (lane l of 16 sums k = l mod 16
/// in ascending k by fused multiply-adds; the lanes summed in a fixed tree: the same operations on
/// every ISA) + bias[n].
struct QGemmW8FArgs {
  const float* x = nullptr;        ///< [M, K]
  const std::int8_t* w = nullptr;  ///< [N, K]
  const float* scale = nullptr;    ///< [N]
  const float* bias = nullptr;
  float* y = nullptr;              ///< [M, N]
  std::int64_t M = 0, N = 0, K = 0;
};

/// linear_w8_weight_only's middle path (QGemmKernels' gemm_w8f_xt): a block of M
/// activation rows transposed into panels of `tile` rows (the table's wof_tile_rows; Mp: M rounded up
/// to a multiple of 16, zero rows past M): panel t = rows [t * tile, t * tile + w) with w = min(tile,
/// Mp - t * tile) starts at xt + t * tile * K and holds x[t * tile + i, k] at k * w + i (64-byte
/// aligned), so a register tile reads one sequential stream; outputs go to y[m * N + n] for m < M.
struct WofXtArgs {
  const float* xt = nullptr;
  float* y = nullptr;
  std::int64_t M = 0, Mp = 0;
};

}  // namespace qatkit::kernels
