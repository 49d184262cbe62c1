// Binarize loops, included by each ISA's file (fake_quant_baseline.cpp, fake_quant_avx2.cpp) and
// compiled with its flags: the bodies are selects and one multiply, which the compiler vectorizes
// (SSE2 in the baseline, AVX2 blends in the avx2 build, about twice as fast here). Everything has
// internal linkage, so the two builds never merge at link time. Channel bookkeeping as in
// fake_quant_loops.h: runs of `inner` elements share their channel's center and alpha.
#pragma once

#include <algorithm>
#include <cstring>
#include <type_traits>

#include "../common/fake_quant_args.h"
#include "../common/fake_quant_scalar.h"
#include "../common/philox.h"
#include "fake_quant_loops.h"

namespace qatkit::kernels::cpu {
namespace {

using detail::Elem;

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
void ternary_run(const S* __restrict x, S* __restrict y, std::int64_t n, typename Elem<S>::C center,
                 typename Elem<S>::C alpha, typename Elem<S>::C delta) {
  using E = Elem<S>;
  using C = typename E::C;
  for (std::int64_t k = 0; k < n; ++k) {
    const C v = E::load(x[k]) - center;
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
  std::int64_t i = begin;
  while (i < end) {
    const std::int64_t block = i / a.inner;
    const std::int64_t c = block % a.channels;
    const std::int64_t run_end = std::min(end, (block + 1) * a.inner);
    const C center = a.center ? static_cast<C>(a.center[c]) : C(0);
    const C alpha = a.alpha ? static_cast<C>(a.alpha[c]) : C(1);
    if (a.threshold) {
      ternary_run<S>(x + i, y + i, run_end - i, center, alpha, static_cast<C>(a.threshold[c]));
      i = run_end;
    } else if (a.seed) {
      for (; i < run_end; ++i) {
        const C v = E::load(x[i]) - center;
        const C p = std::min(std::max((v + C(1)) / C(2), C(0)), C(1));
        const C s =
            v != v ? v : (static_cast<C>(philox_uniform(key, static_cast<std::uint64_t>(i))) < p ? C(1) : C(-1));
        y[i] = E::store(s * alpha);
      }
    } else {
      sign_run<S>(x + i, y + i, run_end - i, center, alpha, a.zero_negative);
      i = run_end;
    }
  }
}

template <typename S, SignEstimator kEst>
void backward_typed(const BinarizeBackwardArgs& a, std::int64_t begin, std::int64_t end) {
  using E = Elem<S>;
  using C = typename E::C;
  const S* x = static_cast<const S*>(a.input);
  const S* dy = static_cast<const S*>(a.grad_output);
  S* dx = static_cast<S*>(a.grad_input);
  const C beta = static_cast<C>(a.beta);
  std::int64_t i = begin;
  while (i < end) {
    const std::int64_t block = i / a.inner;
    const std::int64_t c = block % a.channels;
    const std::int64_t run_end = std::min(end, (block + 1) * a.inner);
    const C center = a.center ? static_cast<C>(a.center[c]) : C(0);
    // the estimator is a template argument: the inner loop has no switch and vectorizes
    for (; i < run_end; ++i) {
      dx[i] = E::store(E::load(dy[i]) * sign_estimator_grad<C>(E::load(x[i]) - center, kEst, beta));
    }
  }
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

/// TWN statistic over n elements: sum of |x| over |x| > delta and how many, in float64 over
/// 8 lanes (element j into lane j % 8) combined in a fixed order, so every ISA and thread split of
/// whole runs gives the same bits.
/// |v| and the kept value (|v| where |v| > delta, else +0) by bit masks: no data-dependent branch and
/// no float select, which GCC -O3 turned into a loop 10x slower than this one on SSE2.
template <typename C>
inline void masked_abs(C v, C delta, C& kept, int& hit) {
  using U = std::conditional_t<sizeof(C) == 4, std::uint32_t, std::uint64_t>;
  U bits;
  std::memcpy(&bits, &v, sizeof(C));
  bits &= ~(U{1} << (8 * sizeof(C) - 1));
  C av;
  std::memcpy(&av, &bits, sizeof(C));
  const U mask = av > delta ? ~U{0} : U{0};
  hit = static_cast<int>(mask & U{1});
  bits &= mask;
  std::memcpy(&kept, &bits, sizeof(C));
}

template <typename S>
void twn_stats_typed(const S* __restrict x, std::int64_t n, float delta, double* sum, std::int64_t* count) {
  using E = Elem<S>;
  using C = typename E::C;
  const C d = static_cast<C>(delta);
  double lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  std::int64_t counts[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  std::int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    C kept[8];
    int hit[8];
    for (int j = 0; j < 8; ++j) masked_abs(E::load(x[i + j]), d, kept[j], hit[j]);
    for (int j = 0; j < 8; ++j) {
      lanes[j] += static_cast<double>(kept[j]);
      counts[j] += hit[j];
    }
  }
  for (int j = 0; i < n; ++i, ++j) {
    C kept;
    int hit;
    masked_abs(E::load(x[i]), d, kept, hit);
    lanes[j] += static_cast<double>(kept);
    counts[j] += hit;
  }
  *sum = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
  *count = counts[0] + counts[1] + counts[2] + counts[3] + counts[4] + counts[5] + counts[6] + counts[7];
}

/// Calls f(S{}) with the storage type S of dtype `dt`.
template <class F>
void with_storage(DType dt, F&& f) {
  switch (dt) {
    case DType::kFloat32:
      return f(float{});
    case DType::kFloat64:
      return f(double{});
    case DType::kFloat16:
      return f(detail::Half{});
    case DType::kBFloat16:
      return f(detail::BFloat16{});
  }
}

void twn_stats_portable(const void* x, DType dt, std::int64_t n, float delta, double* sum, std::int64_t* count) {
  with_storage(dt, [&](auto s) { twn_stats_typed(static_cast<const decltype(s)*>(x), n, delta, sum, count); });
}

void binarize_forward_impl(const BinarizeArgs& a, std::int64_t begin, std::int64_t end) {
  with_storage(a.dtype, [&](auto s) { forward_typed<decltype(s)>(a, begin, end); });
}

void binarize_backward_impl(const BinarizeBackwardArgs& a, std::int64_t begin, std::int64_t end) {
  with_storage(a.dtype, [&](auto s) { backward_dispatch_estimator<decltype(s)>(a, begin, end); });
}

}  // namespace
}  // namespace qatkit::kernels::cpu
