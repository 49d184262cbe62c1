// What the CPU kernels of the integer GEMM family share (qgemm_kernel.cpp: the Linears and
// pack_int8_panel; qgemm_conv_kernel.cpp: the convs): the codes of every weight layout, the int8
// panel's split records, the XNOR rows and the int8 rows' group sums. Internal linkage: each file
// compiles its own copy.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/div.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/isnan.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/mul.h>
#include <ATen/ops/ones.h>
#include <c10/util/Exception.h>
#include <fmt/format.h>
#include <torch/library.h>

#include <cmath>
#include <algorithm>
#include <array>
#include <atomic>
#include <cstring>
#include <type_traits>
#include <memory>
#include <functional>
#include <limits>
#include <new>
#include <vector>

#include "../../../kernels/common/thread_scratch.h"
#include "../../../kernels/cpu/qgemm/qgemm_cpu.h"
#include "../../../kernels/cpu/reduce/reduce_cpu.h"
#include "../../../kernels/cpu/sign/sign_cpu.h"
#include "../binarize_checks.h"
#include "../checks.h"
#include "../nan_outputs.h"
#include "../qgemm_checks.h"
#include "qatkit/ops.h"
#include "derived_weights.h"

namespace qatkit::ops {
namespace {

// Rows [m0, m1) of a popcount GEMM's launch: its sign bits, zero masks, per-row terms and output.
inline kernels::QGemmXnorArgs rows_of(const kernels::QGemmXnorArgs& g, std::int64_t m0, std::int64_t m1) {
  kernels::QGemmXnorArgs r = g;
  r.a += m0 * g.KB;
  r.z += m0 * g.KB;
  r.has_zero += m0;
  r.a_k += m0;
  r.row_scale += m0;
  r.y += m0 * g.y_rs;
  r.M = m1 - m0;
  return r;
}

// The G group sums of one row of int8 codes (groups of `group` codes): QGemmW4Args::a_gsum's row.
inline void row_group_sums(const std::int8_t* row, std::int64_t G, std::int64_t group, std::int32_t* out) {
  for (std::int64_t gi = 0; gi < G; ++gi) {
    std::int32_t s = 0;
    for (std::int64_t i = gi * group; i < (gi + 1) * group; ++i) s += row[i];
    out[gi] = s;
  }
}

// The byte, shift and mask of weight row n's code t in conv2d_int8's layouts.
struct CodeField {
  std::int64_t byte;
  int shift;
  unsigned mask;
};

inline CodeField code_field(int bits, bool panel, std::int64_t rb, std::int64_t n, std::int64_t t) {
  if (panel) return {(n / 16) * rb * 64 + (t / 4) * 64 + (n % 16) * 4 + t % 4, 0, 0xFFu};  // rb: the panel's steps
  if (bits == 8) return {n * rb + t, 0, 0xFFu};
  if (bits == 2) return {n * rb + t / 128 * 32 + t % 32, static_cast<int>(2 * (t % 128 / 32)), 3u};  // ternary blocks
  return {n * rb + t / 8, static_cast<int>(t % 8), 1u};  // binary: bit t % 8 of byte t / 8
}

// Weight row n's code t in conv2d_int8's layouts (int8 rows or panel, ternary, binary).
inline int weight_code(const std::uint8_t* w, int bits, bool panel, std::int64_t rb, std::int64_t n, std::int64_t t) {
  const CodeField f = code_field(bits, panel, rb, n, t);
  const int v = static_cast<int>((w[f.byte] >> f.shift) & f.mask);
  if (panel) return v - 128;  // stored w + 128
  if (bits == 8) return static_cast<std::int8_t>(static_cast<std::uint8_t>(v));
  return bits == 2 ? v - 1 : (v != 0 ? 1 : -1);  // ternary c = w + 1; binary 1 = +1
}

// Per lane, the split entries of one block (QGemmArgs' split records), kept between blocks.
using SplitEntries = std::array<std::vector<std::int32_t>, 16>;

// Block blk's split record (kernels/common/qgemm_args.h) from its exact codes (the panel's bytes w +
// 128): per step and lane, the two pairs of consecutive k; an unsafe pair (one sign, |w0| + |w1| >
// 128) gets w1' = sign(w1) (128 - |w0|) and the entry r = w1 - w1'. Past s8_tail_cap(K4) entries the
// record says -1 (the sign trick runs the block). rec: s8_tail_words(K4) words, zero on entry.
inline void split_record(const std::uint8_t* blk, std::int64_t K4, std::int32_t* rec, SplitEntries& ent) {
  const std::int64_t cap = kernels::s8_tail_cap(K4);
  std::array<std::int64_t, 16> sum{};  // sum of w + 128, then of w'
  std::int64_t count = 0;
  for (auto& e : ent) e.clear();
  for (std::int64_t s0 = 0; s0 < K4; ++s0) {
    for (int l = 0; l < 16; ++l) {
      std::uint32_t v;
      std::memcpy(&v, blk + s0 * 64 + 4 * l, 4);
      const std::uint32_t t = (v & 0x00ff00ffu) + ((v >> 8) & 0x00ff00ffu);
      sum[l] += (t & 0xffffu) + (t >> 16);
      for (int p = 0; p < 2; ++p) {
        const int a = static_cast<int>((v >> (16 * p)) & 0xffu) - 128, b = static_cast<int>((v >> (16 * p + 8)) & 0xffu) - 128;
        if (std::abs(a) + std::abs(b) <= 128 || (a ^ b) < 0) continue;  // safe: |sum| <= 128, or signs differ
        if (++count > cap) {
          rec[0] = -1;
          return;
        }
        const int bs = b > 0 ? 128 - std::abs(a) : std::abs(a) - 128;
        ent[static_cast<std::size_t>(l)].push_back(static_cast<std::int32_t>(
            static_cast<std::uint32_t>(4 * s0 + 2 * p + 1) | (static_cast<std::uint32_t>(b - bs) << 24)));
        sum[l] -= b - bs;
      }
    }
  }
  rec[0] = static_cast<std::int32_t>(count);
  std::int32_t off = 0;
  for (int l = 0; l < 16; ++l) {
    // 128 * sum w' (|sum| < 2^31 for the K the kernels take; wraps modulo 2^32 as every sum here)
    rec[1 + l] = static_cast<std::int32_t>(static_cast<std::uint32_t>(128 * (sum[l] - 512 * K4)));
    rec[17 + l] = off;
    for (const std::int32_t e : ent[static_cast<std::size_t>(l)]) rec[34 + off++] = e;
  }
  rec[33] = off;
}

// Copies n bytes (n >= 1) with at most two fixed-size copies the compiler inlines (overlapping for n
// not a power of two; never past d + n), a library call only above 16: the XNOR rows' per-pixel
// runs of C / 8 bytes (a memcpy call per run was 10 % of a 3 x 3 XNOR conv over 64 channels;
// docs/benchmarks.md, forty-sixth session). src == nullptr: zeros.
inline void copy_run(std::uint8_t* d, const std::uint8_t* s, std::int64_t n) {
  const auto part = [&](std::int64_t at, auto width) {
    constexpr std::size_t w = decltype(width)::value;
    std::uint8_t t[w] = {};
    if (s != nullptr) std::memcpy(t, s + at, w);
    std::memcpy(d + at, t, w);
  };
  if (n > 16) {
    if (s != nullptr) {
      std::memcpy(d, s, static_cast<std::size_t>(n));
    } else {
      std::memset(d, 0, static_cast<std::size_t>(n));
    }
  } else if (n >= 8) {
    part(0, std::integral_constant<std::size_t, 8>{});
    part(n - 8, std::integral_constant<std::size_t, 8>{});
  } else if (n >= 4) {
    part(0, std::integral_constant<std::size_t, 4>{});
    part(n - 4, std::integral_constant<std::size_t, 4>{});
  } else if (n >= 2) {
    part(0, std::integral_constant<std::size_t, 2>{});
    part(n - 2, std::integral_constant<std::size_t, 2>{});
  } else if (n == 1) {
    *d = s != nullptr ? *s : 0;
  }
}

// 8 codes in {-1, 0, 1} (bytes 0xFF, 0x00, 0x01) -> their sign bits (code e > 0: bit e) and zero
// bits (code e == 0) in one byte each; returns the number of zeros. Bit 0 of each byte holds the
// flag, and a multiply gathers the 8 flags into the top byte (one bit per byte: no carries).
inline std::int32_t pack_codes8(const std::int8_t* codes, std::uint8_t* sign, std::uint8_t* zero) {
  constexpr std::uint64_t low = 0x0101010101010101ull, gather = 0x0102040810204080ull;
  std::uint64_t v;
  std::memcpy(&v, codes, 8);
  const std::uint64_t pos = v & ~(v >> 7) & low, zer = ~v & low;
  *sign = static_cast<std::uint8_t>((pos * gather) >> 56);
  *zero = static_cast<std::uint8_t>((zer * gather) >> 56);
  return static_cast<std::int32_t>((zer * low) >> 56);  // the sum of the 8 flag bytes
}

// XNOR rows (QGemmXnorArgs): sign bits, zero masks, K - |zeros| and the row's scale per row.
/// The XNOR weight rows w [N, KB] (weight itself, or a derivation of weight that `derivation`
/// names, all zero for none: the cache's key) in the table's gemm_xnor blocks (QGemmXnorArgs::wt),
/// held per weight by cached_weight_form; undefined where the table does not read them
/// (QGemmKernels::xnor_blocks_max_kb) or where they could not be held (an inference tensor, a
/// cache of capacity 0: the kernel then builds each block as it goes, in its threads, rather than
/// this serial pass over the whole weight every call).
inline at::Tensor xnor_weight_blocks(const at::Tensor& weight, const at::Tensor& w, std::int64_t N, std::int64_t KB,
                                     const std::array<std::int64_t, 4>& derivation = {}) {
  if (KB <= 4 || KB > kernels::cpu::qgemm_kernels().xnor_blocks_max_kb || !weight_form_holdable(weight))
    return at::Tensor();
  const auto& d = derivation;
  return cached_weight_form(weight, {12, N, KB, d[0], d[1], d[2], d[3], 0}, [&] {
    const std::int64_t Q = (KB + 7) / 8, NB = (N + 15) / 16;
    at::Tensor out = at::zeros({NB * Q * 16}, w.options().dtype(at::kLong));
    auto* o = reinterpret_cast<std::uint64_t*>(out.data_ptr<std::int64_t>());
    const auto* src = static_cast<const std::uint8_t*>(w.const_data_ptr());
    for (std::int64_t n = 0; n < N; ++n)
      for (std::int64_t q = 0; q < Q; ++q)
        std::memcpy(o + (n / 16 * Q + q) * 16 + n % 16, src + n * KB + q * 8,
                    static_cast<std::size_t>(std::min<std::int64_t>(8, KB - q * 8)));
    return out;
  });
}

struct XnorRows {
  /// [M, KB] bytes left uninitialized (set_row / finish_row write each row whole, its padding
  /// zeroed there: zero-filling every call's buffer up front was a serial memset in front of each
  /// parallel region)
  struct Bytes {
    std::unique_ptr<std::uint8_t[]> p;
    std::uint8_t* data() const { return p.get(); }
  };
  Bytes a, z;
  std::vector<std::uint8_t> has_zero;
  std::vector<std::int32_t> a_k;
  std::vector<float> scale;
  /// the table's SIMD packing of whole bytes of codes (null: pack_codes8)
  std::int64_t (*pack)(const std::int8_t*, std::int64_t, std::uint8_t*, std::uint8_t*, std::int32_t*, std::int64_t) =
      kernels::cpu::qgemm_kernels().pack_sign_zero;
  XnorRows(std::int64_t M, std::int64_t KB)
      : a{std::unique_ptr<std::uint8_t[]>(new std::uint8_t[static_cast<std::size_t>(M * KB)])},
        z{std::unique_ptr<std::uint8_t[]>(new std::uint8_t[static_cast<std::size_t>(M * KB)])},
        has_zero(static_cast<std::size_t>(M), 0), a_k(static_cast<std::size_t>(M), 0),
        scale(static_cast<std::size_t>(M), 0.f) {}
  /// Zeroes row m's bytes past the first `written` (bits past K are 0 in both operands).
  void pad_row(std::int64_t m, std::int64_t KB, std::int64_t written) {
    if (written == KB) return;  // K a multiple of 32 (most layers): no padding, no calls per row
    copy_run(a.data() + m * KB + written, nullptr, KB - written);
    copy_run(z.data() + m * KB + written, nullptr, KB - written);
  }
  /// Row m from K contiguous codes in {-1, 0, 1}: whole bytes of bits by the table's pack_sign_zero
  /// (or 8 codes per 64-bit word, pack_codes8), the last K % 8 one by one; bits past K are 0.
  void set_row(std::int64_t m, std::int64_t KB, std::int64_t K, float s, const std::int8_t* codes) {
    std::uint8_t* ar = a.data() + m * KB;
    std::uint8_t* zr = z.data() + m * KB;
    std::int32_t zeros = 0;
    const std::int64_t K8 = K / 8 * 8;
    if (pack != nullptr) {
      zeros = static_cast<std::int32_t>(pack(codes, K8, ar, zr, nullptr, 8));
    } else {
      for (std::int64_t k0 = 0; k0 < K8; k0 += 8) zeros += pack_codes8(codes + k0, ar + k0 / 8, zr + k0 / 8);
    }
    if (K8 < K) {
      unsigned bits = 0, zbits = 0;
      for (std::int64_t k = K8; k < K; ++k) {
        bits |= (codes[k] > 0 ? 1u : 0u) << (k - K8);
        zbits |= (codes[k] == 0 ? 1u : 0u) << (k - K8);
      }
      ar[K8 >> 3] = static_cast<std::uint8_t>(bits);
      zr[K8 >> 3] = static_cast<std::uint8_t>(zbits);
      for (unsigned v = zbits; v != 0; v &= v - 1) ++zeros;
    }
    pad_row(m, KB, (K + 7) / 8);
    has_zero[static_cast<std::size_t>(m)] = zeros > 0;
    a_k[static_cast<std::size_t>(m)] = static_cast<std::int32_t>(K) - zeros;
    scale[static_cast<std::size_t>(m)] = s;
  }
  /// The args, with the held 16-row blocks of the weight rows w where the table reads them
  /// (xnor_weight_blocks: pass its result, or an undefined tensor).
  kernels::QGemmXnorArgs args(const at::Tensor& w, const at::Tensor& ws, const at::Tensor& b, float* y, std::int64_t M,
                              std::int64_t N, std::int64_t KB, const at::Tensor& wt = at::Tensor()) const {
    kernels::QGemmXnorArgs g;
    g.a = a.data();
    g.z = z.data();
    g.has_zero = has_zero.data();
    g.a_k = a_k.data();
    g.w = static_cast<const std::uint8_t*>(w.const_data_ptr());
    g.wt = wt.defined() ? reinterpret_cast<const std::uint64_t*>(wt.const_data_ptr()) : nullptr;
    g.row_scale = scale.data();
    g.col_scale = ws.data_ptr<float>();
    g.bias = b.defined() ? b.data_ptr<float>() : nullptr;
    g.y = y;
    g.M = M;
    g.N = N;
    g.KB = KB;
    return g;
  }
};

}  // namespace
}  // namespace qatkit::ops
