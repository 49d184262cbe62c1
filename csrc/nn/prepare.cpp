// prepare_qat / calibrate / convert / freeze_bn over a LibTorch module tree (see qatkit/nn.h):
// the C++ counterparts of python/qatkit/qat/{prepare,convert}.py, on the same preset table and
// rules (skip / override patterns, first_last over compute layers, embeddings, report rows).
#include <ATen/ops/isinf.h>
#include <ATen/ops/isnan.h>
#include <fmt/format.h>
#include <torch/nn/modules/batchnorm.h>
#include <torch/nn/modules/container/any.h>
#include <torch/nn/modules/container/moduledict.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>

#include <algorithm>
#include <map>
#include <memory>
#include <sstream>

#include "module_access.h"
#include "qatkit/nn.h"

namespace qatkit::nn {
namespace {

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

/// Python's QuantSpec.describe().
std::string describe(const QuantSpec& s) {
  if (s.kind == "int") {
    const std::string g = s.granularity + (s.group_size ? fmt::format("({})", *s.group_size) : "");
    return fmt::format("int{} {} {} {}", s.bits, s.symmetric ? "sym" : "asym", g, s.scale);
  }
  return fmt::format("{} {} {}{}", s.kind, s.method, s.granularity, s.stochastic ? " stochastic" : "");
}

enum class Kind { Linear, Conv1d, Conv2d, Embedding };

/// One swappable layer: where it sits (a Sequential entry) and what it is.
struct Candidate {
  std::string name;
  Kind kind;
  std::shared_ptr<torch::nn::Module> module;
  torch::nn::SequentialImpl* parent = nullptr;
  std::size_t index = 0;  ///< position in the parent Sequential
  std::shared_ptr<torch::nn::BatchNorm2dImpl> bn;  ///< the BatchNorm2d neighbour to fold
  std::string bn_name;
};

std::optional<Kind> kind_of(const std::shared_ptr<torch::nn::Module>& m) {
  if (std::dynamic_pointer_cast<torch::nn::LinearImpl>(m)) return Kind::Linear;
  if (std::dynamic_pointer_cast<torch::nn::Conv1dImpl>(m)) return Kind::Conv1d;
  if (std::dynamic_pointer_cast<torch::nn::Conv2dImpl>(m)) return Kind::Conv2d;
  if (std::dynamic_pointer_cast<torch::nn::EmbeddingImpl>(m)) return Kind::Embedding;
  return std::nullopt;
}

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::Linear: return "Linear";
    case Kind::Conv1d: return "Conv1d";
    case Kind::Conv2d: return "Conv2d";
    default: return "Embedding";
  }
}

/// The qatkit layer type of a module ("" if it is none).
std::string qat_type(const std::shared_ptr<torch::nn::Module>& m) {
  if (std::dynamic_pointer_cast<BitLinearImpl>(m)) return "BitLinear";
  if (std::dynamic_pointer_cast<QuantLinearImpl>(m)) return "QuantLinear";
  if (std::dynamic_pointer_cast<QuantConv1dImpl>(m)) return "QuantConv1d";
  if (std::dynamic_pointer_cast<QuantConv2dImpl>(m)) return "QuantConv2d";
  if (std::dynamic_pointer_cast<QuantConvBn2dImpl>(m)) return "QuantConvBn2d";
  if (std::dynamic_pointer_cast<QuantEmbeddingImpl>(m)) return "QuantEmbedding";
  return "";
}

bool is_batchnorm(const std::shared_ptr<torch::nn::Module>& m) {
  return std::dynamic_pointer_cast<torch::nn::BatchNorm1dImpl>(m) || std::dynamic_pointer_cast<torch::nn::BatchNorm2dImpl>(m) ||
         std::dynamic_pointer_cast<torch::nn::BatchNorm3dImpl>(m);
}

struct Walk {
  bool fold_bn;
  std::vector<Candidate> cands;
  std::vector<LayerReport> kept, floats;  ///< user-built qatkit layers; layers / BatchNorms left float
  std::vector<LayerReport> unsupported;   ///< layers of kinds with no QAT form that own a weight matrix
  std::map<const torch::nn::Module*, std::string> folded_bns;

  void float_row(const std::string& name, const std::string& type, const std::string& reason) {
    floats.push_back({name, type, "", "float", "float", "", reason});
  }

