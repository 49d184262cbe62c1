#include "derived_weights.h"

#include <c10/core/Storage.h>
#include <c10/util/Exception.h>
#include <c10/util/intrusive_ptr.h>

#include <array>
#include <cstdlib>
#include <mutex>
#include <utility>
#include <vector>

#include "qatkit/weight_cache.h"

namespace qatkit::ops {
namespace {

struct Entry {
  explicit Entry(c10::weak_intrusive_ptr<c10::StorageImpl> s) : storage(std::move(s)) {}
  c10::weak_intrusive_ptr<c10::StorageImpl> storage;
  const void* data = nullptr;
  std::array<std::int64_t, 4> shape{};
  std::uint32_t version = 0;
  std::array<std::int64_t, 8> form{};
  at::Tensor value;
  std::uint64_t used = 0;  // the use clock's value at the last hit
};

// 256 MiB by default; QATKIT_WEIGHT_CACHE_MB sets it (0: nothing held)
std::int64_t capacity_from_env() {
  constexpr std::int64_t kDefault = std::int64_t{256} << 20;
  const char* v = std::getenv("QATKIT_WEIGHT_CACHE_MB");
  if (v == nullptr || *v == '\0') return kDefault;
  char* end = nullptr;
  const long long mb = std::strtoll(v, &end, 10);
  if (end != v && *end == '\0' && mb >= 0 && mb < (1LL << 40)) return static_cast<std::int64_t>(mb) << 20;
  TORCH_WARN("QATKIT_WEIGHT_CACHE_MB='", v, "' is not a whole number of MiB in [0, 2^40): ignored, the cache holds ",
             kDefault >> 20, " MiB");
  return kDefault;
}

struct Cache {
  std::mutex mu;
  std::vector<Entry> entries;
  std::int64_t bytes = 0, hits = 0, misses = 0, capacity = capacity_from_env();
  std::uint64_t clock = 0;

  // drops entries whose storage is gone, then the least recently used while over capacity
  void trim() {
    for (std::size_t i = entries.size(); i-- > 0;) {
      if (entries[i].storage.expired()) drop(i);
    }
    while (bytes > capacity && !entries.empty()) {
      std::size_t lru = 0;
      for (std::size_t i = 1; i < entries.size(); ++i)
        if (entries[i].used < entries[lru].used) lru = i;
      drop(lru);
    }
  }
  void drop(std::size_t i) {
    bytes -= static_cast<std::int64_t>(entries[i].value.nbytes());
    if (i + 1 != entries.size()) entries[i] = std::move(entries.back());
    entries.pop_back();
  }
};

// never destroyed: held tensors would otherwise be freed during static destruction, after the
// allocators they came from
Cache& cache() {
  static auto* c = new Cache;
  return *c;
}

}  // namespace

bool weight_form_holdable(const at::Tensor& w) {
  return w.is_contiguous() && !w.is_inference() && w.dim() <= 4 && w.has_storage() && cache().capacity > 0;
}

at::Tensor cached_weight_form(const at::Tensor& w, const std::array<std::int64_t, 8>& form,
                              const std::function<at::Tensor()>& make) {
  if (!weight_form_holdable(w)) return make();
  Cache& c = cache();
  const c10::StorageImpl* st = w.storage().unsafeGetStorageImpl();
  const void* data = w.const_data_ptr();
  const std::uint32_t version = w.unsafeGetTensorImpl()->version_counter().current_version();
  std::array<std::int64_t, 4> shape{-1, -1, -1, -1};
  for (std::int64_t d = 0; d < w.dim(); ++d) shape[static_cast<std::size_t>(d)] = w.size(d);
  {
    std::lock_guard<std::mutex> lock(c.mu);
    for (Entry& e : c.entries) {
      if (e.data != data || e.form != form || e.shape != shape) continue;
      // the same storage still alive (not a new one at a freed one's address) and no write since
      const c10::intrusive_ptr<c10::StorageImpl> alive = e.storage.lock();
      if (alive.get() == st && e.version == version) {
        e.used = ++c.clock;
        ++c.hits;
        return e.value;
      }
    }
    ++c.misses;
  }
  at::Tensor value = make();
  if (static_cast<std::int64_t>(value.nbytes()) > c.capacity) return value;
  std::lock_guard<std::mutex> lock(c.mu);
  // a stale entry for the same weight and form (its storage died, or a write since) goes
  for (std::size_t i = c.entries.size(); i-- > 0;) {
    const Entry& e = c.entries[i];
    if (e.data == data && e.form == form && e.shape == shape) c.drop(i);
  }
  Entry e(w.storage().getWeakStorageImpl());
  e.data = data;
  e.shape = shape;
  e.version = version;
  e.form = form;
  e.value = value;
  e.used = ++c.clock;
  c.bytes += static_cast<std::int64_t>(value.nbytes());
  c.entries.push_back(std::move(e));
  c.trim();
  return value;
}

}  // namespace qatkit::ops

namespace qatkit {

DerivedWeightCacheInfo derived_weight_cache_info() {
  auto& c = ops::cache();
  std::lock_guard<std::mutex> lock(c.mu);
  DerivedWeightCacheInfo info;
  info.entries = static_cast<std::int64_t>(c.entries.size());
  info.bytes = c.bytes;
  info.hits = c.hits;
  info.misses = c.misses;
  info.capacity_bytes = c.capacity;
  return info;
}

void clear_derived_weight_cache() {
  auto& c = ops::cache();
  std::lock_guard<std::mutex> lock(c.mu);
  c.entries.clear();
  c.bytes = 0;
}

}  // namespace qatkit
