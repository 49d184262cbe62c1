// The one scalar definition of fake quantization, used by every CPU path and by CUDA.
//
// Numerics (kept identical to ATen's fake_quantize_per_{tensor,channel}_affine):
//   inv_s = 1.0f / s           (float32 reciprocal, correctly rounded, computed once per channel)
//   q     = rint(x * inv_s) + z (round half to even in the default rounding mode)
//   y     = (clamp(q, qmin, qmax) - z) * s
//   mask  = qmin <= q <= qmax  (on the unclamped q: the clipped straight-through estimator)
// Computed as r = rint(x * inv_s), y = clamp(r, qmin - z, qmax - z) * s, mask = r in that window:
// two operations fewer per element and the same bits, because r + z and qmin - z are exact
// integer arithmetic whenever the result can land in the range (|qmin|, |qmax| < 2^24, so a sum
// that float rounding could move into the window is already far outside it).
// Half types are computed in float32, float64 in float64 (with inv_s still the float32
// reciprocal, widened), exactly as ATen does. No fused multiply-add may be formed here:
// callers compile with -ffp-contract=off / --fmad=false so CPU and CUDA agree bit for bit.
// NaN and infinities (ATen leaves them undefined): the clamp is written so a NaN q stays NaN
// (NaN compares false), +-Inf saturates to the range ends, and the mask is false for all three.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "sign_args.h"
#include "macros.h"