  void visit(torch::nn::Module& parent, const std::string& prefix) {
    auto* seq = dynamic_cast<torch::nn::SequentialImpl*>(&parent);
    const bool listlike = dynamic_cast<torch::nn::ModuleListImpl*>(&parent) || dynamic_cast<torch::nn::ModuleDictImpl*>(&parent);
    const auto children = parent.named_children();
    for (std::size_t i = 0; i < children.size(); ++i) {
      const std::string& key = children[i].key();
      const std::shared_ptr<torch::nn::Module>& child = children[i].value();
      const std::string name = prefix.empty() ? key : prefix + "." + key;
      const std::string qt = qat_type(child);
      if (!qt.empty()) {
        kept.push_back({name, qt, qt, "", "", "built with qatkit layers", ""});
        continue;
      }
      if (const auto k = kind_of(child)) {
        if (!seq) {
          const std::string where =
              listlike ? fmt::format("an entry of {} '{}', which its owner's forward calls through a cast to "
                                     "torch::nn::{} (a swap would break that cast)",
                                     parent.name(), prefix, kind_name(*k))
                       : fmt::format("a typed member of the custom module {} ({}), which LibTorch cannot rebind",
                                     prefix.empty() ? "at the root" : "'" + prefix + "'", parent.name());
          float_row(name, kind_name(*k),
                    fmt::format("{}: its forward still calls the float layer. Put it in a torch::nn::Sequential, or "
                                "declare the member as qatkit::nn::Quant{} (README, 'C++ custom modules')",
                                where, kind_name(*k)));
          continue;
        }
        Candidate c{name, *k, child, seq, i, nullptr, ""};
        if (*k == Kind::Conv2d && fold_bn && i + 1 < children.size()) {
          if (auto bn = std::dynamic_pointer_cast<torch::nn::BatchNorm2dImpl>(children[i + 1].value())) {
            const auto conv = std::dynamic_pointer_cast<torch::nn::Conv2dImpl>(child);
            const std::string bn_name = prefix.empty() ? children[i + 1].key() : prefix + "." + children[i + 1].key();
            if (bn->options.affine() && bn->options.track_running_stats() &&
                bn->options.num_features() == conv->options.out_channels()) {
              c.bn = bn;
              c.bn_name = bn_name;
              folded_bns[bn.get()] = bn_name;
            } else {
              folded_bns[bn.get()] = "";  // reported below with its own reason
              float_row(bn_name, "BatchNorm2d",
                        fmt::format("not folded into conv '{}': a BatchNorm2d without affine parameters or running "
                                    "statistics (the conv is quantized on its own, the BatchNorm stays float)",
                                    name));
            }
          }
        }
        cands.push_back(std::move(c));
        continue;
      }
      if (is_batchnorm(child)) {
        if (folded_bns.count(child.get())) continue;
        const bool bn2d = static_cast<bool>(std::dynamic_pointer_cast<torch::nn::BatchNorm2dImpl>(child));
        float_row(name, child->name(),
                  !fold_bn ? "not folded: QATConfig::fold_bn is false"
                  : bn2d   ? "not folded: C++ folds a BatchNorm2d only as the neighbour right after a Conv2d in a "
                             "torch::nn::Sequential (it cannot trace a custom module's forward)"
                           : "not folded: qatkit folds Conv2d + BatchNorm2d only");
        continue;
      }
      // an LSTM, ConvTranspose2d, Conv3d, Bilinear, EmbeddingBag or a custom module multiplying by its own
      // weight parameter: it owns a floating weight matrix (named *weight*, two or more dims) that no QAT
      // layer replaces (Python: prepare._unsupported_weights)
      std::string shapes;
      int n_weights = 0;
      for (const auto& p : child->named_parameters(/*recurse=*/false)) {
        if (p.key().find("weight") == std::string::npos || p.value().dim() < 2 || !p.value().is_floating_point()) {
          continue;
        }
        if (++n_weights <= 3) {
          shapes += fmt::format("{}{} {}", shapes.empty() ? "" : ", ", p.key(), c10::str(p.value().sizes()));
        }
      }
      if (n_weights > 0) {
        std::string type = child->name();  // "torch::nn::LSTMImpl" -> "torch::nn::LSTM", as users spell it
        if (type.size() > 4 && type.compare(type.size() - 4, 4, "Impl") == 0) type.resize(type.size() - 4);
        unsupported.push_back({name, type, "", "float", "float", "",
                               fmt::format("qatkit has no QAT form for {} ({}{})", type, shapes,
                                           n_weights > 3 ? " ..." : "")});
      }
      visit(*child, name);
    }
  }
};

