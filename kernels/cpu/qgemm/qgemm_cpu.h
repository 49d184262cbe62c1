// Torch-free CPU integer GEMM family (inference only): activation row quantization to int8 and the
// int8 x int8 -> int32 GEMM with the "static" requantization of docs/integer.md. One table per ISA
// (isa.h); every ISA gives the same bits (integer sums are exact; the requantization is one int32 ->
// float32 conversion and one float32 multiply per element).
#pragma once

#include <cstdint>

#include "../../common/qgemm_args.h"
#include "../isa.h"

namespace qatkit::kernels::cpu {

struct QGemmKernels {
  /// Quantizes rows [begin, end) of x ([rows, K], row stride K) into a (same layout).
  void (*quantize_rows)(const float* x, std::int8_t* a, std::int64_t K, const ActQuantArgs& q, std::int64_t begin,
                        std::int64_t end);
  /// Output columns [n_begin, n_end) of every row.
  void (*gemm_s8)(const QGemmArgs& args, std::int64_t n_begin, std::int64_t n_end);
  /// The ternary (2-bit) GEMM, output columns [n_begin, n_end) of every row.
  void (*gemm_t2)(const QGemmPackedArgs& args, std::int64_t n_begin, std::int64_t n_end);
  /// The binary (1-bit) GEMM, output columns [n_begin, n_end) of every row.
  void (*gemm_b1)(const QGemmPackedArgs& args, std::int64_t n_begin, std::int64_t n_end);
  /// The W4A8 group-wise GEMM, output columns [n_begin, n_end) of every row.
  void (*gemm_w4)(const QGemmW4Args& args, std::int64_t n_begin, std::int64_t n_end);
  /// The XNOR (W1A1) popcount GEMM, output columns [n_begin, n_end) of every row.
  void (*gemm_xnor)(const QGemmXnorArgs& args, std::int64_t n_begin, std::int64_t n_end);
  /// The weight-only 4-bit GEMM (float activations), output columns [n_begin, n_end) of every row.
  void (*gemm_w4f)(const QGemmW4FArgs& args, std::int64_t n_begin, std::int64_t n_end);
  /// The depthwise conv of one image, output channels [n_begin, n_end).
  void (*dwconv)(const QDwConvArgs& args, std::int64_t n_begin, std::int64_t n_end);
  /// The channels-last depthwise conv of one image (one output channel per input channel), output
  /// rows [oh_begin, oh_end).
  void (*dwconv_nhwc)(const QDwConvArgs& args, std::int64_t oh_begin, std::int64_t oh_end);
  /// dst[c * dst_rs + r] = src[r * src_rs + c] for r < rows, c < cols (convs' [L, N] outputs into NCHW).
  void (*transpose_f32)(const float* src, std::int64_t rows, std::int64_t cols, std::int64_t src_rs, float* dst,
                        std::int64_t dst_rs);
  /// The same for int8 codes widened to int16 (an image's [C, W] rows into channels-last pixels).
  void (*transpose_s8_s16)(const std::int8_t* src, std::int64_t rows, std::int64_t cols, std::int64_t src_rs,
                           std::int16_t* dst, std::int64_t dst_rs);
  /// The same for int8 codes (16 x 16 tiles on every ISA).
  void (*transpose_s8)(const std::int8_t* src, std::int64_t rows, std::int64_t cols, std::int64_t src_rs,
                       std::int8_t* dst, std::int64_t dst_rs);
  /// Rows [n_begin, n_end) of a weight-only 4-bit weight dequantized into w (float32, row n at
  /// w + (n - n_begin) * K; gemm_w4f's weight bits), for the many-row path (a float GEMM on them).
  void (*dequant_w4f)(const QGemmW4FArgs& args, std::int64_t n_begin, std::int64_t n_end, float* w);
  /// linear_w4_weight_only's rows from which the many-row path (dequant_w4f, then the float GEMM)
  /// runs instead of gemm_w4f: where the two cross on MiniLM's layer shapes (docs/benchmarks.md).
  std::int64_t w4f_gemm_rows = 256;
  /// The weight-only int8 GEMM (float activations), output columns [n_begin, n_end) of every row
  /// (loops.h's loop on each ISA's registers, Acc16: the same bits on every table).
  void (*gemm_w8f)(const QGemmW8FArgs& args, std::int64_t n_begin, std::int64_t n_end) = nullptr;
  /// Rows [n_begin, n_end) of a weight-only int8 weight dequantized into w (gemm_w8f's weight bits).
  void (*dequant_w8f)(const QGemmW8FArgs& args, std::int64_t n_begin, std::int64_t n_end, float* w) = nullptr;
  /// linear_w8_weight_only's rows from which the dequantize-then-float-GEMM path runs instead of gemm_w8f.
  std::int64_t w8f_gemm_rows = 16;
  /// linear_w8_weight_only's middle path (loops.h's wof_columns: register tiles on the transposed
  /// activation rows of a WofXtArgs block, the weight dequantized a few rows at a time into L1),
  /// output columns [n_begin, n_end); null where the table has none (baseline). It runs from
  /// w8f_xt_rows activation rows up to w8f_gemm_rows.
  void (*gemm_w8f_xt)(const QGemmW8FArgs& args, const WofXtArgs& xt, std::int64_t n_begin,
                      std::int64_t n_end) = nullptr;
  std::int64_t w8f_xt_rows = 0;
  /// The same middle path for linear_w4_weight_only on the row layout (pack_int4_w4's bytes), from
  /// w4f_packed_rows up to w4f_gemm_rows, where that layout switches to the packed GEMM (AVX2; null
  /// on AVX-512, whose gemm_w4f runs every row count below w4f_gemm_rows on both layouts).
  void (*gemm_w4f_xt)(const QGemmW4FArgs& args, const WofXtArgs& xt, std::int64_t n_begin,
                      std::int64_t n_end) = nullptr;
  /// The activation rows of the middle path's register tiles (WofXtArgs' panel width).
  std::int64_t wof_tile_rows = 32;
  /// linear_w4_weight_only's packed GEMM (loops.h's wop_columns: blocks of rows and of K, the weight
  /// dequantized panel by panel, register tiles straight into y), output columns [n_begin, n_end) of
  /// every row, n_begin a multiple of wop_panel_cols; on the panel layout from w4f_packed_rows
  /// activation rows, on the row layout from w4f_gemm_rows (the middle path below them). Null where
  /// the table has none (baseline and AVX-512: gemm_w4f, then from w4f_gemm_rows the weight
  /// dequantized and MKL's GEMM).
  void (*gemm_w4f_packed)(const QGemmW4FArgs& args, std::int64_t n_begin, std::int64_t n_end) = nullptr;
  std::int64_t w4f_packed_rows = 0;
  std::int64_t wop_panel_cols = 32;
  /// linear_w4_weight_only on AMX-BF16 tiles (the amx table, where cpu_has_amx_bf16(); null
  /// elsewhere), output columns [n_begin, n_end) (n_begin a multiple of 16) of every row, for
  /// symmetric groups (no group_zero, group a multiple of 32, K > 0) from w4f_amx_rows activation
  /// rows (1: every batch). Each float32 activation is split into three bf16 parts whose sum is
  /// exactly it. Returns false, leaving y unfinished, where a value has no exact split on the tiles
  /// (Inf, NaN, 0 < |x| < 2^-100): every thread sees the same rows, so every call returns false, and
  /// the op then runs the table's float kernels for the whole output (their bits). Within the
  /// weight-only float bound, in its own bits.
  bool (*gemm_w4f_amx)(const QGemmW4FArgs& args, std::int64_t n_begin, std::int64_t n_end) = nullptr;
  std::int64_t w4f_amx_rows = 0;
  /// quantize_rows' codes of `rows` rows of n floats, row r at x + r * n (contiguous), widened to
  /// int16 as they are stored at a + r * a_rs (a_rs >= n; nothing else of a is written): a depthwise
  /// conv's padded planes (an NCHW plane's rows) or padded pixel rows (a channels_last image's rows),
  /// one pass instead of the int8 codes and a widening copy, one call per plane or image; the same
  /// codes, and q.nan_seen as quantize_rows (only the rows' own values count). Null where the table
  /// has none (baseline: the two passes).
  void (*quantize_s16)(const float* x, std::int64_t rows, std::int64_t n, std::int16_t* a, std::int64_t a_rs,
                       const ActQuantArgs& q) = nullptr;
  /// XNOR rows' bits of n codes in {-1, 0, 1} (n a multiple of 8): bit e of sign[i / 8] set where
  /// code i = 8 (i / 8) + e is 1, of zero[i / 8] where it is 0; returns how many are 0, and with
  /// counts set, counts[j] = the zeros among codes [j * group, (j + 1) * group) (group a multiple of
  /// 8 dividing n: a conv's pixels). The scalar form (csrc's pack_codes8, 8 codes per 64-bit word)
  /// where the table has none: baseline.
  std::int64_t (*pack_sign_zero)(const std::int8_t* codes, std::int64_t n, std::uint8_t* sign, std::uint8_t* zero,
                                 std::int32_t* counts, std::int64_t group) = nullptr;
  /// dwconv runs stride-1 planes in vector registers along the plane (AVX-512): an NCHW depthwise
  /// conv with one output per input channel then takes the planar form, plane by plane, rather than
  /// transposes into and out of channels-last pixels.
  bool dwconv_flat = false;
  /// A padded int16 plane p [Hp, Wp] split into its four row / column parity planes, each [Hq, Wq]
  /// (Hq = ceil(Hp / 2), Wq = ceil(Wp / 2)) at q + (2a + b) Hq Wq: q_ab[r][c] = p[2r + a][2c + b]
  /// wherever 2r + a < Hp and 2c + b < Wp (the other entries are left as they are). A stride-2
  /// depthwise conv is then a stride-1 flat run over them (QDwConvArgs::tap_off); null where the
  /// table has none (those convs take the channels-last form).
  void (*split_planes_s16)(const std::int16_t* p, std::int64_t Hp, std::int64_t Wp, std::int16_t* q, std::int64_t Hq,
                           std::int64_t Wq) = nullptr;
  /// A W4A8 conv directly on its padded planes (QConvDirectArgs), output pixels [m_begin, m_end) of the
  /// batch, every output channel; null where the table has none (conv2d_w4a8 then builds patch rows
  /// for gemm_w4). The same bits as gemm_w4 on the patch rows.
  void (*conv_w4)(const QConvDirectArgs& args, std::int64_t m_begin, std::int64_t m_end) = nullptr;
  /// conv_w4 runs convs of K up to this (0: any K); above it, the patch rows and gemm_w4.
  std::int64_t conv_w4_max_k = 0;
  /// An int8 conv (conv2d_int8's "static" form, any weight bits as int8 codes) directly on its padded
  /// planes (QConvDirectArgs), output pixels [m_begin, m_end), every output channel; null where the
  /// table has none (the channels-last patch rows and the GEMMs).
  void (*conv_s8)(const QConvDirectArgs& args, std::int64_t m_begin, std::int64_t m_end) = nullptr;
  /// conv_s8 runs convs of K up to this (0: any K); above it, the patch rows and the GEMMs.
  std::int64_t conv_s8_max_k = 0;
  /// gemm_xnor writes column-major outputs (y_rs 1: a conv's NCHW image) without a scalar scatter
  /// from this many rows (0: never; an NCHW conv then transposes a row-major buffer itself). The
  /// AVX-512 table with VPOPCNTDQ: 16 (blocks of 16 rows transposed in registers).
  std::int64_t xnor_cols_rows = 0;
  /// gemm_xnor reads QGemmXnorArgs::wt (the weight's 16-row blocks, held per weight by the caller)
  /// for rows of KB bytes, 4 < KB <= this (0: never reads it). The AVX-512 table with VPOPCNTDQ:
  /// its transposed kernel's range, 512.
  std::int64_t xnor_blocks_max_kb = 0;
  /// torch.clamp(y, lo, hi)'s values in place on n floats (a conv's fused ReLU / ReLU6 / Hardtanh,
  /// on an image's output while it is in cache; lo <= hi, either infinite): y < lo -> lo, y > hi ->
  /// hi, NaN and -0.0 kept (min(hi, max(lo, y)) with y the second operand, which maxps / minps
  /// return for a NaN and for two zeros). Null where the table has none (baseline: the caller's loop).
  void (*clamp_f32)(float* y, std::int64_t n, float lo, float hi) = nullptr;
};

const QGemmKernels& qgemm_baseline();
const QGemmKernels* qgemm_avx2();
/// AVX-512 F/BW/VL + VNNI: vpdpbusd for W8A8 / ternary / binary, 512-bit XNOR popcount; the W4
/// kernels are the AVX2 table's.
const QGemmKernels* qgemm_avx512();
/// AVX-512 plus Intel AMX tiles: the W8A8 GEMM on tdpbsud from 16 activation rows (panel layout)
/// and, with AMX-BF16, the weight-only 4-bit GEMM on tdpbf16ps at every batch (gemm_w4f_amx); every
/// other kernel the AVX-512 table's.
const QGemmKernels* qgemm_amx();

inline const QGemmKernels* qgemm_kernels(Isa isa) {
  return table_for(isa, qgemm_baseline(), &qgemm_avx2, &qgemm_avx512, &qgemm_amx);
}
inline const QGemmKernels& qgemm_kernels() {
  return active_table(qgemm_baseline(), &qgemm_avx2, &qgemm_avx512, &qgemm_amx);
}

}  // namespace qatkit::kernels::cpu
