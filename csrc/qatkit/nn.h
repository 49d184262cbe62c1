// qatkit C++ QAT modules: torch::nn modules with the options and numerics of the Python ones
// (python/qatkit/qat): QuantLinear, BitLinear, QuantConv1d, QuantConv2d, QuantConvBn2d and
// QuantEmbedding keep an FP32 shadow weight and fake-quantize weight and input in the forward pass
// through the qatkit ops (so LibTorch training gets the same straight-through gradients);
// prepare_qat swaps the layers of a module tree, calibrate runs observers, convert freezes every
// QAT layer in place into integer codes + scales (equal to Python's convert bit for bit).
//
// Example:
//   auto model = torch::nn::Sequential(torch::nn::Linear(64, 256), torch::nn::ReLU(),
//                                      torch::nn::Linear(256, 10));
//   auto qmodel = qatkit::nn::prepare_qat(model, qatkit::nn::QATConfig::w8a8());
//   ... train qmodel with any torch::optim optimizer ...
//   qatkit::nn::convert(*qmodel);   // integer weights, frozen input qparams
//
// Custom modules: LibTorch modules call their submodules through typed members
// (`torch::nn::Linear fc{nullptr};`), which no library can rebind, so prepare_qat swaps layers
// inside Sequential / ModuleList / ModuleDict containers (anywhere in the tree) and warns, naming
// the layer, for a Linear / Conv registered directly in a custom module. Write such modules with
// qatkit layers as members instead (README, "C++ custom modules"):
//   struct Net : torch::nn::Module {
//     Net(const qatkit::nn::LayerSpec& s)
//         : fc1(register_module("fc1", qatkit::nn::QuantLinear(torch::nn::LinearOptions(64, 32), s))) {}
//     torch::Tensor forward(torch::Tensor x) { return fc1(x); }
//     qatkit::nn::QuantLinear fc1;
//   };
// calibrate / convert / freeze_bn work on them in place (convert changes each layer's state, not
// its identity).
#pragma once

