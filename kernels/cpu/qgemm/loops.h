// Scalar pieces of the integer GEMM family shared by every ISA's file (internal linkage: each file
// compiles its own copy with its own instruction set; see fake_quant_scalar.h).
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "../../common/fake_quant_scalar.h"
#include "../../common/qgemm_args.h"
#include "../../common/thread_scratch.h"

namespace qatkit::kernels::cpu::detail {
namespace {

/// quantize_affine's code of each element (fake_quant_scalar.h's quantize_code: the same rounding,
/// clamp and NaN rule), shifted into int8.
inline void quantize_rows(const float* x, std::int8_t* a, std::int64_t K, const ActQuantArgs& q, std::int64_t begin,
                          std::int64_t end) {
  const float lo = static_cast<float>(q.quant_min - q.zero_point), hi = static_cast<float>(q.quant_max - q.zero_point);
  const float z = static_cast<float>(q.zero_point);
  int nan = 0;
  for (std::int64_t i = begin * K; i < end * K; ++i) {
    const float v = q.divisor ? x[i] / q.divisor[i % K] : x[i];
    nan |= static_cast<int>(v != v);
    const float c = quantize_code<float>(v, q.inv_scale, lo, hi, z);
    a[i] = static_cast<std::int8_t>(static_cast<std::int32_t>(c) - q.shift);
  }
  if (nan && q.nan_seen) __atomic_store_n(q.nan_seen, 1, __ATOMIC_RELAXED);
}

/// acc + sum_{k in [k0, k1)} a[k] * w[k], modulo 2^32.
inline std::uint32_t dot_s8(const std::int8_t* a, const std::int8_t* w, std::int64_t k0, std::int64_t k1,
                            std::uint32_t acc) {
  for (std::int64_t k = k0; k < k1; ++k) acc += static_cast<std::uint32_t>(std::int32_t{a[k]} * std::int32_t{w[k]});
  return acc;
}

/// Block b's record of a split panel (QGemmArgs::tail), or nullptr (no tail).
inline const std::int32_t* s8_panel_record(const QGemmArgs& g, std::int64_t b) {
  return g.tail ? g.tail + b * s8_tail_words((g.K + 3) / 4) : nullptr;
}

/// Whether block b has split codes (its record lists its unsafe pairs), else the sign trick runs it.
inline bool s8_panel_split(const std::int32_t* rec) { return rec != nullptr && rec[0] >= 0; }

/// Row n of a panel weight (QGemmArgs' panel layout) as signed codes over [0, K).
inline void s8_panel_row(const QGemmArgs& g, std::int64_t n, std::int8_t* out) {
  const std::uint8_t* w = reinterpret_cast<const std::uint8_t*>(g.w) + (n / 16) * ((g.K + 3) / 4) * 64 + (n % 16) * 4;
  for (std::int64_t k = 0; k < g.K; ++k) out[k] = static_cast<std::int8_t>(std::int32_t{w[(k / 4) * 64 + k % 4]} - 128);
}

/// The one requantization: int32 -> float32 (round to nearest even), times the float32 scale, then
/// (float-bias layers) plus the bias: two roundings, never fused (-ffp-contract=off).
template <class Args>
inline float requantize(std::uint32_t acc, const Args& g, std::int64_t n) {
  const float y = static_cast<float>(static_cast<std::int32_t>(acc)) * g.out_scale[n];
  return g.bias ? y + g.bias[n] : y;
}

/// sum_k a[k] * c[k] over the 2-bit codes of one weight row (QGemmPackedArgs's layout), modulo 2^32.
inline std::uint32_t dot_t2(const std::int8_t* a, const std::uint8_t* w, std::int64_t K_pad) {
  std::uint32_t acc = 0;
  for (std::int64_t b = 0; b < K_pad; b += 128) {
    const std::uint8_t* wb = w + b / 4;
    for (int j = 0; j < 32; ++j) {
      for (int i = 0; i < 4; ++i) {
        const std::int32_t c = (wb[j] >> (2 * i)) & 3;
        acc += static_cast<std::uint32_t>(c * std::int32_t{a[b + 32 * i + j]});
      }
    }
  }
  return acc;
}

/// One output of the ternary GEMM: the codes' sum minus a_sum, plus corr, requantized.
inline float finish_t2(std::uint32_t sum_ac, const QGemmPackedArgs& g, std::int64_t m, std::int64_t n) {
  const std::uint32_t acc = sum_ac - static_cast<std::uint32_t>(g.a_sum[m]) + static_cast<std::uint32_t>(g.corr[n]);
  return requantize(acc, g, n);
}

/// sum_{k in [k0, k0 + 32)} a[k] * c[k] over one 32-weight chunk of a W4 row (QGemmW4Args layout).
inline std::int32_t dot_w4_chunk(const std::int8_t* a, const std::uint8_t* w) {
  std::int32_t s = 0;
  for (int j = 0; j < 16; ++j) {
    s += static_cast<std::int32_t>(w[j] & 15) * a[j] + static_cast<std::int32_t>(w[j] >> 4) * a[j + 16];
  }
  return s;
}

/// sum of the codes c = q + 8 of one W4 row over [k0, k1) (multiples of 32).
inline std::int32_t w4_code_sum(const std::uint8_t* w, std::int64_t k0, std::int64_t k1) {
  std::int32_t s = 0;
  for (std::int64_t b = k0 / 2; b < k1 / 2; ++b) s += (w[b] & 15) + (w[b] >> 4);
  return s;
}

using ::qatkit::kernels::w4_panel_offset;  // qgemm_args.h: the panel layout's byte offsets

/// Row n of a W4 weight (K / 2 bytes) in the row layout: the weight's own row, or (panel layout,
/// QGemmW4Args::panel) its bytes gathered into buf, a dword at a time.
inline const std::uint8_t* w4_row(const std::uint8_t* w, bool panel, std::int64_t K, std::int64_t n, std::uint8_t* buf) {
  const std::int64_t KB = K / 2;
  if (!panel) return w + n * KB;
  for (std::int64_t b = 0; b < KB; b += 4) std::memcpy(buf + b, w + w4_panel_offset(KB, n, b), 4);
  return buf;
}
inline const std::uint8_t* w4_row(const QGemmW4Args& g, std::int64_t n, std::uint8_t* buf) {
  return w4_row(g.w, g.panel, g.K, n, buf);
}

/// The input zero-point term of one group from its code sum: act_offset * sum q.
inline std::int32_t w4_zero_term(const QGemmW4Args& g, std::int32_t code_sum) {
  return g.act_offset * (code_sum - 8 * static_cast<std::int32_t>(g.group));
}

/// The zero-point terms of one W4 row's G groups (zt[G]).
inline void w4_zero_terms_row(const QGemmW4Args& g, const std::uint8_t* w, std::int32_t* zt) {
  for (std::int64_t gi = 0; gi < g.K / g.group; ++gi) zt[gi] = w4_zero_term(g, w4_code_sum(w, gi * g.group, (gi + 1) * g.group));
}

/// The group combination and requantization of one W4A8 output from its per-group code sums and
/// zero-point terms.
template <class GroupSum, class ZeroTerm>
inline float finish_w4(const QGemmW4Args& g, std::int64_t m, std::int64_t n, const GroupSum& group_sum,
                       const ZeroTerm& zero_term) {
  const std::int64_t G = g.K / g.group;
  double t = 0.0;
  for (std::int64_t gi = 0; gi < G; ++gi) {
    const std::int32_t acc = group_sum(gi) - 8 * g.a_gsum[m * G + gi] + zero_term(gi);
    t += static_cast<double>(acc) * static_cast<double>(g.gscale[g.scale_index(n, gi)]);  // exact product, sums in order
  }
  const float y = static_cast<float>(t * g.act_scale);
  return g.bias ? y + g.bias[n] : y;
}

/// sum_k bit_k * a[k] of one binary weight row whose byte s is w[s * stride] (1: the row layout;
/// 32: the panel layout's column, QGemmPackedArgs).
inline std::uint32_t dot_b1(const std::int8_t* a, const std::uint8_t* w, std::int64_t K_pad, std::int64_t stride = 1) {
  std::uint32_t acc = 0;
  for (std::int64_t k = 0; k < K_pad; ++k) {
    if ((w[(k >> 3) * stride] >> (k & 7)) & 1) acc += static_cast<std::uint32_t>(std::int32_t{a[k]});
  }
  return acc;
}

/// Row n's byte 0 in the binary panel layout (QGemmPackedArgs::panel); its byte s is 32 s further.
inline const std::uint8_t* b1_panel_row(const QGemmPackedArgs& g, std::int64_t n) {
  return g.w + (n / 32) * (g.K_pad / 8) * 32 + n % 32;
}

/// One output of the binary GEMM: 2 * (sum over set bits) - a_sum, plus corr, requantized.
inline float finish_b1(std::uint32_t sum_set, const QGemmPackedArgs& g, std::int64_t m, std::int64_t n) {
  const std::uint32_t acc = 2u * sum_set - static_cast<std::uint32_t>(g.a_sum[m]) + static_cast<std::uint32_t>(g.corr[n]);
  return requantize(acc, g, n);
}

/// GEMV weight streams (one or two activation rows: each weight row is read once per call, in runs
/// too short for the hardware prefetcher to follow far enough): rows [n, n + count) of rb bytes each,
/// when they exist, prefetched into L2.
inline void prefetch_rows(const std::uint8_t* w, std::int64_t n, std::int64_t count, std::int64_t n_end, std::int64_t rb) {
  const std::int64_t rows = std::min(count, n_end - n);
  for (std::int64_t o = 0; o < rows * rb; o += 64) __builtin_prefetch(w + n * rb + o, 0, 2);
}

/// The next 16-row block's group scales (rows n + 16 .. of a float [rows, G] matrix: contiguous, at
/// most G lines), prefetched by the kernels one line per group, at each group's end in the first
/// activation row: the hardware prefetcher does not follow 16 short rows, and a burst of G
/// prefetches at the block's start stalled on full fill buffers (docs/benchmarks.md, 2026-12-03).
struct NextBlockScales {
  const char* p = nullptr;
  std::int64_t bytes = 0;
  NextBlockScales() = default;
  NextBlockScales(const float* scale, std::int64_t G, std::int64_t n, std::int64_t n_end) {
    if (n + 16 < n_end) {
      p = reinterpret_cast<const char*>(scale + (n + 16) * G);
      bytes = std::min<std::int64_t>(16, n_end - n - 16) * G * 4;
    }
  }
  void at_group(std::int64_t gi) const {
    if (gi * 64 < bytes) __builtin_prefetch(p + gi * 64, 0, 3);
  }
};

using kernels::thread_scratch;  // (kernels/common/thread_scratch.h)

/// popcnt in the AVX2 / AVX-512 files (built with -mpopcnt), the compiler's bit trick elsewhere.
inline std::uint32_t popcount32(std::uint32_t v) { return static_cast<std::uint32_t>(__builtin_popcount(v)); }

inline std::uint32_t load32(const std::uint8_t* p) {
  return std::uint32_t{p[0]} | std::uint32_t{p[1]} << 8 | std::uint32_t{p[2]} << 16 | std::uint32_t{p[3]} << 24;
}

/// popcount(a ^ w) over bytes [b0, b1) of one XNOR row pair (b0, b1 multiples of 4).
inline std::int64_t xor_count(const std::uint8_t* a, const std::uint8_t* w, std::int64_t b0, std::int64_t b1) {
  std::int64_t c = 0;
  for (std::int64_t b = b0; b < b1; b += 4) c += popcount32(load32(a + b) ^ load32(w + b));
  return c;
}

/// One XNOR output from popcount(a_m ^ w_n) (QGemmXnorArgs): the zero-code correction where the
/// row has zero codes, then the "row" requantization.
/// finish_xnor after the zero-code correction: c = popcount(a_m ^ w_n) - popcount(z_m & w_n).
inline float finish_xnor_counted(std::int64_t c, const QGemmXnorArgs& g, std::int64_t m, std::int64_t n) {
  const std::int32_t acc = g.a_k[m] - 2 * static_cast<std::int32_t>(c);
  const float y = static_cast<float>(acc) * (g.row_scale[m] * g.col_scale[n]);
  return g.bias ? y + g.bias[n] : y;
}

/// popcount(z & w) over bytes [b0, b1) (multiples of 4): the zero codes' weight bits.
inline std::int64_t and_count(const std::uint8_t* z, const std::uint8_t* w, std::int64_t b0, std::int64_t b1) {
  std::int64_t c = 0;
  for (std::int64_t b = b0; b < b1; b += 4) c += popcount32(load32(z + b) & load32(w + b));
  return c;
}

inline float finish_xnor(std::int64_t xor_bits, const QGemmXnorArgs& g, std::int64_t m, std::int64_t n) {
  if (g.has_zero[m]) xor_bits -= and_count(g.z + m * g.KB, g.w + n * g.KB, 0, g.KB);
  return finish_xnor_counted(xor_bits, g, m, n);
}

/// Output channels [n_begin, n_end) of a depthwise conv (QDwConvArgs): each tap adds its weight
/// times a run of input codes to int32 accumulators (a loop the compiler vectorizes in the AVX2
/// file), then the requantization. Stride 1: the whole output plane on the padded grid at once,
/// acc[oh * Wp + ow] for every ow < Wp (the columns past Wo are computed and never stored), so each
/// tap is one run of Ho * Wp products (x has (kw - 1) * dw codes of slack after its last plane);
/// otherwise one output row at a time. Exact int32 sums: every table gives the same bits.
inline void dwconv_channels(const QDwConvArgs& g, std::int64_t n_begin, std::int64_t n_end) {
  const bool plane = g.sh == 1 && g.sw == 1;
  const std::int64_t run = plane ? g.Ho * g.Wp : g.Wo;  // the accumulators of one pass
  std::vector<std::int32_t> acc(static_cast<std::size_t>(run));
  for (std::int64_t n = n_begin; n < n_end; ++n) {
    const std::int16_t* xc = g.x + (n / g.Ng) * g.Hp * g.Wp;
    const std::int16_t* wn = g.w + n * g.kh * g.kw;
    const std::uint32_t c = static_cast<std::uint32_t>(g.corr[n]);
    const float s = g.out_scale[n], bn = g.bias ? g.bias[n] : 0.f;
    for (std::int64_t oh = 0; oh < (plane ? 1 : g.Ho); ++oh) {
      std::int32_t* a = acc.data();
      std::fill(a, a + run, 0);
      for (std::int64_t i = 0; i < g.kh; ++i) {
        const std::int16_t* row = xc + (oh * g.sh + i * g.dh) * g.Wp;
        for (std::int64_t j = 0; j < g.kw; ++j) {
          const std::int32_t wv = wn[i * g.kw + j];
          // (tap_off: the parity planes' offsets, given with stride 1 only)
          const std::int16_t* r = g.tap_off != nullptr ? xc + g.tap_off[i * g.kw + j] : row + j * g.dw;
          if (g.sw == 1) {
            for (std::int64_t t = 0; t < run; ++t) a[t] += static_cast<std::int32_t>(r[t]) * wv;
          } else {
            for (std::int64_t ow = 0; ow < g.Wo; ++ow) a[ow] += static_cast<std::int32_t>(r[ow * g.sw]) * wv;
          }
        }
      }
      // requantize's bits (fp32(acc + corr) * scale, then + bias: two roundings), in a loop over the row
      for (std::int64_t r0 = 0; r0 < (plane ? g.Ho : 1); ++r0) {
        const std::int32_t* ar = a + (plane ? r0 * g.Wp : 0);
        float* y = g.y + (n * g.Ho + oh + r0) * g.Wo;
        if (g.bias) {
          for (std::int64_t ow = 0; ow < g.Wo; ++ow) {
            const float v = static_cast<float>(static_cast<std::int32_t>(static_cast<std::uint32_t>(ar[ow]) + c)) * s;
            y[ow] = v + bn;
          }
        } else {
          for (std::int64_t ow = 0; ow < g.Wo; ++ow)
            y[ow] = static_cast<float>(static_cast<std::int32_t>(static_cast<std::uint32_t>(ar[ow]) + c)) * s;
        }
      }
    }
  }
}

/// The SIMD stride-1 plane kernels (the AVX2 and AVX-512 tables' dwconv): at most this many pairs of
/// taps (kernels of up to 128 taps), their column lanes int16.
constexpr std::int64_t kDwFlatPairs = 64;

/// Whether those kernels take g; otherwise dwconv_channels does.
inline bool dwconv_flat_fits(const QDwConvArgs& g) {
  return g.sh == 1 && g.sw == 1 && g.Wp <= 16384 && (g.kh * g.kw + 1) / 2 <= kDwFlatPairs;
}

/// Their tap offsets along a padded plane (2 * np entries, an odd last tap paired with offset 0,
/// which its zero weight cancels) and (dwconv_plane_channel) an output channel's pairs of weights,
/// each pair one int32 (tap 2p in the low 16 bits, 2p + 1 in the high: vpmaddwd / vpdpwssd against
/// codes interleaved the same way). np = ceil(taps / 2) <= kDwFlatPairs.
inline void dwconv_plane_offsets(const QDwConvArgs& g, std::int64_t np, std::int64_t* off) {
  const std::int64_t taps = g.kh * g.kw;
  for (std::int64_t t = 0; t < 2 * np; ++t)
    off[t] = t >= taps ? 0 : g.tap_off != nullptr ? g.tap_off[t] : (t / g.kw) * g.dh * g.Wp + (t % g.kw) * g.dw;
}

/// Output channel n of those kernels: its plane, output plane and requantization constants (bias 0
/// when there is none; added only when g.bias is set), its pairs of weights written to wpair.
struct DwPlaneChannel {
  const std::int16_t* x;
  float* y;
  std::int32_t corr;
  float scale, bias;
};

inline DwPlaneChannel dwconv_plane_channel(const QDwConvArgs& g, std::int64_t n, std::int64_t np,
                                           std::int32_t* wpair) {
  const std::int64_t taps = g.kh * g.kw;
  const std::int16_t* wn = g.w + n * taps;
  for (std::int64_t p = 0; p < np; ++p) {
    const std::uint32_t lo16 = static_cast<std::uint16_t>(wn[2 * p]);
    const std::uint32_t hi16 = 2 * p + 1 < taps ? static_cast<std::uint16_t>(wn[2 * p + 1]) : 0u;
    wpair[p] = static_cast<std::int32_t>(lo16 | (hi16 << 16));
  }
  return {g.x + (n / g.Ng) * g.Hp * g.Wp, g.y + n * g.Ho * g.Wo, g.corr[n], g.out_scale[n],
          g.bias ? g.bias[n] : 0.f};
}

/// The first step's column of each of its `lanes` positions (lane % Wp), as int16.
inline void dwconv_lane_columns(std::int64_t Wp, int lanes, std::int16_t* col) {
  for (std::int16_t e = 0, c = 0; e < lanes; ++e, c = static_cast<std::int16_t>(c + 1 == Wp ? 0 : c + 1)) col[e] = c;
}

/// Output channels [n_begin, n_end) of a flat kernel of `Lanes` positions a step, np pairs of taps, in
/// groups that share an input plane (QDwConvArgs' Ng outputs per plane): f(n, std::integral_constant<
/// int, G>{}, off, col0) for groups of G = 4, then 2, then 1 of the channels left on n's plane, with
/// the tap offsets (dwconv_plane_offsets) and the first step's columns (dwconv_lane_columns).
template <int Lanes, typename F>
void dwconv_plane_groups(const QDwConvArgs& g, std::int64_t n_begin, std::int64_t n_end, std::int64_t np,
                         const F& f) {
  std::int64_t off[2 * kDwFlatPairs];
  dwconv_plane_offsets(g, np, off);
  alignas(64) std::int16_t col0[Lanes];
  dwconv_lane_columns(g.Wp, Lanes, col0);
  for (std::int64_t n = n_begin; n < n_end;) {
    const std::int64_t same = std::min(n_end - n, g.Ng - n % g.Ng);
    if (same >= 4) {
      f(n, std::integral_constant<int, 4>{}, off, col0);
      n += 4;
    } else if (same >= 2) {
      f(n, std::integral_constant<int, 2>{}, off, col0);
      n += 2;
    } else {
      f(n, std::integral_constant<int, 1>{}, off, col0);
      n += 1;
    }
  }
}

/// A table's dwconv on its flat kernels: F5 for 3 x 3 kernels (five pairs), F0 with the pairs at run
/// time, dwconv_channels where they do not fit (dwconv_flat_fits).
using DwFlatKernel = void (*)(const QDwConvArgs&, std::int64_t, std::int64_t, std::int64_t);
template <DwFlatKernel F5, DwFlatKernel F0>
void dwconv_planes_with(const QDwConvArgs& g, std::int64_t n_begin, std::int64_t n_end) {
  const std::int64_t pairs = (g.kh * g.kw + 1) / 2;
  if (!dwconv_flat_fits(g)) {
    dwconv_channels(g, n_begin, n_end);
  } else {
    (pairs == 5 ? F5 : F0)(g, n_begin, n_end, pairs);
  }
}

/// pack_sign_zero's counts: counts[j] = the set bits of zero bytes [j * group / 8, (j + 1) * group /
/// 8), j < n / group (the kernel files' popcnt: csrc's host code is built without it).
inline void zero_counts(const std::uint8_t* zero, std::int64_t n, std::int64_t group, std::int32_t* counts) {
  const std::int64_t gb = group / 8;
  for (std::int64_t j = 0; j < n / group; ++j) {
    const std::uint8_t* z = zero + j * gb;
    std::int32_t c = 0;
    std::int64_t i = 0;
    for (; i + 8 <= gb; i += 8) {
      std::uint64_t v;
      std::memcpy(&v, z + i, 8);
      c += __builtin_popcountll(v);
    }
    for (; i < gb; ++i) c += __builtin_popcount(z[i]);
    counts[j] = c;
  }
}

/// The SIMD dwconv_nhwc kernels' tap offsets (codes from a pixel's tap (0, 0)), in pairs: 2 *
/// ceil(taps / 2) entries, an odd last tap paired with tap 0 (which its zero weight cancels), in the
/// calling thread's scratch (kept between calls: a per-call vector was a malloc and free per image).
inline const std::int64_t* dwconv_pair_offsets(const QDwConvArgs& g) {
  struct Tag;
  const std::int64_t taps = g.kh * g.kw, pairs = (taps + 1) / 2;
  std::int64_t* off = thread_scratch<std::int64_t, Tag>(static_cast<std::size_t>(pairs * 2));
  for (std::int64_t t = 0; t < pairs * 2; ++t) off[t] = t < taps ? ((t / g.kw) * g.dh * g.Wp + (t % g.kw) * g.dw) * g.C : 0;
  return off;
}

/// Output rows [oh_begin, oh_end) of a depthwise conv with one output channel per input channel,
/// channels-last (QDwConvArgs' nhwc form): per output pixel and block of 16 channels, the taps'
/// products of the pixel's codes and the weights go into 16 int32 accumulators (a loop over the
/// block the compiler vectorizes in the AVX2 file, kept in registers across the taps), then the
/// requantization. Vectorized over channels, so small maps and strides cost what large ones do per
/// output. The same exact sums as dwconv_channels: the same bits.
inline void dwconv_nhwc(const QDwConvArgs& g, std::int64_t oh_begin, std::int64_t oh_end) {
  const std::int64_t C = g.C, taps = g.kh * g.kw;
  for (std::int64_t oh = oh_begin; oh < oh_end; ++oh) {
    for (std::int64_t ow = 0; ow < g.Wo; ++ow) {
      const std::int16_t* xp = g.x + ((oh * g.sh) * g.Wp + ow * g.sw) * C;  // tap (0, 0)
      float* y = g.y + (oh * g.Wo + ow) * C;
      std::int64_t c0 = 0;
      const auto finish = [&](const std::int32_t* a, std::int64_t c, std::int64_t len) {
        for (std::int64_t e = 0; e < len; ++e) {
          const float v =
              static_cast<float>(static_cast<std::int32_t>(static_cast<std::uint32_t>(a[e]) +
                                                           static_cast<std::uint32_t>(g.corr[c + e]))) *
              g.out_scale[c + e];
          y[c + e] = g.bias ? v + g.bias[c + e] : v;
        }
      };
      for (; c0 + 16 <= C; c0 += 16) {
        std::int32_t a[16] = {};
        for (std::int64_t t = 0; t < taps; ++t) {
          const std::int16_t* xr = xp + ((t / g.kw) * g.dh * g.Wp + (t % g.kw) * g.dw) * C + c0;
          const std::int16_t* wr = g.w + t * C + c0;
          for (int e = 0; e < 16; ++e) a[e] += static_cast<std::int32_t>(xr[e]) * static_cast<std::int32_t>(wr[e]);
        }
        finish(a, c0, 16);
      }
      if (c0 < C) {
        std::int32_t a[16] = {};
        for (std::int64_t t = 0; t < taps; ++t) {
          const std::int16_t* xr = xp + ((t / g.kw) * g.dh * g.Wp + (t % g.kw) * g.dw) * C + c0;
          const std::int16_t* wr = g.w + t * C + c0;
          for (std::int64_t e = 0; e < C - c0; ++e)
            a[e] += static_cast<std::int32_t>(xr[e]) * static_cast<std::int32_t>(wr[e]);
        }
        finish(a, c0, C - c0);
      }
    }
  }
}

/// dst[c * dst_rs + r] = D(src[r * src_rs + c]) for r < rows, c < cols, in 16 x 16 tiles (both sides
/// in L1 while a tile moves). The baseline's transposes, and the vector ones' edges.
template <class S, class D>
inline void transpose_tiled(const S* src, std::int64_t rows, std::int64_t cols, std::int64_t src_rs, D* dst,
                            std::int64_t dst_rs) {
  constexpr std::int64_t T = 16;
  for (std::int64_t r0 = 0; r0 < rows; r0 += T) {
    const std::int64_t r1 = std::min(rows, r0 + T);
    for (std::int64_t c0 = 0; c0 < cols; c0 += T) {
      const std::int64_t c1 = std::min(cols, c0 + T);
      for (std::int64_t c = c0; c < c1; ++c)
        for (std::int64_t r = r0; r < r1; ++r) dst[c * dst_rs + r] = static_cast<D>(src[r * src_rs + c]);
    }
  }
}

inline void transpose_f32_tiled(const float* src, std::int64_t rows, std::int64_t cols, std::int64_t src_rs, float* dst,
                                std::int64_t dst_rs) {
  transpose_tiled(src, rows, cols, src_rs, dst, dst_rs);
}

inline void transpose_s8_s16_tiled(const std::int8_t* src, std::int64_t rows, std::int64_t cols, std::int64_t src_rs,
                                   std::int16_t* dst, std::int64_t dst_rs) {
  transpose_tiled(src, rows, cols, src_rs, dst, dst_rs);
}

inline void transpose_s8_tiled(const std::int8_t* src, std::int64_t rows, std::int64_t cols, std::int64_t src_rs,
                               std::int8_t* dst, std::int64_t dst_rs) {
  transpose_tiled(src, rows, cols, src_rs, dst, dst_rs);
}

/// One dequantized weight of a weight-only W4 row (QGemmW4FArgs): (float(q) - z) * s.
/// Rows [n_begin, n_end) of a weight-only W4 weight dequantized into w (row n at w + (n - n_begin) * K;
/// w4_weight's bits).
inline void dequant_w4f_rows(const QGemmW4FArgs& g, std::int64_t n_begin, std::int64_t n_end, float* w) {
  std::vector<std::uint8_t> buf(static_cast<std::size_t>(g.panel ? g.K / 2 : 0));
  for (std::int64_t n = n_begin; n < n_end; ++n) {
    const std::uint8_t* row = w4_row(g.w, g.panel, g.K, n, buf.data());
    float* out = w + (n - n_begin) * g.K;
    for (std::int64_t c = 0; c < g.K / 32; ++c) {  // 32-weight chunks: byte j holds k = j (low) and j + 16 (high)
      const std::int64_t gi = g.scale_index(n, c * 32 / g.group);
      const float s = g.gscale[gi], z = g.gzero ? g.gzero[gi] : 0.f;
      for (int j = 0; j < 16; ++j) {
        const std::uint8_t b = row[c * 16 + j];
        out[c * 32 + j] = (static_cast<float>(static_cast<std::int32_t>(b & 15) - 8) - z) * s;
        out[c * 32 + 16 + j] = (static_cast<float>(static_cast<std::int32_t>(b >> 4) - 8) - z) * s;
      }
    }
  }
}

inline float w4_weight(const QGemmW4FArgs& g, std::int64_t n, std::int64_t k) {
  const std::int64_t KB = g.K / 2, b = k / 32 * 16 + k % 16;  // byte b of row n (w4_row's index)
  const std::uint8_t byte = g.w[g.panel ? w4_panel_offset(KB, n, b) : n * KB + b];
  const std::int32_t q = ((k % 32) < 16 ? (byte & 15) : (byte >> 4)) - 8;
  const std::int64_t gi = g.scale_index(n, k / g.group);
  const float z = g.gzero ? g.gzero[gi] : 0.f;
  return (static_cast<float>(q) - z) * g.gscale[gi];
}

// 16 float lanes of the weight-only int8 kernel in each ISA file's registers (chosen by its compile
// flags: AVX-512 one zmm, AVX2 two ymm, baseline an array). Lane l only ever does
// acc[l] = fma(x[l], w[l], acc[l]) with w[l] = float(q[l]) * s (an exact conversion, one rounded
// multiply) and one fused multiply-add (std::fma in the baseline: the same rounding), so every ISA
// gives the same bits.
struct Acc16 {
#if defined(__AVX512F__)
  __m512 v = _mm512_setzero_ps();
  static __m512 weights(const std::int8_t* q, float s) {
    const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q));
    return _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(c)), _mm512_set1_ps(s));
  }
  void fma_w(const float* x, const float* w) { v = _mm512_fmadd_ps(_mm512_loadu_ps(x), _mm512_loadu_ps(w), v); }
  void fma_q(const float* x, const std::int8_t* q, float s) { v = _mm512_fmadd_ps(_mm512_loadu_ps(x), weights(q, s), v); }
  static void dequant(const std::int8_t* q, float s, float* o) { _mm512_storeu_ps(o, weights(q, s)); }
  void store(float* o) const { _mm512_storeu_ps(o, v); }
