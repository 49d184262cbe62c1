// The int8 depthwise convs on AVX-512 (vpdpwssd): channels-last pixels, and stride-1 planes (a
// stride-2 conv's planes split into their parity planes: split_planes_s16).
#include "avx512_common.h"

#ifdef QATKIT_AVX512_KERNELS
namespace qatkit::kernels::cpu::avx512 {
namespace {

// One pair of taps: the 32 codes at a and at b (lanes under m), interleaved per 128-bit lane, against
// the pair's weights (wl for the lanes unpacklo gathers, wh for unpackhi's) into lo and hi (vpdpwssd).
inline void dw_pair(__m512i& lo, __m512i& hi, __mmask32 m, const std::int16_t* a, const std::int16_t* b, __m512i wl,
                    __m512i wh) {
  const __m512i x0 = _mm512_maskz_loadu_epi16(m, a), x1 = _mm512_maskz_loadu_epi16(m, b);
  lo = _mm512_dpwssd_epi32(lo, _mm512_unpacklo_epi16(x0, x1), wl);
  hi = _mm512_dpwssd_epi32(hi, _mm512_unpackhi_epi16(x0, x1), wh);
}


// Channels-last depthwise conv (QDwConvArgs' nhwc form), 32 channels per step: the AVX2 table's
// form at 512 bits (pairs of taps, their codes interleaved per 128-bit lane against the weights
// interleaved the same way once per call) with vpdpwssd adding each pair's two products into the
// int32 lanes (the same exact sums: |x| <= 128, |w| <= 127), the two accumulators' lanes (channels
// 0-3, 8-11, 16-19, 24-27 and 4-7, 12-15, ...) put back in order by two vpermt2d, then requantize's
// operations on 16 lanes; a last block of fewer than 32 channels under masks (no scalar tail). Any
// kernel size (pairs at run time); 3 x 3 kernels take dwconv_nhwc_rows3x3 below.
void dwconv_nhwc_rows(const QDwConvArgs& g, std::int64_t oh_begin, std::int64_t oh_end, const std::int64_t* off,
                      const std::int16_t* wi, std::int64_t pairs) {
  const std::int64_t C = g.C, blocks = (C + 31) / 32;
  const std::int64_t Wo = g.Wo, Wp = g.Wp, sh = g.sh, sw = g.sw;
  const std::int16_t* const x = g.x;
  const std::int32_t* const corr = g.corr;
  const float* const out_scale = g.out_scale;
  const float* const bias = g.bias;
  float* const yall = g.y;
  const __m512i idx0 = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
  const __m512i idx1 = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
  for (std::int64_t oh = oh_begin; oh < oh_end; ++oh) {
    for (std::int64_t ow = 0; ow < Wo; ++ow) {
      const std::int16_t* xp = x + ((oh * sh) * Wp + ow * sw) * C;  // tap (0, 0)
      float* y = yall + (oh * Wo + ow) * C;
      for (std::int64_t b = 0; b < blocks; ++b) {
        const std::int64_t c0 = b * 32, nc = std::min<std::int64_t>(32, C - c0);
        const __mmask32 m = nc == 32 ? ~__mmask32{0} : static_cast<__mmask32>((1u << nc) - 1);
        __m512i lo = _mm512_setzero_si512(), hi = _mm512_setzero_si512();
        const std::int16_t* w = wi + b * 64;
        const std::int16_t* xb = xp + c0;
        #pragma GCC unroll 8
        for (std::int64_t p = 0; p < pairs; ++p) {
          dw_pair(lo, hi, m, xb + off[2 * p], xb + off[2 * p + 1], _mm512_loadu_si512(w + p * blocks * 64),
                  _mm512_loadu_si512(w + p * blocks * 64 + 32));
        }
        const __m512i s[2] = {_mm512_permutex2var_epi32(lo, idx0, hi), _mm512_permutex2var_epi32(lo, idx1, hi)};
        for (int h = 0; h < 2 && 16 * h < nc; ++h) {
          const std::int64_t c = c0 + 16 * h, nh = std::min<std::int64_t>(16, nc - 16 * h);
          const __mmask16 mh = nh == 16 ? __mmask16{0xFFFF} : static_cast<__mmask16>((1u << nh) - 1);
          const __m512i acc = _mm512_add_epi32(s[h], _mm512_maskz_loadu_epi32(mh, corr + c));
          __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(acc), _mm512_maskz_loadu_ps(mh, out_scale + c));
          if (bias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mh, bias + c));
          _mm512_mask_storeu_ps(y + c, mh, v);
        }
      }
    }
  }
}