#include <torch/nn/cloneable.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/batchnorm.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>
#include <torch/serialize/input-archive.h>
#include <torch/serialize/output-archive.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <tuple>
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
  /// float32 / float16 / bfloat16: the dtype static weight scales are rounded to (the fake quant
  /// and convert compute with the rounded scales; exported files store them in that dtype).
  std::string scale_dtype = "float32";

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
  /// Fold Conv2d + BatchNorm2d neighbours of a Sequential into QuantConvBn2d (C++ cannot trace a
  /// custom module's forward: every other BatchNorm2d is reported unfolded, with a warning).
  bool fold_bn = true;
  /// Quantize embedding tables with the default spec (Python's QATConfig.embeddings); first_last
  /// counts compute layers (Linear, Conv) only.
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
  /// Weight-only presets (float activations, no first/last rule): the PTQ starting points.
  static QATConfig int8_weight_only();
  static QATConfig int4_weight_only(std::int64_t group_size = 32, bool symmetric = true);
  static QATConfig ternary_weight_only();
  static QATConfig binary_weight_only();
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
  /// (integer codes, float32 scale, int32 zero point) with (codes - zero_point) * scale ==
  /// forward(w) bit for bit (Python's qatkit.qat.weight_codes): quantize_affine with the
  /// quantizer's effective qparams, or ternary_codes / binary_codes.
  std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> codes(const torch::Tensor& w);
  /// The per-channel axis (0) or nullopt (per tensor / per group).
  std::optional<std::int64_t> axis() const { return axis_; }
  /// Writes the spec (key "spec", its JSON) next to the buffers, so a checkpoint records its config.
  void save(torch::serialize::OutputArchive& archive) const override;
  /// Loads the buffers after checking the recorded spec: one saved with another spec raises
  /// ValueError naming the key and the fields that differ.
  void load(torch::serialize::InputArchive& archive) override;
  /// LSQ: called by the layer at its first training forward with its weight. The step sizes
  /// started from the weight the quantizer was built on (2 mean|w| / sqrt(Q_P)); a weight written
  /// since in place (pretrained weights copied in, an init pass) left them stale. Where the weight
  /// changed and the step sizes are still those, they start from the current weight now (Python:
  /// check_weight_since_prepare); step sizes set or trained since are kept. Once; a no-op otherwise.
  void check_weight_since_prepare(const torch::Tensor& weight);
  std::string granularity;  ///< effective (per-group falls back to per-channel when it does not divide)
  std::optional<std::int64_t> group_size;
  std::string qualified_name;  ///< set by prepare_qat ("0.weight_fake_quant"), for messages

 private:
  torch::Tensor initial_scale(const torch::Tensor& w) const;
  QuantSpec spec_;
  std::vector<std::int64_t> weight_shape_;
  torch::Tensor weight_init_, prepared_init_;
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
  /// Whether a static range observer is switched on (false after enable_observer(false); true for
  /// quantizers without one).
  bool observer_enabled() const { return !observer_on_.defined() || observer_on_.ne(0).item<bool>(); }
  void enable_fake_quant(bool on);
  /// Writes the spec (key "spec", its JSON) next to the buffers, so a checkpoint records its config.
  void save(torch::serialize::OutputArchive& archive) const override;
  /// Checks the recorded spec (ValueError naming the key on a mismatch), loads the buffers, then
  /// refreshes the host-side copies of the flags.
  void load(torch::serialize::InputArchive& archive) override;
  const QuantSpec& spec() const { return spec_; }
  /// Whether the range comes from observed data (static observers, learned LSQ ranges).
  bool observes_data() const { return spec_.kind == "int" && spec_.scale != "dynamic"; }
  std::int64_t channels() const { return channels_; }
  /// Whether it has seen data (a finite observed range / an initialized step size).
  bool has_observed() const;
  /// Freeze for inference (convert): never observe again, whatever the training mode.
  void freeze();
  /// Refresh the host-side copies of the flag buffers after they were written directly (a loader).
  void sync_flags();
  /// The (scale, zero point) buffers of a static or learned affine quantizer (undefined otherwise).
  std::pair<torch::Tensor, torch::Tensor> qparams() const { return {scale_, zero_point_}; }
  bool fake_quant_enabled() const { return fq_enabled_; }
  std::optional<std::int64_t> axis() const { return axis_; }
  std::string qualified_name;  ///< set by prepare_qat ("0.input_fake_quant"), for messages
  /// Forwards run in training mode (calibrate checks every data-range quantizer saw some).
  std::int64_t observations = 0;

 private:
  QuantSpec spec_;
  std::int64_t channels_;
  bool frozen_ = false;
  // host copies of the fake_quant_on / initialized buffers, so the forward of the kinds that branch
  // on them never reads a (device) tensor
  bool fq_enabled_ = true, initialized_flag_ = false;
  std::optional<std::int64_t> axis_;
  torch::Tensor running_min_, running_max_, scale_, zero_point_, observer_on_, fake_quant_on_, off_, initialized_;
};
TORCH_MODULE(ActFakeQuantizer);

