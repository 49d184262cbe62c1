// Checks shared by every op family (see checks.h).
#include "checks.h"

#include <ATen/MemoryOverlap.h>
#include <ATen/native/Resize.h>
#include <c10/util/Exception.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>

namespace qatkit::ops {

bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

void check_float_dtype(const char* op, const char* what, const at::Tensor& t) {
  TORCH_CHECK_TYPE(is_supported_float(t.scalar_type()),
                   fmt::format("{}: {} must be float32, float64, float16 or bfloat16, got {}", op, what,
                               c10::toString(t.scalar_type())));
}

std::string shape_str(c10::SymIntArrayRef s) {
  std::vector<std::string> parts;
  for (const auto& v : s) parts.push_back(int_str(v));
  return fmt::format("[{}]", fmt::join(parts, ", "));
}

std::string shape_str(c10::IntArrayRef s) { return fmt::format("[{}]", fmt::join(s, ", ")); }

std::string int_str(const c10::SymInt& v) { return fmt::format("{}", v.guard_int(__FILE__, __LINE__)); }

void check_granularity(const char* op, const at::Tensor& input, std::optional<std::int64_t> axis,
                       std::optional<std::int64_t> group_size) {
  TORCH_CHECK_VALUE(!(axis.has_value() && group_size.has_value()),
                    fmt::format("{}: give axis (per-channel) or group_size (per-group), not both; got axis={} "
                                "group_size={}",
                                op, *axis, *group_size));
  const std::int64_t dim = input.dim();
  if (axis.has_value()) {
    TORCH_CHECK_VALUE(dim > 0 && *axis >= -dim && *axis < dim,
                      fmt::format("{}: axis must be in [{}, {}) for a {}-d input, got {}", op, -dim, dim, dim, *axis));
  } else if (group_size.has_value()) {
    const std::int64_t gs = *group_size;
    TORCH_CHECK_VALUE(gs > 0, fmt::format("{}: group_size must be positive, got {}", op, gs));
    TORCH_CHECK_VALUE(dim > 0, fmt::format("{}: group_size needs an input with at least 1 dim, got a 0-d input", op));
    const c10::SymInt last = input.sym_size(dim - 1);
    TORCH_CHECK_VALUE(last % gs == 0, fmt::format("{}: group_size must divide the last dim of input ({}), got {}", op,
                                                  last.guard_int(__FILE__, __LINE__), gs));
  }
}

std::pair<std::int64_t, std::int64_t> affine_layout(const at::Tensor& input, std::optional<std::int64_t> axis,
                                                    std::optional<std::int64_t> group_size) {
  const std::int64_t numel = input.numel();
  std::int64_t inner = numel, channels = 1;
  if (axis.has_value()) {
    const std::int64_t ax = *axis < 0 ? *axis + input.dim() : *axis;
    channels = input.size(ax);
    inner = 1;
    for (std::int64_t d = ax + 1; d < input.dim(); ++d) inner *= input.size(d);
  } else if (group_size.has_value()) {
    inner = *group_size;
    channels = numel / *group_size;
  }
  // Degenerate layouts only arise with numel == 0, where nothing is launched; keep them valid.
  return {std::max<std::int64_t>(inner, 1), std::max<std::int64_t>(channels, 1)};
}

void check_like(const char* op, const char* name, const at::Tensor& t, const at::Tensor& like) {
  TORCH_CHECK_TYPE(t.scalar_type() == like.scalar_type(),
                   fmt::format("{}: {} must have input's dtype {}, got {}", op, name, c10::toString(like.scalar_type()),
                               c10::toString(t.scalar_type())));
  TORCH_CHECK_VALUE(t.sym_sizes() == like.sym_sizes(),
                    fmt::format("{}: {} must have input's shape {}, got {}", op, name, shape_str(like.sym_sizes()),
                                shape_str(t.sym_sizes())));
  TORCH_CHECK_VALUE(t.device() == like.device(), fmt::format("{}: {} must be on input's device {}, got {}", op, name,
                                                             like.device().str(), t.device().str()));
}

void check_enabled_flag(const char* op, const at::Tensor& input, const std::optional<at::Tensor>& enabled) {
  if (!enabled.has_value() || !enabled->defined()) return;
  const at::Tensor& t = *enabled;
  TORCH_CHECK_TYPE(
      t.scalar_type() == at::kBool || at::isIntegralType(t.scalar_type(), false),
      fmt::format("{}: enabled must be a bool or integer tensor, got {}", op, c10::toString(t.scalar_type())));
  TORCH_CHECK_VALUE(t.sym_numel() == 1, fmt::format("{}: enabled must have 1 element, got {}", op,
                                                    t.sym_numel().guard_int(__FILE__, __LINE__)));
  TORCH_CHECK_VALUE(t.device() == input.device(), fmt::format("{}: enabled must be on input's device {}, got {}", op,
                                                              input.device().str(), t.device().str()));
}

std::vector<std::int64_t> reduction_dims(const at::Tensor& input, std::optional<std::int64_t> axis) {
  std::vector<std::int64_t> dims;
  const std::int64_t ax = axis.has_value() ? (*axis < 0 ? *axis + input.dim() : *axis) : -1;
  for (std::int64_t d = 0; d < input.dim(); ++d) {
    if (d != ax) dims.push_back(d);
  }
  return dims;
}

kernels::DType kernel_dtype(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat:
      return kernels::DType::kFloat32;
    case at::kDouble:
      return kernels::DType::kFloat64;
    case at::kHalf:
      return kernels::DType::kFloat16;
    case at::kBFloat16:
      return kernels::DType::kBFloat16;
    default:
      TORCH_CHECK_TYPE(false, fmt::format("qatkit: unsupported dtype {}", c10::toString(t.scalar_type())));
  }
}

void check_and_resize_out(const char* op, const at::Tensor& input, const at::Tensor& out,
                          std::initializer_list<std::pair<const char*, const at::Tensor*>> others) {
  if (!out.is_meta()) {
    for (const auto& [name, t] : others) {
      if (t == nullptr || !t->defined() || t->is_meta()) continue;
      const auto status = at::get_overlap_status(out, *t);
      TORCH_CHECK_VALUE(status != at::MemOverlapStatus::Full && status != at::MemOverlapStatus::Partial,
                        fmt::format("{}: out must not share memory with {} (pass a separate output tensor)", op,
                                    name));
    }
  }
  TORCH_CHECK_TYPE(out.scalar_type() == input.scalar_type(),
                   fmt::format("{}: out must have input's dtype {}, got {}", op, c10::toString(input.scalar_type()),
                               c10::toString(out.scalar_type())));
  TORCH_CHECK_VALUE(out.device() == input.device(), fmt::format("{}: out must be on input's device {}, got {}", op,
                                                                input.device().str(), out.device().str()));
  at::native::resize_output_symint(out, input.sym_sizes());
  if (!out.is_meta()) {  // meta/fake tensors have no memory to overlap (and may have symbolic sizes)
    at::assert_no_internal_overlap(out);
    at::assert_no_overlap(out, input);
  }
}

}  // namespace qatkit::ops
