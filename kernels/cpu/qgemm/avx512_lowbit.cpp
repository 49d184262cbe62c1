// Ternary (W2A8), binary (W1A8) and XNOR (W1A1) GEMMs on AVX-512 VNNI (XNOR: AVX512_VPOPCNTDQ).
#include "avx512_common.h"

#ifdef QATKIT_AVX512_KERNELS
namespace qatkit::kernels::cpu::avx512 {
namespace {

// ---------------------------------------------------------------- ternary (W2A8)

// 64 code bytes = two 128-weight blocks; shift 2i and mask 3 give the codes of k = 32i + j of the
// first block in bytes 0-31 and of the second in bytes 32-63, so the activations are the two
// matching 32-byte runs. An odd last block runs with the upper half masked to zero.
inline __m512i t2_act(const std::int8_t* a, std::int64_t b, int i, bool two) {
  const __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + b + 32 * i));
  const __m256i hi = two ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + b + 128 + 32 * i)) : _mm256_setzero_si256();
  return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

template <int MR, int NR>
void t2_block(const QGemmPackedArgs& g, std::int64_t m, std::int64_t n) {
  const std::int64_t KB = g.K_pad / 4;
  const __m512i mask3 = _mm512_set1_epi8(3);
  __m512i acc[MR][NR];
  #pragma GCC unroll 4
  for (int i = 0; i < MR; ++i)
    #pragma GCC unroll 4
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_si512();
  for (std::int64_t b = 0; b < g.K_pad; b += 256) {
    const bool two = b + 256 <= g.K_pad;
    __m512i w[NR];
    #pragma GCC unroll 4
    for (int j = 0; j < NR; ++j) {
      const std::uint8_t* p = g.w + (n + j) * KB + b / 4;
      w[j] = two ? _mm512_loadu_si512(p) : _mm512_maskz_loadu_epi8(0xFFFFFFFFull, p);
    }
    #pragma GCC unroll 4
    for (int s = 0; s < 4; ++s) {
      __m512i c[NR];
      #pragma GCC unroll 4
      for (int j = 0; j < NR; ++j) c[j] = _mm512_and_si512(_mm512_srli_epi16(w[j], 2 * s), mask3);
      #pragma GCC unroll 4
      for (int i = 0; i < MR; ++i) {
        const __m512i av = t2_act(g.a + (m + i) * g.K_pad, b, s, two);
        #pragma GCC unroll 4
        for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], c[j], av);
      }
    }
  }
  #pragma GCC unroll 4
  for (int i = 0; i < MR; ++i)
    #pragma GCC unroll 4
    for (int j = 0; j < NR; ++j)
      g.y[(m + i) * g.y_rs + (n + j) * g.y_cs] = detail::finish_t2(hsum(acc[i][j]), g, m + i, n + j);
}

// ---------------------------------------------------------------- binary (W1A8)

// Activations at K_pad (a multiple of 32): 64-byte steps, a last 32-byte step masked.
template <int MR, int NR>
void b1_block(const QGemmPackedArgs& g, std::int64_t m, std::int64_t n) {
  const std::int64_t KB = g.K_pad / 8;
  const __m512i ones = _mm512_set1_epi8(1);
  __m512i acc[MR][NR];
  #pragma GCC unroll 4
  for (int i = 0; i < MR; ++i)
    #pragma GCC unroll 4
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_si512();
  for (std::int64_t k = 0; k < g.K_pad; k += 64) {
    const bool full = k + 64 <= g.K_pad;
    __mmask64 wm[NR];
    #pragma GCC unroll 4
    for (int j = 0; j < NR; ++j) {
      const std::uint8_t* p = g.w + (n + j) * KB + k / 8;
      std::uint64_t bits;
      if (full) {
        std::memcpy(&bits, p, 8);
      } else {
        std::uint32_t half;
        std::memcpy(&half, p, 4);
        bits = half;
      }
      wm[j] = _cvtu64_mask64(bits);
    }
    __m512i wb[NR];  // the bits as bytes {0, 1}: the unsigned operand, so sum_k bit_k * a_k is one vpdpbusd
    #pragma GCC unroll 4
    for (int j = 0; j < NR; ++j) wb[j] = _mm512_maskz_mov_epi8(wm[j], ones);
    #pragma GCC unroll 4
    for (int i = 0; i < MR; ++i) {
      const std::int8_t* ap = g.a + (m + i) * g.K_pad + k;
      const __m512i a = full ? _mm512_loadu_si512(ap) : _mm512_maskz_loadu_epi8(0xFFFFFFFFull, ap);
      #pragma GCC unroll 4
      for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], wb[j], a);
    }
  }
  #pragma GCC unroll 4
  for (int i = 0; i < MR; ++i)
    #pragma GCC unroll 4
    for (int j = 0; j < NR; ++j)
      g.y[(m + i) * g.y_rs + (n + j) * g.y_cs] = detail::finish_b1(hsum(acc[i][j]), g, m + i, n + j);
}

