// qatkit::nn::load: a model file written by Python's qatkit.export (docs/format.md) as a runnable
// torch::nn::Sequential — for files whose header has a `structure` (nn.Sequential trees of packed
// layers and the closed set of modules below). Packed layers become converted QuantLinear /
// QuantConv1d / QuantConv2d / QuantEmbedding (BitLinear when the file says rms_norm) holding the
// file's unpacked codes, scales, zero points, bias and frozen input quantizer: the forward of
// Python's loaded layers, so C++ prints Python's outputs (tests/python/test_cpp_load.py).
// The file is untrusted: the container checks live in safetensors.cpp, the header's here (every
// field read with its type checked; tensors checked against the shapes the header implies).
#include <torch/torch.h>

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <type_traits>
#include <variant>

#include "../ops/checks.h"
#include "integer.h"  // detail::conv_pads
#include "json.h"
#include "module_access.h"
#include "packing.h"
#include "qatkit/nn.h"
#include "qatkit/ops.h"

namespace qatkit::nn {
namespace {

constexpr std::int64_t kFormatVersion = 1;

/// A Sequential inside a Sequential: AnyModule needs a non-template forward.
struct NestedImpl : torch::nn::SequentialImpl {
  using SequentialImpl::SequentialImpl;
  torch::Tensor forward(torch::Tensor x) { return SequentialImpl::forward(std::move(x)); }
};
TORCH_MODULE(Nested);

struct Reader {
  std::string path;
  std::string who = "qatkit::nn::load";  ///< the function named in messages
  std::map<std::string, torch::Tensor> tensors;
  json::Value header;
  /// The layers the structure places at their own names and the tensors the float modules read
  /// (load() checks both against the header: a layer the structure does not place, a float_tensors
  /// list that is not what the modules read)
  mutable std::set<std::string> placed, float_read;
  /// Fuse each ReLU / ReLU6 / Hardtanh after a packed conv into it (load's fuse_activations, integer
  /// compute), and how many places the structure gives each packed layer (a layer placed twice is
  /// not fused: Python's rule for a module used twice)
  bool fuse = false;
  std::map<std::string, int> packed_uses;

