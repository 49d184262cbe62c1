// CPU kernel of pack_weights: every code must fit the packing (checked here, a host read; the
// device-generic implementation in ../packing.cpp would silently wrap an out-of-range code into
// its neighbours' bits), then the shared implementation. unpack_weights needs no check (every
// byte unpacks to a valid code) and runs the composite on every device.
#include <ATen/core/Tensor.h>
#include <ATen/ops/aminmax.h>
#include <fmt/format.h>
#include <torch/library.h>

#include "../packing.h"

namespace qatkit::ops {
namespace {

at::Tensor pack_weights_cpu(const at::Tensor& codes, std::int64_t bits, std::int64_t offset, c10::string_view packing) {
  const std::string p(packing);
  check_packing_args("pack_weights", bits, offset, p);
  if (codes.numel() > 0 && codes.dim() == 2 && c10::isIntegralType(codes.scalar_type(), false)) {
    const auto [lo_t, hi_t] = at::aminmax(codes);
    const std::int64_t lo = lo_t.item<std::int64_t>(), hi = hi_t.item<std::int64_t>();
    const auto [low, high] = packable_code_range(bits, offset, p);
    TORCH_CHECK_VALUE(lo >= low && hi <= high,
                      fmt::format("pack_weights: codes must lie in [{}, {}] for {} bit(s) with offset {} ({} packing), "
                                  "got [{}, {}]",
                                  low, high, bits, offset, p, lo, hi));
    if (p == "sign" || p == "base3") {  // -1 / +1 only, and ternary's 0 only for base3
      TORCH_CHECK_VALUE(p == "base3" || !codes.eq(0).any().item<bool>(),
                        "pack_weights: packing 'sign' stores binary codes -1 / +1, got a 0");
    }
  }
  return pack_weights_impl(codes, bits, offset, packing);
}

}  // namespace

TORCH_LIBRARY_IMPL(qatkit, CPU, m) { m.impl("pack_weights", &pack_weights_cpu); }

}  // namespace qatkit::ops
