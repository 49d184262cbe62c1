// Clear errors for the derivatives qatkit does not implement, instead of silent zero or missing
// tangents: forward-mode AD through any op (a dual tensor would otherwise take a no-grad path and
// come back with a zero tangent), and double backward through the backward ops whose gradients
// are not differentiable functions of their inputs (LSQ, binarize estimators, PACT).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/GradMode.h>
#include <c10/util/Exception.h>
#include <fmt/format.h>

#include <initializer_list>
#include <sstream>

namespace qatkit::ops {

/// Raises if any of `tensors` carries a forward-mode tangent (torch.autograd.forward_ad,
/// torch.func.jvp), or is a nested or sparse tensor (the kernels take strided tensors; without this
/// check the autograd layer fails first with torch's "Internal error ... doesn't support sizes").
inline void check_no_forward_ad(const char* op, std::initializer_list<const at::Tensor*> tensors) {
  for (const at::Tensor* t : tensors) {
    if (t == nullptr || !t->defined()) continue;
    TORCH_CHECK_NOT_IMPLEMENTED(!t->is_nested(),
                                fmt::format("qatkit::{}: nested tensors are not supported; quantize the components "
                                            "(t.unbind()) or a padded tensor (t.to_padded_tensor(0.0))",
                                            op));
    if (t->layout() != at::kStrided) {
      std::ostringstream layout;
      layout << t->layout();
      TORCH_CHECK_NOT_IMPLEMENTED(false, fmt::format("qatkit::{}: {} tensors are not supported; pass a dense tensor "
                                                     "(t.to_dense())",
                                                     op, layout.str()));
    }
    TORCH_CHECK_NOT_IMPLEMENTED(!t->_fw_grad(/*level=*/0).defined(),
                                fmt::format("qatkit::{}: forward-mode AD (torch.func.jvp, torch.autograd.forward_ad) "
                                            "is not supported; use reverse mode (backward / torch.func.vjp)",
                                            op));
  }
}

/// Raises when a backward op runs under create_graph=True with inputs that require grad (a
/// gradient of the gradient), which qatkit does not implement for this op.
inline void check_no_double_backward(const char* op, std::initializer_list<const at::Tensor*> tensors) {
  if (!c10::GradMode::is_enabled()) return;
  for (const at::Tensor* t : tensors) {
    if (t == nullptr || !t->defined()) continue;
    TORCH_CHECK_NOT_IMPLEMENTED(!t->requires_grad(),
                                fmt::format("qatkit::{}: double backward (create_graph=True through this op's "
                                            "gradient) is not supported",
                                            op));
  }
}

}  // namespace qatkit::ops
