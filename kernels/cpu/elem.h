// Element storage types and helpers shared by every CPU kernel family (fake_quant/, sign/, reduce/,
// quantize/). Torch-free. Everything has internal linkage: each ISA translation unit compiles its
// own copy with its own flags, so the linker can never fold AVX2 code into the baseline path.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "../common/dtype.h"
#include "../common/fake_quant_scalar.h"

namespace qatkit::kernels::cpu {
namespace {
namespace detail {

/// Storage traits: how an element is widened to its compute type and narrowed back.
template <typename S>
struct Elem;
template <>
struct Elem<float> {
  using C = float;
  static C load(float v) { return v; }
  static float store(C v) { return v; }
};
template <>
struct Elem<double> {
  using C = double;
  static C load(double v) { return v; }
  static double store(C v) { return v; }
};
struct Half {
  std::uint16_t bits;
};
struct BFloat16 {
  std::uint16_t bits;
};
template <>
struct Elem<Half> {
  using C = float;
  static C load(Half v) { return fp16_to_float(v.bits); }
  static Half store(C v) { return Half{float_to_fp16(v)}; }
};
template <>
struct Elem<BFloat16> {
  using C = float;
  static C load(BFloat16 v) { return bf16_to_float(v.bits); }
  static BFloat16 store(C v) { return BFloat16{float_to_bf16(v)}; }
};

/// Combines the 8 lane accumulators in a fixed order.
inline double lane_sum(const double* v) { return ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7])); }

/// |v| by clearing the sign bit (no select: GCC -O3 made the select form ~30x slower on SSE2).
template <typename C>
inline C abs_bits(C v) {
  using U = std::conditional_t<sizeof(C) == 4, std::uint32_t, std::uint64_t>;
  U bits;
  std::memcpy(&bits, &v, sizeof(C));
  bits &= ~(U{1} << (8 * sizeof(C) - 1));
  std::memcpy(&v, &bits, sizeof(C));
  return v;
}

/// Walks [begin, end) of a contiguous tensor laid out as blocks of `inner` elements cycling
/// through `channels` (the per-channel / per-group / per-tensor layouts), calling
/// run(run_begin, run_end, channel) for each run of one channel (inner >= 1).
template <class Run>
void for_each_run(std::int64_t begin, std::int64_t end, std::int64_t inner, std::int64_t channels, Run&& run) {
  std::int64_t i = begin;
  while (i < end) {
    const std::int64_t block = i / inner;
    const std::int64_t run_end = std::min(end, (block + 1) * inner);
    run(i, run_end, block % channels);
    i = run_end;
  }
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
      return f(Half{});
    case DType::kBFloat16:
      return f(BFloat16{});
  }
}

}  // namespace detail
}  // namespace
}  // namespace qatkit::kernels::cpu
