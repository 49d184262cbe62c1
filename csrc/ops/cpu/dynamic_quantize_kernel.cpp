// CPU kernels of the dynamic absmax quantizers (BitNet b1.58, docs/papers.md §7.2). Per token: each
// task takes whole rows, computes max |x| and fake-quantizes the row while it is still in cache,
// so the input is read from memory once. Per tensor: a threaded max |x| (maxima combine in any
// order), then one fake-quant pass. Same numerics as the composite CUDA/Meta kernel:
// s = max(max|x|, 1e-5) / quant_max in float32, y = fake_quantize(x, s, 0, -quant_max - 1, quant_max).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <vector>

#include "../../../kernels/cpu/fake_quant/fake_quant_cpu.h"
#include "../../../kernels/cpu/reduce/reduce_cpu.h"
#include "../dynamic_quantize_checks.h"
#include "../fake_quantize_checks.h"
#include "huge_pages.h"

namespace qatkit::ops {
namespace {

constexpr float kMinAbsMax = 1e-5f;
constexpr std::int64_t kDynamicGrain = 1 << 15;

/// Fake-quantizes n contiguous elements with the absmax scale s (zero point 0).
void quantize_block(const kernels::cpu::FakeQuantKernels& k, const void* x, void* y, std::int64_t n, float s,
                    std::int64_t quant_max, kernels::DType dt) {
  const float z = 0.f;
  kernels::FakeQuantArgs a;
  a.input = x;
  a.output = y;
  a.scale = &s;
  a.zero_point = &z;
  a.numel = n;
  a.inner = n;
  a.channels = 1;
  a.quant_min = static_cast<float>(-quant_max - 1);
  a.quant_max = static_cast<float>(quant_max);
  a.dtype = dt;
  k.forward(a, 0, n);
}

float absmax_scale(float amax, std::int64_t quant_max) {
  return std::max(amax, kMinAbsMax) / static_cast<float>(quant_max);
}

/// Writes the per-token quantization of contiguous `x` into contiguous `y`.
void per_token_into(const char* op, const at::Tensor& x, at::Tensor& y, std::int64_t quant_max) {
  if (x.numel() == 0) return;
  const std::int64_t n = x.size(-1), rows = x.numel() / n;
  const auto es = static_cast<std::int64_t>(x.element_size());
  const char* xp = static_cast<const char*>(x.const_data_ptr());
  char* yp = static_cast<char*>(y.mutable_data_ptr());
  const kernels::DType dt = kernel_dtype(x);
  const auto& k = kernels::cpu::fake_quant_kernels();
  const auto& red = kernels::cpu::reduce_kernels();
  std::atomic<bool> finite{true};
  at::parallel_for(0, rows, std::max<std::int64_t>(1, kDynamicGrain / n), [&](std::int64_t r0, std::int64_t r1) {
    for (std::int64_t r = r0; r < r1; ++r) {
      bool ok = true;
      const float amax = red.absmax(xp + r * n * es, dt, n, &ok);
      if (!ok) finite.store(false, std::memory_order_relaxed);
      quantize_block(k, xp + r * n * es, yp + r * n * es, n, absmax_scale(amax, quant_max), quant_max, dt);
    }
  });
  TORCH_CHECK_VALUE(finite.load(), op, ": input must be finite, found NaN or Inf");
}

at::Tensor quantize_per_token_cpu(const at::Tensor& input, std::int64_t quant_max) {
  check_dynamic_quantize_args("quantize_per_token", input, quant_max, true);
  at::Tensor y = empty_cpu_output(input.sizes(), input.options());
  per_token_into("quantize_per_token", input.contiguous(), y, quant_max);
  return y;
}

at::Tensor& quantize_per_token_out_cpu(const at::Tensor& input, std::int64_t quant_max, at::Tensor& out) {
  constexpr const char* op = "quantize_per_token.out";
  check_dynamic_quantize_args(op, input, quant_max, true);
  check_and_resize_out(op, input, out);
  if (out.is_contiguous()) {
    per_token_into(op, input.contiguous(), out, quant_max);
  } else {
    at::Tensor tmp = empty_cpu_output(input.sizes(), input.options());
    per_token_into(op, input.contiguous(), tmp, quant_max);
    out.copy_(tmp);
  }
  return out;
}

at::Tensor quantize_per_tensor_dynamic_cpu(const at::Tensor& input, std::int64_t quant_max) {
  constexpr const char* op = "quantize_per_tensor_dynamic";
  check_dynamic_quantize_args(op, input, quant_max, false);
  const at::Tensor x = input.contiguous();
  at::Tensor y = empty_cpu_output(input.sizes(), input.options());
  if (x.numel() == 0) return y;
  const std::int64_t n = x.numel();
  const auto es = static_cast<std::int64_t>(x.element_size());
  const char* xp = static_cast<const char*>(x.const_data_ptr());
  const kernels::DType dt = kernel_dtype(x);
  const auto& red = kernels::cpu::reduce_kernels();
  const std::int64_t blocks = (n + kDynamicGrain - 1) / kDynamicGrain;
  std::vector<float> maxima(blocks, 0.f);
  std::atomic<bool> finite{true};
  at::parallel_for(0, blocks, 1, [&](std::int64_t b0, std::int64_t b1) {
    for (std::int64_t b = b0; b < b1; ++b) {
      bool ok = true;
      maxima[b] = red.absmax(xp + b * kDynamicGrain * es, dt, std::min(kDynamicGrain, n - b * kDynamicGrain), &ok);
      if (!ok) finite.store(false, std::memory_order_relaxed);
    }
  });
  TORCH_CHECK_VALUE(finite.load(), "quantize_per_tensor_dynamic: input must be finite, found NaN or Inf");
  const float s = absmax_scale(*std::max_element(maxima.begin(), maxima.end()), quant_max);
  char* yp = static_cast<char*>(y.mutable_data_ptr());
  at::parallel_for(0, blocks, 1, [&](std::int64_t b0, std::int64_t b1) {
    for (std::int64_t b = b0; b < b1; ++b) {
      const std::int64_t off = b * kDynamicGrain;
      quantize_block(kernels::cpu::fake_quant_kernels(), xp + off * es, yp + off * es, std::min(kDynamicGrain, n - off), s, quant_max, dt);
    }
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(qatkit, CPU, m) {
  m.impl("quantize_per_token", &quantize_per_token_cpu);
  m.impl("quantize_per_token.out", &quantize_per_token_out_cpu);
  m.impl("quantize_per_tensor_dynamic", &quantize_per_tensor_dynamic_cpu);
}

}  // namespace qatkit::ops