// Sums each of 16 vectors' lanes: lane i of the result is the sum of r[i]'s 16 lanes (modulo 2^32).
inline __m512i reduce16(__m512i r[16]) {
  __m512i p[8], q[4];
  for (int i = 0; i < 8; ++i)  // per 128-bit lane: [r0 lanes 0+2, r1 0+2, r0 1+3, r1 1+3]
    p[i] = _mm512_add_epi32(_mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]), _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]));
  for (int i = 0; i < 4; ++i)  // per 128-bit lane: the lane's sums of r[4i .. 4i + 3] in order
    q[i] = _mm512_add_epi32(_mm512_unpacklo_epi64(p[2 * i], p[2 * i + 1]), _mm512_unpackhi_epi64(p[2 * i], p[2 * i + 1]));
  // across 128-bit lanes: 0x88 takes lanes (0, 2) of each source, 0xDD lanes (1, 3)
  const __m512i s0 = _mm512_add_epi32(_mm512_shuffle_i32x4(q[0], q[1], 0x88), _mm512_shuffle_i32x4(q[0], q[1], 0xDD));
  const __m512i s1 = _mm512_add_epi32(_mm512_shuffle_i32x4(q[2], q[3], 0x88), _mm512_shuffle_i32x4(q[2], q[3], 0xDD));
  // s0 lanes: [q0 (0+1), q0 (2+3), q1 (0+1), q1 (2+3)] -> one more fold gives [q0, q1, q2, q3]
  return _mm512_add_epi32(_mm512_shuffle_i32x4(s0, s1, 0x88), _mm512_shuffle_i32x4(s0, s1, 0xDD));
}

// Outputs y[m, n .. n + 16) of the packed kernels from their int32 sums: requantize's operations
// (float(acc) * out_scale, + bias) in vectors, so its bits; a conv's columns y_cs apart.
inline void store_requantized16(const QGemmPackedArgs& g, std::int64_t m, std::int64_t n, __m512i acc) {
  __m512 y = _mm512_mul_ps(_mm512_cvtepi32_ps(acc), _mm512_loadu_ps(g.out_scale + n));
  if (g.bias) y = _mm512_add_ps(y, _mm512_loadu_ps(g.bias + n));
  if (g.y_cs == 1) {
    _mm512_storeu_ps(g.y + m * g.y_rs + n, y);
  } else {
    alignas(64) float t[16];
    _mm512_store_ps(t, y);
    for (int j = 0; j < 16; ++j) g.y[m * g.y_rs + (n + j) * g.y_cs] = t[j];
  }
}

// GEMV weight streams: rows this far ahead of the block in hand are prefetched into L2 a line or a
// few per K step, spread over the arithmetic (32 KiB ahead at K = 4096 for 1-bit rows; 48-128 rows
// measured alike; a burst of prefetches per block ran ~1.35x slower).
constexpr std::int64_t kAhead = 64;

// acc += vpdpbusd(u, s) in place: GCC 12 copies the accumulator of _mm512_dpbusd_epi32 into a
// fresh register and back on every call inside an unrolled loop (two moves per product, which fill
// the front end); the asm form keeps it where it is.
inline void dpbusd_inplace(__m512i& acc, __m512i u, __m512i s) {
  asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(u), "v"(s));
}

