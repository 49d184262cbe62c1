// qatkit::nn::save: a C++ model as the file Python's qatkit.export writes (docs/format.md), so
// that Python's qatkit.load / load_into and qatkit::nn::load read it. The model is a Sequential
// tree of QAT layers (converted on a copy first), the closed set of float modules the loaders
// rebuild, and nested Sequentials; anything else raises ValueError naming it.
#include <torch/torch.h>

#include <fmt/format.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <map>
#include <set>

#include "integer.h"
#include "json.h"
#include "packing.h"
#include "qatkit/build_info.h"
#include "qatkit/nn.h"
#include "qatkit/ops.h"

namespace qatkit::nn {
namespace {

using json::Value;

Value object() {
  Value v;
  v.type = Value::Type::kObject;
  return v;
}

Value array() {
  Value v;
  v.type = Value::Type::kArray;
  return v;
}

Value ints(c10::ArrayRef<std::int64_t> xs) {
  Value v = array();
  for (auto x : xs) v.array.push_back(Value::of(x));
  return v;
}

Value optional_int(const std::optional<std::int64_t>& x) { return x ? Value::of(*x) : Value::null(); }

const char* dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "float32";
    case at::kDouble: return "float64";
    case at::kHalf: return "float16";
    case at::kBFloat16: return "bfloat16";
    case at::kChar: return "int8";
    case at::kByte: return "uint8";
    case at::kShort: return "int16";
    case at::kInt: return "int32";
    case at::kLong: return "int64";
    case at::kBool: return "bool";
    default: TORCH_CHECK_VALUE(false, fmt::format("qatkit::nn::save: tensors of dtype {} have no file form", c10::toString(t)));
  }
}

const char* act_class(const QuantSpec& s) {
  if (s.kind == "binary") return "BinaryActQuantizer";
  if (s.scale == "dynamic") return "AffineDynamicActQuantizer";
  if (s.scale == "learned") return "AffineLearnedActQuantizer";
  return "AffineStaticActQuantizer";
}

struct Writer {
  TensorFile file;
  Value layers = object();
  Value float_tensors = array();
  /// Convs and Linears with a fused activation and the FusedActivation after each (load's fusion),
  /// paired in their Sequential: written as the unfused pair (the layer without its clamp, the
  /// activation)
  std::set<const torch::nn::Module*> paired;

  void put(const std::string& name, const torch::Tensor& t) {
    file.tensors.emplace_back(name, t.detach().to(torch::kCPU).contiguous().clone());
  }

  /// The float tensors of a leaf module (BatchNorm statistics, float Linear / Conv weights).
  void floats(torch::nn::Module& m, const std::string& prefix) {
    for (const auto& p : m.named_parameters(true)) {
      put(prefix + p.key(), p.value());
      float_tensors.array.push_back(Value::of(prefix + p.key()));
    }
    for (const auto& b : m.named_buffers(true)) {
      put(prefix + b.key(), b.value());
      float_tensors.array.push_back(Value::of(prefix + b.key()));
    }
  }

