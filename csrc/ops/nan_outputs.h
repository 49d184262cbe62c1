// NaN inputs of the static-input integer ops (linear_int8 / w2a8 / w1a8 / w4a8, conv2d_int8 /
// w4a8; docs/integer.md, "NaN inputs"). quantize_affine codes a NaN as the zero point, a number, so
// the integer sums alone would give finite outputs where the float layer the kernels stand for
// (fake quantization keeps a NaN, then F.linear / F.conv2d) gives NaN: a silent wrong answer. These
// give NaN to every output whose sum reads a NaN input: a Linear's whole row; a conv's outputs whose
// window (over the input channels of the output channel's group) covers one. ATen ops on the
// input's device: the CPU ops call them only after a pass over the input finds a NaN; the CUDA ops
// call them on every call (a check would synchronize the device).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/conv2d.h>
#include <ATen/ops/isnan.h>
#include <ATen/ops/ones.h>

#include <cstdint>
#include <limits>

namespace qatkit::ops {

/// y [..., N] of a Linear on v [..., K] (the quantized input: x, or x / d): rows of v holding a
/// NaN become NaN.
inline void fill_nan_rows(const at::Tensor& v, at::Tensor& y) {
  if (y.numel() == 0) return;
  y.masked_fill_(at::isnan(v).any(-1, /*keepdim=*/true), std::numeric_limits<float>::quiet_NaN());
}

/// y [B, N, ho, wo] of a grouped conv (zero padding) on x [B, C, H, W]: an output becomes NaN where
/// its window over its group's input channels holds a NaN (a conv of the NaN mask counts them).
inline void fill_nan_windows(const at::Tensor& x, at::Tensor& y, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                             at::IntArrayRef padding, at::IntArrayRef dilation, std::int64_t groups) {
  if (y.numel() == 0) return;
  const std::int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), N = y.size(1);
  const at::Tensor mask = at::isnan(x).reshape({B, groups, C / groups, H, W}).any(2).to(at::kFloat);
  const at::Tensor ones = at::ones({groups, 1, kernel_size[0], kernel_size[1]}, x.options());
  const at::Tensor hits = at::conv2d(mask, ones, {}, stride, padding, dilation, groups).gt(0.5);
  y.masked_fill_(hits.repeat_interleave(N / groups, 1), std::numeric_limits<float>::quiet_NaN());
}

}  // namespace qatkit::ops