// sum_k bit[r, k] * a[k] of 8 weight rows (rows KB bytes apart) in 8 accumulators: 8 independent
// vpdpbusd chains (latency hidden), each row's 64 bits loaded straight into a mask register. pf (or
// null): 8 rows further on (K_pad bytes), prefetched into L2 one line per step (kAhead).
inline void b1_dot8(const std::uint8_t* w, std::int64_t KB, const std::int8_t* ap, std::int64_t K_pad, const char* pf,
                    __m512i* out) {
  const __m512i ones = _mm512_set1_epi8(1);
  __m512i c0 = _mm512_setzero_si512(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0, c7 = c0;
  const auto step = [&](__m512i a, std::int64_t byte, bool full) {
    const auto bits = [&](int j) {
      std::uint64_t b = 0;
      std::memcpy(&b, w + j * KB + byte, full ? 8 : 4);
      return _mm512_maskz_mov_epi8(_cvtu64_mask64(b), ones);
    };
    dpbusd_inplace(c0, bits(0), a);
    dpbusd_inplace(c1, bits(1), a);
    dpbusd_inplace(c2, bits(2), a);
    dpbusd_inplace(c3, bits(3), a);
    dpbusd_inplace(c4, bits(4), a);
    dpbusd_inplace(c5, bits(5), a);
    dpbusd_inplace(c6, bits(6), a);
    dpbusd_inplace(c7, bits(7), a);
  };
  std::int64_t k = 0;
  if (pf) {
    for (; k + 64 <= K_pad; k += 64) {
      _mm_prefetch(pf + k, _MM_HINT_T1);
      step(_mm512_loadu_si512(ap + k), k / 8, true);
    }
  }
  for (; k + 64 <= K_pad; k += 64) step(_mm512_loadu_si512(ap + k), k / 8, true);
  if (k < K_pad) step(_mm512_maskz_loadu_epi8(0xFFFFFFFFull, ap + k), k / 8, false);  // a last 32-byte step
  out[0] = c0, out[1] = c1, out[2] = c2, out[3] = c3, out[4] = c4, out[5] = c5, out[6] = c6, out[7] = c7;
}

// The binary GEMV: 16 weight rows against one activation row (two passes of eight rows), one
// 16-lane reduction and the requantization of 16 outputs in vectors (the scalar form's operations).
void b1_gemv16(const QGemmPackedArgs& g, std::int64_t m, std::int64_t n, const char* pf) {
  const std::int64_t KB = g.K_pad / 8;
  const std::int8_t* ap = g.a + m * g.K_pad;
  __m512i acc[16];
  b1_dot8(g.w + n * KB, KB, ap, g.K_pad, pf, acc);
  b1_dot8(g.w + (n + 8) * KB, KB, ap, g.K_pad, pf ? pf + 8 * KB : nullptr, acc + 8);
  // finish_b1: 2 * sum_set - a_sum + corr, then requantize
  const __m512i s = _mm512_add_epi32(
      _mm512_sub_epi32(_mm512_slli_epi32(reduce16(acc), 1), _mm512_set1_epi32(g.a_sum[m])),
      _mm512_loadu_si512(g.corr + n));
  store_requantized16(g, m, n, s);
}

// Bytes per weight row of the packed kernels (the ternary and binary layouts, XNOR's).
inline std::int64_t row_bytes(const QGemmPackedArgs& g, int bits) { return g.K_pad * bits / 8; }
inline std::int64_t row_bytes(const QGemmXnorArgs& g, int) { return g.KB; }

// Register blocks over 16-column blocks. With fewer than 4 activation rows each weight row is read
// once per call, in rows of a few hundred bytes that the hardware prefetcher does not follow far
// enough: the rows two blocks ahead are prefetched into L2 (Bits: the layout's bits per weight).
template <class Args, int Bits, void (*B44)(const Args&, std::int64_t, std::int64_t),
          void (*B41)(const Args&, std::int64_t, std::int64_t), void (*B14)(const Args&, std::int64_t, std::int64_t),
          void (*B11)(const Args&, std::int64_t, std::int64_t)>
void blocked(const Args& g, std::int64_t n_begin, std::int64_t n_end) {
  const std::int64_t rb = row_bytes(g, Bits);
  for (std::int64_t n0 = n_begin; n0 < n_end; n0 += 16) {  // 16 weight rows stay in L1 across every m
    const std::int64_t n1 = std::min(n_end, n0 + 16);
    if (g.M < 4 && n0 + 32 < n_end) {
      const char* next = reinterpret_cast<const char*>(g.w + (n0 + 32) * rb);
      const std::int64_t bytes = std::min<std::int64_t>(16, n_end - n0 - 32) * rb;
      for (std::int64_t o = 0; o < bytes; o += 64) _mm_prefetch(next + o, _MM_HINT_T1);
    }
    std::int64_t m = 0;
    for (; m + 4 <= g.M; m += 4) {
      std::int64_t n = n0;
      for (; n + 4 <= n1; n += 4) B44(g, m, n);
      for (; n < n1; ++n) B41(g, m, n);
    }
    for (; m < g.M; ++m) {
      std::int64_t n = n0;
      for (; n + 4 <= n1; n += 4) B14(g, m, n);
      for (; n < n1; ++n) B11(g, m, n);
    }
  }
}

// The ternary GEMV. One activation row laid out once per call as the steps read it (re: 64 bytes
// per code shift s of each 256-weight step, the two matching 32-byte runs, zeros past an odd last
// block), then 16 weight rows in four passes of four rows x four code shifts (t2_dot4; vpdpbusd in
// place), the stream 64 rows ahead prefetched into L2 a few lines per step, one 16-lane reduction,
// the requantization in vectors (finish_t2's operations).
inline void t2_layout_row(const std::int8_t* a, std::int64_t K_pad, std::int8_t* re) {  // re: K_pad rounded up to 256
  for (std::int64_t b = 0; b < K_pad; b += 256)
    for (int s = 0; s < 4; ++s) _mm512_storeu_si512(re + b + 64 * s, t2_act(a, b, s, b + 256 <= K_pad));
}

// 4 weight rows, the codes of shift s masked in place (w & (3 << 2s): 4^s times the code) into an
// accumulator of their own: no shift per product, where vpsrlw and vpdpbusd share one port (the
// shift form ran at ~8 cycles per 64 weight bytes on the model 167 Xeon: 4 of each on port 0). A
// lane's sum of shift s is a multiple of 4^s, so the >> 2s that combines them is exact (|sum| <=
// 256 K_pad: int32 for K_pad < 2^23, as the shift form's). pf: 4 rows further on (K_pad bytes).
inline void t2_dot4(const std::uint8_t* w, std::int64_t KB, const std::int8_t* re, std::int64_t K_pad, const char* pf,
                    __m512i* out) {
  __m512i c[4][4];
  #pragma GCC unroll 4
  for (int r = 0; r < 4; ++r)
    #pragma GCC unroll 4
    for (int s = 0; s < 4; ++s) c[r][s] = _mm512_setzero_si512();
  for (std::int64_t b = 0; b < K_pad; b += 256) {
    const bool two = b + 256 <= K_pad;
    if (pf) {  // 4 rows' worth of the stream ahead (4 x KB = K_pad bytes): 256 bytes per step
      #pragma GCC unroll 4
      for (int l = 0; l < 4; ++l) _mm_prefetch(pf + b + 64 * l, _MM_HINT_T1);
    }
    __m512i wv[4];
    #pragma GCC unroll 4
    for (int r = 0; r < 4; ++r) {
      const std::uint8_t* p = w + r * KB + b / 4;
      wv[r] = two ? _mm512_loadu_si512(p) : _mm512_maskz_loadu_epi8(0xFFFFFFFFull, p);
    }
    #pragma GCC unroll 4
    for (int s = 0; s < 4; ++s) {
      const __m512i av = _mm512_loadu_si512(re + b + 64 * s);
      const __m512i mask = _mm512_set1_epi8(static_cast<char>(3 << (2 * s)));
      #pragma GCC unroll 4
      for (int r = 0; r < 4; ++r) dpbusd_inplace(c[r][s], _mm512_and_si512(wv[r], mask), av);
    }
  }
  #pragma GCC unroll 4
  for (int r = 0; r < 4; ++r) {
    out[r] = _mm512_add_epi32(_mm512_add_epi32(c[r][0], _mm512_srai_epi32(c[r][1], 2)),
                              _mm512_add_epi32(_mm512_srai_epi32(c[r][2], 4), _mm512_srai_epi32(c[r][3], 6)));
  }
}

void t2_gemv16(const QGemmPackedArgs& g, std::int64_t m, std::int64_t n, const std::int8_t* re, const char* pf) {
  const std::int64_t KB = g.K_pad / 4;
  __m512i acc[16];
  #pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) t2_dot4(g.w + (n + 4 * i) * KB, KB, re, g.K_pad, pf ? pf + 4 * i * KB : nullptr, acc + 4 * i);
  // finish_t2: sum_ac - a_sum + corr, then requantize
  const __m512i s = _mm512_add_epi32(_mm512_sub_epi32(reduce16(acc), _mm512_set1_epi32(g.a_sum[m])),
                                     _mm512_loadu_si512(g.corr + n));
  store_requantized16(g, m, n, s);
}

void gemm_t2(const QGemmPackedArgs& g, std::int64_t n_begin, std::int64_t n_end) {
  if (g.M < 4) {  // GEMV: 16 rows at a time, the rest by the register blocks
    const std::int64_t rb = row_bytes(g, 2);
    const std::int64_t Kr = (g.K_pad + 255) / 256 * 256;  // whole steps: an odd last block's upper half zero
    std::vector<std::int8_t> re(static_cast<std::size_t>(g.M * Kr));
    for (std::int64_t m = 0; m < g.M; ++m) t2_layout_row(g.a + m * g.K_pad, g.K_pad, re.data() + m * Kr);
    std::int64_t n0 = n_begin;
    for (; n0 + 16 <= n_end; n0 += 16) {
      const char* pf = n0 + kAhead + 16 <= n_end ? reinterpret_cast<const char*>(g.w + (n0 + kAhead) * rb) : nullptr;
      for (std::int64_t m = 0; m < g.M; ++m) t2_gemv16(g, m, n0, re.data() + m * Kr, m == 0 ? pf : nullptr);
    }
    if (n0 == n_end) return;
    n_begin = n0;
  }
  blocked<QGemmPackedArgs, 2, t2_block<4, 4>, t2_block<4, 1>, t2_block<1, 4>, t2_block<1, 1>>(g, n_begin, n_end);
}

// Binary on the panel layout (QGemmPackedArgs::panel) with 4 or more activation rows: per step (8
// weights of 32 rows) and 16-row half, the half's 16 bytes broadcast to every 128-bit chunk, vpshufb
// copies row L's byte into all four bytes of lane L, and an and with (1, 2, 4, 8) (then (16, 32, 64,
// 128)) and vpminub with 1 give the 0 / 1 bytes of k = 8 s .. 8 s + 3 (+ 4 .. 7) of the 16 rows: one
// row per 32-bit lane, so vpdpbusd with four broadcast activations adds 16 rows' sums into 16 lanes
// (no horizontal sums). Five uops expand 128 weights for MR activation rows, two vpdpbusd per row:
// the vpdpbusd rate of the row layout's blocks at MR = 4, where the lookup tables (fewer uops per
// weight for one activation row, but every row its own lookups) ran 1.4x slower at batch 64.
// idx: byte p holds p / 4 (in every 128-bit chunk, the chunk's four lanes' rows 4c .. 4c + 3).
template <int MR>
void b1p_block(const QGemmPackedArgs& g, std::int64_t m, std::int64_t R, std::int64_t n_begin, std::int64_t n_end,
               __m512i idx) {
  const std::int64_t S = g.K_pad / 8;
  const std::uint8_t* wb = g.w + R * S * 32;
  const __m512i blo = _mm512_set1_epi32(0x08040201), bhi = _mm512_set1_epi32(static_cast<int>(0x80402010u));
  const __m512i ones = _mm512_set1_epi8(1);
  __m512i acc[MR][2];  // [activation row][half]
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 2
    for (int j = 0; j < 2; ++j) acc[i][j] = _mm512_setzero_si512();
  for (std::int64_t s = 0; s < S; ++s) {
    __m512i wv[4];
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {
      const __m512i rep = _mm512_shuffle_epi8(
          _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wb + 32 * s + 16 * h))), idx);
      wv[2 * h] = _mm512_min_epu8(_mm512_and_si512(rep, blo), ones);
      wv[2 * h + 1] = _mm512_min_epu8(_mm512_and_si512(rep, bhi), ones);
    }
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const std::int8_t* ap = g.a + (m + i) * g.K_pad + 8 * s;
      std::int32_t a_lo, a_hi;
      std::memcpy(&a_lo, ap, 4);
      std::memcpy(&a_hi, ap + 4, 4);
      const __m512i v0 = _mm512_set1_epi32(a_lo), v1 = _mm512_set1_epi32(a_hi);
      dpbusd_inplace(acc[i][0], wv[0], v0);
      dpbusd_inplace(acc[i][1], wv[2], v0);
      dpbusd_inplace(acc[i][0], wv[1], v1);
      dpbusd_inplace(acc[i][1], wv[3], v1);
    }
  }
  for (int i = 0; i < MR; ++i) {
    for (int h = 0; h < 2; ++h) {
      const std::int64_t n = R * 32 + 16 * h;
      const __m512i sums = acc[i][h];
      if (n >= n_begin && n + 16 <= n_end) {  // finish_b1: 2 * sum_set - a_sum + corr, then requantize
        const __m512i t = _mm512_add_epi32(
            _mm512_sub_epi32(_mm512_slli_epi32(sums, 1), _mm512_set1_epi32(g.a_sum[m + i])),
            _mm512_loadu_si512(g.corr + n));
        store_requantized16(g, m + i, n, t);
      } else {
        alignas(64) std::int32_t t[16];
        _mm512_store_si512(t, sums);
        for (std::int64_t r = std::max(n, n_begin); r < std::min(n + 16, n_end); ++r)
          g.y[(m + i) * g.y_rs + r * g.y_cs] = detail::finish_b1(static_cast<std::uint32_t>(t[r - n]), g, m + i, r);
      }
    }
  }
}

