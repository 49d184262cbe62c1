// What the AVX-512 files of the integer GEMM family share (avx512.cpp's table, avx512_w8a8.cpp,
// avx512_lowbit.cpp, avx512_w4a8.cpp, avx512_dconv.cpp, avx512_w4f.cpp, avx512_dwconv.cpp, avx512_quantize.cpp; each
// compiled with AVX-512 F/BW/VL + VNNI): the table fillers each file defines, and small helpers of
// internal linkage (each file compiles its own copy, as loops.h's).
#pragma once

#include "qgemm_cpu.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#define QATKIT_AVX512_KERNELS 1
// GCC 12's AVX-512 intrinsics (broadcast / extract / reduce) pass _mm512_undefined_* as their
// don't-care source operand, which its uninitialized-use analysis flags once inlined here (a known
// false positive): the warnings are off for this file only.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "loops.h"

// The AMX kernels need a compiler with AMX intrinsics (GCC 11+, clang 12+); without them the table
// "amx" is absent (qgemm_amx returns nullptr) and AMX CPUs run the AVX-512 table.
#if defined(__has_include)
#if __has_include(<amxtileintrin.h>) || __has_include(<amxintrin.h>)
#define QATKIT_AMX_KERNELS 1
#endif
#endif

namespace qatkit::kernels::cpu::avx512 {

// Each family's file puts its kernels into the AVX-512 table (qgemm_avx512, avx512.cpp) ...
void add_w8a8(QGemmKernels& t);    // gemm_s8: the row and panel layouts (avx512_w8a8.cpp)
void add_lowbit(QGemmKernels& t);  // gemm_t2, gemm_b1, gemm_xnor (avx512_lowbit.cpp)
void add_w4a8(QGemmKernels& t);    // gemm_w4 (avx512_w4a8.cpp)
void add_dconv(QGemmKernels& t);  // conv_w4, conv_s8 (avx512_dconv.cpp)
void add_w4f(QGemmKernels& t);     // gemm_w4f and its row thresholds (avx512_w4f.cpp)
void add_dwconv(QGemmKernels& t);  // dwconv_nhwc, dwconv (avx512_dwconv.cpp)
void add_quantize(QGemmKernels& t);  // quantize_rows, quantize_s16 (avx512_quantize.cpp)
#ifdef QATKIT_AMX_KERNELS
// ... and into the AMX one (qgemm_amx), on top of the AVX-512 table's.
void add_w8a8_amx(QGemmKernels& t);  // gemm_s8 on AMX-INT8 tiles (avx512_w8a8.cpp)
void add_w4f_amx(QGemmKernels& t);   // gemm_w4f_amx where the CPU has AMX-BF16 (avx512_w4f.cpp)
#endif

namespace {

inline std::uint32_t hsum(__m512i v) { return static_cast<std::uint32_t>(_mm512_reduce_add_epi32(v)); }

// Transposes a 16 x 16 matrix of dwords held as 16 rows: r[e] becomes column e (lane i = old r[i][e]).
inline void transpose16(__m512i r[16]) {
  __m512i t[16];
  #pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  __m512i u[16];  // u[4i + j], 128-bit lane L: element 4L + j of rows 4i .. 4i + 3
  #pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {
    u[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
    u[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
    u[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    u[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
  #pragma GCC unroll 4
  for (int j = 0; j < 4; ++j) {  // 4 x 4 transpose of 128-bit lanes across u[j], u[4 + j], u[8 + j], u[12 + j]
    const __m512i v0 = _mm512_shuffle_i32x4(u[j], u[4 + j], 0x44), v1 = _mm512_shuffle_i32x4(u[j], u[4 + j], 0xEE);
    const __m512i v2 = _mm512_shuffle_i32x4(u[8 + j], u[12 + j], 0x44), v3 = _mm512_shuffle_i32x4(u[8 + j], u[12 + j], 0xEE);
    r[j] = _mm512_shuffle_i32x4(v0, v2, 0x88);
    r[4 + j] = _mm512_shuffle_i32x4(v0, v2, 0xDD);
    r[8 + j] = _mm512_shuffle_i32x4(v1, v3, 0x88);
    r[12 + j] = _mm512_shuffle_i32x4(v1, v3, 0xDD);
  }
}

// Rows [n, n + nr) of a float [rows, G] matrix transposed into dst [G][16] (zeros past nr).
inline void transpose_rows_f32(const float* src, std::int64_t G, std::int64_t n, int nr, float* dst) {
  for (std::int64_t g0 = 0; g0 < G; g0 += 16) {
    const int ng = static_cast<int>(std::min<std::int64_t>(16, G - g0));
    const __mmask16 mask = static_cast<__mmask16>((1u << ng) - 1);
    __m512i r[16];
    #pragma GCC unroll 16
    for (int i = 0; i < 16; ++i) {
      r[i] = i < nr ? _mm512_castps_si512(_mm512_maskz_loadu_ps(mask, src + (n + i) * G + g0)) : _mm512_setzero_si512();
    }
    transpose16(r);
    for (int e = 0; e < ng; ++e) _mm512_storeu_si512(dst + (g0 + e) * 16, r[e]);
  }
}

// The row layout's block transposed into the panel layout (the bytes pack_int4_panel would hold).
inline void w4_pack_panel(const std::uint8_t* w, std::int64_t K, std::int64_t n, int nr, std::int32_t* codes) {
  const std::int64_t KB = K / 2, steps = (KB + 63) / 64;
  for (std::int64_t s = 0; s < steps; ++s) {
    const std::int64_t b = s * 64;
    const __mmask64 mask = b + 64 <= KB ? ~__mmask64{0} : (__mmask64{1} << (KB - b)) - 1;
    __m512i r[16];
    #pragma GCC unroll 16
    for (int i = 0; i < 16; ++i) r[i] = i < nr ? _mm512_maskz_loadu_epi8(mask, w + (n + i) * KB + b) : _mm512_setzero_si512();
    transpose16(r);
    #pragma GCC unroll 16
    for (int e = 0; e < 16; ++e) _mm512_storeu_si512(codes + (s * 16 + e) * 16, r[e]);
  }
}

#ifdef QATKIT_AMX_KERNELS
// This thread's scratch of n T, 64-byte aligned (a tile row that crosses a cache line costs two
// accesses: tiles from a vector's 16-byte aligned storage ran 1.3-1.5x slower).
template <class T, class Tag>
T* amx_scratch(std::size_t n) {
  const auto p = reinterpret_cast<std::uintptr_t>(detail::thread_scratch<T, Tag>(n + 64 / sizeof(T)));
  return reinterpret_cast<T*>((p + 63) & ~std::uintptr_t{63});
}

struct alignas(64) AmxTileConfig {
  std::uint8_t palette = 1, start_row = 0;
  std::uint8_t reserved[14] = {};
  std::uint16_t colsb[16] = {};
  std::uint8_t rows[16] = {};
};
#endif

}  // namespace
}  // namespace qatkit::kernels::cpu::avx512

#endif