namespace qatkit::kernels {
// Internal linkage on purpose: this header is compiled into translation units with different
// instruction sets (baseline, -mavx2, nvcc). With external linkage the linker would keep one copy
// of each inline function, possibly the AVX2-compiled one, and the baseline path would then
// execute AVX2 instructions on a CPU without them.
namespace {

template <typename C>
QATKIT_HD C round_half_even(C v) {
#if defined(__CUDA_ARCH__)
  return rint(v);
#else
  return std::nearbyint(v);
#endif
}

/// Fake-quantizes one value; lo = qmin - z and hi = qmax - z. `in_range` receives the mask bit.
template <typename C>
QATKIT_HD C fake_quant_value(C x, C inv_s, C s, C lo, C hi, std::uint32_t& in_range) {
  const C r = round_half_even(x * inv_s);
  in_range = static_cast<std::uint32_t>((r >= lo) & (r <= hi));
  C rc = r < lo ? lo : r;  // NaN falls through both comparisons and stays NaN
  rc = rc > hi ? hi : rc;
  // + 0 turns a -0 code (x in (-s/2, 0)) into +0, as ATen's (q - z) * s does: y is then +0 too,
  // and equals dequantize((quantize(x)) bit for bit
  return (rc + C(0)) * s;
}

/// Integer code of one value (as a float of the compute type): clamp(rint(x * inv_s), lo, hi) + z
/// with lo = qmin - z, hi = qmax - z, i.e. exactly the clamped value fake_quant_value multiplies
/// by s, shifted by z. NaN codes as z (dequantizes to 0: integers have no NaN); +-Inf saturate.
template <typename C>
QATKIT_HD C quantize_code(C x, C inv_s, C lo, C hi, C z) {
  const C r = round_half_even(x * inv_s);
  C rc = r < lo ? lo : r;
  rc = rc > hi ? hi : rc;
  return rc == rc ? rc + z : z;
}

/// LSQ gradients of one element (docs/papers.md §6.1, with torch's zero-point convention; LSQ+ §6.2
/// learns the zero point the same way). r = rint(x * inv_s); inside the window [lo, hi]
/// (lo = qmin - z, hi = qmax - z): dx = dy, ds = dy * (r - x * inv_s), dz = 0; below / above it:
/// dx = 0, ds = dy * lo / dy * hi, dz = -dy * s. A NaN x contributes nothing to ds and dz.
template <typename C>
QATKIT_HD void lsq_grads(C x, C dy, C inv_s, C s, C lo, C hi, C& dx, C& ds, C& dz) {
  const C xs = x * inv_s;
  const C r = round_half_even(xs);
  const bool below = r<lo, above = r> hi;
  const bool in = (r >= lo) & (r <= hi);
  dx = in ? dy : C(0);
  ds = dy * (in ? r - xs : (below ? lo : (above ? hi : C(0))));
  dz = (below | above) ? -(dy * s) : C(0);
}

/// PACT gradients of one element (docs/papers.md §6.3, STE through the rounding): the input gradient
/// passes where the clip is inactive (0 <= x < alpha), the alpha gradient where x is clipped at
/// alpha (x >= alpha). Below 0 (and for NaN) neither gets a gradient.
template <typename C>
QATKIT_HD void pact_grads(C x, C dy, C alpha, C& dx, C& dalpha) {
  const bool inside = (x >= C(0)) & (x < alpha);
  const bool clipped = x >= alpha;
  dx = inside ? dy : C(0);
  dalpha = clipped ? dy : C(0);
}

/// sign() of the binarizers: +1 / -1 (0 maps to +1, or -1 when zero_negative); NaN stays NaN.
template <typename C>
QATKIT_HD C binary_sign(C v, bool zero_negative) {
  if (v > C(0)) return C(1);
  if (v < C(0)) return C(-1);
  if (v == C(0)) return zero_negative ? C(-1) : C(1);
  return v;  // NaN
}

/// Derivative used for sign() by each estimator, at v:
///   identity 1; clipped STE 1[|v| <= 1] (hardtanh, docs/papers.md §5); ApproxSign (Bi-Real Net)
///   2 - 2|v| for |v| < 1 else 0; SignSwish (BNN+) beta (2 - beta v tanh(beta v / 2)) / (1 + cosh(beta v)).
template <typename C>
QATKIT_HD C sign_estimator_grad(C v, SignEstimator est, C beta) {
  const C a = v < C(0) ? -v : v;
  switch (est) {
    case SignEstimator::kIdentity:
      return C(1);
    case SignEstimator::kClippedSte:
      return a <= C(1) ? C(1) : C(0);
    case SignEstimator::kApproxSign:
      return a < C(1) ? C(2) - C(2) * a : C(0);
    case SignEstimator::kSwishSign: {
      // Transcendentals differ in the last ulp between libm and CUDA: CPU == CUDA to rounding here.
      const C bv = beta * v;
#if defined(__CUDA_ARCH__)
      return beta * (C(2) - bv * tanh(bv / C(2))) / (C(1) + cosh(bv));
#else
      return beta * (C(2) - bv * std::tanh(bv / C(2))) / (C(1) + std::cosh(bv));
#endif
    }
  }
  return C(0);
}

// ---- bfloat16 / float16 storage conversions (bit exact with c10's, round half to even) ----

QATKIT_HD float bf16_to_float(std::uint16_t h) {
  const std::uint32_t u = static_cast<std::uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

QATKIT_HD std::uint16_t float_to_bf16(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  if (f != f) return 0x7FC0;  // canonical quiet NaN, as c10::BFloat16
  const std::uint32_t lsb = (u >> 16) & 1u;
  return static_cast<std::uint16_t>((u + 0x7FFFu + lsb) >> 16);
}

QATKIT_HD float fp16_to_float(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  std::uint32_t exp = (h >> 10) & 0x1Fu;
  std::uint32_t man = h & 0x3FFu;
  std::uint32_t u;
  if (exp == 0x1Fu) {
    u = sign | 0x7F800000u | (man << 13);  // Inf / NaN
  } else if (exp == 0) {
    if (man == 0) {
      u = sign;
    } else {  // subnormal: normalise
      int e = -1;
      do {
        ++e;
        man <<= 1;
      } while ((man & 0x400u) == 0);
      u = sign | (static_cast<std::uint32_t>(127 - 15 - e) << 23) | ((man & 0x3FFu) << 13);
    }
  } else {
    u = sign | ((exp + 112u) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

QATKIT_HD std::uint16_t float_to_fp16(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  const std::uint16_t sign = static_cast<std::uint16_t>((u >> 16) & 0x8000u);
  const std::uint32_t abs = u & 0x7FFFFFFFu;
  if (abs >= 0x7F800000u) {  // Inf or NaN
    // NaN keeps its top payload bits and is quieted, as the F16C instruction does.
    return abs > 0x7F800000u ? static_cast<std::uint16_t>(sign | 0x7E00u | ((abs >> 13) & 0x3FFu))
                             : static_cast<std::uint16_t>(sign | 0x7C00u);
  }
  if (abs >= 0x477FF000u) return sign | 0x7C00u;  // rounds to >= 65520: overflow to Inf
  if (abs < 0x38800000u) {                        // result is subnormal or zero
    if (abs < 0x33000000u) return sign;           // below half the smallest subnormal
    const std::uint32_t e = abs >> 23;
    const std::uint32_t m = (abs & 0x7FFFFFu) | 0x800000u;
    const std::uint32_t shift = 126u - e;  // 14..24
    std::uint32_t r = m >> shift;
    const std::uint32_t rem = m & ((1u << shift) - 1u);
    const std::uint32_t half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (r & 1u))) ++r;
    return sign | static_cast<std::uint16_t>(r);
  }
  // normal: rebias exponent, round mantissa half to even (carry may bump the exponent)
  std::uint32_t r = abs - 0x38000000u;
  r += 0xFFFu + ((r >> 13) & 1u);
  return sign | static_cast<std::uint16_t>(r >> 13);
}

}  // namespace
}  // namespace qatkit::kernels
