// C++ QAT modules (see qatkit/nn.h): the numerics of python/qatkit/qat/{quantizers,modules}.py,
// call for call, so C++ and Python layers give identical outputs for the same weights (tested).
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/amax.h>
#include <ATen/ops/amin.h>
#include <ATen/ops/batch_norm.h>
#include <ATen/ops/embedding.h>
#include <ATen/ops/embedding_renorm.h>
#include <ATen/ops/hardsigmoid.h>
#include <ATen/ops/hardswish.h>
#include <ATen/ops/isfinite.h>
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
#include <limits>
#include <map>
#include <numeric>

#include "integer.h"
#include "json.h"
#include "module_access.h"
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

using detail::ModuleAccess;

/// Freeze `self` (a QAT layer) in place: its weight becomes integer codes + qparams buffers
/// (Python's weight_codes), the float weight parameter and the weight quantizer go away, a bias
/// becomes a buffer, the input quantizer stops observing for good.
void convert_weight(torch::nn::Module& self, ConvertedWeight& frozen, WeightFakeQuantizer& wfq,
                    ActFakeQuantizer& aq, torch::Tensor& weight, torch::Tensor* bias, const torch::Tensor& w) {
  TORCH_CHECK_VALUE(!frozen.converted, "convert: the layer is already converted");
  torch::NoGradGuard ng;
  frozen.dtype = w.scalar_type();
  if (wfq) {
    std::tie(frozen.codes, frozen.scale, frozen.zero_point) = wfq->codes(w);
    frozen.axis = wfq->axis();
    frozen.group_size = wfq->group_size;
    frozen.binary = wfq->spec().kind == "binary";
  } else {
    frozen.float_weight = true;
    frozen.codes = w.detach().clone();
    frozen.scale = torch::ones({1});
    frozen.zero_point = torch::zeros({1}, torch::kInt);
  }
  ModuleAccess::erase_parameter(self, "weight");
  if (wfq) {
    self.unregister_module("weight_fake_quant");
    wfq = nullptr;
  }
  weight = torch::Tensor();
  frozen.codes = self.register_buffer("weight_int", frozen.codes);
  frozen.scale = self.register_buffer("weight_scale", frozen.scale);
  frozen.zero_point = self.register_buffer("weight_zero_point", frozen.zero_point);
  if (bias && bias->defined()) {
    const torch::Tensor b = bias->detach().clone();
    ModuleAccess::erase_parameter(self, "bias");
    *bias = self.register_buffer("bias", b);
  }
  if (aq) aq->freeze();
  frozen.converted = true;
  self.eval();
}

template <std::size_t D>
struct ConvFn;
template <>
struct ConvFn<1> {
  using Options = torch::nn::functional::Conv1dFuncOptions;
  static torch::Tensor run(const torch::Tensor& x, const torch::Tensor& w, const Options& o) {
    return torch::nn::functional::conv1d(x, w, o);
  }
};
template <>
struct ConvFn<2> {
  using Options = torch::nn::functional::Conv2dFuncOptions;
  static torch::Tensor run(const torch::Tensor& x, const torch::Tensor& w, const Options& o) {
    return torch::nn::functional::conv2d(x, w, o);
  }
};

/// x padded as nn.ConvNd pads for a padding mode other than zeros (reflect / replicate / circular;
/// string padding as nn.ConvNd resolves it: detail::conv_pads).
template <std::size_t D>
torch::Tensor pad_for_mode(const torch::Tensor& x, const torch::nn::detail::ConvNdOptions<D>& options) {
  namespace F = torch::nn::functional;
  const detail::ConvPads p = detail::conv_pads<D>(options);
  std::vector<std::int64_t> pad;
  for (std::size_t d = D; d-- > 0;) pad.insert(pad.end(), {p.left[d], p.right[d]});
  F::PadFuncOptions::mode_t mode;
  if (std::holds_alternative<torch::enumtype::kReflect>(options.padding_mode())) {
    mode = torch::kReflect;
  } else if (std::holds_alternative<torch::enumtype::kReplicate>(options.padding_mode())) {
    mode = torch::kReplicate;
  } else {
    mode = torch::kCircular;
  }
  return F::pad(x, F::PadFuncOptions(pad).mode(mode));
}

/// The float conv of nn.ConvNd.forward (padding modes included) with the given weight and bias.
template <std::size_t D>
torch::Tensor conv_nd(const torch::Tensor& h, const torch::Tensor& w, const torch::Tensor& bias,
                      const torch::nn::detail::ConvNdOptions<D>& options) {
  typename ConvFn<D>::Options conv;
  conv.stride(options.stride()).dilation(options.dilation()).groups(options.groups());
  if (bias.defined()) conv.bias(bias);
  if (!std::holds_alternative<torch::enumtype::kZeros>(options.padding_mode())) {
    return ConvFn<D>::run(pad_for_mode<D>(h, options), w, conv.padding(0));
  }
  return ConvFn<D>::run(h, w, conv.padding(options.padding()));
}

}  // namespace

torch::Tensor ConvertedWeight::dequantized(const std::vector<std::int64_t>& shape) const {
  if (float_weight) return codes;
  if (group_size) {
    const torch::Tensor c2 = codes.reshape({codes.size(0), -1});
    return qatkit::dequantize_affine(c2, scale, zero_point, std::nullopt, group_size, dtype).reshape(shape);
  }
  if (binary && !group_size) {
    // a binary channel with scale 0 (all its weights zero: pruned, dead; codes are +-1) is (+-)0, as
    // the quantizer's sign * 0 (Python's convert._dequantize); masked without a host read, and
    // x * 1 leaves every other weight's bits
    const torch::Tensor live = scale > 0;
    const torch::Tensor w =
        qatkit::dequantize_affine(codes, torch::where(live, scale, torch::ones_like(scale)), zero_point, axis,
                                  std::nullopt, dtype);
    std::vector<std::int64_t> view(static_cast<std::size_t>(codes.dim()), 1);
    if (axis) view[static_cast<std::size_t>(*axis < 0 ? *axis + codes.dim() : *axis)] = -1;
    return w * live.reshape(view).to(w.scalar_type());
  }
  return qatkit::dequantize_affine(codes, scale, zero_point, axis, std::nullopt, dtype);
}