#elif defined(__AVX2__)
  __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
  static void weights(const std::int8_t* q, float s, __m256& a, __m256& b) {
    const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q));
    const __m256 sv = _mm256_set1_ps(s);
    a = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(c)), sv);
    b = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(c, 8))), sv);
  }
  void fma_w(const float* x, const float* w) {
    lo = _mm256_fmadd_ps(_mm256_loadu_ps(x), _mm256_loadu_ps(w), lo);
    hi = _mm256_fmadd_ps(_mm256_loadu_ps(x + 8), _mm256_loadu_ps(w + 8), hi);
  }
  void fma_q(const float* x, const std::int8_t* q, float s) {
    __m256 a, b;
    weights(q, s, a, b);
    lo = _mm256_fmadd_ps(_mm256_loadu_ps(x), a, lo);
    hi = _mm256_fmadd_ps(_mm256_loadu_ps(x + 8), b, hi);
  }
  static void dequant(const std::int8_t* q, float s, float* o) {
    __m256 a, b;
    weights(q, s, a, b);
    _mm256_storeu_ps(o, a);
    _mm256_storeu_ps(o + 8, b);
  }
  void store(float* o) const {
    _mm256_storeu_ps(o, lo);
    _mm256_storeu_ps(o + 8, hi);
  }