/// A converted layer's weight: after convert() the module holds buffers `weight_int` (int8 codes,
/// int32 above 8 bits), `weight_scale` (float32) and `weight_zero_point` (int32) instead of the
/// `weight` parameter and its quantizer; `bias` becomes a buffer; the input quantizer is frozen.
/// The forward dequantizes `(codes - zero_point) * scale` with dequantize_affine, in the weight's
/// dtype: the QAT layer's eval-mode output bit for bit (Python's Quantized* layers).
/// The operands of an integer kernel (qatkit::linear_int8 / linear_w2a8 / linear_w1a8 / linear_w4a8 /
/// conv2d_int8 / conv2d_w4a8) for a converted layer in integer compute (docs/integer.md, "static" and
/// "static_group" forms; Python's
/// qatkit.qat.integer plan, bit for bit the same operands).
struct QATKIT_API IntegerKernelPlan {
  int weight_bits = 8;  ///< 8: int8 codes [N, K] (convs: rows zero-padded to 32); 4 (per group), 2, 1: packed
  /// XNOR-Net layers (binary weights and per-sample binary inputs): linear_w1a1 / conv2d_w1a1 with
  /// `weight` (1-bit, pack_binary_b1) and `out_scale` holding the weight scale per channel; convs of
  /// any `groups` (grouped / depthwise ones run conv2d_int8's kernels on the binary codes inside
  /// conv2d_w1a1).
  bool binary_input = false;
  /// Weight-only layers (float inputs): weight_bits 4, linear_w4_weight_only with group_scale /
  /// group_zero; weight_bits 8, linear_w8_weight_only with `weight` (int8 [N, K]) and `out_scale`.
  bool float_input = false;
  /// Dynamic int8 inputs ("row" form: BitLinear, or per-token / per-tensor dynamic activations with
  /// int8 / ternary / binary weights): linear_dynamic_int8 with `weight` at weight_bits, `out_scale`
  /// the weight scale per channel, act_quant_max and per_tensor_input.
  bool dynamic_input = false;
  bool per_tensor_input = false;
  torch::Tensor group_zero;  ///< float_input: the weight zero points per group (undefined: symmetric)
  torch::Tensor weight, corr, out_scale;
  torch::Tensor group_scale;  ///< weight_bits 4: linear_w4a8's / conv2d_w4a8's group scales [N, K / group_size]
  std::int64_t group_size = 0;
  std::int64_t groups = 1;  ///< convs: conv2d_int8's / conv2d_w1a1's / conv2d_w4a8's groups
  std::optional<torch::Tensor> bias;  ///< float bias added after the requantization (narrower than W8A8)
  double act_scale = 1.0;
  std::int64_t act_zero_point = 0, act_quant_min = 0, act_quant_max = 255;
  /// The tensors the plan was derived from (codes, weight scales and zero points, bias, the input
  /// quantizer's scale and zero point) and the sum of their versions then. An in-place write to one
  /// of them bumps its version; the layer's forward then builds its plan again from them (Python:
  /// qatkit.qat.integer.refresh_layer), so an edit after the first call is never silently ignored.
  std::vector<torch::Tensor> sources;
  std::int64_t sources_version = 0;
  bool sources_changed() const;
};

struct QATKIT_API ConvertedWeight {
  bool converted = false;
  bool float_weight = false;  ///< no weight quantizer: weight_int holds the float weight
  bool binary = false;        ///< binary codes (+-1): a channel with scale 0 is all zero (pruned, dead)
  std::optional<std::int64_t> axis, group_size;
  at::ScalarType dtype = at::kFloat;
  torch::Tensor codes, scale, zero_point;
  /// Set by set_compute(model, "integer") where an integer kernel runs the layer; null: float math.
  std::shared_ptr<IntegerKernelPlan> integer;
  /// A Linear's plan in the row layouts on the device of its codes, built at its first CUDA call
  /// (the CUDA kernels read rows): what a CUDA input runs on; null until then.
  std::shared_ptr<IntegerKernelPlan> integer_rows;
  /// The float weight the converted layer computes with.
  torch::Tensor dequantized(const std::vector<std::int64_t>& shape) const;
  /// Convs and Linears: a fused activation (load fuses a ReLU / ReLU6 / Hardtanh after a converted
  /// conv or Linear into it, Python's qatkit.fuse_activations): the layer's output is
  /// torch.clamp(y, clamp_min, clamp_max), which a conv's integer kernels write (their clamp_min /
  /// clamp_max) and the other paths apply after the layer. Both empty: none. The FusedActivation
  /// after the layer records it for save().
  std::optional<double> clamp_min, clamp_max;
  bool clamped() const { return clamp_min.has_value() || clamp_max.has_value(); }
};

/// The C++ side of Python's optimizer check (python/qatkit/qat/optimizer_check.py). An optimizer
/// built before prepare_qat holds the float layers' weights, which the QAT layers share, but not the
/// learned quantizer parameters (LSQ / LSQ+ step sizes and offsets) prepare_qat creates: they get
/// gradients and never move, so learned-step-size training is silently fixed-scale training.
/// LibTorch's optimizers update through `.data()`, which version counters do not see, so a QAT
/// layer's training forward looks at the gradients: its weight's was reset (an optimizer's
/// zero_grad) while its learned parameters' were not and their values stayed as they were. After 3
/// such forwards in a row it warns once (TORCH_WARN) naming them. (zero_grad(false), which zeroes
/// instead of resetting, is not seen.)
struct QATKIT_API LearnedParamWatch {
  std::vector<torch::Tensor> values;  ///< the learned parameters at the last such forward
  int stale = 0;                      ///< such forwards in a row
  bool warned = false;
};

