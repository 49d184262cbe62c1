// The packing ops of the export format (docs/format.md): integer weight codes [N, K] <-> bytes
// [N, row_bytes], rows independent, low bits first along K.
//   packing "offset" (bits 1..8): the unsigned value code + offset at bit k * bits of the row
//     (int4 symmetric: q + 8 in a nibble, even k low; ternary with offset 1: 0/1/2 for -1/0/+1,
//     four per byte — llama.cpp's TQ2_0 / bitnet.cpp's I2_S assignment); bits 9..16: code + offset
//     as a little-endian uint16, two bytes per code.
//   packing "sign" (bits 1): bit k = 1 for code +1, 0 for -1 (binary weights).
//   packing "base3" (ternary): five codes per byte, byte = sum_j (code_j + 1) * 3^j (1.6 bits).
// Row bytes: ceil(K * bits / 8), 2K for bits > 8, ceil(K / 5) for base3.
//
// One device-generic implementation (ATen ops: the codes expanded to bits, padded and summed
// into bytes) registered at CompositeExplicitAutograd serves CUDA and Meta; the CPU kernel
// (cpu/packing_kernel.cpp) checks first that every code fits the packing (a host read), then runs
// it. Unpacking returns the narrowest signed dtype of the code range (int8, int16 or int32). Not
// differentiable.
#include <ATen/core/Tensor.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/pow.h>
#include <ATen/ops/stack.h>
#include <fmt/format.h>
#include <torch/library.h>

#include "op_handle.h"
#include "packing.h"
#include "qatkit/ops.h"

TORCH_LIBRARY_FRAGMENT(qatkit, m) {
  m.def("pack_weights(Tensor codes, int bits, int offset=0, str packing=\"offset\") -> Tensor",
        {at::Tag::pt2_compliant_tag});
  m.def("unpack_weights(Tensor packed, int bits, int k, int offset=0, str packing=\"offset\") -> Tensor",
        {at::Tag::pt2_compliant_tag});
}