void gemm_b1(const QGemmPackedArgs& g, std::int64_t n_begin, std::int64_t n_end) {
  if (g.panel) {
    if (g.M < 4) return qgemm_avx2()->gemm_b1(g, n_begin, n_end);  // the lookup-table kernel
    alignas(64) std::int8_t lane_of[64];
    for (int p = 0; p < 64; ++p) lane_of[p] = static_cast<std::int8_t>(p / 4);
    const __m512i idx = _mm512_load_si512(lane_of);
    for (std::int64_t R = n_begin / 32; R * 32 < n_end; ++R) {  // 32 weight rows stay in L1 across every m
      std::int64_t m = 0;
      for (; m + 8 <= g.M; m += 8) b1p_block<8>(g, m, R, n_begin, n_end, idx);
      for (; m + 4 <= g.M; m += 4) b1p_block<4>(g, m, R, n_begin, n_end, idx);
      for (; m < g.M; ++m) b1p_block<1>(g, m, R, n_begin, n_end, idx);
    }
    return;
  }
  if (g.M < 4) {  // GEMV: 16 rows at a time, the rest by the register blocks
    const std::int64_t rb = row_bytes(g, 1);
    std::int64_t n0 = n_begin;
    for (; n0 + 16 <= n_end; n0 += 16) {
      const char* pf = n0 + kAhead + 16 <= n_end ? reinterpret_cast<const char*>(g.w + (n0 + kAhead) * rb) : nullptr;
      for (std::int64_t m = 0; m < g.M; ++m) b1_gemv16(g, m, n0, m == 0 ? pf : nullptr);
    }
    if (n0 == n_end) return;
    n_begin = n0;
  }
  blocked<QGemmPackedArgs, 1, b1_block<4, 4>, b1_block<4, 1>, b1_block<1, 4>, b1_block<1, 1>>(g, n_begin, n_end);
}

