// Portable reduction loops (max |x|, sum |x|, sum x with sum |x|, the TWN statistic), included by each ISA's file of
// this family. Float64 sums use 8 lanes (element j into lane j % 8) combined in a fixed order, so
// every ISA returns the same bits.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "../elem.h"
#include "reduce_cpu.h"

namespace qatkit::kernels::cpu {
namespace {
namespace detail {

/// Scalar max |x| (see ReduceKernels::absmax); NaN never wins a comparison, Inf does.
template <typename S>
float absmax_scalar_typed(const S* x, std::int64_t n, bool* finite) {
  using E = Elem<S>;
  // 8 running maxima and finiteness flags (whole steps vectorize; max is order-independent)
  float m[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int ok[8] = {1, 1, 1, 1, 1, 1, 1, 1};
  std::int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int j = 0; j < 8; ++j) {
      const float a = abs_bits(static_cast<float>(E::load(x[i + j])));
      ok[j] &= a <= 3.40282347e+38f;  // false for NaN and Inf
      m[j] = a > m[j] ? a : m[j];
    }
  }
  for (int j = 0; i < n; ++i, ++j) {
    const float a = abs_bits(static_cast<float>(E::load(x[i])));
    ok[j] &= a <= 3.40282347e+38f;
    m[j] = a > m[j] ? a : m[j];
  }
  float r = 0.f;
  int all = 1;
  for (int j = 0; j < 8; ++j) r = m[j] > r ? m[j] : r, all &= ok[j];
  if (!all) *finite = false;
  return r;
}

inline float absmax_scalar(const void* x, DType dt, std::int64_t n, bool* finite) {
  switch (dt) {
    case DType::kFloat32:
      return absmax_scalar_typed(static_cast<const float*>(x), n, finite);
    case DType::kFloat64:
      return absmax_scalar_typed(static_cast<const double*>(x), n, finite);
    case DType::kFloat16:
      return absmax_scalar_typed(static_cast<const Half*>(x), n, finite);
    case DType::kBFloat16:
      return absmax_scalar_typed(static_cast<const BFloat16*>(x), n, finite);
  }
  return 0.f;
}

/// Portable sum |x| with 8 float64 lanes (see ReduceKernels::abssum).
template <typename S>
double abssum_scalar_typed(const S* x, std::int64_t n) {
  using E = Elem<S>;
  double lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  std::int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int j = 0; j < 8; ++j) lanes[j] += static_cast<double>(abs_bits(E::load(x[i + j])));
  }
  for (int j = 0; i < n; ++i, ++j) lanes[j] += static_cast<double>(abs_bits(E::load(x[i])));
  return lane_sum(lanes);
}

inline double abssum_scalar(const void* x, DType dt, std::int64_t n) {
  switch (dt) {
    case DType::kFloat32:
      return abssum_scalar_typed(static_cast<const float*>(x), n);
    case DType::kFloat64:
      return abssum_scalar_typed(static_cast<const double*>(x), n);
    case DType::kFloat16:
      return abssum_scalar_typed(static_cast<const Half*>(x), n);
    case DType::kBFloat16:
      return abssum_scalar_typed(static_cast<const BFloat16*>(x), n);
  }
  return 0.0;
}

/// Portable sum x and sum |x| in one pass (see ReduceKernels::sum_abssum): abssum's lanes for both.
template <typename S>
void sum_abssum_scalar_typed(const S* x, std::int64_t n, SumAbsLanes* l) {
  using E = Elem<S>;
  std::int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int j = 0; j < 8; ++j) {
      const auto v = E::load(x[i + j]);
      l->s[j] += static_cast<double>(v);
      l->a[j] += static_cast<double>(abs_bits(v));
    }
  }
  for (int j = 0; i < n; ++i, ++j) {
    const auto v = E::load(x[i]);
    l->s[j] += static_cast<double>(v);
    l->a[j] += static_cast<double>(abs_bits(v));
  }
}

inline void sum_abssum_scalar(const void* x, DType dt, std::int64_t n, SumAbsLanes* l) {
  switch (dt) {
    case DType::kFloat32:
      return sum_abssum_scalar_typed(static_cast<const float*>(x), n, l);
    case DType::kFloat64:
      return sum_abssum_scalar_typed(static_cast<const double*>(x), n, l);
    case DType::kFloat16:
      return sum_abssum_scalar_typed(static_cast<const Half*>(x), n, l);
    case DType::kBFloat16:
      return sum_abssum_scalar_typed(static_cast<const BFloat16*>(x), n, l);
  }
}

/// sum_abssum_runs as separate sum_abssum calls (the portable table, and any runs a table's
/// vector form does not take).
inline void sum_abssum_runs_each(void (*one)(const void*, DType, std::int64_t, SumAbsLanes*), const void* const* x,
                                 DType dt, std::int64_t n, SumAbsLanes* const* l, int runs) {
  for (int r = 0; r < runs; ++r) one(x[r], dt, n, l[r]);
}

inline void sum_abssum_runs_scalar(const void* const* x, DType dt, std::int64_t n, SumAbsLanes* const* l, int runs) {
  sum_abssum_runs_each(&sum_abssum_scalar, x, dt, n, l, runs);
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

inline void twn_stats_scalar(const void* x, DType dt, std::int64_t n, float delta, double* sum, std::int64_t* count) {
  with_storage(dt, [&](auto s) { twn_stats_typed(static_cast<const decltype(s)*>(x), n, delta, sum, count); });
}

}  // namespace detail
}  // namespace
}  // namespace qatkit::kernels::cpu