  /// One converted layer: packed codes, scales, zero points, bias, input quantizer state.
  Value layer(const std::string& name, const char* type, Value params, const ConvertedWeight& w, const LayerSpec& spec,
              const torch::Tensor& bias, const ActFakeQuantizer& aq, const torch::Tensor& smooth = {}) {
    const std::string where = fmt::format("qatkit::nn::save: layer '{}'", name);
    TORCH_CHECK_VALUE(w.converted, fmt::format("{} is not converted", where));
    TORCH_CHECK_VALUE(!w.float_weight && spec.weight,
                      fmt::format("{} has a float weight; C++ save writes quantized weights (keep the layer a float module)", where));
    const QuantSpec& ws = *spec.weight;
    const torch::Tensor codes = w.codes;
    const std::int64_t rows = codes.dim() > 0 ? codes.size(0) : 1;
    const std::int64_t k = rows > 0 ? codes.numel() / rows : 0;
    auto [bits, offset, packing] = detail::packing_for(ws);
    put(name + ".weight_packed", qatkit::pack_weights(codes.reshape({rows, k}), bits, offset, packing));
    // scales in the dtype the fake quant used (QuantSpec.scale_dtype; exact, they are rounded to it)
    const auto sdt = ws.scale_dtype == "float16" ? torch::kHalf : ws.scale_dtype == "bfloat16" ? torch::kBFloat16 : torch::kFloat;
    put(name + ".weight_scale", w.scale.to(sdt));
    const bool has_zp = w.zero_point.ne(0).any().item<bool>();
    if (has_zp) {
      const bool small = w.zero_point.min().item<std::int64_t>() >= -128 && w.zero_point.max().item<std::int64_t>() <= 127;
      put(name + ".weight_zero_point", w.zero_point.to(small ? torch::kChar : torch::kInt));
    }
    Value weight = object();
    weight.set("spec", json::parse(ws.to_json(), "spec"));
    weight.set("dtype", Value::of(dtype_name(w.dtype)));
    weight.set("shape", ints(codes.sizes()));
    weight.set("axis", optional_int(w.axis));
    weight.set("group_size", optional_int(w.group_size));
    weight.set("bits", Value::of(bits));
    weight.set("offset", Value::of(offset));
    weight.set("packing", Value::of(packing));
    weight.set("rows", Value::of(rows));
    weight.set("k", Value::of(k));
    weight.set("codes_dtype", Value::of(dtype_name(codes.scalar_type())));
    weight.set("scale_dtype", Value::of(ws.scale_dtype));
    weight.set("zero_point", Value::of(has_zp));
    if (bias.defined()) put(name + ".bias", bias);
    if (smooth.defined()) put(name + ".smooth", smooth);  // SmoothQuant / AWQ input scaling (a loaded layer's)
    Value info = object();
    info.set("type", Value::of(type));
    info.set("params", std::move(params));
    info.set("weight", std::move(weight));
    info.set("bias", Value::of(bias.defined()));
    if (aq) {
      Value in = object();
      in.set("spec", json::parse(aq->spec().to_json(), "spec"));
      in.set("channels", Value::of(aq->channels()));
      in.set("class", Value::of(act_class(aq->spec())));
      info.set("input", std::move(in));
      // Python's names: the observer's state sits under "observer." (torch's module tree there)
      static const std::map<std::string, std::string> kObserver = {
          {"running_min", "observer.running_min"}, {"running_max", "observer.running_max"}};
      const bool observed = aq->spec().kind == "int" && aq->spec().scale == "static";
      for (const auto& b : aq->named_buffers(false)) {
        std::string key = b.key();
        if (observed && (kObserver.count(key) || key == "scale" || key == "zero_point")) key = "observer." + key;
        put(name + ".input_fake_quant." + key, b.value());
      }
      for (const auto& p : aq->named_parameters(false)) {
        // a learned step size as the op uses it (clamped at float32's epsilon): SGD can take a dead
        // channel's below zero, and the raw value made a file the loaders refuse
        const bool step = p.key() == "scale" && aq->spec().scale == "learned";
        put(name + ".input_fake_quant." + p.key(), step ? p.value().detach().clamp_min(FLT_EPSILON) : p.value());
      }
    } else {
      info.set("input", Value::null());
    }
    layers.set(name, std::move(info));
    return [&] {
      Value v = object();
      v.set("type", Value::of("packed"));
      v.set("name", Value::of(name));
      return v;
    }();
  }

  /// A conv's parameters as Python writes them: padding as numbers or 'same' / 'valid', the padding
  /// mode's name, reversed_padding nn.ConvNd's _reversed_padding_repeated_twice (detail::conv_pads).
  template <size_t D>
  Value conv_params(const torch::nn::detail::ConvNdOptions<D>& o) {
    Value pad;
    if (const auto* n = std::get_if<torch::ExpandingArray<D>>(&o.padding())) {
      pad = ints(**n);
    } else {
      pad = Value::of(std::holds_alternative<torch::enumtype::kSame>(o.padding()) ? "same" : "valid");
    }
    const char* mode = std::holds_alternative<torch::enumtype::kZeros>(o.padding_mode())       ? "zeros"
                       : std::holds_alternative<torch::enumtype::kReflect>(o.padding_mode())   ? "reflect"
                       : std::holds_alternative<torch::enumtype::kReplicate>(o.padding_mode()) ? "replicate"
                                                                                                : "circular";
    const detail::ConvPads cp = detail::conv_pads<D>(o);
    std::vector<std::int64_t> reversed;
    for (std::size_t d = D; d-- > 0;) reversed.insert(reversed.end(), {cp.left[d], cp.right[d]});
    Value p = object();
    p.set("in_channels", Value::of(o.in_channels()));
    p.set("out_channels", Value::of(o.out_channels()));
    p.set("kernel_size", ints(*o.kernel_size()));
    p.set("stride", ints(*o.stride()));
    p.set("padding", std::move(pad));
    p.set("dilation", ints(*o.dilation()));
    p.set("groups", Value::of(o.groups()));
    p.set("padding_mode", Value::of(mode));
    p.set("reversed_padding", ints(reversed));
    return p;
  }

