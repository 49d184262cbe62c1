// Fused observer + fake quantize (the FusedMovingAvgObsFakeQuantize pattern of Jacob et al.'s QAT
// recipe, docs/papers.md §2-3): update running min/max in place (moving average with `momentum`, or
// plain min/max), recompute scale / zero point into their buffers, fake-quantize. The on/off
// switches are tensors read on the device, so toggling them neither syncs nor recompiles. Inside a
// backward pass (activation checkpointing recomputing a forward, eager or in a compiled backward
// graph) the observer updates nothing: the batch was observed by the first forward.
//   _observer_update: the mutable, non-differentiable half (CPU/CUDA/Meta: ATen ops on
//                     statistic-sized tensors after one amin + amax pass over the input);
//   fused_observe_fake_quantize: _observer_update, then _fake_quantize_with_mask with the
//                     fake_quant_on switch (an identity with an all-ones mask when off, read on
//                     the device), one pass; C++ autograd saves the 1-bit mask, so the gradient is
//                     the clipped STE when on and the identity when off.
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/isinf.h>
#include <ATen/ops/where.h>
#include <fmt/format.h>
#include <ATen/ops/nonzero.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/graph_task.h>
#include <torch/library.h>

#include <cmath>

#include "fake_quantize_checks.h"
#include "autograd/unsupported.h"
#include "op_handle.h"
#include "qatkit/ops.h"
#include "qparams_math.h"

TORCH_LIBRARY_FRAGMENT(qatkit, m) {
  const std::vector<at::Tag> tags{at::Tag::pt2_compliant_tag};
  m.def(
      "_observer_update(Tensor input, Tensor(a!) running_min, Tensor(b!) running_max, Tensor(c!) scale, "
      "Tensor(d!) zero_point, Tensor observer_on, float momentum, bool moving_average, int quant_min, "
      "int quant_max, bool symmetric, int? axis=None) -> ()",
      tags);
  m.def(
      "fused_observe_fake_quantize(Tensor input, Tensor(a!) running_min, Tensor(b!) running_max, "
      "Tensor(c!) scale, Tensor(d!) zero_point, Tensor observer_on, Tensor fake_quant_on, float momentum=0.01, "
      "bool moving_average=True, int quant_min=-128, int quant_max=127, bool symmetric=False, int? axis=None) "
      "-> Tensor",
      tags);
  // a stochastic quantizer's step counter (its Philox seed): +1 and the new value, except inside
  // a backward pass, where the current value (the one the recomputed forward drew with)
  m.def("_advance_step(Tensor(a!) step) -> Tensor", tags);
}

namespace qatkit {
namespace {

using OptInt = std::optional<std::int64_t>;

void check_buffer(const char* op, const char* name, const at::Tensor& t, at::ScalarType dtype,
                  const c10::SymInt& channels, const at::Tensor& input) {
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, fmt::format("{}: {} must be {}, got {}", op, name, c10::toString(dtype),
                                                         c10::toString(t.scalar_type())));
  TORCH_CHECK_VALUE(t.sym_numel() == channels,
                    fmt::format("{}: {} must have {} elements (one per channel), got {}", op, name,
                                channels.guard_int(__FILE__, __LINE__), t.sym_numel().guard_int(__FILE__, __LINE__)));
  TORCH_CHECK_VALUE(t.device() == input.device(), fmt::format("{}: {} must be on input's device {}, got {}", op, name,
                                                              input.device().str(), t.device().str()));
}


}  // namespace