namespace qatkit {
namespace ops {

std::int64_t packed_row_bytes(std::int64_t k, std::int64_t bits, const std::string& packing) {
  if (packing == "base3") return (k + 4) / 5;
  if (bits > 8) return 2 * k;
  return (k * bits + 7) / 8;
}

void check_packing_args(const char* op, std::int64_t bits, std::int64_t offset, const std::string& packing) {
  TORCH_CHECK_VALUE(packing == "offset" || packing == "sign" || packing == "base3",
                    fmt::format("{}: packing must be 'offset', 'sign' or 'base3', got '{}'", op, packing));
  TORCH_CHECK_VALUE(bits >= 1 && bits <= 16, fmt::format("{}: bits must be in [1, 16], got {}", op, bits));
  TORCH_CHECK_VALUE(packing != "sign" || bits == 1,
                    fmt::format("{}: packing 'sign' stores 1 bit per code, got bits={}", op, bits));
  TORCH_CHECK_VALUE(packing != "base3" || bits == 2,
                    fmt::format("{}: packing 'base3' is for ternary codes (bits=2), got bits={}", op, bits));
  TORCH_CHECK_VALUE(offset >= 0 && offset < (std::int64_t{1} << bits),
                    fmt::format("{}: offset must be in [0, 2^bits) = [0, {}), got {}", op, std::int64_t{1} << bits,
                                offset));
}

std::pair<std::int64_t, std::int64_t> packable_code_range(std::int64_t bits, std::int64_t offset,
                                                          const std::string& packing) {
  if (packing == "sign") return {-1, 1};
  if (packing == "base3") return {-1, 1};
  return {-offset, (std::int64_t{1} << bits) - 1 - offset};
}

namespace {

constexpr const char* kPack = "pack_weights";
constexpr const char* kUnpack = "unpack_weights";

at::Tensor pack_composite(const at::Tensor& codes, std::int64_t bits, std::int64_t offset, c10::string_view packing_v) {
  const std::string packing(packing_v);
  check_packing_args(kPack, bits, offset, packing);
  TORCH_CHECK_VALUE(codes.dim() == 2, fmt::format("{}: codes must be 2-d [rows, K], got {} dims", kPack, codes.dim()));
  TORCH_CHECK_TYPE(codes.scalar_type() == at::kChar || codes.scalar_type() == at::kShort ||
                       codes.scalar_type() == at::kInt || codes.scalar_type() == at::kLong ||
                       codes.scalar_type() == at::kByte,
                   fmt::format("{}: codes must be int8, uint8, int16, int32 or int64, got {}", kPack,
                               c10::toString(codes.scalar_type())));
  const std::int64_t n = codes.size(0), k = codes.size(1);
  const auto i64 = codes.options().dtype(at::kLong);
  const at::Tensor c = codes.to(at::kLong);
  if (packing == "base3") {
    const std::int64_t groups = (k + 4) / 5;
    const at::Tensor v = at::constant_pad_nd(c.add(1), {0, groups * 5 - k}, 0).reshape({n, groups, 5});
    const at::Tensor w = at::pow(at::Scalar(3), at::arange(5, i64));
    return v.mul(w).sum(2).to(at::kByte);
  }
  const at::Tensor v = packing == "sign" ? c.gt(0).to(at::kLong) : c.add(offset);
  if (bits > 8) {  // little-endian uint16
    return at::stack({v.bitwise_and(255), v.bitwise_right_shift(8).bitwise_and(255)}, 2).reshape({n, 2 * k})
        .to(at::kByte);
  }
  const std::int64_t row_bytes = packed_row_bytes(k, bits, packing);
  // every code's bits, low first, one after another along the row; padded to whole bytes
  const at::Tensor bit_idx = at::arange(bits, i64);
  const at::Tensor stream = v.unsqueeze(2).bitwise_right_shift(bit_idx).bitwise_and(1).reshape({n, k * bits});
  const at::Tensor padded = at::constant_pad_nd(stream, {0, row_bytes * 8 - k * bits}, 0).reshape({n, row_bytes, 8});
  return padded.bitwise_left_shift(at::arange(8, i64)).sum(2).to(at::kByte);
}

at::Tensor unpack_composite(const at::Tensor& packed, std::int64_t bits, std::int64_t k, std::int64_t offset,
                            c10::string_view packing_v) {
  const std::string packing(packing_v);
  check_packing_args(kUnpack, bits, offset, packing);
  TORCH_CHECK_TYPE(packed.scalar_type() == at::kByte,
                   fmt::format("{}: packed must be uint8, got {}", kUnpack, c10::toString(packed.scalar_type())));
  TORCH_CHECK_VALUE(packed.dim() == 2, fmt::format("{}: packed must be 2-d [rows, bytes], got {} dims", kUnpack,
                                                   packed.dim()));
  TORCH_CHECK_VALUE(k >= 0, fmt::format("{}: k must be >= 0, got {}", kUnpack, k));
  const std::int64_t n = packed.size(0), row_bytes = packed_row_bytes(k, bits, packing);
  TORCH_CHECK_VALUE(packed.size(1) == row_bytes,
                    fmt::format("{}: {} codes of {} bit(s) ({} packing) take {} bytes per row, got {}", kUnpack, k,
                                bits, packing, row_bytes, packed.size(1)));
  const auto i64 = packed.options().dtype(at::kLong);
  // the narrowest signed dtype holding [-offset, 2^bits - 1 - offset]
  const auto [low, high] = packable_code_range(bits, offset, packing);
  const at::ScalarType out = low >= -128 && high <= 127 ? at::kChar : (low >= -32768 && high <= 32767 ? at::kShort : at::kInt);
  const at::Tensor p = packed.to(at::kLong);
  if (packing == "base3") {
    const at::Tensor w = at::pow(at::Scalar(3), at::arange(5, i64));
    const at::Tensor digits = p.unsqueeze(2).div(w, "floor").remainder(3).reshape({n, row_bytes * 5});
    return digits.narrow(1, 0, k).sub(1).to(out);
  }
  if (bits > 8) {
    const at::Tensor pairs = p.reshape({n, k, 2});
    return pairs.select(2, 0).add(pairs.select(2, 1).bitwise_left_shift(8)).sub(offset).to(out);
  }
  const at::Tensor stream = p.unsqueeze(2).bitwise_right_shift(at::arange(8, i64)).bitwise_and(1).reshape({n, row_bytes * 8});
  const at::Tensor v = stream.narrow(1, 0, k * bits).reshape({n, k, bits}).bitwise_left_shift(at::arange(bits, i64)).sum(2);
  return (packing == "sign" ? v.mul(2).sub(1) : v.sub(offset)).to(out);
}

}  // namespace

at::Tensor pack_weights_impl(const at::Tensor& codes, std::int64_t bits, std::int64_t offset,
                             c10::string_view packing) {
  return pack_composite(codes, bits, offset, packing);
}

at::Tensor unpack_weights_impl(const at::Tensor& packed, std::int64_t bits, std::int64_t k, std::int64_t offset,
                               c10::string_view packing) {
  return unpack_composite(packed, bits, k, offset, packing);
}

}  // namespace ops

at::Tensor pack_weights(const at::Tensor& codes, std::int64_t bits, std::int64_t offset, const std::string& packing) {
  static auto op = ops::op_handle<decltype(ops::pack_composite)>("qatkit::pack_weights");
  return op.call(codes, bits, offset, packing);
}

at::Tensor unpack_weights(const at::Tensor& packed, std::int64_t bits, std::int64_t k, std::int64_t offset,
                          const std::string& packing) {
  static auto op = ops::op_handle<decltype(ops::unpack_composite)>("qatkit::unpack_weights");
  return op.call(packed, bits, k, offset, packing);
}

TORCH_LIBRARY_IMPL(qatkit, CompositeExplicitAutograd, m) {
  m.impl("pack_weights", &ops::pack_composite);
  m.impl("unpack_weights", &ops::unpack_composite);
}

}  // namespace qatkit