std::optional<LayerSpec> spec_for(const std::string& name, std::size_t index, std::size_t count, bool is_embedding,
                                  const QATConfig& config, std::map<std::string, int>& used, std::string& rule) {
  for (const auto& pat : config.skip) {
    if (fnmatch_case(name, pat)) {
      ++used[pat];
      rule = fmt::format("skip '{}'", pat);
      return std::nullopt;
    }
  }
  for (const auto& [pat, spec] : config.overrides) {
    if (fnmatch_case(name, pat)) {
      ++used[pat];
      rule = fmt::format("override '{}'", pat);
      return spec;
    }
  }
  if (is_embedding) {
    rule = config.embeddings ? "embeddings" : "embeddings=false";
    return config.embeddings ? std::optional<LayerSpec>(config.default_spec) : std::nullopt;
  }
  if (!config.first_last.empty() && (index == 0 || index + 1 == count)) {
    rule = "first_last";
    return QATConfig::first_last_spec(config.first_last);
  }
  rule = "default";
  return config.default_spec;
}

template <class Layer>
void name_quantizers(Layer& layer, const std::string& name) {
  if (layer->weight_fake_quant) layer->weight_fake_quant->qualified_name = name + ".weight_fake_quant";
  if (layer->input_fake_quant) layer->input_fake_quant->qualified_name = name + ".input_fake_quant";
}

/// The replacement of one candidate, its report row filled in.
torch::nn::AnyModule build(const Candidate& c, const LayerSpec& spec, const QATConfig& config, LayerReport& row) {
  WeightFakeQuantizer wfq{nullptr};
  ActFakeQuantizer aq{nullptr};
  torch::nn::AnyModule any;
  auto take = [&](auto q) {
    name_quantizers(q, c.name);
    wfq = q->weight_fake_quant;
    aq = q->input_fake_quant;
    any = torch::nn::AnyModule(q);
    row.qat = qat_type(q.ptr());
  };
  switch (c.kind) {
    case Kind::Linear: {
      torch::nn::Linear lin(std::dynamic_pointer_cast<torch::nn::LinearImpl>(c.module));
      if (config.bitlinear) {
        take(BitLinear(lin, spec));
      } else {
        take(QuantLinear(lin, spec));
      }
      break;
    }
    case Kind::Conv1d:
      take(QuantConv1d(torch::nn::Conv1d(std::dynamic_pointer_cast<torch::nn::Conv1dImpl>(c.module)), spec));
      break;
    case Kind::Conv2d: {
      torch::nn::Conv2d conv(std::dynamic_pointer_cast<torch::nn::Conv2dImpl>(c.module));
      if (c.bn) {
        take(QuantConvBn2d(conv, torch::nn::BatchNorm2d(c.bn), spec));
      } else {
        take(QuantConv2d(conv, spec));
      }
      break;
    }
    case Kind::Embedding:
      take(QuantEmbedding(torch::nn::Embedding(std::dynamic_pointer_cast<torch::nn::EmbeddingImpl>(c.module)), spec));
      break;
  }
  row.weight = wfq ? describe(wfq->spec()) + (wfq->granularity != wfq->spec().granularity ? " -> per_channel" : "")
                   : "float";
  row.act = aq ? describe(aq->spec()) : "float";
  if (wfq && wfq->granularity != wfq->spec().granularity) {
    // fmt, not TORCH_WARN's ostream, for the integer (docs/gpu.md: GCC 13 builds crashed in
    // std::ostream's integer insertion inside libqatkit.so)
    TORCH_WARN(fmt::format("prepare_qat: layer '{}': the flattened input dim is not a multiple of group_size {}; its "
                           "weight falls back to per-channel",
                           c.name, wfq->spec().group_size.value_or(0)));
  }
  return any;
}

template <class F>
void for_act_quantizers(torch::nn::Module& model, F f) {
  for (const auto& m : model.modules(/*include_self=*/false)) {
    if (auto a = std::dynamic_pointer_cast<ActFakeQuantizerImpl>(m)) f(*a);
  }
  if (auto* a = dynamic_cast<ActFakeQuantizerImpl*>(&model)) f(*a);
}

/// Every QAT layer of the tree (the root included), with its qualified name.
struct QatLayer {
  std::string name;
  std::shared_ptr<torch::nn::Module> module;
};

std::vector<QatLayer> qat_layers(torch::nn::Module& model) {
  std::vector<QatLayer> out;
  for (const auto& item : model.named_modules("", /*include_self=*/false)) {
    if (!qat_type(item.value()).empty()) out.push_back({item.key(), item.value()});
  }
  return out;
}