namespace ops {

void check_flag(const char* op, const char* name, const at::Tensor& t, const at::Tensor& input) {
  TORCH_CHECK_TYPE(
      t.scalar_type() == at::kBool || at::isIntegralType(t.scalar_type(), false),
      fmt::format("{}: {} must be a bool or integer tensor, got {}", op, name, c10::toString(t.scalar_type())));
  TORCH_CHECK_VALUE(t.sym_numel() == 1, fmt::format("{}: {} must have 1 element, got {}", op, name,
                                                    t.sym_numel().guard_int(__FILE__, __LINE__)));
  TORCH_CHECK_VALUE(t.device() == input.device(), fmt::format("{}: {} must be on input's device {}, got {}", op, name,
                                                              input.device().str(), t.device().str()));
}

void check_observer_update_args(const char* op, const at::Tensor& input, const at::Tensor& running_min,
                         const at::Tensor& running_max, const at::Tensor& scale, const at::Tensor& zero_point,
                         const at::Tensor& observer_on, double momentum, std::int64_t quant_min, std::int64_t quant_max,
                         OptInt axis) {
  ops::check_input_and_range(op, input, quant_min, quant_max, axis, std::nullopt);
  TORCH_CHECK_VALUE(momentum >= 0.0 && momentum <= 1.0,
                    fmt::format("{}: momentum must be in [0, 1], got {}", op, momentum));
  const c10::SymInt channels = axis.has_value() ? input.sym_size(*axis) : c10::SymInt(1);
  check_buffer(op, "running_min", running_min, at::kFloat, channels, input);
  check_buffer(op, "running_max", running_max, at::kFloat, channels, input);
  check_buffer(op, "scale", scale, at::kFloat, channels, input);
  check_buffer(op, "zero_point", zero_point, at::kInt, channels, input);
  check_flag(op, "observer_on", observer_on, input);
}

bool recomputing_in_backward() { return torch::autograd::get_current_graph_task_id() != -1; }

void observer_update_impl(const at::Tensor& input, at::Tensor& running_min, at::Tensor& running_max, at::Tensor& scale,
                          at::Tensor& zero_point, const at::Tensor& observer_on, double momentum, bool moving_average,
                          std::int64_t quant_min, std::int64_t quant_max, bool symmetric, OptInt axis,
                          bool check_finite) {
  constexpr const char* op = "_observer_update";
  // Statistics are not differentiable: never record the buffer updates in an autograd graph
  // (the buffers would otherwise chain every training step's graph together).
  const at::NoGradGuard no_grad;
  check_observer_update_args(op, input, running_min, running_max, scale, zero_point, observer_on, momentum,
                             quant_min, quant_max, axis);
  if (input.sym_numel() == 0) return;  // nothing observed
  if (recomputing_in_backward()) return;  // activation checkpointing's second run of this forward
  const at::Tensor rows =
      axis.has_value() ? input.movedim(*axis, 0).reshape_symint({input.sym_size(*axis), -1}) : input.reshape({1, -1});
  auto [cur_min, cur_max] = ops::row_min_max(rows);
  // A batch with NaN / Inf, or a range wider than float32 (max - min = inf), must not reach the
  // state: it would freeze the scale for good. Rows that observed such data keep their state; the
  // CPU kernel raises instead (a host read, free there), naming the row.
  const at::Tensor batch_ok =
      at::isfinite(cur_min).logical_and(at::isfinite(cur_max)).logical_and(at::isfinite(cur_max.sub(cur_min)));
  const at::Tensor on = observer_on.reshape({}).ne(0);
  if (check_finite) {
    const at::Tensor bad = batch_ok.logical_not().logical_and(on);
    if (bad.any().item<bool>()) {
      const std::int64_t i = bad.nonzero().reshape(-1)[0].item<std::int64_t>();
      TORCH_CHECK_VALUE(false, fmt::format("{}: the observed batch holds NaN or Inf, or a range wider than float32 "
                                           "({}min={}, max={}); the observer state is unchanged",
                                           op, axis.has_value() ? fmt::format("channel {}: ", i) : std::string(),
                                           cur_min[i].item<float>(), cur_max[i].item<float>()));
    }
  }
  const at::Tensor rmin = running_min.reshape(-1), rmax = running_max.reshape(-1);
  at::Tensor upd_min, upd_max;
  if (moving_average) {  // an empty (+-inf) running value starts at the first observation
    upd_min = at::where(at::isinf(rmin), cur_min, rmin.add(cur_min.sub(rmin).mul(momentum)));
    upd_max = at::where(at::isinf(rmax), cur_max, rmax.add(cur_max.sub(rmax).mul(momentum)));
  } else {
    upd_min = rmin.minimum(cur_min);
    upd_max = rmax.maximum(cur_max);
  }
  const at::Tensor take = batch_ok.logical_and(on);
  const at::Tensor new_min = at::where(take, upd_min, rmin), new_max = at::where(take, upd_max, rmax);
  auto [s, z] = ops::qparams_from_min_max(new_min, new_max, quant_min, quant_max, symmetric);
  const at::Tensor valid = at::isfinite(new_min).logical_and(at::isfinite(new_max)).logical_and(at::isfinite(s));
  const at::Tensor new_scale = at::where(valid, s, scale.reshape(-1));
  const at::Tensor new_zero = at::where(valid, z, zero_point.reshape(-1));
  running_min.copy_(new_min.reshape(running_min.sizes()));
  running_max.copy_(new_max.reshape(running_max.sizes()));
  scale.copy_(new_scale.reshape(scale.sizes()));
  zero_point.copy_(new_zero.reshape(zero_point.sizes()));
}

}  // namespace ops