#else
  float a[16] = {};
  void fma_w(const float* x, const float* w) {
    for (int l = 0; l < 16; ++l) a[l] = std::fma(x[l], w[l], a[l]);
  }
  void fma_q(const float* x, const std::int8_t* q, float s) {
    for (int l = 0; l < 16; ++l) a[l] = std::fma(x[l], static_cast<float>(q[l]) * s, a[l]);
  }
  static void dequant(const std::int8_t* q, float s, float* o) {
    for (int l = 0; l < 16; ++l) o[l] = static_cast<float>(q[l]) * s;
  }
  void store(float* o) const { std::memcpy(o, a, sizeof a); }
#endif
};

/// Rows [n_begin, n_end) of a weight-only int8 weight dequantized into w (row n at w + (n - n_begin) * K):
/// float(q) * scale[n], the float form's weight bits.
inline void dequant_w8f_rows(const QGemmW8FArgs& g, std::int64_t n_begin, std::int64_t n_end, float* w) {
  const std::int64_t K16 = g.K / 16 * 16;
  for (std::int64_t n = n_begin; n < n_end; ++n) {
    const std::int8_t* q = g.w + n * g.K;
    float* o = w + (n - n_begin) * g.K;
    const float s = g.scale[n];
    for (std::int64_t k = 0; k < K16; k += 16) Acc16::dequant(q + k, s, o + k);
    for (std::int64_t k = K16; k < g.K; ++k) o[k] = static_cast<float>(q[k]) * s;
  }
}