// A 3 x 3 kernel (5 pairs) with the loops swapped: per output row and block of 32 channels, the
// block's 10 interleaved weight vectors and its requantization constants stay in registers across
// the row's pixels (per pixel and block: 10 code loads, where the per-pixel form, dwconv_nhwc_rows,
// also loads 10 weight vectors and 6 constants: its loads, one 512-bit load a cycle on Zen 4, bounded
// it; 1.02-1.36x on MobileNetV2's shapes, docs/benchmarks.md, nineteenth session). The same
// operations per output: the same bits.
void dwconv_nhwc_rows3x3(const QDwConvArgs& g, std::int64_t oh_begin, std::int64_t oh_end, const std::int64_t* off,
                         const std::int16_t* wi) {
  constexpr int P = 5;
  const std::int64_t C = g.C, blocks = (C + 31) / 32;
  const std::int64_t Wo = g.Wo, Wp = g.Wp, sh = g.sh, step = g.sw * C;
  const std::int16_t* const x = g.x;
  const std::int32_t* const corr = g.corr;
  const float* const out_scale = g.out_scale;
  const float* const bias = g.bias;
  float* const yall = g.y;
  std::int64_t o[2 * P];
  for (int t = 0; t < 2 * P; ++t) o[t] = off[t];
  const __m512i idx0 = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
  const __m512i idx1 = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
  for (std::int64_t oh = oh_begin; oh < oh_end; ++oh) {
    for (std::int64_t b = 0; b < blocks; ++b) {
      const std::int64_t c0 = b * 32, nc = std::min<std::int64_t>(32, C - c0);
      const __mmask32 m = nc == 32 ? ~__mmask32{0} : static_cast<__mmask32>((1u << nc) - 1);
      const std::int64_t n1 = std::max<std::int64_t>(0, std::min<std::int64_t>(16, nc - 16));
      const __mmask16 m0 = nc >= 16 ? __mmask16{0xFFFF} : static_cast<__mmask16>((1u << nc) - 1);
      const __mmask16 m1 = n1 == 16 ? __mmask16{0xFFFF} : static_cast<__mmask16>((1u << n1) - 1);
      __m512i wl[P], wh[P];
#pragma GCC unroll 8
      for (int p = 0; p < P; ++p) {
        wl[p] = _mm512_loadu_si512(wi + (p * blocks + b) * 64);
        wh[p] = _mm512_loadu_si512(wi + (p * blocks + b) * 64 + 32);
      }
      const __m512i cr0 = _mm512_maskz_loadu_epi32(m0, corr + c0), cr1 = _mm512_maskz_loadu_epi32(m1, corr + c0 + 16);
      const __m512 os0 = _mm512_maskz_loadu_ps(m0, out_scale + c0), os1 = _mm512_maskz_loadu_ps(m1, out_scale + c0 + 16);
      const __m512 bs0 = bias ? _mm512_maskz_loadu_ps(m0, bias + c0) : _mm512_setzero_ps();
      const __m512 bs1 = bias ? _mm512_maskz_loadu_ps(m1, bias + c0 + 16) : _mm512_setzero_ps();
      const std::int16_t* xb = x + (oh * sh) * Wp * C + c0;  // pixel (oh, 0)'s tap (0, 0)
      float* y = yall + oh * Wo * C + c0;
      for (std::int64_t ow = 0; ow < Wo; ++ow, xb += step, y += C) {
        __m512i lo = _mm512_setzero_si512(), hi = _mm512_setzero_si512();
#pragma GCC unroll 8
        for (int p = 0; p < P; ++p) {
          dw_pair(lo, hi, m, xb + o[2 * p], xb + o[2 * p + 1], wl[p], wh[p]);
        }
        const __m512i s0 = _mm512_add_epi32(_mm512_permutex2var_epi32(lo, idx0, hi), cr0);
        __m512 v0 = _mm512_mul_ps(_mm512_cvtepi32_ps(s0), os0);
        if (bias) v0 = _mm512_add_ps(v0, bs0);
        _mm512_mask_storeu_ps(y, m0, v0);
        if (n1 > 0) {
          const __m512i s1 = _mm512_add_epi32(_mm512_permutex2var_epi32(lo, idx1, hi), cr1);
          __m512 v1 = _mm512_mul_ps(_mm512_cvtepi32_ps(s1), os1);
          if (bias) v1 = _mm512_add_ps(v1, bs1);
          _mm512_mask_storeu_ps(y + 16, m1, v1);
        }
      }
    }
  }
}

