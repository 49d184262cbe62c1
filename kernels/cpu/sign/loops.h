// Sign-family loops (binarize forward, ternary forward, estimator backward), included by each
// ISA's file of this family and compiled with its flags: the bodies are selects and one multiply,
// which the compiler vectorizes (SSE2 in the baseline, AVX2 blends in the avx2 build, about twice
// as fast). Channel bookkeeping as in fake_quant/loops.h: runs of `inner` elements share their
// channel's center and alpha.
#pragma once

#include <algorithm>
#include <cstdint>

#include "../../common/philox.h"
#include "../../common/sign_args.h"
#include "../elem.h"

namespace qatkit::kernels::cpu {
namespace {
namespace detail {

/// sign(x - center) * alpha over one run of a channel: three selects and no short-circuit, so the
/// loop vectorizes (sign, the zero convention, then NaN, which compares false everywhere, passes
/// through). Restrict pointers and local bounds keep the compiler from versioning the loop.
template <typename S>
void sign_run(const S* __restrict x, S* __restrict y, std::int64_t n, typename Elem<S>::C center,
              typename Elem<S>::C alpha, bool zero_negative) {
  using E = Elem<S>;
  using C = typename E::C;
  const C at_zero = zero_negative ? -alpha : alpha, neg = -alpha;
  for (std::int64_t k = 0; k < n; ++k) {
    const C v = E::load(x[k]) - center;
    const C sgn = v > C(0) ? alpha : neg;
    const C fixed = v == C(0) ? at_zero : sgn;
    y[k] = E::store(v == v ? fixed : v);
  }
}

/// TWN's ternary map over one run: |v| > delta ? sign(v) * alpha : 0 (NaN compares false: 0;
/// the op rejects non-finite input before it gets here).
template <typename S>
void ternary_run(const S* __restrict x, S* __restrict y, std::int64_t n, typename Elem<S>::C alpha,
                 typename Elem<S>::C delta) {
  using E = Elem<S>;
  using C = typename E::C;
  for (std::int64_t k = 0; k < n; ++k) {
    const C v = E::load(x[k]);
    const C av = v < C(0) ? -v : v;
    const C sgn = v > C(0) ? alpha : -alpha;
    y[k] = E::store(av > delta ? sgn : C(0));
  }
}

template <typename S>
void forward_typed(const BinarizeArgs& a, std::int64_t begin, std::int64_t end) {
  using E = Elem<S>;
  using C = typename E::C;
  const S* x = static_cast<const S*>(a.input);
  S* y = static_cast<S*>(a.output);
  const std::uint64_t key = a.seed ? static_cast<std::uint64_t>(*a.seed) : 0;
  for_each_run(begin, end, a.inner, a.channels, [&](std::int64_t b, std::int64_t e, std::int64_t c) {
    const C center = a.center ? static_cast<C>(a.center[c]) : C(0);
    const C alpha = a.alpha ? static_cast<C>(a.alpha[c]) : C(1);
    if (a.seed) {
      for (std::int64_t i = b; i < e; ++i) {
        const C v = E::load(x[i]) - center;
        const C p = std::min(std::max((v + C(1)) / C(2), C(0)), C(1));
        const C s =
            v != v ? v : (static_cast<C>(philox_uniform(key, static_cast<std::uint64_t>(i))) < p ? C(1) : C(-1));
        y[i] = E::store(s * alpha);
      }
    } else {
      sign_run<S>(x + b, y + b, e - b, center, alpha, a.zero_negative);
    }
  });
}

/// Ternary forward over [begin, end): TWN's map per channel run.
template <typename S>
void ternary_typed(const TernaryArgs& a, std::int64_t begin, std::int64_t end) {
  using E = Elem<S>;
  using C = typename E::C;
  const S* x = static_cast<const S*>(a.input);
  S* y = static_cast<S*>(a.output);
  for_each_run(begin, end, a.inner, a.channels, [&](std::int64_t b, std::int64_t e, std::int64_t c) {
    ternary_run<S>(x + b, y + b, e - b, static_cast<C>(a.alpha[c]), static_cast<C>(a.threshold[c]));
  });
}

template <typename S, SignEstimator kEst>
void backward_typed(const BinarizeBackwardArgs& a, std::int64_t begin, std::int64_t end) {
  using E = Elem<S>;
  using C = typename E::C;
  const S* x = static_cast<const S*>(a.input);
  const S* dy = static_cast<const S*>(a.grad_output);
  S* dx = static_cast<S*>(a.grad_input);
  const C beta = static_cast<C>(a.beta);
  for_each_run(begin, end, a.inner, a.channels, [&](std::int64_t b, std::int64_t e, std::int64_t c) {
    const C center = a.center ? static_cast<C>(a.center[c]) : C(0);
    // the estimator is a template argument: the inner loop has no switch and vectorizes
    for (std::int64_t i = b; i < e; ++i) {
      dx[i] = E::store(E::load(dy[i]) * sign_estimator_grad<C>(E::load(x[i]) - center, kEst, beta));
    }
  });
}

template <typename S>
void backward_dispatch_estimator(const BinarizeBackwardArgs& a, std::int64_t begin, std::int64_t end) {
  switch (a.estimator) {
    case SignEstimator::kIdentity:
      return backward_typed<S, SignEstimator::kIdentity>(a, begin, end);
    case SignEstimator::kClippedSte:
      return backward_typed<S, SignEstimator::kClippedSte>(a, begin, end);
    case SignEstimator::kApproxSign:
      return backward_typed<S, SignEstimator::kApproxSign>(a, begin, end);
    case SignEstimator::kSwishSign:
      return backward_typed<S, SignEstimator::kSwishSign>(a, begin, end);
  }
}

/// The int8 codes of sign(x - center) over one run: +1 / -1 with sign_run's zero convention, 0 for
/// NaN (sign_run's +-1 / NaN, as binary_codes maps them), in one pass with no float output.
template <typename S>
void code_run(const S* __restrict x, std::int8_t* __restrict y, std::int64_t n, typename Elem<S>::C center,
              bool zero_negative) {
  using E = Elem<S>;
  using C = typename E::C;
  const std::int8_t at_zero = zero_negative ? -1 : 1;
  for (std::int64_t k = 0; k < n; ++k) {
    const C v = E::load(x[k]) - center;
    const std::int8_t sgn = v > C(0) ? 1 : -1;
    const std::int8_t fixed = v == C(0) ? at_zero : sgn;
    y[k] = v == v ? fixed : 0;
  }
}

template <typename S>
void codes_typed(const BinarizeArgs& a, std::int64_t begin, std::int64_t end) {
  using C = typename Elem<S>::C;
  const S* x = static_cast<const S*>(a.input);
  auto* y = static_cast<std::int8_t*>(a.output);
  for_each_run(begin, end, a.inner, a.channels, [&](std::int64_t b, std::int64_t e, std::int64_t c) {
    code_run<S>(x + b, y + b, e - b, a.center ? static_cast<C>(a.center[c]) : C(0), a.zero_negative);
  });
}

/// SignKernels::codes_s16: code_run's codes of float32 rows, as int16.
inline void code_rows_s16(const float* x, std::int64_t rows, std::int64_t n, std::int16_t* y, std::int64_t y_rs,
                          float center, bool zero_negative) {
  const std::int16_t at_zero = zero_negative ? -1 : 1;
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * n;
    std::int16_t* yr = y + r * y_rs;
    for (std::int64_t k = 0; k < n; ++k) {
      const float v = xr[k] - center;
      const std::int16_t sgn = v > 0.f ? 1 : -1;
      const std::int16_t fixed = v == 0.f ? at_zero : sgn;
      yr[k] = v == v ? fixed : 0;
    }
  }
}

/// binary_codes' codes: BinarizeArgs with an int8 output (alpha and seed unused: deterministic).
inline void binary_codes_impl(const BinarizeArgs& a, std::int64_t begin, std::int64_t end) {
  with_storage(a.dtype, [&](auto s) { codes_typed<decltype(s)>(a, begin, end); });
}

inline void binarize_forward_impl(const BinarizeArgs& a, std::int64_t begin, std::int64_t end) {
  with_storage(a.dtype, [&](auto s) { forward_typed<decltype(s)>(a, begin, end); });
}

inline void ternary_forward_impl(const TernaryArgs& a, std::int64_t begin, std::int64_t end) {
  with_storage(a.dtype, [&](auto s) { ternary_typed<decltype(s)>(a, begin, end); });
}

inline void binarize_backward_impl(const BinarizeBackwardArgs& a, std::int64_t begin, std::int64_t end) {
  with_storage(a.dtype, [&](auto s) { backward_dispatch_estimator<decltype(s)>(a, begin, end); });
}

}  // namespace detail
}  // namespace
}  // namespace qatkit::kernels::cpu
