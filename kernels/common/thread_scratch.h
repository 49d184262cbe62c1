// A per-thread scratch buffer kept between calls, shared by the kernel files and the ops (internal
// linkage, as fake_quant_scalar.h: each file, built with its own instruction set, has its own copy).
#pragma once

#include <cstddef>
#include <memory>
#include <vector>

namespace qatkit::kernels {
namespace {

/// A per-thread buffer of at least n elements, kept between calls (one per element type and Tag),
/// for buffers a kernel or an op fills before it reads them. A per-call std::vector costs a malloc,
/// a zero fill and, for large buffers or in an OpenMP worker's malloc arena, fresh pages: about 7 us
/// of fixed cost per 2-thread linear_w4_weight_only call on MiniLM's layers, and up to half a
/// one-image depthwise conv2d_int8's time (docs/benchmarks.md, 2026-12-03 and 2026-12-04). Tag is a
/// type local to the caller (a struct declared in the function), so each use has its own buffer.
template <class T, class Tag>
T* thread_scratch(std::size_t n) {
  thread_local std::vector<T> buf;
  if (buf.size() < n) buf.resize(n);
  return buf.data();
}

/// n elements (uninitialized where freshly allocated): the thread's scratch (thread_scratch) up to
/// kMaxBytes, a buffer of this call's own above it, so one large call (a big batch's planes) does
/// not pin its memory in the thread for the rest of the process.
template <class T, class Tag>
class BoundedScratch {
 public:
  static constexpr std::size_t kMaxBytes = std::size_t{16} << 20;
  explicit BoundedScratch(std::size_t n) {
    if (n * sizeof(T) <= kMaxBytes) {
      p_ = thread_scratch<T, Tag>(n);
    } else {
      heap_.reset(new T[n]);
      p_ = heap_.get();
    }
  }
  T* get() const { return p_; }

 private:
  std::unique_ptr<T[]> heap_;
  T* p_ = nullptr;
};

}  // namespace
}  // namespace qatkit::kernels