void dwconv_nhwc(const QDwConvArgs& g, std::int64_t oh_begin, std::int64_t oh_end) {
  const std::int64_t C = g.C, taps = g.kh * g.kw, pairs = (taps + 1) / 2, blocks = (C + 31) / 32;
  const std::int64_t* off = detail::dwconv_pair_offsets(g);
  struct TagW;  // the interleaved weights, [pair][block][2][32] (every element written below)
  const BoundedScratch<std::int16_t, TagW> wi_buf(static_cast<std::size_t>(pairs * blocks * 64));
  std::int16_t* const wi = wi_buf.get();
  for (std::int64_t p = 0; p < pairs; ++p) {
    for (std::int64_t b = 0; b < blocks; ++b) {
      const std::int64_t c0 = b * 32, nc = std::min<std::int64_t>(32, C - c0);
      const __mmask32 m = nc == 32 ? ~__mmask32{0} : static_cast<__mmask32>((1u << nc) - 1);
      const __m512i w0 = _mm512_maskz_loadu_epi16(m, g.w + 2 * p * C + c0);
      const __m512i w1 = 2 * p + 1 < taps ? _mm512_maskz_loadu_epi16(m, g.w + (2 * p + 1) * C + c0)
                                          : _mm512_setzero_si512();
      std::int16_t* d = wi + (p * blocks + b) * 64;
      _mm512_storeu_si512(d, _mm512_unpacklo_epi16(w0, w1));
      _mm512_storeu_si512(d + 32, _mm512_unpackhi_epi16(w0, w1));
    }
  }
  if (pairs == 5) {
    dwconv_nhwc_rows3x3(g, oh_begin, oh_end, off, wi);
  } else {
    dwconv_nhwc_rows(g, oh_begin, oh_end, off, wi, pairs);
  }
}


