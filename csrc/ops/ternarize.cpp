// Ternary weight quantizers (docs/papers.md §7.2 BitNet b1.58 "absmean", §5 TWN), per tensor or per
// channel along `axis`; outputs in {-a, 0, +a} with a per-tensor/channel magnitude a. The
// straight-through (identity) gradient with constant scales is in
// ops/autograd/identity_ste_kernel.cpp.
//   absmean: gamma = max(mean|W|, 1e-5); y = clamp(nearbyint(W / gamma), -1, 1) * gamma, computed as
//            fake_quantize(W, gamma, 0, -1, 1): one L1-norm pass and one quantize pass.
//   twn:     delta = 0.7 * mean|W|; a = mean of |W| over |W| > delta (0 if none); y = sign(W) * a
//            where |W| > delta, else 0. On the CPU: one fused statistic pass and one ternary pass
//            (ops/cpu/ternarize_kernel.cpp). Non-finite input raises on the CPU.
// The composite here is registered once at CompositeExplicitAutograd (CUDA, Meta, other
// backends); the CPU kernel (ops/cpu/ternarize_kernel.cpp) reuses it with its backend hooks.
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/linalg_vector_norm.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <fmt/format.h>
#include <torch/library.h>

#include <vector>

#include "fake_quantize_checks.h"
#include "mean_abs.h"
#include "op_handle.h"
#include "qatkit/ops.h"
#include "ternarize_common.h"

TORCH_LIBRARY_FRAGMENT(qatkit, m) {
  m.def("ternarize(Tensor input, str method=\"absmean\", int? axis=None) -> Tensor", {at::Tag::pt2_compliant_tag});
  m.def("ternarize.out(Tensor input, str method=\"absmean\", int? axis=None, *, Tensor(a!) out) -> Tensor(a!)",
        {at::Tag::pt2_compliant_tag});
}

namespace qatkit {
namespace ops {
namespace {

constexpr float kMinGamma = 1e-5f;

}  // namespace

/// absmean is one fake_quantize pass into the destination.
at::Tensor ternarize_impl(const char* op, const at::Tensor& in, c10::string_view method,
                          std::optional<std::int64_t> axis, at::Tensor* out, const TernarizeBackend& backend) {
  // one layout for the statistics: reductions then sum in the same order for any strides
  const at::Tensor input = in.contiguous();
  check_input_and_range(op, input, -1, 1, axis, std::nullopt);
  TORCH_CHECK_VALUE(method == "absmean" || method == "twn",
                    fmt::format("{}: method must be one of 'absmean', 'twn', got '{}'", op, std::string(method)));
  if (out != nullptr) check_and_resize_out(op, input, *out);
  if (input.sym_numel() == 0) return out ? *out : input.clone(at::MemoryFormat::Contiguous);
  const std::vector<std::int64_t> dims = reduction_dims(input, axis);
  const bool keep = true;
  // (weights have static shapes: guarding on their sizes costs no recompilation)
  const std::int64_t channels = axis.has_value() ? input.sym_size(*axis).guard_int(__FILE__, __LINE__) : 1;
  // mean |W| per tensor / channel, shaped to broadcast (see _mean_abs)
  std::vector<std::int64_t> shape(input.dim(), 1);
  if (axis.has_value()) shape[*axis < 0 ? *axis + input.dim() : *axis] = channels;
  const at::Tensor mean_abs = qatkit::ops::mean_abs(input, axis).reshape(shape);
  if (backend.check_finite) {
    // (a NaN or Inf anywhere makes its channel's mean non-finite; accelerators avoid the host sync)
    TORCH_CHECK_VALUE(at::isfinite(mean_abs).all().item<bool>(),
                      fmt::format("{}: input must be finite, found NaN or Inf", op));
  }
  if (method == "absmean") {
    const at::Tensor gamma = mean_abs.clamp_min(kMinGamma).reshape(-1);
    const at::Tensor z = at::zeros_like(gamma, gamma.options().dtype(at::kInt));
    if (out != nullptr) return qatkit::fake_quantize_out(*out, input, gamma, z, -1, 1, axis);
    return qatkit::fake_quantize(input, gamma, z, -1, 1, axis);
  }
  if (backend.twn != nullptr) {
    at::Tensor y = backend.twn(input, mean_abs, axis, out);
    if (y.defined()) return y;
  }
  // the composite form (CUDA, Meta)
  const at::Tensor absw = input.abs();
  const at::Tensor delta = mean_abs.mul(0.7).to(input.scalar_type());
  const at::Tensor keep_mask = absw.gt(delta);
  const at::Tensor kept_abs = at::where(keep_mask, absw, at::zeros({}, absw.options()));
  // (an empty dim list would make ATen reduce over everything: per channel along a tensor's only
  // axis, every element is its own channel)
  const at::Tensor kept = dims.empty() ? keep_mask.to(at::kFloat) : keep_mask.sum(dims, keep, at::kFloat);
  const at::Tensor sums = dims.empty() ? kept_abs.to(at::kFloat) : kept_abs.sum(dims, keep, at::kFloat);
  const at::Tensor a = sums.div(kept.clamp_min(1.0));
  at::Tensor y =
      at::where(keep_mask, input.sign().mul(a.to(input.scalar_type())), at::zeros({}, input.options())).contiguous();
  if (out == nullptr) return y;
  if (!out->is_meta()) out->copy_(y);
  return *out;
}

}  // namespace ops

namespace {

at::Tensor ternarize_kernel(const at::Tensor& input, c10::string_view method, std::optional<std::int64_t> axis) {
  return ops::ternarize_impl("ternarize", input, method, axis, nullptr, {});
}

at::Tensor& ternarize_out_kernel(const at::Tensor& input, c10::string_view method, std::optional<std::int64_t> axis,
                                 at::Tensor& out) {
  ops::ternarize_impl("ternarize.out", input, method, axis, &out, {});
  return out;
}

}  // namespace

at::Tensor ternarize(const at::Tensor& input, const std::string& method, std::optional<std::int64_t> axis) {
  static auto op = ops::op_handle<decltype(ternarize_kernel)>("qatkit::ternarize");
  return op.call(input, method, axis);
}

at::Tensor& ternarize_out(at::Tensor& out, const at::Tensor& input, const std::string& method,
                          std::optional<std::int64_t> axis) {
  static auto op = ops::op_handle<decltype(ternarize_out_kernel)>("qatkit::ternarize", "out");
  return op.call(input, method, axis, out);
}

TORCH_LIBRARY_IMPL(qatkit, CompositeExplicitAutograd, m) {
  m.impl("ternarize", &ternarize_kernel);
  m.impl("ternarize.out", &ternarize_out_kernel);
}

}  // namespace qatkit
