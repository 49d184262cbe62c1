// qatkit C++ QAT modules: torch::nn modules with the options and numerics of the Python ones
// (python/qatkit/qat): QuantLinear, QuantConv2d and BitLinear keep an FP32 shadow weight and
// fake-quantize weight and input in the forward pass through the qatkit ops (so LibTorch
// training gets the same straight-through gradients), and prepare_qat swaps the layers of a
// torch::nn::Sequential.
//
// Example:
//   auto model = torch::nn::Sequential(torch::nn::Linear(64, 256), torch::nn::ReLU(),
//                                      torch::nn::Linear(256, 10));
//   auto qmodel = qatkit::nn::prepare_qat(model, qatkit::nn::QATConfig::w8a8());
//   ... train qmodel with any torch::optim optimizer ...
#pragma once

#include <torch/nn/cloneable.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>
#include <torch/serialize/input-archive.h>
#include <torch/serialize/output-archive.h>

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "qatkit/macros.h"

namespace qatkit::nn {

/// How one tensor is fake-quantized (the fields and rules of Python's qatkit.qat.QuantSpec).
struct QATKIT_API QuantSpec {
  std::string kind = "int";  ///< "int", "ternary", "binary"
  std::int64_t bits = 8;     ///< 2..16 for "int" (1 / 2 implied for binary / ternary)
  bool is_signed = true;
  bool symmetric = true;
  bool narrow_range = false;
  std::string granularity = "per_tensor";  ///< per_tensor, per_channel, per_group, per_token
  std::int64_t axis = 0;
  std::optional<std::int64_t> group_size;
  std::string scale = "static";  ///< static, dynamic, learned
  std::string observer = "moving_average";
  double momentum = 0.01;
  std::string estimator = "clipped_ste";
  std::string method;  ///< ternary: absmean / twn; binary: none / mean_abs / bitnet ("" = default)
  bool stochastic = false;            ///< BinaryConnect's stochastic binarization in training
  std::optional<double> latent_clip;  ///< clip the shadow weight to [-c, c] (clip_latent_weights)
  bool lsq_grad_scale = true;

  /// Checks every field (ValueError naming the field and the valid choices) and fills defaults;
  /// returns the normalized spec. The choices come from the preset table Python reads too.
  QuantSpec validated() const;
  std::int64_t quant_min() const;
  std::int64_t quant_max() const;
  /// JSON object with Python's field names (dataclasses.asdict of qatkit.qat.QuantSpec).
  std::string to_json() const;
  /// The spec of a to_json() text (validated; unknown fields raise ValueError).
  static QuantSpec from_json(const std::string& text);
};

/// A layer's weight and input-activation specs (std::nullopt = keep float).
struct QATKIT_API LayerSpec {
  std::optional<QuantSpec> weight;
  std::optional<QuantSpec> activation;
};

/// What prepare_qat does (Python's QATConfig). Presets come from the one preset table
/// (python/qatkit/qat/presets.json, compiled into libqatkit), so they equal Python's field for field.
struct QATKIT_API QATConfig {
  LayerSpec default_spec;
  /// (fnmatch pattern, spec) pairs; the first pattern matching a layer's qualified name wins.
  std::vector<std::pair<std::string, LayerSpec>> overrides;
  std::vector<std::string> skip;  ///< fnmatch patterns of layers kept in float ("0", "2.*")
  std::string first_last;         ///< "", "float" or "int8" (the table's first/last rule)
  bool bitlinear = false;
  /// Fold Conv2d + BatchNorm2d pairs. The C++ layers have no QuantConvBn2d yet: prepare_qat warns
  /// for each pair it leaves unfolded while this is true.
  bool fold_bn = true;
  /// Quantize embedding tables with the default spec (Python's QATConfig.embeddings; the C++
  /// layers have no QuantEmbedding yet, so prepare_qat leaves embeddings float either way).
  bool embeddings = false;
  std::string name = "custom";

  static QATConfig w8a8();
  static QATConfig w4a8(std::int64_t group_size = 32);
  static QATConfig w4a4_lsq();
  static QATConfig ternary_twn();
  static QATConfig bitnet_b158();
  static QATConfig binary_w1a8();
  static QATConfig xnor_w1a1();
  static QATConfig binaryconnect(bool stochastic = false);
  /// The preset called `name` with optional parameters as a JSON object (e.g. w4a8's
  /// `{"group_size": 64}`); ValueError listing the valid names / naming an unknown parameter.
  static QATConfig preset(const std::string& name, const std::string& params_json = "{}");
  /// Names of the table's presets, sorted.
  static std::vector<std::string> preset_names();
  /// The LayerSpec the table's first/last rule gives ("int8"), or nullopt ("float").
  static std::optional<LayerSpec> first_last_spec(const std::string& rule);
  /// The preset table's JSON text as compiled into the library.
  static const std::string& table_json();
  /// JSON object with Python's field names (QATConfig.to_dict()).
  std::string to_json() const;
};

/// Fake-quantizes a weight (output channel = dim 0); learned (LSQ) scales are parameters.
class QATKIT_API WeightFakeQuantizerImpl : public torch::nn::Cloneable<WeightFakeQuantizerImpl> {
 public:
  WeightFakeQuantizerImpl(QuantSpec spec, const torch::Tensor& weight);
  void reset() override;
  torch::Tensor forward(const torch::Tensor& w);
  const QuantSpec& spec() const { return spec_; }
  /// Writes the spec (key "spec", its JSON) next to the buffers, so a checkpoint records its config.
  void save(torch::serialize::OutputArchive& archive) const override;
  /// Loads the buffers after checking the recorded spec: one saved with another spec raises
  /// ValueError naming the key and the fields that differ.
  void load(torch::serialize::InputArchive& archive) override;
  std::string granularity;  ///< effective (per-group falls back to per-channel when it does not divide)
  std::optional<std::int64_t> group_size;
  std::string qualified_name;  ///< set by prepare_qat ("0.weight_fake_quant"), for messages

