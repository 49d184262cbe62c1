// Integer compute for converted C++ layers (docs/integer.md): set_compute builds, per layer, the
// operands of the integer kernel that runs it — the same rules and the same operands as Python's
// qatkit.qat.integer (_int8_plan), so C++ and Python give the same bits — and the layers' forwards
// call qatkit::linear_int8 / linear_dynamic_int8 / linear_w2a8 / linear_w1a8 / linear_w4a8 / conv2d_int8 /
// conv2d_w4a8 with them.
#include <ATen/ops/cat.h>
#include <c10/util/Exception.h>
#include <fmt/format.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>

#include "integer.h"
#include "qatkit/nn.h"
#include "qatkit/ops.h"

namespace qatkit::nn {
namespace {

constexpr double kInt32Max = 2147483647.0;

/// Ternary codes [N, K] -> the W2A8 layout (ops.pack_ternary_t2).
torch::Tensor pack_t2(const torch::Tensor& codes) {
  const std::int64_t n = codes.size(0), k = codes.size(1), kp = (k + 127) / 128 * 128;
  torch::Tensor c = codes.to(torch::kInt16) + 1;
  c = at::cat({c, torch::ones({n, kp - k}, c.options())}, 1).reshape({n, kp / 128, 4, 32});
  const torch::Tensor p = c.select(2, 0) + c.select(2, 1) * 4 + c.select(2, 2) * 16 + c.select(2, 3) * 64;
  return p.to(torch::kUInt8).reshape({n, kp / 4}).contiguous();
}

/// Binary codes [N, K] -> the W1A8 layout (ops.pack_binary_b1).
torch::Tensor pack_b1(const torch::Tensor& codes) {
  const std::int64_t n = codes.size(0), k = codes.size(1), kp = (k + 31) / 32 * 32;
  torch::Tensor bits = (codes > 0).to(torch::kInt32);
  bits = at::cat({bits, torch::zeros({n, kp - k}, bits.options())}, 1).reshape({n, kp / 8, 8});
  bits = bits * torch::pow(2, torch::arange(8, bits.options()));
  return bits.sum(2).to(torch::kUInt8).contiguous();
}

/// Symmetric 4-bit codes [N, K] -> the W4 layout (ops.pack_int4_w4).
torch::Tensor pack_w4(const torch::Tensor& codes) {
  const std::int64_t n = codes.size(0), k = codes.size(1);
  const torch::Tensor c = (codes.to(torch::kInt16) + 8).reshape({n, k / 32, 2, 16});
  return (c.select(2, 0) + c.select(2, 1) * 16).to(torch::kUInt8).reshape({n, k / 2}).contiguous();
}

/// The plan of one converted layer, or null (float math). conv: the layer is a conv with `groups`.
/// XNOR-Net layers (Python's _xnor_plan): binary weight codes, inputs binarized per sample by the
/// 'bitnet' rule; convs only with symmetric zero padding (other modes, and 'same' padding's odd
/// zero row or column, would pad floats before binarizing).
std::shared_ptr<IntegerKernelPlan> make_xnor_plan(const ConvertedWeight& f, const QuantSpec& wspec,
                                                  const ActFakeQuantizer& aq, const torch::Tensor& bias, bool conv,
                                                  std::int64_t groups, bool zeros_padding) {
  const QuantSpec& as = aq->spec();
  if (as.method != "bitnet" || aq->axis() != std::optional<std::int64_t>(0) || !aq->fake_quant_enabled()) return nullptr;
  if (wspec.kind != "binary" || f.group_size || (conv && !zeros_padding)) return nullptr;
  const torch::Tensor w = f.codes.reshape({f.codes.size(0), -1});
  if (w.numel() && !((w == 1) | (w == -1)).all().item<bool>()) return nullptr;
  torch::Tensor ws = f.scale.detach().to(torch::kFloat).reshape({-1});
  if (ws.numel() == 1) ws = ws.expand({w.size(0)});
  if (ws.numel() != w.size(0)) return nullptr;
  auto plan = std::make_shared<IntegerKernelPlan>();
  plan->binary_input = true;
  plan->out_scale = ws.contiguous();
  plan->weight_bits = 1;
  plan->groups = conv ? groups : 1;  // conv2d_w1a1 takes any groups (grouped / depthwise: conv2d_int8's kernels on the codes)
  plan->weight = pack_b1(w);
  if (bias.defined()) plan->bias = bias.detach().to(torch::kFloat).contiguous();
  return plan;
}

/// Linears with dynamic int8 inputs, per token or per tensor (Python's _dynamic_plan):
/// linear_dynamic_int8 with ternary, binary or int8 weight codes in [-127, 127] and a quant_max <= 127 whose int32 bound
/// K * (qmax + 1) * max|w| fits.
std::shared_ptr<IntegerKernelPlan> make_dynamic_plan(const ConvertedWeight& f, const QuantSpec& wspec,
                                                     const QuantSpec& as, const torch::Tensor& bias, bool rows) {
  const std::int64_t qmax = as.quant_max();
  if (f.group_size || f.codes.dim() != 2 || f.codes.scalar_type() != torch::kChar || qmax < 1 || qmax > 127) {
    return nullptr;
  }
  const torch::Tensor& w = f.codes;
  const std::int64_t wmax = w.numel() ? w.abs().max().item<std::int64_t>() : 0;
  if ((w.numel() && w.min().item<int>() < -127) ||
      static_cast<double>(w.size(1)) * static_cast<double>(qmax + 1) * static_cast<double>(wmax) > kInt32Max) {
    return nullptr;
  }
  torch::Tensor ws = f.scale.detach().to(torch::kFloat).reshape({-1});
  if (ws.numel() == 1) ws = ws.expand({w.size(0)});
  if (ws.numel() != w.size(0)) return nullptr;
  auto plan = std::make_shared<IntegerKernelPlan>();
  plan->dynamic_input = true;
  if (wspec.kind == "ternary" && wmax <= 1) {
    plan->weight_bits = 2;
    plan->weight = pack_t2(w);
  } else if (wspec.kind == "binary" && (!w.numel() || ((w == 1) | (w == -1)).all().item<bool>())) {
    plan->weight_bits = 1;
    plan->weight = rows ? pack_b1(w) : qatkit::pack_binary_panel(pack_b1(w));
  } else {
    plan->weight_bits = 8;
    plan->weight = rows ? w.contiguous() : qatkit::pack_int8_panel(w);
  }
  plan->out_scale = ws.contiguous();
  plan->act_quant_max = qmax;
  plan->per_tensor_input = as.granularity != "per_token";
  if (bias.defined()) plan->bias = bias.detach().to(torch::kFloat).contiguous();
  return plan;
}

/// Weight-only Linear layers (Python's "weight_only" form): codes that fit 4 bits (int4, ternary,
/// binary) with per-group scales, or per-channel / per-tensor ones (one group per row, K a multiple
/// of 32), on linear_w4_weight_only; 5- to 8-bit symmetric codes with per-channel / per-tensor scales
/// (int8_weight_only) on linear_w8_weight_only.
std::shared_ptr<IntegerKernelPlan> make_weight_only_plan(const ConvertedWeight& f, const QuantSpec& wspec,
                                                         const torch::Tensor& bias, bool rows) {
  if ((wspec.kind == "int" && wspec.bits > 8) || f.codes.dim() != 2 || f.codes.scalar_type() != torch::kChar) {
    return nullptr;
  }
  const std::int64_t n = f.codes.size(0), k = f.codes.size(1);
  if (wspec.kind == "int" && wspec.bits > 4) {  // int8_weight_only (Python's _w8_weight_only): linear_w8_weight_only
    if (f.group_size || (f.scale.numel() != 1 && f.scale.numel() != n) || (f.zero_point != 0).any().item<bool>()) {
      return nullptr;
    }
    auto plan = std::make_shared<IntegerKernelPlan>();
    plan->float_input = true;
    plan->weight_bits = 8;
    plan->weight = f.codes.contiguous();
    plan->out_scale = f.scale.to(torch::kFloat).reshape({-1}).expand({n}).contiguous();
    if (bias.defined()) plan->bias = bias.detach().to(torch::kFloat).contiguous();
    return plan;
  }
  const bool row_scales = (f.scale.numel() == 1 || f.scale.numel() == n) &&
                          (f.zero_point.numel() == 1 || f.zero_point.numel() == n);
  if (!f.group_size && !row_scales) return nullptr;
  const std::int64_t gs = f.group_size ? *f.group_size : k;  // per-channel / per-tensor: one group per row
  if (gs == 0 || gs % 32 || k % gs) return nullptr;
  if (f.codes.numel() && (f.codes.min().item<int>() < -8 || f.codes.max().item<int>() > 7)) return nullptr;
  auto plan = std::make_shared<IntegerKernelPlan>();
  plan->float_input = true;
  plan->weight_bits = 4;
  // the layout the CPU kernels read without transposing (rows: what the CUDA kernels read)
  plan->weight = rows ? pack_w4(f.codes) : qatkit::pack_int4_panel(pack_w4(f.codes));
  plan->group_size = gs;
  plan->group_scale = f.scale.to(torch::kFloat).reshape({-1}).expand({n * (k / gs)}).reshape({n, k / gs}).contiguous();
  const torch::Tensor z = f.zero_point.reshape({-1}).expand({n * (k / gs)}).reshape({n, k / gs});
  if ((z != 0).any().item<bool>()) plan->group_zero = z.to(torch::kFloat).contiguous();
  if (n % 16 == 0 && !rows) {  // the panel's blocked scales [n / 16, G, 16]: no per-call transpose (Python's plan too)
    const auto blocked = [&](const torch::Tensor& t) {
      return t.reshape({n / 16, 16, k / gs}).transpose(1, 2).contiguous();
    };
    plan->group_scale = blocked(plan->group_scale);
    if (plan->group_zero.defined()) plan->group_zero = blocked(plan->group_zero);
  }
  if (bias.defined()) plan->bias = bias.detach().to(torch::kFloat).contiguous();
  return plan;
}

std::int64_t version_sum(const std::vector<torch::Tensor>& ts) {
  std::int64_t v = 0;
  // inference tensors (made under c10::InferenceMode) keep no version counter: left out, as in Python
  for (const auto& t : ts) v += t.defined() && !t.is_inference() ? static_cast<std::int64_t>(t._version()) : 0;
  return v;
}

/// rows: the row layouts (what the CUDA kernels read; Python's plans on CUDA), else the panel
/// layouts (the CPU kernels' fastest); Linears only (convs run on the CPU).
std::shared_ptr<IntegerKernelPlan> make_plan_from(const ConvertedWeight& f, const std::optional<QuantSpec>& wspec,
                                                  const ActFakeQuantizer& aq, const torch::Tensor& bias, bool conv,
                                                  std::int64_t groups, bool zeros_padding, bool rows) {
  if (!f.converted || f.float_weight || !wspec || f.dtype != torch::kFloat) return nullptr;
  if (!aq) return conv ? nullptr : make_weight_only_plan(f, *wspec, bias, rows);
  if ((f.zero_point != 0).any().item<bool>()) return nullptr;
  const QuantSpec& as = aq->spec();
  if (as.kind == "binary") return make_xnor_plan(f, *wspec, aq, bias, conv, conv ? groups : 1, zeros_padding);
  if (!conv && as.kind == "int" && as.scale == "dynamic" && !aq->axis() && aq->fake_quant_enabled()) {
    return make_dynamic_plan(f, *wspec, as, bias, rows);
  }
  if (as.kind != "int" || as.scale == "dynamic" || aq->axis() || !aq->fake_quant_enabled()) return nullptr;
  const std::int64_t qmin = as.quant_min(), qmax = as.quant_max();
  if (!(qmax - qmin <= 255 && ((qmin >= 0 && qmax <= 255) || (qmin >= -128 && qmax <= 127)))) return nullptr;
  torch::Tensor w = f.codes.reshape({f.codes.size(0), -1});
  if (w.scalar_type() != torch::kChar || (w.numel() && w.min().item<int>() < -127)) return nullptr;
  // qparams as Python's _act_qparams: scale float32 [1] (learned: clamped at float32 eps), zero point
  // rounded and clamped into the range
  auto [s, z] = aq->qparams();
  torch::Tensor sx = s.detach().to(torch::kFloat).reshape({1});
  if (as.scale == "learned") sx = sx.clamp_min(std::numeric_limits<float>::epsilon());
  const std::int64_t zx =
      static_cast<std::int64_t>(torch::round(z.detach().to(torch::kFloat)).clamp(qmin, qmax).reshape({1}).item<float>());
  if (f.group_size) {  // W4A8, Python's _w4_plan
    const std::int64_t gs = *f.group_size, k = w.size(1), n = w.size(0);
    // groups beyond linear_w4a8's 2^17 (exact int32 group sums) keep the float64 simulation
    if (gs % 32 || k % gs || gs > (std::int64_t{1} << 17) || wspec->kind != "int" ||
        (w.numel() && (w.min().item<int>() < -8 || w.max().item<int>() > 7))) {
      return nullptr;
    }
    auto plan = std::make_shared<IntegerKernelPlan>();
    plan->weight_bits = 4;
    // convs: conv2d_w4a8 on (c, i, j) patch rows; the panel layout holds one GEMM's rows (groups 1)
    plan->groups = conv ? groups : 1;
    plan->weight = rows || plan->groups > 1 ? pack_w4(w) : qatkit::pack_int4_panel(pack_w4(w));
    plan->group_size = gs;
    plan->group_scale = f.scale.to(torch::kFloat).reshape({n, k / gs}).contiguous();
    if (n % 16 == 0 && !rows && !conv) {  // a Linear's scales in the panel's blocks, as Python's _w4_plan
      plan->group_scale = plan->group_scale.reshape({n / 16, 16, k / gs}).transpose(1, 2).contiguous();
    }
    if (bias.defined()) plan->bias = bias.detach().to(torch::kFloat).contiguous();
    plan->act_scale = static_cast<double>(sx.item<float>());
    plan->act_zero_point = zx;
    plan->act_quant_min = qmin;
    plan->act_quant_max = qmax;
    return plan;
  }
  torch::Tensor m = (sx * f.scale.to(torch::kFloat).reshape({-1})).contiguous();  // fp32(sx * sw[n])
  // a per-tensor weight scale, one multiplier per output row (the kernels take [N]; a per-tensor
  // ternary / binary layer with a static input range failed at its first call)
  if (m.numel() == 1 && w.size(0) > 1) m = m.expand({w.size(0)}).contiguous();
  const bool int32_bias = wspec->kind == "int" && wspec->bits >= 8 && as.bits >= 8;
  torch::Tensor corr = (128 * (qmin >= 0 ? 1 : 0) - zx) * w.to(torch::kLong).sum(1);
  auto plan = std::make_shared<IntegerKernelPlan>();
  if (bias.defined()) {
    if (int32_bias) {
      const torch::Tensor bq = torch::round(bias.detach().to(torch::kDouble) / m.to(torch::kDouble));
      if (!torch::isfinite(bq).all().item<bool>() || bq.abs().max().item<double>() > kInt32Max) return nullptr;
      // the int32 bound of Python's integer_form: K * max|qx - zx| * max|qw| + max|bias_q|
      const double xmax = static_cast<double>(std::max(qmax - zx, zx - qmin));
      const double wmax = w.numel() ? static_cast<double>(w.abs().max().item<int>()) : 0.0;
      if (static_cast<double>(w.size(1)) * xmax * wmax + bq.abs().max().item<double>() > kInt32Max) return nullptr;
      corr = corr + bq.to(torch::kLong);
    } else {
      plan->bias = bias.detach().to(torch::kFloat).contiguous();
    }
  }
  if (corr.numel() && corr.abs().max().item<std::int64_t>() > static_cast<std::int64_t>(kInt32Max)) return nullptr;
  plan->corr = corr.to(torch::kInt).contiguous();
  plan->out_scale = m;
  plan->groups = conv ? groups : 1;
  plan->act_scale = static_cast<double>(sx.item<float>());
  plan->act_zero_point = zx;
  plan->act_quant_min = qmin;
  plan->act_quant_max = qmax;
  if (wspec->kind == "ternary") {
    plan->weight_bits = 2;
    plan->weight = pack_t2(w);
  } else if (wspec->kind == "binary") {
    plan->weight_bits = 1;
    // Linear: the panel layout of the lookup-table kernel (the same bits); convs read the row layout
    plan->weight = conv || rows ? pack_b1(w) : qatkit::pack_binary_panel(pack_b1(w));
  } else if (rows) {  // CUDA: conv2d_int8 runs the Linear kernels on patch rows of any K
    plan->weight = w.contiguous();
  } else if (!conv || groups == 1) {
    plan->weight = qatkit::pack_int8_panel(w);  // the panel layout (no horizontal sums; the same bits)
  } else if (w.size(1) % 32) {  // grouped convs: rows zero-padded to 32 (small-K convs run vectorized)
    plan->weight = torch::constant_pad_nd(w, {0, 32 - w.size(1) % 32}).contiguous();
  } else {
    plan->weight = w.contiguous();
  }
  return plan;
}

/// make_plan_from, the plan remembering its sources' versions (IntegerKernelPlan::sources).
std::shared_ptr<IntegerKernelPlan> make_plan(const ConvertedWeight& f, const std::optional<QuantSpec>& wspec,
                                             const ActFakeQuantizer& aq, const torch::Tensor& bias, bool conv,
                                             std::int64_t groups, bool zeros_padding = true, bool rows = false) {
  auto plan = make_plan_from(f, wspec, aq, bias, conv, groups, zeros_padding, rows);
  if (plan) {
    plan->sources = {f.codes, f.scale, f.zero_point, bias};
    if (aq) {
      auto [s, z] = aq->qparams();
      plan->sources.push_back(s);
      plan->sources.push_back(z);
    }
    plan->sources_version = version_sum(plan->sources);
  }
  return plan;
}

template <std::size_t D, class Layer>
std::shared_ptr<IntegerKernelPlan> make_conv_plan(Layer& l, bool rows) {
  // XNOR: zero padding that needs no float padding first (symmetric; string padding resolved)
  const bool zeros = std::holds_alternative<torch::enumtype::kZeros>(l.options.padding_mode()) &&
                     detail::conv_pads<D>(l.options).symmetric();
  return make_plan(l.frozen, l.layer_spec.weight, l.input_fake_quant, l.bias, true, l.options.groups(), zeros, rows);
}

template <std::size_t D, class Layer>
bool plan_conv(Layer& l, bool on) {
  l.frozen.integer = l.frozen.integer_rows = nullptr;
  if (!on) return false;
  l.frozen.integer = make_conv_plan<D>(l, false);
  return l.frozen.integer != nullptr;
}

template <std::size_t D, class Layer>
const IntegerKernelPlan* cuda_conv_plan_of(Layer& l) {
  ConvertedWeight& f = l.frozen;
  if (!f.integer) return nullptr;
  if (!f.integer_rows || f.integer_rows->weight.device() != f.codes.device()) f.integer_rows = make_conv_plan<D>(l, true);
  return f.integer_rows.get();
}

}  // namespace

std::int64_t set_compute(torch::nn::Module& model, const std::string& compute) {
  TORCH_CHECK_VALUE(compute == "integer" || compute == "float",
                    fmt::format("set_compute: compute must be 'integer' or 'float', got '{}'", compute));
  const bool on = compute == "integer";
  std::int64_t n = 0;
  // the model itself first (not through modules(include_self), which needs it held by a shared_ptr)
  std::vector<torch::nn::Module*> all{&model};
  for (const auto& m : model.modules(/*include_self=*/false)) all.push_back(m.get());
  for (torch::nn::Module* m : all) {
    if (auto* l = m->as<QuantLinearImpl>()) {
      l->frozen.integer = l->frozen.integer_rows = nullptr;
      // BitLinear: its RMSNorm runs first (QuantLinearImpl::forward), then linear_dynamic_int8
      if (on) l->frozen.integer = make_plan(l->frozen, l->layer_spec.weight, l->input_fake_quant, l->bias, false, 1);
      n += l->frozen.integer != nullptr;
    } else if (auto* c2 = m->as<QuantConv2dImpl>()) {
      n += plan_conv<2>(*c2, on);
    } else if (auto* cb = m->as<QuantConvBn2dImpl>()) {
      // converted, a conv with the folded weight and bias (Python's convert makes it a
      // QuantizedConv2d): the same kernels; before 2026-12-08 it kept float math here
      n += plan_conv<2>(*cb, on && cb->converted());
    } else if (auto* c1 = m->as<QuantConv1dImpl>()) {
      n += plan_conv<1>(*c1, on);
    }
  }
  return n;
}

bool IntegerKernelPlan::sources_changed() const { return version_sum(sources) != sources_version; }

namespace detail {

bool plan_stale(const IntegerKernelPlan& p, const ConvertedWeight& f, const torch::Tensor& bias,
                const ActFakeQuantizer& aq) {
  // a member assigned a new tensor (f.codes = other), which keeps the old one's version out of sight
  const auto& s = p.sources;
  if (s.size() < 4 || !s[0].is_same(f.codes) || !s[1].is_same(f.scale) || !s[2].is_same(f.zero_point) ||
      !s[3].is_same(bias)) {
    return true;
  }
  if (aq) {
    const auto [scale, zero_point] = aq->qparams();
    if (s.size() < 6 || !s[4].is_same(scale) || !s[5].is_same(zero_point)) return true;
  }
  return p.sources_changed();
}

}  // namespace detail

namespace detail {

namespace {

// Python's integer.refresh warns too: an edit that takes a layer off its kernel is never silent
void warn_off_kernel(const char* kind, std::int64_t in) {
  TORCH_WARN(kind, " (", in, " inputs): after an in-place edit of its tensors the layer computes in float math "
             "(what the QAT layer computes): no integer kernel takes its tensors now");
}

}  // namespace

void replan(QuantLinearImpl& l) {
  l.frozen.integer_rows = nullptr;
  l.frozen.integer = make_plan(l.frozen, l.layer_spec.weight, l.input_fake_quant, l.bias, false, 1);
  if (!l.frozen.integer) warn_off_kernel("linear", l.options.in_features());
}

void replan(QuantConv2dImpl& l) {
  if (!plan_conv<2>(l, true)) warn_off_kernel("conv2d", l.options.in_channels());
}

void replan(QuantConvBn2dImpl& l) {
  if (!plan_conv<2>(l, l.converted())) warn_off_kernel("conv2d", l.options.in_channels());
}

void replan(QuantConv1dImpl& l) {
  if (!plan_conv<1>(l, true)) warn_off_kernel("conv1d", l.options.in_channels());
}

const IntegerKernelPlan* cuda_linear_plan(QuantLinearImpl& l) {
  ConvertedWeight& f = l.frozen;
  if (!f.integer) return nullptr;
  if (!f.integer_rows || f.integer_rows->weight.device() != f.codes.device()) {
    // the same rules and operands as the CPU plan, in the row layouts (Python's plans on CUDA)
    f.integer_rows = make_plan(f, l.layer_spec.weight, l.input_fake_quant, l.bias, false, 1, true, true);
  }
  return f.integer_rows.get();
}

const IntegerKernelPlan* cuda_conv_plan(QuantConv2dImpl& l) { return cuda_conv_plan_of<2>(l); }
const IntegerKernelPlan* cuda_conv_plan(QuantConv1dImpl& l) { return cuda_conv_plan_of<1>(l); }
const IntegerKernelPlan* cuda_conv_plan(QuantConvBn2dImpl& l) { return cuda_conv_plan_of<2>(l); }

torch::Tensor integer_linear(const IntegerKernelPlan& p, const torch::Tensor& input, const torch::Tensor& divisor) {
  const bool int8 = !p.binary_input && !p.dynamic_input && !p.float_input && p.weight_bits == 8;
  if (divisor.defined() && int8) {
    return qatkit::linear_int8(input, p.weight, p.corr, p.out_scale, p.act_scale, p.act_zero_point, p.act_quant_min,
                               p.act_quant_max, p.bias, divisor);
  }
  const torch::Tensor x = divisor.defined() ? input / divisor : input;
  if (p.binary_input) return qatkit::linear_w1a1(x, p.weight, p.out_scale, p.bias);
  if (p.dynamic_input) {
    return qatkit::linear_dynamic_int8(x, p.weight, p.weight_bits, p.out_scale, p.act_quant_max, p.bias,
                                       p.per_tensor_input);
  }
  if (p.float_input && p.weight_bits == 8) return qatkit::linear_w8_weight_only(x, p.weight, p.out_scale, p.bias);
  if (p.float_input) {
    return qatkit::linear_w4_weight_only(x, p.weight, p.group_scale, p.group_size,
                                         p.group_zero.defined() ? std::optional<torch::Tensor>(p.group_zero)
                                                                : std::nullopt,
                                         p.bias);
  }
  if (p.weight_bits == 4) {
    return qatkit::linear_w4a8(x, p.weight, p.group_scale, p.group_size, p.act_scale, p.act_zero_point,
                               p.act_quant_min, p.act_quant_max, p.bias);
  }
  if (p.weight_bits == 8) {
    return qatkit::linear_int8(x, p.weight, p.corr, p.out_scale, p.act_scale, p.act_zero_point, p.act_quant_min,
                               p.act_quant_max, p.bias);
  }
  const auto f = p.weight_bits == 2 ? &qatkit::linear_w2a8 : &qatkit::linear_w1a8;
  return f(x, p.weight, p.corr, p.out_scale, p.act_scale, p.act_zero_point, p.act_quant_min, p.act_quant_max, p.bias);
}

torch::Tensor integer_conv(const IntegerKernelPlan& p, const torch::Tensor& x4, at::IntArrayRef k, at::IntArrayRef st,
                           at::IntArrayRef pad, at::IntArrayRef dil, std::optional<double> clamp_min,
                           std::optional<double> clamp_max) {
  if (p.binary_input) {
    return qatkit::conv2d_w1a1(x4, p.weight, k, st, pad, dil, p.out_scale, p.bias, p.groups, clamp_min, clamp_max);
  }
  if (p.weight_bits == 4) {
    return qatkit::conv2d_w4a8(x4, p.weight, k, st, pad, dil, p.group_scale, p.group_size, p.act_scale,
                               p.act_zero_point, p.act_quant_min, p.act_quant_max, p.bias, p.groups, clamp_min,
                               clamp_max);
  }
  return qatkit::conv2d_int8(x4, p.weight, p.weight_bits, k, st, pad, dil, p.corr, p.out_scale, p.act_scale,
                             p.act_zero_point, p.act_quant_min, p.act_quant_max, p.bias, p.groups, clamp_min, clamp_max);
}

}  // namespace detail
}  // namespace qatkit::nn
