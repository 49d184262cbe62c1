// The no-gradient family: the messages of the ops without a gradient and the private op that raises
// them in a backward.
//   _no_gradient(grad, op, size, dtype): the gradient of an input of `op` with that size and dtype,
//   which does not exist. The CPU and CUDA kernels raise NotImplementedError naming `op`; the Meta
//   kernel returns an empty tensor of the input's size. So an eager backward raises where it reaches
//   the op, and a traced one (torch.compile's AOTAutograd traces the backward of a forward on tensors
//   that require grad) records the op and raises when the compiled backward runs, while the compiled
//   forward works. The Autograd kernel that calls it: csrc/ops/autograd/no_gradient_kernel.cpp.
#include "no_gradient.h"

#include <c10/util/Exception.h>
#include <fmt/format.h>
#include <torch/library.h>

namespace qatkit::ops {

std::string no_gradient_message(std::string_view op) {
  std::string_view hint;
  if (op.rfind("linear_", 0) == 0 || op.rfind("conv2d_", 0) == 0) {
    hint = "the integer kernels are inference only: run them under torch.no_grad() or torch.inference_mode(), and "
           "fine-tune the QAT model (qatkit.prepare_qat: fake quantization with straight-through gradients) instead "
           "of a converted or loaded integer one";
  } else if (op == "binary_codes") {
    hint = "it makes codes for the integer kernels; qatkit::binarize is the differentiable op (straight-through "
           "estimator)";
  } else if (op == "ternary_codes") {
    hint = "it makes codes for the integer kernels; qatkit::ternarize is the differentiable op (straight-through "
           "estimator)";
  } else if (op == "dequantize_affine") {
    hint = "for a learned scale and zero point use qatkit::fake_quantize_learnable (LSQ / LSQ+ gradients)";
  } else {
    hint = "it is an internal op of qatkit's autograd kernels; call the public op (binarize, ternarize, "
           "fake_quantize) to differentiate";
  }
  return fmt::format("qatkit::{} has no gradient: {}", op, hint);
}

void raise_no_gradient(std::string_view op) { TORCH_CHECK_NOT_IMPLEMENTED(false, no_gradient_message(op)); }

TORCH_LIBRARY_FRAGMENT(qatkit, m) {
  m.def("_no_gradient(Tensor grad, str op, SymInt[] size, ScalarType dtype) -> Tensor", {at::Tag::pt2_compliant_tag});
}

}  // namespace qatkit::ops