/// The end of one output: the K % 16 tail into lanes 0.., the lanes in a fixed tree, + bias.
inline float w8f_finish(const Acc16& acc, const float* x, const std::int8_t* q, float s, std::int64_t K16,
                        std::int64_t K, const float* bias) {
  float a[16];
  acc.store(a);
  for (std::int64_t k = K16; k < K; ++k) a[k - K16] = std::fma(x[k], static_cast<float>(q[k]) * s, a[k - K16]);
  for (int w = 8; w > 0; w /= 2)
    for (int l = 0; l < w; ++l) a[l] += a[l + w];
  return bias ? a[0] + *bias : a[0];
}

// The on-the-fly form's software prefetch (AVX2 table only): each of the R code rows a line every 64
// k, kW8fPrefetch bytes ahead, running on into the row that the same register slot reads in the next
// block of R rows (the hardware prefetcher restarts its streams at every block). AVX2's form takes
// about twice the instructions of AVX-512's per weight, so the out-of-order window covers half the
// bytes in flight: on Zen 4 the prefetch made the AVX2 4096 x 4096 GEMV 1.12-1.25x faster, while
// the AVX-512 table's ran 0.85-0.88x with it at every distance and hint tried (docs/benchmarks.md,
// 2026-12-04, fourteenth session). Non-temporal: an L2 hint measured slower.
#if defined(__AVX2__) && !defined(__AVX512F__)
constexpr std::int64_t kW8fPrefetch = 512;
#else
constexpr std::int64_t kW8fPrefetch = 0;
#endif

