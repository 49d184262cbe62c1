// C++ QAT modules (see qatkit/nn.h): the numerics of python/qatkit/qat/{quantizers,modules}.py,
// call for call, so C++ and Python layers give identical outputs for the same weights (tested).
#include <ATen/ops/amax.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/amin.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/maximum.h>
#include <ATen/ops/minimum.h>
#include <ATen/ops/rms_norm.h>
#include <fmt/format.h>
#include <torch/nn/functional/conv.h>
#include <torch/nn/functional/padding.h>
#include <torch/nn/modules/batchnorm.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>

#include <cmath>
#include <map>
#include <numeric>

#include "json.h"
#include "qatkit/nn.h"
#include "qatkit/ops.h"

namespace qatkit::nn {
namespace {

torch::Tensor flag(bool on) { return torch::tensor({on ? 1 : 0}, torch::kUInt8); }

void save_spec(torch::serialize::OutputArchive& archive, const QuantSpec& spec) {
  archive.write("spec", c10::IValue(spec.to_json()));
}

/// Python's _SpecModule._load_from_state_dict check: the recorded spec must equal the module's.
void check_spec(torch::serialize::InputArchive& archive, const QuantSpec& mine, const std::string& name) {
  c10::IValue saved;
  if (!archive.try_read("spec", saved)) return;  // a checkpoint written before specs were recorded
  const std::string key = name.empty() ? "spec" : name + ".spec";
  TORCH_CHECK_VALUE(saved.isString(), fmt::format("load: key '{}' must hold a spec (JSON text)", key));
  const std::string mine_json = mine.to_json();
  if (saved.toStringRef() == mine_json) return;
  const json::Value a = json::parse(saved.toStringRef(), fmt::format("load: key '{}'", key));
  const json::Value b = json::parse(mine_json, "QuantSpec");
  std::string fields, was, now;
  for (const auto& [field, v] : b.object) {
    const json::Value* old = a.find(field);
    const std::string old_text = old ? json::dump(*old) : "missing";
    if (old_text == json::dump(v)) continue;
    fields += (fields.empty() ? "" : ", ") + field;
    was += fmt::format("{}{}={}", was.empty() ? "" : ", ", field, old_text);
    now += fmt::format("{}{}={}", now.empty() ? "" : ", ", field, json::dump(v));
  }
  TORCH_CHECK_VALUE(false, fmt::format("load: key '{}' holds a quantizer saved with another spec (fields [{}] differ: "
                                       "saved {}, model {}); prepare the model with the checkpoint's config",
                                       key, fields, was, now));
}

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
  // BinaryConnect's sampling seed: a step counter, so a resumed run draws the same bits
  if (spec_.stochastic) step_ = register_buffer("step", torch::zeros({1}, torch::kLong));
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
  if (s.kind == "binary") {
    std::optional<torch::Tensor> seed;
    if (s.stochastic && is_training()) {
      torch::NoGradGuard ng;
      step_.add_(1);
      seed = step_;
    }
    return qatkit::binarize(w, s.method, axis_, s.estimator, 1.0, seed);
  }
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

void WeightFakeQuantizerImpl::save(torch::serialize::OutputArchive& archive) const {
  torch::nn::Module::save(archive);
  save_spec(archive, spec_);
}

void WeightFakeQuantizerImpl::load(torch::serialize::InputArchive& archive) {
  check_spec(archive, spec_, qualified_name);
  torch::nn::Module::load(archive);
}

void ActFakeQuantizerImpl::save(torch::serialize::OutputArchive& archive) const {
  torch::nn::Module::save(archive);
  save_spec(archive, spec_);
}

void ActFakeQuantizerImpl::load(torch::serialize::InputArchive& archive) {
  check_spec(archive, spec_, qualified_name);
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
    if (!initialized_flag_ && x.numel() == 0) return x.clone();  // no range yet: the next batch initializes
    if (!initialized_flag_) {
      torch::NoGradGuard ng;
      const torch::Tensor xf = x.detach().to(torch::kFloat);
      std::vector<std::int64_t> dims;
      for (std::int64_t d = 0; d < x.dim(); ++d) {
        if (!axis_ || d != ((*axis_ % x.dim()) + x.dim()) % x.dim()) dims.push_back(d);
      }
      torch::Tensor lo = dims.empty() ? xf : at::amin(xf, dims), hi = dims.empty() ? xf : at::amax(xf, dims);
      // Python's rule: a first batch with NaN / Inf (or a range wider than float32) initializes
      // nothing and raises, naming the quantizer
      TORCH_CHECK_VALUE(at::isfinite(lo).all().item<bool>() && at::isfinite(hi).all().item<bool>() &&
                            at::isfinite(hi - lo).all().item<bool>(),
                        fmt::format("activation quantizer '{}': the first batch, which initializes the learned step "
                                    "size, holds NaN or Inf or a range wider than float32; nothing was initialized",
                                    qualified_name.empty() ? std::string("ActFakeQuantizer") : qualified_name));
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

/// Python's fnmatch.fnmatchcase: '*' any run (dots included), '?' one character, '[seq]' / '[!seq]'
/// a set with ranges.
bool fnmatch_case(const std::string& name, const std::string& pat) {
  std::size_t n = 0, p = 0, star_p = std::string::npos, star_n = 0;
  auto class_match = [&](std::size_t& pp, char c, bool& ok) {  // pp at '['; false if not a class
    std::size_t q = pp + 1;
    bool negate = false;
    if (q < pat.size() && pat[q] == '!') negate = true, ++q;
    const std::size_t first = q;
    bool hit = false;
    while (q < pat.size() && (pat[q] != ']' || q == first)) {
      if (q + 2 < pat.size() && pat[q + 1] == '-' && pat[q + 2] != ']') {
        hit |= pat[q] <= c && c <= pat[q + 2];
        q += 3;
      } else {
        hit |= pat[q] == c;
        ++q;
      }
    }
    if (q >= pat.size()) return false;  // no closing ']': a literal '['
    ok = hit != negate;
    pp = q + 1;
    return true;
  };
  while (n < name.size()) {
    bool advanced = false;
    if (p < pat.size()) {
      if (pat[p] == '*') {
        star_p = p++;
        star_n = n;
        continue;
      }
      if (pat[p] == '[') {
        std::size_t pp = p;
        bool ok = false;
        if (class_match(pp, name[n], ok)) {
          if (ok) p = pp, ++n, advanced = true;
        } else if (name[n] == '[') {
          ++p, ++n, advanced = true;
        }
      } else if (pat[p] == '?' || pat[p] == name[n]) {
        ++p, ++n, advanced = true;
      }
    }
    if (advanced) continue;
    if (star_p == std::string::npos) return false;
    p = star_p + 1;
    n = ++star_n;
  }
  while (p < pat.size() && pat[p] == '*') ++p;
  return p == pat.size();
}

std::optional<LayerSpec> spec_for(const std::string& name, std::size_t index, std::size_t count,
                                  const QATConfig& config, std::map<std::string, int>& used) {
  for (const auto& pat : config.skip) {
    if (fnmatch_case(name, pat)) {
      ++used[pat];
      return std::nullopt;
    }
  }
  for (const auto& [pat, spec] : config.overrides) {
    if (fnmatch_case(name, pat)) {
      ++used[pat];
      return spec;
    }
  }
  if (!config.first_last.empty() && (index == 0 || index + 1 == count)) {
    return QATConfig::first_last_spec(config.first_last);
  }
  return config.default_spec;
}

template <class F>
void for_act_quantizers(torch::nn::Module& model, F f) {
  for (const auto& m : model.modules(/*include_self=*/true)) {
    if (auto a = std::dynamic_pointer_cast<ActFakeQuantizerImpl>(m)) f(*a);
  }
}

template <class Layer>
void name_quantizers(Layer& layer, const std::string& name) {
  if (layer->weight_fake_quant) layer->weight_fake_quant->qualified_name = name + ".weight_fake_quant";
  if (layer->input_fake_quant) layer->input_fake_quant->qualified_name = name + ".input_fake_quant";
}

}  // namespace

torch::nn::Sequential prepare_qat(const torch::nn::Sequential& model, const QATConfig& config) {
  const std::vector<std::string> names = collect(model);
  TORCH_CHECK_VALUE(!names.empty(),
                    "prepare_qat: the model has nothing to quantize: no torch::nn::Linear or torch::nn::Conv2d layers");
  if (!config.first_last.empty()) (void)QATConfig::first_last_spec(config.first_last);  // a rule of the table
  std::map<std::string, int> used;
  for (const auto& p : config.skip) used[p] = 0;
  for (const auto& o : config.overrides) used[o.first] = 0;
  torch::nn::Sequential out;
  std::size_t replaced = 0, i = 0;
  for (const torch::nn::AnyModule& any : *model) {
    const std::string name = std::to_string(i++);
    const auto it = std::find(names.begin(), names.end(), name);
    std::optional<LayerSpec> spec;
    if (it != names.end()) {
      spec = spec_for(name, static_cast<std::size_t>(it - names.begin()), names.size(), config, used);
    }
    const auto m = any.ptr();
    if (config.fold_bn && i < model->size() && std::dynamic_pointer_cast<torch::nn::Conv2dImpl>(m) &&
        std::dynamic_pointer_cast<torch::nn::BatchNorm2dImpl>(model->ptr(i))) {
      TORCH_WARN("prepare_qat: Conv2d '", name, "' + BatchNorm2d '", i,
                 "' are not folded: the C++ layers have no QuantConvBn2d yet (Python folds them); the conv is "
                 "quantized before the BatchNorm. Set QATConfig::fold_bn = false to silence this.");
    }
    if (spec && (spec->weight || spec->activation)) {
      if (auto lin = std::dynamic_pointer_cast<torch::nn::LinearImpl>(m)) {
        if (config.bitlinear) {
          BitLinear q(torch::nn::Linear(lin), *spec);
          name_quantizers(q, name);
          out->push_back(q);
        } else {
          QuantLinear q(torch::nn::Linear(lin), *spec);
          name_quantizers(q, name);
          out->push_back(q);
        }
        ++replaced;
        continue;
      }
      if (auto conv = std::dynamic_pointer_cast<torch::nn::Conv2dImpl>(m)) {
        QuantConv2d q(torch::nn::Conv2d(conv), *spec);
        name_quantizers(q, name);
        out->push_back(q);
        ++replaced;
        continue;
      }
    }
    out->push_back(any);
  }
  for (const auto& [pat, count] : used) {
    if (count == 0) TORCH_WARN("prepare_qat: pattern '", pat, "' matched no layer");
  }
  TORCH_CHECK_VALUE(replaced > 0, "prepare_qat: every supported layer was skipped by the config; nothing to quantize");
  out->train(model->is_training());
  return out;
}

std::int64_t clip_latent_weights(torch::nn::Module& model) {
  torch::NoGradGuard ng;
  std::int64_t clipped = 0;
  auto clip = [&](auto& layer) {
    if (!layer.weight_fake_quant) return;
    const auto& c = layer.weight_fake_quant->spec().latent_clip;
    if (!c) return;
    layer.weight.clamp_(-*c, *c);
    ++clipped;
  };
  for (const auto& m : model.modules(/*include_self=*/true)) {
    if (auto l = std::dynamic_pointer_cast<QuantLinearImpl>(m)) clip(*l);
    if (auto c = std::dynamic_pointer_cast<QuantConv2dImpl>(m)) clip(*c);
  }
  return clipped;
}

void enable_observer(torch::nn::Module& model, bool on) {
  for_act_quantizers(model, [on](ActFakeQuantizerImpl& a) { a.enable_observer(on); });
}

void enable_fake_quant(torch::nn::Module& model, bool on) {
  for_act_quantizers(model, [on](ActFakeQuantizerImpl& a) { a.enable_fake_quant(on); });
}

}  // namespace qatkit::nn