/// nn.Linear with fake-quantized weight and input (Python: qatkit.qat.QuantLinear).
class QATKIT_API QuantLinearImpl : public torch::nn::Cloneable<QuantLinearImpl> {
 public:
  QuantLinearImpl(torch::nn::LinearOptions options, LayerSpec spec);
  /// Shares `linear`'s weight and bias.
  QuantLinearImpl(const torch::nn::Linear& linear, LayerSpec spec);
  void reset() override;
  torch::Tensor forward(const torch::Tensor& x);
  /// The weight the forward pass uses (after convert: the dequantized codes).
  torch::Tensor quantized_weight();
  /// Freeze in place into integer codes (see ConvertedWeight); the module keeps its identity, so
  /// typed members of custom modules convert too.
  void convert();
  bool converted() const { return frozen.converted; }

  torch::nn::LinearOptions options;
  LayerSpec layer_spec;
  torch::Tensor weight, bias;
  WeightFakeQuantizer weight_fake_quant{nullptr};
  ActFakeQuantizer input_fake_quant{nullptr};
  ConvertedWeight frozen;
  LearnedParamWatch learned_watch;  ///< see LearnedParamWatch
  /// SmoothQuant / AWQ input scaling (Python: QuantizedLinear.smooth), float32 [in_features], or
  /// undefined: the layer computes on x / smooth (after BitLinear's RMSNorm). The loader sets it from
  /// a file's "<layer>.smooth"; linear_int8 layers divide inside the kernel (input_divisor, the same
  /// bits), the others divide first.
  torch::Tensor smooth;

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
  /// A BitLinear copy (Cloneable<QuantLinearImpl>'s clone would slice it to a QuantLinear, and a
  /// cloned Sequential would hold a null module in its place).
  std::shared_ptr<torch::nn::Module> clone(const std::optional<torch::Device>& device = std::nullopt) const override;
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
  void convert();
  bool converted() const { return frozen.converted; }

  torch::nn::detail::ConvNdOptions<2> options;
  LayerSpec layer_spec;
  torch::Tensor weight, bias;
  WeightFakeQuantizer weight_fake_quant{nullptr};
  ActFakeQuantizer input_fake_quant{nullptr};
  ConvertedWeight frozen;
  LearnedParamWatch learned_watch;  ///< see LearnedParamWatch

 private:
  void attach();
};
TORCH_MODULE(QuantConv2d);

/// nn.Conv1d with fake-quantized weight and input (Python: QuantConv1d).
class QATKIT_API QuantConv1dImpl : public torch::nn::Cloneable<QuantConv1dImpl> {
 public:
  QuantConv1dImpl(torch::nn::Conv1dOptions options, LayerSpec spec);
  /// Shares `conv`'s weight and bias.
  QuantConv1dImpl(const torch::nn::Conv1d& conv, LayerSpec spec);
  void reset() override;
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor quantized_weight();
  void convert();
  bool converted() const { return frozen.converted; }

  torch::nn::detail::ConvNdOptions<1> options;
  LayerSpec layer_spec;
  torch::Tensor weight, bias;
  WeightFakeQuantizer weight_fake_quant{nullptr};
  ActFakeQuantizer input_fake_quant{nullptr};
  ConvertedWeight frozen;
  LearnedParamWatch learned_watch;  ///< see LearnedParamWatch

 private:
  void attach();
};
TORCH_MODULE(QuantConv1d);

/// The place of a ReLU / ReLU6 / Hardtanh that load() fused into the conv or Linear before it
/// (Python's qatkit.qat.FusedActivation): the identity, since that layer's output is already
/// clamped. `kind` ("ReLU", "ReLU6" or "Hardtanh") and the bounds are the activation's; save() writes
/// it as that activation (and the layer without its clamp), so a fused model's file is the unfused
/// model's.
class QATKIT_API FusedActivationImpl : public torch::nn::Cloneable<FusedActivationImpl> {
 public:
  explicit FusedActivationImpl(std::string kind = "ReLU", double min_val = 0.0,
                               std::optional<double> max_val = std::nullopt);
  void reset() override {}
  torch::Tensor forward(torch::Tensor x) { return x; }
  void pretty_print(std::ostream& stream) const override;

