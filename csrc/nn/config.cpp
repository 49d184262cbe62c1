// C++ QAT configuration: QuantSpec validation (the rules and messages of Python's
// qatkit.qat.QuantSpec) and the presets of qatkit.qat.config.
#include <c10/util/Exception.h>
#include <fmt/format.h>

#include <algorithm>
#include <vector>

#include "qatkit/nn.h"

namespace qatkit::nn {
namespace {

void choice(const char* name, const std::string& value, const std::vector<std::string>& valid) {
  if (std::find(valid.begin(), valid.end(), value) != valid.end()) return;
  std::string list;
  for (const auto& v : valid) list += (list.empty() ? "'" : ", '") + v + "'";
  TORCH_CHECK_VALUE(false, fmt::format("QuantSpec.{} must be one of {}, got '{}'", name, list, value));
}

QuantSpec int_weight(std::int64_t bits, const std::string& granularity, std::optional<std::int64_t> gs = {},
                     const std::string& scale = "static") {
  QuantSpec s;
  s.bits = bits;
  s.symmetric = true;
  s.narrow_range = bits == 8;
  s.granularity = granularity;
  s.group_size = gs;
  s.scale = scale;
  return s.validated();
}

QuantSpec int_act(std::int64_t bits = 8, const std::string& scale = "static") {
  QuantSpec s;
  s.bits = bits;
  s.symmetric = false;
  s.scale = scale;
  return s.validated();
}

QuantSpec binary_weight() {
  QuantSpec s;
  s.kind = "binary";
  s.method = "mean_abs";
  s.granularity = "per_channel";
  return s.validated();
}

}  // namespace

QuantSpec QuantSpec::validated() const {
  QuantSpec s = *this;
  choice("kind", s.kind, {"int", "ternary", "binary"});
  choice("granularity", s.granularity, {"per_tensor", "per_channel", "per_group", "per_token"});
  choice("scale", s.scale, {"static", "dynamic", "learned"});
  choice("observer", s.observer, {"moving_average", "minmax"});
  if (s.kind == "int") {
    TORCH_CHECK_VALUE(s.bits >= 2 && s.bits <= 16,
                      fmt::format("QuantSpec.bits must be in [2, 16] for kind 'int', got {}", s.bits));
    choice("estimator", s.estimator, {"clipped_ste"});
    TORCH_CHECK_VALUE(s.method.empty(),
                      fmt::format("QuantSpec.method is for ternary/binary specs, got '{}' with kind 'int'", s.method));
    TORCH_CHECK_VALUE(!s.narrow_range || (s.is_signed && s.symmetric),
                      "QuantSpec.narrow_range needs signed=True and symmetric=True");
  } else {
    const bool ternary = s.kind == "ternary";
    s.bits = ternary ? 2 : 1;
    if (s.method.empty()) s.method = ternary ? "absmean" : "none";
    if (ternary) {
      choice("method", s.method, {"absmean", "twn"});
      choice("estimator", s.estimator, {"clipped_ste"});
    } else {
      choice("method", s.method, {"none", "mean_abs", "bitnet"});
      choice("estimator", s.estimator, {"identity", "clipped_ste", "approx_sign", "swish_sign"});
    }
    TORCH_CHECK_VALUE(s.scale != "learned",
                      fmt::format("QuantSpec.scale 'learned' is for kind 'int' (LSQ), got kind '{}'", s.kind));
    TORCH_CHECK_VALUE(s.granularity == "per_tensor" || s.granularity == "per_channel",
                      fmt::format("QuantSpec.granularity must be 'per_tensor' or 'per_channel' for kind '{}', got '{}'",
                                  s.kind, s.granularity));
  }
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

QATConfig QATConfig::w8a8() {
  QATConfig c;
  c.default_spec = {int_weight(8, "per_channel"), int_act(8)};
  return c;
}

QATConfig QATConfig::w4a8(std::int64_t group_size) {
  QATConfig c;
  c.default_spec = {int_weight(4, "per_group", group_size), int_act(8)};
  c.first_last = "int8";
  return c;
}

QATConfig QATConfig::w4a4_lsq() {
  QATConfig c;
  c.default_spec = {int_weight(4, "per_channel", {}, "learned"), int_act(4, "learned")};
  c.first_last = "int8";
  return c;
}

QATConfig QATConfig::ternary_twn() {
  QuantSpec w;
  w.kind = "ternary";
  w.method = "twn";
  w.granularity = "per_channel";
  QATConfig c;
  c.default_spec = {w.validated(), int_act(8)};
  c.first_last = "int8";
  return c;
}

QATConfig QATConfig::bitnet_b158() {
  QuantSpec w;
  w.kind = "ternary";
  w.method = "absmean";
  QuantSpec a;
  a.granularity = "per_token";
  a.scale = "dynamic";
  QATConfig c;
  c.default_spec = {w.validated(), a.validated()};
  c.first_last = "float";
  c.bitlinear = true;
  return c;
}

QATConfig QATConfig::binary_w1a8() {
  QATConfig c;
  c.default_spec = {binary_weight(), int_act(8)};
  c.first_last = "int8";
  return c;
}

QATConfig QATConfig::xnor_w1a1() {
  QuantSpec a;
  a.kind = "binary";
  a.method = "bitnet";
  a.granularity = "per_channel";
  a.axis = 0;
  QATConfig c;
  c.default_spec = {binary_weight(), a.validated()};
  c.first_last = "int8";
  return c;
}

QATConfig QATConfig::preset(const std::string& name) {
  if (name == "w8a8") return w8a8();
  if (name == "w4a8") return w4a8();
  if (name == "w4a4_lsq") return w4a4_lsq();
  if (name == "ternary_twn") return ternary_twn();
  if (name == "bitnet_b158") return bitnet_b158();
  if (name == "binary_w1a8") return binary_w1a8();
  if (name == "xnor_w1a1") return xnor_w1a1();
  TORCH_CHECK_VALUE(false, fmt::format("unknown preset '{}'; valid presets: binary_w1a8, bitnet_b158, ternary_twn, "
                                       "w4a4_lsq, w4a8, w8a8, xnor_w1a1",
                                       name));
}

}  // namespace qatkit::nn
