// Internal: the integer-kernel forwards of converted layers (csrc/nn/integer.cpp). Not installed;
// the QATKIT_API functions are exported for tests/cpp/test_nn.cpp.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/nn/options/conv.h>

#include <cstdint>
#include <variant>
#include <vector>

#include "qatkit/nn.h"

namespace qatkit::nn::detail {

/// A qatkit layer (QuantLinear and BitLinear, QuantConv1d / 2d, QuantConvBn2d, QuantEmbedding), QAT or
/// converted: what save packs and load_into fills.
inline bool is_qat_layer(const torch::nn::Module& m) {
  return dynamic_cast<const QuantLinearImpl*>(&m) || dynamic_cast<const QuantConv2dImpl*>(&m) ||
         dynamic_cast<const QuantConv1dImpl*>(&m) || dynamic_cast<const QuantConvBn2dImpl*>(&m) ||
         dynamic_cast<const QuantEmbeddingImpl*>(&m);
}

/// The plan's kernel (linear_int8 / w4a8 / w2a8 / w1a8 / w1a1, dynamic or weight-only) on x.
/// divisor (SmoothQuant's smoothing, float32 [K]): x / divisor first — inside linear_int8's
/// quantization pass (input_divisor) where the plan runs that kernel, else as a division.
QATKIT_API torch::Tensor integer_linear(const IntegerKernelPlan& p, const torch::Tensor& x,
                                        const torch::Tensor& divisor = {});

/// Whether a layer's plan no longer matches its tensors: one written in place (its version moved,
/// IntegerKernelPlan::sources_changed) or a member assigned a new tensor (frozen.codes = other).
QATKIT_API bool plan_stale(const IntegerKernelPlan& p, const ConvertedWeight& f, const torch::Tensor& bias,
                           const ActFakeQuantizer& aq);

/// Build a layer's plan again from its current tensors (set_compute("integer")'s step for one
/// layer): its forward calls it when IntegerKernelPlan::sources_changed() (an in-place edit).
QATKIT_API void replan(QuantLinearImpl& l);
QATKIT_API void replan(QuantConv2dImpl& l);
QATKIT_API void replan(QuantConvBn2dImpl& l);  ///< (converted: a conv with the folded weight and bias)
QATKIT_API void replan(QuantConv1dImpl& l);

/// The plan a CUDA input of a Linear in integer compute runs on: its plan in the row layouts on the
/// device of its codes (frozen.integer_rows, built at the first call there), or null without a plan.
/// Every plan kernel has a CUDA implementation (XNOR's linear_w1a1 / conv2d_w1a1 run the W1A8 kernels).
QATKIT_API const IntegerKernelPlan* cuda_linear_plan(QuantLinearImpl& l);

/// The same for a conv (conv2d_int8 / conv2d_w1a1 on CUDA).
QATKIT_API const IntegerKernelPlan* cuda_conv_plan(QuantConv2dImpl& l);
QATKIT_API const IntegerKernelPlan* cuda_conv_plan(QuantConvBn2dImpl& l);
QATKIT_API const IntegerKernelPlan* cuda_conv_plan(QuantConv1dImpl& l);

/// A conv's padding per spatial dim as nn.ConvNd resolves it: numbers as given (both sides), 'valid'
/// none, 'same' dilation * (k - 1) with half on each side and the odd one on the right (aten's
/// convolution with padding='same', nn.ConvNd's _reversed_padding_repeated_twice).
struct ConvPads {
  std::vector<std::int64_t> left, right;
  bool symmetric() const { return left == right; }
};

template <std::size_t D, class Options>  // (ConvNdOptions<D>, or ConvOptions<D> as the loader reads them)
ConvPads conv_pads(const Options& o) {
  ConvPads p{std::vector<std::int64_t>(D, 0), std::vector<std::int64_t>(D, 0)};
  if (const auto* n = std::get_if<torch::ExpandingArray<D>>(&o.padding())) {
    for (std::size_t d = 0; d < D; ++d) p.left[d] = p.right[d] = (*n)->at(d);
  } else if (std::holds_alternative<torch::enumtype::kSame>(o.padding())) {
    for (std::size_t d = 0; d < D; ++d) {
      const std::int64_t total = o.dilation()->at(d) * (o.kernel_size()->at(d) - 1);
      p.left[d] = total / 2;
      p.right[d] = total - total / 2;
    }
  }
  return p;
}

/// conv2d_int8 with the plan's operands on an NCHW input (Conv1d: a 1 x k Conv2d), with the layer's
/// fused clamp (ConvertedWeight::clamp_min / clamp_max).
QATKIT_API torch::Tensor integer_conv(const IntegerKernelPlan& p, const torch::Tensor& x4, at::IntArrayRef k,
                                      at::IntArrayRef st, at::IntArrayRef pad, at::IntArrayRef dil,
                                      std::optional<double> clamp_min = std::nullopt,
                                      std::optional<double> clamp_max = std::nullopt);

}  // namespace qatkit::nn::detail