  std::string kind;
  double min_val;
  std::optional<double> max_val;
};
TORCH_MODULE(FusedActivation);

/// Conv2d + BatchNorm2d folded for QAT with Krishnamoorthi's correction (Python: QuantConvBn2d):
/// the quantized weight is Q(W * gamma / sigma) from the running statistics; in training (before
/// freeze_bn) the output is batch-normalized with the batch statistics, after freeze_bn / in eval
/// it is conv(x, Q(W_fold)) + b_fold, what convert exports (as a conv with the folded bias).
/// Converted, it is that conv: QuantConv2d's forward, on the integer kernels under set_compute.
class QATKIT_API QuantConvBn2dImpl : public torch::nn::Cloneable<QuantConvBn2dImpl> {
 public:
  /// Shares `conv`'s and `bn`'s parameters and buffers. bn must be affine with running statistics
  /// and match conv's out_channels (ValueError otherwise).
  QuantConvBn2dImpl(const torch::nn::Conv2d& conv, const torch::nn::BatchNorm2d& bn, LayerSpec spec);
  void reset() override;
  torch::Tensor forward(const torch::Tensor& x);
  /// Switch to the running statistics (and stop updating them).
  void freeze_bn(bool on = true);
  /// (gamma / sigma, folded weight, folded bias) from the running statistics.
  std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> folded();
  void convert();
  bool converted() const { return frozen.converted; }
  void load(torch::serialize::InputArchive& archive) override;

  torch::nn::detail::ConvNdOptions<2> options;
  LayerSpec layer_spec;
  torch::Tensor weight, bias;
  torch::nn::BatchNorm2d bn{nullptr};
  WeightFakeQuantizer weight_fake_quant{nullptr};
  ActFakeQuantizer input_fake_quant{nullptr};
  ConvertedWeight frozen;
  LearnedParamWatch learned_watch;  ///< see LearnedParamWatch

 private:
  void attach();
  bool fold_invariant() const;
  torch::Tensor bn_frozen_;
  bool bn_frozen_flag_ = false;
};
TORCH_MODULE(QuantConvBn2d);

/// nn.Embedding with a fake-quantized table (one scale per row for per-channel specs); the input
/// is indices, so no activation quantizer (Python: QuantEmbedding). max_norm renormalizes the rows
/// looked up in the (temporary) quantized table, as Python's layer does; sparse gradients cannot flow
/// through the fake quantization (a warning; the gradients are dense).
class QATKIT_API QuantEmbeddingImpl : public torch::nn::Cloneable<QuantEmbeddingImpl> {
 public:
  QuantEmbeddingImpl(torch::nn::EmbeddingOptions options, LayerSpec spec);
  /// Shares `emb`'s weight.
  QuantEmbeddingImpl(const torch::nn::Embedding& emb, LayerSpec spec);
  void reset() override;
  torch::Tensor forward(const torch::Tensor& indices);
  torch::Tensor quantized_weight();
  void convert();
  bool converted() const { return frozen.converted; }

  torch::nn::EmbeddingOptions options;
  LayerSpec layer_spec;
  torch::Tensor weight;
  WeightFakeQuantizer weight_fake_quant{nullptr};
  ActFakeQuantizer input_fake_quant{nullptr};  ///< always null (indices)
  ConvertedWeight frozen;
  LearnedParamWatch learned_watch;  ///< see LearnedParamWatch

 private:
  void attach();
};
TORCH_MODULE(QuantEmbedding);

/// nn.Hardswish and nn.Hardsigmoid, which torch::nn lacks: what qatkit::nn::load builds for those
/// leaves of a file's structure (and what save writes as them), at::hardswish / at::hardsigmoid as
/// Python's modules compute.
class QATKIT_API HardswishImpl : public torch::nn::Cloneable<HardswishImpl> {
 public:
  void reset() override {}
  torch::Tensor forward(const torch::Tensor& x);
  void pretty_print(std::ostream& stream) const override;
};
TORCH_MODULE(Hardswish);

class QATKIT_API HardsigmoidImpl : public torch::nn::Cloneable<HardsigmoidImpl> {
 public:
  void reset() override {}
  torch::Tensor forward(const torch::Tensor& x);
  void pretty_print(std::ostream& stream) const override;
};
TORCH_MODULE(Hardsigmoid);