template <class F>
bool with_layer(const std::shared_ptr<torch::nn::Module>& m, F f) {
  if (auto l = std::dynamic_pointer_cast<QuantLinearImpl>(m)) return f(*l), true;
  if (auto l = std::dynamic_pointer_cast<QuantConv1dImpl>(m)) return f(*l), true;
  if (auto l = std::dynamic_pointer_cast<QuantConv2dImpl>(m)) return f(*l), true;
  if (auto l = std::dynamic_pointer_cast<QuantConvBn2dImpl>(m)) return f(*l), true;
  if (auto l = std::dynamic_pointer_cast<QuantEmbeddingImpl>(m)) return f(*l), true;
  return false;
}

}  // namespace

const LayerReport* QATReport::find(const std::string& name) const {
  for (const auto& r : layers) {
    if (r.name == name) return &r;
  }
  return nullptr;
}

std::string QATReport::to_string() const {
  std::ostringstream os;
  for (const auto& r : layers) {
    os << fmt::format("{:<28} {:<12} {:<16} w: {:<30} a: {:<30} {}{}\n", r.name, r.type, r.qat.empty() ? "-" : r.qat,
                      r.weight, r.act, r.rule, r.reason.empty() ? "" : " (" + r.reason + ")");
  }
  return os.str();
}

namespace {

// Python's prepare._unused_fields: fields set away from their defaults that change nothing in the
// spec's role (an MSE observer on weights, whose ranges are their own min / max at every forward).
std::vector<std::string> unused_fields(const QuantSpec& spec, bool weight) {
  const QuantSpec d;
  std::vector<std::string> out;
  const bool is_static = spec.kind == "int" && spec.scale == "static";
  if (weight) {
    if (spec.observer != d.observer) {
      out.push_back(fmt::format("observer='{}' (weight ranges are {}; observers set activation ranges)", spec.observer,
                                spec.scale == "learned" ? "trained (scale='learned')"
                                                        : "the weight's own min / max at every forward"));
    }
    if (spec.momentum != d.momentum) {
      out.push_back(fmt::format("momentum={} (the moving-average activation observer's)", spec.momentum));
    }
  } else {
    if (spec.latent_clip) out.push_back(fmt::format("latent_clip={} (clips shadow weights; an input has none)", *spec.latent_clip));
    if (!is_static && spec.observer != d.observer) {
      out.push_back(fmt::format("observer='{}' (a static range's; this input is {} with scale='{}')", spec.observer,
                                spec.kind, spec.scale));
    }
    if (spec.momentum != d.momentum && (!is_static || spec.observer != "moving_average")) {
      out.push_back(fmt::format("momentum={} (the moving-average observer's; this input's is '{}')", spec.momentum,
                                spec.observer));
    }
  }
  if (spec.lsq_grad_scale != d.lsq_grad_scale && spec.scale != "learned") {
    out.push_back("lsq_grad_scale=false (LSQ's step-size gradient scale; this scale is not learned)");
  }
  return out;
}

void warn_unused_fields(const QATConfig& config) {
  std::string found;
  auto scan = [&](const std::string& where, const LayerSpec& ls) {
    for (const bool weight : {true, false}) {
      const std::optional<QuantSpec>& spec = weight ? ls.weight : ls.activation;
      if (!spec) continue;
      for (const auto& u : unused_fields(*spec, weight)) {
        found += (found.empty() ? "" : "; ") + where + (weight ? ".weight: " : ".activation: ") + u;
      }
    }
  };
  scan("default", config.default_spec);
  for (const auto& [pattern, ls] : config.overrides) scan("override '" + pattern + "'", ls);
  if (!found.empty()) TORCH_WARN("prepare_qat: spec fields that change nothing: ", found);
}

}  // namespace

