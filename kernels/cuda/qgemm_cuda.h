// Torch-free CUDA launchers of the integer GEMM family (inference only; docs/integer.md, "static"
// form): activation rows quantized to int8 (quantize_code, as the CPU), then one warp per output
// element summing the integer products exactly in int32 and the CPU's requantization (one
// int32 -> float32 conversion, one multiply, then the optional bias add; built with --fmad=false).
// Raw pointers, the caller's stream, no host sync.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "../common/qgemm_args.h"

namespace qatkit::kernels::cuda {

/// a[m, k] = code(x[m, k]) - shift for k < K, 0 for K <= k < K_row; a_sum[m] = sum_k a[m, k]
/// (a_sum may be nullptr). x: [M, K] float32, a: [M, K_row] int8. row_scale (or nullptr): [M], row
/// m quantized with inv_scale 1 / row_scale[m] instead of q.inv_scale (per-token scales).
cudaError_t launch_quantize_rows(const float* x, std::int8_t* a, std::int32_t* a_sum, std::int64_t M, std::int64_t K,
                                 std::int64_t K_row, const ActQuantArgs& q, cudaStream_t stream,
                                 const float* row_scale = nullptr);

/// The vector form of the kernels below (kernels/cuda/qgemm.cu), and beyond 16 rows (the glue)
/// torch._int_mm for int8, ternary and binary weights and dequantize-then-cuBLAS (float32) for the
/// weight-only ones: the default; QATKIT_CUDA_GEMV=plain (read on every call) selects the plain
/// form instead (docs/gpu.md: both equal the CPU bit for bit on an H200).
bool use_vector_form();

/// W4A8 beyond 16 rows on the tensor cores (mma.sync m16n8k32, sm_80+; the same bits): opt-in
/// while it has not run on a GPU, QATKIT_CUDA_MMA=1 (read on every call; the vector form only).
bool use_mma();

/// The current device's compute capability as 10 * major + minor (0 if the runtime cannot say).
int device_sm();

/// A depthwise conv (groups == C, each output channel n reading input channel n / mult) straight
/// from the float input: each tap's value quantized as launch_quantize_rows quantizes it (a padded
/// tap: the code of x = 0, the zero point), int32 products with the int8 weight row (the signed
/// codes; w_rs bytes per row, taps i * kw + j first), wrapping as the GEMMs' sums, then their
/// requantization fp32(acc + corr[n]) * out_scale[n] (+ bias[n]). y: [B, N, Ho, Wo] float32.
struct QConvDwArgs {
  const float* x = nullptr;  ///< [B, C, H, W], contiguous
  const std::int8_t* w = nullptr;
  std::int64_t w_rs = 0;
  const std::int32_t* corr = nullptr;
  const float* out_scale = nullptr;
  const float* bias = nullptr;  ///< or nullptr
  float* y = nullptr;
  std::int64_t B = 0, C = 0, H = 0, W = 0, N = 0, Ho = 0, Wo = 0;
  int kh = 1, kw = 1, sh = 1, sw = 1, ph = 0, pw = 0, dh = 1, dw = 1;
  ActQuantArgs q;
};
cudaError_t launch_conv_dw_s8(const QConvDwArgs& args, cudaStream_t stream);

/// QGemmArgs's GEMM (int8 weights).
cudaError_t launch_gemm_s8(const QGemmArgs& args, cudaStream_t stream);

/// QGemmPackedArgs's GEMM: weight_bits 2 (ternary layout) or 1 (binary layout).
cudaError_t launch_gemm_packed(const QGemmPackedArgs& args, int weight_bits, cudaStream_t stream);

/// The signed codes of a packed weight (weight_bits 2: the ternary layout, c - 1; 1: the binary
/// layout, 2 b - 1) as int8 rows codes[N, K_pad] (4-byte aligned, K_pad a multiple of 4): the
/// operand of torch._int_mm, whose int32 sums a . codes are launch_gemm_packed's.
cudaError_t launch_unpack_codes(const std::uint8_t* w, std::int8_t* codes, std::int64_t N, std::int64_t K_pad,
                                int weight_bits, cudaStream_t stream);

/// The float weights [N, K] of QGemmW4FArgs / QGemmW8FArgs (x, y, bias, M unused), each dequantized
/// as launch_gemm_w4f / launch_gemm_w8f dequantize it: the operand of a float32 cuBLAS GEMM.
cudaError_t launch_dequantize_w4f(const QGemmW4FArgs& args, float* out, cudaStream_t stream);
cudaError_t launch_dequantize_w8f(const QGemmW8FArgs& args, float* out, cudaStream_t stream);

/// QGemmW4Args's GEMM (a from launch_quantize_rows with K_row = K; a_gsum unused: the kernel sums
/// (a + act_offset) * q per group), either weight layout.
cudaError_t launch_gemm_w4(const QGemmW4Args& args, cudaStream_t stream);

/// QGemmW4FArgs's GEMM (float activations, the W4 row layout).
cudaError_t launch_gemm_w4f(const QGemmW4FArgs& args, cudaStream_t stream);

/// QGemmW8FArgs's GEMM (float activations, int8 weights; a warp per output: its own summation order).
cudaError_t launch_gemm_w8f(const QGemmW8FArgs& args, cudaStream_t stream);

}  // namespace qatkit::kernels::cuda
