// Division of a tensor by a host value with the same bits on every device.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/scalar_tensor.h>

namespace qatkit::ops {

/// t / v as IEEE division on every device. ATen's CUDA kernels divide by a host scalar (a Python
/// number, a C++ double, a 0-dim CPU tensor) as a multiplication by its reciprocal, which differs
/// from the CPU's quotient in the last bit (seen on an H200, 2026-12-04: choose_qparams' scale
/// amax / 7.5, so a weight at -amax coded -7 on CUDA where the CPU's exact tie gave -8); a 0-dim
/// tensor on t's own device is divided element by element. t.div(v) on the CPU is the same quotient.
inline at::Tensor div_exact(const at::Tensor& t, double v) { return t.div(at::scalar_tensor(v, t.options())); }

}  // namespace qatkit::ops