// ---------------------------------------------------------------- XNOR (W1A1)

// popcount(a ^ w) by vpopcntq (AVX512_VPOPCNTDQ: Ice Lake and later, Zen 4), 64 bytes of each pair
// per step into 64-bit lanes: xor, popcount, add, three uops per 512 weight-activation pairs where
// the nibble-lookup popcount took eight. Compiled for that extension alone (the target attribute;
// the file's flags stay F/BW/VL/VNNI) and chosen at run time; a CPU without it (Skylake-X, Cascade
// Lake) runs the AVX2 table's XNOR kernel. The last step of a row is masked (zero bytes count 0).
template <int MR, int NR>
__attribute__((target("avx512vpopcntdq"))) void xnor_block(const QGemmXnorArgs& g, std::int64_t m, std::int64_t n) {
  __m512i acc[MR][NR];
#pragma GCC unroll 4
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_si512();
  for (std::int64_t b = 0; b < g.KB; b += 64) {
    const __mmask64 mask = b + 64 <= g.KB ? ~__mmask64{0} : (std::uint64_t{1} << (g.KB - b)) - 1;
    __m512i a[MR];
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i) a[i] = _mm512_maskz_loadu_epi8(mask, g.a + (m + i) * g.KB + b);
#pragma GCC unroll 4
    for (int j = 0; j < NR; ++j) {
      const __m512i w = _mm512_maskz_loadu_epi8(mask, g.w + (n + j) * g.KB + b);
#pragma GCC unroll 4
      for (int i = 0; i < MR; ++i) acc[i][j] = _mm512_add_epi64(acc[i][j], _mm512_popcnt_epi64(_mm512_xor_si512(a[i], w)));
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j)
      g.y[(m + i) * g.y_rs + (n + j) * g.y_cs] =
          detail::finish_xnor(_mm512_reduce_add_epi64(acc[i][j]), g, m + i, n + j);
}