 private:
  QuantSpec spec_;
  std::vector<std::int64_t> weight_shape_;
  torch::Tensor weight_init_;
  std::optional<std::int64_t> axis_;
  torch::Tensor scale_, zero_point_, fake_quant_on_, step_;
  double grad_factor_ = 1.0;
};
TORCH_MODULE(WeightFakeQuantizer);

/// Fake-quantizes a layer input: observer buffers (static), absmax (dynamic), LSQ (learned) or sign.
class QATKIT_API ActFakeQuantizerImpl : public torch::nn::Cloneable<ActFakeQuantizerImpl> {
 public:
  explicit ActFakeQuantizerImpl(QuantSpec spec, std::int64_t channels = 1);
  void reset() override;
  torch::Tensor forward(const torch::Tensor& x);
  void enable_observer(bool on);
  void enable_fake_quant(bool on);
  /// Writes the spec (key "spec", its JSON) next to the buffers, so a checkpoint records its config.
  void save(torch::serialize::OutputArchive& archive) const override;
  /// Checks the recorded spec (ValueError naming the key on a mismatch), loads the buffers, then
  /// refreshes the host-side copies of the flags.
  void load(torch::serialize::InputArchive& archive) override;
  const QuantSpec& spec() const { return spec_; }
  std::string qualified_name;  ///< set by prepare_qat ("0.input_fake_quant"), for messages

 private:
  QuantSpec spec_;
  std::int64_t channels_;
  // host copies of the fake_quant_on / initialized buffers, so the forward of the kinds that branch
  // on them never reads a (device) tensor
  bool fq_enabled_ = true, initialized_flag_ = false;
  std::optional<std::int64_t> axis_;
  torch::Tensor running_min_, running_max_, scale_, zero_point_, observer_on_, fake_quant_on_, off_, initialized_;
};
TORCH_MODULE(ActFakeQuantizer);

/// nn.Linear with fake-quantized weight and input (Python: qatkit.qat.QuantLinear).
class QATKIT_API QuantLinearImpl : public torch::nn::Cloneable<QuantLinearImpl> {
 public:
  QuantLinearImpl(torch::nn::LinearOptions options, LayerSpec spec);
  /// Shares `linear`'s weight and bias.
  QuantLinearImpl(const torch::nn::Linear& linear, LayerSpec spec);
  void reset() override;
  torch::Tensor forward(const torch::Tensor& x);
  /// The weight the forward pass uses.
  torch::Tensor quantized_weight();

  torch::nn::LinearOptions options;
  LayerSpec layer_spec;
  torch::Tensor weight, bias;
  WeightFakeQuantizer weight_fake_quant{nullptr};
  ActFakeQuantizer input_fake_quant{nullptr};

 protected:
  void attach();
  bool rms_norm_ = false;
};
TORCH_MODULE(QuantLinear);

/// BitNet b1.58's BitLinear: parameter-free RMSNorm, then QuantLinear (per-token int8 activations,
/// absmean ternary weights with the bitnet_b158 preset).
class QATKIT_API BitLinearImpl : public QuantLinearImpl {
 public:
  BitLinearImpl(torch::nn::LinearOptions options, LayerSpec spec);
  BitLinearImpl(const torch::nn::Linear& linear, LayerSpec spec);
};
TORCH_MODULE(BitLinear);

/// nn.Conv2d (groups, depthwise) with fake-quantized weight and input (Python: QuantConv2d).
class QATKIT_API QuantConv2dImpl : public torch::nn::Cloneable<QuantConv2dImpl> {
 public:
  QuantConv2dImpl(torch::nn::Conv2dOptions options, LayerSpec spec);
  /// Shares `conv`'s weight and bias.
  QuantConv2dImpl(const torch::nn::Conv2d& conv, LayerSpec spec);
  void reset() override;
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor quantized_weight();

  torch::nn::detail::ConvNdOptions<2> options;
  LayerSpec layer_spec;
  torch::Tensor weight, bias;
  WeightFakeQuantizer weight_fake_quant{nullptr};
  ActFakeQuantizer input_fake_quant{nullptr};

 private:
  void attach();
};
TORCH_MODULE(QuantConv2d);

/// A new Sequential whose Linear / Conv2d layers are replaced by
/// QAT layers sharing their parameters; other modules are shared as they are. LibTorch cannot
/// rebind a typed submodule member in place, so a new container is the API. Raises ValueError when
/// nothing is quantized.
QATKIT_API torch::nn::Sequential prepare_qat(const torch::nn::Sequential& model, const QATConfig& config);

/// Clips shadow weights to [-c, c] where their weight spec sets latent_clip (BinaryConnect); call
/// after each optimizer step. Returns the number of weights clipped.
QATKIT_API std::int64_t clip_latent_weights(torch::nn::Module& model);

/// Turn every activation observer / fake quantizer of `model` on or off.
QATKIT_API void enable_observer(torch::nn::Module& model, bool on = true);
QATKIT_API void enable_fake_quant(torch::nn::Module& model, bool on = true);

}  // namespace qatkit::nn