namespace {

/// `step` += 1 and a copy of it; inside a backward pass (activation checkpointing recomputing the
/// forward, eager or in a compiled backward graph) only the copy: the first forward advanced the
/// counter already, and the recomputation must draw the same bits it drew.
at::Tensor advance_step_kernel(at::Tensor& step) {
  TORCH_CHECK_TYPE(step.scalar_type() == at::kLong,
                   fmt::format("_advance_step: step must be int64, got {}", c10::toString(step.scalar_type())));
  TORCH_CHECK_VALUE(step.sym_numel() == 1,
                    fmt::format("_advance_step: step must have 1 element, got {}",
                                step.sym_numel().guard_int(__FILE__, __LINE__)));
  const at::NoGradGuard no_grad;
  if (!ops::recomputing_in_backward()) step.add_(1);
  return step.clone();
}

void observer_update_kernel(const at::Tensor& input, at::Tensor& running_min, at::Tensor& running_max,
                            at::Tensor& scale, at::Tensor& zero_point, const at::Tensor& observer_on, double momentum,
                            bool moving_average, std::int64_t quant_min, std::int64_t quant_max, bool symmetric,
                            OptInt axis) {
  ops::observer_update_impl(input, running_min, running_max, scale, zero_point, observer_on, momentum,
                            moving_average, quant_min, quant_max, symmetric, axis, /*check_finite=*/false);
}

/// Observer update, then the switchable fake quantization; returns (output, STE mask).
std::tuple<at::Tensor, at::Tensor> observe_and_quantize(const at::Tensor& input, at::Tensor& running_min,
                                                        at::Tensor& running_max, at::Tensor& scale,
                                                        at::Tensor& zero_point, const at::Tensor& observer_on,
                                                        const at::Tensor& fake_quant_on, double momentum,
                                                        bool moving_average, std::int64_t quant_min,
                                                        std::int64_t quant_max, bool symmetric, OptInt axis) {
  ops::check_flag("fused_observe_fake_quantize", "fake_quant_on", fake_quant_on, input);
  static auto update = ops::op_handle<ops::sig::ObserverUpdate>("qatkit::_observer_update");
  static auto fq = ops::op_handle<ops::sig::FakeQuantizeWithMask>("qatkit::_fake_quantize_with_mask");
  update.call(input, running_min, running_max, scale, zero_point, observer_on, momentum, moving_average, quant_min,
              quant_max, symmetric, axis);
  return fq.call(input, scale.reshape(-1), zero_point.reshape(-1), quant_min, quant_max, axis, std::nullopt,
                 fake_quant_on);
}

at::Tensor fused_observe_fake_quantize_kernel(const at::Tensor& input, at::Tensor& running_min, at::Tensor& running_max,
                                              at::Tensor& scale, at::Tensor& zero_point, const at::Tensor& observer_on,
                                              const at::Tensor& fake_quant_on, double momentum, bool moving_average,
                                              std::int64_t quant_min, std::int64_t quant_max, bool symmetric,
                                              OptInt axis) {
  return std::get<0>(observe_and_quantize(input, running_min, running_max, scale, zero_point, observer_on,
                                          fake_quant_on, momentum, moving_average, quant_min, quant_max, symmetric,
                                          axis));
}

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class FusedObserveFakeQuantizeFunction : public torch::autograd::Function<FusedObserveFakeQuantizeFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, at::Tensor running_min,
                            at::Tensor running_max, at::Tensor scale, at::Tensor zero_point,
                            const at::Tensor& observer_on, const at::Tensor& fake_quant_on, double momentum,
                            bool moving_average, std::int64_t quant_min, std::int64_t quant_max, bool symmetric,
                            OptInt axis) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [out, mask] =
        observe_and_quantize(input, running_min, running_max, scale, zero_point, observer_on, fake_quant_on, momentum,
                             moving_average, quant_min, quant_max, symmetric, axis);
    ctx->save_for_backward({mask});
    return out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto op = ops::op_handle<ops::sig::FakeQuantizeBackward>("qatkit::_fake_quantize_backward");
    variable_list out(13);
    out[0] = op.call(grads[0], ctx->get_saved_variables()[0]);
    return out;
  }
};