// XNOR on 16 weight rows transposed by qwords: per block, wt[q][r] = qword q of row r (zeros past
// KB and past the block's rows), so one vpopcntq of a broadcast activation qword xor wt[q] counts 8
// rows' differing bits into 8 int64 lanes: no horizontal sums, no partial 64-byte steps (a 3x3 conv
// over 32 channels has rows of 36 bytes), and the finish (finish_xnor's operations: the zero-mask
// correction, a_k - 2 * count, float(acc) * (row_scale * col_scale), + bias) runs on 8 lanes at
// once. MR activation rows per pass share each wt load.
// One pass of xnor_rows_t over the qwords: acc += popcount(a ^ w) (XOR), or acc -= popcount(z & w)
// (the zero-mask correction, rows with has_zero only; QGemmXnorArgs reads z nowhere else).
template <int MR, bool ZeroPass>
__attribute__((target("avx512vpopcntdq"))) inline void xnor_pass_t(const QGemmXnorArgs& g, std::int64_t m,
                                                                   const std::uint64_t* wt, std::int64_t Q,
                                                                   __m512i (&acc)[MR][2]) {
  const std::uint8_t* rows = ZeroPass ? g.z : g.a;
  const std::int64_t Qf = g.KB / 8;  // whole qwords of an activation row; a 4-byte tail when KB % 8
  for (std::int64_t q = 0; q < Q; ++q) {
    const __m512i w0 = _mm512_loadu_si512(wt + q * 16), w1 = _mm512_loadu_si512(wt + q * 16 + 8);
    #pragma GCC unroll 4
    for (int i = 0; i < MR; ++i) {
      const std::uint8_t* r = rows + (m + i) * g.KB + q * 8;
      std::uint64_t v = 0;
      if (ZeroPass && !g.has_zero[m + i]) {
      } else if (q < Qf) {
        std::memcpy(&v, r, 8);
      } else {
        std::uint32_t t;
        std::memcpy(&t, r, 4);
        v = t;
      }
      const __m512i a = _mm512_set1_epi64(static_cast<long long>(v));
      if (ZeroPass) {
        acc[i][0] = _mm512_sub_epi64(acc[i][0], _mm512_popcnt_epi64(_mm512_and_si512(a, w0)));
        acc[i][1] = _mm512_sub_epi64(acc[i][1], _mm512_popcnt_epi64(_mm512_and_si512(a, w1)));
      } else {
        acc[i][0] = _mm512_add_epi64(acc[i][0], _mm512_popcnt_epi64(_mm512_xor_si512(a, w0)));
        acc[i][1] = _mm512_add_epi64(acc[i][1], _mm512_popcnt_epi64(_mm512_xor_si512(a, w1)));
      }
    }
  }
}

