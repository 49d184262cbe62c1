// See binarize_cpu.h. Channel bookkeeping as in fake_quant_loops.h: runs of `inner` elements share
// their channel's center and alpha.
#include "binarize_cpu.h"

#include <algorithm>

#include "../common/fake_quant_scalar.h"
#include "../common/philox.h"
#include "fake_quant_loops.h"

namespace qatkit::kernels::cpu {
namespace {

using detail::Elem;

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
    if (a.seed) {
      for (; i < run_end; ++i) {
        const C v = E::load(x[i]) - center;
        const C p = std::min(std::max((v + C(1)) / C(2), C(0)), C(1));
        const C s =
            v != v ? v : (static_cast<C>(philox_uniform(key, static_cast<std::uint64_t>(i))) < p ? C(1) : C(-1));
        y[i] = E::store(s * alpha);
      }
    } else {
      const C at_zero = a.zero_negative ? -alpha : alpha, neg = -alpha;
      for (; i < run_end; ++i) {
        // three selects and no short-circuit, so the loop vectorizes: sign, the zero
        // convention, then NaN (which compares false everywhere) passes through as NaN
        const C v = E::load(x[i]) - center;
        const C sgn = v > C(0) ? alpha : neg;
        const C fixed = v == C(0) ? at_zero : sgn;
        y[i] = E::store(v == v ? fixed : v);
      }
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

}  // namespace

void binarize_forward(const BinarizeArgs& a, std::int64_t begin, std::int64_t end) {
  switch (a.dtype) {
    case DType::kFloat32:
      return forward_typed<float>(a, begin, end);
    case DType::kFloat64:
      return forward_typed<double>(a, begin, end);
    case DType::kFloat16:
      return forward_typed<detail::Half>(a, begin, end);
    case DType::kBFloat16:
      return forward_typed<detail::BFloat16>(a, begin, end);
  }
}

void binarize_backward(const BinarizeBackwardArgs& a, std::int64_t begin, std::int64_t end) {
  switch (a.dtype) {
    case DType::kFloat32:
      return backward_dispatch_estimator<float>(a, begin, end);
    case DType::kFloat64:
      return backward_dispatch_estimator<double>(a, begin, end);
    case DType::kFloat16:
      return backward_dispatch_estimator<detail::Half>(a, begin, end);
    case DType::kBFloat16:
      return backward_dispatch_estimator<detail::BFloat16>(a, begin, end);
  }
}

}  // namespace qatkit::kernels::cpu