QATReport prepare_qat_inplace(torch::nn::Module& model, const QATConfig& config) {
  TORCH_CHECK_VALUE(!kind_of(std::shared_ptr<torch::nn::Module>(&model, [](torch::nn::Module*) {})),
                    "prepare_qat: the model is a bare layer, which cannot be swapped in place; put it in a "
                    "torch::nn::Sequential");
  if (!config.first_last.empty()) (void)QATConfig::first_last_spec(config.first_last);  // a rule of the table
  warn_unused_fields(config);
  Walk walk{config.fold_bn, {}, {}, {}, {}, {}};
  walk.visit(model, "");
  TORCH_CHECK_VALUE(!walk.cands.empty() || !walk.kept.empty(),
                    "prepare_qat: the model has nothing to quantize: no torch::nn::Linear, Conv1d, Conv2d or Embedding "
                    "layers inside a torch::nn::Sequential" +
                        (walk.floats.empty() ? std::string()
                                             : fmt::format(" ({} layer(s) cannot be swapped: {})", walk.floats.size(),
                                                           walk.floats.front().reason)));
  std::map<std::string, int> used;
  for (const auto& p : config.skip) used[p] = 0;
  for (const auto& o : config.overrides) used[o.first] = 0;
  std::size_t compute = 0;
  for (const auto& c : walk.cands) compute += c.kind != Kind::Embedding;
  // decide and build every replacement first (nothing in `model` changes on an error), then swap
  QATReport report;
  std::vector<std::pair<const Candidate*, torch::nn::AnyModule>> plan;
  std::map<std::string, std::vector<std::string>> rules;
  std::size_t position = 0;
  for (const auto& c : walk.cands) {
    const bool emb = c.kind == Kind::Embedding;
    std::string rule;
    const auto spec = spec_for(c.name, emb ? 0 : position, compute, emb, config, used, rule);
    if (!emb) ++position;
    LayerReport row{c.name, kind_name(c.kind), "", "float", "float", rule, ""};
    if (!spec || (!spec->weight && !spec->activation)) {
      rules[rule].push_back(c.name);
      report.layers.push_back(row);
      if (c.bn) {
        report.layers.push_back({c.bn_name, "BatchNorm2d", "", "float", "float", "",
                                 fmt::format("not folded: its conv '{}' stays float ({})", c.name, rule)});
      }
      continue;
    }
    rules[rule + " (quantized)"].push_back(c.name);
    plan.emplace_back(&c, build(c, *spec, config, row));
    report.layers.push_back(row);
  }
  if (plan.empty() && walk.kept.empty()) {
    std::string why;
    for (const auto& [rule, names] : rules) {
      std::string list;
      for (const auto& n : names) list += (list.empty() ? "" : ", ") + n;
      why += fmt::format("{}{}: {}", why.empty() ? "" : "; ", rule, list);
    }
    TORCH_CHECK_VALUE(false, fmt::format("prepare_qat: every supported layer was skipped by the config ({}); nothing "
                                         "to quantize",
                                         why));
  }
  for (auto& [c, any] : plan) {
    auto it = c->parent->begin() + static_cast<std::ptrdiff_t>(c->index);
    *it = any;
    c->parent->replace_module(std::to_string(c->index), any.ptr());
    if (c->bn) {
      torch::nn::Identity ident;
      *(it + 1) = torch::nn::AnyModule(ident);
      c->parent->replace_module(std::to_string(c->index + 1), ident.ptr());
    }
  }
  std::vector<const LayerReport*> unnamed;  // unsupported layers no skip pattern names: warned about
  for (const auto& r : walk.unsupported) {
    bool hit = false;
    for (const auto& pat : config.skip) {
      if (fnmatch_case(r.name, pat)) ++used[pat], hit = true;
    }
    if (!hit) unnamed.push_back(&r);
  }
  for (const auto& [pat, count] : used) {
    if (count == 0) TORCH_WARN("prepare_qat: pattern '", pat, "' matched no supported layer");
  }
  if (config.first_last == "int8" && !rules.count("default (quantized)") && rules.count("first_last (quantized)")) {
    std::string names;
    for (const auto& n : rules["first_last (quantized)"]) names += (names.empty() ? "" : ", ") + n;
    TORCH_WARN(fmt::format("prepare_qat: the first_last='int8' rule gives every quantized layer ({}) W8A8, so no "
                           "layer gets the config's default spec; the model has only {} compute layer(s). Set "
                           "QATConfig::first_last = \"\" to quantize them all with the default",
                           names, compute));
  }
  for (auto& r : walk.kept) report.layers.push_back(r);
  for (auto& r : walk.floats) {
    TORCH_WARN("prepare_qat: '", r.name, "' stays float: ", r.reason);
    report.layers.push_back(r);
  }
  for (auto& r : walk.unsupported) report.layers.push_back(r);
  if (!unnamed.empty()) {
    std::string list;
    for (std::size_t i = 0; i < unnamed.size() && i < 8; ++i) {
      list += fmt::format("{}'{}' ({})", i ? "; " : "", unnamed[i]->name, unnamed[i]->type);
    }
    if (unnamed.size() > 8) list += fmt::format(" and {} more", unnamed.size() - 8);
    TORCH_WARN(fmt::format("prepare_qat: {} layer(s) with weights stay float, no QAT form exists for their kind: {}. "
                           "qatkit quantizes torch::nn::Linear, Conv1d, Conv2d and Embedding layers; the report lists "
                           "each (a skip pattern naming a layer silences this)",
                           unnamed.size(), list));
  }
  return report;
}