  Value leaf(const std::string& type, Value args) {
    Value v = object();
    v.set("type", Value::of(type));
    v.set("args", std::move(args));
    return v;
  }

  Value module(const std::shared_ptr<torch::nn::Module>& m, const std::string& name, int depth);

  /// Each conv or Linear of `seq` with a fused clamp whose next module past Identity ones is the
  /// FusedActivation of the same bounds: both into `paired`.
  void pair_fused(const torch::nn::SequentialImpl& seq) {
    const auto kids = seq.children();
    for (std::size_t i = 0; i < kids.size(); ++i) {
      const ConvertedWeight* w = nullptr;
      if (auto c = std::dynamic_pointer_cast<QuantConv2dImpl>(kids[i])) w = &c->frozen;
      if (auto c = std::dynamic_pointer_cast<QuantConv1dImpl>(kids[i])) w = &c->frozen;
      if (auto l = std::dynamic_pointer_cast<QuantLinearImpl>(kids[i])) w = &l->frozen;
      if (w == nullptr || !w->clamped()) continue;
      std::size_t j = i + 1;
      while (j < kids.size() && std::dynamic_pointer_cast<torch::nn::IdentityImpl>(kids[j])) ++j;
      if (j == kids.size()) continue;
      auto f = std::dynamic_pointer_cast<FusedActivationImpl>(kids[j]);
      if (f && w->clamp_min == std::optional<double>(f->min_val) && w->clamp_max == f->max_val) {
        paired.insert(kids[i].get());
        paired.insert(f.get());
      }
    }
  }

  /// A layer whose clamp has no FusedActivation after it: the file would drop the activation.
  void check_paired(const torch::nn::Module& layer, const ConvertedWeight& w, const std::string& name) const {
    TORCH_CHECK_VALUE(!w.clamped() || paired.count(&layer) != 0,
                      fmt::format("qatkit::nn::save: layer '{}' has a fused activation (clamp_min / clamp_max) with no "
                                  "FusedActivation of the same bounds after it in a Sequential: the file would not hold "
                                  "the activation. Reset frozen.clamp_min / clamp_max and put the activation module after it",
                                  name));
  }
};

template <typename T>
std::shared_ptr<T> as(const std::shared_ptr<torch::nn::Module>& m) {
  return std::dynamic_pointer_cast<T>(m);
}