// Outputs (m + i, n + j) go to y0[i * y_rs + j * y_cs] (xnor_rows_d as well).
template <int MR>
__attribute__((target("avx512vpopcntdq"))) void xnor_rows_t(const QGemmXnorArgs& g, std::int64_t m, std::int64_t n,
                                                            int nr, const std::uint64_t* wt, std::int64_t Q,
                                                            float* y0, std::int64_t y_rs, std::int64_t y_cs) {
  __m512i acc[MR][2];
  #pragma GCC unroll 4
  for (int i = 0; i < MR; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_si512();
  xnor_pass_t<MR, false>(g, m, wt, Q, acc);
  bool any_zero = false;
  #pragma GCC unroll 4
  for (int i = 0; i < MR; ++i) any_zero = any_zero || g.has_zero[m + i];
  if (any_zero) xnor_pass_t<MR, true>(g, m, wt, Q, acc);
  #pragma GCC unroll 4
  for (int i = 0; i < MR; ++i) {
    const __m256 rs = _mm256_set1_ps(g.row_scale[m + i]);
    const __m256i ak = _mm256_set1_epi32(g.a_k[m + i]);
    for (int h = 0; h < 2 && 8 * h < nr; ++h) {
      const __mmask8 mask = static_cast<__mmask8>(nr - 8 * h >= 8 ? 0xFF : (1u << (nr - 8 * h)) - 1);
      const __m256i cnt = _mm512_cvtepi64_epi32(acc[i][h]);
      const __m256i v = _mm256_sub_epi32(ak, _mm256_add_epi32(cnt, cnt));
      const __m256 sc = _mm256_mul_ps(rs, _mm256_maskz_loadu_ps(mask, g.col_scale + n + 8 * h));
      __m256 y = _mm256_mul_ps(_mm256_cvtepi32_ps(v), sc);
      if (g.bias) y = _mm256_add_ps(y, _mm256_maskz_loadu_ps(mask, g.bias + n + 8 * h));
      if (y_cs == 1) {
        _mm256_mask_storeu_ps(y0 + i * y_rs + 8 * h, mask, y);
      } else {
        alignas(32) float t[8];
        _mm256_store_ps(t, y);
        for (int j = 0; j < 8 && 8 * h + j < nr; ++j) y0[i * y_rs + (8 * h + j) * y_cs] = t[j];
      }
    }
  }
}

// Rows of 4 bytes (K <= 32: a 1x1 conv from up to 32 channels): the 16 weight rows' dwords in the 16
// lanes of one register, so one vpopcntd of a broadcast activation dword xor them counts 16 outputs,
// and the finish (the same operations per lane as xnor_rows_t's) runs on 16 lanes. With rows this
// short the per-output finish is most of the work: 8 x 16 x 32 x 32 -> 96 spent 35 % of its time in
// xnor_rows_t; this form ran it 1.08-1.16x, 1x1 convs and a 32-input Linear 1.01-1.28x
// (docs/benchmarks.md, twentieth session).
template <int MR>
__attribute__((target("avx512vpopcntdq"))) void xnor_rows_d(const QGemmXnorArgs& g, std::int64_t m, std::int64_t n,
                                                            int nr, __m512i w, float* y0, std::int64_t y_rs,
                                                            std::int64_t y_cs) {
  const __mmask16 mask = static_cast<__mmask16>(nr >= 16 ? 0xFFFF : (1u << nr) - 1);
  const __m512 cs = _mm512_maskz_loadu_ps(mask, g.col_scale + n);
  const __m512 bias = g.bias ? _mm512_maskz_loadu_ps(mask, g.bias + n) : _mm512_setzero_ps();
#pragma GCC unroll 4
  for (int i = 0; i < MR; ++i) {
    std::uint32_t v;
    std::memcpy(&v, g.a + (m + i) * 4, 4);
    __m512i cnt = _mm512_popcnt_epi32(_mm512_xor_si512(_mm512_set1_epi32(static_cast<int>(v)), w));
    if (g.has_zero[m + i]) {
      std::uint32_t z;
      std::memcpy(&z, g.z + (m + i) * 4, 4);
      cnt = _mm512_sub_epi32(cnt, _mm512_popcnt_epi32(_mm512_and_si512(_mm512_set1_epi32(static_cast<int>(z)), w)));
    }
    const __m512i d = _mm512_sub_epi32(_mm512_set1_epi32(g.a_k[m + i]), _mm512_add_epi32(cnt, cnt));
    __m512 y = _mm512_mul_ps(_mm512_cvtepi32_ps(d), _mm512_mul_ps(_mm512_set1_ps(g.row_scale[m + i]), cs));
    if (g.bias) y = _mm512_add_ps(y, bias);
    if (y_cs == 1) {
      _mm512_mask_storeu_ps(y0 + i * y_rs, mask, y);
    } else {
      alignas(64) float t[16];
      _mm512_store_ps(t, y);
      for (int j = 0; j < nr; ++j) y0[i * y_rs + j * y_cs] = t[j];
    }
  }
}

// Column-major outputs (y_rs == 1: a conv's NCHW image, each output channel's rows contiguous):
// rows(i0, y0, y_rs, y_cs) computes rows m + i0 .. m + i0 + 3 of a 16-row block into a 16 x 16 tile
// (row-major, y_cs 1), then the tile is transposed in registers and each of its nr columns stored
// as 16 contiguous floats (a separate [L, N] -> [N, L] pass took 60 % of 8 x 16 x 32 x 32 -> 96's
// kernel time; docs/benchmarks.md, forty-fifth session).
template <class Rows>
__attribute__((target("avx512vpopcntdq"))) void xnor_cols_block(const QGemmXnorArgs& g, std::int64_t m,
                                                                std::int64_t n, int nr, const Rows& rows) {
  alignas(64) float tile[16 * 16];
  for (int i0 = 0; i0 < 16; i0 += 4) rows(i0, tile + i0 * 16, 16, 1);
  __m512i r[16];
  #pragma GCC unroll 16
  for (int i = 0; i < 16; ++i) r[i] = _mm512_load_si512(tile + i * 16);
  transpose16(r);
  for (int j = 0; j < nr; ++j) _mm512_storeu_si512(g.y + m + (n + j) * g.y_cs, r[j]);
}

__attribute__((target("avx512vpopcntdq"))) void gemm_xnor_t(const QGemmXnorArgs& g, std::int64_t n_begin,
                                                            std::int64_t n_end) {
  // column-major outputs: blocks of 16 rows through xnor_cols_block, the last M % 16 rows as they are
  const std::int64_t m_cols = g.y_rs == 1 && g.y_cs != 1 ? g.M / 16 * 16 : 0;
  const auto out = [&](std::int64_t m, std::int64_t n) { return g.y + m * g.y_rs + n * g.y_cs; };
  if (g.KB == 4) {
    for (std::int64_t n = n_begin; n < n_end; n += 16) {
      const int nr = static_cast<int>(std::min<std::int64_t>(16, n_end - n));
      const __m512i w = _mm512_maskz_loadu_epi32(static_cast<__mmask16>(nr >= 16 ? 0xFFFF : (1u << nr) - 1), g.w + n * 4);
      std::int64_t m = 0;
      for (; m < m_cols; m += 16) {
        xnor_cols_block(g, m, n, nr, [&](int i0, float* y0, std::int64_t rs, std::int64_t cs) {
          xnor_rows_d<4>(g, m + i0, n, nr, w, y0, rs, cs);
        });
      }
      for (; m + 4 <= g.M; m += 4) xnor_rows_d<4>(g, m, n, nr, w, out(m, n), g.y_rs, g.y_cs);
      for (; m < g.M; ++m) xnor_rows_d<1>(g, m, n, nr, w, out(m, n), g.y_rs, g.y_cs);
    }
    return;
  }
  const std::int64_t Q = (g.KB + 7) / 8;
  // the 16 weight rows' blocks: the caller's held ones (QGemmXnorArgs::wt), else built per block
  // here (with 4 activation rows an image, a 1 x 1 conv on a 2 x 2 map, the build was as much work
  // as the popcounts; docs/benchmarks.md, fiftieth session)
  const bool held = g.wt != nullptr && n_begin % 16 == 0;
  std::vector<std::uint64_t> built(held ? 0 : static_cast<std::size_t>(Q * 16));
  for (std::int64_t n = n_begin; n < n_end; n += 16) {
    const int nr = static_cast<int>(std::min<std::int64_t>(16, n_end - n));
    const std::uint64_t* wt = held ? g.wt + n / 16 * Q * 16 : built.data();
    if (!held) {
      std::fill(built.begin(), built.end(), std::uint64_t{0});
      for (int r = 0; r < nr; ++r)
        for (std::int64_t q = 0; q < Q; ++q)
          std::memcpy(&built[static_cast<std::size_t>(q * 16 + r)], g.w + (n + r) * g.KB + q * 8,
                      static_cast<std::size_t>(std::min<std::int64_t>(8, g.KB - q * 8)));
    }
    std::int64_t m = 0;
    for (; m < m_cols; m += 16) {
      xnor_cols_block(g, m, n, nr, [&](int i0, float* y0, std::int64_t rs, std::int64_t cs) {
        xnor_rows_t<4>(g, m + i0, n, nr, wt, Q, y0, rs, cs);
      });
    }
    for (; m + 4 <= g.M; m += 4) xnor_rows_t<4>(g, m, n, nr, wt, Q, out(m, n), g.y_rs, g.y_cs);
    for (; m < g.M; ++m) xnor_rows_t<1>(g, m, n, nr, wt, Q, out(m, n), g.y_rs, g.y_cs);
  }
}

// The transposed kernel for rows of up to this many bytes (K <= 4096) from 32 activation rows on,
// and for rows of up to 64 bytes (K <= 512: convs' patch rows) from 4 on; the 64-byte-step blocks
// otherwise. One process, A/B on 4096-column weights (docs/benchmarks.md, 2026-12-03 third
// session): transposed / blocks time 0.81 at K = 4096 with 64 rows, 0.84 with 32, 1.14 with 16,
// 1.0 at K = 8192 and 16384; 0.83-0.90 at K = 288 with 8-256 rows.
// With the weight's 16-row blocks held by the caller (QGemmXnorArgs::wt) the transposed kernel runs
// from 1 row, on rows of up to XNOR_HELD_MAX_KB bytes.
#ifndef XNOR_HELD_MAX_KB
#define XNOR_HELD_MAX_KB 2048
#endif
#ifndef XNOR_T_MAX_KB
#define XNOR_T_MAX_KB 512
#endif

void gemm_xnor(const QGemmXnorArgs& g, std::int64_t n_begin, std::int64_t n_end) {
  if ((g.wt != nullptr && g.KB <= XNOR_HELD_MAX_KB) || (g.M >= 4 && g.KB <= XNOR_T_MAX_KB && (g.M >= 32 || g.KB <= 64))) {
    gemm_xnor_t(g, n_begin, n_end);
    return;
  }
  const auto blocks = [](const QGemmXnorArgs& a, std::int64_t n0, std::int64_t n1) {
    blocked<QGemmXnorArgs, 8, xnor_block<4, 4>, xnor_block<4, 1>, xnor_block<1, 4>, xnor_block<1, 1>>(a, n0, n1);
  };
  if (g.y_rs != 1 || g.y_cs == 1 || g.M < 16) {
    blocks(g, n_begin, n_end);
    return;
  }
  // column-major outputs (xnor_cols_rows) here too: the columns' rows row-major, then transposed
  const std::int64_t nn = n_end - n_begin;
  std::vector<float> rows(static_cast<std::size_t>(g.M * nn));
  QGemmXnorArgs r = g;
  r.w = g.w + n_begin * g.KB;
  r.col_scale = g.col_scale + n_begin;
  r.bias = g.bias ? g.bias + n_begin : nullptr;
  r.N = nn;
  r.y = rows.data();
  r.y_rs = nn;
  r.y_cs = 1;
  blocks(r, 0, nn);
  detail::transpose_tiled(rows.data(), g.M, nn, nn, g.y + n_begin * g.y_cs, g.y_cs);
}

}  // namespace