  [[noreturn]] void fail(const std::string& msg) const {
    TORCH_CHECK_VALUE(false, fmt::format("{}: '{}': {}", who, path, msg));
  }
  torch::Tensor tensor(const std::string& name) const {
    const auto it = tensors.find(name);
    if (it == tensors.end()) fail(fmt::format("tensor '{}' is missing", name));
    return it->second;
  }
  std::optional<torch::Tensor> maybe(const std::string& name) const {
    const auto it = tensors.find(name);
    if (it == tensors.end()) return std::nullopt;
    return it->second;
  }
  /// The file holds tensor `name` with `sizes`: checked before the module that takes it is built,
  /// so a corrupt size in the header is refused before it allocates anything.
  void expect(const std::string& name, const std::vector<std::int64_t>& sizes) const {
    const torch::Tensor t = tensor(name);
    if (t.sizes() != at::IntArrayRef(sizes)) {
      fail(fmt::format("tensor '{}' has shape {}, the header's module needs {}", name, ops::shape_str(t.sizes()),
                       ops::shape_str(sizes)));
    }
  }
  void load_into(torch::nn::Module& m, const std::string& prefix) const {
    torch::NoGradGuard ng;
    const auto copy_in = [&](const std::string& key, torch::Tensor& dst) {
      const torch::Tensor t = tensor(prefix + key);
      float_read.insert(prefix + key);
      if (t.sizes() != dst.sizes()) {
        fail(fmt::format("tensor '{}{}' has shape {}, the module needs {}", prefix, key, ops::shape_str(t.sizes()),
                         ops::shape_str(dst.sizes())));
      }
      dst.copy_(t);
    };
    for (auto& p : m.named_parameters(false)) copy_in(p.key(), p.value());
    for (auto& b : m.named_buffers(false)) copy_in(b.key(), b.value());
  }
};

/// obj[key] as an int / a number, a mismatch naming the key ("layer 'fc' in_features must be an integer").
std::int64_t int_at(const json::Value& obj, std::string_view key, const std::string& where) {
  return obj.at(key, where).as_int(fmt::format("{} {}", where, key));
}
double number_at(const json::Value& obj, std::string_view key, const std::string& where) {
  return obj.at(key, where).as_number(fmt::format("{} {}", where, key));
}

std::vector<std::int64_t> int_list(const json::Value& v, const std::string& where) {
  if (v.type == json::Value::Type::kNumber) return {v.as_int(where)};
  TORCH_CHECK_VALUE(v.type == json::Value::Type::kArray && v.array.size() <= 8,
                    fmt::format("{} must be an int or a list of ints", where));
  std::vector<std::int64_t> out;
  for (const auto& e : v.array) out.push_back(e.as_int(where));
  return out;
}

template <std::size_t D>
torch::ExpandingArray<D> expand(const json::Value& v, const std::string& where) {
  const auto l = int_list(v, where);
  TORCH_CHECK_VALUE(l.size() == 1 || l.size() == D, fmt::format("{} must hold 1 or {} values", where, D));
  std::vector<std::int64_t> full(D, l[0]);
  if (l.size() == D) full = l;
  return torch::ExpandingArray<D>(full);
}

/// A conv's geometry: an int (every dim) or exactly D ints, as Python's loader takes it (a list of
/// one for a 2-d conv is refused there).
template <std::size_t D>
torch::ExpandingArray<D> conv_dims(const json::Value& v, const std::string& where) {
  TORCH_CHECK_VALUE(v.type == json::Value::Type::kNumber || (v.type == json::Value::Type::kArray && v.array.size() == D),
                    fmt::format("{} must be {} int(s)", where, D));
  return expand<D>(v, where);
}

/// Conv options from a file's conv parameters (packed and float layers alike): padding as numbers
/// or nn.ConvNd's strings ('same' / 'valid'), any of nn.ConvNd's padding modes.
template <size_t D>
torch::nn::ConvOptions<D> conv_options(const Reader& r, const json::Value& p, const std::string& where, bool bias) {
  auto o = torch::nn::ConvOptions<D>(int_at(p, "in_channels", where), int_at(p, "out_channels", where),
                                     conv_dims<D>(p.at("kernel_size", where), where + ": kernel_size"))
               .stride(conv_dims<D>(p.at("stride", where), where + ": stride"))
               .dilation(conv_dims<D>(p.at("dilation", where), where + ": dilation"))
               .groups(int_at(p, "groups", where))
               .bias(bias);
  // Python's bounds (serialization.py, _check_params): kernel_size, stride and dilation >= 1,
  // numeric padding >= 0, each below 2^31. (LibTorch's own conv refuses larger ones only in the
  // forward, some by oneDNN's dnnl::error rather than a c10::Error.)
  const auto bounded = [&](const torch::ExpandingArray<D>& v, std::int64_t lo, const char* what) {
    for (std::size_t d = 0; d < D; ++d) {
      if ((*v)[d] < lo || (*v)[d] >= (std::int64_t{1} << 31)) {
        r.fail(fmt::format("{}: {} must be {} int(s) >= {} and below 2^31, got {}", where, what, D, lo, ops::shape_str(*v)));
      }
    }
  };
  bounded(o.kernel_size(), 1, "kernel_size");
  bounded(o.stride(), 1, "stride");
  bounded(o.dilation(), 1, "dilation");
  // a packed conv's reversed_padding (nn.ConvNd's _reversed_padding_repeated_twice, which Python's
  // layer reads): null or 2 x D ints in [0, 2^31), as Python checks; this loader derives its own
  if (const json::Value* rp = p.find("reversed_padding"); rp != nullptr && !rp->is_null()) {
    bool ok = rp->type == json::Value::Type::kArray && rp->array.size() == 2 * D;
    for (std::size_t i = 0; ok && i < rp->array.size(); ++i) {
      const json::Value& v = rp->array[i];
      ok = v.is_int() && v.number >= 0 && v.number < 2147483648.0;
    }
    if (!ok) r.fail(fmt::format("{}: bad reversed_padding (null or {} ints >= 0)", where, 2 * D));
  }
  const json::Value& pad = p.at("padding", where);
  if (pad.type == json::Value::Type::kString) {
    const std::string s = pad.as_string(where + ".padding");
    if (s == "same") {
      for (std::size_t d = 0; d < D; ++d) {
        if ((*o.stride())[d] != 1) {
          r.fail(fmt::format("{}: padding 'same' needs stride 1, got stride {}", where, ops::shape_str(*o.stride())));
        }
      }
      o.padding(torch::kSame);
    } else if (s == "valid") {
      o.padding(torch::kValid);
    } else {
      r.fail(fmt::format("{}: padding: expected numbers, 'same' or 'valid', got '{}'", where, s));
    }
  } else {
    const torch::ExpandingArray<D> numbers = conv_dims<D>(pad, where + ": padding");
    bounded(numbers, 0, "padding");
    o.padding(numbers);
  }
  const std::string pm = p.at("padding_mode", where).as_string(where + ".padding_mode");
  if (pm == "zeros") {
    o.padding_mode(torch::kZeros);
  } else if (pm == "reflect") {
    o.padding_mode(torch::kReflect);
  } else if (pm == "replicate") {
    o.padding_mode(torch::kReplicate);
  } else if (pm == "circular") {
    o.padding_mode(torch::kCircular);
  } else {
    r.fail(fmt::format("{}.padding_mode: expected 'zeros', 'reflect', 'replicate' or 'circular', got '{}'", where, pm));
  }
  // a padding mode other than zeros pads by reversed_padding in Python's layer and by the pads this
  // loader derives from padding (detail::conv_pads): a packed conv's pair must agree, as nn.ConvNd
  // derives one from the other (a header whose reversed_padding alone was edited ran here and
  // failed or padded otherwise in Python, 2026-12-07)
  if (const json::Value* rp = p.find("reversed_padding"); rp != nullptr && pm != "zeros") {
    const detail::ConvPads cp = detail::conv_pads<D>(o);
    std::vector<std::int64_t> want;
    for (std::size_t d = D; d-- > 0;) want.insert(want.end(), {cp.left[d], cp.right[d]});
    bool same = !rp->is_null() && rp->array.size() == want.size();
    for (std::size_t i = 0; same && i < want.size(); ++i) same = rp->array[i].number == static_cast<double>(want[i]);
    if (!same) {
      r.fail(fmt::format("{}: reversed_padding {} is not what padding {} gives with padding_mode '{}' ({})", where,
                         json::dump(*rp), json::dump(pad), pm, ops::shape_str(want)));
    }
  }
  return o;
}

/// The weight shape a conv of these options holds ([out, in / groups, kernel...]); refuses groups
/// that do not divide the channels (LibTorch would raise only after reading the options).
template <size_t D>
std::vector<std::int64_t> conv_weight_shape(const Reader& r, const torch::nn::ConvOptions<D>& o, const std::string& where) {
  const std::int64_t g = o.groups();
  if (g < 1 || o.in_channels() < 1 || o.out_channels() < 1 || o.in_channels() % g != 0 || o.out_channels() % g != 0) {
    r.fail(fmt::format("{}: {} in / {} out channels in {} groups", where, o.in_channels(), o.out_channels(), g));
  }
  std::vector<std::int64_t> shape{o.out_channels(), o.in_channels() / g};
  for (std::size_t d = 0; d < D; ++d) shape.push_back((*o.kernel_size())[d]);
  return shape;
}

/// A packed layer's geometry before the layer is built: the header's weight shape against its
/// parameters (`implied`) and the packed bytes the file holds for rows x k codes of that width,
/// so a corrupt size in the header is refused before it allocates anything.
void check_packed_geometry(const Reader& r, const std::string& name, const json::Value& w,
                           const std::vector<std::int64_t>& shape, const std::vector<std::int64_t>& implied) {
  const std::string where = fmt::format("layer '{}' weight", name);
  if (shape != implied) {
    r.fail(fmt::format("{}: the shape {} does not match the layer's parameters ({})", where, ops::shape_str(shape),
                       ops::shape_str(implied)));
  }
  const std::int64_t rows = int_at(w, "rows", where), k = int_at(w, "k", where);
  const std::int64_t bits = int_at(w, "bits", where);
  std::int64_t numel = 1;
  for (auto d : shape) numel *= d;  // shape_of bounds each dim below 2^31 and the product below 2^40
  if (shape.empty() || rows != shape[0] || k < 0 || k >= (std::int64_t{1} << 40) || rows * k != numel) {
    r.fail(fmt::format("{}: rows x k = {} x {} does not match the shape", where, rows, k));
  }
  if (bits < 1 || bits > 16) r.fail(fmt::format("{}: bits must be 1 to 16, got {}", where, bits));
  const std::int64_t row_bytes = w.at("packing", where).as_string(where) == "base3" ? (k + 4) / 5
                                 : bits > 8                                        ? 2 * k
                                                                                   : (k * bits + 7) / 8;
  r.expect(name + ".weight_packed", {rows, row_bytes});
}

QuantSpec spec_of(const json::Value& v, const std::string& where) {
  TORCH_CHECK_VALUE(v.type == json::Value::Type::kObject, fmt::format("{} must be a QuantSpec object", where));
  return QuantSpec::from_json(json::dump(v));
}

/// A quantizer record's spec field against the header's, as Python compares them (quantizers.py,
/// _same_value): numbers by value (a momentum of 1.0 recorded as 1.0 against the header's spec,
/// which prints 1, is the same), a float literal in an int field (8.0 for bits) is not; anything else
/// by its JSON text (true is no 1).
bool same_field(const std::string& key, const json::Value& saved, const json::Value& mine) {
  using T = json::Value::Type;
  if (saved.type == T::kNumber && mine.type == T::kNumber) {
    const bool int_field = key == "bits" || key == "axis" || key == "group_size";
    return saved.number == mine.number && !(int_field && saved.float_literal);
  }
  return json::dump(saved) == json::dump(mine);
}

/// The input quantizer of a packed layer from the file: Python's buffer names mapped to C++'s
/// (the observer's state sits under `observer.` in Python). Histogram observers (Python-only)
/// load as min/max ones: a loaded quantizer is frozen, only its scale and zero point matter.
void load_input_quantizer(const Reader& r, const std::string& layer, ActFakeQuantizer& aq, const json::Value& spec) {
  const std::string p = layer + ".input_fake_quant.";
  torch::NoGradGuard ng;
  // Python's quantizers record the spec they were saved with (get_extra_state: a uint8 JSON tensor);
  // Python's load_state_dict refuses a file whose record differs from the header's input spec (a
  // field the record lacks takes QuantSpec's default), and so does this loader
  if (const std::optional<torch::Tensor> rec = r.maybe(p + "_extra_state")) {
    const std::string key = p + "_extra_state";
    if (rec->scalar_type() != torch::kByte || rec->dim() != 1) {
      r.fail(fmt::format("load_state_dict: key '{}' must hold a qatkit quantizer record (a uint8 JSON tensor)", key));
    }
    const torch::Tensor bytes = rec->contiguous();
    json::Value v;
    try {
      v = json::parse(std::string_view(reinterpret_cast<const char*>(bytes.const_data_ptr<std::uint8_t>()),
                                       static_cast<std::size_t>(bytes.numel())), key);
    } catch (const c10::Error&) {
      r.fail(fmt::format("load_state_dict: key '{}' is not a qatkit quantizer record", key));
    }
    if (v.type != json::Value::Type::kObject) {
      r.fail(fmt::format("load_state_dict: key '{}' must hold a qatkit quantizer record (a JSON object)", key));
    }
    const json::Value* saved = v.find("spec");
    const json::Value defaults = json::parse(QuantSpec{}.to_json(), "QuantSpec defaults");
    // the header's spec with its defaults filled in (Python: dataclasses.asdict of the quantizer's spec)
    const json::Value header_spec = json::parse(QuantSpec::from_json(json::dump(spec)).to_json(), "input spec");
    std::string diff;
    std::set<std::string> fields;  // (sorted, as Python lists them)
    for (const auto& [k, mine] : header_spec.object) {
      const json::Value* s = saved != nullptr && saved->type == json::Value::Type::kObject ? saved->find(k) : nullptr;
      if (s == nullptr && saved != nullptr && saved->type == json::Value::Type::kObject) s = defaults.find(k);
      if (s == nullptr || !same_field(k, *s, mine)) fields.insert(k);
    }
    if (saved != nullptr && saved->type == json::Value::Type::kObject) {  // a key QuantSpec does not have
      for (const auto& [k, v] : saved->object) {
        if (header_spec.find(k) == nullptr) fields.insert(k);
      }
    }
    for (const auto& k : fields) diff += (diff.empty() ? "'" : ", '") + k + "'";
    if (!diff.empty()) {
      r.fail(fmt::format("load_state_dict: key '{}' holds a quantizer saved with another spec (fields [{}] differ)", key,
                         diff));
    }
  }
  std::set<std::string> taken{p + "_extra_state"};  // the file's keys this quantizer reads
  // a histogram observer's bins (Python's percentile / kl / mse observers): not needed to compute
  const json::Value* obs = spec.find("observer");
  if (obs != nullptr && obs->type == json::Value::Type::kString &&
      (obs->string == "percentile" || obs->string == "kl" || obs->string == "mse")) {
    taken.insert(p + "observer.histogram");
  }
  std::string found;                                  // the last one
  const auto take = [&](const std::string& name) {
    std::optional<torch::Tensor> t = r.maybe(name);
    if (t) taken.insert(found = name);
    return t;
  };
  for (auto& b : aq->named_buffers(false)) {
    const std::string& key = b.key();
    std::optional<torch::Tensor> t = take(p + key);
    if (!t) t = take(p + "observer." + key);
    if (!t && key == "running_min") t = take(p + "observer.min_val");
    if (!t && key == "running_max") t = take(p + "observer.max_val");
    if (!t) r.fail(fmt::format("tensor '{}{}' (or '{}observer.{}') is missing", p, key, p, key));
    // the shape Python's load_state_dict requires (a [1] for a [] was reshaped here and refused there)
    if (t->sizes() != b.value().sizes()) {
      r.fail(fmt::format("tensor '{}' has shape {}, the quantizer needs {}", found, ops::shape_str(t->sizes()),
                         ops::shape_str(b.value().sizes())));
    }
    b.value().copy_(t->reshape(b.value().sizes()).to(b.value().scalar_type()));
  }
  for (auto& q : aq->named_parameters(false)) {  // LSQ's learned step size and offset
    const torch::Tensor t = r.tensor(p + q.key());
    taken.insert(p + q.key());
    if (t.sizes() != q.value().sizes()) {
      r.fail(fmt::format("tensor '{}{}' has shape {}, the quantizer needs {}", p, q.key(), ops::shape_str(t.sizes()),
                         ops::shape_str(q.value().sizes())));
    }
    q.value().copy_(t.reshape(q.value().sizes()));
  }
  // a key the quantizer does not read (Python's load_state_dict(strict=True) refuses it: a record
  // renamed by corruption, a buffer of another observer)
  std::string extra;
  for (auto it = r.tensors.lower_bound(p); it != r.tensors.end() && it->first.rfind(p, 0) == 0; ++it) {
    if (taken.count(it->first) == 0) extra += fmt::format("{}'{}'", extra.empty() ? "" : ", ", it->first.substr(p.size()));
  }
  if (!extra.empty()) {
    r.fail(fmt::format("layer '{}': the input quantizer's state has unexpected key(s) [{}]", layer, extra));
  }
  // the qparams a kernel would refuse only at the first call (Python's loader checks them too)
  const auto check = [&](const std::string& key, const torch::Tensor& v) {
    if (!v.is_floating_point() || (key != "scale" && key != "zero_point")) return;
    const bool finite = at::isfinite(v).all().item<bool>();
    if (key == "scale" && !(finite && (v >= std::numeric_limits<float>::min()).all().item<bool>())) {
      r.fail(fmt::format("tensor '{}{}' (the input's scale) must be finite and positive (float32 normal)", p, key));
    }
    if (key == "zero_point" && !finite) r.fail(fmt::format("tensor '{}{}' (the input's zero point) must be finite", p, key));
  };
  for (const auto& b : aq->named_buffers(false)) check(b.key(), b.value());
  for (const auto& q : aq->named_parameters(false)) check(q.key(), q.value());
  aq->sync_flags();
  aq->freeze();
}

/// Replace a converted layer's codes, scales and zero points with the file's.
template <typename Layer>
void set_weights(const Reader& r, const std::string& name, const json::Value& w, Layer& layer,
                 const std::vector<std::int64_t>& shape) {
  const std::string where = fmt::format("layer '{}' weight", name);
  auto& frozen = layer->frozen;
  const std::int64_t rows = int_at(w, "rows", where), k = int_at(w, "k", where);
  std::int64_t numel = 1;
  for (auto d : shape) numel *= d;
  if (shape.empty() || rows != shape[0] || rows * k != numel) r.fail(fmt::format("{}: rows x k = {} x {} does not match the shape", where, rows, k));
  const QuantSpec wspec = spec_of(w.at("spec", where), where + " spec");
  // the codes' file form must be the one the spec implies (packing.h, as Python's check): another
  // width or offset would decode other codes than the layer was exported with
  const std::int64_t bits = int_at(w, "bits", where), offset = int_at(w, "offset", where);
  const std::string packing = w.at("packing", where).as_string(where);
  const auto [want_bits, want_offset, want_packing] = detail::packing_for(wspec);
  const bool base3 = wspec.kind == "ternary" && bits == 2 && offset == 1 && packing == "base3";
  if (!base3 && (bits != want_bits || offset != want_offset || packing != want_packing)) {
    r.fail(fmt::format("{}: packing '{}' with {} bit(s) and offset {} does not match the spec (packing '{}' with {} "
                       "bit(s) and offset {})", where, packing, bits, offset, want_packing, want_bits, want_offset));
  }
  const torch::Tensor packed = r.tensor(name + ".weight_packed");
  torch::Tensor codes = qatkit::unpack_weights(packed, bits, k, offset, packing);
  const std::int64_t lo = wspec.quant_min(), hi = wspec.quant_max();
  if (codes.numel() > 0) {
    // a stored value the width holds but the spec does not (a ternary 3, a narrow range's -128):
    // the kernels would compute with it (Python's loader refuses it the same way)
    const std::int64_t cmin = codes.min().item<std::int64_t>(), cmax = codes.max().item<std::int64_t>();
    if (cmin < lo || cmax > hi) {
      r.fail(fmt::format("{}: weight codes must lie in [{}, {}] (the spec's range), got [{}, {}]", where, lo, hi, cmin, cmax));
    }
  }
  const std::string cd = w.at("codes_dtype", where).as_string(where);
  const std::int64_t cd_lo = cd == "int8" ? -128 : cd == "int16" ? -32768 : std::numeric_limits<std::int32_t>::min();
  const std::int64_t cd_hi = cd == "int8" ? 127 : cd == "int16" ? 32767 : std::numeric_limits<std::int32_t>::max();
  if ((cd != "int8" && cd != "int16" && cd != "int32") || lo < cd_lo || hi > cd_hi) {
    r.fail(fmt::format("{}: codes dtype {} does not hold the spec's range [{}, {}]", where, cd, lo, hi));
  }
  codes = codes.to(cd == "int8" ? torch::kChar : torch::kInt).reshape(shape);  // (int16 codes widened: the layers take int8 / int32)
  // scales in the spec's scale_dtype (float32, or float16 / bfloat16 widened exactly)
  const std::string sdt = wspec.scale_dtype;
  const auto want = sdt == "float16" ? torch::kHalf : sdt == "bfloat16" ? torch::kBFloat16 : torch::kFloat;
  const torch::Tensor raw_scale = r.tensor(name + ".weight_scale");
  if (raw_scale.scalar_type() != want) r.fail(fmt::format("{}: weight_scale must be {} (the spec's scale_dtype)", where, sdt));
  const torch::Tensor scale = raw_scale.to(torch::kFloat);
  // binary codes are never 0: an all-zero channel (pruned, dead) has scale 0 (Python's weight_codes)
  const bool binary = wspec.kind == "binary";
  if (!torch::isfinite(scale).all().item<bool>() || !(binary ? scale >= 0 : scale > 0).all().item<bool>()) {
    r.fail(fmt::format("{}: weight_scale must be finite and {}", where, binary ? "non-negative" : "positive"));
  }
  const std::optional<torch::Tensor> zp = r.maybe(name + ".weight_zero_point");
  const json::Value* zp_flag = w.find("zero_point");  // (Python: absent or null reads as false)
  const bool has_zp = zp_flag != nullptr && !zp_flag->is_null() && zp_flag->as_bool(where + ".zero_point");
  if (has_zp != zp.has_value()) r.fail(fmt::format("{}: weight_zero_point presence does not match the header", where));
  torch::Tensor zero = zp ? zp->to(torch::kInt) : torch::zeros(scale.sizes(), torch::kInt);
  if (zero.sizes() != scale.sizes()) r.fail(fmt::format("{}: weight_zero_point must match weight_scale", where));
  if (zp && !((zero >= lo) & (zero <= hi)).all().item<bool>()) {
    r.fail(fmt::format("{}: weight_zero_point outside the code range [{}, {}]", where, lo, hi));
  }
  const json::Value& gs = w.at("group_size", where);
  const json::Value& axis = w.at("axis", where);
  const auto dims = static_cast<std::int64_t>(shape.size());
  if (!axis.is_null() && (axis.as_int(where) < -dims || axis.as_int(where) >= dims)) {
    r.fail(fmt::format("{}: bad axis {} for a {}-d weight", where, axis.as_int(where), dims));
  }
  frozen.group_size = gs.is_null() ? std::nullopt : std::optional<std::int64_t>(gs.as_int(where));
  frozen.axis = axis.is_null() ? std::nullopt : std::optional<std::int64_t>(axis.as_int(where));
  if (frozen.group_size && (*frozen.group_size <= 0 || k % *frozen.group_size != 0 || scale.numel() != rows * (k / *frozen.group_size))) {
    r.fail(fmt::format("{}: group_size does not divide k or the scales are not one per group", where));
  }
  if (!frozen.group_size && frozen.axis && scale.numel() != shape.at(static_cast<std::size_t>((*frozen.axis + static_cast<std::int64_t>(shape.size())) % static_cast<std::int64_t>(shape.size())))) {
    r.fail(fmt::format("{}: the scales are not one per channel", where));
  }
  if (!frozen.group_size && !frozen.axis && scale.numel() != 1) r.fail(fmt::format("{}: per tensor needs 1 scale", where));
  // LibTorch cannot re-register a buffer: point the converted layer's buffers (which frozen's
  // tensors share) at the file's data instead
  torch::NoGradGuard ng;
  const auto replace = [&](torch::Tensor& buffer, const torch::Tensor& value) {
    buffer.set_(value.to(buffer.scalar_type()).contiguous().clone());
  };
  replace(frozen.codes, codes);
  replace(frozen.scale, scale);
  replace(frozen.zero_point, zero);
  frozen.float_weight = false;
  frozen.binary = binary;
  const std::string dt = w.at("dtype", where).as_string(where);
  TORCH_CHECK_VALUE(dt == "float32", fmt::format("qatkit::nn::load: '{}': layer '{}' computes in {}; the C++ loader runs float32 models", r.path, name, dt));
  frozen.dtype = torch::kFloat;
}

template <typename Layer>
void finish_layer(const Reader& r, const std::string& name, const json::Value& info, Layer& layer,
                  const std::vector<std::int64_t>& shape) {
  const std::string where = fmt::format("layer '{}'", name);
  const json::Value& w = info.at("weight", where);
  if (layer->input_fake_quant) {
    load_input_quantizer(r, name, layer->input_fake_quant, info.at("input", where).at("spec", where));
  }
  layer->convert();  // drops the float weight and quantizer, freezes the input quantizer
  set_weights(r, name, w, layer, shape);
  if constexpr (!std::is_same_v<Layer, QuantEmbedding>) {  // (embeddings have no bias)
    if (info.at("bias", where).as_bool(where)) {
      const torch::Tensor b = r.tensor(name + ".bias");
      if (!layer->bias.defined() || b.sizes() != layer->bias.sizes()) r.fail(fmt::format("{}: bias has the wrong shape", where));
      torch::NoGradGuard ng;
      layer->bias.copy_(b);
    }
  }
  if (const std::optional<torch::Tensor> smooth = r.maybe(name + ".smooth")) {
    if constexpr (std::is_same_v<Layer, QuantLinear>) {  // SmoothQuant / AWQ: x / smooth (Python's QuantizedLinear)
      const std::int64_t k = layer->options.in_features();
      if (!smooth->is_floating_point() || smooth->dim() != 1 || smooth->size(0) != k) {
        r.fail(fmt::format("{}: smooth must be a float tensor of shape [{}] (in_features), got {} {}", where, k,
                           c10::toString(smooth->scalar_type()), ops::shape_str(smooth->sizes())));
      }
      const torch::Tensor s = smooth->to(torch::kFloat).contiguous();
      if (!torch::isfinite(s).all().item<bool>() || !(s > 0).all().item<bool>()) {
        r.fail(fmt::format("{}: smooth must be finite and positive (a SmoothQuant / AWQ divisor)", where));
      }
      layer->smooth = s.clone();
    } else {
      r.fail(fmt::format("{} has input scaling ('smooth'), which only Linear layers have", where));
    }
  }
  layer->eval();
}

std::vector<std::int64_t> shape_of(const json::Value& w, const std::string& where) {
  const json::Value& s = w.at("shape", where);
  TORCH_CHECK_VALUE(s.type == json::Value::Type::kArray && !s.array.empty() && s.array.size() <= 5, fmt::format("{}: bad shape", where));
  std::vector<std::int64_t> out;
  std::int64_t numel = 1;
  for (const auto& d : s.array) {
    const std::int64_t v = d.as_int(where + " weight shape");
    TORCH_CHECK_VALUE(v >= 0 && v < (std::int64_t{1} << 31), fmt::format("{}: bad dimension {}", where, v));
    numel = v == 0 ? 0 : numel * v;
    TORCH_CHECK_VALUE(numel < (std::int64_t{1} << 40), fmt::format("{}: the shape holds 2^40 elements or more", where));
    out.push_back(v);
  }
  return out;
}

torch::nn::AnyModule packed_layer(const Reader& r, const std::string& name) {
  const json::Value& layers = r.header.at("layers", "header");
  const json::Value* info_p = layers.find(name);
  if (info_p == nullptr) r.fail(fmt::format("the structure names packed layer '{}', which 'layers' lacks", name));
  const json::Value& info = *info_p;
  const std::string where = fmt::format("layer '{}'", name);
  const std::string type = info.at("type", where).as_string(where);
  const json::Value& p = info.at("params", where);
  const json::Value& w = info.at("weight", where);
  if (w.at("spec", where).is_null()) r.fail(fmt::format("{} has a float weight; the C++ loader needs quantized weights there", where));
  LayerSpec spec{spec_of(w.at("spec", where), where + " weight spec"), std::nullopt};
  const json::Value& in = info.at("input", where);
  if (!in.is_null()) {
    if (in.type != json::Value::Type::kObject) r.fail(fmt::format("{}: input must be null or an object with a spec", where));
    const json::Value* ch = in.find("channels");  // (Python builds its quantizer with it)
    if (ch == nullptr || !ch->is_int() || ch->number < 1 || ch->number >= 2147483648.0) {
      r.fail(fmt::format("{}: the input's channels must be a positive int, got {}", where,
                         ch == nullptr ? std::string("None") : json::dump(*ch).substr(0, 40)));
    }
  }
  // the layer's tensors: one the header does not describe (an input quantizer's, where the header
  // has none) is refused, as Python refuses it, rather than dropped
  {
    const std::string prefix = name + ".";
    std::string extra;
    int n_extra = 0;
    for (auto it = r.tensors.lower_bound(prefix); it != r.tensors.end() && it->first.rfind(prefix, 0) == 0; ++it) {
      const std::string key = it->first.substr(prefix.size());
      const bool takes = key == "weight_packed" || key == "weight_scale" || key == "weight_zero_point" || key == "bias" ||
                         key == "smooth" || (!in.is_null() && key.rfind("input_fake_quant.", 0) == 0);
      if (!takes && n_extra++ < 4) extra += fmt::format("{}'{}'", extra.empty() ? "" : ", ", it->first);
    }
    if (n_extra > 0) r.fail(fmt::format("{}: tensors [{}] are not the layer's (the header does not describe them)", where, extra));
  }
  if (!in.is_null()) {
    QuantSpec a = spec_of(in.at("spec", where), where + " input spec");
    if (a.kind == "int" && a.scale == "static" && a.observer != "minmax" && a.observer != "moving_average") a.observer = "minmax";
    spec.activation = a;
  }
  const std::vector<std::int64_t> shape = shape_of(w, where);
  if ((type == "conv1d" || type == "conv2d") && p.find("reversed_padding") == nullptr) {
    r.fail(fmt::format("{}: missing key 'reversed_padding'", where));  // (null or the pads: Python reads it)
  }
  const json::Value* bias_flag = info.find("bias");
  if (bias_flag == nullptr || bias_flag->type != json::Value::Type::kBool) {
    r.fail(fmt::format("{}: the bias flag must be a bool, got {}", where,
                       bias_flag == nullptr ? std::string("None") : json::dump(*bias_flag).substr(0, 40)));
  }
  const bool bias = bias_flag->boolean;
  if (type == "linear") {
    const auto opts =
        torch::nn::LinearOptions(int_at(p, "in_features", where), int_at(p, "out_features", where)).bias(bias);
    check_packed_geometry(r, name, w, shape, {opts.out_features(), opts.in_features()});
    // BitLinear's RMSNorm eps: the C++ layer computes with 1e-6 (modules.cpp), the one qatkit
    // writes; a file with another (a Python BitLinear whose eps was set) is refused, not run
    // with the wrong one. Python checks eps the same way for every Linear.
    const double eps = number_at(p, "eps", where);
    if (!std::isfinite(eps) || eps < 0) r.fail(fmt::format("{}: bad eps {} (a finite number >= 0)", where, eps));
    if (p.at("rms_norm", where).as_bool(where)) {
      if (eps != 1e-6) {
        r.fail(fmt::format("{}: a BitLinear with RMSNorm eps {}; the C++ BitLinear computes with 1e-6", where, eps));
      }
      BitLinear layer(opts, spec);
      QuantLinear base(std::static_pointer_cast<QuantLinearImpl>(layer.ptr()));
      finish_layer(r, name, info, base, shape);
      return torch::nn::AnyModule(layer);
    }
    QuantLinear layer(opts, spec);
    finish_layer(r, name, info, layer, shape);
    return torch::nn::AnyModule(layer);
  }
  if (type == "conv2d") {
    const auto opts = conv_options<2>(r, p, where, bias);
    check_packed_geometry(r, name, w, shape, conv_weight_shape<2>(r, opts, where));
    QuantConv2d layer(opts, spec);
    finish_layer(r, name, info, layer, shape);
    return torch::nn::AnyModule(layer);
  }
  if (type == "conv1d") {
    const auto opts = conv_options<1>(r, p, where, bias);
    check_packed_geometry(r, name, w, shape, conv_weight_shape<1>(r, opts, where));
    QuantConv1d layer(opts, spec);
    finish_layer(r, name, info, layer, shape);
    return torch::nn::AnyModule(layer);
  }
  if (type == "embedding") {
    if (shape.size() != 2) r.fail(fmt::format("{}: an embedding weight is 2-d", where));
    check_packed_geometry(r, name, w, shape, shape);
    auto opts = torch::nn::EmbeddingOptions(shape[0], shape[1]);
    const json::Value& pad = p.at("padding_idx", where);
    if (!pad.is_null()) {  // (Python's _check_params: a row index, negative from the end)
      const std::int64_t v = pad.as_int(where + " padding_idx");
      if (v < -shape[0] || v >= shape[0]) r.fail(fmt::format("{}: bad padding_idx", where));
      opts.padding_idx(v);
    }
    // max_norm: QuantEmbedding renormalizes the rows it looks up in its (temporary) dequantized
    // table, as Python's PackedEmbedding does through F.embedding (the same ATen ops)
    const json::Value& max_norm = p.at("max_norm", where);
    if (!max_norm.is_null() && max_norm.type != json::Value::Type::kNumber) {
      r.fail(fmt::format("{}: bad max_norm", where));
    }
    const json::Value& norm_type = p.at("norm_type", where);
    if (norm_type.type != json::Value::Type::kNumber) r.fail(fmt::format("{}: bad norm_type", where));
    if (!max_norm.is_null()) opts.max_norm(max_norm.number);
    opts.norm_type(norm_type.number);
    QuantEmbedding layer(opts, spec);
    finish_layer(r, name, info, layer, shape);
    return torch::nn::AnyModule(layer);
  }
  r.fail(fmt::format("{}: unknown type '{}'", where, type));
}

torch::nn::AnyModule build(const Reader& r, const json::Value& node, const std::string& qname, int depth);
void fill(const Reader& r, const json::Value& node, const std::string& qname, int depth, torch::nn::SequentialImpl& seq);

/// The constructor arguments each module kind's structure entry carries (Python's _LEAVES in
/// serialization.py, the writer's list, and its bias flag), and the ones files written before
/// 2026-12-05 lack. Both loaders refuse an entry that misses one of the others or has one more: a
/// missing argument would take LibTorch's default, which the file may not have been written with.
struct LeafArgs {
  std::string_view type;
  std::vector<std::string_view> required, optional;
};

const std::vector<LeafArgs>& leaf_args() {
  static const std::vector<LeafArgs> table = {
      {"ReLU", {}, {}},
      {"ReLU6", {}, {}},
      {"LeakyReLU", {"negative_slope"}, {}},
      {"PReLU", {"num_parameters"}, {}},
      {"ELU", {"alpha"}, {}},
      {"Hardtanh", {"min_val", "max_val"}, {}},
      {"Hardswish", {}, {}},
      {"Hardsigmoid", {}, {}},
      {"GELU", {"approximate"}, {}},
      {"SiLU", {}, {}},
      {"Mish", {}, {}},
      {"Tanh", {}, {}},
      {"Sigmoid", {}, {}},
      {"Softmax", {"dim"}, {}},
      {"LogSoftmax", {"dim"}, {}},
      {"Identity", {}, {}},
      {"Flatten", {"start_dim", "end_dim"}, {}},
      {"Unflatten", {"dim", "unflattened_size"}, {}},
      {"Dropout", {"p"}, {}},
      {"MaxPool1d", {"kernel_size", "stride", "padding", "dilation", "ceil_mode"}, {}},
      {"MaxPool2d", {"kernel_size", "stride", "padding", "dilation", "ceil_mode"}, {}},
      {"AvgPool1d", {"kernel_size", "stride", "padding", "ceil_mode", "count_include_pad"}, {}},
      {"AvgPool2d", {"kernel_size", "stride", "padding", "ceil_mode", "count_include_pad"}, {"divisor_override"}},
      {"AdaptiveAvgPool1d", {"output_size"}, {}},
      {"AdaptiveAvgPool2d", {"output_size"}, {}},
      {"BatchNorm1d", {"num_features", "eps", "momentum", "affine", "track_running_stats"}, {}},
      {"BatchNorm2d", {"num_features", "eps", "momentum", "affine", "track_running_stats"}, {}},
      {"LayerNorm", {"normalized_shape", "eps", "elementwise_affine"}, {"bias"}},
      {"Linear", {"in_features", "out_features", "bias"}, {}},
      {"Conv1d",
       {"in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "padding_mode", "bias"},
       {}},
      {"Conv2d",
       {"in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "padding_mode", "bias"},
       {}},
      {"Embedding", {"num_embeddings", "embedding_dim", "padding_idx"}, {"max_norm", "norm_type"}},
  };
  return table;
}

/// Python's message for a missing or unexpected argument (serialization.py, _build).
void check_leaf_args(const Reader& r, const std::string& type, const json::Value& args) {
  const auto& table = leaf_args();
  const auto it = std::find_if(table.begin(), table.end(), [&](const LeafArgs& l) { return l.type == type; });
  if (it == table.end()) return;  // (leaf() names the unknown type)
  const auto has = [](const std::vector<std::string_view>& v, std::string_view k) {
    return std::find(v.begin(), v.end(), k) != v.end();
  };
  std::string missing, extra;
  for (std::string_view k : it->required) {
    if (args.find(k) == nullptr) missing += fmt::format("{}'{}'", missing.empty() ? "" : ", ", k);
  }
  for (const auto& [k, v] : args.object) {
    if (!has(it->required, k) && !has(it->optional, k)) extra += fmt::format("{}'{}'", extra.empty() ? "" : ", ", k);
  }
  if (!missing.empty()) r.fail(fmt::format("{} arguments [{}] are missing", type, missing));
  if (!extra.empty()) r.fail(fmt::format("unexpected arguments [{}] for {}", extra, type));
  // each argument's type and range, by its name (Python's _arg_ok; an int is a number written without
  // a fraction or exponent, as Python's json reads it)
  using T = json::Value::Type;
  const auto small = [](const json::Value& v, double lo) {
    return v.is_int() && v.number >= lo && v.number < 2147483648.0;
  };
  const auto number = [](const json::Value& v) {
    return v.type == T::kNumber && std::isfinite(v.number) && std::fabs(v.number) < 2147483648.0;
  };
  const auto small_list = [&](const json::Value& v, double lo) {
    if (v.type != T::kArray || v.array.empty() || v.array.size() > 8) return false;
    return std::all_of(v.array.begin(), v.array.end(), [&](const json::Value& e) { return small(e, lo); });
  };
  const auto in = [](std::string_view k, std::initializer_list<std::string_view> names) {
    return std::find(names.begin(), names.end(), k) != names.end();
  };
  for (const auto& [k, v] : args.object) {
    bool ok = false;
    if (in(k, {"start_dim", "end_dim", "dim", "num_features", "in_features", "out_features", "in_channels", "out_channels",
               "groups", "num_embeddings", "embedding_dim"})) {
      ok = small(v, -2147483648.0);
    } else if (k == "unflattened_size") {  // one -1 (inferred) allowed, as nn.Unflatten takes it
      ok = small_list(v, -1) && std::count_if(v.array.begin(), v.array.end(), [](const json::Value& e) {
                                  return e.number == -1;
                                }) <= 1;
    } else if (in(k, {"kernel_size", "stride", "padding", "dilation", "output_size", "normalized_shape"})) {
      ok = small(v, 0) || small_list(v, 0) ||
           (k == "padding" && (type == "Conv1d" || type == "Conv2d") && v.type == T::kString &&
            (v.string == "same" || v.string == "valid"));
    } else if (in(k, {"num_parameters", "divisor_override"})) {
      ok = (v.is_null() && k == "divisor_override") || small(v, 1);
    } else if (in(k, {"p", "eps", "momentum", "max_norm", "norm_type"})) {
      ok = (v.is_null() && (k == "momentum" || k == "max_norm")) || (number(v) && v.number >= 0);
    } else if (in(k, {"negative_slope", "alpha", "min_val", "max_val"})) {
      ok = number(v);
    } else if (in(k, {"affine", "track_running_stats", "elementwise_affine", "ceil_mode", "count_include_pad", "bias"})) {
      ok = v.type == T::kBool;
    } else if (in(k, {"approximate", "padding_mode"})) {
      ok = v.type == T::kString && v.string.size() < 64;
    } else if (k == "padding_idx") {
      ok = v.is_null() || small(v, -2147483648.0);
    }
    if (!ok) r.fail(fmt::format("{} argument {}={} has the wrong type or is out of range", type, k, json::dump(v).substr(0, 60)));
  }
}

torch::nn::AnyModule leaf(const Reader& r, const std::string& type, const json::Value& args, const std::string& qname) {
  const std::string where = fmt::format("module '{}' ({})", qname, type);
  check_leaf_args(r, type, args);
  const auto arg = [&](const char* k) -> const json::Value& { return args.at(k, where); };
  const std::string prefix = qname.empty() ? "" : qname + ".";
  // a number argument Python's structure check let through (finite); a corrupt file fails here
  const auto number = [&](const char* k) {
    const double v = arg(k).as_number(where);
    if (!std::isfinite(v)) r.fail(fmt::format("{}: {} must be finite, got {}", where, k, v));
    return v;
  };
  if (type == "ReLU") return torch::nn::AnyModule(torch::nn::ReLU());
  if (type == "ReLU6") return torch::nn::AnyModule(torch::nn::ReLU6());
  if (type == "LeakyReLU") {
    return torch::nn::AnyModule(torch::nn::LeakyReLU(torch::nn::LeakyReLUOptions().negative_slope(number("negative_slope"))));
  }
  if (type == "ELU") return torch::nn::AnyModule(torch::nn::ELU(torch::nn::ELUOptions().alpha(number("alpha"))));
  if (type == "Hardtanh") {
    const double lo = number("min_val"), hi = number("max_val");
    if (!(hi > lo)) r.fail(fmt::format("{}: max_val {} must exceed min_val {}", where, hi, lo));
    return torch::nn::AnyModule(torch::nn::Hardtanh(torch::nn::HardtanhOptions().min_val(lo).max_val(hi)));
  }
  if (type == "PReLU") {
    const std::int64_t n = arg("num_parameters").as_int(where);
    if (n < 1) r.fail(fmt::format("{}: num_parameters must be positive, got {}", where, n));
    r.expect(prefix + "weight", {n});
    torch::nn::PReLU prelu(torch::nn::PReLUOptions().num_parameters(n));
    r.load_into(*prelu, prefix);
    return torch::nn::AnyModule(prelu);
  }
  if (type == "Hardswish") return torch::nn::AnyModule(Hardswish());
  if (type == "Hardsigmoid") return torch::nn::AnyModule(Hardsigmoid());
  if (type == "Mish") return torch::nn::AnyModule(torch::nn::Mish());
  if (type == "Softmax") return torch::nn::AnyModule(torch::nn::Softmax(arg("dim").as_int(where)));
  if (type == "LogSoftmax") return torch::nn::AnyModule(torch::nn::LogSoftmax(arg("dim").as_int(where)));
  if (type == "SiLU") return torch::nn::AnyModule(torch::nn::SiLU());
  if (type == "Tanh") return torch::nn::AnyModule(torch::nn::Tanh());
  if (type == "Sigmoid") return torch::nn::AnyModule(torch::nn::Sigmoid());
  if (type == "Identity") return torch::nn::AnyModule(torch::nn::Identity());
  if (type == "GELU") return torch::nn::AnyModule(torch::nn::GELU(torch::nn::GELUOptions().approximate(arg("approximate").as_string(where))));
  if (type == "Dropout") return torch::nn::AnyModule(torch::nn::Dropout(arg("p").as_number(where)));
  if (type == "Flatten") {
    return torch::nn::AnyModule(torch::nn::Flatten(torch::nn::FlattenOptions().start_dim(arg("start_dim").as_int(where)).end_dim(arg("end_dim").as_int(where))));
  }
  if (type == "Unflatten") {
    return torch::nn::AnyModule(
        torch::nn::Unflatten(torch::nn::UnflattenOptions(arg("dim").as_int(where), int_list(arg("unflattened_size"), where))));
  }
  const auto max_pool = [&](auto dims) {
    constexpr std::size_t D = decltype(dims)::value;
    using Options = std::conditional_t<D == 1, torch::nn::MaxPool1dOptions, torch::nn::MaxPool2dOptions>;
    using Pool = std::conditional_t<D == 1, torch::nn::MaxPool1d, torch::nn::MaxPool2d>;
    return torch::nn::AnyModule(Pool(Options(expand<D>(arg("kernel_size"), where))
                                         .stride(expand<D>(arg("stride"), where))
                                         .padding(expand<D>(arg("padding"), where))
                                         .dilation(expand<D>(arg("dilation"), where))
                                         .ceil_mode(arg("ceil_mode").as_bool(where))));
  };
  if (type == "MaxPool2d") return max_pool(std::integral_constant<std::size_t, 2>());
  if (type == "MaxPool1d") return max_pool(std::integral_constant<std::size_t, 1>());
  if (type == "AvgPool2d") {
    auto o = torch::nn::AvgPool2dOptions(expand<2>(arg("kernel_size"), where))
                 .stride(expand<2>(arg("stride"), where))
                 .padding(expand<2>(arg("padding"), where))
                 .ceil_mode(arg("ceil_mode").as_bool(where))
                 .count_include_pad(arg("count_include_pad").as_bool(where));
    const json::Value* d = args.find("divisor_override");  // absent in files written before 2026-12-05
    if (d != nullptr && !d->is_null()) {
      const std::int64_t v = d->as_int(where);
      if (v < 1) r.fail(fmt::format("{}: divisor_override must be positive, got {}", where, v));
      o.divisor_override(v);
    }
    return torch::nn::AnyModule(torch::nn::AvgPool2d(o));
  }
  if (type == "AvgPool1d") {
    return torch::nn::AnyModule(torch::nn::AvgPool1d(torch::nn::AvgPool1dOptions(expand<1>(arg("kernel_size"), where))
                                                         .stride(expand<1>(arg("stride"), where))
                                                         .padding(expand<1>(arg("padding"), where))
                                                         .ceil_mode(arg("ceil_mode").as_bool(where))
                                                         .count_include_pad(arg("count_include_pad").as_bool(where))));
  }
  if (type == "AdaptiveAvgPool2d") {
    const auto o = expand<2>(arg("output_size"), where);
    return torch::nn::AnyModule(torch::nn::AdaptiveAvgPool2d(torch::nn::AdaptiveAvgPool2dOptions({(*o)[0], (*o)[1]})));
  }
  if (type == "AdaptiveAvgPool1d") {
    return torch::nn::AnyModule(torch::nn::AdaptiveAvgPool1d(torch::nn::AdaptiveAvgPool1dOptions(expand<1>(arg("output_size"), where))));
  }
  if (type == "Embedding") {  // a float embedding table (embeddings=False keeps them float)
    auto o = torch::nn::EmbeddingOptions(arg("num_embeddings").as_int(where), arg("embedding_dim").as_int(where));
    const json::Value& pad = arg("padding_idx");
    if (!pad.is_null()) o.padding_idx(pad.as_int(where));
    const json::Value* max_norm = args.find("max_norm");  // absent in files written before 2026-12-05
    if (max_norm != nullptr && !max_norm->is_null()) {
      o.max_norm(max_norm->as_number(where));
      const json::Value* nt = args.find("norm_type");
      if (nt != nullptr) o.norm_type(nt->as_number(where));
    }
    r.expect(prefix + "weight", {o.num_embeddings(), o.embedding_dim()});
    torch::nn::Embedding emb(o);
    r.load_into(*emb, prefix);
    return torch::nn::AnyModule(emb);
  }
  if (type == "BatchNorm2d" || type == "BatchNorm1d") {
    const std::int64_t n = arg("num_features").as_int(where);
    const double eps = arg("eps").as_number(where);
    const bool affine = arg("affine").as_bool(where), track = arg("track_running_stats").as_bool(where);
    if (!arg("momentum").is_null() && !(number("momentum") >= 0.0)) r.fail(fmt::format("{}: momentum must be >= 0", where));
    if (n < 1) r.fail(fmt::format("{}: num_features must be positive, got {}", where, n));
    if (affine) r.expect(prefix + "weight", {n});
    if (track) r.expect(prefix + "running_mean", {n});
    if (type == "BatchNorm2d") {
      torch::nn::BatchNorm2d bn(torch::nn::BatchNorm2dOptions(n).eps(eps).affine(affine).track_running_stats(track));
      r.load_into(*bn, prefix);
      bn->eval();
      return torch::nn::AnyModule(bn);
    }
    torch::nn::BatchNorm1d bn(torch::nn::BatchNorm1dOptions(n).eps(eps).affine(affine).track_running_stats(track));
    r.load_into(*bn, prefix);
    bn->eval();
    return torch::nn::AnyModule(bn);
  }
  if (type == "LayerNorm") {
    if (arg("elementwise_affine").as_bool(where)) r.expect(prefix + "weight", int_list(arg("normalized_shape"), where));
    torch::nn::LayerNorm ln(torch::nn::LayerNormOptions(int_list(arg("normalized_shape"), where)).eps(arg("eps").as_number(where))
                                .elementwise_affine(arg("elementwise_affine").as_bool(where)));
    const json::Value* bias = args.find("bias");  // nn.LayerNorm(bias=False), which LibTorch lacks: a zero shift
    if (ln->options.elementwise_affine() && bias != nullptr && !bias->as_bool(where)) {
      torch::NoGradGuard ng;
      ln->bias.zero_();
      const torch::Tensor w = r.tensor(prefix + "weight");
      r.float_read.insert(prefix + "weight");
      if (w.sizes() != ln->weight.sizes()) r.fail(fmt::format("{}: weight has the wrong shape", where));
      ln->weight.copy_(w);
    } else {
      r.load_into(*ln, prefix);
    }
    return torch::nn::AnyModule(ln);
  }
  if (type == "Linear") {
    r.expect(prefix + "weight", {arg("out_features").as_int(where), arg("in_features").as_int(where)});
    torch::nn::Linear lin(torch::nn::LinearOptions(arg("in_features").as_int(where), arg("out_features").as_int(where)).bias(arg("bias").as_bool(where)));
    r.load_into(*lin, prefix);
    return torch::nn::AnyModule(lin);
  }
  if (type == "Conv2d") {  // a layer left float (first / last layers under first_last="float")
    const auto opts = conv_options<2>(r, args, where, arg("bias").as_bool(where));
    r.expect(prefix + "weight", conv_weight_shape<2>(r, opts, where));
    torch::nn::Conv2d conv(opts);
    r.load_into(*conv, prefix);
    return torch::nn::AnyModule(conv);
  }
  if (type == "Conv1d") {
    const auto opts = conv_options<1>(r, args, where, arg("bias").as_bool(where));
    r.expect(prefix + "weight", conv_weight_shape<1>(r, opts, where));
    torch::nn::Conv1d conv(opts);
    r.load_into(*conv, prefix);
    return torch::nn::AnyModule(conv);
  }
  r.fail(fmt::format("{}: a module type the C++ loader does not build", where));
}

/// The converted weight of a packed conv or Linear (its clamp is the fused activation's), or null.
ConvertedWeight* packed_clampable(torch::nn::AnyModule& m) {
  const auto p = m.ptr();
  if (auto c = std::dynamic_pointer_cast<QuantConv2dImpl>(p)) return &c->frozen;
  if (auto c = std::dynamic_pointer_cast<QuantConv1dImpl>(p)) return &c->frozen;
  if (auto l = std::dynamic_pointer_cast<QuantLinearImpl>(p)) return &l->frozen;  // BitLinear too
  return nullptr;
}

/// The bounds and kind of a ReLU / ReLU6 / Hardtanh (the activations that are clamps), or nullopt.
struct Clamp {
  std::string kind;
  double lo;
  std::optional<double> hi;
};
std::optional<Clamp> clamp_of(torch::nn::AnyModule& m) {
  const auto p = m.ptr();
  if (std::dynamic_pointer_cast<torch::nn::ReLUImpl>(p)) return Clamp{"ReLU", 0.0, std::nullopt};
  if (std::dynamic_pointer_cast<torch::nn::ReLU6Impl>(p)) return Clamp{"ReLU6", 0.0, 6.0};
  if (auto h = std::dynamic_pointer_cast<torch::nn::HardtanhImpl>(p)) {
    return Clamp{"Hardtanh", h->options.min_val(), h->options.max_val()};
  }
  return std::nullopt;
}

/// load's activation fusion on one Sequential's children (Python's qatkit.fuse_activations): a
/// packed conv or Linear placed once in the structure, then only Identity modules, then a ReLU /
/// ReLU6 / Hardtanh (no -0.0 bound, ordered bounds): the layer takes the clamp, the activation's
/// place a FusedActivation.
void fuse_children(const Reader& r, std::vector<std::pair<std::string, torch::nn::AnyModule>>& kids,
                   const json::Value& children) {
  for (std::size_t i = 0; i < kids.size(); ++i) {
    ConvertedWeight* conv = packed_clampable(kids[i].second);
    const json::Value& node = children.array[i].array[1];
    if (conv == nullptr || conv->clamped() || node.find("name") == nullptr) continue;
    const auto uses = r.packed_uses.find(node.at("name", "structure").as_string("structure"));
    if (uses == r.packed_uses.end() || uses->second != 1) continue;
    std::size_t j = i + 1;
    while (j < kids.size() && std::dynamic_pointer_cast<torch::nn::IdentityImpl>(kids[j].second.ptr())) ++j;
    if (j == kids.size()) continue;
    const std::optional<Clamp> c = clamp_of(kids[j].second);
    const auto negative_zero = [](double v) { return v == 0.0 && std::signbit(v); };
    if (!c || negative_zero(c->lo) || (c->hi && (negative_zero(*c->hi) || !(c->lo <= *c->hi)))) continue;
    conv->clamp_min = c->lo;
    conv->clamp_max = c->hi;
    kids[j].second = torch::nn::AnyModule(FusedActivation(c->kind, c->lo, c->hi));
  }
}

void fill(const Reader& r, const json::Value& node, const std::string& qname, int depth, torch::nn::SequentialImpl& seq) {
  const std::string where = fmt::format("structure at '{}'", qname);
  const json::Value& kids = node.at("children", where);
  if (kids.type != json::Value::Type::kArray) r.fail(where + ": children must be a list");
  std::vector<std::pair<std::string, torch::nn::AnyModule>> built;
  for (const auto& kid : kids.array) {
    if (kid.type != json::Value::Type::kArray || kid.array.size() != 2) r.fail(where + ": each child is [name, node]");
    const std::string n = kid.array[0].as_string(where);
    built.emplace_back(n, build(r, kid.array[1], qname.empty() ? n : qname + "." + n, depth + 1));
  }
  if (r.fuse) fuse_children(r, built, kids);
  for (auto& [n, m] : built) seq.push_back(n, std::move(m));
}

/// How many places the structure gives each packed layer (its own name and its aliases).
void count_packed(const json::Value& node, std::map<std::string, int>& uses, int depth) {
  if (depth > 64 || node.type != json::Value::Type::kObject) return;  // (build() refuses such a structure)
  const json::Value* type = node.find("type");
  const json::Value* name = node.find("name");
  if (type != nullptr && type->type == json::Value::Type::kString && type->string == "packed" && name != nullptr &&
      name->type == json::Value::Type::kString) {
    ++uses[name->string];
  }
  const json::Value* kids = node.find("children");
  if (kids == nullptr || kids->type != json::Value::Type::kArray) return;
  for (const json::Value& kid : kids->array) {
    if (kid.type == json::Value::Type::kArray && kid.array.size() == 2) count_packed(kid.array[1], uses, depth + 1);
  }
}

torch::nn::AnyModule build(const Reader& r, const json::Value& node, const std::string& qname, int depth) {
  if (depth > 64) r.fail("the structure nests deeper than 64 levels");
  const std::string where = fmt::format("structure at '{}'", qname);
  const std::string type = node.at("type", where).as_string(where);
  if (type == "packed") {
    // a layer sits at the name its tensors carry, and may sit at other places too (a module used
    // twice: the structure points its aliases at it); load() checks each sits at its own name
    const std::string& name = node.at("name", where).as_string(where);
    if (name == qname) r.placed.insert(name);
    return packed_layer(r, name);
  }
  if (type == "Sequential") {
    Nested seq;
    fill(r, node, qname, depth, *seq);
    return torch::nn::AnyModule(seq);
  }
  const json::Value* args = node.find("args");
  if (args != nullptr && args->type != json::Value::Type::kObject) r.fail(fmt::format("{}: {} arguments must be an object", where, type));
  static const json::Value kNone = [] {
    json::Value v;
    v.type = json::Value::Type::kObject;
    return v;
  }();
  return leaf(r, type, args ? *args : kNone, qname);
}

}  // namespace

namespace {

/// The file's container and header, checked (load and load_into): the tensors, the qatkit header
/// of a version this reader reads, with 'layers' (an object) and 'float_tensors' (a list of names).
void open_file(Reader& r, const std::string& path) {
  r.path = path;
  const TensorFile file = read_safetensors(path);
  for (const auto& [name, t] : file.tensors) r.tensors.emplace(name, t);
  const std::string* meta = nullptr;
  for (const auto& [k, v] : file.metadata) {
    if (k == "qatkit") meta = &v;
  }
  if (meta == nullptr) r.fail("no qatkit header (not written by qatkit.export)");
  r.header = json::parse(*meta, path + " qatkit header");
  if (r.header.type != json::Value::Type::kObject) r.fail("the qatkit header must be a JSON object");
  const std::int64_t version = r.header.at("format_version", "header").as_int("format_version");
  if (version < 1 || version > kFormatVersion) {
    r.fail(fmt::format("format version {}; this qatkit reads up to {} (upgrade qatkit)", version, kFormatVersion));
  }
  // Python's reader needs both (read_header); this one reads the float tensors by module instead
  const json::Value* layers = r.header.find("layers");
  const json::Value* floats = r.header.find("float_tensors");
  if (layers == nullptr || layers->type != json::Value::Type::kObject || floats == nullptr ||
      floats->type != json::Value::Type::kArray) {
    r.fail("the header needs 'layers' (object) and 'float_tensors' (list)");
  }
  for (const json::Value& f : floats->array) {
    if (f.type != json::Value::Type::kString) r.fail("float_tensors must be a list of tensor names");
  }
}

}  // namespace

torch::nn::Sequential load(const std::string& path, const std::string& compute, bool fuse_activations) {
  TORCH_CHECK_VALUE(compute == "integer" || compute == "float",
                    fmt::format("load: compute must be 'integer' or 'float', got '{}'", compute));
  Reader r;
  open_file(r, path);
  const json::Value* layers = r.header.find("layers");
  const json::Value* floats = r.header.find("float_tensors");
  const json::Value* structure = r.header.find("structure");
  if (structure == nullptr || structure->is_null()) {
    const json::Value* gap = r.header.find("structure_gap");  // the first module load cannot rebuild (since 2026-12-05)
    const std::string why = gap != nullptr && gap->type == json::Value::Type::kString ? ": " + gap->as_string("structure_gap").substr(0, 300) : "";
    r.fail(fmt::format("the model is not an nn.Sequential tree of modules qatkit knows{}; load it into a model built "
                       "with its architecture: qatkit::nn::load_into (C++), qatkit.load_into (Python)", why));
  }
  r.fuse = fuse_activations && compute == "integer";  // (Python fuses with integer compute only)
  if (r.fuse) count_packed(*structure, r.packed_uses, 0);
  torch::nn::Sequential seq;
  if (structure->type == json::Value::Type::kObject &&
      structure->at("type", "structure").as_string("structure") == "Sequential") {
    fill(r, *structure, "", 0, *seq);
  } else {
    seq->push_back(build(r, *structure, "", 0));
  }
  // every layer the header lists sits in the structure at its own name (Python checks them all,
  // placed or not, and counts a layer placed elsewhere only: its tensors fit no module)
  for (const auto& [name, info] : layers->object) {
    if (r.placed.count(name) == 0) r.fail(fmt::format("layer '{}' is not in the structure at its own name", name));
  }
  // the float tensors the modules read are the header's list (Python's "does not fit the model")
  std::set<std::string> listed;
  for (const json::Value& f : floats->array) listed.insert(f.string);
  std::string missing, extra;
  for (const auto& k : r.float_read) {
    if (listed.count(k) == 0) missing += fmt::format("{}'{}'", missing.empty() ? "" : ", ", k);
  }
  for (const auto& k : listed) {
    if (r.float_read.count(k) == 0) extra += fmt::format("{}'{}'", extra.empty() ? "" : ", ", k);
  }
  if (!missing.empty() || !extra.empty()) {
    r.fail(fmt::format("does not fit the model: missing [{}], unexpected [{}] (float_tensors)", missing, extra));
  }
  seq->eval();
  set_compute(*seq, compute);  // integer kernels where they run the layer (Python's qatkit.load default)
  return seq;
}

namespace {

template <std::size_t D>
std::string padding_str(const torch::nn::detail::conv_padding_t<D>& p) {
  if (const auto* a = std::get_if<torch::ExpandingArray<D>>(&p)) return ops::shape_str(**a);
  return std::holds_alternative<torch::enumtype::kSame>(p) ? "'same'" : "'valid'";
}

/// The options load_into compares, as text (the message shows both sides).
std::string options_str(const torch::nn::LinearOptions& o) {
  return fmt::format("in_features={}, out_features={}, bias={}", o.in_features(), o.out_features(), o.bias());
}
template <std::size_t D>
std::string options_str(const torch::nn::detail::ConvNdOptions<D>& o) {
  std::string mode = torch::enumtype::get_enum_name(o.padding_mode()).substr(1);  // "kZeros" -> "zeros" (Python's)
  mode[0] = static_cast<char>(std::tolower(static_cast<unsigned char>(mode[0])));
  return fmt::format("in_channels={}, out_channels={}, kernel_size={}, stride={}, padding={}, dilation={}, groups={}, "
                     "bias={}, padding_mode={}",
                     o.in_channels(), o.out_channels(), ops::shape_str(*o.kernel_size()), ops::shape_str(*o.stride()),
                     padding_str<D>(o.padding()), ops::shape_str(*o.dilation()), o.groups(), o.bias(),
                     mode);
}
std::string options_str(const torch::nn::EmbeddingOptions& o) {
  const auto n = o.num_embeddings();
  const auto pad = o.padding_idx() ? std::to_string(*o.padding_idx() < 0 ? *o.padding_idx() + n : *o.padding_idx())
                                   : std::string("None");
  return fmt::format("num_embeddings={}, embedding_dim={}, padding_idx={}, max_norm={}, norm_type={}", n,
                     o.embedding_dim(), pad, o.max_norm() ? fmt::format("{}", *o.max_norm()) : std::string("None"),
                     o.norm_type());
}

/// One packed layer of the file and the model's module at its name, checked to fit: the call gives
/// the module the built layer's state (load_into's second pass, after every check).
using Placement = std::function<void()>;

template <typename Impl>
std::optional<Placement> place_as(const Reader& r, const std::string& name, const std::shared_ptr<torch::nn::Module>& built,
                                  const std::shared_ptr<torch::nn::Module>& target, const char* kind) {
  auto b = std::dynamic_pointer_cast<Impl>(built);
  if (!b) return std::nullopt;
  auto t = std::dynamic_pointer_cast<Impl>(target);
  // a QuantLinear where the file's Linear is a BitLinear (RMSNorm first), or the other way round
  const bool bit_b = std::dynamic_pointer_cast<BitLinearImpl>(built) != nullptr;
  const bool bit_t = std::dynamic_pointer_cast<BitLinearImpl>(target) != nullptr;
  if (!t || bit_b != bit_t) {
    r.fail(fmt::format("layer '{}' is a {} in the model, where the file holds a packed {}: build it as {} (a typed "
                       "member cannot be swapped for another module)", name, target->name(), bit_b ? "BitLinear" : kind,
                       bit_b ? "qatkit::nn::BitLinear" : fmt::format("qatkit::nn::{}", kind)));
  }
  const std::string want = options_str(b->options), have = options_str(t->options);
  if (want != have) {
    r.fail(fmt::format("layer '{}': the model's {} has {}; the file's layer has {}", name, kind, have, want));
  }
  return Placement([b, t] {
                     // the file's layer, state and all, into the model's module (its identity kept:
                     // the parents and typed members that hold it now hold the loaded layer)
                     static_cast<Impl&>(*t) = std::move(static_cast<Impl&>(*b));
                   });
}

/// A file's conv into a model's QuantConvBn2d (a C++ QAT model's Conv2d + BatchNorm2d, which save
/// writes as the conv with the folded weight and bias, and which computes as that conv once
/// converted): the options but the bias flag agree (the fold gives the conv a bias), and the layer is
/// not converted yet. Its weight, bias, BatchNorm and quantizers then give way to the loaded conv's
/// state (codes, scales, zero points and bias buffers, the input quantizer), as convert leaves it (its
/// one-byte freeze_bn flag stays: LibTorch cannot remove a buffer, and a converted layer ignores it).
std::optional<Placement> place_conv_bn(const Reader& r, const std::string& name, const std::shared_ptr<torch::nn::Module>& built,
                                       const std::shared_ptr<torch::nn::Module>& target) {
  auto b = std::dynamic_pointer_cast<QuantConv2dImpl>(built);
  auto t = std::dynamic_pointer_cast<QuantConvBn2dImpl>(target);
  if (!b || !t) return std::nullopt;
  if (t->converted()) {
    r.fail(fmt::format("layer '{}' is a converted QuantConvBn2d: load into a model whose QuantConvBn2d layers are not "
                       "converted (a new one)", name));
  }
  auto mine = t->options;
  mine.bias(b->options.bias());
  const std::string want = options_str(b->options), have = options_str(mine);
  if (want != have) r.fail(fmt::format("layer '{}': the model's QuantConvBn2d has {}; the file's layer has {}", name, have, want));
  return Placement([b, t] {
                     torch::nn::Module& m = *t;
                     std::vector<std::string> kids, params;
                     for (const auto& c : m.named_children()) kids.push_back(c.key());
                     for (const auto& p : m.named_parameters(false)) params.push_back(p.key());
                     for (const auto& k : kids) m.unregister_module(k);
                     for (const auto& k : params) detail::ModuleAccess::erase_parameter(m, k);
                     for (const auto& q : b->named_buffers(false)) m.register_buffer(q.key(), q.value());
                     for (const auto& c : b->named_children()) m.register_module(c.key(), c.value());
                     t->options = b->options;
                     t->layer_spec = b->layer_spec;
                     t->weight = torch::Tensor();
                     t->bias = b->bias;
                     t->bn = nullptr;
                     t->weight_fake_quant = nullptr;
                     t->input_fake_quant = b->input_fake_quant;
                     t->frozen = b->frozen;
                     t->learned_watch = LearnedParamWatch();
                     m.eval();
                   });
}

std::string names_str(const std::vector<std::string>& v) {
  std::string out;
  for (std::size_t i = 0; i < v.size() && i < 8; ++i) out += fmt::format("{}'{}'", i ? ", " : "", v[i]);
  if (v.size() > 8) out += fmt::format(", ... ({} in all)", v.size());
  return out;
}

}  // namespace

std::int64_t load_into(torch::nn::Module& model, const std::string& path, const std::string& compute) {
  TORCH_CHECK_VALUE(compute == "integer" || compute == "float",
                    fmt::format("load_into: compute must be 'integer' or 'float', got '{}'", compute));
  Reader r;
  r.who = "qatkit::nn::load_into";
  open_file(r, path);
  const json::Value& layers = *r.header.find("layers");
  const json::Value& floats = *r.header.find("float_tensors");
  // the model's modules by qualified name; a module registered at several places is listed at each
  // (the model itself through a pointer that does not own it: named_modules(include_self) needs the
  // model held by a shared_ptr, which a module on the stack is not)
  std::vector<std::pair<std::string, std::shared_ptr<torch::nn::Module>>> all{
      {"", std::shared_ptr<torch::nn::Module>(std::shared_ptr<torch::nn::Module>(), &model)}};
  for (const auto& item : model.named_modules("", /*include_self=*/false)) all.emplace_back(item.key(), item.value());
  std::map<std::string, std::shared_ptr<torch::nn::Module>> by_name(all.begin(), all.end());

  // 1. every check first: the model is changed only once the whole file fits it
  std::vector<Placement> placed;
  std::set<const torch::nn::Module*> loaded;
  for (const auto& [name, info] : layers.object) {
    const auto it = by_name.find(name);
    if (it == by_name.end()) r.fail(fmt::format("the file holds layer '{}', which the model does not have", name));
    torch::nn::AnyModule built = packed_layer(r, name);  // every check of the file's layer (load's)
    const auto b = built.ptr();
    std::optional<Placement> p = place_as<QuantLinearImpl>(r, name, b, it->second, "QuantLinear");
    if (!p) p = place_conv_bn(r, name, b, it->second);  // (a QuantConvBn2d takes a file's conv)
    if (!p) p = place_as<QuantConv2dImpl>(r, name, b, it->second, "QuantConv2d");
    if (!p) p = place_as<QuantConv1dImpl>(r, name, b, it->second, "QuantConv1d");
    if (!p) p = place_as<QuantEmbeddingImpl>(r, name, b, it->second, "QuantEmbedding");
    if (!p) r.fail(fmt::format("layer '{}': a packed layer of a kind load_into does not place", name));
    if (!loaded.insert(it->second.get()).second) {
      r.fail(fmt::format("layer '{}' is the model's module at another of the file's layers too", name));
    }
    placed.push_back(std::move(*p));
  }
  // a qatkit layer the file does not hold packed (the file's model keeps it float) would keep the
  // model's own state: refused, as Python's load_into leaves no QAT layer unloaded
  std::vector<std::string> unloaded;
  for (const auto& [n, m] : all) {
    if (detail::is_qat_layer(*m) && loaded.count(m.get()) == 0) unloaded.push_back(n.empty() ? std::string("(the model)") : n);
  }
  if (!unloaded.empty()) {
    r.fail(fmt::format("the model's qatkit layers [{}] are not packed layers of the file (it keeps them float, or "
                       "it is another model's): build them as torch::nn modules", names_str(unloaded)));
  }
  // the file's Identity and ReLU modules (a folded BatchNorm's place, cross-layer equalization's
  // ReLU for a ReLU6): the model has that module there or none (a typed member cannot be swapped)
  if (const json::Value* changes = r.header.find("module_changes"); changes != nullptr && !changes->is_null()) {
    if (changes->type != json::Value::Type::kObject) r.fail("module_changes must map module names to module type names");
    for (const auto& [name, kind_v] : changes->object) {
      const std::string kind = kind_v.as_string("module_changes");
      if (kind != "Identity" && kind != "ReLU") r.fail(fmt::format("unknown module change '{}' at '{}'", kind, name));
      const auto it = by_name.find(name);
      if (it == by_name.end()) continue;
      const bool ok = kind == "Identity" ? std::dynamic_pointer_cast<torch::nn::IdentityImpl>(it->second) != nullptr
                                         : std::dynamic_pointer_cast<torch::nn::ReLUImpl>(it->second) != nullptr;
      if (!ok) {
        r.fail(fmt::format("the file's model has {} at '{}' ({}), the model a {}: build it as torch::nn::{} or leave it "
                           "out", kind, name,
                           kind == "Identity" ? "a BatchNorm folded into the layer before it, or an Identity"
                                              : "cross-layer equalization makes a ReLU6 a ReLU",
                           it->second->name(), kind));
      }
    }
  }
  // the float tensors: every parameter and buffer outside the packed layers, by name
  std::vector<std::string> inside;
  for (const auto& [n, m] : all) {
    if (loaded.count(m.get())) inside.push_back(n.empty() ? std::string() : n + ".");
  }
  const auto in_packed = [&](const std::string& key) {
    return std::any_of(inside.begin(), inside.end(), [&](const std::string& pre) { return key.rfind(pre, 0) == 0; });
  };
  std::vector<std::pair<std::string, torch::Tensor>> want;
  for (const auto& p : model.named_parameters(true)) {
    if (!in_packed(p.key())) want.emplace_back(p.key(), p.value());
  }
  for (const auto& b : model.named_buffers(true)) {
    if (!in_packed(b.key())) want.emplace_back(b.key(), b.value());
  }
  std::set<std::string> listed;
  for (const json::Value& f : floats.array) listed.insert(f.string);
  std::vector<std::string> missing, extra;
  std::set<std::string> wanted;
  for (const auto& [k, t] : want) {
    wanted.insert(k);
    if (listed.count(k) == 0) missing.push_back(k);
  }
  for (const auto& k : listed) {
    if (wanted.count(k) == 0) extra.push_back(k);
  }
  if (!missing.empty() || !extra.empty()) {
    r.fail(fmt::format("does not fit the model: the model's tensors [{}] are not in the file, the file's float tensors "
                       "[{}] are not in the model", names_str(missing), names_str(extra)));
  }
  for (const auto& [k, t] : want) {
    const torch::Tensor f = r.tensor(k);
    if (f.sizes() != t.sizes()) {
      r.fail(fmt::format("tensor '{}' has shape {}, the model's {}", k, ops::shape_str(f.sizes()), ops::shape_str(t.sizes())));
    }
    if (!f.is_floating_point() && f.scalar_type() != t.scalar_type()) {
      r.fail(fmt::format("tensor '{}' is {}, the model's {}", k, c10::toString(f.scalar_type()), c10::toString(t.scalar_type())));
    }
  }
  // 2. the model takes the file's state
  {
    torch::NoGradGuard ng;
    for (auto& assign : placed) assign();
    for (auto& [k, t] : want) t.copy_(r.tensor(k));
  }
  model.eval();
  set_compute(model, compute);
  return static_cast<std::int64_t>(placed.size());
}

}  // namespace qatkit::nn