Value Writer::module(const std::shared_ptr<torch::nn::Module>& m, const std::string& name, int depth) {
  TORCH_CHECK_VALUE(depth <= 64, "qatkit::nn::save: the model nests deeper than 64 levels");
  const std::string prefix = name.empty() ? "" : name + ".";
  if (auto seq = as<torch::nn::SequentialImpl>(m)) {
    pair_fused(*seq);
    Value kids = array();
    for (const auto& c : seq->named_children()) {
      Value pair = array();
      pair.array.push_back(Value::of(c.key()));
      pair.array.push_back(module(c.value(), prefix + c.key(), depth + 1));
      kids.array.push_back(std::move(pair));
    }
    Value v = object();
    v.set("type", Value::of("Sequential"));
    v.set("children", std::move(kids));
    return v;
  }
  if (auto l = as<QuantLinearImpl>(m)) {
    check_paired(*l, l->frozen, name);
    Value p = object();
    p.set("in_features", Value::of(l->options.in_features()));
    p.set("out_features", Value::of(l->options.out_features()));
    p.set("rms_norm", Value::of(as<BitLinearImpl>(m) != nullptr));
    p.set("eps", Value::of(1e-6));  // BitLinear's RMSNorm eps (modules.cpp)
    return layer(name, "linear", std::move(p), l->frozen, l->layer_spec, l->bias, l->input_fake_quant, l->smooth);
  }
  if (auto c = as<QuantConv2dImpl>(m)) {
    check_paired(*c, c->frozen, name);
    return layer(name, "conv2d", conv_params<2>(c->options), c->frozen, c->layer_spec, c->bias, c->input_fake_quant);
  }
  if (auto c = as<QuantConvBn2dImpl>(m)) {  // converted: a conv with the folded weight and bias
    return layer(name, "conv2d", conv_params<2>(c->options), c->frozen, c->layer_spec, c->bias, c->input_fake_quant);
  }
  if (auto c = as<QuantConv1dImpl>(m)) {
    check_paired(*c, c->frozen, name);
    return layer(name, "conv1d", conv_params<1>(c->options), c->frozen, c->layer_spec, c->bias, c->input_fake_quant);
  }
  if (auto e = as<QuantEmbeddingImpl>(m)) {
    Value p = object();
    p.set("padding_idx", e->options.padding_idx() ? Value::of(*e->options.padding_idx()) : Value::null());
    p.set("max_norm", e->options.max_norm() ? Value::of(*e->options.max_norm()) : Value::null());
    p.set("norm_type", Value::of(e->options.norm_type()));
    return layer(name, "embedding", std::move(p), e->frozen, e->layer_spec, torch::Tensor(), e->input_fake_quant);
  }
  Value a = object();
  if (auto f = as<FusedActivationImpl>(m)) {  // the activation fused into the conv before it
    TORCH_CHECK_VALUE(paired.count(f.get()) != 0,
                      fmt::format("qatkit::nn::save: '{}' is a FusedActivation ({}) with no layer before it that applies it: "
                                  "the file would hold a {} the model does not compute",
                                  name, f->kind, f->kind));
    if (f->kind == "Hardtanh") {
      a.set("min_val", Value::of(f->min_val));
      a.set("max_val", Value::of(*f->max_val));
    }
    return leaf(f->kind, a);
  }
  if (as<torch::nn::ReLUImpl>(m)) return leaf("ReLU", a);
  if (as<torch::nn::ReLU6Impl>(m)) return leaf("ReLU6", a);
  if (auto l = as<torch::nn::LeakyReLUImpl>(m)) {
    a.set("negative_slope", Value::of(l->options.negative_slope()));
    return leaf("LeakyReLU", a);
  }
  if (auto e = as<torch::nn::ELUImpl>(m)) {
    a.set("alpha", Value::of(e->options.alpha()));
    return leaf("ELU", a);
  }
  if (auto h = as<torch::nn::HardtanhImpl>(m)) {
    a.set("min_val", Value::of(h->options.min_val()));
    a.set("max_val", Value::of(h->options.max_val()));
    return leaf("Hardtanh", a);
  }
  if (auto p = as<torch::nn::PReLUImpl>(m)) {
    a.set("num_parameters", Value::of(p->options.num_parameters()));
    floats(*p, prefix);
    return leaf("PReLU", a);
  }
  if (as<HardswishImpl>(m)) return leaf("Hardswish", a);
  if (as<HardsigmoidImpl>(m)) return leaf("Hardsigmoid", a);
  if (as<torch::nn::MishImpl>(m)) return leaf("Mish", a);
  if (auto sm = as<torch::nn::SoftmaxImpl>(m)) {
    a.set("dim", Value::of(sm->options.dim()));
    return leaf("Softmax", a);
  }
  if (auto sm = as<torch::nn::LogSoftmaxImpl>(m)) {
    a.set("dim", Value::of(sm->options.dim()));
    return leaf("LogSoftmax", a);
  }
  if (as<torch::nn::SiLUImpl>(m)) return leaf("SiLU", a);
  if (as<torch::nn::TanhImpl>(m)) return leaf("Tanh", a);
  if (as<torch::nn::SigmoidImpl>(m)) return leaf("Sigmoid", a);
  if (as<torch::nn::IdentityImpl>(m)) return leaf("Identity", a);
  if (auto g = as<torch::nn::GELUImpl>(m)) {
    a.set("approximate", Value::of(g->options.approximate()));
    return leaf("GELU", a);
  }
  if (auto d = as<torch::nn::DropoutImpl>(m)) {
    a.set("p", Value::of(d->options.p()));
    return leaf("Dropout", a);
  }
  if (auto f = as<torch::nn::FlattenImpl>(m)) {
    a.set("start_dim", Value::of(f->options.start_dim()));
    a.set("end_dim", Value::of(f->options.end_dim()));
    return leaf("Flatten", a);
  }
  if (auto u = as<torch::nn::UnflattenImpl>(m)) {
    a.set("dim", Value::of(u->options.dim()));
    a.set("unflattened_size", ints(u->options.sizes()));
    return leaf("Unflatten", a);
  }
  const auto max_pool = [&](const auto& o, const char* type) {
    a.set("kernel_size", ints(*o.kernel_size()));
    a.set("stride", ints(*o.stride()));
    a.set("padding", ints(*o.padding()));
    a.set("dilation", ints(*o.dilation()));
    a.set("ceil_mode", Value::of(o.ceil_mode()));
    return leaf(type, a);
  };
  if (auto p = as<torch::nn::MaxPool2dImpl>(m)) return max_pool(p->options, "MaxPool2d");
  if (auto p = as<torch::nn::MaxPool1dImpl>(m)) return max_pool(p->options, "MaxPool1d");
  const auto avg_pool = [&](const auto& o, const char* type) {
    a.set("kernel_size", ints(*o.kernel_size()));
    a.set("stride", ints(*o.stride()));
    a.set("padding", ints(*o.padding()));
    a.set("ceil_mode", Value::of(o.ceil_mode()));
    a.set("count_include_pad", Value::of(o.count_include_pad()));
    return leaf(type, a);
  };
  if (auto p = as<torch::nn::AvgPool2dImpl>(m)) {
    const auto& d = p->options.divisor_override();
    a.set("divisor_override", d ? Value::of(*d) : Value::null());
    return avg_pool(p->options, "AvgPool2d");
  }
  if (auto p = as<torch::nn::AvgPool1dImpl>(m)) return avg_pool(p->options, "AvgPool1d");
  if (auto p = as<torch::nn::AdaptiveAvgPool2dImpl>(m)) {
    const auto& o = *p->options.output_size();
    TORCH_CHECK_VALUE(o[0].has_value() && o[1].has_value(), fmt::format("qatkit::nn::save: '{}': AdaptiveAvgPool2d with a None size", name));
    a.set("output_size", ints({*o[0], *o[1]}));
    return leaf("AdaptiveAvgPool2d", a);
  }
  if (auto p = as<torch::nn::AdaptiveAvgPool1dImpl>(m)) {
    a.set("output_size", ints(*p->options.output_size()));
    return leaf("AdaptiveAvgPool1d", a);
  }
  if (auto e = as<torch::nn::EmbeddingImpl>(m)) {  // a float embedding table
    a.set("num_embeddings", Value::of(e->options.num_embeddings()));
    a.set("embedding_dim", Value::of(e->options.embedding_dim()));
    a.set("padding_idx", e->options.padding_idx() ? Value::of(*e->options.padding_idx()) : Value::null());
    a.set("max_norm", e->options.max_norm() ? Value::of(*e->options.max_norm()) : Value::null());
    a.set("norm_type", Value::of(e->options.norm_type()));
    floats(*e, prefix);
    return leaf("Embedding", a);
  }
  const auto bn_args = [&](const torch::nn::BatchNormOptions& o) {
    a.set("num_features", Value::of(o.num_features()));
    a.set("eps", Value::of(o.eps()));
    a.set("momentum", o.momentum() ? Value::of(*o.momentum()) : Value::null());
    a.set("affine", Value::of(o.affine()));
    a.set("track_running_stats", Value::of(o.track_running_stats()));
  };
  if (auto b = as<torch::nn::BatchNorm2dImpl>(m)) {
    bn_args(b->options);
    floats(*b, prefix);
    return leaf("BatchNorm2d", a);
  }
  if (auto b = as<torch::nn::BatchNorm1dImpl>(m)) {
    bn_args(b->options);
    floats(*b, prefix);
    return leaf("BatchNorm1d", a);
  }
  if (auto l = as<torch::nn::LayerNormImpl>(m)) {
    a.set("normalized_shape", ints(l->options.normalized_shape()));
    a.set("eps", Value::of(l->options.eps()));
    a.set("elementwise_affine", Value::of(l->options.elementwise_affine()));
    floats(*l, prefix);
    return leaf("LayerNorm", a);
  }
  if (auto l = as<torch::nn::LinearImpl>(m)) {
    a.set("in_features", Value::of(l->options.in_features()));
    a.set("out_features", Value::of(l->options.out_features()));
    a.set("bias", Value::of(l->options.bias()));
    floats(*l, prefix);
    return leaf("Linear", a);
  }
  const auto conv_args = [&](auto& o, bool bias) {
    a = conv_params(o);
    a.object.erase(a.object.end() - 1);  // reversed_padding: a packed layer's field only
    a.set("bias", Value::of(bias));
  };
  if (auto c = as<torch::nn::Conv2dImpl>(m)) {
    conv_args(c->options, c->options.bias());
    floats(*c, prefix);
    return leaf("Conv2d", a);
  }
  if (auto c = as<torch::nn::Conv1dImpl>(m)) {
    conv_args(c->options, c->options.bias());
    floats(*c, prefix);
    return leaf("Conv1d", a);
  }
  TORCH_CHECK_VALUE(false, fmt::format("qatkit::nn::save: module '{}' ({}) has no file form: save writes Sequential trees of QAT "
                                       "layers, activations, pooling, Flatten / Unflatten, Dropout, BatchNorm, LayerNorm and "
                                       "float Linear / Conv layers",
                                       name, m->name()));
}