/// Outputs y[m .. m + MR, n .. n + R) of the weight-only int8 kernel: 16 lane sums per output (lane l:
/// k = l mod 16, ascending), the weights converted on the fly (few rows: the codes stream once) or read
/// from R rows dequantized once into wf (wf non-null), MR activation rows per pass over them.
template <int R, int MR>
inline void w8f_tile(const QGemmW8FArgs& g, std::int64_t m, std::int64_t n, const float* wf) {
  const std::int64_t K = g.K, K16 = K / 16 * 16;
  Acc16 acc[MR][R];
  for (std::int64_t k0 = 0; k0 < K16; k0 += 16) {
    if (kW8fPrefetch > 0 && !wf && (k0 & 63) == 0) {
      const std::int64_t o = k0 + kW8fPrefetch;
      for (int r = 0; r < R; ++r) {
        const std::int64_t row = o < K ? n + r : n + R + r;  // past the row's end: the next block's row
        if (row < g.N) __builtin_prefetch(g.w + row * K + (o < K ? o : o - K), 0, 0);
      }
    }
    for (int i = 0; i < MR; ++i) {
      const float* x = g.x + (m + i) * K + k0;
      for (int r = 0; r < R; ++r) {
        if (wf) {
          acc[i][r].fma_w(x, wf + r * K + k0);
        } else {
          acc[i][r].fma_q(x, g.w + (n + r) * K + k0, g.scale[n + r]);
        }
      }
    }
  }
  for (int i = 0; i < MR; ++i) {
    for (int r = 0; r < R; ++r) {
      g.y[(m + i) * g.N + n + r] = w8f_finish(acc[i][r], g.x + (m + i) * K, g.w + (n + r) * K, g.scale[n + r], K16,
                                              K, g.bias ? g.bias + n + r : nullptr);
    }
  }
}

// Activation rows per pass over a buffered block: 4 x 4 tiles keep 16 accumulators in zmm registers
// (AVX-512); with AVX2's 16 ymm registers (two per Acc16) one row.
#if defined(__AVX512F__)
constexpr int kW8fRows = 4;
#else
constexpr int kW8fRows = 1;
#endif

// Weight rows per block of the on-the-fly form (up to 3 activation rows): each row is its own stream of
// codes, and more streams keep more of the weight in flight. AVX-512 (32 registers) holds 8 rows' 16
// accumulators: 4096 x 4096 at batch 1 on Zen 4, 776 / 841 us against 882 / 925 us with 4 rows
// (1.10-1.14x; 16 rows spilled: 1154 / 1211 us). AVX2's 16 registers hold 4 rows' (8 rows ran 1061 /
// 1105 us against 865 / 888 us). docs/benchmarks.md, 2026-12-04, fourteenth session.
#if defined(__AVX512F__)
constexpr int kW8fGemvRows = 8;
#else
constexpr int kW8fGemvRows = 4;
#endif

template <int R>
inline void w8f_block(const QGemmW8FArgs& g, std::int64_t n, const float* wf) {
  std::int64_t m = 0;
  if (wf) {
    for (; m + kW8fRows <= g.M; m += kW8fRows) w8f_tile<R, kW8fRows>(g, m, n, wf);
  }
  for (; m < g.M; ++m) w8f_tile<R, 1>(g, m, n, wf);
}

/// The weight-only int8 kernel, output columns [n_begin, n_end), in blocks of 4 weight rows: up to 3
/// activation rows convert the codes on the fly; more dequantize a block once into a per-thread buffer.
inline void gemm_w8f_loop(const QGemmW8FArgs& g, std::int64_t n_begin, std::int64_t n_end) {
  struct Tag;
  const bool buffered = g.M > 3;
  float* wf = buffered ? thread_scratch<float, Tag>(static_cast<std::size_t>(4 * g.K)) : nullptr;
  std::int64_t n = n_begin;
  if (!buffered && kW8fGemvRows > 4) {
    for (; n + kW8fGemvRows <= n_end; n += kW8fGemvRows) w8f_block<kW8fGemvRows>(g, n, wf);
  }
  for (; n + 4 <= n_end; n += 4) {
    if (buffered) dequant_w8f_rows(g, n, n + 4, wf);
    w8f_block<4>(g, n, wf);
  }
  for (; n < n_end; ++n) {
    if (buffered) dequant_w8f_rows(g, n, n + 1, wf);
    w8f_block<1>(g, n, wf);
  }
}


#if defined(__AVX512F__) || defined(__AVX2__)
/// Weight-only W4 row n dequantized into out (K floats): (float(q) - z) * s in 16 (AVX-512) or 8 lanes, the
/// bits of dequantize_affine (rowbuf: K / 2 bytes, for a panel weight's row gathered).
inline void dequant_w4_range(const QGemmW4FArgs& g, std::int64_t n, const std::uint8_t* w, std::int64_t k_begin,
                             std::int64_t k_end, float* out);
inline void dequant_w4_bytes(const QGemmW4FArgs& g, std::int64_t n, const std::uint8_t* w, float* out) {
  dequant_w4_range(g, n, w, 0, g.K, out);
}

/// k [k_begin, k_end) of row n (multiples of 32; w: the row's K / 2 bytes) into out[k - k_begin].
inline void dequant_w4_range(const QGemmW4FArgs& g, std::int64_t n, const std::uint8_t* w, std::int64_t k_begin,
                             std::int64_t k_end, float* out) {
  const __m128i low4 = _mm_set1_epi8(15);
#if defined(__AVX512F__)
  const __m512i eight = _mm512_set1_epi32(8);
#else
  const __m256i eight = _mm256_set1_epi32(8);
#endif
  for (std::int64_t gi = k_begin / g.group; gi * g.group < k_end; ++gi) {
    const float sf = g.gscale[g.scale_index(n, gi)], zf = g.gzero ? g.gzero[g.scale_index(n, gi)] : 0.f;
    for (std::int64_t k = std::max(k_begin, gi * g.group); k < std::min(k_end, (gi + 1) * g.group); k += 32) {
      const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w + k / 2));
      const __m128i lo = _mm_and_si128(v, low4), hi = _mm_and_si128(_mm_srli_epi16(v, 4), low4);
#if defined(__AVX512F__)
      const __m512 s = _mm512_set1_ps(sf), z = _mm512_set1_ps(zf);
      const __m128i parts[2] = {lo, hi};
      for (int p = 0; p < 2; ++p) {
        const __m512 q = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_cvtepu8_epi32(parts[p]), eight));
        _mm512_storeu_ps(out + (k - k_begin) + 16 * p, _mm512_mul_ps(_mm512_sub_ps(q, z), s));
      }
#else
      const __m256 s = _mm256_set1_ps(sf), z = _mm256_set1_ps(zf);
      const __m128i parts[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
      for (int p = 0; p < 4; ++p) {
        const __m256 q = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_cvtepu8_epi32(parts[p]), eight));
        _mm256_storeu_ps(out + (k - k_begin) + 8 * p, _mm256_mul_ps(_mm256_sub_ps(q, z), s));
      }
#endif
    }
  }
}

/// Row n of a weight-only W4 weight dequantized into out (a panel's row gathered into rowbuf first).
inline void dequant_w4_row(const QGemmW4FArgs& g, std::int64_t n, float* out, std::uint8_t* rowbuf) {
  dequant_w4_bytes(g, n, w4_row(g.w, g.panel, g.K, n, rowbuf), out);
}

