// The ternarize family's device-generic implementation (docs/papers.md §5 TWN, §7.2 absmean),
// shared by the composite registration (ternarize.cpp) and the CPU kernel
// (cpu/ternarize_kernel.cpp), which adds the NaN / Inf check and the fused TWN passes.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>

namespace qatkit::ops {

/// A backend's TWN implementation given the checked contiguous input and mean |W| shaped to
/// broadcast; writes into *out when given. Returns undefined to fall back to the composite.
using TwnKernel = at::Tensor (*)(const at::Tensor& input, const at::Tensor& mean_abs, std::optional<std::int64_t> axis,
                                 at::Tensor* out);

/// What a backend adds to the composite: a host check that the input is finite (reads the
/// statistic, so accelerators skip it) and a TWN kernel (nullptr: the ATen composite).
struct TernarizeBackend {
  bool check_finite = false;
  TwnKernel twn = nullptr;
};

/// ternarize(input) written into `out` (checked and resized) or returned when `out` is null.
at::Tensor ternarize_impl(const char* op, const at::Tensor& input, c10::string_view method,
                          std::optional<std::int64_t> axis, at::Tensor* out, const TernarizeBackend& backend);

}  // namespace qatkit::ops