// The planar form (QDwConvArgs' [C, Hp, Wp] planes, output channels [n_begin, n_end)) at stride 1:
// dwconv_channels' flat run (acc[oh * Wp + ow] over the padded grid, so each tap is one shifted run
// of codes) 32 positions a step, in registers: per pair of taps two shifted 32-code loads,
// interleaved per 128-bit lane (dwconv_nhwc_rows' form along the run instead of the channels) against
// the pair's two weights broadcast as one int32, vpdpwssd into two accumulators, put back in order by
// two vpermt2d; requantize's operations on 16 lanes, then only the lanes of real columns (ow < Wo;
// the run's Wp - Wo padding columns are computed and dropped) packed by vcompressps (the register
// form) and stored at the plane's next output, so the [Ho, Wo] plane is written in order. Each
// position's column is kept in an int16 lane vector stepped by 32 mod Wp. The same exact sums and
// requantization as dwconv_channels: the same bits. P: the pairs (5 for 3 x 3), 0 at run time.
// Other strides: dwconv_channels.
// With several outputs per input channel (QDwConvArgs' Ng > 1) the consecutive output channels of a
// plane run G at a time (G <= 4): each pair's two loads and interleaves once, against the G
// channels' weights (G accumulator pairs); the lanes to keep once, then each channel's
// requantization and store as with one. The same operations per output: the same bits.
template <int P, int G>
void dwconv_planes_flat_group(const QDwConvArgs& g, std::int64_t n, std::int64_t np, const std::int64_t* off,
                              const std::int16_t* col0) {
  const std::int64_t Wp = g.Wp, Wo = g.Wo, run = g.Ho * Wp;
  std::int32_t wpair[G][detail::kDwFlatPairs];
  detail::DwPlaneChannel ch[G];
  for (int j = 0; j < G; ++j) ch[j] = detail::dwconv_plane_channel(g, n + j, np, wpair[j]);
  const __m512i idx0 = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
  const __m512i idx1 = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
  const __m512i adv = _mm512_set1_epi16(static_cast<std::int16_t>(32 % Wp));
  const __m512i wp16 = _mm512_set1_epi16(static_cast<std::int16_t>(Wp));
  const __m512i wo16 = _mm512_set1_epi16(static_cast<std::int16_t>(Wo));
  const std::int16_t* xc = ch[0].x;  // the G channels' plane
  float* y[G];
  for (int j = 0; j < G; ++j) y[j] = ch[j].y;
  __m512i col = _mm512_load_si512(col0);
  for (std::int64_t t = 0; t < run; t += 32) {
    const std::int64_t left = run - t;
    const __mmask32 lm = left >= 32 ? ~__mmask32{0} : static_cast<__mmask32>((1u << left) - 1);
    __m512i lo[G], hi[G];
    for (int j = 0; j < G; ++j) lo[j] = hi[j] = _mm512_setzero_si512();
    const std::int16_t* xb = xc + t;
#pragma GCC unroll 8
    for (std::int64_t p = 0; p < np; ++p) {  // (P: np a constant, the pairs unrolled)
      const __m512i x0 = _mm512_maskz_loadu_epi16(lm, xb + off[2 * p]);
      const __m512i x1 = _mm512_maskz_loadu_epi16(lm, xb + off[2 * p + 1]);
      const __m512i ul = _mm512_unpacklo_epi16(x0, x1), uh = _mm512_unpackhi_epi16(x0, x1);
      for (int j = 0; j < G; ++j) {
        const __m512i w = _mm512_set1_epi32(wpair[j][p]);
        lo[j] = _mm512_dpwssd_epi32(lo[j], ul, w);
        hi[j] = _mm512_dpwssd_epi32(hi[j], uh, w);
      }
    }
    // the lanes of real columns among the run's positions
    const __mmask32 keep = _mm512_mask_cmplt_epi16_mask(lm, col, wo16);
    col = _mm512_add_epi16(col, adv);
    col = _mm512_mask_sub_epi16(col, _mm512_cmpge_epi16_mask(col, wp16), col, wp16);
    const __mmask16 mk[2] = {static_cast<__mmask16>(keep), static_cast<__mmask16>(keep >> 16)};
    const int cnt[2] = {__builtin_popcount(static_cast<unsigned>(mk[0])), __builtin_popcount(static_cast<unsigned>(mk[1]))};
    for (int j = 0; j < G; ++j) {
      const __m512i cr = _mm512_set1_epi32(ch[j].corr);
      const __m512 os = _mm512_set1_ps(ch[j].scale);
      const __m512i s[2] = {_mm512_add_epi32(_mm512_permutex2var_epi32(lo[j], idx0, hi[j]), cr),
                            _mm512_add_epi32(_mm512_permutex2var_epi32(lo[j], idx1, hi[j]), cr)};
#pragma GCC unroll 2
      for (int h = 0; h < 2; ++h) {
        __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(s[h]), os);
        if (g.bias) v = _mm512_add_ps(v, _mm512_set1_ps(ch[j].bias));
        _mm512_mask_storeu_ps(y[j], static_cast<__mmask16>((1u << cnt[h]) - 1), _mm512_maskz_compress_ps(mk[h], v));
        y[j] += cnt[h];
      }
    }
  }
}

