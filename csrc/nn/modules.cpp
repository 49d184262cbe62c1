// C++ QAT modules (see qatkit/nn.h): the numerics of python/qatkit/qat/{quantizers,modules}.py,
// call for call, so C++ and Python layers give identical outputs for the same weights (tested).
#include <ATen/ops/amax.h>
#include <ATen/ops/amin.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/maximum.h>
#include <ATen/ops/minimum.h>
#include <ATen/ops/rms_norm.h>
#include <fmt/format.h>
#include <torch/nn/functional/conv.h>
#include <torch/nn/functional/padding.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>

#include <cmath>
#include <numeric>

#include "qatkit/nn.h"
#include "qatkit/ops.h"

namespace qatkit::nn {
namespace {

torch::Tensor flag(bool on) { return torch::tensor({on ? 1 : 0}, torch::kUInt8); }

double lsq_grad_factor(std::int64_t per_scale, std::int64_t qmax) {
  return 1.0 / std::sqrt(static_cast<double>(std::max<std::int64_t>(per_scale, 1)) * static_cast<double>(qmax));
}

}  // namespace

// ---------------------------------------------------------------- weight quantizer

WeightFakeQuantizerImpl::WeightFakeQuantizerImpl(QuantSpec spec, const torch::Tensor& weight)
    : spec_(spec.validated()), weight_shape_(weight.sizes().vec()), weight_init_(weight.detach().clone()) {
  TORCH_CHECK_VALUE(spec_.scale != "dynamic",
                    "QuantSpec.scale 'dynamic' is for activations; weights use 'static' or 'learned'");
  TORCH_CHECK_VALUE(spec_.granularity != "per_token", "QuantSpec.granularity 'per_token' is for activations");
  granularity = spec_.granularity;
  if (granularity == "per_group") {
    std::int64_t flat_in = 1;
    for (std::size_t d = 1; d < weight_shape_.size(); ++d) flat_in *= weight_shape_[d];
    if (weight_shape_.size() < 2 || flat_in % *spec_.group_size != 0) {
      granularity = "per_channel";  // the Python fallback: not a multiple of the group size
    } else {
      group_size = spec_.group_size;
    }
  }
  if (granularity == "per_channel") axis_ = 0;
  reset();
  weight_init_ = torch::Tensor();
}

void WeightFakeQuantizerImpl::reset() {
  fake_quant_on_ = register_buffer("fake_quant_on", flag(true));
  if (spec_.scale != "learned") return;
  const double qp = static_cast<double>(spec_.quant_max());
  torch::Tensor init;
  if (weight_init_.defined()) {
    const torch::Tensor w = weight_init_.to(torch::kFloat);
    init = axis_ ? w.abs().reshape({w.size(0), -1}).mean(1) * 2 / std::sqrt(qp)
                 : w.abs().mean().reshape({1}) * 2 / std::sqrt(qp);
    init = init.clamp_min(1e-6);
  } else {
    init = torch::ones({axis_ ? weight_shape_[0] : 1});
  }
  scale_ = register_parameter("scale", init);
  if (spec_.symmetric) {
    zero_point_ = register_buffer("zero_point", torch::zeros_like(init));
  } else {
    zero_point_ = register_parameter("zero_point", torch::zeros_like(init));
  }
  const std::int64_t numel =
      std::accumulate(weight_shape_.begin(), weight_shape_.end(), std::int64_t{1}, std::multiplies<>());
  grad_factor_ = spec_.lsq_grad_scale ? lsq_grad_factor(numel / init.numel(), spec_.quant_max()) : 1.0;
}

torch::Tensor WeightFakeQuantizerImpl::forward(const torch::Tensor& w) {
  const QuantSpec& s = spec_;
  if (s.kind == "ternary") return qatkit::ternarize(w, s.method, axis_);
  if (s.kind == "binary") return qatkit::binarize(w, s.method, axis_, s.estimator);
  if (s.scale == "learned") {
    return qatkit::fake_quantize_learnable(w, scale_, zero_point_, s.quant_min(), s.quant_max(), axis_, std::nullopt,
                                           grad_factor_);
  }
  if (group_size) {
    const torch::Tensor w2 = w.reshape({w.size(0), -1});
    auto [sc, zp] =
        qatkit::choose_qparams(w2.detach(), s.quant_min(), s.quant_max(), s.symmetric, std::nullopt, group_size);
    return qatkit::fake_quantize(w2, sc, zp, s.quant_min(), s.quant_max(), std::nullopt, group_size).reshape(w.sizes());
  }
  auto [sc, zp] = qatkit::choose_qparams(w.detach(), s.quant_min(), s.quant_max(), s.symmetric, axis_);
  return qatkit::fake_quantize(w, sc, zp, s.quant_min(), s.quant_max(), axis_);
}

// ---------------------------------------------------------------- activation quantizer

ActFakeQuantizerImpl::ActFakeQuantizerImpl(QuantSpec spec, std::int64_t channels)
    : spec_(spec.validated()), channels_(channels) {
  if (spec_.granularity == "per_channel") axis_ = spec_.axis;
  reset();
}

void ActFakeQuantizerImpl::reset() {
  const std::int64_t n = axis_ ? channels_ : 1;
  fake_quant_on_ = register_buffer("fake_quant_on", flag(true));
  if (spec_.kind == "int" && spec_.scale == "static") {
    running_min_ = register_buffer("running_min", torch::full({n}, INFINITY));
    running_max_ = register_buffer("running_max", torch::full({n}, -INFINITY));
    scale_ = register_buffer("scale", torch::ones({n}));
    zero_point_ = register_buffer("zero_point", torch::zeros({n}, torch::kInt));
    observer_on_ = register_buffer("observer_on", flag(true));
    off_ = flag(false);
  } else if (spec_.kind == "int" && spec_.scale == "learned") {
    scale_ = register_parameter("scale", torch::ones({n}));
    if (spec_.symmetric) {
      zero_point_ = register_buffer("zero_point", torch::zeros({n}));
    } else {
      zero_point_ = register_parameter("zero_point", torch::zeros({n}));
    }
    initialized_ = register_buffer("initialized", flag(false));
  }
}

void ActFakeQuantizerImpl::enable_observer(bool on) {
  if (observer_on_.defined()) observer_on_.fill_(on ? 1 : 0);
}

void ActFakeQuantizerImpl::enable_fake_quant(bool on) {
  fake_quant_on_.fill_(on ? 1 : 0);
  fq_enabled_ = on;
}

void ActFakeQuantizerImpl::load(torch::serialize::InputArchive& archive) {
  torch::nn::Module::load(archive);
  fq_enabled_ = fake_quant_on_.item<int>() != 0;
  initialized_flag_ = initialized_.defined() && initialized_.item<int>() != 0;
}

torch::Tensor ActFakeQuantizerImpl::forward(const torch::Tensor& x) {
  const QuantSpec& s = spec_;
  const bool static_int = s.kind == "int" && s.scale == "static";
  // static observers read the flag inside the op; the other kinds branch on its host copy
  if (!static_int && !fq_enabled_) return x;
  if (s.kind == "binary") return qatkit::binarize(x, s.method, axis_, s.estimator);
  if (s.scale == "dynamic") {
    return s.granularity == "per_token" ? qatkit::quantize_per_token(x, s.quant_max())
                                        : qatkit::quantize_per_tensor_dynamic(x, s.quant_max());
  }
  if (s.scale == "learned") {
    if (!initialized_flag_) {
      torch::NoGradGuard ng;
      const torch::Tensor xf = x.detach().to(torch::kFloat);
      std::vector<std::int64_t> dims;
      for (std::int64_t d = 0; d < x.dim(); ++d) {
        if (!axis_ || d != ((*axis_ % x.dim()) + x.dim()) % x.dim()) dims.push_back(d);
      }
      torch::Tensor lo = dims.empty() ? xf : at::amin(xf, dims), hi = dims.empty() ? xf : at::amax(xf, dims);
      lo = at::minimum(lo.reshape(-1), torch::zeros_like(lo.reshape(-1)));
      hi = at::maximum(hi.reshape(-1), torch::zeros_like(hi.reshape(-1)));
      torch::Tensor scale, zp;
      if (s.symmetric) {
        scale = at::maximum(-lo, hi) / static_cast<double>(s.quant_max());
        zp = torch::zeros_like(scale);
      } else {
        scale = ((hi - lo) / static_cast<double>(s.quant_max() - s.quant_min())).clamp_min(1e-6);
        zp = static_cast<double>(s.quant_min()) - lo / scale;
      }
      scale_.copy_(scale.clamp_min(1e-6).expand_as(scale_));
      zero_point_.copy_(zp.expand_as(zero_point_));
      initialized_.fill_(1);
      initialized_flag_ = true;
    }
    const double g = s.lsq_grad_scale ? lsq_grad_factor(x.numel() / scale_.numel(), s.quant_max()) : 1.0;
    return qatkit::fake_quantize_learnable(x, scale_, zero_point_, s.quant_min(), s.quant_max(), axis_, std::nullopt,
                                           g);
  }
  return qatkit::fused_observe_fake_quantize(
      x, running_min_, running_max_, scale_, zero_point_, is_training() ? observer_on_ : off_, fake_quant_on_,
      s.momentum, s.observer == "moving_average", s.quant_min(), s.quant_max(), s.symmetric, axis_);
}

// ---------------------------------------------------------------- QuantLinear / BitLinear

QuantLinearImpl::QuantLinearImpl(torch::nn::LinearOptions opts, LayerSpec spec)
    : options(std::move(opts)), layer_spec(std::move(spec)) {
  reset();
  // the float module's initialization
  torch::nn::Linear init(options);
  weight.data().copy_(init->weight);
  if (bias.defined()) bias.data().copy_(init->bias);
}

QuantLinearImpl::QuantLinearImpl(const torch::nn::Linear& linear, LayerSpec spec)
    : options(linear->options), layer_spec(std::move(spec)) {
  weight = register_parameter("weight", linear->weight);
  if (options.bias()) bias = register_parameter("bias", linear->bias);
  attach();
}

void QuantLinearImpl::reset() {
  weight = register_parameter("weight", torch::empty({options.out_features(), options.in_features()}));
  if (options.bias()) bias = register_parameter("bias", torch::zeros({options.out_features()}));
  attach();
}

void QuantLinearImpl::attach() {
  if (layer_spec.weight) {
    weight_fake_quant = register_module("weight_fake_quant", WeightFakeQuantizer(*layer_spec.weight, weight));
  }
  if (layer_spec.activation) {
    input_fake_quant =
        register_module("input_fake_quant", ActFakeQuantizer(*layer_spec.activation, options.in_features()));
  }
}

torch::Tensor QuantLinearImpl::quantized_weight() { return weight_fake_quant ? weight_fake_quant(weight) : weight; }

torch::Tensor QuantLinearImpl::forward(const torch::Tensor& x) {
  torch::Tensor h = rms_norm_ ? at::rms_norm(x, {options.in_features()}, std::nullopt, 1e-6) : x;
  if (input_fake_quant) h = input_fake_quant(h);
  return at::linear(h, quantized_weight(), bias.defined() ? std::optional<torch::Tensor>(bias) : std::nullopt);
}

BitLinearImpl::BitLinearImpl(torch::nn::LinearOptions opts, LayerSpec spec)
    : QuantLinearImpl(std::move(opts), std::move(spec)) {
  rms_norm_ = true;
}

BitLinearImpl::BitLinearImpl(const torch::nn::Linear& linear, LayerSpec spec)
    : QuantLinearImpl(linear, std::move(spec)) {
  rms_norm_ = true;
}

// ---------------------------------------------------------------- QuantConv2d

namespace {

torch::nn::detail::ConvNdOptions<2> nd_options(const torch::nn::Conv2dOptions& o) {
  torch::nn::detail::ConvNdOptions<2> nd(o.in_channels(), o.out_channels(), o.kernel_size());
  nd.stride(o.stride()).padding(o.padding()).dilation(o.dilation()).groups(o.groups()).bias(o.bias());
  nd.padding_mode(o.padding_mode());
  return nd;
}

}  // namespace

QuantConv2dImpl::QuantConv2dImpl(torch::nn::Conv2dOptions opts, LayerSpec spec)
    : options(nd_options(opts)), layer_spec(std::move(spec)) {
  reset();
  torch::nn::Conv2d init(opts);
  weight.data().copy_(init->weight);
  if (bias.defined()) bias.data().copy_(init->bias);
}

QuantConv2dImpl::QuantConv2dImpl(const torch::nn::Conv2d& conv, LayerSpec spec)
    : options(conv->options), layer_spec(std::move(spec)) {
  weight = register_parameter("weight", conv->weight);
  if (options.bias()) bias = register_parameter("bias", conv->bias);
  attach();
}

void QuantConv2dImpl::reset() {
  const auto k = options.kernel_size();
  weight = register_parameter(
      "weight", torch::empty({options.out_channels(), options.in_channels() / options.groups(), k->at(0), k->at(1)}));
  if (options.bias()) bias = register_parameter("bias", torch::zeros({options.out_channels()}));
  attach();
}

void QuantConv2dImpl::attach() {
  if (layer_spec.weight) {
    weight_fake_quant = register_module("weight_fake_quant", WeightFakeQuantizer(*layer_spec.weight, weight));
  }
  if (layer_spec.activation) {
    input_fake_quant =
        register_module("input_fake_quant", ActFakeQuantizer(*layer_spec.activation, options.in_channels()));
  }
}

torch::Tensor QuantConv2dImpl::quantized_weight() { return weight_fake_quant ? weight_fake_quant(weight) : weight; }

torch::Tensor QuantConv2dImpl::forward(const torch::Tensor& x) {
  namespace F = torch::nn::functional;
  torch::Tensor h = input_fake_quant ? input_fake_quant(x) : x;
  const torch::Tensor w = quantized_weight();
  auto conv = F::Conv2dFuncOptions().stride(options.stride()).dilation(options.dilation()).groups(options.groups());
  if (bias.defined()) conv.bias(bias);
  if (!std::holds_alternative<torch::enumtype::kZeros>(options.padding_mode())) {
    const auto p = std::get<torch::ExpandingArray<2>>(options.padding());
    std::vector<std::int64_t> pad{p->at(1), p->at(1), p->at(0), p->at(0)};
    F::PadFuncOptions::mode_t mode;
    if (std::holds_alternative<torch::enumtype::kReflect>(options.padding_mode())) {
      mode = torch::kReflect;
    } else if (std::holds_alternative<torch::enumtype::kReplicate>(options.padding_mode())) {
      mode = torch::kReplicate;
    } else {
      mode = torch::kCircular;
    }
    return F::conv2d(F::pad(h, F::PadFuncOptions(pad).mode(mode)), w, conv.padding(0));
  }
  return F::conv2d(h, w, conv.padding(options.padding()));
}

// ---------------------------------------------------------------- prepare_qat

namespace {

std::vector<std::string> collect(const torch::nn::Sequential& seq) {
  std::vector<std::string> out;
  for (std::size_t i = 0; i < seq->size(); ++i) {
    const auto& m = seq->ptr(i);
    if (std::dynamic_pointer_cast<torch::nn::LinearImpl>(m) || std::dynamic_pointer_cast<torch::nn::Conv2dImpl>(m)) {
      out.push_back(std::to_string(i));
    }
  }
  return out;
}

std::optional<LayerSpec> spec_for(const std::string& name, std::size_t index, std::size_t count,
                                  const QATConfig& config) {
  if (std::find(config.skip.begin(), config.skip.end(), name) != config.skip.end()) return std::nullopt;
  if (!config.first_last.empty() && (index == 0 || index + 1 == count)) {
    if (config.first_last == "float") return std::nullopt;
    return QATConfig::w8a8().default_spec;
  }
  return config.default_spec;
}

template <class F>
void for_act_quantizers(torch::nn::Module& model, F f) {
  for (const auto& m : model.modules(/*include_self=*/true)) {
    if (auto a = std::dynamic_pointer_cast<ActFakeQuantizerImpl>(m)) f(*a);
  }
}

}  // namespace

torch::nn::Sequential prepare_qat(const torch::nn::Sequential& model, const QATConfig& config) {
  const std::vector<std::string> names = collect(model);
  TORCH_CHECK_VALUE(!names.empty(),
                    "prepare_qat: the model has nothing to quantize: no torch::nn::Linear or torch::nn::Conv2d layers");
  torch::nn::Sequential out;
  std::size_t replaced = 0, i = 0;
  for (const torch::nn::AnyModule& any : *model) {
    const std::string name = std::to_string(i++);
    const auto it = std::find(names.begin(), names.end(), name);
    std::optional<LayerSpec> spec;
    if (it != names.end()) spec = spec_for(name, static_cast<std::size_t>(it - names.begin()), names.size(), config);
    const auto m = any.ptr();
    if (spec && (spec->weight || spec->activation)) {
      if (auto lin = std::dynamic_pointer_cast<torch::nn::LinearImpl>(m)) {
        if (config.bitlinear) {
          out->push_back(BitLinear(torch::nn::Linear(lin), *spec));
        } else {
          out->push_back(QuantLinear(torch::nn::Linear(lin), *spec));
        }
        ++replaced;
        continue;
      }
      if (auto conv = std::dynamic_pointer_cast<torch::nn::Conv2dImpl>(m)) {
        out->push_back(QuantConv2d(torch::nn::Conv2d(conv), *spec));
        ++replaced;
        continue;
      }
    }
    out->push_back(any);
  }
  TORCH_CHECK_VALUE(replaced > 0, "prepare_qat: every supported layer was skipped by the config; nothing to quantize");
  out->train(model->is_training());
  return out;
}

void enable_observer(torch::nn::Module& model, bool on) {
  for_act_quantizers(model, [on](ActFakeQuantizerImpl& a) { a.enable_observer(on); });
}

void enable_fake_quant(torch::nn::Module& model, bool on) {
  for_act_quantizers(model, [on](ActFakeQuantizerImpl& a) { a.enable_fake_quant(on); });
}

}  // namespace qatkit::nn