namespace {
// QGemmKernels::pack_sign_zero at 64 codes a step (vpcmpgtb / vpcmpeqb into mask registers, each
// stored as 8 bytes), the tail under a byte mask.
std::int64_t pack_sign_zero(const std::int8_t* codes, std::int64_t n, std::uint8_t* sign, std::uint8_t* zero,
                            std::int32_t* counts, std::int64_t group) {
  std::int64_t zeros = 0, i = 0;
  const __m512i z = _mm512_setzero_si512();
  for (; i + 64 <= n; i += 64) {
    const __m512i v = _mm512_loadu_si512(codes + i);
    const std::uint64_t pos = _mm512_cmpgt_epi8_mask(v, z), zer = _mm512_cmpeq_epi8_mask(v, z);
    std::memcpy(sign + i / 8, &pos, 8);
    std::memcpy(zero + i / 8, &zer, 8);
    zeros += __builtin_popcountll(zer);
  }
  if (i < n) {  // n - i < 64, a multiple of 8
    const std::int64_t len = n - i;
    const __mmask64 m = (__mmask64{1} << len) - 1;
    const __m512i v = _mm512_maskz_loadu_epi8(m, codes + i);
    const std::uint64_t pos = _mm512_mask_cmpgt_epi8_mask(m, v, z), zer = _mm512_mask_cmpeq_epi8_mask(m, v, z);
    std::memcpy(sign + i / 8, &pos, static_cast<std::size_t>(len / 8));
    std::memcpy(zero + i / 8, &zer, static_cast<std::size_t>(len / 8));
    zeros += __builtin_popcountll(zer);
  }
  if (counts != nullptr) detail::zero_counts(zero, n, group, counts);
  return zeros;
}
}  // namespace

void add_lowbit(QGemmKernels& t) {
  t.pack_sign_zero = &pack_sign_zero;
  t.gemm_t2 = &gemm_t2;
  t.gemm_b1 = &gemm_b1;
  // XNOR: vpopcntq where the CPU has it, else the AVX2 table's kernel (t's already)
  if (__builtin_cpu_supports("avx512vpopcntdq")) {
    t.gemm_xnor = &gemm_xnor;
    t.xnor_cols_rows = 16;
    t.xnor_blocks_max_kb = XNOR_HELD_MAX_KB;
  }
}

}  // namespace qatkit::kernels::cpu::avx512
#endif