/// The QAT layers of `model`'s tree (itself included) not yet converted.
std::int64_t pending_layers(const torch::nn::Module& model) {
  std::vector<std::shared_ptr<torch::nn::Module>> all = model.modules(/*include_self=*/false);
  std::int64_t pending = 0;
  const auto count = [&](const torch::nn::Module* m) {
    if (auto l = dynamic_cast<const QuantLinearImpl*>(m)) pending += !l->converted();
    if (auto c = dynamic_cast<const QuantConv2dImpl*>(m)) pending += !c->converted();
    if (auto c = dynamic_cast<const QuantConv1dImpl*>(m)) pending += !c->converted();
    if (auto c = dynamic_cast<const QuantConvBn2dImpl*>(m)) pending += !c->converted();
    if (auto e = dynamic_cast<const QuantEmbeddingImpl*>(m)) pending += !e->converted();
  };
  count(&model);
  for (const auto& m : all) count(m.get());
  return pending;
}

/// `model` itself, or a converted copy where QAT layers are pending (the caller's model keeps
/// training). An all-converted model (one qatkit::nn::load / load_into filled) is written as it is:
/// LibTorch cannot clone converted layers, whose state differs from what reset() registers.
std::shared_ptr<torch::nn::Module> converted_model(const torch::nn::Module& model) {
  // (a pointer that does not own the model: it may live on the stack)
  std::shared_ptr<torch::nn::Module> copy(std::shared_ptr<torch::nn::Module>(),
                                          const_cast<torch::nn::Module*>(&model));
  if (pending_layers(model) > 0) {
    try {
      copy = model.clone();
    } catch (const c10::Error& e) {
      TORCH_CHECK_VALUE(false, fmt::format("qatkit::nn::save: the model could not be copied to convert it ({}); call "
                                           "qatkit::nn::convert on it first, then save", e.what_without_backtrace()));
    }
    TORCH_CHECK_VALUE(copy, "qatkit::nn::save: the model could not be copied");
    convert(*copy);
  }
  return copy;
}