// ---------------------------------------------------------------- weight quantizer

namespace {

/// `scale` rounded to QuantSpec.scale_dtype and back to float32 (Python's quantizers.round_scale):
/// round to nearest, subnormals kept; a positive scale that would round to 0 becomes the dtype's
/// smallest positive value, an overflow its largest finite one; 0 stays 0.
torch::Tensor round_scale(const torch::Tensor& scale, const std::string& scale_dtype) {
  if (scale_dtype == "float32") return scale;
  const bool half = scale_dtype == "float16";
  const auto dt = half ? torch::kHalf : torch::kBFloat16;
  const double max = half ? 65504.0 : 3.3895313892515355e38;
  const double smallest = half ? std::ldexp(1.0, -24) : std::ldexp(1.0, -133);
  const torch::Tensor r = scale.clamp_max(max).to(dt).to(torch::kFloat);
  return torch::where((scale > 0) & (r == 0), torch::full_like(r, smallest), r);
}

/// A ternary / binary fake-quantized weight `y` (= codes * scale) recomputed with the scale rounded
/// to the spec's scale dtype; the gradient stays y's (the op's estimator).
torch::Tensor with_scale(const torch::Tensor& y, const torch::Tensor& scale, std::optional<std::int64_t> axis,
                         const std::string& scale_dtype) {
  if (scale_dtype == "float32") return y;
  torch::Tensor r = round_scale(scale, scale_dtype);
  if (axis) {
    std::vector<std::int64_t> shape(static_cast<std::size_t>(y.dim()), 1);
    shape[0] = -1;
    r = r.reshape(shape);
  }
  const torch::Tensor codes = torch::sign(y.detach());
  return y + (codes * r.to(y.scalar_type()) - y).detach();
}

}  // namespace

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
  torch::Tensor init;
  if (weight_init_.defined()) {
    init = initial_scale(weight_init_);
    prepared_init_ = init.clone();
  } else {
    init = torch::ones({axis_ ? weight_shape_[0] : 1});
    prepared_init_ = torch::Tensor();
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

torch::Tensor WeightFakeQuantizerImpl::initial_scale(const torch::Tensor& weight) const {
  const double qp = static_cast<double>(spec_.quant_max());
  const torch::Tensor w = weight.detach().to(torch::kFloat);
  const torch::Tensor init = axis_ ? w.abs().reshape({w.size(0), -1}).mean(1) * 2 / std::sqrt(qp)
                                   : w.abs().mean().reshape({1}) * 2 / std::sqrt(qp);
  return init.clamp_min(1e-6);
}

void WeightFakeQuantizerImpl::check_weight_since_prepare(const torch::Tensor& weight) {
  if (!prepared_init_.defined() || spec_.scale != "learned") return;
  const torch::Tensor ref = prepared_init_;
  prepared_init_ = torch::Tensor();  // once
  torch::NoGradGuard ng;
  // set or trained since; frozen (requires_grad false) on purpose
  if (!scale_.requires_grad() || !torch::equal(scale_.detach(), ref.to(scale_.device()))) return;
  const torch::Tensor want = initial_scale(weight.to(scale_.device()));
  if (!torch::equal(want, scale_.detach())) scale_.copy_(want);
}

torch::Tensor WeightFakeQuantizerImpl::forward(const torch::Tensor& w) {
  const QuantSpec& s = spec_;
  if (s.kind == "ternary") {
    const torch::Tensor y = qatkit::ternarize(w, s.method, axis_);
    if (s.scale_dtype == "float32") return y;
    return with_scale(y, std::get<1>(qatkit::ternary_codes(w.detach(), s.method, axis_)), axis_, s.scale_dtype);
  }
  if (s.kind == "binary") {
    std::optional<torch::Tensor> seed;
    if (s.stochastic && is_training()) {
      // +1 per training call, except inside a backward pass (a recomputed forward draws the
      // bits its first run drew): the op Python's quantizer calls too
      static const auto advance = c10::Dispatcher::singleton()
                                      .findSchemaOrThrow("qatkit::_advance_step", "")
                                      .typed<at::Tensor(at::Tensor&)>();
      seed = advance.call(step_);
    }
    const torch::Tensor y = qatkit::binarize(w, s.method, axis_, s.estimator, 1.0, seed);
    if (s.scale_dtype == "float32") return y;
    return with_scale(y, std::get<1>(qatkit::binary_codes(w.detach(), s.method, axis_)), axis_, s.scale_dtype);
  }
  if (s.scale == "learned") {
    return qatkit::fake_quantize_learnable(w, scale_, zero_point_, s.quant_min(), s.quant_max(), axis_, std::nullopt,
                                           grad_factor_);
  }
  if (group_size) {
    const torch::Tensor w2 = w.reshape({w.size(0), -1});
    auto [sc, zp] =
        qatkit::choose_qparams(w2.detach(), s.quant_min(), s.quant_max(), s.symmetric, std::nullopt, group_size);
    return qatkit::fake_quantize(w2, round_scale(sc, s.scale_dtype), zp, s.quant_min(), s.quant_max(), std::nullopt,
                                 group_size)
        .reshape(w.sizes());
  }
  auto [sc, zp] = qatkit::choose_qparams(w.detach(), s.quant_min(), s.quant_max(), s.symmetric, axis_);
  return qatkit::fake_quantize(w, round_scale(sc, s.scale_dtype), zp, s.quant_min(), s.quant_max(), axis_);
}

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> WeightFakeQuantizerImpl::codes(const torch::Tensor& w) {
  torch::NoGradGuard ng;
  const QuantSpec& s = spec_;
  const torch::Tensor wd = w.detach();
  if (s.kind == "ternary" || s.kind == "binary") {
    auto [c, scale] = s.kind == "ternary" ? qatkit::ternary_codes(wd, s.method, axis_)
                                          : qatkit::binary_codes(wd, s.method, axis_);
    scale = round_scale(scale, s.scale_dtype);  // what forward() computed with
    // an all-zero ternary channel (codes all 0) takes scale 1; an all-zero binary channel keeps 0:
    // its codes are +-1, and forward() gave +-0 (Python's convert.weight_codes)
    if (s.kind == "ternary") scale = torch::where(scale > 0, scale, torch::ones_like(scale));
    return {c, scale, torch::zeros(scale.sizes(), torch::kInt)};
  }
  torch::Tensor sc, zp;
  if (s.scale == "learned") {
    sc = scale_.detach().clamp_min(std::numeric_limits<float>::epsilon());
    zp = zero_point_.detach();
  } else if (group_size) {
    std::tie(sc, zp) = qatkit::choose_qparams(wd.reshape({wd.size(0), -1}), s.quant_min(), s.quant_max(), s.symmetric,
                                              std::nullopt, group_size);
  } else {
    std::tie(sc, zp) = qatkit::choose_qparams(wd, s.quant_min(), s.quant_max(), s.symmetric, axis_);
  }
  // the kernels' effective qparams: learned zero points are rounded and clamped into range
  sc = round_scale(sc.to(torch::kFloat), s.scale_dtype);
  zp = zp.to(torch::kFloat).round().clamp(static_cast<double>(s.quant_min()), static_cast<double>(s.quant_max()));
  // qparams leave QAT here: check their values once on any device (the CUDA kernels do not)
  TORCH_CHECK_VALUE((at::isfinite(sc) & (sc >= std::numeric_limits<float>::min())).all().item<bool>(),
                    fmt::format("convert: weight quantizer '{}' has a scale that is not positive, finite and normal",
                                qualified_name));
  const auto dtype = s.quant_min() >= -128 && s.quant_max() <= 127 ? torch::kChar : torch::kInt;
  torch::Tensor c;
  if (group_size) {
    c = qatkit::quantize_affine(wd.reshape({wd.size(0), -1}), sc, zp, s.quant_min(), s.quant_max(), std::nullopt,
                                group_size, dtype)
            .reshape(wd.sizes());
  } else {
    c = qatkit::quantize_affine(wd, sc, zp, s.quant_min(), s.quant_max(), axis_, std::nullopt, dtype);
  }
  return {c, sc, zp.to(torch::kInt)};
}

// ---------------------------------------------------------------- activation quantizer

ActFakeQuantizerImpl::ActFakeQuantizerImpl(QuantSpec spec, std::int64_t channels)
    : spec_(spec.validated()), channels_(channels) {
  TORCH_CHECK_VALUE(spec_.scale_dtype == "float32",
                    fmt::format("QuantSpec.scale_dtype '{}' is for weight scales; activation scales stay float32", spec_.scale_dtype));
  // the histogram observers (percentile, kl, mse) are Python-only: refuse them rather than observe
  // with another rule
  TORCH_CHECK_VALUE(spec_.kind != "int" || spec_.scale != "static" || spec_.observer == "minmax" ||
                        spec_.observer == "moving_average",
                    fmt::format("QuantSpec.observer '{}' is a Python histogram observer; the C++ layers support "
                                "'minmax' and 'moving_average'",
                                spec_.observer));
  // a static range per group of channels is not implemented: observing per tensor under a
  // per-group spec would be a silent wrong answer
  TORCH_CHECK_VALUE(spec_.kind != "int" || spec_.scale != "static" || spec_.granularity != "per_group",
                    "QuantSpec.granularity 'per_group' for activations needs scale='dynamic' (ranges per token and "
                    "group, computed at each call); static activation ranges are 'per_tensor' or 'per_channel'");
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

bool ActFakeQuantizerImpl::has_observed() const {
  if (running_min_.defined()) return (running_min_ <= running_max_).all().item<bool>();
  if (initialized_.defined()) return initialized_flag_ || initialized_.item<int>() != 0;  // (see forward)
  return true;  // dynamic / binary: nothing to observe
}

void ActFakeQuantizerImpl::freeze() {
  enable_observer(false);
  frozen_ = true;
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
  sync_flags();
}

void ActFakeQuantizerImpl::sync_flags() {
  fq_enabled_ = fake_quant_on_.item<int>() != 0;
  initialized_flag_ = initialized_.defined() && initialized_.item<int>() != 0;
}

torch::Tensor ActFakeQuantizerImpl::forward(const torch::Tensor& x) {
  const QuantSpec& s = spec_;
  const bool training = is_training() && !frozen_;
  if (training) ++observations;
  const bool static_int = s.kind == "int" && s.scale == "static";
  // static observers read the flag inside the op; the other kinds branch on its host copy
  if (!static_int && !fq_enabled_) return x;
  if (s.kind == "binary") return qatkit::binarize(x, s.method, axis_, s.estimator);
  if (s.scale == "dynamic") {
    return s.granularity == "per_token" ? qatkit::quantize_per_token(x, s.quant_max())
                                        : qatkit::quantize_per_tensor_dynamic(x, s.quant_max());
  }
  if (s.scale == "learned") {
    // the buffer may have been written in place since the host copy was taken (an EMA / averaged
    // copy of the model made before training, its buffers copied in): never re-initialize then
    if (!initialized_flag_ && initialized_.item<int>() != 0) initialized_flag_ = true;
    if (!initialized_flag_ && !training) {
      // eval mode observes nothing (Python's rule): the initial step size, said once
      TORCH_WARN_ONCE("activation quantizer '", qualified_name,
                      "' runs before observing any data: its step size is the initial 1, not a learned range; "
                      "train (or calibrate) in training mode first");
    } else if (!initialized_flag_ && x.numel() == 0) {
      return x.clone();  // no range yet: the next batch initializes
    }
    if (!initialized_flag_ && training) {
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
      x, running_min_, running_max_, scale_, zero_point_, training ? observer_on_ : off_, fake_quant_on_,
      s.momentum, s.observer == "moving_average", s.quant_min(), s.quant_max(), s.symmetric, axis_);
}

// ---------------------------------------------------------------- QuantLinear / BitLinear

/// After a layer built from options copies the float module's initial weight in: a fresh weight
/// quantizer on it, so a learned scale starts from that weight (as Python's from_float), not from
/// reset()'s zero placeholder.
template <class Layer>
void reseed_weight_quantizer(Layer& self) {
  if (self.layer_spec.weight) {
    self.weight_fake_quant =
        self.replace_module("weight_fake_quant", WeightFakeQuantizer(*self.layer_spec.weight, self.weight));
  }
}

QuantLinearImpl::QuantLinearImpl(torch::nn::LinearOptions opts, LayerSpec spec)
    : options(std::move(opts)), layer_spec(std::move(spec)) {
  reset();
  // the float module's initialization
  torch::nn::Linear init(options);
  weight.data().copy_(init->weight);
  if (bias.defined()) bias.data().copy_(init->bias);
  reseed_weight_quantizer(*this);
}

QuantLinearImpl::QuantLinearImpl(const torch::nn::Linear& linear, LayerSpec spec)
    : options(linear->options), layer_spec(std::move(spec)) {
  weight = register_parameter("weight", linear->weight);
  if (options.bias()) bias = register_parameter("bias", linear->bias);
  attach();
}

void QuantLinearImpl::reset() {
  // zeros, not torch::empty: the weight quantizer attached below reads it (a learned scale's
  // initial value, a loader's convert() before the file's codes replace it), so no path may see
  // uninitialized memory
  weight = register_parameter("weight", torch::zeros({options.out_features(), options.in_features()}));
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

torch::Tensor QuantLinearImpl::quantized_weight() {
  if (frozen.converted) return frozen.dequantized({options.out_features(), options.in_features()});
  return weight_fake_quant ? weight_fake_quant(weight) : weight;
}

void QuantLinearImpl::convert() {
  convert_weight(*this, frozen, weight_fake_quant, input_fake_quant, weight, &bias, weight);
}

namespace {

// A layer in integer compute quantizes float32 inputs. Under autocast a bfloat16 / float16 input (a
// float layer before it ran in the autocast dtype) widens exactly to float32, as autocast widens the
// inputs of its float32 ops (Python: integer.float32_input); other dtypes meet the TypeError below.
torch::Tensor autocast_float32(const torch::Tensor& x) {
  const auto t = x.scalar_type();
  if ((t == torch::kBFloat16 || t == torch::kHalf) && at::autocast::is_autocast_enabled(x.device().type())) {
    return x.to(torch::kFloat);
  }
  return x;
}

}  // namespace

namespace {

// LearnedParamWatch (nn.h): the learned quantizer parameters of a layer's weight and input
// quantizers (the only parameters a quantizer registers), checked in a training forward.
void watch_learned(LearnedParamWatch& st, const torch::Tensor& weight, const WeightFakeQuantizer& wq,
                   const ActFakeQuantizer& aq, bool training) {
  if (st.warned || !training || !torch::GradMode::is_enabled() || !weight.defined() || !weight.requires_grad()) {
    return;
  }
  const bool wl = wq && wq->spec().scale == "learned", al = aq && aq->spec().scale == "learned";
  if (!wl && !al) return;
  // (names only for the warning: this runs in every training forward of an LSQ layer)
  std::vector<torch::Tensor> params;
  auto add = [&](const torch::nn::Module& m) {
    for (const auto& p : m.parameters(/*recurse=*/false)) {
      if (p.requires_grad()) params.push_back(p);
    }
  };
  if (wl) add(*wq);
  if (al) add(*aq);
  // an optimizer reset the weight's gradient since the last backward, and not theirs
  bool suspect = !params.empty() && !weight.grad().defined();
  for (const auto& p : params) suspect = suspect && p.grad().defined();
  if (!suspect) {
    st.stale = 0;
    st.values.clear();
    return;
  }
  bool unchanged = st.values.size() == params.size();
  for (std::size_t i = 0; unchanged && i < params.size(); ++i) unchanged = torch::equal(params[i], st.values[i]);
  st.stale = unchanged ? st.stale + 1 : 0;
  st.values.clear();
  {
    torch::NoGradGuard ng;
    for (const auto& p : params) st.values.push_back(p.detach().clone());
  }
  if (st.stale >= 3) {
    std::string names;
    auto name = [&](const torch::nn::Module& m, const std::string& qualified) {
      for (const auto& item : m.named_parameters(/*recurse=*/false)) {
        if (item.value().requires_grad()) {
          names += (names.empty() ? "'" : ", '") + (qualified.empty() ? m.name() : qualified) + "." + item.key() + "'";
        }
      }
    };
    if (wl) name(*wq, wq->qualified_name);
    if (al) name(*aq, aq->qualified_name);
    TORCH_WARN(fmt::format(
        "qatkit: the learned quantizer parameters {} kept their gradients and values over 3 optimizer steps that "
        "reset their layer's weight gradient: the optimizer steps the weight but does not hold them (was it built "
        "before prepare_qat?), so the step sizes stay as initialized. Build the optimizer from the prepared model's "
        "parameters(), or add them; to keep them fixed on purpose, set requires_grad_(false) on them",
        names));
    st.warned = true;
    st.values.clear();
  }
}

// A QAT layer's training-forward checks of its learned step sizes: weights written since
// prepare_qat (check_weight_since_prepare) and an optimizer that does not hold them (watch_learned).
template <class Layer>
void learned_checks(Layer& self, const ActFakeQuantizer& input_quantizer) {
  if (self.frozen.converted) return;
  if (self.weight_fake_quant && self.is_training()) self.weight_fake_quant->check_weight_since_prepare(self.weight);
  watch_learned(self.learned_watch, self.weight, self.weight_fake_quant, input_quantizer, self.is_training());
}

}  // namespace

torch::Tensor QuantLinearImpl::forward(const torch::Tensor& x) {
  // one row (torch::nn::Linear takes it): the input quantizer sees it as a batch of one, as Python's
  if (x.dim() == 1) return forward(x.unsqueeze(0)).squeeze(0);
  torch::Tensor y = [&]() -> torch::Tensor {
    if (frozen.integer && detail::plan_stale(*frozen.integer, frozen, bias, input_fake_quant)) {
      detail::replan(*this);  // an in-place edit, or a member assigned a new tensor
    }
    // in integer compute the layer (BitLinear's RMSNorm included) is a float32 layer
    const torch::Tensor x32 = frozen.integer ? autocast_float32(x) : x;
    torch::Tensor h = rms_norm_ ? at::rms_norm(x32, {options.in_features()}, std::nullopt, 1e-6) : x32;
    if (frozen.integer && h.scalar_type() == torch::kFloat && (!frozen.integer->binary_input || h.dim() >= 2)) {
      // the kernel quantizes the input itself (and divides it by the smoothing, if any); the packed
      // layouts pad K, so the ops alone take an input a few features short or long
      TORCH_CHECK_VALUE(h.dim() == 0 || h.size(-1) == options.in_features(),
                        fmt::format("linear (in_features={}): the input's last dim (features) is {}, the layer takes {}",
                                    options.in_features(), h.size(-1), options.in_features()));
      const torch::Tensor divisor = smooth.defined() ? smooth.to(h.device(), torch::kFloat) : smooth;
      if (h.device().is_cpu() && frozen.integer->weight.device().is_cpu()) {
        return detail::integer_linear(*frozen.integer, h, divisor);
      }
      if (h.device().is_cuda() && h.device() == frozen.codes.device()) {
        // CUDA: the plan in the row layouts on the GPU (the same bits as the CPU kernels)
        if (const IntegerKernelPlan* p = detail::cuda_linear_plan(*this)) return detail::integer_linear(*p, h, divisor);
      }
    }
    // Python's QuantizedLinear: a float32 layer in integer compute raises on another dtype (the float
    // layer's at::linear raises too) rather than quantizing it as if it were float32
    TORCH_CHECK_TYPE(!frozen.integer || h.scalar_type() == torch::kFloat,
                     fmt::format("linear (in_features={}): computes in integer form from float32 inputs, got a {} "
                                 "input: cast the input (x.to(torch::kFloat))",
                                 options.in_features(), c10::toString(h.scalar_type())));
    if (smooth.defined()) h = h / smooth.to(h.device(), h.scalar_type());  // Python: x / smooth.to(x.dtype)
    learned_checks(*this, input_fake_quant);
    if (input_fake_quant) h = input_fake_quant(h);
    return at::linear(h, quantized_weight(), bias.defined() ? std::optional<torch::Tensor>(bias) : std::nullopt);
  }();
  // a fused activation (load fuses a ReLU / ReLU6 / Hardtanh after a packed Linear into it):
  // torch.clamp's values, in place on the layer's fresh output (Python's BoundOp.clamped)
  if (frozen.clamped()) y.clamp_(frozen.clamp_min, frozen.clamp_max);
  return y;
}

BitLinearImpl::BitLinearImpl(torch::nn::LinearOptions opts, LayerSpec spec)
    : QuantLinearImpl(std::move(opts), std::move(spec)) {
  rms_norm_ = true;
}

BitLinearImpl::BitLinearImpl(const torch::nn::Linear& linear, LayerSpec spec)
    : QuantLinearImpl(linear, std::move(spec)) {
  rms_norm_ = true;
}

std::shared_ptr<torch::nn::Module> BitLinearImpl::clone(const std::optional<torch::Device>& device) const {
  // the QuantLinear part cloned as Cloneable does it (fresh parameters, buffers and children),
  // then moved into a BitLinear
  auto base = std::static_pointer_cast<QuantLinearImpl>(QuantLinearImpl::clone(device));
  auto copy = std::make_shared<BitLinearImpl>(*this);
  static_cast<QuantLinearImpl&>(*copy) = *base;
  return copy;
}

// ---------------------------------------------------------------- QuantConv1d / QuantConv2d

namespace {

template <std::size_t D, class Options>
torch::nn::detail::ConvNdOptions<D> nd_options(const Options& o) {
  torch::nn::detail::ConvNdOptions<D> nd(o.in_channels(), o.out_channels(), o.kernel_size());
  nd.stride(o.stride()).padding(o.padding()).dilation(o.dilation()).groups(o.groups()).bias(o.bias());
  nd.padding_mode(o.padding_mode());
  return nd;
}

template <std::size_t D>
std::vector<std::int64_t> conv_weight_shape(const torch::nn::detail::ConvNdOptions<D>& o) {
  std::vector<std::int64_t> shape{o.out_channels(), o.in_channels() / o.groups()};
  for (std::size_t d = 0; d < D; ++d) shape.push_back(o.kernel_size()->at(d));
  return shape;
}

/// The quantizers of a conv layer: per-channel activations along dim 1 (or the last dim counted
/// from the end, as Python allows).
template <class Layer>
void attach_conv(Layer& self) {
  if (self.layer_spec.weight) {
    self.weight_fake_quant =
        self.register_module("weight_fake_quant", WeightFakeQuantizer(*self.layer_spec.weight, self.weight));
  }
  if (self.layer_spec.activation) {
    self.input_fake_quant = self.register_module(
        "input_fake_quant", ActFakeQuantizer(*self.layer_spec.activation, self.options.in_channels()));
  }
}

}  // namespace

namespace {

// The members QuantConv1d and QuantConv2d share, written once for both.

template <std::size_t D, class Layer, class Conv>
void conv_init(Layer& self, const Conv& init) {  // the float module's initialization
  self.reset();
  self.weight.data().copy_(init->weight);
  if (self.bias.defined()) self.bias.data().copy_(init->bias);
  reseed_weight_quantizer(self);
}

template <class Layer, class Conv>
void conv_share(Layer& self, const Conv& conv) {  // share the float module's parameters
  self.weight = self.register_parameter("weight", conv->weight);
  if (self.options.bias()) self.bias = self.register_parameter("bias", conv->bias);
  attach_conv(self);
}

template <std::size_t D, class Layer>
void conv_reset(Layer& self) {
  self.weight = self.register_parameter("weight", torch::zeros(conv_weight_shape<D>(self.options)));  // see QuantLinear
  if (self.options.bias()) self.bias = self.register_parameter("bias", torch::zeros({self.options.out_channels()}));
  attach_conv(self);
}

template <std::size_t D, class Layer>
torch::Tensor conv_quantized_weight(Layer& self) {
  if (self.frozen.converted) return self.frozen.dequantized(conv_weight_shape<D>(self.options));
  return self.weight_fake_quant ? self.weight_fake_quant(self.weight) : self.weight;
}

/// A converted conv in integer compute: conv2d_int8 (padding modes other than zeros pad x first:
/// copies, which quantize to copies of codes; 'same' padding with an odd total zero-pads its extra
/// row / column on the right first: x = 0 quantizes to the zero point, the kernels' padding code;
/// Conv1d as a 1 x k Conv2d).
template <std::size_t D, class Layer>
torch::Tensor integer_conv_forward(Layer& self, torch::Tensor x, const IntegerKernelPlan& plan) {
  const auto& o = self.options;
  // the packed layouts pad K (to 4, 32 or 128 codes): the ops alone take a few channels short or long
  TORCH_CHECK_VALUE(x.size(1) == o.in_channels(),
                    fmt::format("conv (in_channels={}): the input's dim 1 (channels) is {}, the layer takes {}",
                                o.in_channels(), x.size(1), o.in_channels()));
  std::vector<std::int64_t> pad(D, 0);
  if (!std::holds_alternative<torch::enumtype::kZeros>(o.padding_mode())) {
    x = pad_for_mode<D>(x, o);
  } else {
    const detail::ConvPads p = detail::conv_pads<D>(o);
    pad = p.left;
    if (!p.symmetric()) {
      std::vector<std::int64_t> extra;
      for (std::size_t d = D; d-- > 0;) extra.insert(extra.end(), {0, p.right[d] - p.left[d]});
      x = torch::nn::functional::pad(x, torch::nn::functional::PadFuncOptions(extra));
    }
  }
  const auto& f = self.frozen;  // (a fused activation: the kernels clamp)
  if constexpr (D == 1) {
    const torch::Tensor y = detail::integer_conv(plan, x.unsqueeze(2), {1, o.kernel_size()->at(0)},
                                                 {1, o.stride()->at(0)}, {0, pad[0]}, {1, o.dilation()->at(0)},
                                                 f.clamp_min, f.clamp_max);
    return y.squeeze(2);
  } else {
    return detail::integer_conv(plan, x, *o.kernel_size(), *o.stride(), pad, *o.dilation(), f.clamp_min, f.clamp_max);
  }
}

template <std::size_t D, class Layer>
torch::Tensor conv_forward_on(Layer& self, const torch::Tensor& x) {
  if (self.frozen.integer && x.scalar_type() == torch::kFloat && x.dim() == static_cast<std::int64_t>(D) + 2) {
    if (x.device().is_cpu() && self.frozen.integer->weight.device().is_cpu()) {
      return integer_conv_forward<D>(self, x, *self.frozen.integer);
    }
    if (x.device().is_cuda() && x.device() == self.frozen.codes.device()) {
      // CUDA: conv2d_int8 / conv2d_w1a1 (im2col, then the Linear kernels) on the plan in row layouts on the GPU
      if (const IntegerKernelPlan* p = detail::cuda_conv_plan(self)) return integer_conv_forward<D>(self, x, *p);
    }
  }
  TORCH_CHECK_TYPE(!self.frozen.integer || x.scalar_type() == torch::kFloat,
                   fmt::format("conv (in_channels={}): computes in integer form from float32 inputs, got a {} "
                               "input: cast the input (x.to(torch::kFloat))",
                               self.options.in_channels(), c10::toString(x.scalar_type())));
  learned_checks(self, self.input_fake_quant);
  const torch::Tensor h = self.input_fake_quant ? self.input_fake_quant(x) : x;
  const torch::Tensor y = conv_nd<D>(h, conv_quantized_weight<D>(self), self.bias, self.options);
  // a fused activation in float math: torch.clamp, the kernels' values
  return self.frozen.clamped() ? torch::clamp(y, self.frozen.clamp_min, self.frozen.clamp_max) : y;
}


template <std::size_t D, class Layer>
torch::Tensor conv_forward(Layer& self, const torch::Tensor& x) {
  // unbatched (C, L) / (C, H, W), as torch's convs take it: a batch of one, so per-sample and
  // per-channel input quantizers and the integer kernels see their dims (Python's QuantConv*d)
  if (x.dim() == static_cast<std::int64_t>(D) + 1) return conv_forward<D>(self, x.unsqueeze(0)).squeeze(0);
  if (self.frozen.integer && detail::plan_stale(*self.frozen.integer, self.frozen, self.bias, self.input_fake_quant)) {
    detail::replan(self);  // an in-place edit, or a member assigned a new tensor
  }
  if (self.frozen.integer) return conv_forward_on<D>(self, autocast_float32(x));
  return conv_forward_on<D>(self, x);
}

}  // namespace

QuantConv2dImpl::QuantConv2dImpl(torch::nn::Conv2dOptions opts, LayerSpec spec)
    : options(nd_options<2>(opts)), layer_spec(std::move(spec)) {
  conv_init<2>(*this, torch::nn::Conv2d(opts));
}

QuantConv2dImpl::QuantConv2dImpl(const torch::nn::Conv2d& conv, LayerSpec spec)
    : options(conv->options), layer_spec(std::move(spec)) {
  conv_share(*this, conv);
}

void QuantConv2dImpl::reset() { conv_reset<2>(*this); }
void QuantConv2dImpl::attach() { attach_conv(*this); }
torch::Tensor QuantConv2dImpl::quantized_weight() { return conv_quantized_weight<2>(*this); }
torch::Tensor QuantConv2dImpl::forward(const torch::Tensor& x) { return conv_forward<2>(*this, x); }
void QuantConv2dImpl::convert() {
  convert_weight(*this, frozen, weight_fake_quant, input_fake_quant, weight, &bias, weight);
}

QuantConv1dImpl::QuantConv1dImpl(torch::nn::Conv1dOptions opts, LayerSpec spec)
    : options(nd_options<1>(opts)), layer_spec(std::move(spec)) {
  conv_init<1>(*this, torch::nn::Conv1d(opts));
}

QuantConv1dImpl::QuantConv1dImpl(const torch::nn::Conv1d& conv, LayerSpec spec)
    : options(conv->options), layer_spec(std::move(spec)) {
  conv_share(*this, conv);
}

void QuantConv1dImpl::reset() { conv_reset<1>(*this); }
void QuantConv1dImpl::attach() { attach_conv(*this); }
torch::Tensor QuantConv1dImpl::quantized_weight() { return conv_quantized_weight<1>(*this); }
torch::Tensor QuantConv1dImpl::forward(const torch::Tensor& x) { return conv_forward<1>(*this, x); }
void QuantConv1dImpl::convert() {
  convert_weight(*this, frozen, weight_fake_quant, input_fake_quant, weight, &bias, weight);
}

// ---------------------------------------------------------------- QuantConvBn2d

QuantConvBn2dImpl::QuantConvBn2dImpl(const torch::nn::Conv2d& conv, const torch::nn::BatchNorm2d& norm, LayerSpec spec)
    : options(conv->options), layer_spec(std::move(spec)), bn(norm) {
  const auto& bo = bn->options;
  TORCH_CHECK_VALUE(bo.num_features() == options.out_channels(),
                    fmt::format("QuantConvBn2d: bn.num_features ({}) must equal conv.out_channels ({})",
                                bo.num_features(), options.out_channels()));
  TORCH_CHECK_VALUE(bo.affine() && bo.track_running_stats(),
                    "QuantConvBn2d: the BatchNorm2d must be affine and track running statistics");
  weight = register_parameter("weight", conv->weight);
  if (options.bias()) bias = register_parameter("bias", conv->bias);
  bn = register_module("bn", bn);
  attach();
}

void QuantConvBn2dImpl::reset() {
  // Cloneable::clone re-runs reset() on the copy: rebuild the parameters and quantizers from the
  // (copied) options, as the other layers do; clone() then copies the values over
  weight = register_parameter("weight", torch::zeros(conv_weight_shape<2>(options)));  // see QuantLinear
  if (options.bias()) bias = register_parameter("bias", torch::zeros({options.out_channels()}));
  bn = register_module("bn", torch::nn::BatchNorm2d(bn ? bn->options : torch::nn::BatchNorm2dOptions(options.out_channels())));
  attach();
}

void QuantConvBn2dImpl::attach() {
  attach_conv(*this);
  bn_frozen_ = register_buffer("bn_frozen", torch::zeros({1}, torch::kUInt8));
}

void QuantConvBn2dImpl::load(torch::serialize::InputArchive& archive) {
  torch::nn::Module::load(archive);
  bn_frozen_flag_ = bn_frozen_.item<int>() != 0;
}

void QuantConvBn2dImpl::freeze_bn(bool on) {
  bn_frozen_.fill_(on ? 1 : 0);
  bn_frozen_flag_ = on;
}

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> QuantConvBn2dImpl::folded() {
  const torch::Tensor std = torch::sqrt(bn->running_var + bn->options.eps());
  const torch::Tensor factor = bn->weight / std;
  const torch::Tensor w = weight * factor.reshape({-1, 1, 1, 1});
  const torch::Tensor b = bias.defined() ? bias : torch::zeros_like(bn->running_mean);
  return {factor, w, bn->bias + (b - bn->running_mean) * factor};
}

bool QuantConvBn2dImpl::fold_invariant() const {
  // Python's QuantConvBn2d._is_fold_invariant: Q(W f) / f == Q(W) for per-channel / per-group
  // symmetric quantizers (and sign quantizers with per-channel magnitudes)
  if (!weight_fake_quant) return true;
  const QuantSpec& s = weight_fake_quant->spec();
  const std::string& g = weight_fake_quant->granularity;
  if ((g != "per_channel" && g != "per_group") || s.scale == "learned") return false;
  if (s.kind == "int") return s.symmetric && s.is_signed && (s.narrow_range || s.quant_min() == -s.quant_max());
  return s.kind == "ternary" || s.method == "none" || s.method == "mean_abs";
}

torch::Tensor QuantConvBn2dImpl::forward(const torch::Tensor& x) {
  // converted: a conv with the folded weight and bias, QuantConv2d's forward (set_compute's integer
  // kernels, or the float math of the dequantized weight)
  if (frozen.converted) return conv_forward<2>(*this, x);
  if (x.dim() == 3) return forward(x.unsqueeze(0)).squeeze(0);  // unbatched, as QuantConv2d
  learned_checks(*this, input_fake_quant);
  const torch::Tensor h = input_fake_quant ? input_fake_quant(x) : x;
  auto q = [this](const torch::Tensor& w) { return weight_fake_quant ? weight_fake_quant(w) : w; };
  if (bn_frozen_flag_ || !is_training()) {
    auto [factor, w, b] = folded();
    return conv_nd<2>(h, q(w), b, options);
  }
  torch::Tensor wq_unfolded;
  if (fold_invariant()) {
    wq_unfolded = q(weight);
  } else {
    auto [factor, w, b] = folded();
    wq_unfolded = q(w) / factor.reshape({-1, 1, 1, 1});
  }
  torch::Tensor y = conv_nd<2>(h, wq_unfolded, torch::Tensor(), options);
  if (bias.defined()) y = y + bias.reshape({1, -1, 1, 1});
  const auto& bo = bn->options;
  double momentum = bo.momentum().has_value() ? *bo.momentum() : 0.0;
  if (bn->num_batches_tracked.defined()) {
    torch::NoGradGuard ng;
    bn->num_batches_tracked.add_(1);
    if (!bo.momentum().has_value()) momentum = 1.0 / bn->num_batches_tracked.item<double>();
  }
  return at::batch_norm(y, bn->weight, bn->bias, bn->running_mean, bn->running_var, true, momentum, bo.eps(), true);
}

void QuantConvBn2dImpl::convert() {
  torch::Tensor w, b;
  {
    torch::NoGradGuard ng;
    std::tie(std::ignore, w, b) = folded();
  }
  // the converted layer is a conv with the folded weight and bias (Python: QuantizedConv2d)
  if (!bias.defined()) bias = register_parameter("bias", b.detach().clone());
  else bias.data().copy_(b);
  options.bias(true);
  convert_weight(*this, frozen, weight_fake_quant, input_fake_quant, weight, &bias, w);
  unregister_module("bn");
  bn = nullptr;
}

// ---------------------------------------------------------------- QuantEmbedding

QuantEmbeddingImpl::QuantEmbeddingImpl(torch::nn::EmbeddingOptions opts, LayerSpec spec)
    : options(std::move(opts)), layer_spec(std::move(spec)) {
  reset();
  torch::nn::Embedding init(options);
  weight.data().copy_(init->weight);
  reseed_weight_quantizer(*this);
}

QuantEmbeddingImpl::QuantEmbeddingImpl(const torch::nn::Embedding& emb, LayerSpec spec)
    : options(emb->options), layer_spec(std::move(spec)) {
  weight = register_parameter("weight", emb->weight);
  attach();
}

void QuantEmbeddingImpl::reset() {
  weight = register_parameter("weight", torch::zeros({options.num_embeddings(), options.embedding_dim()}));  // see QuantLinear
  attach();
}

void QuantEmbeddingImpl::attach() {
  layer_spec.activation.reset();  // the input is indices
  if (layer_spec.weight) {
    weight_fake_quant = register_module("weight_fake_quant", WeightFakeQuantizer(*layer_spec.weight, weight));
    if (options.sparse()) {
      TORCH_WARN("QuantEmbedding: sparse=True gradients cannot flow through the weight's fake quantization; the QAT "
                 "layer produces dense gradients (use a dense optimizer such as Adam for it)");
    }
  }
}

torch::Tensor QuantEmbeddingImpl::quantized_weight() {
  if (frozen.converted) return frozen.dequantized({options.num_embeddings(), options.embedding_dim()});
  return weight_fake_quant ? weight_fake_quant(weight) : weight;
}

void QuantEmbeddingImpl::convert() {
  convert_weight(*this, frozen, weight_fake_quant, input_fake_quant, weight, nullptr, weight);
}

torch::Tensor QuantEmbeddingImpl::forward(const torch::Tensor& indices) {
  // F.embedding: max_norm renormalizes the rows it looks up in place, here in the (temporary)
  // quantized table, as the Python layer does
  learned_checks(*this, nullptr);
  torch::Tensor w = quantized_weight();
  if (options.max_norm()) {
    torch::NoGradGuard ng;
    at::embedding_renorm_(w, indices.contiguous(), *options.max_norm(), options.norm_type());
  }
  return at::embedding(w, indices, options.padding_idx().value_or(-1), options.scale_grad_by_freq(),
                       options.sparse() && !weight_fake_quant && !frozen.converted);
}

torch::Tensor HardswishImpl::forward(const torch::Tensor& x) { return at::hardswish(x); }
void HardswishImpl::pretty_print(std::ostream& stream) const { stream << "qatkit::nn::Hardswish()"; }
torch::Tensor HardsigmoidImpl::forward(const torch::Tensor& x) { return at::hardsigmoid(x); }
void HardsigmoidImpl::pretty_print(std::ostream& stream) const { stream << "qatkit::nn::Hardsigmoid()"; }

FusedActivationImpl::FusedActivationImpl(std::string kind_, double min_val_, std::optional<double> max_val_)
    : kind(std::move(kind_)), min_val(min_val_), max_val(max_val_) {
  TORCH_CHECK_VALUE(kind == "ReLU" || kind == "ReLU6" || kind == "Hardtanh",
                    fmt::format("FusedActivation: kind must be 'ReLU', 'ReLU6' or 'Hardtanh', got '{}'", kind));
}
void FusedActivationImpl::pretty_print(std::ostream& stream) const {
  stream << "qatkit::nn::FusedActivation(" << kind << ", fused into the layer before it)";
}

}  // namespace qatkit::nn
