// Checks and launch preparation of the binarize family (sign ops: binarize, _binarize_apply,
// _binarize_backward, binary_codes): argument checks, name -> enum parsing, the per-channel
// statistics (device-generic ATen reductions) and the channel layout. Defined in binarize_checks.cpp.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <string>

#include "../../kernels/common/sign_args.h"
#include "checks.h"

namespace qatkit::ops {

enum class BinaryScaling { kNone, kMeanAbs, kBitNet };

/// Parses `scaling`; an unknown name raises ValueError listing the valid ones.
BinaryScaling parse_scaling(const char* op, c10::string_view scaling);
/// Parses `estimator`; an unknown name raises ValueError listing the valid ones.
kernels::SignEstimator parse_estimator(const char* op, c10::string_view estimator);

/// Checks input dtype, axis range, beta (finite, > 0) and the optional seed (int64, one element,
/// on input's device).
void check_binarize_args(const char* op, const at::Tensor& input, std::optional<std::int64_t> axis, double beta,
                         const std::optional<at::Tensor>& seed);

/// center / alpha given to _binarize_apply: float32, one element per channel (or per tensor).
void check_binary_stats_shape(const char* op, const at::Tensor& input, const std::optional<at::Tensor>& center,
                              const std::optional<at::Tensor>& alpha, std::optional<std::int64_t> axis);

/// _binarize_backward arguments: grad like input, center as above, beta positive and finite.
void check_binarize_backward_args(const char* op, const at::Tensor& grad, const at::Tensor& input,
                                  const std::optional<at::Tensor>& center, std::optional<std::int64_t> axis,
                                  double beta);

/// Per-tensor / per-channel statistics: center (BitNet: mean W) and alpha (mean |W|), float32
/// vectors with one element per channel, undefined when the scaling does not use them.
struct BinaryStats {
  at::Tensor center;
  at::Tensor alpha;
};
/// Statistics of the scaling. `input` must be contiguous (callers make it so once, for the kernel
/// too): the reductions then sum in the same order for any caller layout, so a sign at a near-tie
/// with the center cannot depend on the strides.
BinaryStats binary_stats(const at::Tensor& input, BinaryScaling scaling, std::optional<std::int64_t> axis);
/// binary_codes' scales: the statistics' alpha as a vector, or ones (one per channel) without one.
at::Tensor binary_codes_scale(const at::Tensor& input, const BinaryStats& st, std::optional<std::int64_t> axis);

/// Data pointer of an optional per-channel float32 vector (contiguous copy kept in `keep`), or
/// nullptr when absent.
const float* optional_float_ptr(const std::optional<at::Tensor>& t, at::Tensor& keep);

/// Contiguous operands kept alive for a launch, with the kernel description filled in.
struct BinarizeLaunch {
  at::Tensor input, center, alpha, seed;
  kernels::BinarizeArgs args;
};
/// Checks _binarize_apply's arguments and describes a launch writing `out` (contiguous).
BinarizeLaunch prepare_binarize(const char* op, const at::Tensor& input, const std::optional<at::Tensor>& center,
                                const std::optional<at::Tensor>& alpha, std::optional<std::int64_t> axis,
                                bool zero_negative, const std::optional<at::Tensor>& seed, at::Tensor& out);

struct BinarizeBackwardLaunch {
  at::Tensor input, grad, center;
  kernels::BinarizeBackwardArgs args;
};
/// Checks _binarize_backward's arguments and describes a launch writing `grad_input`.
BinarizeBackwardLaunch prepare_binarize_backward(const char* op, const at::Tensor& grad, const at::Tensor& input,
                                                 const std::optional<at::Tensor>& center,
                                                 std::optional<std::int64_t> axis, c10::string_view estimator,
                                                 double beta, at::Tensor& grad_input);

/// (inner, channels) of a contiguous input for per-tensor (axis empty) or per-channel layouts.
std::pair<std::int64_t, std::int64_t> binary_layout(const at::Tensor& input, std::optional<std::int64_t> axis);

}  // namespace qatkit::ops