/// The header around the writer's layers and tensors, and the file.
void write_file(Writer& w, const torch::nn::Module& model, Value structure, const std::string& gap,
                const std::string& path) {
  TORCH_CHECK_VALUE(!w.layers.object.empty(), "qatkit::nn::save: the model holds no quantized layer (prepare_qat / ptq first)");
  Value header = object();
  header.set("format_version", Value::of(std::int64_t{1}));
  header.set("qatkit_version", Value::of(build_info().version));
  header.set("layers", std::move(w.layers));
  header.set("float_tensors", std::move(w.float_tensors));
  // Python's module_changes: every Identity (a folded BatchNorm's place) and ReLU module by name, which
  // qatkit.load_into and qatkit::nn::load_into apply to / check against a model built with the float
  // architecture (the C++ loader rebuilds the structure and needs none)
  Value changes = object();
  for (const auto& item : model.named_modules("", /*include_self=*/false)) {
    if (as<torch::nn::IdentityImpl>(item.value())) changes.set(item.key(), Value::of(std::string("Identity")));
    if (as<torch::nn::ReLUImpl>(item.value())) changes.set(item.key(), Value::of(std::string("ReLU")));
  }
  header.set("module_changes", std::move(changes));
  header.set("structure", std::move(structure));
  if (!gap.empty()) header.set("structure_gap", Value::of(gap));
  w.file.metadata.emplace_back("qatkit", json::dump(header));
  write_safetensors(path, w.file);
}

}  // namespace