torch::nn::Sequential prepare_qat(const torch::nn::Sequential& model, const QATConfig& config, QATReport* report) {
  torch::nn::Sequential out;
  for (const torch::nn::AnyModule& any : *model) out->push_back(any);
  QATReport r = prepare_qat_inplace(*out, config);
  out->train(model->is_training());
  if (report) *report = std::move(r);
  return out;
}

void calibrate(torch::nn::Module& model, const std::vector<torch::Tensor>& batches,
               const std::function<void(const torch::Tensor&)>& forward) {
  std::vector<ActFakeQuantizerImpl*> acts;
  for_act_quantizers(model, [&](ActFakeQuantizerImpl& a) { acts.push_back(&a); });
  TORCH_CHECK_VALUE(!acts.empty(), "calibrate: the model has no activation quantizers; call qatkit::nn::prepare_qat first");
  TORCH_CHECK_VALUE(static_cast<bool>(forward), "calibrate: forward must be a callable, got an empty std::function");
  // observers switched off (enable_observer(model, false), as QAT recipes do late in training)
  // keep their ranges: the batches change nothing there (Python's calibrate says the same)
  std::string frozen;
  std::size_t n_frozen = 0;
  for (auto* a : acts) {
    if (!a->observer_enabled()) {
      frozen += (frozen.empty() ? "" : ", ") + (a->qualified_name.empty() ? a->name() : a->qualified_name);
      ++n_frozen;
    }
  }
  TORCH_CHECK_VALUE(n_frozen < acts.size(),
                    fmt::format("calibrate: every activation observer is switched off ({}: {}), so the batches "
                                "would change no range; call qatkit::nn::enable_observer(model) first",
                                n_frozen, frozen));
  std::vector<std::pair<std::shared_ptr<torch::nn::Module>, bool>> modes;
  const bool root_mode = model.is_training();
  for (const auto& m : model.modules(/*include_self=*/false)) modes.emplace_back(m, m->is_training());
  auto restore = [&] {
    model.train(root_mode);
    for (auto& [m, was] : modes) m->train(was);  // pre-order: each module after its parents
  };
  for (auto* a : acts) a->observations = 0;
  try {
    torch::NoGradGuard ng;
    model.eval();
    for (auto* a : acts) a->train();
    for (const auto& b : batches) forward(b);
  } catch (...) {
    restore();
    throw;
  }
  restore();
  if (n_frozen > 0) {
    TORCH_WARN("calibrate: ", n_frozen, " activation quantizer(s) have their observer switched off and kept their "
               "ranges: ", frozen, " (qatkit::nn::enable_observer(model) to calibrate them too)");
  }
  std::string idle;
  std::size_t n = 0;
  for (auto* a : acts) {
    if (a->observes_data() && a->observations == 0) {
      idle += (idle.empty() ? "" : ", ") + (a->qualified_name.empty() ? a->name() : a->qualified_name);
      ++n;
    }
  }
  TORCH_CHECK_VALUE(n == 0, fmt::format("calibrate: {} activation quantizer(s) observed nothing: {}; the batches never "
                                        "reached them in training mode (does `forward` call the model in another "
                                        "way, or switch it to eval mode?)",
                                        n, idle));
}

/// Python's convert._check_finite: a NaN weight or bias has no code (the converted layer would
/// answer numbers where the QAT layer gives NaN); an Inf weight gives a binary weight an infinite
/// scale mean|w|. Checked for every layer before any converts.
static void check_finite_for_convert(const std::string& name, torch::nn::Module& layer, const std::string& kind) {
  torch::NoGradGuard ng;
  for (const auto& p : layer.named_parameters(/*recurse=*/false)) {
    const torch::Tensor& t = p.value();
    if ((p.key() != "weight" && p.key() != "bias") || !t.defined() || !t.is_floating_point()) continue;
    TORCH_CHECK_VALUE(!at::isnan(t).any().item<bool>(),
                      fmt::format("convert: the {} of layer '{}' holds NaN (a diverged training run?), which no code "
                                  "stands for; restore a finite checkpoint before convert", p.key(), name));
    TORCH_CHECK_VALUE(p.key() != "weight" || kind != "binary" || !at::isinf(t).any().item<bool>(),
                      fmt::format("convert: the weight of layer '{}' holds Inf, so its binary scale mean|w| is "
                                  "infinite; restore a finite checkpoint before convert", name));
  }
}

