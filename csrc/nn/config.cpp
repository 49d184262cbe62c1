// C++ QAT configuration from the one preset table (python/qatkit/qat/presets.json, compiled into
// libqatkit by CMake as preset_table.cpp): the QuantSpec choices and defaults, the named specs,
// the first/last-layer rule and the presets are read from it, exactly as Python's
// qatkit.qat.config reads it; the validation rules and messages are Python's QuantSpec's.
#include <c10/util/Exception.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <mutex>
#include <vector>

#include "json.h"
#include "qatkit/nn.h"

namespace qatkit::nn {
namespace detail {
extern const char kPresetTable[];  // generated from presets.json (CMake)
}  // namespace detail

namespace {

const json::Value& table() {
  static const json::Value t = json::parse(detail::kPresetTable, "qatkit preset table");
  return t;
}

std::vector<std::string> strings(const json::Value& list, std::string_view where) {
  std::vector<std::string> out;
  for (const auto& v : list.array) out.push_back(v.as_string(where));
  return out;
}

const std::vector<std::string>& choices(const std::string& field, const std::string& kind = "") {
  static std::map<std::string, std::vector<std::string>> cache;
  static std::mutex mu;
  const std::lock_guard<std::mutex> lock(mu);
  const std::string key = kind.empty() ? field : field + "/" + kind;
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  const json::Value& c = table().at("choices", "preset table").at(field, "preset table choices");
  const json::Value& list = kind.empty() ? c : c.at(kind, "preset table choices." + field);
  return cache.emplace(key, strings(list, "preset table choices")).first->second;
}

void choice(const char* name, const std::string& value, const std::vector<std::string>& valid) {
  if (std::find(valid.begin(), valid.end(), value) != valid.end()) return;
  std::string list;
  for (const auto& v : valid) list += (list.empty() ? "'" : ", '") + v + "'";
  TORCH_CHECK_VALUE(false, fmt::format("QuantSpec.{} must be one of {}, got '{}'", name, list, value));
}

/// `v`, or the preset parameter it names ("$group_size").
const json::Value& resolve(const json::Value& v, const json::Value& params, const std::string& where) {
  if (v.type == json::Value::Type::kString && !v.string.empty() && v.string[0] == '$') {
    const json::Value* p = params.find(v.string.substr(1));
    TORCH_CHECK_VALUE(p != nullptr, fmt::format("{}: no preset parameter '{}'", where, v.string.substr(1)));
    return *p;
  }
  return v;
}

/// Sets `s`'s fields from a JSON object of QuantSpec fields (Python's names); unknown fields raise.
void assign_fields(QuantSpec& s, const json::Value& fields, const json::Value& params, const std::string& where) {
  TORCH_CHECK_VALUE(fields.type == json::Value::Type::kObject, fmt::format("{} must be an object", where));
  for (const auto& [key, raw] : fields.object) {
    const std::string w = where + "." + key;
    const json::Value& v = resolve(raw, params, w);
    if (key == "kind") {
      s.kind = v.as_string(w);
    } else if (key == "bits") {
      s.bits = v.as_int(w);
    } else if (key == "signed") {
      s.is_signed = v.as_bool(w);
    } else if (key == "symmetric") {
      s.symmetric = v.as_bool(w);
    } else if (key == "narrow_range") {
      s.narrow_range = v.as_bool(w);
    } else if (key == "granularity") {
      s.granularity = v.as_string(w);
    } else if (key == "axis") {
      s.axis = v.as_int(w);
      TORCH_CHECK_VALUE(s.axis >= -(std::int64_t{1} << 31) && s.axis < (std::int64_t{1} << 31),
                        fmt::format("QuantSpec.axis must be in [-2^31, 2^31), got {}", s.axis));
    } else if (key == "group_size") {
      s.group_size = v.is_null() ? std::nullopt : std::optional<std::int64_t>(v.as_int(w));
    } else if (key == "scale") {
      s.scale = v.as_string(w);
    } else if (key == "observer") {
      s.observer = v.as_string(w);
    } else if (key == "momentum") {
      s.momentum = v.as_number(w);
    } else if (key == "estimator") {
      s.estimator = v.as_string(w);
    } else if (key == "method") {
      s.method = v.is_null() ? std::string() : v.as_string(w);
    } else if (key == "stochastic") {
      s.stochastic = v.as_bool(w);
    } else if (key == "latent_clip") {
      s.latent_clip = v.is_null() ? std::nullopt : std::optional<double>(v.as_number(w));
    } else if (key == "lsq_grad_scale") {
      s.lsq_grad_scale = v.as_bool(w);
    } else if (key == "scale_dtype") {
      s.scale_dtype = v.as_string(w);
    } else {
      TORCH_CHECK_VALUE(false, fmt::format("{}: unknown QuantSpec field '{}'", where, key));
    }
  }
}

/// A spec reference of the table (a name in "specs", an object of fields, or null).
std::optional<QuantSpec> table_spec(const json::Value& ref, const json::Value& params, const std::string& where) {
  if (ref.is_null()) return std::nullopt;
  const json::Value* fields = &ref;
  std::string w = where;
  if (ref.type == json::Value::Type::kString) {
    fields = &table().at("specs", "preset table").at(ref.string, "preset table specs");
    w = "preset table specs." + ref.string;
  }
  QuantSpec s;
  assign_fields(s, *fields, params, w);
  return s.validated();
}

std::optional<QuantSpec> table_spec(const json::Value* ref, const json::Value& params, const std::string& where) {
  return ref == nullptr ? std::nullopt : table_spec(*ref, params, where);
}

json::Value spec_value(const QuantSpec& s) {
  json::Value v;
  v.set("kind", json::Value::of(s.kind));
  v.set("bits", json::Value::of(s.bits));
  v.set("signed", json::Value::of(s.is_signed));
  v.set("symmetric", json::Value::of(s.symmetric));
  v.set("narrow_range", json::Value::of(s.narrow_range));
  v.set("granularity", json::Value::of(s.granularity));
  v.set("axis", json::Value::of(s.axis));
  v.set("group_size", s.group_size ? json::Value::of(*s.group_size) : json::Value::null());
  v.set("scale", json::Value::of(s.scale));
  v.set("observer", json::Value::of(s.observer));
  v.set("momentum", json::Value::of(s.momentum));
  v.set("estimator", json::Value::of(s.estimator));
  v.set("method", s.method.empty() ? json::Value::null() : json::Value::of(s.method));
  v.set("stochastic", json::Value::of(s.stochastic));
  v.set("latent_clip", s.latent_clip ? json::Value::of(*s.latent_clip) : json::Value::null());
  v.set("lsq_grad_scale", json::Value::of(s.lsq_grad_scale));
  v.set("scale_dtype", json::Value::of(s.scale_dtype));
  return v;
}

json::Value layer_value(const LayerSpec& l) {
  json::Value v;
  v.set("weight", l.weight ? spec_value(*l.weight) : json::Value::null());
  v.set("activation", l.activation ? spec_value(*l.activation) : json::Value::null());
  return v;
}

std::string valid_presets() {
  std::string list;
  for (const auto& n : QATConfig::preset_names()) list += (list.empty() ? "" : ", ") + n;
  return list;
}

}  // namespace

QuantSpec QuantSpec::validated() const {
  QuantSpec s = *this;
  choice("kind", s.kind, choices("kind"));
  choice("granularity", s.granularity, choices("granularity"));
  choice("scale", s.scale, choices("scale"));
  choice("observer", s.observer, choices("observer"));
  choice("scale_dtype", s.scale_dtype, choices("scale_dtype"));
  TORCH_CHECK_VALUE(s.scale_dtype == "float32" || s.scale == "static",
                    fmt::format("QuantSpec.scale_dtype '{}' is for static weight scales; {} scales stay float32", s.scale_dtype, s.scale));
  if (s.kind == "int") {
    TORCH_CHECK_VALUE(s.bits >= 2 && s.bits <= 16,
                      fmt::format("QuantSpec.bits must be in [2, 16] for kind 'int', got {}", s.bits));
    choice("estimator", s.estimator, choices("estimator", "int"));
    TORCH_CHECK_VALUE(s.method.empty(),
                      fmt::format("QuantSpec.method is for ternary/binary specs, got '{}' with kind 'int'", s.method));
    TORCH_CHECK_VALUE(!s.narrow_range || (s.is_signed && s.symmetric),
                      "QuantSpec.narrow_range needs signed=True and symmetric=True");
  } else {
    const bool ternary = s.kind == "ternary";
    const std::int64_t expected_bits = ternary ? 2 : 1;
    TORCH_CHECK_VALUE(s.bits == expected_bits || s.bits == 8,  // 8 is the default: accept it
                      fmt::format("QuantSpec.bits must be {} for kind '{}', got {}", expected_bits, s.kind, s.bits));
    s.bits = expected_bits;
    const std::vector<std::string> methods = choices("method", s.kind);  // a copy: GCC 13's -Wdangling-reference
    if (s.method.empty()) s.method = methods.front();
    choice("method", s.method, methods);
    choice("estimator", s.estimator, choices("estimator", s.kind));
    TORCH_CHECK_VALUE(s.scale != "learned",
                      fmt::format("QuantSpec.scale 'learned' is for kind 'int' (LSQ), got kind '{}'", s.kind));
    TORCH_CHECK_VALUE(s.granularity == "per_tensor" || s.granularity == "per_channel",
                      fmt::format("QuantSpec.granularity must be 'per_tensor' or 'per_channel' for kind '{}', got '{}'",
                                  s.kind, s.granularity));
  }
  TORCH_CHECK_VALUE(!s.stochastic || s.kind == "binary",
                    "QuantSpec.stochastic is BinaryConnect's binary sampling: needs kind 'binary'");
  if (s.granularity == "per_group") {
    TORCH_CHECK_VALUE(s.group_size.has_value() && *s.group_size >= 1,
                      "QuantSpec.group_size must be a positive int for 'per_group'");
  } else {
    TORCH_CHECK_VALUE(!s.group_size.has_value(),
                      fmt::format("QuantSpec.group_size is only for granularity 'per_group', got '{}'", s.granularity));
  }
  TORCH_CHECK_VALUE(s.granularity != "per_token" || s.scale == "dynamic",
                    fmt::format("QuantSpec.granularity 'per_token' needs scale='dynamic', got '{}'", s.scale));
  TORCH_CHECK_VALUE(!(s.scale == "dynamic" && s.kind == "int" && (!s.symmetric || !s.is_signed)),
                    "QuantSpec.scale 'dynamic' is absmax-symmetric: needs symmetric=True and signed=True");
  TORCH_CHECK_VALUE(
      !(s.scale == "learned" && (s.granularity == "per_group" || s.granularity == "per_token")),
      fmt::format("QuantSpec.scale 'learned' supports 'per_tensor' and 'per_channel', got '{}'", s.granularity));
  TORCH_CHECK_VALUE(s.momentum >= 0.0 && s.momentum <= 1.0,
                    fmt::format("QuantSpec.momentum must be in [0, 1], got {}", s.momentum));
  TORCH_CHECK_VALUE(!s.latent_clip || (std::isfinite(*s.latent_clip) && *s.latent_clip > 0.0),
                    fmt::format("QuantSpec.latent_clip must be positive or None, got {}", s.latent_clip.value_or(0.0)));
  return s;
}

std::int64_t QuantSpec::quant_min() const {
  if (kind != "int") return -1;
  if (!is_signed) return 0;
  return -(std::int64_t{1} << (bits - 1)) + (narrow_range ? 1 : 0);
}

std::int64_t QuantSpec::quant_max() const {
  if (kind != "int") return 1;
  return is_signed ? (std::int64_t{1} << (bits - 1)) - 1 : (std::int64_t{1} << bits) - 1;
}

std::string QuantSpec::to_json() const { return json::dump(spec_value(*this)); }

QuantSpec QuantSpec::from_json(const std::string& text) {
  QuantSpec s;
  assign_fields(s, json::parse(text, "QuantSpec::from_json"), json::Value{}, "QuantSpec");
  return s.validated();
}

std::string QATConfig::to_json() const {
  json::Value v;
  v.set("default", layer_value(default_spec));
  json::Value ov;
  ov.type = json::Value::Type::kArray;
  for (const auto& [pattern, spec] : overrides) {
    json::Value pair;
    pair.type = json::Value::Type::kArray;
    pair.array = {json::Value::of(pattern), layer_value(spec)};
    ov.array.push_back(pair);
  }
  v.set("overrides", ov);
  json::Value sk;
  sk.type = json::Value::Type::kArray;
  for (const auto& p : skip) sk.array.push_back(json::Value::of(p));
  v.set("skip", sk);
  v.set("first_last", first_last.empty() ? json::Value::null() : json::Value::of(first_last));
  v.set("bitlinear", json::Value::of(bitlinear));
  v.set("fold_bn", json::Value::of(fold_bn));
  v.set("embeddings", json::Value::of(embeddings));
  v.set("name", json::Value::of(name));
  return json::dump(v);
}

const std::string& QATConfig::table_json() {
  static const std::string text(detail::kPresetTable);
  return text;
}

std::vector<std::string> QATConfig::preset_names() {
  std::vector<std::string> names;
  for (const auto& [name, _] : table().at("presets", "preset table").object) names.push_back(name);
  std::sort(names.begin(), names.end());
  return names;
}

std::optional<LayerSpec> QATConfig::first_last_spec(const std::string& rule) {
  const json::Value& rules = table().at("rules", "preset table").at("first_last", "preset table rules");
  const json::Value* r = rules.find(rule);
  TORCH_CHECK_VALUE(r != nullptr, fmt::format("QATConfig.first_last must be one of 'float', 'int8' or empty, got '{}'",
                                              rule));
  if (r->is_null()) return std::nullopt;
  const std::string where = "preset table rules.first_last." + rule;
  return LayerSpec{table_spec(r->find("weight"), json::Value{}, where + ".weight"),
                   table_spec(r->find("activation"), json::Value{}, where + ".activation")};
}

QATConfig QATConfig::preset(const std::string& name, const std::string& params_json) {
  const json::Value* entry = table().at("presets", "preset table").find(name);
  TORCH_CHECK_VALUE(entry != nullptr, fmt::format("unknown preset '{}'; valid presets: {}", name, valid_presets()));
  // parameters: the preset's defaults, overridden by the caller's (unknown names raise)
  json::Value params;
  params.type = json::Value::Type::kObject;
  if (const json::Value* d = entry->find("params")) params = *d;
  const json::Value given = json::parse(params_json, fmt::format("preset '{}' parameters", name));
  TORCH_CHECK_VALUE(given.type == json::Value::Type::kObject,
                    fmt::format("preset '{}': parameters must be a JSON object, got '{}'", name, params_json));
  for (const auto& [k, v] : given.object) {
    TORCH_CHECK_VALUE(params.find(k) != nullptr, fmt::format("preset '{}' has no parameter '{}'", name, k));
    params.set(k, v);
  }
  const std::string where = "preset table presets." + name;
  QATConfig c;
  c.default_spec = LayerSpec{table_spec(entry->find("weight"), params, where + ".weight"),
                             table_spec(entry->find("activation"), params, where + ".activation")};
  if (const json::Value* fl = entry->find("first_last"); fl != nullptr && !fl->is_null()) {
    c.first_last = fl->as_string(where + ".first_last");
    (void)first_last_spec(c.first_last);  // a rule the table defines
  }
  if (const json::Value* b = entry->find("bitlinear")) c.bitlinear = b->as_bool(where + ".bitlinear");
  if (const json::Value* f = entry->find("fold_bn")) c.fold_bn = f->as_bool(where + ".fold_bn");
  if (const json::Value* e = entry->find("embeddings")) c.embeddings = e->as_bool(where + ".embeddings");
  // the label: "name" with {param} replaced, then the suffix of each true boolean parameter
  std::string label = name;
  if (const json::Value* n = entry->find("name")) label = n->as_string(where + ".name");
  for (const auto& [k, v] : params.object) {
    const std::string token = "{" + k + "}";
    const std::string text = v.type == json::Value::Type::kString ? v.string : json::dump(v);
    for (std::size_t at = label.find(token); at != std::string::npos; at = label.find(token)) {
      label.replace(at, token.size(), text);
    }
  }
  if (const json::Value* suffixes = entry->find("name_suffix")) {
    for (const auto& [k, suffix] : suffixes->object) {
      if (params.at(k, where + ".params").as_bool(where + ".params." + k)) label += suffix.as_string(where);
    }
  }
  c.name = label;
  return c;
}

QATConfig QATConfig::w8a8() { return preset("w8a8"); }
QATConfig QATConfig::w4a8(std::int64_t group_size) {
  return preset("w4a8", fmt::format("{{\"group_size\": {}}}", group_size));
}
QATConfig QATConfig::w4a4_lsq() { return preset("w4a4_lsq"); }
QATConfig QATConfig::ternary_twn() { return preset("ternary_twn"); }
QATConfig QATConfig::bitnet_b158() { return preset("bitnet_b158"); }
QATConfig QATConfig::binary_w1a8() { return preset("binary_w1a8"); }
QATConfig QATConfig::xnor_w1a1() { return preset("xnor_w1a1"); }
QATConfig QATConfig::binaryconnect(bool stochastic) {
  return preset("binaryconnect", stochastic ? "{\"stochastic\": true}" : "{\"stochastic\": false}");
}
QATConfig QATConfig::int8_weight_only() { return preset("int8_weight_only"); }
QATConfig QATConfig::int4_weight_only(std::int64_t group_size, bool symmetric) {
  return preset("int4_weight_only",
                fmt::format("{{\"group_size\": {}, \"symmetric\": {}}}", group_size, symmetric ? "true" : "false"));
}
QATConfig QATConfig::ternary_weight_only() { return preset("ternary_weight_only"); }
QATConfig QATConfig::binary_weight_only() { return preset("binary_weight_only"); }

}  // namespace qatkit::nn
