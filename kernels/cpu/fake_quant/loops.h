// Fake-quant chunk loops (forward, mask backward, LSQ and PACT backward, qparam validity), shared
// by every instruction set: included once per ISA translation unit, each with its own `Vec` policy
// that supplies 8-element bodies; the scalar head/tail and the channel bookkeeping live here once.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "../../common/fake_quant_args.h"
#include "../elem.h"

namespace qatkit::kernels::cpu {
// Internal linkage: each ISA translation unit gets its own copy (see elem.h).
namespace {
namespace detail {

/// Fake-quantizes one element; returns its mask bit.
template <typename S>
inline std::uint32_t scalar8_const_one(const S* x, S* y, float s, float z, float qmin, float qmax) {
  using E = Elem<S>;
  using C = typename E::C;
  std::uint32_t in;
  *y = E::store(fake_quant_value<C>(E::load(*x), static_cast<C>(1.0f / s), static_cast<C>(s), static_cast<C>(qmin - z),
                                    static_cast<C>(qmax - z), in));
  return in;
}

/// Appends mask bits in element order; a chunk starts on a byte boundary.
struct BitWriter {
  std::uint8_t* out;
  std::uint32_t acc = 0;
  int count = 0;
  void push1(std::uint32_t bit) {
    acc |= bit << count;
    if (++count == 8) {
      *out++ = static_cast<std::uint8_t>(acc);
      acc = 0;
      count = 0;
    }
  }
  void push8(std::uint32_t bits) {
    acc |= bits << count;
    *out++ = static_cast<std::uint8_t>(acc);
    acc >>= 8;
  }
  void push16(std::uint32_t bits) {
    push8(bits & 0xFFu);
    push8(bits >> 8);
  }
  void flush() {
    if (count > 0) *out = static_cast<std::uint8_t>(acc);
  }
};

/// Scalar reference body: 8 elements sharing one (s, inv_s, z).
template <typename S>
inline std::uint32_t scalar8_const(const S* x, S* y, float s, float inv, float z, float qmin, float qmax) {
  using E = Elem<S>;
  using C = typename E::C;
  std::uint32_t bits = 0;
  for (int k = 0; k < 8; ++k) {
    std::uint32_t in;
    y[k] = E::store(fake_quant_value<C>(E::load(x[k]), static_cast<C>(inv), static_cast<C>(s), static_cast<C>(qmin - z),
                                        static_cast<C>(qmax - z), in));
    bits |= in << k;
  }
  return bits;
}

/// Scalar reference body: 8 elements with their own qparams s[k], z[k].
template <typename S>
inline std::uint32_t scalar8_vary(const S* x, S* y, const float* s, const float* z, float qmin, float qmax) {
  std::uint32_t bits = 0;
  for (int k = 0; k < 8; ++k) bits |= scalar8_const_one(x + k, y + k, s[k], z[k], qmin, qmax) << k;
  return bits;
}

template <typename S, bool kMask>
inline void scalar1(const S* x, S* y, float s, float z, float qmin, float qmax, BitWriter& bw) {
  const std::uint32_t in = scalar8_const_one(x, y, s, z, qmin, qmax);
  if constexpr (kMask) bw.push1(in);
}

/// Forward over [begin, end). The Vec policy supplies the bodies, each returning mask bits:
///   fwd16_const<S>(x, y, s, inv_s, z, qmin, qmax) / fwd8_const: qparams shared by the elements
///   (passed by value so they stay in registers across the loop);
///   fwd8_vary<S>(x, y, s_ptr, z_ptr, qmin, qmax): element k uses s_ptr[k], z_ptr[k].
/// Disabled launch: y = x and every mask bit set (bits past numel stay 0).
template <typename S, bool kMask>
void passthrough_chunk(const FakeQuantArgs& a, std::int64_t begin, std::int64_t end) {
  std::memcpy(static_cast<S*>(a.output) + begin, static_cast<const S*>(a.input) + begin,
              static_cast<std::size_t>(end - begin) * sizeof(S));
  if constexpr (kMask) {
    for (std::int64_t b = begin / 8; b * 8 < end; ++b) {
      const std::int64_t n = std::min<std::int64_t>(8, end - b * 8);
      a.mask[b] = static_cast<std::uint8_t>((1u << n) - 1u);
    }
  }
}

template <class Vec, typename S, bool kMask>
void forward_chunk(const FakeQuantArgs& a, std::int64_t begin, std::int64_t end) {
  if (a.enabled != nullptr && *a.enabled == 0) return passthrough_chunk<S, kMask>(a, begin, end);
  const S* x = static_cast<const S*>(a.input);
  S* y = static_cast<S*>(a.output);
  BitWriter bw{kMask ? a.mask + begin / 8 : nullptr};
  const float qmin = a.quant_min, qmax = a.quant_max;
  std::int64_t i = begin;
  if (a.inner == 1 && a.channels > 1) {
    // qparams change every element (per-channel along the innermost dim): walk rows.
    while (i < end) {
      std::int64_t c = i % a.channels;
      const std::int64_t row_end = std::min(end, i + (a.channels - c));
      for (; i + 8 <= row_end; i += 8, c += 8) {
        const std::uint32_t bits = Vec::template fwd8_vary<S>(x + i, y + i, a.scale + c, a.zero_point + c, qmin, qmax);
        if constexpr (kMask) bw.push8(bits);
      }
      for (; i < row_end; ++i, ++c) scalar1<S, kMask>(x + i, y + i, a.scale[c], a.zero_point[c], qmin, qmax, bw);
    }
  } else {
    // qparams constant over runs of `inner` elements.
    while (i < end) {
      const std::int64_t block = i / a.inner;
      const std::int64_t c = block % a.channels;
      const std::int64_t run_end = std::min(end, (block + 1) * a.inner);
      const float s = a.scale[c];
      const float inv = 1.0f / s;
      const float z = a.zero_point[c];
      for (; i + 16 <= run_end; i += 16) {
        const std::uint32_t bits = Vec::template fwd16_const<S>(x + i, y + i, s, inv, z, qmin, qmax);
        if constexpr (kMask) bw.push16(bits);
      }
      for (; i + 8 <= run_end; i += 8) {
        const std::uint32_t bits = Vec::template fwd8_const<S>(x + i, y + i, s, inv, z, qmin, qmax);
        if constexpr (kMask) bw.push8(bits);
      }
      for (; i < run_end; ++i) scalar1<S, kMask>(x + i, y + i, s, z, qmin, qmax, bw);
    }
  }
  if constexpr (kMask) bw.flush();
}

/// Backward over [begin, end); begin is a multiple of 8. Vec::bwd8<S>(g, bits, dx).
template <class Vec, typename S>
void backward_chunk(const FakeQuantBackwardArgs& a, std::int64_t begin, std::int64_t end) {
  const S* g = static_cast<const S*>(a.grad_output);
  S* dx = static_cast<S*>(a.grad_input);
  const std::uint8_t* m = a.mask;
  std::int64_t i = begin;
  for (; i + 8 <= end; i += 8) Vec::template bwd8<S>(g + i, m[i >> 3], dx + i);
  for (; i < end; ++i) {
    const bool keep = (m[i >> 3] >> (i & 7)) & 1u;
    dx[i] = keep ? g[i] : S{};
  }
}

template <class Vec>
void forward_dispatch(const FakeQuantArgs& a, std::int64_t begin, std::int64_t end) {
  const bool m = a.mask != nullptr;
  switch (a.dtype) {
    case DType::kFloat32:
      return m ? forward_chunk<Vec, float, true>(a, begin, end) : forward_chunk<Vec, float, false>(a, begin, end);
    case DType::kFloat64:
      return m ? forward_chunk<Vec, double, true>(a, begin, end) : forward_chunk<Vec, double, false>(a, begin, end);
    case DType::kFloat16:
      return m ? forward_chunk<Vec, Half, true>(a, begin, end) : forward_chunk<Vec, Half, false>(a, begin, end);
    case DType::kBFloat16:
      return m ? forward_chunk<Vec, BFloat16, true>(a, begin, end) : forward_chunk<Vec, BFloat16, false>(a, begin, end);
  }
}

/// LSQ gradients of one element in storage type S; adds its terms to the given accumulators.
template <typename S>
inline void lsq_one(const S* x, const S* dy, S* dx, float s, float inv, float lo, float hi, double& ds_acc,
                    double& dz_acc) {
  using E = Elem<S>;
  using C = typename E::C;
  C gx, gs, gz;
  lsq_grads<C>(E::load(*x), E::load(*dy), static_cast<C>(inv), static_cast<C>(s), static_cast<C>(lo),
               static_cast<C>(hi), gx, gs, gz);
  *dx = E::store(gx);
  ds_acc += static_cast<double>(gs);
  dz_acc += static_cast<double>(gz);
}


/// LSQ backward of a constant-qparam run. Vec::lsq8<S>(x, dy, dx, s, inv, lo, hi, ds[8], dz[8])
/// adds element k's terms to lane k.
template <class Vec, typename S>
void lsq_run(const LsqBackwardArgs& a, std::int64_t begin, std::int64_t end, std::int64_t c, double* ds_sum,
             double* dz_sum) {
  const S* x = static_cast<const S*>(a.fq.input);
  const S* dy = static_cast<const S*>(a.grad_output);
  S* dx = static_cast<S*>(a.grad_input);
  const float s = a.fq.scale[c], inv = 1.0f / s;
  const float lo = a.fq.quant_min - a.fq.zero_point[c], hi = a.fq.quant_max - a.fq.zero_point[c];
  alignas(32) double ds[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  alignas(32) double dz[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  std::int64_t i = begin;
  for (; i + 8 <= end; i += 8) Vec::template lsq8<S>(x + i, dy + i, dx + i, s, inv, lo, hi, ds, dz);
  for (int k = 0; i < end; ++i, ++k) lsq_one<S>(x + i, dy + i, dx + i, s, inv, lo, hi, ds[k], dz[k]);
  *ds_sum = lane_sum(ds);
  *dz_sum = lane_sum(dz);
}

/// LSQ backward with per-element qparams (inner == 1), one row segment [begin, end).
template <typename S>
void lsq_row(const LsqBackwardArgs& a, std::int64_t begin, std::int64_t end, double* ds_acc, double* dz_acc) {
  const S* x = static_cast<const S*>(a.fq.input);
  const S* dy = static_cast<const S*>(a.grad_output);
  S* dx = static_cast<S*>(a.grad_input);
  std::int64_t c = begin % a.fq.channels;
  for (std::int64_t i = begin; i < end; ++i, ++c) {
    if (c == a.fq.channels) c = 0;
    const float s = a.fq.scale[c];
    lsq_one<S>(x + i, dy + i, dx + i, s, 1.0f / s, a.fq.quant_min - a.fq.zero_point[c], a.fq.quant_max - a.fq.zero_point[c],
               ds_acc[c], dz_acc[c]);
  }
}

template <class Vec>
void lsq_run_dispatch(const LsqBackwardArgs& a, std::int64_t begin, std::int64_t end, std::int64_t c, double* ds,
                      double* dz) {
  switch (a.fq.dtype) {
    case DType::kFloat32:
      return lsq_run<Vec, float>(a, begin, end, c, ds, dz);
    case DType::kFloat64:
      return lsq_run<Vec, double>(a, begin, end, c, ds, dz);
    case DType::kFloat16:
      return lsq_run<Vec, Half>(a, begin, end, c, ds, dz);
    case DType::kBFloat16:
      return lsq_run<Vec, BFloat16>(a, begin, end, c, ds, dz);
  }
}

inline void lsq_row_dispatch(const LsqBackwardArgs& a, std::int64_t begin, std::int64_t end, double* ds, double* dz) {
  switch (a.fq.dtype) {
    case DType::kFloat32:
      return lsq_row<float>(a, begin, end, ds, dz);
    case DType::kFloat64:
      return lsq_row<double>(a, begin, end, ds, dz);
    case DType::kFloat16:
      return lsq_row<Half>(a, begin, end, ds, dz);
    case DType::kBFloat16:
      return lsq_row<BFloat16>(a, begin, end, ds, dz);
  }
}

/// Scalar LSQ body for 8 elements (element k into lane k).
template <typename S>
inline void lsq8_scalar(const S* x, const S* dy, S* dx, float s, float inv, float lo, float hi, double* ds,
                        double* dz) {
  for (int k = 0; k < 8; ++k) lsq_one<S>(x + k, dy + k, dx + k, s, inv, lo, hi, ds[k], dz[k]);
}

/// PACT backward of [begin, end) with 8 float64 lanes (element j of the range into lane j % 8).
/// One portable implementation shared by every ISA table: the loop is a select and a sum, which
/// the compiler vectorizes well enough for a memory-bound pass.
template <typename S>
double pact_run(const PactBackwardArgs& a, std::int64_t begin, std::int64_t end) {
  using E = Elem<S>;
  using C = typename E::C;
  const S* x = static_cast<const S*>(a.input);
  const S* dy = static_cast<const S*>(a.grad_output);
  S* dx = static_cast<S*>(a.grad_input);
  const C alpha = static_cast<C>(*a.alpha);
  double lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (std::int64_t i = begin; i < end; ++i) {
    C gx, ga;
    pact_grads<C>(E::load(x[i]), E::load(dy[i]), alpha, gx, ga);
    dx[i] = E::store(gx);
    lanes[(i - begin) & 7] += static_cast<double>(ga);
  }
  return lane_sum(lanes);
}

inline double pact_run_dispatch(const PactBackwardArgs& a, std::int64_t begin, std::int64_t end) {
  switch (a.dtype) {
    case DType::kFloat32:
      return pact_run<float>(a, begin, end);
    case DType::kFloat64:
      return pact_run<double>(a, begin, end);
    case DType::kFloat16:
      return pact_run<Half>(a, begin, end);
    case DType::kBFloat16:
      return pact_run<BFloat16>(a, begin, end);
  }
  return 0.0;
}

/// Scalar qparam validity test (see FakeQuantKernels::qparams_valid).
inline bool qparams_valid_scalar(const float* s, const float* z, std::int64_t n, float qmin, float qmax) {
  for (std::int64_t c = 0; c < n; ++c) {
    const bool s_ok = s[c] >= 1.17549435e-38f && s[c] <= 3.40282347e+38f;  // FLT_MIN, FLT_MAX; NaN fails
    const bool z_ok = z[c] >= qmin && z[c] <= qmax && std::nearbyint(z[c]) == z[c];
    if (!(s_ok && z_ok)) return false;
  }
  return true;
}

template <class Vec>
void backward_dispatch(const FakeQuantBackwardArgs& a, std::int64_t begin, std::int64_t end) {
  switch (a.dtype) {
    case DType::kFloat32:
      return backward_chunk<Vec, float>(a, begin, end);
    case DType::kFloat64:
      return backward_chunk<Vec, double>(a, begin, end);
    case DType::kFloat16:
      return backward_chunk<Vec, Half>(a, begin, end);
    case DType::kBFloat16:
      return backward_chunk<Vec, BFloat16>(a, begin, end);
  }
}

}  // namespace detail
}  // namespace
}  // namespace qatkit::kernels::cpu
