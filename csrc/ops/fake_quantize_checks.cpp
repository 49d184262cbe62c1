// Argument checks and launch preparation of the fake-quantize family (see the header).
#include "fake_quantize_checks.h"

#include "../../kernels/cpu/fake_quant/fake_quant_cpu.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <fmt/format.h>

#include <atomic>
#include <cfloat>
#include <cmath>
#include <tuple>
#include <vector>

namespace qatkit::ops {
namespace {

constexpr std::int64_t kMaxRange = 65535;           // 16-bit codes
constexpr std::int64_t kMaxAbsQ = (1LL << 24) - 1;  // |q| < 2^24: exact float32 integers (see kernels)

}  // namespace

void check_input_and_range(const char* op, const at::Tensor& input, std::int64_t quant_min, std::int64_t quant_max,
                           std::optional<std::int64_t> axis, std::optional<std::int64_t> group_size) {
  check_float_dtype(op, "input", input);
  TORCH_CHECK_VALUE(quant_min < quant_max,
                    fmt::format("{}: quant_min must be less than quant_max, got quant_min={} quant_max={}", op,
                                quant_min, quant_max));
  TORCH_CHECK_VALUE(quant_max - quant_min <= kMaxRange,
                    fmt::format("{}: quant_max - quant_min must be at most {} (16 bits), got {} "
                                "(quant_min={}, quant_max={})",
                                op, kMaxRange, quant_max - quant_min, quant_min, quant_max));
  TORCH_CHECK_VALUE(quant_min >= -kMaxAbsQ && quant_max <= kMaxAbsQ,
                    fmt::format("{}: quant_min and quant_max must lie in [-(2^24 - 1), 2^24 - 1], got [{}, {}]", op,
                                quant_min, quant_max));
  check_granularity(op, input, axis, group_size);
}

void check_fake_quantize_args(const char* op, const at::Tensor& input, const at::Tensor& scale,
                              const at::Tensor& zero_point, std::int64_t quant_min, std::int64_t quant_max,
                              std::optional<std::int64_t> axis, std::optional<std::int64_t> group_size) {
  check_input_and_range(op, input, quant_min, quant_max, axis, group_size);
  check_qparams_layout(op, input, scale, zero_point, axis, group_size);
}

void check_qparams_layout(const char* op, const at::Tensor& input, const at::Tensor& scale,
                          const at::Tensor& zero_point, std::optional<std::int64_t> axis,
                          std::optional<std::int64_t> group_size) {
  TORCH_CHECK_TYPE(scale.scalar_type() == at::kFloat,
                   fmt::format("{}: scale must be float32, got {}", op, c10::toString(scale.scalar_type())));
  const auto zt = zero_point.scalar_type();
  TORCH_CHECK_TYPE(
      (at::isIntegralType(zt, /*includeBool=*/false) || at::isFloatingType(zt)),
      fmt::format("{}: zero_point must be an integer or integer-valued float tensor, got {}", op, c10::toString(zt)));
  TORCH_CHECK_VALUE(scale.device() == input.device(), fmt::format("{}: scale must be on input's device {}, got {}", op,
                                                                  input.device().str(), scale.device().str()));
  TORCH_CHECK_VALUE(zero_point.device() == input.device(),
                    fmt::format("{}: zero_point must be on input's device {}, got {}", op, input.device().str(),
                                zero_point.device().str()));
  const std::int64_t dim = input.dim();
  const c10::SymInt scale_numel = scale.sym_numel();
  if (axis.has_value()) {
    const std::int64_t ax = *axis < 0 ? *axis + dim : *axis;
    const c10::SymInt channels = input.sym_size(ax);
    TORCH_CHECK_VALUE(
        scale_numel == channels,
        fmt::format("{}: scale must have {} elements (size of dim {} of input), got {}", op,
                    channels.guard_int(__FILE__, __LINE__), ax, scale_numel.guard_int(__FILE__, __LINE__)));
  } else if (group_size.has_value()) {
    std::vector<c10::SymInt> expected(input.sym_sizes().begin(), input.sym_sizes().end());
    expected.back() = expected.back() / *group_size;
    TORCH_CHECK_VALUE(scale.sym_sizes() == c10::SymIntArrayRef(expected),
                      fmt::format("{}: scale must have shape {} (input.shape[:-1] + [last_dim / group_size]), got {}",
                                  op, shape_str(expected), shape_str(scale.sym_sizes())));
  } else {
    TORCH_CHECK_VALUE(scale_numel == 1,
                      fmt::format("{}: per-tensor scale must have 1 element, got {} (pass axis= or group_size= for "
                                  "per-channel or per-group)",
                                  op, scale_numel.guard_int(__FILE__, __LINE__)));
  }
  TORCH_CHECK_VALUE(
      zero_point.sym_numel() == scale_numel,
      fmt::format("{}: zero_point must have as many elements as scale ({}), got {}", op,
                  scale_numel.guard_int(__FILE__, __LINE__), zero_point.sym_numel().guard_int(__FILE__, __LINE__)));
}

void check_qparam_values(const char* op, const at::Tensor& scale_f32, const at::Tensor& zero_point_f32,
                         std::int64_t quant_min, std::int64_t quant_max) {
  const float* s = scale_f32.const_data_ptr<float>();
  const float* z = zero_point_f32.const_data_ptr<float>();
  const std::int64_t n = scale_f32.numel();
  const float qmin = static_cast<float>(quant_min), qmax = static_cast<float>(quant_max);
  // A subnormal scale has an infinite float32 reciprocal (x = 0 would give NaN), so scales must
  // be normal. One vectorized, threaded pass (qparams can be as large as the input for small
  // groups), then a scalar pass only to name the first bad element.
  std::atomic<bool> ok{true};
  const auto& k = kernels::cpu::fake_quant_kernels();
  at::parallel_for(0, n, 1 << 16, [&](std::int64_t begin, std::int64_t end) {
    if (!k.qparams_valid(s + begin, z + begin, end - begin, qmin, qmax)) ok.store(false, std::memory_order_relaxed);
  });
  if (ok.load()) return;
  for (std::int64_t c = 0; c < n; ++c) {
    TORCH_CHECK_VALUE(std::isfinite(s[c]) && s[c] >= FLT_MIN,
                      fmt::format("{}: scale must be positive, finite and at least {} (float32 normal), got {} "
                                  "at index {}",
                                  op, FLT_MIN, s[c], c));
    TORCH_CHECK_VALUE(std::nearbyint(z[c]) == z[c] && z[c] >= qmin && z[c] <= qmax,
                      fmt::format("{}: zero_point must be an integer in [quant_min, quant_max] = [{}, {}], got {} at "
                                  "index {}",
                                  op, quant_min, quant_max, z[c], c));
  }
}

PreparedFakeQuant prepare_fake_quantize(const char* op, const at::Tensor& input, const at::Tensor& scale,
                                        const at::Tensor& zero_point, std::int64_t quant_min, std::int64_t quant_max,
                                        std::optional<std::int64_t> axis, std::optional<std::int64_t> group_size,
                                        at::Tensor& out, std::uint8_t* mask, const std::optional<at::Tensor>& enabled) {
  check_fake_quantize_args(op, input, scale, zero_point, quant_min, quant_max, axis, group_size);
  PreparedFakeQuant p;
  p.input = input.contiguous();
  p.scale = scale.contiguous();
  p.zero_point = as_float(zero_point).contiguous();
  kernels::FakeQuantArgs& a = p.args;
  a.numel = input.numel();
  a.quant_min = static_cast<float>(quant_min);
  a.quant_max = static_cast<float>(quant_max);
  a.dtype = kernel_dtype(input);
  std::tie(a.inner, a.channels) = affine_layout(input, axis, group_size);
  a.input = p.input.const_data_ptr();
  a.output = out.mutable_data_ptr();
  a.mask = mask;
  a.scale = p.scale.const_data_ptr<float>();
  a.zero_point = p.zero_point.const_data_ptr<float>();
  if (enabled.has_value() && enabled->defined()) {
    check_enabled_flag(op, input, enabled);
    // any non-zero value means on (a uint8 cast would wrap 256 to 0); device ops: no host sync
    p.enabled = enabled->reshape({1}).ne(0).to(at::kByte).contiguous();
    a.enabled = p.enabled.const_data_ptr<std::uint8_t>();
  }
  return p;
}

kernels::FakeQuantBackwardArgs backward_args(const at::Tensor& grad, const at::Tensor& mask, at::Tensor& grad_input) {
  kernels::FakeQuantBackwardArgs a;
  a.grad_output = grad.const_data_ptr();
  a.mask = mask.const_data_ptr<std::uint8_t>();
  a.grad_input = grad_input.mutable_data_ptr();
  a.numel = grad.numel();
  a.dtype = kernel_dtype(grad);
  return a;
}

void check_backward_args(const at::Tensor& grad, const at::Tensor& mask) {
  constexpr const char* op = "_fake_quantize_backward";
  check_float_dtype(op, "grad", grad);
  TORCH_CHECK_TYPE(mask.scalar_type() == at::kByte,
                   fmt::format("{}: mask must be uint8 (a bit mask), got {}", op, c10::toString(mask.scalar_type())));
  TORCH_CHECK_VALUE(mask.device() == grad.device(), fmt::format("{}: mask must be on grad's device {}, got {}", op,
                                                                grad.device().str(), mask.device().str()));
  const c10::SymInt need = (grad.sym_numel() + 7) / 8;
  TORCH_CHECK_VALUE(mask.dim() == 1 && mask.sym_numel() == need,
                    fmt::format("{}: mask must be 1-d with {} bytes (ceil(grad.numel() / 8)), got shape {}", op,
                                need.guard_int(__FILE__, __LINE__), shape_str(mask.sym_sizes())));
}

}  // namespace qatkit::ops
