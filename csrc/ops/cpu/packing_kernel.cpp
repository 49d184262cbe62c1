// CPU kernels of pack_weights / unpack_weights: every code must fit the packing (checked first, a
// host read; the device-generic implementation in ../packing.cpp, which CUDA and Meta run, would
// silently wrap an out-of-range code into its neighbours' bits), then one pass per row writing
// bytes directly (the composite expands every code to int64 bits: 64x the codes' memory, too much
// for a model's worth of weights). Same bytes as the composite (tests/python/ops/test_packing.py).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/aminmax.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <fmt/format.h>
#include <torch/library.h>

#include "../packing.h"

namespace qatkit::ops {
namespace {

constexpr std::int64_t kPow3[5] = {1, 3, 9, 27, 81};

template <typename code_t>
void pack_row(const code_t* c, std::int64_t k, std::int64_t bits, std::int64_t offset, int mode, std::uint8_t* out) {
  if (mode == 2) {  // base3
    for (std::int64_t j = 0; j < k; ++j) out[j / 5] += static_cast<std::uint8_t>((c[j] + 1) * kPow3[j % 5]);
    return;
  }
  if (bits > 8) {
    for (std::int64_t j = 0; j < k; ++j) {
      const auto v = static_cast<std::uint32_t>(static_cast<std::int64_t>(c[j]) + offset);
      out[2 * j] = static_cast<std::uint8_t>(v & 255u);
      out[2 * j + 1] = static_cast<std::uint8_t>(v >> 8);
    }
    return;
  }
  std::int64_t pos = 0;
  for (std::int64_t j = 0; j < k; ++j, pos += bits) {
    const std::uint32_t v = mode == 1 ? (c[j] > 0 ? 1u : 0u) : static_cast<std::uint32_t>(static_cast<std::int64_t>(c[j]) + offset);
    // at most 8 bits starting at bit pos: spans this byte and possibly the next
    const std::uint32_t shifted = v << (pos & 7);
    out[pos >> 3] |= static_cast<std::uint8_t>(shifted & 255u);
    if ((pos & 7) + bits > 8) out[(pos >> 3) + 1] |= static_cast<std::uint8_t>(shifted >> 8);
  }
}

template <typename code_t>
void unpack_row(const std::uint8_t* p, std::int64_t k, std::int64_t bits, std::int64_t offset, int mode, code_t* out) {
  if (mode == 2) {
    for (std::int64_t j = 0; j < k; ++j) out[j] = static_cast<code_t>((p[j / 5] / kPow3[j % 5]) % 3 - 1);
    return;
  }
  if (bits > 8) {
    for (std::int64_t j = 0; j < k; ++j) {
      out[j] = static_cast<code_t>(static_cast<std::int64_t>(p[2 * j] | (p[2 * j + 1] << 8)) - offset);
    }
    return;
  }
  const std::uint32_t mask = (1u << bits) - 1u;
  std::int64_t pos = 0;
  for (std::int64_t j = 0; j < k; ++j, pos += bits) {
    std::uint32_t word = p[pos >> 3];
    if ((pos & 7) + bits > 8) word |= static_cast<std::uint32_t>(p[(pos >> 3) + 1]) << 8;
    const std::uint32_t v = (word >> (pos & 7)) & mask;
    out[j] = static_cast<code_t>(mode == 1 ? (v ? 1 : -1) : static_cast<std::int64_t>(v) - offset);
  }
}

int mode_of(const std::string& p) { return p == "sign" ? 1 : (p == "base3" ? 2 : 0); }

at::Tensor pack_weights_cpu(const at::Tensor& codes, std::int64_t bits, std::int64_t offset, c10::string_view packing) {
  const std::string p(packing);
  check_packing_args("pack_weights", bits, offset, p);
  if (codes.dim() != 2 || !c10::isIntegralType(codes.scalar_type(), false) || codes.scalar_type() == at::kBool) {
    return pack_weights_impl(codes, bits, offset, packing);  // its checks name the problem
  }
  const std::int64_t n = codes.size(0), k = codes.size(1);
  if (codes.numel() > 0) {
    const auto [lo_t, hi_t] = at::aminmax(codes);
    const std::int64_t lo = lo_t.item<std::int64_t>(), hi = hi_t.item<std::int64_t>();
    const auto [low, high] = packable_code_range(bits, offset, p);
    TORCH_CHECK_VALUE(lo >= low && hi <= high,
                      fmt::format("pack_weights: codes must lie in [{}, {}] for {} bit(s) with offset {} ({} packing), "
                                  "got [{}, {}]",
                                  low, high, bits, offset, p, lo, hi));
    TORCH_CHECK_VALUE(p != "sign" || !codes.eq(0).any().item<bool>(),
                      "pack_weights: packing 'sign' stores binary codes -1 / +1, got a 0");
  }
  const std::int64_t row_bytes = packed_row_bytes(k, bits, p);
  at::Tensor out = at::zeros({n, row_bytes}, codes.options().dtype(at::kByte));
  const at::Tensor c = codes.contiguous();
  const int mode = mode_of(p);
  AT_DISPATCH_INTEGRAL_TYPES(c.scalar_type(), "pack_weights", [&] {
    const scalar_t* src = c.const_data_ptr<scalar_t>();
    std::uint8_t* dst = out.mutable_data_ptr<std::uint8_t>();
    at::parallel_for(0, n, std::max<std::int64_t>(1, 65536 / std::max<std::int64_t>(k, 1)), [&](std::int64_t b, std::int64_t e) {
      for (std::int64_t r = b; r < e; ++r) pack_row<scalar_t>(src + r * k, k, bits, offset, mode, dst + r * row_bytes);
    });
  });
  return out;
}

at::Tensor unpack_weights_cpu(const at::Tensor& packed, std::int64_t bits, std::int64_t k, std::int64_t offset,
                              c10::string_view packing) {
  const std::string p(packing);
  if (packed.scalar_type() != at::kByte || packed.dim() != 2 || k < 0 ||
      packed.size(1) != packed_row_bytes(k, bits, p)) {
    return unpack_weights_impl(packed, bits, k, offset, packing);  // its checks name the problem
  }
  check_packing_args("unpack_weights", bits, offset, p);
  const std::int64_t n = packed.size(0), row_bytes = packed.size(1);
  const auto [low, high] = packable_code_range(bits, offset, p);
  const at::ScalarType dtype =
      low >= -128 && high <= 127 ? at::kChar : (low >= -32768 && high <= 32767 ? at::kShort : at::kInt);
  at::Tensor out = at::empty({n, k}, packed.options().dtype(dtype));
  const at::Tensor src_t = packed.contiguous();
  const int mode = mode_of(p);
  AT_DISPATCH_INTEGRAL_TYPES(dtype, "unpack_weights", [&] {
    const std::uint8_t* src = src_t.const_data_ptr<std::uint8_t>();
    scalar_t* dst = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, n, std::max<std::int64_t>(1, 65536 / std::max<std::int64_t>(k, 1)), [&](std::int64_t b, std::int64_t e) {
      for (std::int64_t r = b; r < e; ++r) unpack_row<scalar_t>(src + r * row_bytes, k, bits, offset, mode, dst + r * k);
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(qatkit, CPU, m) {
  m.impl("pack_weights", &pack_weights_cpu);
  m.impl("unpack_weights", &unpack_weights_cpu);
}

}  // namespace qatkit::ops