/// Dword transposes (the weight-only packed GEMM's packing of float rows and activation rows).
#if defined(__AVX512F__)
/// Dwords d[e].r -> o[r].e for a 16 x 16 block (v[e] holds rows 0..15 of dword e).
inline void transpose16x16_epi32(const __m512i* v, __m512i* o) {
  __m512i t[16], u[16], x[8];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_epi32(v[2 * i], v[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(v[2 * i], v[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {  // u[4i + c]: element c of each 128-bit lane's 4 rows 4i..4i+3
    u[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
    u[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
    u[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    u[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
  for (int c = 0; c < 4; ++c) {
    x[2 * c] = _mm512_shuffle_i32x4(u[c], u[4 + c], 0x88);          // lanes 0, 2 of rows 0-3, 4-7
    x[2 * c + 1] = _mm512_shuffle_i32x4(u[c], u[4 + c], 0xdd);      // lanes 1, 3
    const __m512i y0 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0x88);
    const __m512i y1 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0xdd);
    o[c] = _mm512_shuffle_i32x4(x[2 * c], y0, 0x88);        // lane 0: column c
    o[8 + c] = _mm512_shuffle_i32x4(x[2 * c], y0, 0xdd);    // lane 2: column 8 + c
    o[4 + c] = _mm512_shuffle_i32x4(x[2 * c + 1], y1, 0x88);  // lane 1: column 4 + c
    o[12 + c] = _mm512_shuffle_i32x4(x[2 * c + 1], y1, 0xdd); // lane 3: column 12 + c
  }
}
#elif defined(__AVX2__)
/// Dwords v[e].r -> o[r].e for an 8 x 8 block.
inline void transpose8x8_epi32(const __m256i* v, __m256i* o) {
  __m256i t[8], u[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_epi32(v[2 * i], v[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_epi32(v[2 * i], v[2 * i + 1]);
  }
  for (int i = 0; i < 2; ++i) {
    u[4 * i] = _mm256_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
    u[4 * i + 1] = _mm256_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
    u[4 * i + 2] = _mm256_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    u[4 * i + 3] = _mm256_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
  for (int c = 0; c < 4; ++c) {
    o[c] = _mm256_permute2x128_si256(u[c], u[4 + c], 0x20);
    o[4 + c] = _mm256_permute2x128_si256(u[c], u[4 + c], 0x31);
  }
}
#endif


// The weight-only kernels' middle path (from the table's *_xt_rows activation rows up to its
// *_gemm_rows): register tiles on the transposed activations (WofXtArgs: panels of kWofRows rows,
// xt[k * width + i], Mp a multiple of 16, zero rows past M) and weight rows dequantized a few at a
// time into a per-thread buffer, so the
// weight is dequantized once per call into L1 and streams from memory once, and no float copy of it
// is written and read back (the GEMM path's extra pass over 4 bytes per weight). A tile holds MV
// vectors of activation rows x NR weight rows: per k one load per vector, one broadcast per weight
// row, MV * NR fused multiply-adds. Each output is one fma chain over k in ascending order (lane m
// of an accumulator does acc = fma(xt[k][m], w[n][k], acc)), so AVX2 and AVX-512 give the same bits.
struct WofVec {
#if defined(__AVX512F__)
  using T = __m512;
  static constexpr int L = 16;
  static T zero() { return _mm512_setzero_ps(); }
  static T load(const float* p) { return _mm512_load_ps(p); }
  static T loadu(const float* p) { return _mm512_loadu_ps(p); }
  static T bcast(const float* p) { return _mm512_set1_ps(*p); }
  static T fma(T a, T b, T c) { return _mm512_fmadd_ps(a, b, c); }
  static T add(T a, T b) { return _mm512_add_ps(a, b); }
  static void store(float* p, T v) { _mm512_storeu_ps(p, v); }
#else
  using T = __m256;
  static constexpr int L = 8;
  static T zero() { return _mm256_setzero_ps(); }
  static T load(const float* p) { return _mm256_load_ps(p); }
  static T loadu(const float* p) { return _mm256_loadu_ps(p); }
  static T bcast(const float* p) { return _mm256_broadcast_ss(p); }
  static T fma(T a, T b, T c) { return _mm256_fmadd_ps(a, b, c); }
  static T add(T a, T b) { return _mm256_add_ps(a, b); }
  static void store(float* p, T v) { _mm256_storeu_ps(p, v); }
#endif
};

// Tile shapes: MV * NR accumulators plus MV activation vectors and one broadcast in the register
// file (AVX-512: 2 x 12 of 32 zmm; AVX2: 2 x 6 of 16 ymm).
constexpr int kWofMV = 2;
#if defined(__AVX512F__)
constexpr int kWofNR = 12;
#else
constexpr int kWofNR = 6;
#endif
constexpr int kWofRows = kWofMV * WofVec::L;  // activation rows per full tile

/// One tile: out[j * MV * L + i] = sum_k xt[k * xs + i] * wf[j * ws + k] for i < MV * L, j < NR.
template <int MV, int NR>
void wof_tile(const float* xt, std::int64_t xs, const float* wf, std::int64_t ws, std::int64_t K, float* out) {
  using V = WofVec;
  typename V::T acc[MV][NR];
#pragma GCC unroll 32
  for (int i = 0; i < MV * NR; ++i) acc[i / NR][i % NR] = V::zero();
  for (std::int64_t k = 0; k < K; ++k, xt += xs) {
    typename V::T a[MV];
#pragma GCC unroll 4
    for (int v = 0; v < MV; ++v) a[v] = V::load(xt + v * V::L);
#pragma GCC unroll 16
    for (int j = 0; j < NR; ++j) {
      const typename V::T b = V::bcast(wf + j * ws + k);
#pragma GCC unroll 4
      for (int v = 0; v < MV; ++v) acc[v][j] = V::fma(a[v], b, acc[v][j]);
    }
  }
#pragma GCC unroll 32
  for (int i = 0; i < MV * NR; ++i) V::store(out + i * V::L, acc[i % MV][i / MV]);
}

using WofTileFn = void (*)(const float*, std::int64_t, const float*, std::int64_t, std::int64_t, float*);

template <int MV, std::size_t... J>
constexpr std::array<WofTileFn, sizeof...(J)> wof_tiles(std::index_sequence<J...>) {
  return {&wof_tile<MV, static_cast<int>(J) + 1>...};
}

/// The tile for mv activation vectors (1 or 2) and nr weight rows (1 .. kWofNR).
inline WofTileFn wof_tile_fn(int mv, int nr) {
  static constexpr auto one = wof_tiles<1>(std::make_index_sequence<kWofNR>{});
  static constexpr auto two = wof_tiles<2>(std::make_index_sequence<kWofNR>{});
  return (mv == 2 ? two : one)[static_cast<std::size_t>(nr - 1)];
}

/// Columns [n_begin, n_end) of y = x W^T (+ bias after the sum) for the activation rows in c (its
/// panels kWofRows wide: the table's wof_tile_rows; rows [0, c.M) of y from c.y, row stride N), weight row n dequantized by deq(n, row) (K floats: the float
/// form's weight bits) kWofNR rows at a time.
template <class DeqRow>
void wof_columns(const WofXtArgs& c, std::int64_t N, std::int64_t K, const float* bias, std::int64_t n_begin,
                 std::int64_t n_end, const DeqRow& deq) {
  constexpr int L = WofVec::L;
  // row stride: K rounded up to whole vectors plus one, so the kWofNR rows' broadcast streams fall in
  // different L1 sets (a stride of 4096 floats put them all in one)
  const std::int64_t ws = (K + L - 1) / L * L + L;
  struct Tag;
  float* wf = thread_scratch<float, Tag>(static_cast<std::size_t>(kWofNR * ws + kWofRows * kWofNR));
  float* out = wf + kWofNR * ws;
  for (std::int64_t n = n_begin; n < n_end; n += kWofNR) {
    const int nr = static_cast<int>(std::min<std::int64_t>(kWofNR, n_end - n));
    for (int j = 0; j < nr; ++j) deq(n + j, wf + j * ws);
    for (std::int64_t m0 = 0; m0 < c.Mp; m0 += kWofRows) {
      const int mv = static_cast<int>(std::min<std::int64_t>(kWofMV, (c.Mp - m0) / L));
      const std::int64_t rows = std::min<std::int64_t>(mv * L, c.M - m0);
      wof_tile_fn(mv, nr)(c.xt + m0 * K, mv * L, wf, ws, K, out);
      for (std::int64_t i = 0; i < rows; ++i) {
        float* y = c.y + (m0 + i) * N + n;
        const float* o = out + i;
        if (bias) {
          for (int j = 0; j < nr; ++j) y[j] = o[j * mv * L] + bias[n + j];
        } else {
          for (int j = 0; j < nr; ++j) y[j] = o[j * mv * L];
        }
      }
    }
  }
}

/// linear_w8_weight_only's middle path: wof_columns on dequant_w8f_rows' rows.
inline void gemm_w8f_xt(const QGemmW8FArgs& g, const WofXtArgs& c, std::int64_t n_begin, std::int64_t n_end) {
  wof_columns(c, g.N, g.K, g.bias, n_begin, n_end,
              [&](std::int64_t n, float* row) { dequant_w8f_rows(g, n, n + 1, row); });
}

/// linear_w4_weight_only's middle path on the row layout (pack_int4_w4's [N, K / 2] bytes):
/// wof_columns on dequant_w4_bytes' rows, each row's K / 2 bytes one contiguous run. The panel layout
/// takes the packed GEMM below instead; on the row layout that GEMM's panels are 32 runs of K-block
/// bytes, one DRAM miss after another (32 rows: 0.79x FP32 against this path's 1.27x, 4096 x 4096).
inline void gemm_w4f_xt(const QGemmW4FArgs& g, const WofXtArgs& c, std::int64_t n_begin, std::int64_t n_end) {
  const std::int64_t KB = g.K / 2;
  wof_columns(c, g.N, g.K, g.bias, n_begin, n_end,
              [&](std::int64_t n, float* row) { dequant_w4_bytes(g, n, g.w + n * KB, row); });
}

// ---------------------------------------------------------------------------------------------
// The AVX2 table's packed GEMM for linear_w4_weight_only (from its w4f_packed_rows; AVX-512's
// register tiles, avx512_w4f.cpp's gemm_w4f, outran it at every row count measured on that ISA: its
// 12 x 32 tile was 2026-12-03's seventh session's, removed in the eighth). Goto-style
// blocking with the dequantization in the weight packing. Per block of kWopMc activation rows and
// kWopKc of K: the rows' slice packed into tiles of kWopMR rows ([k][MR], in L2), then per panel of
// kWopNC output columns the weight's slice dequantized into [k][NC] (16 KiB) and register tiles
// of MR rows x NV vectors of columns (per k: NV loads, MR broadcasts,
// MR * NV fused multiply-adds) over every tile of rows, the partial sums kept in y between blocks of
// K. Each weight is dequantized once per kWopMc rows and no float copy of the weight reaches memory
// (the dequantize-then-MKL path it replaces wrote and re-read 4 bytes per weight: 0.82-0.91x FP32
// from 128 rows, 4096 x 4096). Each output is one fma chain over k in ascending order from zero, the
// bias added after the sum: the middle path's (wof_columns) bits.
// Each thread packs the activation slice itself (no barrier between the threads): the same M x K
// transposes once per thread, against N / threads fused multiply-adds per packed element.
// Tiles of MR rows x 2 vectors.
#if !defined(__AVX512F__)
constexpr int kWopNV = 2;
constexpr int kWopMR = 6;   // 12 + 2 + 1 of 16 ymm
constexpr int kWopNC = kWopNV * WofVec::L;   // output columns per panel: 16
// K and rows per block: the rows' packed slice (120 x 256 floats, 120 KiB, for the 512 KiB L2 of
// AMD's AVX2 parts) within a quarter of L2, the weight panel 16 KiB. K blocks are a multiple of 128
// (a w4 panel's step).
constexpr std::int64_t kWopKc = 256;
constexpr std::int64_t kWopMc = 120;

/// y[i * ldy + c] (i < MR, c < kWopNC) = (first ? 0 : y[i * ldy + c]) + sum_{k < kc} xp[k * MR + i] *
/// wp[k * kWopNC + c], one fma per k in ascending order; + bias[c] when bias is non-null (the last block).
template <int MR>
void wop_tile(const float* xp, const float* wp, std::int64_t kc, float* y, std::int64_t ldy, bool first,
              const float* bias) {
  using V = WofVec;
  typename V::T acc[MR][kWopNV];
#pragma GCC unroll 32
  for (int i = 0; i < MR * kWopNV; ++i)
    acc[i / kWopNV][i % kWopNV] = first ? V::zero() : V::loadu(y + (i / kWopNV) * ldy + (i % kWopNV) * V::L);
  for (std::int64_t k = 0; k < kc; ++k, xp += MR, wp += kWopNC) {
    typename V::T w[kWopNV];
#pragma GCC unroll 4
    for (int v = 0; v < kWopNV; ++v) w[v] = V::loadu(wp + v * V::L);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const typename V::T a = V::bcast(xp + i);
#pragma GCC unroll 4
      for (int v = 0; v < kWopNV; ++v) acc[i][v] = V::fma(a, w[v], acc[i][v]);
    }
  }
  if (bias) {
#pragma GCC unroll 32
    for (int i = 0; i < MR * kWopNV; ++i)
      acc[i / kWopNV][i % kWopNV] = V::add(acc[i / kWopNV][i % kWopNV], V::loadu(bias + (i % kWopNV) * V::L));
  }
#pragma GCC unroll 32
  for (int i = 0; i < MR * kWopNV; ++i) V::store(y + (i / kWopNV) * ldy + (i % kWopNV) * V::L, acc[i / kWopNV][i % kWopNV]);
}

using WopTileFn = void (*)(const float*, const float*, std::int64_t, float*, std::int64_t, bool, const float*);

template <std::size_t... I>
constexpr std::array<WopTileFn, sizeof...(I)> wop_tiles(std::index_sequence<I...>) {
  return {&wop_tile<static_cast<int>(I) + 1>...};
}

/// The tile for mr activation rows (1 .. kWopMR).
inline WopTileFn wop_tile_fn(std::int64_t mr) {
  static constexpr auto tiles = wop_tiles(std::make_index_sequence<kWopMR>{});
  return tiles[static_cast<std::size_t>(mr - 1)];
}

/// Rows [0, rows) x k [0, kc) of x (row stride K) into tiles of kWopMR rows: the tile of rows t0 ..
/// t0 + mr at xp + t0 * kc, element [k * mr + i].
/// Vectorized: 8 x 8 dword transposes, mr of the lanes stored (the scalar
/// copy cost 25 % of a 384-column layer's time: per activation element there are only N / 2 fmas).
inline void wop_pack_x(const float* x, std::int64_t K, std::int64_t rows, std::int64_t kc, float* xp) {
  constexpr int L = WofVec::L;
  for (std::int64_t t0 = 0; t0 < rows; t0 += kWopMR) {
    const int mr = static_cast<int>(std::min<std::int64_t>(kWopMR, rows - t0));
    float* d = xp + t0 * kc;
    const float* src = x + t0 * K;
    std::int64_t k = 0;
    for (; k + L <= kc; k += L) {
      __m256i v[8], o[8];
      for (int r = 0; r < 8; ++r)
        v[r] = r < mr ? _mm256_castps_si256(_mm256_loadu_ps(src + r * K + k)) : _mm256_setzero_si256();
      transpose8x8_epi32(v, o);
      // all 8 lanes, ascending: lanes mr .. 7 land on the next k's first slots (or the next tile's,
      // or the buffer's 8 floats of slack), each overwritten by a later store or left unread
      for (int j = 0; j < 8; ++j) _mm256_storeu_ps(d + (k + j) * mr, _mm256_castsi256_ps(o[j]));
    }
    for (; k < kc; ++k)
      for (int i = 0; i < mr; ++i) d[k * mr + i] = src[i * K + k];
  }
}

/// rows x kc floats (row r at tmp + r * kc; rows <= kWopNC) into the panel wp[k * kWopNC + r], the
/// columns from rows on zero: 8 x 8 dword transposes, the k tail by element.
inline void wop_transpose_rows(const float* tmp, std::int64_t rows, std::int64_t kc, float* wp) {
  constexpr int L = WofVec::L;
  std::int64_t k = 0;
  if (rows == kWopNC) {
    for (; k + L <= kc; k += L) {
      for (int h = 0; h < kWopNV; ++h) {
        __m256i v[8], o[8];
        for (int r = 0; r < 8; ++r) v[r] = _mm256_castps_si256(_mm256_loadu_ps(tmp + (h * 8 + r) * kc + k));
        transpose8x8_epi32(v, o);
        for (int j = 0; j < 8; ++j) _mm256_storeu_ps(wp + (k + j) * kWopNC + h * 8, _mm256_castsi256_ps(o[j]));
      }
    }
  }
  for (; k < kc; ++k)
    for (std::int64_t r = 0; r < kWopNC; ++r) wp[k * kWopNC + r] = r < rows ? tmp[r * kc + k] : 0.f;
}

/// y = x W^T (+ bias) for output columns [n_begin, n_end) (n_begin a multiple of kWopNC) of all M
/// rows, the weight's panels from pack_w(n0, k0, kc, wp): columns [n0, n0 + kWopNC) x k [k0, k0 + kc)
/// dequantized into wp[k * kWopNC + c] (zero columns past N).
template <class PackW, class Prefetch>
void wop_columns(const float* x, float* y, const float* bias, std::int64_t M, std::int64_t N, std::int64_t K,
                 std::int64_t n_begin, std::int64_t n_end, const PackW& pack_w, const Prefetch& prefetch_w) {
  if (K == 0) {  // an empty sum: y = the bias (or zero)
    for (std::int64_t m = 0; m < M; ++m)
      for (std::int64_t n = n_begin; n < n_end; ++n) y[m * N + n] = bias ? bias[n] : 0.f;
    return;
  }
  struct TagX;
  struct TagW;
  float* xp = thread_scratch<float, TagX>(static_cast<std::size_t>(std::min(M, kWopMc) * std::min(K, kWopKc) + 8));
  // the weight panel, then a tile's y for a partial panel, then the panel's bias zero padded
  float* wp = thread_scratch<float, TagW>(static_cast<std::size_t>((kWopKc + kWopMR + 1) * kWopNC));
  float* ytmp = wp + kWopKc * kWopNC;
  float* btmp = ytmp + kWopMR * kWopNC;
  // blocks of rows as equal as whole tiles allow (256 rows as 240 + 16 dequantized the weight a second
  // time for 16 rows)
  const std::int64_t mblocks = (M + kWopMc - 1) / kWopMc;
  const std::int64_t mc = ((M + mblocks - 1) / mblocks + kWopMR - 1) / kWopMR * kWopMR;
  for (std::int64_t m0 = 0; m0 < M; m0 += mc) {
    const std::int64_t rows = std::min(mc, M - m0);
    for (std::int64_t k0 = 0; k0 < K; k0 += kWopKc) {
      const std::int64_t kc = std::min(kWopKc, K - k0);
      const bool first = k0 == 0, last = k0 + kc == K;
      wop_pack_x(x + m0 * K + k0, K, rows, kc, xp);
      for (std::int64_t n0 = n_begin; n0 < n_end; n0 += kWopNC) {
        pack_w(n0, k0, kc, wp);
        // the next panel's codes towards L2 while this one's tiles run, a share per tile (its rows'
        // short runs of K otherwise reach the packing as one DRAM miss after another)
        // (after the last panel of a block of K: the first one of the next block of K, or of rows)
        bool next = true;
        std::int64_t pn = n0 + kWopNC, pk0 = k0, pkc = kc;
        if (pn >= n_end) {
          pn = n_begin;
          if (k0 + kc < K) {
            pk0 = k0 + kc;
            pkc = std::min(kWopKc, K - pk0);
          } else if (m0 + mc < M) {
            pk0 = 0;
            pkc = std::min(kWopKc, K);
          } else {
            next = false;
          }
        }
        const std::int64_t parts = (rows + kWopMR - 1) / kWopMR;
        const std::int64_t nc = std::min<std::int64_t>(kWopNC, N - n0);
        const float* b = last && bias ? bias + n0 : nullptr;
        if (b && nc < kWopNC) {
          for (std::int64_t c = 0; c < kWopNC; ++c) btmp[c] = c < nc ? b[c] : 0.f;
          b = btmp;
        }
        for (std::int64_t t0 = 0; t0 < rows; t0 += kWopMR) {
          const std::int64_t mr = std::min<std::int64_t>(kWopMR, rows - t0);
          float* yt = y + (m0 + t0) * N + n0;
          if (next) prefetch_w(pn, pk0, pkc, t0 / kWopMR, parts);
          if (nc == kWopNC) {
            if (t0 + kWopMR < rows) {  // the next tile's y rows (partial sums or stores) on their way
              const float* yn = yt + kWopMR * N;
              for (int i = 0; i < kWopMR; ++i)
                for (int v = 0; v < kWopNC; v += 16) _mm_prefetch(reinterpret_cast<const char*>(yn + i * N + v), _MM_HINT_T0);
            }
            wop_tile_fn(mr)(xp + t0 * kc, wp, kc, yt, N, first, b);
            continue;
          }
          // a partial panel (N not a multiple of kWopNC): the tile through ytmp
          for (std::int64_t i = 0; i < mr; ++i)
            for (std::int64_t c = 0; c < kWopNC; ++c) ytmp[i * kWopNC + c] = (!first && c < nc) ? yt[i * N + c] : 0.f;
          wop_tile_fn(mr)(xp + t0 * kc, wp, kc, ytmp, kWopNC, first, b);
          for (std::int64_t i = 0; i < mr; ++i) std::memcpy(yt + i * N, ytmp + i * kWopNC, sizeof(float) * nc);
        }
      }
    }
  }
}

/// One group's chunk of a 16-row block of the panel layout (codes cp: 4 dwords x 8 k per row, each
/// dword's byte j holding k = 4 e + j in its low nibble and k + 16 in its high one) into the panel's
/// rows out[k * kWopNC + r], k < 32, r < 16: (float(q - 8) - z) * s with the block's 16 scales sp (and
/// zeros zp when Z). Each 64-byte row written by two consecutive stores, and no zero subtracted
/// without zeros (x - 0 = x: the same bits): 1.02-1.08x the packed GEMM's speed at MiniLM's 12-row
/// shapes against the loop it replaced (docs/benchmarks.md, 2026-12-04).
template <bool Z>
inline void w4_panel_chunk(const std::uint8_t* cp, const float* sp, const float* zp, float* out) {
  const __m256i low4 = _mm256_set1_epi32(15), eight = _mm256_set1_epi32(8);
  const __m256 s0 = _mm256_loadu_ps(sp), s1 = _mm256_loadu_ps(sp + 8);
  __m256 z0 = _mm256_setzero_ps(), z1 = z0;
  if constexpr (Z) {
    z0 = _mm256_loadu_ps(zp);
    z1 = _mm256_loadu_ps(zp + 8);
  }
  const auto val = [&](__m256i q, __m256 s, __m256 z) {
    __m256 f = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_and_si256(q, low4), eight));
    if constexpr (Z) f = _mm256_sub_ps(f, z);
    return _mm256_mul_ps(f, s);
  };
  for (int ee = 0; ee < 4; ++ee) {
    const __m256i v0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(cp + ee * 64));
    const __m256i v1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(cp + ee * 64 + 32));
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) {
      float* o = out + (4 * ee + j) * kWopNC;
      _mm256_storeu_ps(o, val(_mm256_srli_epi32(v0, 8 * j), s0, z0));
      _mm256_storeu_ps(o + 8, val(_mm256_srli_epi32(v1, 8 * j), s1, z1));
      _mm256_storeu_ps(o + 16 * kWopNC, val(_mm256_srli_epi32(v0, 8 * j + 4), s0, z0));
      _mm256_storeu_ps(o + 16 * kWopNC + 8, val(_mm256_srli_epi32(v1, 8 * j + 4), s1, z1));
    }
  }
}

/// linear_w4_weight_only's packed GEMM. The panel layout (what qatkit.load gives) dequantizes straight
/// into the [k][column] order: each of its dwords holds 16 rows' codes of 8 k, so a vector of them is
/// a vector of columns (and blocked scales one load per group); the row layout goes through
/// dequant_w4_range and wop_transpose_rows. Both give dequant_w4_bytes' bits, (float(q) - z) * s.
inline void gemm_w4f_packed(const QGemmW4FArgs& g, std::int64_t n_begin, std::int64_t n_end) {
  struct Tag;
  float* tmp = thread_scratch<float, Tag>(static_cast<std::size_t>(kWopNC * kWopKc + 2 * kWopNC));
  float* svec = tmp + kWopNC * kWopKc;  // a block's 16 scales / zeros of one group (row-layout scales)
  float* zvec = svec + kWopNC;
  const std::int64_t KB = g.K / 2, G = g.K / g.group, steps = (KB + 63) / 64;
  wop_columns(g.x, g.y, g.bias, g.M, g.N, g.K, n_begin, n_end,
              [&](std::int64_t n0, std::int64_t k0, std::int64_t kc, float* wp) {
                const std::int64_t rows = std::min<std::int64_t>(kWopNC, g.N - n0);
                if (!g.panel) {
                  for (std::int64_t r = 0; r < rows; ++r) dequant_w4_range(g, n0 + r, g.w + (n0 + r) * KB, k0, k0 + kc, tmp + r * kc);
                  wop_transpose_rows(tmp, rows, kc, wp);
                  return;
                }
                for (std::int64_t h = 0; h < kWopNC / 16; ++h) {  // the panel's 16-row blocks
                  const std::int64_t nb = n0 + 16 * h;
                  if (nb >= g.N) {  // a block past N: zero columns
                    for (std::int64_t k = 0; k < kc; ++k) std::memset(wp + k * kWopNC + 16 * h, 0, 16 * sizeof(float));
                    continue;
                  }
                  const std::uint8_t* src = g.w + (nb / 16) * steps * 1024;
                  for (std::int64_t kk = k0; kk < k0 + kc; kk += 32) {  // a chunk of 32 k: one group
                    const std::int64_t gi = kk / g.group, st = kk / 128, c = (kk % 128) / 32;
                    const float* sp;
                    const float* zp = nullptr;
                    if (g.blocked_scales) {
                      sp = g.gscale + ((nb / 16) * G + gi) * 16;
                      if (g.gzero) zp = g.gzero + ((nb / 16) * G + gi) * 16;
                    } else {
                      for (int r = 0; r < 16; ++r) {
                        const bool in = nb + r < g.N;
                        svec[r] = in ? g.gscale[(nb + r) * G + gi] : 0.f;
                        zvec[r] = in && g.gzero ? g.gzero[(nb + r) * G + gi] : 0.f;
                      }
                      sp = svec;
                      if (g.gzero) zp = zvec;
                    }
                    float* out = wp + (kk - k0) * kWopNC + 16 * h;
                    const std::uint8_t* cp = src + st * 1024 + c * 4 * 64;  // dwords e = 4c .. 4c + 3
                    if (zp) w4_panel_chunk<true>(cp, sp, zp, out);
                    else w4_panel_chunk<false>(cp, sp, zp, out);
                  }
                }
              },
              [&](std::int64_t n0, std::int64_t k0, std::int64_t kc, std::int64_t part, std::int64_t parts) {
                const std::int64_t rows = std::min<std::int64_t>(kWopNC, g.N - n0);
                if (!g.panel) {  // rows of kc / 2 bytes
                  const std::int64_t lines = (kc / 2 + 63) / 64, total = rows * lines;
                  for (std::int64_t l = total * part / parts; l < total * (part + 1) / parts; ++l)
                    _mm_prefetch(reinterpret_cast<const char*>(g.w + (n0 + l / lines) * KB + k0 / 2 + (l % lines) * 64),
                                 _MM_HINT_T1);
                  return;
                }
                // the panel: per 16-row block, the steps of k0 .. k0 + kc (1024 bytes each)
                const std::int64_t s0 = k0 / 128, s1 = std::min(steps, (k0 + kc + 127) / 128);
                const std::int64_t lines = (s1 - s0) * 16, total = (rows + 15) / 16 * lines;
                for (std::int64_t l = total * part / parts; l < total * (part + 1) / parts; ++l)
                  _mm_prefetch(reinterpret_cast<const char*>(g.w + ((n0 / 16) + l / lines) * steps * 1024 + s0 * 1024 +
                                                             (l % lines) * 64),
                               _MM_HINT_T1);
              });
}
#endif  // !__AVX512F__ (the packed GEMM)
#endif

}  // namespace
}  // namespace qatkit::kernels::cpu::detail