/// One row of prepare_qat's report (Python's model.qat_report).
struct QATKIT_API LayerReport {
  std::string name;    ///< qualified name ("features.0")
  std::string type;    ///< the float module ("Linear", "Conv2d", "BatchNorm2d", ...)
  std::string qat;     ///< the QAT module ("QuantLinear", ...) or "" (stays float)
  std::string weight;  ///< the weight spec ("int8 per_channel ...") or "float"
  std::string act;     ///< the input spec or "float"
  std::string rule;    ///< which rule chose the spec ("default", "first_last", "skip '0'", ...)
  std::string reason;  ///< why a layer stays float / a BatchNorm is not folded ("" if swapped)
};

/// What prepare_qat did, layer by layer.
struct QATKIT_API QATReport {
  std::vector<LayerReport> layers;
  /// The row of `name` (nullptr if none).
  const LayerReport* find(const std::string& name) const;
  /// A table, one line per layer.
  std::string to_string() const;
};

/// Swap the supported layers (Linear, Conv1d, Conv2d, Embedding when config.embeddings; Conv2d +
/// BatchNorm2d neighbours folded into QuantConvBn2d) of `model`'s tree in place for QAT layers
/// sharing their parameters, inside Sequential / ModuleList / ModuleDict containers at any depth
/// (custom modules are walked into). A supported layer registered directly in a custom module is
/// left float with a warning naming it (its typed member cannot be rebound), as is every
/// BatchNorm2d that is not folded. Layers already quantized (qatkit layers built by the user) are
/// kept and named in the report. Returns the report. Raises ValueError when nothing is quantized
/// (nothing changed then), and warns when first_last="int8" leaves no layer at the default spec.
QATKIT_API QATReport prepare_qat_inplace(torch::nn::Module& model, const QATConfig& config);

/// A new Sequential holding `model`'s modules (nested containers are shared and changed in place),
/// prepared with prepare_qat_inplace; the report goes to `report` when given.
QATKIT_API torch::nn::Sequential prepare_qat(const torch::nn::Sequential& model, const QATConfig& config,
                                             QATReport* report = nullptr);

/// Run `forward` on each batch with only the activation quantizers in training mode (BatchNorm
/// and the rest in eval), so observers collect ranges and nothing else changes; every module's
/// training flag is restored (also when this throws). Raises ValueError when the model has no
/// activation quantizer, or naming every data-range quantizer that observed nothing.
QATKIT_API void calibrate(torch::nn::Module& model, const std::vector<torch::Tensor>& batches,
                          const std::function<void(const torch::Tensor&)>& forward);

/// Freeze every QAT layer of `model` in place into integer codes + scales (convert() of each
/// layer; equal to Python's qatkit.convert bit for bit) and put the model in eval mode. Raises
/// ValueError when there is no QAT layer, or naming an input quantizer that observed nothing.
/// Returns the number of layers converted.
QATKIT_API std::int64_t convert(torch::nn::Module& model);

/// Switch every QuantConvBn2d to its running statistics (Krishnamoorthi's freeze).
QATKIT_API void freeze_bn(torch::nn::Module& model, bool on = true);

/// Options of the C++ post-training quantization.
struct QATKIT_API PTQOptions {
  bool fold_bn = true;              ///< fold Conv2d -> BatchNorm2d neighbours of Sequentials in float (exact)
  std::string observer = "minmax";  ///< observer of static activation ranges ("" keeps the config's)
};

/// Post-training quantization of `model` in place, the C++ part of Python's qatkit.ptq: fold
/// BatchNorms into the convs before them (float, exact), prepare_qat_inplace with `config`
/// (static activation observers set to options.observer), calibrate on `batches` through
/// `forward`, then freeze the observers and switch to eval. Round-to-nearest weights; equal to
/// Python's `qatkit.ptq(model, batches, config, equalize=False, absorb_bias=False,
/// correct_bias=None, threshold_search=False)` bit for bit (tested). The data-aware steps —
/// cross-layer equalization, bias absorption and correction, GPTQ / AdaRound, SmoothQuant / AWQ,
/// the ternary/binary threshold search, histogram observers — are Python-only.
/// Raises ValueError for empty batch lists or empty batches, and what prepare_qat / calibrate raise.
QATKIT_API QATReport ptq(torch::nn::Module& model, const std::vector<torch::Tensor>& batches,
                         const std::function<void(const torch::Tensor&)>& forward, const QATConfig& config,
                         const PTQOptions& options = PTQOptions());