std::int64_t convert(torch::nn::Module& model) {
  const std::vector<QatLayer> layers = qat_layers(model);
  TORCH_CHECK_VALUE(!layers.empty() || !qat_type(std::shared_ptr<torch::nn::Module>(&model, [](torch::nn::Module*) {})).empty(),
                    "convert: the model has no QAT layers; call qatkit::nn::prepare_qat(model, config) first");
  std::vector<QatLayer> todo = layers;
  if (!qat_type(std::shared_ptr<torch::nn::Module>(&model, [](torch::nn::Module*) {})).empty()) {
    todo.push_back({"", std::shared_ptr<torch::nn::Module>(&model, [](torch::nn::Module*) {})});
  }
  for (const auto& l : todo) {
    with_layer(l.module, [&](auto& layer) {
      if (layer.converted()) return;
      auto& aq = layer.input_fake_quant;
      TORCH_CHECK_VALUE(!aq || !aq->observes_data() || aq->has_observed(),
                        fmt::format("convert: the input quantizer of layer '{}' has not observed any data yet (its "
                                    "range is empty), so its qparams are meaningless; run training or "
                                    "qatkit::nn::calibrate before convert",
                                    l.name.empty() ? layer.name() : l.name));
      check_finite_for_convert(l.name.empty() ? layer.name() : l.name, layer,
                               layer.weight_fake_quant ? layer.weight_fake_quant->spec().kind : std::string());
    });
  }
  std::int64_t n = 0;
  for (const auto& l : todo) {
    with_layer(l.module, [&](auto& layer) {
      if (layer.converted()) return;
      layer.convert();
      ++n;
    });
  }
  model.eval();
  return n;
}

namespace {

/// Fold every Conv2d -> BatchNorm2d neighbour of the Sequentials in `model` (float, exact in eval
/// mode: W * gamma / sigma, beta + (b - mu) * gamma / sigma, Python's fold_batchnorms arithmetic)
/// and put an Identity where the BatchNorm was. Returns the number folded.
std::int64_t fold_sequential_batchnorms(torch::nn::Module& model) {
  torch::NoGradGuard ng;
  std::int64_t folded = 0;
  std::vector<torch::nn::SequentialImpl*> seqs;
  if (auto* s = dynamic_cast<torch::nn::SequentialImpl*>(&model)) seqs.push_back(s);
  for (const auto& m : model.modules(/*include_self=*/false)) {
    if (auto s = std::dynamic_pointer_cast<torch::nn::SequentialImpl>(m)) seqs.push_back(s.get());
  }
  for (auto* seq : seqs) {
    for (std::size_t i = 0; i + 1 < seq->size(); ++i) {
      auto conv = std::dynamic_pointer_cast<torch::nn::Conv2dImpl>(seq->ptr(i));
      auto bn = std::dynamic_pointer_cast<torch::nn::BatchNorm2dImpl>(seq->ptr(i + 1));
      if (!conv || !bn || bn->options.num_features() != conv->options.out_channels() ||
          !bn->options.track_running_stats()) {
        continue;
      }
      const torch::Tensor std = torch::sqrt(bn->running_var + bn->options.eps());
      const torch::Tensor gamma = bn->options.affine() ? bn->weight : torch::ones_like(std);
      const torch::Tensor beta = bn->options.affine() ? bn->bias : torch::zeros_like(std);
      const torch::Tensor factor = gamma / std;
      const torch::Tensor b = conv->bias.defined() ? conv->bias : torch::zeros_like(bn->running_mean);
      conv->weight.copy_(conv->weight * factor.reshape({-1, 1, 1, 1}));
      const torch::Tensor new_bias = beta + (b - bn->running_mean) * factor;
      if (conv->bias.defined()) {
        conv->bias.copy_(new_bias);
      } else {  // a bias=false conv registers an undefined "bias": replace it
        detail::ModuleAccess::erase_parameter(*conv, "bias");
        conv->bias = conv->register_parameter("bias", new_bias.clone());
        conv->options.bias(true);
      }
      torch::nn::Identity ident;
      *(seq->begin() + static_cast<std::ptrdiff_t>(i + 1)) = torch::nn::AnyModule(ident);
      seq->replace_module(std::to_string(i + 1), ident.ptr());
      ++folded;
    }
  }
  return folded;
}

LayerSpec with_observer(LayerSpec ls, const std::string& observer) {
  if (ls.activation && ls.activation->kind == "int" && ls.activation->scale == "static") ls.activation->observer = observer;
  return ls;
}

}  // namespace

