// Quantize-family loops (float -> integer codes, codes -> float), included by each ISA's file of
// this family and compiled with its flags (the selects and conversions vectorize). The rounding is
// fake_quant_value's (common/fake_quant_scalar.h), so dequantize(quantize(x)) == fake_quantize(x).
#pragma once

#include <algorithm>
#include <cstdint>

#include "../../common/quantize_args.h"
#include "../elem.h"

namespace qatkit::kernels::cpu {
namespace {
namespace detail {

/// Calls f(T{}) with the integer code type T of `ct`.
template <class F>
void with_code_type(CodeType ct, F&& f) {
  switch (ct) {
    case CodeType::kInt8:
      return f(std::int8_t{});
    case CodeType::kUInt8:
      return f(std::uint8_t{});
    case CodeType::kInt16:
      return f(std::int16_t{});
    case CodeType::kInt32:
      return f(std::int32_t{});
  }
}

template <typename S, typename T>
void quantize_run(const S* __restrict x, T* __restrict q, std::int64_t n, float s, float z, float qmin, float qmax) {
  using E = Elem<S>;
  using C = typename E::C;
  const C inv = static_cast<C>(1.0f / s), lo = static_cast<C>(qmin - z), hi = static_cast<C>(qmax - z),
          zc = static_cast<C>(z);
  for (std::int64_t k = 0; k < n; ++k) {
    const C code = quantize_code<C>(E::load(x[k]), inv, lo, hi, zc);
    q[k] = static_cast<T>(code);
  }
}

template <typename S, typename T>
void dequantize_run(const T* __restrict q, S* __restrict y, std::int64_t n, float s, float z) {
  using E = Elem<S>;
  using C = typename E::C;
  const C sc = static_cast<C>(s), zc = static_cast<C>(z);
  for (std::int64_t k = 0; k < n; ++k) y[k] = E::store((static_cast<C>(q[k]) - zc) * sc);
}

inline void quantize_impl(const QuantizeArgs& a, std::int64_t begin, std::int64_t end) {
  with_storage(a.dtype, [&](auto s0) {
    using S = decltype(s0);
    with_code_type(a.code_type, [&](auto t0) {
      using T = decltype(t0);
      const S* x = static_cast<const S*>(a.input);
      T* q = static_cast<T*>(a.codes);
      for_each_run(begin, end, a.inner, a.channels, [&](std::int64_t b, std::int64_t e, std::int64_t c) {
        quantize_run<S, T>(x + b, q + b, e - b, a.scale[c], a.zero_point[c], a.quant_min, a.quant_max);
      });
    });
  });
}

inline void dequantize_impl(const DequantizeArgs& a, std::int64_t begin, std::int64_t end) {
  with_storage(a.dtype, [&](auto s0) {
    using S = decltype(s0);
    with_code_type(a.code_type, [&](auto t0) {
      using T = decltype(t0);
      const T* q = static_cast<const T*>(a.codes);
      S* y = static_cast<S*>(a.output);
      for_each_run(begin, end, a.inner, a.channels, [&](std::int64_t b, std::int64_t e, std::int64_t c) {
        dequantize_run<S, T>(q + b, y + b, e - b, a.scale[c], a.zero_point[c]);
      });
    });
  });
}

}  // namespace detail
}  // namespace
}  // namespace qatkit::kernels::cpu
