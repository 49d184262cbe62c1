// The file form of a weight spec's codes (docs/format.md), one truth for the C++ writer (save.cpp)
// and reader (load.cpp), as Python's serialization.packing_for is for its own.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <tuple>

#include "qatkit/nn.h"

namespace qatkit::nn::detail {

/// (bits, offset, packing) of a weight spec's codes: integer codes stored as code - quant_min in
/// the fewest bits holding the range, ternary codes as 2-bit 0 / 1 / 2 (a file may also hold them
/// base-3, five per byte: (2, 1, "base3")), binary codes 1 bit each (1 = +1).
inline std::tuple<std::int64_t, std::int64_t, std::string> packing_for(const QuantSpec& spec) {
  if (spec.kind == "binary") return {1, 0, "sign"};
  if (spec.kind == "ternary") return {2, 1, "offset"};
  const std::int64_t lo = spec.quant_min(), hi = spec.quant_max();
  const auto bits = std::max<std::int64_t>(1, static_cast<std::int64_t>(std::ceil(std::log2(static_cast<double>(hi - lo + 1)))));
  return {bits, -lo, "offset"};
}

}  // namespace qatkit::nn::detail