template <int P>
void dwconv_planes_flat(const QDwConvArgs& g, std::int64_t n_begin, std::int64_t n_end, std::int64_t pairs) {
  const std::int64_t np = P > 0 ? P : pairs;
  detail::dwconv_plane_groups<32>(g, n_begin, n_end, np, [&](std::int64_t n, auto gc, const std::int64_t* off,
                                                          const std::int16_t* col0) {
    constexpr int G = decltype(gc)::value;
    dwconv_planes_flat_group<P, G>(g, n, np, off, col0);
  });
}

void dwconv_planes(const QDwConvArgs& g, std::int64_t n_begin, std::int64_t n_end) {
  detail::dwconv_planes_with<&dwconv_planes_flat<5>, &dwconv_planes_flat<0>>(g, n_begin, n_end);
}


// QGemmKernels::split_planes_s16: each row of the padded plane deinterleaved by vpermt2w, 64 codes
// (32 even-column, 32 odd-column) a step, the row's last step under masks (the same for every row,
// so computed once); row r into parity planes (r % 2, 0) and (r % 2, 1) at row r / 2.
void split_planes_s16(const std::int16_t* p, std::int64_t Hp, std::int64_t Wp, std::int16_t* q, std::int64_t Hq,
                      std::int64_t Wq) {
  const __m512i even = _mm512_set_epi16(62, 60, 58, 56, 54, 52, 50, 48, 46, 44, 42, 40, 38, 36, 34, 32, 30, 28, 26,
                                        24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  const __m512i odd = _mm512_add_epi16(even, _mm512_set1_epi16(1));
  const auto low = [](std::int64_t n) {  // the first n (0..32) of 32 lanes
    return n >= 32 ? ~__mmask32{0} : static_cast<__mmask32>((1u << n) - 1);
  };
  const std::int64_t plane = Hq * Wq, full = Wp / 64 * 64, left = Wp - full;
  // the last step's masks: its loads (left codes over two vectors), its even and odd stores
  const __mmask32 l0 = low(left), l1 = low(left > 32 ? left - 32 : 0), se = low((left + 1) / 2), so = low(left / 2);
  for (std::int64_t r = 0; r < Hp; ++r) {
    const std::int16_t* src = p + r * Wp;
    std::int16_t* qe = q + (2 * (r % 2)) * plane + (r / 2) * Wq;  // parity plane (r % 2, 0)
    std::int16_t* qo = qe + plane;                                // (r % 2, 1)
    for (std::int64_t c = 0; c < full; c += 64) {
      const __m512i a = _mm512_loadu_si512(src + c), b = _mm512_loadu_si512(src + c + 32);
      _mm512_storeu_si512(qe + c / 2, _mm512_permutex2var_epi16(a, even, b));
      _mm512_storeu_si512(qo + c / 2, _mm512_permutex2var_epi16(a, odd, b));
    }
    if (left > 0) {
      const __m512i a = _mm512_maskz_loadu_epi16(l0, src + full), b = _mm512_maskz_loadu_epi16(l1, src + full + 32);
      _mm512_mask_storeu_epi16(qe + full / 2, se, _mm512_permutex2var_epi16(a, even, b));
      _mm512_mask_storeu_epi16(qo + full / 2, so, _mm512_permutex2var_epi16(a, odd, b));
    }
  }
}

}  // namespace

void add_dwconv(QGemmKernels& t) {
  t.dwconv_nhwc = &dwconv_nhwc;
  t.dwconv = &dwconv_planes;
  t.dwconv_flat = true;
  t.split_planes_s16 = &split_planes_s16;
}

}  // namespace qatkit::kernels::cpu::avx512
#endif
