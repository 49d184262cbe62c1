// Integer GEMM compiled with AVX-512 F/BW/VL + VNNI (on top of AVX2): vpdpbusd multiplies 64
// unsigned x signed byte pairs and adds each group of four into an int32 lane without any int16
// step, so no product needs the AVX2 table's sign trick:
//   W8A8:    (a + 128) as the unsigned operand, w as the signed one; 128 * sum_k w[n, k] comes off
//            (summed once per column block with vpdpbusd against ones); K's last step masked.
//   ternary: the 2-bit codes {0, 1, 2} unsigned, the activations signed (finish_t2 as everywhere).
//   binary:  the weight bits are a byte mask as they stand (__mmask64: bit i selects byte i, the
//            1-bit file layout's order), expanded to bytes {0, 1}: vpdpbusd of those and the
//            activations sums the activations at set bits.
//   XNOR:    vpopcntq on 64 bytes at a time where the CPU has AVX512_VPOPCNTDQ (else AVX2's kernel).
// Exact integer sums throughout (modulo 2^32, as the baseline), so every output has the baseline's
// bits. W4A8: vpdpbusd on the nibbles of 16 weight rows at once, one row per lane. Weight-only W4
// (float activations): the same panel, dequantized in registers into float32 FMAs.
// The table (qgemm_avx512, and qgemm_amx on top of it) is put together here from the family files:
// avx512_w8a8.cpp (W8A8, and AMX-INT8 tiles), avx512_lowbit.cpp (ternary, binary, XNOR),
// avx512_w4a8.cpp, avx512_w4f.cpp (weight-only W4, and AMX-BF16 tiles), avx512_dwconv.cpp,
// avx512_quantize.cpp (the activations' codes); the weight-only int8 kernels are loops.h's,
// instantiated here at 512 bits.
#include "avx512_common.h"

#ifdef QATKIT_AVX512_KERNELS
namespace qatkit::kernels::cpu {

const QGemmKernels* qgemm_avx512() {
  static const QGemmKernels k = [] {
    QGemmKernels t = *qgemm_avx2();
    avx512::add_quantize(t);
    avx512::add_w8a8(t);
    avx512::add_lowbit(t);
    avx512::add_w4a8(t);
    avx512::add_dconv(t);
    avx512::add_w4f(t);
    avx512::add_dwconv(t);
    t.gemm_w8f = &detail::gemm_w8f_loop;  // loops.h's loop at 512 bits
    t.dequant_w8f = &detail::dequant_w8f_rows;
    // linear_w8_weight_only: the middle path's tiles from 12 rows, the GEMM path from 128 (4096 x
    // 4096: 8 rows: lane sums 1.96-2.39x FP32, tiles 1.94-2.14x; 12 rows 2.12-2.17x against 2.38-2.48x;
    // 16 rows 0.96-1.01x against 1.40-1.79x, 32 rows 0.72-0.77x against 1.38-1.63x; 64 rows tiles
    // 1.04-1.05x, GEMM path 0.78-0.83x; 128 rows 0.74-1.01x against 0.81-0.95x; 160 rows 0.78x against 0.86x)
    // On AMD (Zen 4, same process against FP32, MiniLM's shapes and 4096 x 4096) the tiles run every
    // row count: 128-384 rows tiles 1.00-1.16x (4096 x 4096, 256 rows: 1.53x), the GEMM path
    // 0.84-0.97x (1.21x); 640-2048 rows 0.97-1.20x against 0.88-1.05x (docs/benchmarks.md,
    // seventeenth session).
    t.w8f_gemm_rows = cpu_is_amd() ? std::numeric_limits<std::int64_t>::max() : 128;
    t.w8f_xt_rows = 12;
    t.gemm_w8f_xt = &detail::gemm_w8f_xt;  // loops.h's tiles at 512 bits
    t.wof_tile_rows = detail::kWofRows;
    return t;
  }();
  return &k;
}

const QGemmKernels* qgemm_amx() {
#ifdef QATKIT_AMX_KERNELS
  static const QGemmKernels k = [] {
    QGemmKernels t = *qgemm_avx512();
    avx512::add_w8a8_amx(t);
    avx512::add_w4f_amx(t);
    // int8 convs keep their patch rows on AMX: tdpbsud's GEMM from 16 rows, against which the
    // AVX-512 direct form (conv_s8) has not been measured
    t.conv_s8 = nullptr;
    return t;
  }();
  return &k;
#else
  return nullptr;
#endif
}

}  // namespace qatkit::kernels::cpu

#else

namespace qatkit::kernels::cpu {
const QGemmKernels* qgemm_avx512() { return nullptr; }
const QGemmKernels* qgemm_amx() { return nullptr; }
}  // namespace qatkit::kernels::cpu

#endif