at::Tensor fused_observe_fake_quantize_autograd(const at::Tensor& input, at::Tensor& running_min,
                                                at::Tensor& running_max, at::Tensor& scale, at::Tensor& zero_point,
                                                const at::Tensor& observer_on, const at::Tensor& fake_quant_on,
                                                double momentum, bool moving_average, std::int64_t quant_min,
                                                std::int64_t quant_max, bool symmetric, OptInt axis) {
  ops::check_no_forward_ad("fused_observe_fake_quantize", {&input});
  if (!at::GradMode::is_enabled() || !input.requires_grad()) {  // no graph to record: skip the mask
    static auto op =
        ops::op_handle<ops::sig::FusedObserveFakeQuantize>("qatkit::fused_observe_fake_quantize");
    at::AutoDispatchBelowADInplaceOrView guard;
    return op.call(input, running_min, running_max, scale, zero_point, observer_on, fake_quant_on, momentum,
                   moving_average, quant_min, quant_max, symmetric, axis);
  }
  return FusedObserveFakeQuantizeFunction::apply(input, running_min, running_max, scale, zero_point, observer_on,
                                                 fake_quant_on, momentum, moving_average, quant_min, quant_max,
                                                 symmetric, axis);
}

}  // namespace

at::Tensor fused_observe_fake_quantize(const at::Tensor& input, at::Tensor& running_min, at::Tensor& running_max,
                                       at::Tensor& scale, at::Tensor& zero_point, const at::Tensor& observer_on,
                                       const at::Tensor& fake_quant_on, double momentum, bool moving_average,
                                       std::int64_t quant_min, std::int64_t quant_max, bool symmetric, OptInt axis) {
  static auto op =
      ops::op_handle<ops::sig::FusedObserveFakeQuantize>("qatkit::fused_observe_fake_quantize");
  return op.call(input, running_min, running_max, scale, zero_point, observer_on, fake_quant_on, momentum,
                 moving_average, quant_min, quant_max, symmetric, axis);
}

TORCH_LIBRARY_IMPL(qatkit, CompositeExplicitAutograd, m) {
  m.impl("_advance_step", &advance_step_kernel);
  m.impl("_observer_update", &observer_update_kernel);
  m.impl("fused_observe_fake_quantize", &fused_observe_fake_quantize_kernel);
}
TORCH_LIBRARY_IMPL(qatkit, Autograd, m) {
  m.impl("fused_observe_fake_quantize", &fused_observe_fake_quantize_autograd);
}

}  // namespace qatkit