/// Clips shadow weights to [-c, c] where their weight spec sets latent_clip (BinaryConnect); call
/// after each optimizer step. Returns the number of weights clipped.
/// Loads a model file written by Python's qatkit.export (docs/format.md) whose model is an
/// nn.Sequential tree of packed layers (Linear, Conv1d, Conv2d, Embedding, BitLinear) and ReLU /
/// ReLU6 / LeakyReLU / PReLU / ELU / Hardtanh / Hardswish / Hardsigmoid / GELU / SiLU / Mish / Tanh /
/// Sigmoid / Softmax / LogSoftmax / Identity / Flatten / Unflatten / Dropout / MaxPool1d, 2d /
/// AvgPool1d, 2d / AdaptiveAvgPool1d, 2d / BatchNorm1d / BatchNorm2d / LayerNorm / float Linear,
/// Conv1d, Conv2d, Embedding, as a runnable
/// Sequential in eval mode: the packed layers are converted QuantLinear / QuantConv* /
/// QuantEmbedding holding the file's codes (and a Linear's SmoothQuant / AWQ input scaling, its
/// `smooth`), so the outputs equal Python's. Models with custom
/// forwards (a ResNet, Hugging Face ones) load into the architecture built in C++ (load_into below),
/// as in Python (qatkit.load_into). `compute` as Python's
/// qatkit.load: "integer" (default) runs the layers an integer kernel exists for on it
/// (set_compute), bit for bit Python's loaded model; "float" the QAT model's float math. ValueError
/// naming the file and the layer for anything the file or the C++ layers cannot honour (a newer
/// format version, a smoothing that is not finite and positive, non-float32 models, an unknown module
/// type). `fuse_activations` (with integer compute, as Python's qatkit.load): each ReLU / ReLU6 /
/// Hardtanh that follows a packed conv or Linear in a Sequential (only Identity modules between: a
/// folded BatchNorm's place) runs in the layer as a clamp (ConvertedWeight::clamp_min / clamp_max:
/// in a conv's kernel, in place on a Linear's output), its place a FusedActivation: the same bits,
/// one pass over the output less. A layer the structure places twice, or a Hardtanh bound of -0.0,
/// is left unfused (as Python leaves it).
QATKIT_API torch::nn::Sequential load(const std::string& path, const std::string& compute = "integer",
                                      bool fuse_activations = true);

/// Loads a model file (Python's qatkit.export, docs/format.md; any architecture, custom forwards
/// included) into `model`, a module tree built in C++ with the file's architecture: Python's
/// qatkit.load_into for LibTorch, where typed members (`qatkit::nn::QuantConv2d conv1;`) cannot be
/// swapped for other modules, so the model is built as the file's model computes (tests/cpp/load_run.cpp,
/// `--resnet`, is a ResNet-18 written so):
///   - each layer the file holds packed is a qatkit layer at the same qualified name ("layer1.0.conv1")
///     of the file's kind — QuantLinear (BitLinear where the file's Linear has RMSNorm), QuantConv1d,
///     QuantConv2d (or a QuantConvBn2d not yet converted, which takes the conv the fold left: the same
///     class for QAT and deployment), QuantEmbedding — with the file's options (features / channels, kernel, stride,
///     padding, dilation, groups, padding mode, bias; its LayerSpec may be any: the file's spec,
///     codes, scales, zero points, bias, input quantizer and SmoothQuant / AWQ scaling replace the
///     layer's state in place, which keeps its identity, so the typed members hold the loaded layer);
///   - every other parameter and buffer of the model is one of the file's float tensors (BatchNorms
///     the file keeps, float layers, ...), and the file has none the model lacks;
///   - where the file's model has an Identity (a BatchNorm folded into the conv before it) or a ReLU
///     (cross-layer equalization turns ReLU6 into ReLU), the model has that module or none.
/// Then the model goes to eval mode and `compute` as load's ("integer": integer kernels where they
/// run a layer, bit for bit Python's loaded model; "float"). Activations stay in the model's forward
/// (none is fused). Returns the number of packed layers loaded. ValueError naming the file and what
/// does not fit (a layer the model lacks or holds as another module, options that differ, a qatkit
/// layer the file keeps float, tensors missing or left over, a BatchNorm where the file folded it)
/// before the model is changed, and for anything load refuses in the file.
QATKIT_API std::int64_t load_into(torch::nn::Module& model, const std::string& path,
                                  const std::string& compute = "integer");

