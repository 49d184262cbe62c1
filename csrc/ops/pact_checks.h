// Checks of the PACT family (pact_quantize and its backward, docs/papers.md §6.3), shared by its
// CPU, CUDA and Meta kernels.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "checks.h"

namespace qatkit::ops {

/// Checks PACT arguments: floating input, alpha a float32 tensor with one element on input's
/// device, 1 <= quant_max <= 65535.
void check_pact_args(const char* op, const at::Tensor& input, const at::Tensor& alpha, std::int64_t quant_max);

/// Checks the PACT backward arguments (grad shaped, typed and placed like input, alpha as above).
void check_pact_backward_args(const char* op, const at::Tensor& grad, const at::Tensor& input, const at::Tensor& alpha);

/// Value check of alpha (needs its data: the CPU kernels run it): finite and positive.
void check_pact_alpha_value(const char* op, float alpha);

/// The device-generic forward: fake_quantize(x, alpha / quant_max, 0, 0, quant_max), no host read
/// of alpha (the CPU kernel checks its value first).
at::Tensor pact_quantize_composite(const at::Tensor& input, const at::Tensor& alpha, std::int64_t quant_max);

}  // namespace qatkit::ops
