// The no-gradient family (csrc/ops/no_gradient.cpp): the errors of the ops that have no gradient
// (the integer kernels, the code producers, dequantize_affine, the internal statistics ops), raised
// by the private op _no_gradient where a backward reaches one of them.
#pragma once

#include <string>
#include <string_view>

namespace qatkit::ops {

/// "qatkit::<op> has no gradient: <what to use instead>".
std::string no_gradient_message(std::string_view op);

/// Raises NotImplementedError with no_gradient_message(op): the CPU and CUDA kernels of _no_gradient.
[[noreturn]] void raise_no_gradient(std::string_view op);

}  // namespace qatkit::ops