void save(const torch::nn::Sequential& model, const std::string& path) {
  TORCH_CHECK_VALUE(model, "qatkit::nn::save: model is an empty Sequential holder");
  const std::shared_ptr<torch::nn::Module> copy = converted_model(*model);
  Writer w;
  Value structure = w.module(copy, "", 0);
  write_file(w, *copy, std::move(structure), "", path);
}

void save(const torch::nn::Module& model, const std::string& path) {
  if (auto* seq = dynamic_cast<const torch::nn::SequentialImpl*>(&model)) {  // the structure, as above
    save(torch::nn::Sequential(std::shared_ptr<torch::nn::SequentialImpl>(
             std::shared_ptr<torch::nn::SequentialImpl>(), const_cast<torch::nn::SequentialImpl*>(seq))),
         path);
    return;
  }
  const std::shared_ptr<torch::nn::Module> copy = converted_model(model);
  Writer w;
  std::vector<std::pair<std::string, std::shared_ptr<torch::nn::Module>>> all{{"", copy}};
  for (const auto& item : copy->named_modules("", /*include_self=*/false)) all.emplace_back(item.key(), item.value());
  for (const auto& [n, m] : all) {  // (fused activations pair up inside the Sequentials)
    if (auto seq = as<torch::nn::SequentialImpl>(m)) w.pair_fused(*seq);
  }
  // pre-order: a QAT layer's tensors are its entry's; a layer at a second name (one module registered
  // twice) is written once, under its first, as Python's export writes it
  std::set<const torch::nn::Module*> written;
  std::vector<std::string> inside;
  for (const auto& [n, m] : all) {
    const std::string prefix = n.empty() ? "" : n + ".";
    if (std::any_of(inside.begin(), inside.end(), [&](const std::string& p) { return prefix.rfind(p, 0) == 0; })) continue;
    if (detail::is_qat_layer(*m)) {
      if (written.insert(m.get()).second) w.module(m, n, 0);  // the layer's entry and tensors
      inside.push_back(prefix);
      continue;
    }
    if (auto f = as<FusedActivationImpl>(m)) {  // a FusedActivation with no layer before it in a Sequential
      TORCH_CHECK_VALUE(w.paired.count(f.get()) != 0,
                        fmt::format("qatkit::nn::save: '{}' is a FusedActivation ({}) with no layer before it in a "
                                    "Sequential that applies it", n, f->kind));
    }
    for (const auto& p : m->named_parameters(/*recurse=*/false)) {
      w.put(prefix + p.key(), p.value());
      w.float_tensors.array.push_back(Value::of(prefix + p.key()));
    }
    for (const auto& b : m->named_buffers(/*recurse=*/false)) {
      w.put(prefix + b.key(), b.value());
      w.float_tensors.array.push_back(Value::of(prefix + b.key()));
    }
  }
  write_file(w, *copy, Value::null(),
             fmt::format("the model is a {} (its own forward), which qatkit.load and qatkit::nn::load do not rebuild",
                         copy->name()),
             path);
}

}  // namespace qatkit::nn