/// Switch the converted layers of `model` between "float" (the QAT model's function, bit for bit)
/// and "integer": layers an integer kernel runs compute on it, bit for bit Python's
/// qatkit.load(path) / set_compute(model, "integer", kernels_only=True); the others keep float math.
/// Those are (docs/integer.md) Linear and Conv1d / Conv2d (a converted QuantConvBn2d too; grouped
/// convs too) whose input is a static /
/// learned per-tensor 8-bit affine quantizer and whose weight codes are int8 / ternary / binary or
/// 4-bit per group (linear_w4a8 / conv2d_w4a8); XNOR layers (binarized inputs, linear_w1a1 /
/// conv2d_w1a1); Linears with dynamic per-token / per-tensor int8 inputs (BitLinear included,
/// linear_dynamic_int8); weight-only Linears (linear_w4_weight_only / linear_w8_weight_only).
/// Returns the number of layers on integer kernels. ValueError for another `compute`.
QATKIT_API std::int64_t set_compute(torch::nn::Module& model, const std::string& compute);

/// Writes `model` as the file Python's qatkit.export writes (docs/format.md): its QAT layers
/// converted on a copy (the caller's model is untouched) and packed, the float modules' tensors,
/// and the structure qatkit.load / qatkit::nn::load rebuild. The model is a Sequential tree of
/// QAT layers (QuantLinear, BitLinear, QuantConv1d/2d, QuantConvBn2d, QuantEmbedding) and the
/// modules load() builds (convs with any padding: numbers, 'same' / 'valid', every padding mode);
/// anything else (a float-weight QAT layer, another module type) raises
/// ValueError naming the module.
QATKIT_API void save(const torch::nn::Sequential& model, const std::string& path);

/// Writes a model with its own forward (a custom module with qatkit layers as typed members, README
/// "C++ custom modules") as Python's qatkit.export writes such a model: each QAT layer converted and
/// packed under its qualified name (a layer registered at two names once, under the first), every
/// other parameter and buffer as a float tensor by name, the Identity / ReLU modules as
/// module_changes, and no structure (qatkit::nn::load and qatkit.load refuse the file naming the
/// model's type; qatkit::nn::load_into and Python's qatkit.load_into load it into the architecture).
/// QAT layers not yet converted are converted on a copy where the model can be cloned
/// (torch::nn::Cloneable); otherwise ValueError asking for qatkit::nn::convert(model) first. A
/// Sequential is written by the overload above (with its structure).
QATKIT_API void save(const torch::nn::Module& model, const std::string& path);

/// The tensors and string metadata of a safetensors file, in file order.
struct QATKIT_API TensorFile {
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  std::vector<std::pair<std::string, std::string>> metadata;
};

/// Reads a safetensors file (qatkit's model files, docs/format.md). The file is untrusted: header
/// length, JSON, dtypes, shapes (no overflow) and data offsets (inside the data, exact sizes, no
/// overlaps) are checked first; any violation raises ValueError naming the file and the tensor.
QATKIT_API TensorFile read_safetensors(const std::string& path);
/// read_safetensors over bytes in memory (`source` names them in messages).
QATKIT_API TensorFile parse_safetensors(const std::uint8_t* data, std::size_t size, const std::string& source);
/// Writes `file` as safetensors (tensors moved to the CPU, made contiguous; data 8-byte aligned).
QATKIT_API void write_safetensors(const std::string& path, const TensorFile& file);

QATKIT_API std::int64_t clip_latent_weights(torch::nn::Module& model);

/// Turn every activation observer / fake quantizer of `model` on or off.
QATKIT_API void enable_observer(torch::nn::Module& model, bool on = true);
QATKIT_API void enable_fake_quant(torch::nn::Module& model, bool on = true);

}  // namespace qatkit::nn
