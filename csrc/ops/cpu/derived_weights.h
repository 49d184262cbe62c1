// Derived forms of constant weights kept between calls (csrc/qatkit/weight_cache.h).
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <cstdint>
#include <functional>

namespace qatkit::ops {

/// make()'s result for weight w and the form's parameters `form` (which derivation, and everything
/// it reads besides w's bytes), from the cache when an entry for the same storage, data pointer,
/// shape, version and form is held; else make() is called and its result held. A weight that is
/// not contiguous or is an inference tensor (no version counter: an in-place write could not be
/// seen) is never held: make() every call. make() must depend on w's bytes and `form` alone.
at::Tensor cached_weight_form(const at::Tensor& w, const std::array<std::int64_t, 8>& form,
                              const std::function<at::Tensor()>& make);

/// Whether cached_weight_form can hold forms of w (contiguous, not an inference tensor, at most 4
/// dims, with storage, and a cache of nonzero capacity): where it cannot, a caller may prefer not
/// to derive an optional form every call.
bool weight_form_holdable(const at::Tensor& w);

}  // namespace qatkit::ops