QATReport ptq(torch::nn::Module& model, const std::vector<torch::Tensor>& batches,
              const std::function<void(const torch::Tensor&)>& forward, const QATConfig& config,
              const PTQOptions& options) {
  TORCH_CHECK_VALUE(!batches.empty(), "ptq: batches holds no calibration batch");
  for (std::size_t i = 0; i < batches.size(); ++i) {
    TORCH_CHECK_VALUE(batches[i].defined() && batches[i].numel() > 0,
                      fmt::format("ptq: calibration batch {} is empty", i));
  }
  TORCH_CHECK_VALUE(static_cast<bool>(forward), "ptq: forward must be a callable, got an empty std::function");
  QATConfig cfg = config;
  if (!options.observer.empty()) {
    cfg.default_spec = with_observer(cfg.default_spec, options.observer);
    for (auto& o : cfg.overrides) o.second = with_observer(o.second, options.observer);
  }
  model.eval();
  const std::int64_t folded = options.fold_bn ? fold_sequential_batchnorms(model) : 0;
  QATReport report = prepare_qat_inplace(model, cfg);
  bool has_acts = false;
  for_act_quantizers(model, [&](ActFakeQuantizerImpl&) { has_acts = true; });
  if (has_acts) calibrate(model, batches, forward);  // weight-only configs: nothing to observe
  enable_observer(model, false);
  model.eval();
  if (folded > 0) {
    report.layers.push_back({"", "", "", "", "", fmt::format("ptq: folded {} BatchNorm2d(s) in float", folded), ""});
  }
  return report;
}

void freeze_bn(torch::nn::Module& model, bool on) {
  std::vector<const torch::nn::Module*> inside;  // the BatchNorms folded into QuantConvBn2d layers
  for (const auto& m : model.modules(/*include_self=*/false)) {
    if (auto l = std::dynamic_pointer_cast<QuantConvBn2dImpl>(m)) {
      l->freeze_bn(on);
      if (l->bn) inside.push_back(l->bn.get());
    }
  }
  if (auto* l = dynamic_cast<QuantConvBn2dImpl*>(&model)) {
    l->freeze_bn(on);
    if (l->bn) inside.push_back(l->bn.get());
  }
  if (!on) return;
  // Python's freeze_bn: BatchNorms left unfolded keep batch statistics in training mode; name them
  std::string loose;
  std::size_t n = 0;
  for (const auto& item : model.named_modules("", /*include_self=*/false)) {
    if (is_batchnorm(item.value()) &&
        std::find(inside.begin(), inside.end(), item.value().get()) == inside.end()) {
      if (n++ < 6) loose += (loose.empty() ? "" : ", ") + item.key();
    }
  }
  if (n) {
    TORCH_WARN(fmt::format("freeze_bn: {} BatchNorm layer(s) were not folded ({}{}; the prepare_qat report says why) "
                           "and keep using batch statistics in training mode; freeze_bn switches folded conv + "
                           "BatchNorm layers only (call ->eval() on these to freeze them)",
                           n, loose, n > 6 ? fmt::format(" and {} more", n - 6) : ""));
  }
}

std::int64_t clip_latent_weights(torch::nn::Module& model) {
  torch::NoGradGuard ng;
  std::int64_t clipped = 0;
  auto clip = [&](auto& layer) {
    if (!layer.weight_fake_quant || !layer.weight.defined()) return;
    const auto& c = layer.weight_fake_quant->spec().latent_clip;
    if (!c) return;
    layer.weight.clamp_(-*c, *c);
    ++clipped;
  };
  for (const auto& m : model.modules(/*include_self=*/false)) with_layer(m, clip);
  with_layer(std::shared_ptr<torch::nn::Module>(&model, [](torch::nn::Module*) {}), clip);
  return clipped;
}

void enable_observer(torch::nn::Module& model, bool on) {
  for_act_quantizers(model, [on](ActFakeQuantizerImpl& a) { a.enable_observer(on); });
}

void enable_fake_quant(torch::nn::Module& model, bool on) {
  for_act_quantizers(model, [on](ActFakeQuantizerImpl& a) { a.enable_fake_quant(on); });
}

}  // namespace qatkit::nn
