// The CPU kernels' cache of derived weight forms: layouts an op computes from a constant weight
// on every call otherwise (a conv's patch-order reorder of its panel and the panel's split records,
// 2- and 1-bit conv weights widened to an int8 panel). An entry is used only for the same storage,
// data pointer, shape, version (in-place writes bump it) and form; it holds one copy of the derived
// weight, so a model's conv weights take up to twice their memory while the cache holds them.
// Capacity 256 MiB (QATKIT_WEIGHT_CACHE_MB, read once: 0 holds nothing); past it the least recently
// used entries go, and entries of freed weights go at the next insertion (or clear_derived_weight_cache).
#pragma once

#include <cstdint>

#include "macros.h"

namespace qatkit {

struct DerivedWeightCacheInfo {
  std::int64_t entries = 0;  ///< derived weights held
  std::int64_t bytes = 0;    ///< their total size
  std::int64_t hits = 0;     ///< calls that took a held form (since the process started)
  std::int64_t misses = 0;   ///< calls that computed one
  std::int64_t capacity_bytes = 0;  ///< the least recently used entries leave past this
};

/// The cache's state.
QATKIT_API DerivedWeightCacheInfo derived_weight_cache_info();

/// Drops every held form (they are computed again on the next call).
QATKIT_API void clear_derived_weight_cache();

}  // namespace qatkit
