// The device-independent shape of the fake-quantize kernels (allocating, out=, with mask),
// written once; a backend supplies `empty(sizes, options)` and `run(op, ..., out, mask)`.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <tuple>

#include "../../kernels/common/fake_quant_args.h"
#include "fake_quantize_checks.h"

namespace qatkit::ops {

template <class Backend>
struct FakeQuantizeGlue {
  using OptInt = std::optional<std::int64_t>;

  static at::Tensor forward(const at::Tensor& input, const at::Tensor& scale, const at::Tensor& zero_point,
                            std::int64_t quant_min, std::int64_t quant_max, OptInt axis, OptInt group_size) {
    at::Tensor out = Backend::empty(input.sizes(), input.options());
    Backend::run("fake_quantize", input, scale, zero_point, quant_min, quant_max, axis, group_size, out, nullptr,
                 std::nullopt);
    return out;
  }

  static at::Tensor& forward_out(const at::Tensor& input, const at::Tensor& scale, const at::Tensor& zero_point,
                                 std::int64_t quant_min, std::int64_t quant_max, OptInt axis, OptInt group_size,
                                 at::Tensor& out) {
    constexpr const char* op = "fake_quantize.out";
    check_fake_quantize_args(op, input, scale, zero_point, quant_min, quant_max, axis, group_size);
    check_and_resize_out(op, input, out, {{"scale", &scale}, {"zero_point", &zero_point}});
    if (out.is_contiguous()) {
      Backend::run(op, input, scale, zero_point, quant_min, quant_max, axis, group_size, out, nullptr, std::nullopt);
    } else {  // the kernels write contiguous memory: go through a temporary
      at::Tensor tmp = Backend::empty(input.sizes(), input.options());
      Backend::run(op, input, scale, zero_point, quant_min, quant_max, axis, group_size, tmp, nullptr, std::nullopt);
      out.copy_(tmp);
    }
    return out;
  }

  static std::tuple<at::Tensor, at::Tensor> forward_with_mask(const at::Tensor& input, const at::Tensor& scale,
                                                              const at::Tensor& zero_point, std::int64_t quant_min,
                                                              std::int64_t quant_max, OptInt axis, OptInt group_size,
                                                              const std::optional<at::Tensor>& enabled) {
    at::Tensor out = Backend::empty(input.sizes(), input.options());
    at::Tensor mask = Backend::empty({kernels::mask_bytes(input.numel())}, input.options().dtype(at::kByte));
    Backend::run("fake_quantize", input, scale, zero_point, quant_min, quant_max, axis, group_size, out,
                 mask.mutable_data_ptr<std::uint8_t>(), enabled);
    return {out, mask};
  }
};

}  // namespace qatkit::ops
