// CPU kernels of the integer GEMM family's convs: conv2d_int8 (8-, 2- and 1-bit weights: im2col
// patch rows, grouped GEMMs, direct depthwise kernels), conv2d_w4a8 and conv2d_w1a1 (XNOR), each on
// the ISA table's GEMMs; a NaN input gives NaN windows (nan_outputs.h). The Linears: qgemm_kernel.cpp.
#include <functional>
#include <unordered_map>
#include <limits>
#include <utility>

#include "qgemm_kernel_common.h"

namespace qatkit::ops {
namespace {

// NaN inputs (nan_outputs.h). The Linears learn of a NaN from their row quantization
// (ActQuantArgs::nan_seen, no second pass) and then mask the rows of x (or of x / d with
// linear_int8's input_divisor d [K], where 0 / 0 and Inf / Inf are NaN too), and so do the convs
// (since the forty-fifth session), each of whose routes quantizes the whole input (NanReport);
// conv2d_int8 on given codes (conv2d_w1a1's depthwise form, whose sample scale carries a NaN) is not
// checked. holds_nan (the ISA's absmax, threaded beyond one chunk) is the pass over the input where a
// conv returned without a complete report.
bool holds_nan(const at::Tensor& x) {
  if (!x.is_non_overlapping_and_dense()) return at::isnan(x).any().item<bool>();
  const float* p = x.const_data_ptr<float>();
  std::atomic<bool> found{false};
  const auto scan = [&](std::int64_t b, std::int64_t e) {
    // the absmax pass clears `finite` on NaN or +-Inf; only then look for a NaN
    bool finite = true;
    kernels::cpu::reduce_kernels().absmax(p + b, kernels::DType::kFloat32, e - b, &finite);
    int bad = 0;
    for (std::int64_t i = b; !finite && i < e; ++i) bad |= static_cast<int>(p[i] != p[i]);
    if (bad) found.store(true, std::memory_order_relaxed);
  };
  constexpr std::int64_t kGrain = std::int64_t{1} << 17;
  if (x.numel() <= kGrain) {
    scan(0, x.numel());  // small inputs: no parallel region
  } else {
    at::parallel_for(0, x.numel(), kGrain, scan);
  }
  return found.load();
}

// What a conv's quantization learned of NaN inputs: complete when every input element went through a
// quantization that records a NaN in seen (ActQuantArgs::nan_seen: every route of conv2d_int8 and
// conv2d_w4a8 quantizes the whole input; not conv2d_int8 on given codes), so no second pass over the
// input (holds_nan) is needed.
struct NanReport {
  std::int32_t seen = 0;
  bool complete = false;

  // the quantization's arguments recording into this report (nan: null for none), marked complete
  static kernels::ActQuantArgs recording(const kernels::ActQuantArgs& q, NanReport* nan) {
    kernels::ActQuantArgs qn = q;
    if (nan != nullptr) {
      qn.nan_seen = &nan->seen;
      nan->complete = true;
    }
    return qn;
  }
};

void nan_windows(const NanReport& nan, const at::Tensor& x, at::Tensor& y, at::IntArrayRef kernel_size,
                 at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, std::int64_t groups) {
  if (y.numel() > 0 && (nan.complete ? nan.seen != 0 : holds_nan(x)))
    fill_nan_windows(x, y, kernel_size, stride, padding, dilation, groups);
}

// Small maps (several images' patch rows in one GEMM) with an image for every thread: each thread runs
// that batched form on its own images (quantization, patch rows, the GEMM over every output column,
// the transpose into NCHW) in one parallel region, reading the whole weight (<= 8 MiB) itself;
// otherwise the images' rows are shared by every thread (a region per step, tiles of rows x 64
// columns). Same process on Zen 4 (docs/benchmarks.md, twenty-third session): loaded MobileNetV2
// w8a8 / ternary 1.06-1.14x, channels_last 1.10-1.16x, XNOR 1.02-1.10x; ResNet-18 w8a8 1.08x in the
// 400 ns mode (its 2.36 MB layer4 weights included), equal in the 60 ns one.
bool images_by_thread(bool per_image, const at::Tensor& weight) {
  return per_image && at::get_num_threads() > 1 && weight.numel() * weight.element_size() <= (std::int64_t{8} << 20);
}

// The input's codes (quantize_rows with qn) in padded planes xc [B, C, Hp, Wp], Hp = H + 2 ph, Wp =
// W + 2 pw, the padding's code pad_code around each plane (only the padding written besides the
// codes), then 64 bytes of slack (pad_code) for reads past the last plane: planes narrower than 64
// quantized as one run each, then copied into their rows; an NCHW input's unpadded planes, which are
// its own layout, as one run in 4 Ki-code chunks across the threads; a channels_last input by image
// rows, each row's [W, C] codes transposed into the planes by the table's byte transpose.
// conv2d_w4a8's planes and the direct routes' (conv_w4, conv_s8).
void quantize_planes(const float* xp, bool nhwc, std::int64_t B, std::int64_t C, std::int64_t H, std::int64_t W,
                     std::int64_t ph, std::int64_t pw, const kernels::ActQuantArgs& qn, std::int8_t pad_code,
                     std::int8_t* xc) {
  const std::int64_t Hp = H + 2 * ph, Wp = W + 2 * pw;
  const auto& k = kernels::cpu::qgemm_kernels();
  std::memset(xc + B * C * Hp * Wp, pad_code, 64);
  const auto pad_planes = [&](std::int64_t p0, std::int64_t p1) {  // planes [p0, p1): their padding
    if (ph == 0 && pw == 0) return;
    const std::int64_t h_n = H, w_n = W, wp_n = Wp, ph_n = ph, pw_n = pw;  // locals (int8 stores alias)
    const std::int8_t code = pad_code;
    if (Hp * Wp <= 1024) {  // small planes: one fill each (the codes are written over it afterwards)
      std::memset(xc + p0 * Hp * Wp, code, static_cast<std::size_t>((p1 - p0) * Hp * Wp));
      return;
    }
    for (std::int64_t p = p0; p < p1; ++p) {
      std::int8_t* pl = xc + p * Hp * Wp;
      std::memset(pl, code, static_cast<std::size_t>(ph_n * wp_n));
      std::memset(pl + (ph_n + h_n) * wp_n, code, static_cast<std::size_t>(ph_n * wp_n));
      for (std::int64_t h = ph_n; h < ph_n + h_n; ++h) {
        for (std::int64_t e = 0; e < pw_n; ++e) pl[h * wp_n + e] = pl[h * wp_n + pw_n + w_n + e] = code;
      }
    }
  };
  if (nhwc) {  // each image row's [W, C] codes, transposed into the C planes
    at::parallel_for(0, B * C, 16, pad_planes);  // first: a small plane's fill covers its codes' places
    at::parallel_for(0, B * H, 1, [&](std::int64_t p0, std::int64_t p1) {
      struct TagRow {};
      const kernels::BoundedScratch<std::int8_t, TagRow> row_buf(static_cast<std::size_t>(W * C));
      std::int8_t* row = row_buf.get();
      for (std::int64_t p = p0; p < p1; ++p) {
        const std::int64_t bi = p / H, h = p % H;
        k.quantize_rows(xp + p * W * C, row, W * C, qn, 0, 1);
        k.transpose_s8(row, W, C, C, xc + bi * C * Hp * Wp + (h + ph) * Wp + pw, Hp * Wp);
      }
    });
  } else if (ph == 0 && pw == 0) {  // no padding: the planes are the input's layout, quantized as one run
    const std::int64_t total = B * C * H * W;
    at::parallel_for(0, (total + 4095) / 4096, 16, [&](std::int64_t c0, std::int64_t c1) {
      const std::int64_t e0 = c0 * 4096, e1 = std::min(total, c1 * 4096);
      k.quantize_rows(xp + e0, xc + e0, e1 - e0, qn, 0, 1);
    });
  } else {
    at::parallel_for(0, B * C, 1, [&](std::int64_t p0, std::int64_t p1) {
      pad_planes(p0, p1);
      if (W >= 64) {  // each image row straight into its plane
        for (std::int64_t p = p0; p < p1; ++p)
          for (std::int64_t h = 0; h < H; ++h)
            k.quantize_rows(xp + (p * H + h) * W, xc + p * Hp * Wp + (h + ph) * Wp + pw, W, qn, 0, 1);
        return;
      }
      // narrow rows: a plane's codes in one call, then copied into the padded rows (a call per row of
      // 4-8 codes was a tenth of a 4 x 4 map's conv)
      struct TagPlane {};
      const kernels::BoundedScratch<std::int8_t, TagPlane> t_buf(static_cast<std::size_t>(H * W));
      std::int8_t* t = t_buf.get();
      const std::int64_t h_n = H, w_n = W, wp_n = Wp;  // locals: int8 stores may alias captured values
      for (std::int64_t p = p0; p < p1; ++p) {
        k.quantize_rows(xp + p * H * W, t, H * W, qn, 0, 1);
        std::int8_t* d = xc + p * Hp * Wp + ph * Wp + pw;
        for (std::int64_t h = 0; h < h_n; ++h, d += wp_n)
          for (std::int64_t e = 0; e < w_n; ++e) d[e] = t[h * w_n + e];
      }
    });
  }
}

// The direct routes' arguments common to conv_w4 and conv_s8: the geometry of pixels and taps (koff:
// K rounded up to a multiple of 4, the taps past K pointing at tap 0, whose weights are zero), the
// output's layout. The caller sets the weights, inits, scales and bias per conv group.
kernels::QConvDirectArgs direct_conv_args(std::vector<std::int64_t>& koff, std::int64_t B, std::int64_t C,
                                          std::int64_t Cg, std::int64_t Hp, std::int64_t Wp, std::int64_t kh,
                                          std::int64_t kw, std::int64_t sh, std::int64_t sw, std::int64_t dh,
                                          std::int64_t dw, std::int64_t ho, std::int64_t wo, std::int64_t N,
                                          bool nhwc) {
  const std::int64_t K = Cg * kh * kw, K4 = (K + 3) / 4 * 4, L = ho * wo;
  koff.assign(static_cast<std::size_t>(K4), 0);
  for (std::int64_t c = 0, e = 0; c < Cg; ++c)
    for (std::int64_t i = 0; i < kh; ++i)
      for (std::int64_t j = 0; j < kw; ++j) koff[static_cast<std::size_t>(e++)] = c * Hp * Wp + i * dh * Wp + j * dw;
  kernels::QConvDirectArgs a;
  a.koff = koff.data();
  a.img = C * Hp * Wp;
  a.row = sh * Wp;
  a.col = sw;
  a.L = L;
  a.wo = wo;
  a.y_img = N * L;
  a.y_ps = nhwc ? N : 1;
  a.y_cs = nhwc ? 1 : L;
  a.M = B * L;
  a.K = K4;
  return a;
}

// A conv's fused clamp (its clamp_min / clamp_max: a ReLU, ReLU6 or Hardtanh after the conv):
// torch.clamp's values, y < lo -> lo and y > hi -> hi (NaN and -0.0 kept). `pending` until a path
// applies it (span) to every image's output as it finishes the image, in the image's parallel task
// while the output is in cache; the op applies what is still pending to the whole output (apply).
// One pass over the output in the op instead of the activation module's dispatch and its second
// op (docs/benchmarks.md, fifty-first session).
struct FusedClamp {
  bool pending = false;
  float lo = -std::numeric_limits<float>::infinity(), hi = std::numeric_limits<float>::infinity();
  FusedClamp() = default;
  explicit FusedClamp(std::pair<float, float> bounds)
      : pending(bounds.first > -std::numeric_limits<float>::infinity() ||
                bounds.second < std::numeric_limits<float>::infinity()),
        lo(bounds.first), hi(bounds.second) {}
  // in place on n floats: the table's clamp_f32, or the loop
  void span(float* y, std::int64_t n) const {
    const auto& k = kernels::cpu::qgemm_kernels();
    if (k.clamp_f32 != nullptr) return k.clamp_f32(y, n, lo, hi);
    for (std::int64_t i = 0; i < n; ++i) y[i] = y[i] < lo ? lo : (y[i] > hi ? hi : y[i]);
  }
  // on a whole (contiguous in its memory format) float32 output, in parallel: the paths that do
  // not apply it image by image
  void apply(const at::Tensor& y) const {
    float* p = y.data_ptr<float>();
    at::parallel_for(0, y.numel(), std::int64_t{1} << 14, [&](std::int64_t i0, std::int64_t i1) { span(p + i0, i1 - i0); });
  }
};

// fn (the table's conv_w4 or conv_s8) over every output pixel, tiles of 16 across the threads, each
// thread every conv group (group(gi, a) sets a's per-group fields) and output channel. With
// clamp_pixels (a channels_last output, N floats a pixel): the fused clamp on each task's pixels once
// every group wrote them.
template <class Group>
void run_direct_conv(void (*fn)(const kernels::QConvDirectArgs&, std::int64_t, std::int64_t),
                     const kernels::QConvDirectArgs& cg, std::int64_t groups, const Group& group,
                     float* clamp_pixels = nullptr, std::int64_t N = 0, const FusedClamp* clamp = nullptr) {
  const std::int64_t M = cg.M;
  at::parallel_for(0, (M + 15) / 16, 1, [&](std::int64_t t0, std::int64_t t1) {
    const std::int64_t m0 = t0 * 16, m1 = std::min(M, t1 * 16);
    for (std::int64_t gi = 0; gi < groups; ++gi) {
      kernels::QConvDirectArgs a = cg;
      group(gi, a);
      fn(a, m0, m1);
    }
    if (clamp_pixels != nullptr) clamp->span(clamp_pixels + m0 * N, (m1 - m0) * N);
  });
}

// A conv2d_int8 weight (any of its layouts and bits) as int8 codes [N, K4] in PyTorch's (c, i, j)
// order (K4 = K rounded up to a multiple of 4, zeros past K), then each row's sum of codes as int32
// [N]: the table's direct conv (conv_s8) reads them; held between calls (cached_weight_form).
at::Tensor s8_conv_codes(const at::Tensor& weight, const at::Tensor& w, int bits, bool panel, std::int64_t N,
                         std::int64_t K) {
  const std::int64_t rb = w.size(1), K4 = (K + 3) / 4 * 4;
  return cached_weight_form(weight, {8, bits, panel, N, K, rb, 0, 0}, [&] {
    at::Tensor out = at::empty({N * K4 + 4 * N}, w.options().dtype(at::kChar));
    const auto* src = static_cast<const std::uint8_t*>(w.const_data_ptr());
    std::int8_t* q = out.mutable_data_ptr<std::int8_t>();
    auto* wsum = reinterpret_cast<std::int32_t*>(q + N * K4);
    at::parallel_for(0, N, 16, [&](std::int64_t n0, std::int64_t n1) {
      for (std::int64_t n = n0; n < n1; ++n) {
        std::int8_t* row = q + n * K4;
        std::int32_t sum = 0;
        for (std::int64_t t = 0; t < K4; ++t) {
          const int v = t < K ? weight_code(src, bits, panel, rb, n, t) : 0;
          row[t] = static_cast<std::int8_t>(v);
          sum += v;
        }
        std::memcpy(wsum + n, &sum, sizeof sum);
      }
    });
    return out;
  });
}

// A W4 conv weight (pack_int4_w4's rows or pack_int4_panel's layout) as int8 codes q [N, K] in
// PyTorch's (c, i, j) order, then each row's group sums of q [N, K / group] as int32: the table's direct
// conv (QConvDirectArgs) reads them; held between calls (cached_weight_form).
at::Tensor w4_conv_codes(const at::Tensor& weight, const at::Tensor& w, bool panel, std::int64_t N, std::int64_t K,
                         std::int64_t group) {
  return cached_weight_form(weight, {6, panel, N, K, group, 0, 0, 0}, [&] {
    const std::int64_t G = K / group, KB = K / 2;
    at::Tensor out = at::empty({N * K + 4 * N * G}, w.options().dtype(at::kChar));
    const auto* src = static_cast<const std::uint8_t*>(w.const_data_ptr());
    std::int8_t* q = out.mutable_data_ptr<std::int8_t>();
    auto* qsum = reinterpret_cast<std::int32_t*>(q + N * K);
    at::parallel_for(0, N, 16, [&](std::int64_t n0, std::int64_t n1) {
      for (std::int64_t n = n0; n < n1; ++n) {
        std::int8_t* row = q + n * K;
        for (std::int64_t b = 0; b < KB; ++b) {  // chunk of 32: byte j holds k = j (low) and j + 16 (high), c = q + 8
          const std::int64_t off = panel ? kernels::w4_panel_offset(KB, n, b) : n * KB + b;
          const std::int64_t k0 = b / 16 * 32 + b % 16;
          row[k0] = static_cast<std::int8_t>((src[off] & 15) - 8);
          row[k0 + 16] = static_cast<std::int8_t>((src[off] >> 4) - 8);
        }
        for (std::int64_t gi = 0; gi < G; ++gi) {
          std::int32_t sum = 0;
          for (std::int64_t e = gi * group; e < (gi + 1) * group; ++e) sum += row[e];
          std::memcpy(qsum + n * G + gi, &sum, sizeof sum);
        }
      }
    });
    return out;
  });
}

// conv2d_w4a8 (the "static_group" form of a conv): linear_w4a8's group GEMM (the table's gemm_w4) on
// patch rows in PyTorch's (c, i, j) order. conv2d_int8's channels-last (i, j, c) rows do not serve
// here: their sums are exact in any order, but a group of K spans channels and taps in the weight's
// order, and each group's sum is one run of the row. The input is quantized once into padded planes
// [B, C, Hp, Wp] (the padding's code in place: zero point - shift, a centred 0, as the simulation pads);
// each thread builds the patch rows of its share of the output pixels, at most 4 MiB of codes at a
// time, and their group sums, then runs gemm_w4 on them for the output channels of each conv group.
// A channels_last input is quantized by image rows, each row's [W, C] codes transposed into the
// planes; a pointwise conv (1 x 1, stride 1, no padding) of one with groups 1 quantizes its pixels
// straight into the patch rows instead, a grouped one transposes each image's [Cg, pixels] codes
// from the planes into them (the table's 16 x 16 byte tiles), and an NCHW pointwise conv has no
// planes: each thread quantizes its pixels' [Cg, pixels] floats and transposes the codes into its
// rows. The GEMM writes an NHWC output in
// place; an NCHW output takes each image's [pixels, N] block through the table's float transpose.
at::Tensor conv2d_w4a8_impl(const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef kernel_size,
                            at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                            const at::Tensor& group_scale, std::int64_t group_size, double act_scale,
                            std::int64_t act_zero_point, std::int64_t act_quant_min, std::int64_t act_quant_max,
                            const std::optional<at::Tensor>& bias, std::int64_t groups, NanReport* nan,
                            FusedClamp* clamp = nullptr) {
  const ops::Conv2dW4A8Shape shp =
      ops::check_conv2d_w4a8_args(input, weight, kernel_size, stride, padding, dilation, group_scale, group_size,
                                  act_scale, act_zero_point, act_quant_min, act_quant_max, bias, groups);
  const std::int64_t B = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3);
  const std::int64_t kh = kernel_size[0], kw = kernel_size[1], sh = stride[0], sw = stride[1], ph = padding[0],
                     pw = padding[1], dh = dilation[0], dw = dilation[1];
  const std::int64_t ho = shp.ho, wo = shp.wo, Cg = C / groups, K = Cg * kh * kw, N = group_scale.size(0),
                     Ng = N / groups, G = K / group_size, L = ho * wo, M = B * L, Hp = H + 2 * ph, Wp = W + 2 * pw;
  const bool nhwc = ops::conv_channels_last_io(input);
  const auto format = nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  at::Tensor y = at::empty({B, N, ho, wo}, input.options().memory_format(format));
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  if (y.numel() == 0) return y;
  if (K == 0) {  // no input channels: an empty sum, y = the bias
    y.zero_();
    if (b.defined()) y.add_(b.reshape({1, N, 1, 1}));
    return y;
  }
  const at::Tensor x = input.contiguous(format);
  const at::Tensor w = weight.contiguous(), gs = group_scale.contiguous();
  const std::int32_t shift = shp.shift;
  const kernels::ActQuantArgs q = act_quant_args(act_scale, act_zero_point, act_quant_min, act_quant_max, shift);
  // every route below quantizes the whole input, recording a NaN (NanReport)
  const kernels::ActQuantArgs qn = NanReport::recording(q, nan);
  const auto& k = kernels::cpu::qgemm_kernels();
  const bool pointwise = kh == 1 && kw == 1 && sh == 1 && sw == 1 && ph == 0 && pw == 0;
  const bool pixel_rows = nhwc && pointwise && groups == 1;
  // an NCHW pointwise conv: each thread quantizes its pixels' [Cg, pixels] floats itself and
  // transposes the codes into its rows (no shared planes, no parallel region before the GEMM's)
  // the table's direct conv on the planes (conv_w4): column strides 1 and 2, K within the table's bound
  const bool direct = k.conv_w4 != nullptr && sw <= 2 && (k.conv_w4_max_k == 0 || K <= k.conv_w4_max_k) && !pixel_rows;
  const bool pointwise_nchw = pointwise && !nhwc && !direct;
  // a grouped pointwise conv of a channels_last input: its planes hold L = H * W codes each
  const bool pointwise_planes = pointwise && !pixel_rows && !pointwise_nchw;
  const bool planes = !pixel_rows && !pointwise_nchw;
  // the padded planes (the calling thread's scratch, kept between calls up to 16 MiB: a fresh buffer
  // cost page faults and a fill on every call), with slack past the last one for the rows' 8-byte
  // copies; the padding's code written around each plane
  const std::size_t xc_n = static_cast<std::size_t>(planes ? B * C * Hp * Wp + 64 : 0);
  struct TagPlanes {};
  const kernels::BoundedScratch<std::int8_t, TagPlanes> xc_buf(planes ? xc_n : 0);
  std::int8_t* xc = planes ? xc_buf.get() : nullptr;
  const std::int8_t pad_code = static_cast<std::int8_t>(q.zero_point - shift);
  const float* xp = x.data_ptr<float>();
  if (planes) quantize_planes(xp, nhwc, B, C, H, W, ph, pw, qn, pad_code, xc);
  const bool panel = w.dim() == 3;
  const auto* wp = w.data_ptr<std::uint8_t>();
  const float* gsp = gs.data_ptr<float>();
  const float* bp = b.defined() ? b.data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  if (planes && direct) {
    // the table's direct conv on the planes (QConvDirectArgs): output pixels in vector lanes, no patch rows
    const at::Tensor codes = w4_conv_codes(weight, w, panel, N, K, group_size);
    const auto* qp = codes.const_data_ptr<std::int8_t>();
    const auto* qsum = reinterpret_cast<const std::int32_t*>(qp + N * K);  // [N, G]
    // each group's init: (act_offset - 128) * sum q (the lanes read the codes + 128)
    const std::int32_t mult = shift - static_cast<std::int32_t>(act_zero_point) - 128;
    std::vector<std::int32_t> init(static_cast<std::size_t>(N * G));
    for (std::int64_t e = 0; e < N * G; ++e) init[static_cast<std::size_t>(e)] = mult * qsum[e];
    std::vector<std::int64_t> koff;
    kernels::QConvDirectArgs cg = direct_conv_args(koff, B, C, Cg, Hp, Wp, kh, kw, sh, sw, dh, dw, ho, wo, N, nhwc);
    cg.act_scale = static_cast<double>(static_cast<float>(act_scale));
    cg.N = Ng;
    cg.group = group_size;
    const bool clamp_pixels = nhwc && clamp != nullptr && clamp->pending;  // (NCHW: the op's pass)
    run_direct_conv(
        k.conv_w4, cg, groups,
        [&](std::int64_t gi, kernels::QConvDirectArgs& a) {
          a.x = xc + gi * Cg * Hp * Wp;
          a.w = qp + gi * Ng * K;
          a.init = init.data() + gi * Ng * G;
          a.gscale = gsp + gi * Ng * G;
          a.bias = bp ? bp + gi * Ng : nullptr;
          a.y = yp + gi * Ng * (nhwc ? 1 : L);
        },
        clamp_pixels ? yp : nullptr, N, clamp);
    if (clamp_pixels) clamp->pending = false;
    return y;
  }
  // kw codes at a time as one 8-byte copy (the next copy overwrites the rest; rows are built in order)
  const bool short_runs = dw == 1 && kw <= 8;
  // the per-row patches' (c, i) runs: their offsets in an image's planes (no multiplies per run)
  std::vector<std::int64_t> run_off(static_cast<std::size_t>(Cg * kh));
  for (std::int64_t u = 0; u < Cg * kh; ++u) run_off[static_cast<std::size_t>(u)] = u / kh * Hp * Wp + u % kh * dh * Wp;
  const std::int64_t cap = std::max<std::int64_t>(16, (std::int64_t{4} << 20) / K);
  const bool clamp_rows = clamp != nullptr && clamp->pending;  // the fused clamp on each block's outputs
  at::parallel_for(0, M, 16, [&](std::int64_t m0, std::int64_t m1) {
    // rows per block: at most 4 MiB of codes, and at most 16 MiB of float outputs where they go
    // through yg (within BoundedScratch's bound)
    const bool via_yg = groups > 1 || !nhwc;
    const std::int64_t rows_max = std::min({cap, m1 - m0, via_yg ? std::max<std::int64_t>(16, (std::int64_t{4} << 20) / Ng) : cap});
    // per-thread scratch kept between calls up to 16 MiB each (fresh buffers: page faults and zero fills on every call)
    struct TagA {};
    struct TagGsum {};
    struct TagY {};
    const kernels::BoundedScratch<std::int8_t, TagA> a_buf(static_cast<std::size_t>(rows_max * K + 8));
    const kernels::BoundedScratch<std::int32_t, TagGsum> gsum_buf(static_cast<std::size_t>(rows_max * G));
    const kernels::BoundedScratch<float, TagY> yg_buf(static_cast<std::size_t>(via_yg ? rows_max * Ng : 1));
    std::int8_t* const a = a_buf.get();
    std::int32_t* const gsum = gsum_buf.get();
    float* const yg = yg_buf.get();
    struct TagQ {};
    const kernels::BoundedScratch<std::int8_t, TagQ> tq_buf(
        static_cast<std::size_t>(pointwise_nchw ? Cg * std::min(rows_max, L) : 1));
    std::int8_t* const tq = tq_buf.get();
    for (std::int64_t r0 = m0; r0 < m1; r0 += rows_max) {
      const std::int64_t rows = std::min(rows_max, m1 - r0);
      for (std::int64_t gi = 0; gi < groups; ++gi) {
        if (pixel_rows) k.quantize_rows(xp + r0 * K, a, K, qn, 0, rows);
        // NCHW pointwise: per image segment, the group's [Cg, len] floats quantized (one call for a
        // whole image, whose group planes are one run) and transposed into the rows
        for (std::int64_t r = 0; r < rows && pointwise_nchw;) {
          const std::int64_t m = r0 + r, bi = m / L, l = m % L, len = std::min(rows - r, L - l);
          const float* src = xp + (bi * C + gi * Cg) * L + l;
          if (len == L) {
            k.quantize_rows(src, tq, Cg * L, qn, 0, 1);
          } else {
            for (std::int64_t c = 0; c < Cg; ++c) k.quantize_rows(src + c * L, tq + c * len, len, qn, 0, 1);
          }
          k.transpose_s8(tq, Cg, len, len, a + r * K, K);
          r += len;
        }
        // a pointwise conv of planes: each image's [Cg, pixels] codes transposed into the rows
        for (std::int64_t r = 0; r < rows && pointwise_planes;) {
          const std::int64_t m = r0 + r, bi = m / L, l = m % L, len = std::min(rows - r, L - l);
          k.transpose_s8(xc + (bi * C + gi * Cg) * L + l, Cg, len, L, a + r * K, K);
          r += len;
        }
        for (std::int64_t r = 0; r < rows && !pointwise; ++r) {  // pixel m's patch, (c, i, j)
          const std::int64_t m = r0 + r, bi = m / L, oh = m % L / wo, ow = m % L % wo;
          std::int8_t* dst = a + r * K;
          const std::int8_t* base = xc + (bi * C + gi * Cg) * Hp * Wp + oh * sh * Wp + ow * sw;
          // the runs' offsets and sizes in locals: a store through int8_t* may alias anything, so
          // captured values would be reloaded per run (the 8-byte copies ran about half as fast)
          const std::int64_t nu = Cg * kh, step = kw, dil = dw;
          const std::int64_t* off = run_off.data();
          if (short_runs) {  // one 8-byte copy per (c, i) run
            for (std::int64_t u = 0; u < nu; ++u, dst += step) std::memcpy(dst, base + off[u], 8);
            continue;
          }
          for (std::int64_t u = 0; u < nu; ++u) {
            const std::int8_t* src = base + off[u];
            for (std::int64_t j = 0; j < step; ++j) *dst++ = src[j * dil];
          }
        }
        for (std::int64_t r = 0; r < rows; ++r) row_group_sums(a + r * K, G, group_size, gsum + r * G);
        kernels::QGemmW4Args g;
        g.a = a;
        g.a_gsum = gsum;
        g.w = panel ? wp : wp + gi * Ng * (K / 2);
        g.gscale = gsp + gi * Ng * G;
        g.act_offset = shift - static_cast<std::int32_t>(act_zero_point);
        g.panel = panel;
        g.bias = bp ? bp + gi * Ng : nullptr;
        g.act_scale = static_cast<double>(static_cast<float>(act_scale));
        g.y = groups == 1 && nhwc ? yp + r0 * N : yg;
        g.M = rows;
        g.N = Ng;
        g.K = K;
        g.group = group_size;
        k.gemm_w4(g, 0, Ng);
        if (nhwc && groups > 1) {  // the group's columns of the NHWC rows
          for (std::int64_t r = 0; r < rows; ++r)
            std::memcpy(yp + (r0 + r) * N + gi * Ng, yg + r * Ng, sizeof(float) * static_cast<std::size_t>(Ng));
        } else if (!nhwc) {  // NCHW: each image's [pixels, Ng] outputs transposed into its channels' planes
          for (std::int64_t r = 0; r < rows;) {
            const std::int64_t m = r0 + r, bi = m / L, l = m % L, len = std::min(rows - r, L - l);
            k.transpose_f32(yg + r * Ng, len, Ng, Ng, yp + (bi * N + gi * Ng) * L + l, L);
            r += len;
          }
        }
      }
      if (!clamp_rows) continue;
      if (nhwc) {  // the block's pixels, every group written
        clamp->span(yp + r0 * N, rows * N);
        continue;
      }
      for (std::int64_t r = 0; r < rows;) {  // NCHW: each image segment's run in every channel's plane
        const std::int64_t m = r0 + r, bi = m / L, l = m % L, len = std::min(rows - r, L - l);
        for (std::int64_t n = 0; n < N; ++n) clamp->span(yp + (bi * N + n) * L + l, len);
        r += len;
      }
    }
  });
  if (clamp_rows) clamp->pending = false;
  return y;
}

// f(n0, n1) over [n0, n1): across the threads (at::parallel_for with this grain) where inner, else
// on the calling thread.
template <class F>
void maybe_parallel(bool inner, std::int64_t n0, std::int64_t n1, std::int64_t grain, const F& f) {
  if (inner) {
    at::parallel_for(n0, n1, grain, f);
  } else {
    f(n0, n1);
  }
}

// The output columns [0, N) in one call (inside a parallel region) or in blocks of 16 across threads.
template <class F>
void gemm_columns(bool inside_parallel, std::int64_t N, const F& f) {
  if (inside_parallel) {
    f(0, N);
  } else {
    at::parallel_for(0, (N + 15) / 16, 1, [&](std::int64_t b0, std::int64_t b1) { f(b0 * 16, std::min(N, b1 * 16)); });
  }
}

// ---------------------------------------------------------------- im2col Convs build their patch rows from the
// image's codes padded once (the padding's code in place), channels-last: each row in (i, j, c) order, so a row is kh
// runs of kw * C contiguous codes (groups 1, dilation 1 along the width) or kh * kw runs of C / groups codes, copied
// from the codes laid out [Hp, Wp, C], with the row sums from per-pixel sums; the weight rows (PyTorch's (c, i, j)
// order) are reordered to match once per weight (N * K code moves, held by cached_weight_form). An integer sum does
// not depend on its order, so the rows give the bits of PyTorch's order (docs/integer.md, "Convolutions"). Until the
// reorder was held, deep layers of small maps (B * L < 2 N) ran planar (c, i, j) rows against the weight as it is;
// with it, channels-last ran them 1.4-1.8x faster (docs/benchmarks.md, nineteenth session) and the planar form went.

// A depthwise conv's weight codes (rows of `taps` codes in any conv2d_int8 layout) as int16, [N, taps]
// or (transposed) [taps, N]: weight_code with the layout's width and form constant, so each form's loop
// is its own (the 8-bit rows a plain widening copy; a per-code call cost 15 % of a 384-channel 4 x 4
// depthwise conv's time).
template <int Bits, bool Panel>
void depthwise_codes_of(const std::uint8_t* wp, std::int64_t rb, std::int64_t N, std::int64_t taps, bool transposed,
                        std::int16_t* out) {
  if (transposed) {  // contiguous stores (the codes' rows are short: their reads stay in a few lines)
    for (std::int64_t t = 0; t < taps; ++t)
      for (std::int64_t n = 0; n < N; ++n) out[t * N + n] = static_cast<std::int16_t>(weight_code(wp, Bits, Panel, rb, n, t));
    return;
  }
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t t = 0; t < taps; ++t) out[n * taps + t] = static_cast<std::int16_t>(weight_code(wp, Bits, Panel, rb, n, t));
}

void depthwise_codes(const std::uint8_t* wp, int bits, bool panel, std::int64_t rb, std::int64_t N, std::int64_t taps,
                     bool transposed, std::int16_t* out) {
  if (panel) return depthwise_codes_of<8, true>(wp, rb, N, taps, transposed, out);
  if (bits == 8) return depthwise_codes_of<8, false>(wp, rb, N, taps, transposed, out);
  if (bits == 2) return depthwise_codes_of<2, false>(wp, rb, N, taps, transposed, out);
  depthwise_codes_of<1, false>(wp, rb, N, taps, transposed, out);
}

// depthwise_codes of a conv's constant weight (w: weight made contiguous), held between calls
// (cached_weight_form): unpacking them each call, into a zero-filled vector, took 8 % of a 1-bit
// 8 x 960 x 2 x 2 depthwise conv's time (docs/benchmarks.md, twenty-first session).
at::Tensor depthwise_weight_codes(const at::Tensor& weight, const at::Tensor& w, std::int64_t bits, bool panel,
                                  std::int64_t rb, std::int64_t N, std::int64_t taps, bool transposed) {
  return cached_weight_form(weight, {4, bits, panel, transposed, N, taps, rb, 0}, [&] {
    at::Tensor out = at::empty({transposed ? taps : N, transposed ? N : taps}, w.options().dtype(at::kShort));
    depthwise_codes(static_cast<const std::uint8_t*>(w.const_data_ptr()), static_cast<int>(bits), panel, rb, N, taps,
                    transposed, out.data_ptr<std::int16_t>());
    return out;
  });
}

// The weight (any conv2d_int8 / conv2d_w1a1 layout) with each row's K = Cg * kh * kw codes moved
// from (c, i, j) to (i, j, c) order; the padding as it was.
at::Tensor channels_last_weight(const at::Tensor& w, int bits, bool panel, std::int64_t N, std::int64_t Cg,
                                std::int64_t kh, std::int64_t kw) {
  const std::int64_t taps = kh * kw, K = Cg * taps;
  const std::int64_t rb = w.size(1), NB = (N + 15) / 16;
  // byte layouts: every byte is written below (the padding copied as it is); bit layouts start from a
  // copy; a panel gets the split records of its reordered codes (QGemmArgs: they list pairs of
  // consecutive k, which the reorder moves)
  const std::int64_t X = panel ? kernels::s8_tail_blocks(NB, rb) : 0;
  at::Tensor out = panel ? at::empty({NB + X, rb, 64}, w.options()) : bits == 8 ? at::empty_like(w) : w.clone();
  const auto* src = static_cast<const std::uint8_t*>(w.const_data_ptr());
  auto* dst = static_cast<std::uint8_t*>(out.mutable_data_ptr());
  if (panel) {  // 16 rows per panel, 4 consecutive k of a row per 32-bit lane: 16 byte moves per code pair
    std::fill(dst + NB * rb * 64, dst + (NB + X) * rb * 64, std::uint8_t{0});
    auto* tail = reinterpret_cast<std::int32_t*>(dst + NB * rb * 64);
    at::parallel_for(0, NB, 1, [&](std::int64_t p0, std::int64_t p1) {
      SplitEntries ent;
      for (std::int64_t p = p0; p < p1; ++p) {
        const std::uint8_t* sp = src + p * rb * 64;
        std::uint8_t* dp = dst + p * rb * 64;
        for (std::int64_t t = K; t < rb * 4; ++t)  // the padding past K (all 16 lanes)
          for (int r = 0; r < 16; ++r) dp[(t >> 2) * 64 + 4 * r + (t & 3)] = sp[(t >> 2) * 64 + 4 * r + (t & 3)];
        for (std::int64_t tap = 0; tap < taps; ++tap) {
          for (std::int64_t c = 0; c < Cg; ++c) {
            const std::int64_t to = tap * Cg + c, from = c * taps + tap;
            const std::uint8_t* f = sp + (from >> 2) * 64 + (from & 3);
            std::uint8_t* d = dp + (to >> 2) * 64 + (to & 3);
            for (int r = 0; r < 16; ++r) d[4 * r] = f[4 * r];
          }
        }
        split_record(dp, rb, tail + p * kernels::s8_tail_words(rb), ent);
      }
    });
    return out;
  }
  at::parallel_for(0, N, 16, [&](std::int64_t n0, std::int64_t n1) {
    for (std::int64_t n = n0; n < n1; ++n) {
      if (bits == 8) {  // int8 rows (zero-padded past K)
        for (std::int64_t tap = 0; tap < taps; ++tap)
          for (std::int64_t c = 0; c < Cg; ++c) dst[n * rb + tap * Cg + c] = src[n * rb + c * taps + tap];
        std::memcpy(dst + n * rb + K, src + n * rb + K, static_cast<std::size_t>(rb - K));
        continue;
      }
      for (std::int64_t tap = 0; tap < taps; ++tap) {
        for (std::int64_t c = 0; c < Cg; ++c) {
          const CodeField from = code_field(bits, panel, rb, n, c * taps + tap);
          const CodeField to = code_field(bits, panel, rb, n, tap * Cg + c);
          const unsigned v = (src[from.byte] >> from.shift) & from.mask;
          dst[to.byte] = static_cast<std::uint8_t>((dst[to.byte] & ~(to.mask << to.shift)) | (v << to.shift));
        }
      }
    }
  });
  return out;
}

// A conv weight in conv2d_int8's row layouts (2- or 1-bit packed, or int8 rows) as int8 codes in
// the patch rows' channels-last (i, j, c) order: pack_int8_panel's layout (panel), or rows [N, K]
// zero-padded to a multiple of 32.
at::Tensor widened_channels_last_weight(const at::Tensor& w, int bits, std::int64_t N, std::int64_t Cg,
                                        std::int64_t kh, std::int64_t kw, bool panel) {
  const std::int64_t taps = kh * kw, K = Cg * taps, rb = w.size(1), K32 = (K + 31) / 32 * 32;
  at::Tensor codes = at::zeros({N, panel ? K : K32}, w.options().dtype(at::kChar));
  const auto* src = static_cast<const std::uint8_t*>(w.const_data_ptr());
  auto* dst = codes.data_ptr<std::int8_t>();
  const std::int64_t rs = codes.size(1);
  at::parallel_for(0, N, 16, [&](std::int64_t n0, std::int64_t n1) {
    for (std::int64_t n = n0; n < n1; ++n) {
      for (std::int64_t c = 0; c < Cg; ++c)
        for (std::int64_t tap = 0; tap < taps; ++tap)
          dst[n * rs + tap * Cg + c] = static_cast<std::int8_t>(weight_code(src, bits, false, rb, n, c * taps + tap));
    }
  });
  return panel ? qatkit::pack_int8_panel(codes) : codes;
}

// The border of one padded plane of Hp x Wp pixels of `pix` codes each, holding an H x W image at
// (ph, pw): the rows above and below it and the columns beside it set to `pad`.
template <typename T>
void fill_border_plane(T* plane, std::int64_t Hp, std::int64_t Wp, std::int64_t H, std::int64_t W, std::int64_t ph,
                       std::int64_t pw, std::int64_t pix, T pad) {
  for (std::int64_t r = 0; r < Hp; ++r) {
    T* row = plane + r * Wp * pix;
    if (r < ph || r >= ph + H) {
      std::fill(row, row + Wp * pix, pad);
    } else {
      std::fill(row, row + pw * pix, pad);
      std::fill(row + (pw + W) * pix, row + Wp * pix, pad);
    }
  }
}

// The patch rows of a conv: the image's padded code layout and its rows (channels-last, above).
struct ConvPatches {
  std::int64_t C, Cg, H, W, ph, pw, Hp, Wp, kh, kw, sh, sw, dh, dw, wo;

  ConvPatches(std::int64_t C_, std::int64_t groups, std::int64_t H_, std::int64_t W_, at::IntArrayRef kernel,
              at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, std::int64_t wo_)
      : C(C_), Cg(C_ / groups), H(H_), W(W_), ph(padding[0]), pw(padding[1]), Hp(H_ + 2 * ph),
        Wp(W_ + 2 * pw), kh(kernel[0]), kw(kernel[1]), sh(stride[0]), sw(stride[1]), dh(dilation[0]),
        dw(dilation[1]), wo(wo_) {}

  std::int64_t image_size() const { return Hp * Wp * C; }
  std::int64_t sums_size() const { return (C / Cg) * Hp * Wp; }

  /// One image's codes xq [C, H, W] (or [H, W, C] with src_nhwc: a channels_last input) -> xc,
  /// padded with pad_code: [Hp, Wp, C] (by the kernel table's transpose, or row copies from NHWC;
  /// with ps not null also the sums of each group's channels per padded pixel, ps [groups, Hp * Wp]).
  void layout(const kernels::cpu::QGemmKernels& k, const std::int8_t* xq, bool src_nhwc, std::int8_t pad_code,
              std::int8_t* xc, std::int32_t* ps) const {
    fill_border(xc, pad_code);
    if (!src_nhwc && ph == 0 && pw == 0) {
      k.transpose_s8(xq, C, H * W, H * W, xc, C);  // unpadded: the whole image [C, H * W] -> [H * W, C]
    } else if (!src_nhwc && W < 16) {
      // rows narrower than the transpose's 16-column blocks (a row's transpose would run scalar):
      // the whole image at once, then each image row's W pixels into its padded row
      struct TagT;
      const kernels::BoundedScratch<std::int8_t, TagT> t_buf(static_cast<std::size_t>(C * H * W));
      std::int8_t* t = t_buf.get();
      k.transpose_s8(xq, C, H * W, H * W, t, C);
      for (std::int64_t h = 0; h < H; ++h)
        std::memcpy(xc + ((h + ph) * Wp + pw) * C, t + h * W * C, static_cast<std::size_t>(W * C));
    } else {
      for (std::int64_t h = 0; h < H; ++h) {
        std::int8_t* dst = xc + ((h + ph) * Wp + pw) * C;
        if (src_nhwc) {
          std::memcpy(dst, xq + h * W * C, static_cast<std::size_t>(W * C));
        } else {
          k.transpose_s8(xq + h * W, C, W, H * W, dst, C);
        }
      }
    }
    if (ps != nullptr) pixel_sums(xc, ps);
  }

  /// Whether an NHWC input's codes are the channels-last layout itself (no padding): the caller
  /// quantizes straight into xc and calls pixel_sums, no layout pass.
  bool direct(bool src_nhwc) const { return src_nhwc && ph == 0 && pw == 0; }

  /// A 1x1, stride-1 conv on such a layout with one group and rows of exactly K codes: the layout's
  /// pixels are the GEMM's patch rows and their sums its row sums (no im2col).
  bool rows_are_pixels(bool src_nhwc, std::int64_t K_row) const {
    return direct(src_nhwc) && kh == 1 && kw == 1 && sh == 1 && sw == 1 && Cg == C && K_row == C;
  }

  /// The padding of a layout: the rows above and below the image and the columns beside it (the
  /// image's pixels are written by layout, or by the quantization with direct).
  void fill_border(std::int8_t* xc, std::int8_t pad_code) const {
    if (ph == 0 && pw == 0) return;
    fill_border_plane(xc, Hp, Wp, H, W, ph, pw, C, pad_code);  // one plane of C-code pixels
  }

  /// The sums of each group's channels per padded pixel, ps [groups, Hp * Wp].
  void pixel_sums(const std::int8_t* xc, std::int32_t* ps) const {
    for (std::int64_t gi = 0; gi < C / Cg; ++gi) {
      for (std::int64_t p = 0; p < Hp * Wp; ++p) {
        const std::int8_t* px = xc + p * C + gi * Cg;
        std::int32_t s = 0;
        for (std::int64_t ci = 0; ci < Cg; ++ci) s += px[ci];
        ps[gi * Hp * Wp + p] = s;
      }
    }
  }

  /// Patch row l = (oh, ow) of group gi from an image's layout and its pixel sums: its Cg * kh * kw
  /// codes into dst; returns their sum.
  /// Writes the K = kh * kw * Cg codes of patch row l of group gi to dst and zeroes dst[K, K_row);
  /// returns their sum.
  std::int32_t row(const std::int8_t* xc, const std::int32_t* ps, std::int64_t gi, std::int64_t l,
                   std::int8_t* dst, std::int64_t K_row) const {
    if (K_row > kh * kw * Cg) std::memset(dst + kh * kw * Cg, 0, static_cast<std::size_t>(K_row - kh * kw * Cg));
    const std::int64_t oh = l / wo, ow = l % wo;
    std::int32_t s = 0;
    ps += gi * Hp * Wp;  // the group's pixel sums
    const bool runs = dw == 1 && Cg == C;  // the kw pixels of a kernel row: one run of kw * C codes
    for (std::int64_t i = 0; i < kh; ++i) {
      const std::int64_t p = (oh * sh + i * dh) * Wp + ow * sw;  // the padded pixel of tap (i, 0)
      if (runs) {
        std::memcpy(dst, xc + p * C, static_cast<std::size_t>(kw * C));
        dst += kw * C;
        for (std::int64_t j = 0; j < kw; ++j) s += ps[p + j];
        continue;
      }
      for (std::int64_t j = 0; j < kw; ++j) {
        std::memcpy(dst, xc + (p + j * dw) * C + gi * Cg, static_cast<std::size_t>(Cg));
        dst += Cg;
        s += ps[p + j * dw];
      }
    }
    return s;
  }
};

// Convs with fewer output positions per image than this run several images' patch rows as one GEMM.
constexpr std::int64_t kConvBatchRows = 256;

// binary_codes' rule (the bitnet centre, zero_negative) on one float32 image's n elements x into
// out: sign_kernels().binary_codes(args, e0, e1) writes the codes of elements [e0, e1).
kernels::BinarizeArgs image_codes_args(const float* x, std::int8_t* out, const float* center, std::int64_t n) {
  kernels::BinarizeArgs a;
  a.input = x;
  a.output = out;
  a.center = center;
  a.numel = n;
  a.inner = n;
  a.channels = 1;
  a.zero_negative = true;
  a.dtype = kernels::DType::kFloat32;
  return a;
}

// Convs with 2- or 1-bit weights and at least this many patch rows run on the weight widened to int8.
constexpr std::int64_t kConvWidenRows = 16;

// One image per task: its codes (int8, quantized once, laid out channels-last with the padding), then
// per group its patches [L, K_row] in the GEMM's row layout (the channels-last im2col above on the
// group's channels, against the weight rows in the same order), their sums, and the GEMM of
// the group's weight rows written into its [N / groups, L] slice of the NCHW output (y_rs = 1,
// y_cs = L). A zero-padded position holds the code of 0 (zero point - shift): exactly what the float
// conv's zero padding quantizes to, so corr's zero-point term holds.
//
// given (depthwise convs only: conv2d_w1a1's grouped form): the images' int8 codes (NCHW, or NHWC
// with nhwc: a channels_last input's), in place of the input's quantization, and each image's output
// scales ([B, N], in place of out_scale). Or, in place of the codes, each image's bitnet centre: the
// codes of sign(x - centre[b]) (binary_codes' rule, zero_negative) computed from the input where the
// quantization would run, straight into the int16 pixels / planes where it would write them (no int8
// codes tensor, no widening copy: docs/benchmarks.md, forty-ninth session).
// With prepare (and centres): the conv computes the images' centres and scales itself, calling
// (*prepare)(b, g) for images [b, b + g) (g <= prepare_group) before it reads them: on the image's
// own thread just before its codes where images run in parallel through the channels-last pixels
// (one parallel region, the image still in L2 for its codes), otherwise for every image first.
struct GivenCodes {
  const std::int8_t* codes = nullptr;
  const float* image_scale = nullptr;
  bool nhwc = false;
  const float* center = nullptr;
  const std::function<void(std::int64_t, int)>* prepare = nullptr;
  int prepare_group = 1;
};

at::Tensor conv2d_int8_impl(const at::Tensor& input, const at::Tensor& weight, std::int64_t weight_bits,
                            at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                            at::IntArrayRef dilation, const at::Tensor& corr, const at::Tensor& out_scale,
                            double act_scale, std::int64_t act_zero_point, std::int64_t act_quant_min,
                            std::int64_t act_quant_max, const std::optional<at::Tensor>& bias, std::int64_t groups,
                            const GivenCodes& given = {}, NanReport* nan = nullptr, FusedClamp* clamp = nullptr) {
  const auto [ho, wo] =
      ops::check_conv2d_int8_args(input, weight, weight_bits, kernel_size, stride, padding, dilation, groups);
  const std::int64_t B = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3);
  const std::int64_t Cg = C / groups, kh = kernel_size[0], kw = kernel_size[1], K = Cg * kh * kw;
  const bool panel = weight.dim() == 3;  // pack_int8_panel (groups 1): N from corr, patch rows of ceil(K / 4) * 4
  const std::int32_t shift = check_linear_int8_args(
      at::empty({1, weight_bits == 8 && !panel ? weight.size(1) : K}, input.options()), weight, corr, out_scale,
      act_scale, act_zero_point, act_quant_min, act_quant_max, bias, static_cast<int>(weight_bits));
  // a channels_last input (ops::conv_channels_last_io) is read as NHWC and the output written
  // channels_last: the layout passes (transposes into and out of NCHW) drop out
  const bool nhwc = ops::conv_channels_last_io(input);
  const auto format = nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor x = input.contiguous(format);
  const at::Tensor w = weight.contiguous(), c = corr.contiguous(), os = out_scale.contiguous();
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  const std::int64_t N = panel ? c.size(0) : w.size(0), Ng = N / groups, L = ho * wo;
  at::Tensor y = at::empty({B, N, ho, wo}, input.options().memory_format(format));
  if (y.numel() == 0) return y;
  if (K == 0) {  // no input channels: an empty sum, y = fp32(corr[n]) * out_scale[n] (+ bias[n]), as linear_int8's
    // (every route below divided by K or read a zero-length row: SIGFPE or SIGSEGV before 2026-12-07)
    const std::int32_t* cp = c.const_data_ptr<std::int32_t>();
    const float* sp = os.const_data_ptr<float>();
    const float* bp = b.defined() ? b.const_data_ptr<float>() : nullptr;
    std::vector<float> v(static_cast<std::size_t>(N));
    for (std::int64_t n = 0; n < N; ++n) {
      const float r = static_cast<float>(cp[n]) * sp[n];  // the one requantization, then + bias: two roundings
      v[static_cast<std::size_t>(n)] = bp ? r + bp[n] : r;
    }
    float* yp = y.data_ptr<float>();
    for (std::int64_t bi = 0; bi < B; ++bi)
      for (std::int64_t n = 0; n < N; ++n)
        for (std::int64_t l = 0; l < L; ++l) yp[nhwc ? (bi * L + l) * N + n : (bi * N + n) * L + l] = v[static_cast<std::size_t>(n)];
    return y;
  }
  const kernels::ActQuantArgs q = act_quant_args(act_scale, act_zero_point, act_quant_min, act_quant_max, shift);
  // every path below quantizes the whole input (unless given codes: the depthwise forms of
  // conv2d_w1a1), recording a NaN (NanReport)
  const bool given_any = given.codes != nullptr || given.center != nullptr;
  const kernels::ActQuantArgs qn = NanReport::recording(q, given_any ? nullptr : nan);
  const std::int8_t pad_code = static_cast<std::int8_t>(q.zero_point - shift);
  const auto& k = kernels::cpu::qgemm_kernels();
  const float* xp = x.data_ptr<float>();
  const std::int64_t sh = stride[0], sw = stride[1], ph = padding[0], pw = padding[1], dh = dilation[0],
                     dw = dilation[1];
  // images in parallel; with fewer images than threads, one image at a time with the GEMM's output
  // channels in parallel
  const bool per_image = B >= at::get_num_threads();
  TORCH_INTERNAL_ASSERT(!given_any || Cg == 1, "conv2d_int8: given codes are for depthwise convs");
  const auto& sign = kernels::cpu::sign_kernels();
  if (Cg == 1) {  // depthwise (N / C outputs per input channel): the direct kernel, no im2col
    const std::int64_t taps = kh * kw, rb = w.size(1), Hp = H + 2 * ph, Wp = W + 2 * pw;
    kernels::QDwConvArgs g;
    g.corr = c.data_ptr<std::int32_t>();
    g.out_scale = os.data_ptr<float>();
    g.bias = b.defined() ? b.data_ptr<float>() : nullptr;
    g.Hp = Hp;
    g.Wp = Wp;
    g.Ng = N / C;
    g.kh = kh;
    g.kw = kw;
    g.sh = sh;
    g.sw = sw;
    g.dh = dh;
    g.dw = dw;
    g.Ho = ho;
    g.Wo = wo;
    const std::int64_t mult = N / C;
    // the codes' layout: the input's, or the given codes' (the output keeps the input's format)
    const bool in_nhwc = given.codes != nullptr ? given.nhwc : nhwc;
    TORCH_INTERNAL_ASSERT(!in_nhwc || nhwc, "conv2d_int8: NHWC codes come with a channels_last input");
    // an NHWC input with one output per channel, where the table quantizes into int16: each image
    // row's codes straight into its padded pixels (no int8 codes, no widening copy)
    const bool fused_quantize = !given_any && in_nhwc && mult == 1 && k.quantize_s16 != nullptr;
    // (given centres: each image row's codes straight into its padded pixels alike)
    const bool fused_codes = given.center != nullptr && in_nhwc && mult == 1;
    // Channels-last (dwconv_nhwc) vectorizes over the output channels whatever the map's size or
    // stride; the planar form (dwconv) along each output row, which pays with several outputs per
    // input channel on rows of 8+ pixels at column stride 1 (docs/benchmarks.md, seventeenth session:
    // 364 x 8 x 8 x 8 -> 16 and 1 x 3 x 32 x 32 -> 48 ran 0.75x channels-last; maps under 8 pixels
    // and stride 2 ran 1.1-2.3x faster channels-last), a 1-channel input too where the table has flat
    // stride-1 planes (dwconv_flat: a plane's codes read once for up to 4 output planes; 364 x 1 x 8 x
    // 8 -> 32 ran 1.1-1.5x and 1 x 1 x 224 x 224 -> 32 1.7-2.8x faster than channels-last,
    // docs/benchmarks.md, forty-sixth session). With one output per channel the planar form needs the
    // flat planes and pays from 16 pixels a row, or from 8 with fewer images than threads (no steps
    // split across the threads): docs/benchmarks.md, forty-fifth session.
    const bool planar_one = k.dwconv_flat && sh == 1 && (W >= 16 || !per_image);
    const bool planar_many = W >= 8 && sw == 1 && (C > 1 || (k.dwconv_flat && sh == 1));
    // Stride 2 (undilated), where the table splits planes (split_planes_s16): each padded plane's
    // four row / column parity planes, over which the conv is a stride-1 flat run (tap (i, j) reads
    // parity plane (i % 2, j % 2) at row + i / 2, column + j / 2). With one output per channel from
    // rows of 48+ pixels (8 x 96 x 64 x 64 ran 1.6x, 8 x 96 x 112 x 112 1.1-1.3x faster than the
    // channels-last form, 8 x 96 x 32 x 32 0.9-1.0x: a plane's fixed costs against a quarter of the
    // outputs); with several, from 16 (their codes were repeated per output in the channels-last
    // pixels: 8 x 32 x 16 x 16 -> 64 and 1 x 3 x 224 x 224 -> 24 ran 3x and 10x faster;
    // docs/benchmarks.md, forty-ninth session).
    const std::int64_t Hq = (Hp + 1) / 2, Wq = (Wp + 1) / 2;
    const bool parity = k.split_planes_s16 != nullptr && k.dwconv_flat && sh == 2 && sw == 2 && dh == 1 && dw == 1 &&
                        W >= (mult > 1 ? 16 : 48) && (taps + 1) / 2 <= 64 && Wq <= 16384;
    const bool pixels = nhwc || (!parity && ((mult > 1 && !planar_many) || (mult == 1 && !planar_one)));
    const std::int64_t pg = std::max(1, given.prepare_group);
    if (given.prepare != nullptr && !(pixels && per_image)) {  // every image's centre and scales first
      at::parallel_for(0, B, 1, [&](std::int64_t b0, std::int64_t b1) {
        for (std::int64_t bi = b0; bi < b1; bi += pg) (*given.prepare)(bi, static_cast<int>(std::min(pg, b1 - bi)));
      });
    }
    if (pixels) {
      // with mult = N / C outputs per input channel each pixel's C codes are repeated mult times
      // (output channel n reads input channel n / mult); each image's [Ho, Wo, N] output is
      // transposed into NCHW, or is the channels_last output's image as it is (an NHWC input always
      // takes this form)
      // the codes as int16, [taps, N]
      const at::Tensor wt = depthwise_weight_codes(weight, w, weight_bits, panel, rb, N, taps, true);
      kernels::QDwConvArgs gn = g;
      gn.w = wt.const_data_ptr<std::int16_t>();
      gn.C = N;  // the channels-last pixels hold N codes (C when mult is 1)
      // rows_in_parallel (fewer images than threads): every step of the image split across the
      // threads (with only the conv's rows in parallel, 1 x 256 x 28 x 28 ran 0.5x oneDNN's fp32,
      // the second thread waiting through the serial quantization and transposes)
      bool clamp_images = false;  // the fused clamp image by image (an image per thread)
      const auto image = [&](std::int64_t bi, std::int8_t* xq, std::int16_t* xc, std::int16_t* xt, float* yt,
                             bool rows_in_parallel) {
        const auto steps = [&](std::int64_t n, std::int64_t grain, const auto& f) {
          if (rows_in_parallel) {
            at::parallel_for(0, n, grain, f);
          } else {
            f(0, n);
          }
        };
        // the image's int8 codes read below: the given ones, or the scratch the quantization writes
        const std::int8_t* codes = given.codes != nullptr ? given.codes + bi * C * H * W : xq;
        if (given.codes != nullptr) {
          // given codes: nothing to quantize
        } else if (fused_codes) {
          steps(H, 1, [&](std::int64_t h0, std::int64_t h1) {  // image rows [h0, h1): their codes, one call
            sign.codes_s16(xp + (bi * H + h0) * W * C, h1 - h0, W * C, xc + ((h0 + ph) * Wp + pw) * C, Wp * C,
                           given.center[bi], true);
          });
        } else if (given.center != nullptr) {  // the image's int8 codes (binary_codes' kernel on its run)
          const kernels::BinarizeArgs a = image_codes_args(xp + bi * C * H * W, xq, given.center + bi, C * H * W);
          steps(C * H * W, 4096, [&](std::int64_t e0, std::int64_t e1) { sign.binary_codes(a, e0, e1); });
        } else if (fused_quantize) {
          steps(H, 1, [&](std::int64_t h0, std::int64_t h1) {  // image rows [h0, h1), one call
            k.quantize_s16(xp + (bi * H + h0) * W * C, h1 - h0, W * C, xc + ((h0 + ph) * Wp + pw) * C, Wp * C, qn);
          });
        } else if (nhwc) {
          steps(H * W, std::max<std::int64_t>(1, 4096 / C), [&](std::int64_t p0, std::int64_t p1) {
            k.quantize_rows(xp + bi * C * H * W, xq, C, qn, p0, p1);  // pixels [p0, p1)
          });
        } else {
          const std::int64_t grain = std::max<std::int64_t>(1, 4096 / std::max<std::int64_t>(H * W, 1));
          steps(C, grain, [&](std::int64_t c0, std::int64_t c1) {
            k.quantize_rows(xp + bi * C * H * W, xq, H * W, qn, c0, c1);  // channel rows [c0, c1)
          });
        }
        // the padding's pixels hold the zero point's code (the image rows' pixels are written below)
        fill_border_plane(xc, Hp, Wp, H, W, ph, pw, N, static_cast<std::int16_t>(pad_code));
        if (mult > 1) {
          // the whole image [C, H * W] -> [H * W, C] (an NHWC input's codes are that already), then
          // each pixel's codes repeated mult times into its padded place
          const auto repeat = [&](const auto* pixels) {
            steps(H, 1, [&](std::int64_t h0, std::int64_t h1) {
              for (std::int64_t h = h0; h < h1; ++h) {
                for (std::int64_t iw = 0; iw < W; ++iw) {
                  const auto* src = pixels + (h * W + iw) * C;
                  std::int16_t* dst = xc + ((h + ph) * Wp + pw + iw) * N;
                  for (std::int64_t ci = 0; ci < C; ++ci)
                    std::fill(dst + ci * mult, dst + (ci + 1) * mult, static_cast<std::int16_t>(src[ci]));
                }
              }
            });
          };
          if (in_nhwc) {
            repeat(codes);
          } else {
            steps(C, 8, [&](std::int64_t c0, std::int64_t c1) {
              k.transpose_s8_s16(codes + c0 * H * W, c1 - c0, H * W, H * W, xt + c0, C);
            });
            repeat(xt);
          }
        } else if (in_nhwc) {
          if (!fused_quantize && !fused_codes) {  // each image row's W * C codes, widened, into its padded row
            steps(H, 1, [&](std::int64_t h0, std::int64_t h1) {
              for (std::int64_t h = h0; h < h1; ++h)
                std::copy(codes + h * W * C, codes + (h + 1) * W * C, xc + ((h + ph) * Wp + pw) * C);
            });
          }
        } else if (W < 8) {
          // rows narrower than the transposes' 8-column blocks (each row's transpose would run
          // scalar): the whole image [C, H * W] -> [H * W, C] at once, then each row's W pixels
          // copied into its padded row
          steps(C, 8, [&](std::int64_t c0, std::int64_t c1) {
            k.transpose_s8_s16(codes + c0 * H * W, c1 - c0, H * W, H * W, xt + c0, C);
          });
          steps(H, 1, [&](std::int64_t h0, std::int64_t h1) {
            for (std::int64_t h = h0; h < h1; ++h)
              std::copy(xt + h * W * C, xt + (h + 1) * W * C, xc + ((h + ph) * Wp + pw) * C);
          });
        } else {
          steps(H, 1, [&](std::int64_t h0, std::int64_t h1) {
            for (std::int64_t h = h0; h < h1; ++h)  // image row h: [C, W] -> [W, C] into its padded pixels
              k.transpose_s8_s16(codes + h * W, C, W, H * W, xc + ((h + ph) * Wp + pw) * C, C);
          });
        }
        kernels::QDwConvArgs gi = gn;
        gi.x = xc;
        if (given.image_scale != nullptr) gi.out_scale = given.image_scale + bi * N;
        float* yb = y.data_ptr<float>() + bi * N * L;
        gi.y = nhwc ? yb : yt;  // [L, N]: the channels_last output's image as it is
        steps(ho, 1, [&](std::int64_t r0, std::int64_t r1) { k.dwconv_nhwc(gi, r0, r1); });
        if (!nhwc) {
          steps(L, 64, [&](std::int64_t l0, std::int64_t l1) {  // [L, N] -> [N, L], rows [l0, l1)
            k.transpose_f32(yt + l0 * N, l1 - l0, N, N, yb + l0, L);
          });
        }
        if (clamp_images) clamp->span(yb, N * L);  // the image's output, in cache
      };
      // each thread's image buffers (every element written before it is read: the codes by
      // quantize_rows, the padded pixels by the border fill and the transposes (narrow rows: the
      // whole image's transpose, then copies), the output by dwconv_nhwc)
      struct TagQ;
      struct TagC;
      struct TagT;
      struct TagY;
      // (each sized 1 where its form does not use it: the int8 codes when quantize_s16 writes the
      // pixels, the transposed image with an NHWC input, the [L, N] output with a channels_last one)
      // (BoundedScratch: kept by the thread up to 16 MiB each, a call's own buffer above)
      struct Buffers {
        kernels::BoundedScratch<std::int8_t, TagQ> xq;
        kernels::BoundedScratch<std::int16_t, TagC> xc;
        kernels::BoundedScratch<std::int16_t, TagT> xt;
        kernels::BoundedScratch<float, TagY> yt;
      };
      const auto buffers = [&] {
        return Buffers{kernels::BoundedScratch<std::int8_t, TagQ>(
                           static_cast<std::size_t>(fused_quantize || fused_codes || given.codes != nullptr ? 1 : C * H * W)),
                       kernels::BoundedScratch<std::int16_t, TagC>(static_cast<std::size_t>(Hp * Wp * N)),
                       kernels::BoundedScratch<std::int16_t, TagT>(
                           static_cast<std::size_t>(!in_nhwc && (W < 8 || mult > 1) ? H * W * C : 1)),
                       kernels::BoundedScratch<float, TagY>(static_cast<std::size_t>(nhwc ? 1 : L * N))};
      };
      if (per_image) {
        clamp_images = clamp != nullptr && clamp->pending;
        at::parallel_for(0, B, 1, [&](std::int64_t b0, std::int64_t b1) {
          const Buffers bufs = buffers();
          for (std::int64_t bi = b0; bi < b1; ++bi) {
            if (given.prepare != nullptr && (bi - b0) % pg == 0)  // the next images' centres and scales
              (*given.prepare)(bi, static_cast<int>(std::min(pg, b1 - bi)));
            image(bi, bufs.xq.get(), bufs.xc.get(), bufs.xt.get(), bufs.yt.get(), false);
          }
        });
        if (clamp_images) clamp->pending = false;
      } else {
        const Buffers bufs = buffers();
        for (std::int64_t bi = 0; bi < B; ++bi) image(bi, bufs.xq.get(), bufs.xc.get(), bufs.xt.get(), bufs.yt.get(), true);
      }
      return y;
    }
    // the planar form (the table's dwconv): the codes as int16, [N, taps]
    const at::Tensor wd = depthwise_weight_codes(weight, w, weight_bits, panel, rb, N, taps, false);
    g.w = wd.const_data_ptr<std::int16_t>();
    // plane by plane (in parallel over every image's planes), in runs of an image's consecutive
    // planes: their codes (quantized here, or given) widened into zero-point padded [Hp, Wp] planes of
    // a per-thread buffer (its borders written once), then the run's mult output channels per plane
    // by one dwconv call, written in place in the NCHW output. A run holds at most kDwPlaneCodes codes:
    // the planes stay in L1 / L2 (the whole image's [C, Hp, Wp] planes did not), and small maps share
    // the call's setup.
    constexpr std::int64_t kDwPlaneCodes = 32 * 1024;
    const std::int64_t HW = H * W, plane = Hp * Wp, run_cap = std::max<std::int64_t>(1, kDwPlaneCodes / plane);
    // stride 2: each plane's parity planes (4 Hq Wq codes a plane) and the taps' offsets on them
    const std::int64_t qplane = parity ? 4 * Hq * Wq : 0;
    std::vector<std::int64_t> toff(static_cast<std::size_t>(parity ? taps : 0));
    for (std::int64_t t = 0; t < static_cast<std::int64_t>(toff.size()); ++t) {
      const std::int64_t i = t / kw, j = t % kw;
      toff[static_cast<std::size_t>(t)] = ((i % 2) * 2 + j % 2) * Hq * Wq + (i / 2) * Wq + j / 2;
    }
    // Fewer planes than twice the threads with several outputs each (one image of a 1-channel or
    // 3-channel input): each plane's outputs in `splits` chunks of `chunk` (a multiple of the kernels'
    // 4 channels at a time), each task quantizing its plane itself, so every thread has work
    // (1 x 1 x 224 x 224 -> 32 ran 1.7-1.8x faster; docs/benchmarks.md, forty-sixth session).
    const std::int64_t threads = at::get_num_threads(), planes = B * C;
    std::int64_t splits = 1, chunk = mult;
    if (threads > 1 && mult > 4 && planes < 2 * threads) {
      const std::int64_t want = std::min((mult + 3) / 4, (2 * threads + planes - 1) / planes);
      chunk = ((mult + want - 1) / want + 3) / 4 * 4;
      splits = (mult + chunk - 1) / chunk;
    }
    const bool clamp_planes = clamp != nullptr && clamp->pending;
    at::parallel_for(0, planes * splits, 1, [&](std::int64_t t0, std::int64_t t1) {
      const std::int64_t cap = splits > 1 ? 1 : std::min(run_cap, t1 - t0);
      std::vector<std::int8_t> xq(static_cast<std::size_t>(given_any || k.quantize_s16 ? 0 : cap * HW));
      // + the slack dwconv's stride-1 plane runs read past the last plane (any values; QDwConvArgs)
      std::vector<std::int16_t> xpad(static_cast<std::size_t>(cap * plane + (kw - 1) * dw + 16),
                                     static_cast<std::int16_t>(pad_code));
      // the run's parity planes (+ the slack the flat run reads past the last: (kw - 1) / 2 + 16)
      std::vector<std::int16_t> xq2(static_cast<std::size_t>(parity ? cap * qplane + kw + 16 : 0),
                                    static_cast<std::int16_t>(pad_code));
      for (std::int64_t t = t0; t < t1;) {
        // task t: plane pi's output chunk t % splits, or (splits 1) a run of np planes from pi
        const std::int64_t pi = t / splits, bi = pi / C, ci = pi % C;
        const std::int64_t np = splits > 1 ? 1 : std::min({cap, t1 - t, C - ci});
        const std::int64_t n0 = t % splits * chunk, n1 = splits > 1 ? std::min(mult, n0 + chunk) : np * mult;
        const auto row = [&](std::int64_t r) {  // the run's row r: row r % H of plane r / H
          return xpad.data() + (r / H) * plane + (r % H + ph) * Wp + pw;
        };
        if (given.center != nullptr) {  // each plane's codes of its image's centre straight into place
          for (std::int64_t p = 0; p < np; ++p)
            sign.codes_s16(xp + (pi + p) * HW, H, W, row(p * H), Wp, given.center[bi], true);
        } else if (given.codes == nullptr && k.quantize_s16 != nullptr) {  // each plane's codes straight into place
          for (std::int64_t p = 0; p < np; ++p) k.quantize_s16(xp + (pi + p) * HW, H, W, row(p * H), Wp, qn);
        } else {  // the run's int8 codes, then each row widened into its place
          const std::int8_t* codes = given.codes != nullptr ? given.codes + pi * HW : xq.data();
          if (given.codes == nullptr) k.quantize_rows(xp + pi * HW, xq.data(), np * HW, qn, 0, 1);
          for (std::int64_t r = 0; r < np * H; ++r) std::copy(codes + r * W, codes + (r + 1) * W, row(r));
        }
        kernels::QDwConvArgs gi = g;  // the run's planes alone: output n reads plane n / mult
        gi.x = xpad.data();
        if (parity) {  // a stride-1 run over each plane's parity planes
          for (std::int64_t p = 0; p < np; ++p) k.split_planes_s16(xpad.data() + p * plane, Hp, Wp, xq2.data() + p * qplane, Hq, Wq);
          gi.x = xq2.data();
          gi.Hp = 4 * Hq;
          gi.Wp = Wq;
          gi.sh = gi.sw = gi.dh = gi.dw = 1;
          gi.tap_off = toff.data();
        }
        gi.w = g.w + ci * mult * taps;
        gi.corr = g.corr + ci * mult;
        gi.out_scale = (given.image_scale != nullptr ? given.image_scale + bi * N : g.out_scale) + ci * mult;
        gi.bias = g.bias != nullptr ? g.bias + ci * mult : nullptr;
        gi.y = y.data_ptr<float>() + (bi * N + ci * mult) * L;
        k.dwconv(gi, n0, n1);
        if (clamp_planes) clamp->span(gi.y + n0 * L, (n1 - n0) * L);  // the task's output planes, in cache
        t += splits > 1 ? 1 : np;
      }
    });
    if (clamp_planes) clamp->pending = false;
    return y;
  }
  // the table's direct conv on padded planes (QConvDirectArgs): output pixels in vector lanes, no
  // patch rows and no output transpose, with two tiles of 16 output pixels or more per thread (each
  // thread reads the whole weight; with fewer, the GEMMs split the output channels: 8 x 160 x 2 x 2
  // -> 960 ran 1.6x slower direct), and for a channels_last input only with kh * kw > 1 (a 1 x 1
  // conv's patch rows are its NHWC pixels' codes, written by the quantization itself, where the
  // planes cost a transpose: MobileNetV2's channels_last pointwise convs ran 1.1-1.6x slower direct;
  // docs/benchmarks.md, forty-seventh session)
  if (k.conv_s8 != nullptr && given.codes == nullptr && sw <= 2 && (k.conv_s8_max_k == 0 || K <= k.conv_s8_max_k) &&
      (B * L + 15) / 16 >= 2 * at::get_num_threads() && (!nhwc || kh * kw > 1)) {
    const std::int64_t Hp = H + 2 * ph, Wp = W + 2 * pw, K4 = (K + 3) / 4 * 4;
    struct TagPlanesS8 {};
    const kernels::BoundedScratch<std::int8_t, TagPlanesS8> xc_buf(static_cast<std::size_t>(B * C * Hp * Wp + 64));
    std::int8_t* xc = xc_buf.get();
    quantize_planes(xp, nhwc, B, C, H, W, ph, pw, qn, pad_code, xc);
    const at::Tensor codes = s8_conv_codes(weight, w, static_cast<int>(weight_bits), panel, N, K);
    const auto* qp = codes.const_data_ptr<std::int8_t>();
    const auto* wsum = reinterpret_cast<const std::int32_t*>(qp + N * K4);  // [N]
    // each output channel's init: corr - 128 * sum w (the lanes read the codes + 128), modulo 2^32
    const std::int32_t* cp_ = c.const_data_ptr<std::int32_t>();
    std::vector<std::int32_t> init(static_cast<std::size_t>(N));
    for (std::int64_t n = 0; n < N; ++n) {
      init[static_cast<std::size_t>(n)] = static_cast<std::int32_t>(static_cast<std::uint32_t>(cp_[n]) -
                                                                    128u * static_cast<std::uint32_t>(wsum[n]));
    }
    std::vector<std::int64_t> koff;
    kernels::QConvDirectArgs cg = direct_conv_args(koff, B, C, Cg, Hp, Wp, kh, kw, sh, sw, dh, dw, ho, wo, N, nhwc);
    cg.N = Ng;
    cg.group = K4;
    const float* osp = os.const_data_ptr<float>();
    const float* bp = b.defined() ? b.const_data_ptr<float>() : nullptr;
    float* yp = y.data_ptr<float>();
    const bool clamp_pixels = nhwc && clamp != nullptr && clamp->pending;  // (NCHW: the op's pass)
    run_direct_conv(
        k.conv_s8, cg, groups,
        [&](std::int64_t gi, kernels::QConvDirectArgs& a) {
          a.x = xc + gi * Cg * Hp * Wp;
          a.w = qp + gi * Ng * K4;
          a.init = init.data() + gi * Ng;
          a.out_scale = osp + gi * Ng;
          a.bias = bp ? bp + gi * Ng : nullptr;
          a.y = yp + gi * Ng * (nhwc ? 1 : L);
        },
        clamp_pixels ? yp : nullptr, N, clamp);
    if (clamp_pixels) clamp->pending = false;
    return y;
  }
  // the patch rows (channels-last), and the weight rows in their order
  const ConvPatches cp(C, groups, H, W, kernel_size, stride, padding, dilation, wo);
  // Convs with 2- or 1-bit weights run the int8 GEMM on the codes widened to int8 (the panel layout
  // for groups 1, the row layout otherwise; in the same pass as the reorder, held with it) from
  // kConvWidenRows patch rows: the same sums (the packed kernels equal linear_int8 on the unpacked
  // codes), at the int8 GEMM's speed. Below, the packed kernels read a quarter / an eighth of the
  // bytes (one patch row: 1.3-1.6x the widened form's speed; from 16 rows the widened form ran
  // 1.07-1.7x faster, docs/benchmarks.md, nineteenth session). int8 weight rows of a groups-1 conv
  // take the same reorder into the panel layout (narrow-range codes, the rows' precondition): the
  // row kernel sums each output horizontally, 3-12x slower than the panel from 16 patch rows
  // (8 x 32 x 32 x 32 -> 96 channels_last: 1078 us against the panel's 102; docs/benchmarks.md,
  // fifty-second session).
  const bool widen = (weight_bits != 8 || (groups == 1 && !panel)) && B * L >= kConvWidenRows;
  const int wbits = widen ? 8 : static_cast<int>(weight_bits);
  const bool wpanel = widen ? groups == 1 : panel;
  // (both derived from the constant weight alone: held between calls, cached_weight_form)
  const at::Tensor wr =
      widen ? cached_weight_form(weight, {1, weight_bits, panel, wpanel, N, Cg, kh, kw},
                                 [&] { return widened_channels_last_weight(w, static_cast<int>(weight_bits), N, Cg, kh, kw, wpanel); })
      : kh * kw > 1 && Cg > 1
          ? cached_weight_form(weight, {2, weight_bits, panel, 0, N, Cg, kh, kw},
                               [&] { return channels_last_weight(w, static_cast<int>(weight_bits), panel, N, Cg, kh, kw); })
          : w;
  const std::int32_t* wtail = nullptr;  // a split panel's records (QGemmArgs::tail)
  const at::Tensor wl = wpanel ? s8_panel_operand(wr, N, K, &wtail) : wr;
  // the patch rows' length, >= K: the padded tail of each row stays 0
  const std::int64_t K_row = wpanel ? (K + 3) / 4 * 4 : wl.size(1) * (8 / wbits);
  // Group gi's GEMM of M patch rows (a, their sums a_sum) into yo (rows y_rs apart, columns y_cs
  // apart), its output columns [c0, c1) of the group's Ng.
  const auto gemm = [&](const std::int8_t* a, const std::int32_t* a_sum, std::int64_t M, std::int64_t gi, float* yo,
                        std::int64_t y_rs, std::int64_t y_cs, std::int64_t c0, std::int64_t c1) {
    const std::int64_t n0 = gi * Ng;  // the group's output channels [n0, n0 + Ng)
    const float* bp = b.defined() ? b.data_ptr<float>() + n0 : nullptr;
    if (wbits == 8) {
      kernels::QGemmArgs g;
      g.a = a;
      g.w = wpanel ? static_cast<const std::int8_t*>(wl.const_data_ptr())
                   : static_cast<const std::int8_t*>(wl.const_data_ptr()) + n0 * wl.size(1);
      g.a_sum = a_sum;
      g.panel = wpanel;
      g.tail = wtail;
      g.corr = c.data_ptr<std::int32_t>() + n0;
      g.out_scale = os.data_ptr<float>() + n0;
      g.bias = bp;
      g.y = yo;
      g.M = M;
      g.N = Ng;
      g.K = wpanel ? K : K_row;  // the weight's (zero-padded) row length; a panel's true K
      g.y_rs = y_rs;
      g.y_cs = y_cs;
      k.gemm_s8(g, c0, c1);
    } else {
      kernels::QGemmPackedArgs g;
      g.a = a;
      g.a_sum = a_sum;
      g.w = static_cast<const std::uint8_t*>(wl.const_data_ptr()) + n0 * wl.size(1);
      g.corr = c.data_ptr<std::int32_t>() + n0;
      g.out_scale = os.data_ptr<float>() + n0;
      g.bias = bp;
      g.y = yo;
      g.M = M;
      g.N = Ng;
      g.K_pad = K_row;
      g.y_rs = y_rs;
      g.y_cs = y_cs;
      (wbits == 2 ? k.gemm_t2 : k.gemm_b1)(g, c0, c1);
    }
  };
  // An NCHW int8-weight conv with an image per thread and patch rows of at most 128 codes (a 1x1
  // conv from up to 128 channels) takes the per-image path below at any size: MobileNetV2's 8 x 8 and
  // 4 x 4 expand convs ran 1.33-1.59x faster there (one parallel region, the panel kernels' in-register
  // NCHW stores) than batched; 2- and 1-bit weights were not measured there and stay batched
  // (docs/benchmarks.md, twenty-second session).
  if (L < kConvBatchRows && (nhwc || !per_image || K_row > 128 || weight_bits != 8)) {
    // Few positions per image: the patch rows of several images form one GEMM, so each weight block
    // is read once for all of them (one image of a 4 x 4 map would stream the whole weight for 16
    // rows), into [rows, Ng], and each image's slice is transposed into the NCHW output: images
    // [bb0, bb1), each step's work across the threads (inner: the GEMM in tiles of 64 output
    // columns x row ranges), or all on the calling thread (images_by_thread).
    const bool clamp_here = clamp != nullptr && clamp->pending;  // the fused clamp as the outputs are written
    const auto batched = [&](std::int64_t bb0, std::int64_t bb1, bool inner) {
      const std::int64_t chunk = std::min(bb1 - bb0, (2 * kConvBatchRows + L - 1) / L), HWC = cp.image_size(),
                         PS = cp.sums_size();
      // NHWC without padding: quantized straight into the layout; a 1x1 stride-1 conv then runs its
      // GEMM on the layout's pixels and their sums (ConvPatches::direct / rows_are_pixels)
      const bool direct = cp.direct(nhwc), pixel_rows = cp.rows_are_pixels(nhwc, K_row);
      std::vector<std::int8_t> xcs(static_cast<std::size_t>(chunk * HWC));
      std::vector<std::int32_t> pss(static_cast<std::size_t>(chunk * PS));
      std::vector<std::int32_t> a_sum(static_cast<std::size_t>(pixel_rows ? 0 : chunk * L));
      // each row's positions K..K_row zeroed where the row is written (a zero fill of the whole buffer
      // was a serial memset of up to chunk * L * K_row bytes, 18 % of a 8 x 256 x 8 x 8 3x3 conv)
      std::unique_ptr<std::int8_t[]> cols(pixel_rows ? nullptr : new std::int8_t[static_cast<std::size_t>(chunk * L * K_row)]);
      // every row of a chunk's [Mc, Ng] is written by the GEMM before it is read: no zero fill
      std::unique_ptr<float[]> yt(nhwc ? nullptr : new float[static_cast<std::size_t>(chunk * L * Ng)]);
      const std::int64_t threads = at::get_num_threads(), nt = (Ng + 63) / 64;
      for (std::int64_t b0 = bb0; b0 < bb1; b0 += chunk) {
        const std::int64_t nb = std::min(chunk, bb1 - b0), Mc = nb * L;
        maybe_parallel(inner, 0, nb, 1, [&](std::int64_t i0, std::int64_t i1) {
          std::vector<std::int8_t> xq(static_cast<std::size_t>(direct ? 0 : C * H * W));
          for (std::int64_t i = i0; i < i1; ++i) {
            if (direct) {
              k.quantize_rows(xp + (b0 + i) * C * H * W, xcs.data() + i * HWC, C * H * W, qn, 0, 1);
              cp.pixel_sums(xcs.data() + i * HWC, pss.data() + i * PS);
            } else {
              k.quantize_rows(xp + (b0 + i) * C * H * W, xq.data(), C * H * W, qn, 0, 1);
              cp.layout(k, xq.data(), nhwc, pad_code, xcs.data() + i * HWC, pss.data() + i * PS);
            }
          }
        });
        // the patch rows: the layout's pixels themselves (rows L * C apart per image: r * K_row), or
        // copied into cols
        const std::int8_t* rows_a = pixel_rows ? xcs.data() : cols.get();
        const std::int32_t* rows_sum = pixel_rows ? pss.data() : a_sum.data();
        for (std::int64_t gi = 0; gi < groups; ++gi) {
          if (!pixel_rows) {
            maybe_parallel(inner, 0, Mc, 64, [&](std::int64_t r0, std::int64_t r1) {
              for (std::int64_t r = r0; r < r1; ++r) {
                const std::int64_t i = r / L;
                a_sum[static_cast<std::size_t>(r)] =
                    cp.row(xcs.data() + i * HWC, pss.data() + i * PS, gi, r % L, cols.get() + r * K_row, K_row);
              }
            });
          }
          // into [rows, Ng]; channels_last: straight into the output (row r of the chunk is pixel
          // (b0 + r / L, r % L), N floats apart), no transpose
          float* yo = nhwc ? y.data_ptr<float>() + b0 * L * N + gi * Ng : yt.get();
          const std::int64_t yo_rs = nhwc ? N : Ng;
          // the fused clamp on rows [r0, r1) x columns [c0, c1) of a channels_last output as the GEMM
          // writes them (NCHW: each image's planes after their transpose, below)
          const auto clamp_block = [&](std::int64_t r0, std::int64_t r1, std::int64_t c0, std::int64_t c1) {
            if (!clamp_here || !nhwc) return;
            for (std::int64_t r = r0; r < r1; ++r) clamp->span(yo + r * yo_rs + c0, c1 - c0);
          };
          if (!inner) {
            gemm(rows_a, rows_sum, Mc, gi, yo, yo_rs, 1, 0, Ng);
            clamp_block(0, Mc, 0, Ng);
          } else {
            // row ranges: enough tiles for two per thread; consecutive tasks share their columns
            const std::int64_t mtiles = std::min((Mc + 11) / 12, std::max<std::int64_t>(1, (2 * threads + nt - 1) / nt));
            const std::int64_t mt = (Mc + mtiles - 1) / mtiles;
            at::parallel_for(0, nt * mtiles, 1, [&](std::int64_t t0, std::int64_t t1) {
              for (std::int64_t t = t0; t < t1; ++t) {
                const std::int64_t r0 = (t % mtiles) * mt, c0 = (t / mtiles) * 64;
                if (r0 >= Mc) continue;
                gemm(rows_a + r0 * K_row, rows_sum + r0, std::min(mt, Mc - r0), gi, yo + r0 * yo_rs, yo_rs, 1, c0,
                     std::min(Ng, c0 + 64));
                clamp_block(r0, std::min(Mc, r0 + mt), c0, std::min(Ng, c0 + 64));
              }
            });
          }
          if (nhwc) continue;
          maybe_parallel(inner, 0, nb, 1, [&](std::int64_t i0, std::int64_t i1) {
            for (std::int64_t i = i0; i < i1; ++i) {  // [L, Ng] -> the group's [Ng, L] of image b0 + i
              float* planes = y.data_ptr<float>() + ((b0 + i) * N + gi * Ng) * L;
              k.transpose_f32(yt.get() + i * L * Ng, L, Ng, Ng, planes, L);
              if (clamp_here) clamp->span(planes, Ng * L);  // the fused clamp, in cache
            }
          });
        }
      }
    };
    if (images_by_thread(per_image, wl)) {
      at::parallel_for(0, B, 1, [&](std::int64_t i0, std::int64_t i1) { batched(i0, i1, false); });
    } else {
      batched(0, B, true);
    }
    if (clamp_here) clamp->pending = false;
    return y;
  }
  const bool direct = cp.direct(nhwc), pixel_rows = cp.rows_are_pixels(nhwc, K_row);
  const bool clamp_images = clamp != nullptr && clamp->pending && per_image;  // image by image
  const auto run = [&](std::int64_t b0, std::int64_t b1) {
    std::vector<std::int8_t> xq(static_cast<std::size_t>(direct ? 0 : C * H * W));
    std::vector<std::int8_t> xc(static_cast<std::size_t>(cp.image_size()));
    std::vector<std::int32_t> ps(static_cast<std::size_t>(cp.sums_size()));
    // each row's positions K..K_row zeroed where the row is written
    std::unique_ptr<std::int8_t[]> cols(pixel_rows ? nullptr : new std::int8_t[static_cast<std::size_t>(L * K_row)]);
    std::vector<std::int32_t> a_sum(static_cast<std::size_t>(pixel_rows ? 0 : L));
    for (std::int64_t bi = b0; bi < b1; ++bi) {
      if (direct) {
        k.quantize_rows(xp + bi * C * H * W, xc.data(), C * H * W, qn, 0, 1);
        cp.pixel_sums(xc.data(), ps.data());
      } else {
        k.quantize_rows(xp + bi * C * H * W, xq.data(), C * H * W, qn, 0, 1);
        cp.layout(k, xq.data(), nhwc, pad_code, xc.data(), ps.data());
      }
      for (std::int64_t gi = 0; gi < groups; ++gi) {
        const auto rows = [&](std::int64_t l0, std::int64_t l1) {
          for (std::int64_t l = l0; l < l1; ++l)
            a_sum[static_cast<std::size_t>(l)] = cp.row(xc.data(), ps.data(), gi, l, cols.get() + l * K_row, K_row);
        };
        if (!pixel_rows && per_image) {
          rows(0, L);
        } else if (!pixel_rows) {  // one image at a time: its patch rows in parallel too
          at::parallel_for(0, L, 64, rows);
        }
        // NCHW: the group's [Ng, L] slice (rows 1 apart, columns L); channels_last: [L, N] pixels
        float* yb = y.data_ptr<float>() + (nhwc ? bi * L * N + gi * Ng : (bi * N + gi * Ng) * L);
        const std::int8_t* a = pixel_rows ? xc.data() : cols.get();
        const std::int32_t* a_rows = pixel_rows ? ps.data() : a_sum.data();
        gemm_columns(per_image, Ng, [&](std::int64_t c0, std::int64_t c1) {
          gemm(a, a_rows, L, gi, yb, nhwc ? N : 1, nhwc ? 1 : L, c0, c1);
        });
      }
      if (clamp_images) clamp->span(y.data_ptr<float>() + bi * N * L, N * L);  // the image's output, in cache
    }
  };
  if (per_image) {
    at::parallel_for(0, B, 1, run);
    if (clamp_images) clamp->pending = false;
  } else {
    run(0, B);
  }
  return y;
}

// The bitnet statistics of float32 images (xnor_conv_codes' per-image form): each image's centre
// (mean) and mean |x| over its C * H * W elements, summed in the NCHW order of the reduce table's
// sum_abssum_runs whatever the layout (the stats lane-order contract below), `group` images at a
// call.
struct XnorImageStats {
  const float* src;
  std::int64_t C, HW;
  bool channels_last;
  std::int64_t cblock;  // channels_last: channels transposed at a time
  int group;            // images summed side by side (at most 8)
  XnorImageStats(const float* src_, std::int64_t C_, std::int64_t HW_, bool channels_last_)
      : src(src_), C(C_), HW(HW_), channels_last(channels_last_) {
    // channels_last: blocks of a multiple of 8 channels, ~8192 floats (32 KiB) at most, transposed
    // at a time: on small maps one call for many channels (a 2 x 2 image's 8-channel blocks were
    // 4 x 8 transposes and 32-element sums, a call each; docs/benchmarks.md, fiftieth session)
    cblock = std::max<std::int64_t>(8, 8192 / std::max<std::int64_t>(HW, 1) / 8 * 8);
    // G images side by side (the table's sum_runs, at most 8): each image's chains wait on the
    // add's latency, G images' keep G times as many adds in flight (8 x 96 x 32 x 32 stride 2 ran
    // 104-110 -> 98 us, 8 x 96 x 64 x 64 648-670 -> 545-578 with G = 2 although two of its images
    // overflow L2 before their codes pass; docs/benchmarks.md, fiftieth session); channels_last
    // while the G transposed blocks stay within 64 KiB (8 x 96 x 64 x 64's two 128 KiB blocks ran
    // 777-1043 -> 940-956 us)
    const auto& r = kernels::cpu::reduce_kernels();
    group = channels_last && 2 * std::min(cblock, C) * HW > 16384 ? 1 : std::clamp(r.sum_runs, 1, 8);
  }
  /// Images [b, b + g) (g <= group): centres into cp[b + j], mean |x| into ap[b + j].
  void operator()(std::int64_t b, int g, float* cp, float* ap) const {
    const auto& k = kernels::cpu::qgemm_kernels();
    const auto& r = kernels::cpu::reduce_kernels();
    struct TagStats;
    const kernels::BoundedScratch<float, TagStats> buf(static_cast<std::size_t>(channels_last ? g * cblock * HW : 1));
    kernels::cpu::SumAbsLanes lanes[8];
    kernels::cpu::SumAbsLanes* lp[8];
    const void* xp[8];
    for (int j = 0; j < g; ++j) lp[j] = &lanes[j];
    if (channels_last) {
      for (std::int64_t c0 = 0; c0 < C; c0 += cblock) {
        const std::int64_t cb = std::min<std::int64_t>(cblock, C - c0);
        for (int j = 0; j < g; ++j) {
          float* bj = buf.get() + j * cblock * HW;
          k.transpose_f32(src + (b + j) * HW * C + c0, HW, cb, C, bj, HW);  // [HW, cb] -> [cb, HW]
          xp[j] = bj;
        }
        r.sum_abssum_runs(xp, kernels::DType::kFloat32, cb * HW, lp, g);
      }
    } else {
      for (int j = 0; j < g; ++j) xp[j] = src + (b + j) * C * HW;
      r.sum_abssum_runs(xp, kernels::DType::kFloat32, C * HW, lp, g);
    }
    const double n = static_cast<double>(C * HW);
    for (int j = 0; j < g; ++j) {
      cp[b + j] = static_cast<float>(lanes[j].sum() / n);  // _mean_and_mean_abs's division
      ap[b + j] = static_cast<float>(lanes[j].abssum() / n);
    }
  }
};

// binary_codes(input, "bitnet", 0) for conv2d_w1a1 (a float32 [B, C, H, W] input, NCHW or with a
// channels_last input NHWC codes): the same codes and alphas bit for bit. The statistics are
// _mean_and_mean_abs's on the NCHW images (binarize's order: float64 sums, element j of a sample in
// lane j % 8, so a channels_last model binarizes as an NCHW one). With an image per thread, one
// parallel region does each image's statistics and then its codes while the image is in the
// thread's cache (the op's two passes were two regions, the codes pass splitting the batch by
// elements, not by image: it re-read each image from the shared cache; docs/benchmarks.md,
// forty-ninth session). A channels_last image is summed a block of channels at a time (8, or as
// many multiples of 8 as ~8192 floats hold), transposed by the kernel table's transpose_f32 into a
// small buffer ([cb, H * W]: a multiple of 8 elements, so the image's lanes run on as in one pass
// over its NCHW copy). (ATen's channels_last -> contiguous copy
// took 84 of the 155 us of binary_codes on 8 x 32 x 32 x 32; a full transposed copy then a second
// pass, 12 % of a loaded channels_last XNOR MobileNetV2: docs/benchmarks.md, twentieth and
// twenty-first sessions.) With fewer images than threads: NCHW, the op; channels_last, the whole
// NCHW copy in parallel, its statistics, then the codes pass on the input's own memory (a sample is
// one run of C * H * W elements in either format: the same per-sample centre, the same code per
// element).
// With center_out (conv2d_w1a1's depthwise form with fewer images than threads, which computes the
// codes in the conv; with more, the conv computes each image's statistics too): the statistics
// alone, the codes left undefined and each image's centre written to *center_out.
std::pair<at::Tensor, at::Tensor> xnor_conv_codes(const at::Tensor& input, bool channels_last,
                                                  at::Tensor* center_out = nullptr) {
  const at::Tensor x = input.contiguous(channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  const std::int64_t B = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  const bool per_image = B >= at::get_num_threads() && x.scalar_type() == at::kFloat;
  const bool with_codes = center_out == nullptr;
  if (!channels_last && !per_image) {
    if (!with_codes) {
      const ops::BinaryStats st = ops::binary_stats(x, ops::BinaryScaling::kBitNet, 0);
      *center_out = st.center.contiguous();
      return {at::Tensor(), ops::binary_codes_scale(x, st, 0).contiguous()};
    }
    const auto [codes, alpha] = qatkit::binary_codes(x, "bitnet", 0);
    return {codes.contiguous(), alpha.contiguous()};
  }
  const float* src = x.const_data_ptr<float>();
  const auto& k = kernels::cpu::qgemm_kernels();
  const auto& sign = kernels::cpu::sign_kernels();
  at::Tensor codes = with_codes ? at::empty(x.sizes(), x.options().dtype(at::kChar).memory_format(
                                                  channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous))
                                : at::Tensor();
  kernels::BinarizeArgs a;
  a.input = src;
  a.output = with_codes ? codes.data_ptr() : nullptr;
  a.numel = x.numel();
  a.inner = C * HW;
  a.channels = B;
  a.zero_negative = true;  // the bitnet rule's codes (as binary_codes' prepare_binarize)
  a.dtype = kernels::DType::kFloat32;
  at::Tensor center, alpha;
  if (per_image) {
    center = at::empty({B}, x.options());
    alpha = at::empty({B}, x.options());
    float* cp = center.data_ptr<float>();
    float* ap = alpha.data_ptr<float>();
    a.center = cp;
    const XnorImageStats stats(src, C, HW, channels_last);
    at::parallel_for(0, B, 1, [&](std::int64_t b0, std::int64_t b1) {
      for (std::int64_t b = b0; b < b1; b += stats.group) {
        const int g = static_cast<int>(std::min<std::int64_t>(stats.group, b1 - b));
        stats(b, g, cp, ap);
        // each image's codes, its centre now set
        if (with_codes)
          for (int j = 0; j < g; ++j) sign.binary_codes(a, (b + j) * C * HW, (b + j + 1) * C * HW);
      }
    });
    if (!with_codes) *center_out = center;
    return {codes, alpha};
  }
  at::Tensor xn = at::empty(x.sizes(), x.options());
  float* dst = xn.data_ptr<float>();
  const std::int64_t chunks = (HW + 63) / 64;  // 64 pixels of an image: [64, C] -> [C, 64]
  at::parallel_for(0, B * chunks, std::max<std::int64_t>(1, 2048 / std::max<std::int64_t>(C, 1)),
                   [&](std::int64_t t0, std::int64_t t1) {
                     for (std::int64_t t = t0; t < t1; ++t) {
                       const std::int64_t b = t / chunks, l0 = (t % chunks) * 64, l1 = std::min(HW, l0 + 64);
                       k.transpose_f32(src + (b * HW + l0) * C, l1 - l0, C, C, dst + b * C * HW + l0, HW);
                     }
                   });
  const ops::BinaryStats st = ops::binary_stats(xn, ops::BinaryScaling::kBitNet, 0);
  center = st.center.contiguous();
  alpha = ops::binary_codes_scale(xn, st, 0);
  if (!with_codes) {
    *center_out = center;
    return {codes, alpha};
  }
  a.center = center.const_data_ptr<float>();
  at::parallel_for(0, a.numel, std::int64_t{1} << 15,
                   [&](std::int64_t b0, std::int64_t b1) { sign.binary_codes(a, b0, b1); });
  return {codes, alpha};
}

// One image per task (or the output channels, and the patch rows, in parallel when there are fewer
// images than threads): the image's codes, its patch rows channels-last against the weight bits in
// the same (i, j, c) order (a padded position is code 0: no sign bit, a zero-mask bit; with C a
// multiple of 8 each pixel's bits are packed once and a row is kh * kw copies of C / 8 bytes), the
// popcount GEMM written into the output: a channels_last input's output is channels_last, each image
// the GEMM's [L, N] rows as they are; otherwise NCHW (each image's rows transposed).
at::Tensor conv2d_w1a1_impl(const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef kernel_size,
                            at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                            const at::Tensor& weight_scale, const std::optional<at::Tensor>& bias,
                            FusedClamp* clamp = nullptr) {
  const auto [ho, wo] = check_conv2d_int8_args(input, weight, 1, kernel_size, stride, padding, dilation);
  const std::int64_t B = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3);
  const std::int64_t kh = kernel_size[0], kw = kernel_size[1], K = C * kh * kw;
  const std::int64_t KB = check_w1a1_args("conv2d_w1a1", input, K, weight, weight_scale, bias);
  const at::Tensor w = weight.contiguous(), ws = weight_scale.contiguous();
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  const std::int64_t N = w.size(0), L = ho * wo;
  const bool cl = ops::conv_channels_last_io(input);
  at::Tensor y = at::empty({B, N, ho, wo},
                           input.options().memory_format(cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous));
  if (y.numel() == 0) return y;
  // the input's codes (NHWC for a channels_last input) and alphas: xnor_conv_codes' below, after the
  // pointwise per-image form (which computes its own)
  at::Tensor codes, alpha;
  const std::int8_t* cp = nullptr;
  const float* ap = nullptr;
  const std::int64_t sh = stride[0], sw = stride[1], dh = dilation[0], dw = dilation[1];
  const auto& k = kernels::cpu::qgemm_kernels();
  const bool per_image = B >= at::get_num_threads();
  // the fused clamp image by image where the images run in parallel (the per-image forms below)
  const bool clamp_images = clamp != nullptr && clamp->pending && per_image;
  // the patch rows (channels-last, as conv2d_int8's), and the weight bits in their order (held)
  const ConvPatches cpt(C, 1, H, W, kernel_size, stride, padding, dilation, wo);
  const bool reordered = kh * kw > 1 && C > 1;
  const at::Tensor wl = reordered ? cached_weight_form(weight, {3, 1, 0, 0, N, C, kh, kw},
                                                       [&] { return channels_last_weight(w, 1, false, N, C, kh, kw); })
                                  : w;
  // its 16-row blocks where the table's GEMM reads them (held too)
  const at::Tensor wt = xnor_weight_blocks(weight, wl, N, KB, reordered ? std::array<std::int64_t, 4>{3, C, kh, kw}
                                                                        : std::array<std::int64_t, 4>{});
  const std::int64_t Hp = cpt.Hp, Wp = cpt.Wp;
  // channels-last with each pixel's C sign / zero bits whole bytes: rows of byte copies
  const bool byte_runs = C % 8 == 0;
  const std::int64_t CB = C / 8;
  // A 1 x 1, stride-1, unpadded conv whose pixels' C bits fill the rows exactly (KB == C / 8: C a
  // multiple of 32): on the per-image path below, the image's channels-last codes are packed straight
  // into the rows, each row's zero count beside them, with no row copies (fill_row's per-row work was
  // ~20 % of 8 x 32 x 32 x 32 -> 16 after the packing went SIMD; docs/benchmarks.md, forty-eighth
  // session). The batched path above still prepares its images' bit buffers (image_buffers).
  const bool pixel_rows = byte_runs && kh == 1 && kw == 1 && sh == 1 && sw == 1 && cpt.ph == 0 && cpt.pw == 0 &&
                          KB * 8 == C && k.pack_sign_zero != nullptr;
  // The same convs from 8, 16 or 24 channels (rows of 4 bytes, the pixel's 1-3 then zeros): the
  // pixels' bits packed in one call, then each row widened from them (fill_row's byte copies, zero
  // padding and bookkeeping per row were ~20 % of 8 x 16 x 32 x 32 -> 96: docs/benchmarks.md,
  // forty-ninth session).
  const bool narrow_rows = byte_runs && kh == 1 && kw == 1 && sh == 1 && sw == 1 && cpt.ph == 0 && cpt.pw == 0 &&
                           KB == 4 && CB < 4 && k.pack_sign_zero != nullptr;
  // rows [m0, m1) of r from their pixels' packed bits (CB bytes each at sb / zb from row m0, zero
  // counts zc from row m0), each row the pixel's CB bytes then zeros; row m's scale scale_of(m)
  const auto widen_rows = [&](const std::uint8_t* sb, const std::uint8_t* zb, const std::int32_t* zc, XnorRows& r,
                              std::int64_t m0, std::int64_t m1, const auto& scale_of) {
    for (std::int64_t m = m0; m < m1; ++m) {
      const std::int64_t i = m - m0;
      std::uint8_t* ar = r.a.data() + m * 4;
      std::uint8_t* zr = r.z.data() + m * 4;
      for (std::int64_t e = 0; e < 4; ++e) {
        ar[e] = e < CB ? sb[i * CB + e] : std::uint8_t{0};
        zr[e] = e < CB ? zb[i * CB + e] : std::uint8_t{0};
      }
      const std::int32_t zm = zc[i];
      r.has_zero[static_cast<std::size_t>(m)] = zm > 0;
      r.a_k[static_cast<std::size_t>(m)] = static_cast<std::int32_t>(K) - zm;
      r.scale[static_cast<std::size_t>(m)] = scale_of(m);
    }
  };
  // rows [m0, m1) of r from their pixels' channels-last codes (row m's C codes at codes + (m - m0) * C),
  // row m's scale scale_of(m) (zeros: pixel_rows' zero counts, [rows of r])
  const auto pixel_rows_of = [&](XnorRows& r, std::int32_t* zeros, const std::int8_t* codes, std::int64_t m0,
                                 std::int64_t m1, const auto& scale_of) {
    if (narrow_rows) {  // the rows' pixels' bits, then each row widened from them
      const std::int64_t n = m1 - m0;
      std::vector<std::uint8_t> sb(static_cast<std::size_t>(n * CB)), zb(sb.size());
      std::vector<std::int32_t> zc(static_cast<std::size_t>(n));
      k.pack_sign_zero(codes, n * C, sb.data(), zb.data(), zc.data(), C);
      widen_rows(sb.data(), zb.data(), zc.data(), r, m0, m1, scale_of);
      return;
    }
    if (!pixel_rows) {
      for (std::int64_t m = m0; m < m1; ++m) r.set_row(m, KB, K, scale_of(m), codes + (m - m0) * C);
      return;
    }
    k.pack_sign_zero(codes, (m1 - m0) * C, r.a.data() + m0 * KB, r.z.data() + m0 * KB, zeros + m0, C);
    for (std::int64_t m = m0; m < m1; ++m) {
      const std::int32_t zm = zeros[m];
      r.has_zero[static_cast<std::size_t>(m)] = zm > 0;
      r.a_k[static_cast<std::size_t>(m)] = static_cast<std::int32_t>(K) - zm;
      r.scale[static_cast<std::size_t>(m)] = scale_of(m);
    }
  };
  const bool pointwise = kh == 1 && kw == 1 && sh == 1 && sw == 1 && cpt.ph == 0 && cpt.pw == 0;
  constexpr std::int64_t kPass = std::int64_t{1} << 16;
  if (cl && pointwise && per_image && B * L <= kPass && input.scalar_type() == at::kFloat) {
    // A channels_last pointwise conv with an image per thread: one parallel region in which each
    // thread takes its images one at a time (their statistics G at a time: XnorImageStats), each
    // image's codes into a buffer of the thread's, its rows and their popcount GEMM over every
    // column into its own output rows, while the image is in the thread's cache. (The pass below
    // ran the statistics and codes, the rows, and the GEMM as three regions over the batch, the
    // threads waiting at each: 25 % of 8 x 144 x 16 x 16 -> 24 in libgomp; docs/benchmarks.md,
    // fifty-first session.)
    const at::Tensor x = input.contiguous(at::MemoryFormat::ChannelsLast);
    const std::int64_t M = B * L;
    XnorRows r(M, KB);
    std::vector<std::int32_t> zeros(static_cast<std::size_t>(pixel_rows ? M : 0));
    const at::Tensor held = at::empty({2 * B}, x.options());  // the images' centres, then alphas
    float* cen = held.data_ptr<float>();
    float* alp = cen + B;
    const float* xp = x.const_data_ptr<float>();
    const XnorImageStats stats(xp, C, H * W, true);
    kernels::QGemmXnorArgs g = r.args(wl, ws, b, y.data_ptr<float>(), M, N, KB, wt);
    g.y_rs = N;
    g.y_cs = 1;
    const auto& sign = kernels::cpu::sign_kernels();
    at::parallel_for(0, B, 1, [&](std::int64_t b0, std::int64_t b1) {
      struct TagCodes;
      const kernels::BoundedScratch<std::int8_t, TagCodes> xq(static_cast<std::size_t>(L * C));
      for (std::int64_t bi = b0; bi < b1; ++bi) {
        if ((bi - b0) % stats.group == 0)
          stats(bi, static_cast<int>(std::min<std::int64_t>(stats.group, b1 - bi)), cen, alp);
        sign.binary_codes(image_codes_args(xp + bi * L * C, xq.get(), cen + bi, L * C), 0, L * C);
        const float s = alp[bi];
        pixel_rows_of(r, zeros.data(), xq.get(), bi * L, (bi + 1) * L, [s](std::int64_t) { return s; });
        k.gemm_xnor(rows_of(g, bi * L, (bi + 1) * L), 0, N);
        if (clamp_images) clamp->span(y.data_ptr<float>() + bi * L * N, L * N);  // the image's output, in cache
      }
    });
    if (clamp_images) clamp->pending = false;
    return y;
  }
  // The per-image form at the end (an image per thread, rows of many positions or of at most 16
  // bytes from NCHW) computes each image's statistics and codes on its thread too, into the
  // thread's buffer, just before the image's rows (xnor_conv_codes' region before it was a second
  // region over the batch; docs/benchmarks.md, fifty-first session).
  const bool batched_form = L < kConvBatchRows && (cl || !per_image || KB > 16);
  const bool own_codes = per_image && !(cl && pointwise) && !batched_form && input.scalar_type() == at::kFloat;
  const at::Tensor xf = own_codes ? input.contiguous(cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous)
                                  : at::Tensor();
  std::optional<XnorImageStats> own_stats;
  at::Tensor own_center;
  if (own_codes) {
    own_stats.emplace(xf.const_data_ptr<float>(), C, H * W, cl);
    own_center = at::empty({B}, xf.options());
    alpha = at::empty({B}, xf.options());
  } else {
    std::tie(codes, alpha) = xnor_conv_codes(input, cl);
    cp = codes.data_ptr<std::int8_t>();
  }
  ap = alpha.data_ptr<float>();
  // One thread's image buffers: the codes' layout, and with byte runs each padded pixel's sign bits
  // and zero-code bits (bit c % 8 of byte c / 8) and its zero count, 8 codes per 64-bit word.
  struct Image {
    std::vector<std::int8_t> xc, patch;
    std::vector<std::int32_t> ps, pz;
    std::vector<std::uint8_t> sb, zb;
  };
  const auto image_buffers = [&] {
    Image im;
    im.xc.resize(static_cast<std::size_t>(Hp * Wp * C));
    im.patch.resize(static_cast<std::size_t>(byte_runs ? 0 : K));
    im.ps.resize(static_cast<std::size_t>(byte_runs ? 0 : cpt.sums_size()));
    im.sb.resize(static_cast<std::size_t>(byte_runs ? Hp * Wp * CB : 0));
    im.zb.resize(im.sb.size());
    im.pz.resize(static_cast<std::size_t>(byte_runs ? Hp * Wp : 0));
    return im;
  };
  const auto prepare = [&](Image& im, const std::int8_t* xq) {  // xq: the image's codes
    if (!byte_runs) {
      cpt.layout(k, xq, cl, std::int8_t{0}, im.xc.data(), im.ps.data());
      return;
    }
    cpt.layout(k, xq, cl, std::int8_t{0}, im.xc.data(), nullptr);  // code 0 in the padding
    if (k.pack_sign_zero != nullptr) {
      // the whole padded image's bits in one call (its pixels' codes, and so their bytes of bits,
      // are consecutive), with each pixel's zero count from its CB zero bytes: the scalar loop
      // below was 20-35 % of a small pointwise conv (8 x 32 x 32 x 32 -> 16, docs/benchmarks.md,
      // forty-eighth session)
      k.pack_sign_zero(im.xc.data(), Hp * Wp * C, im.sb.data(), im.zb.data(), im.pz.data(), C);
      return;
    }
    for (std::int64_t p = 0; p < Hp * Wp; ++p) {
      std::int32_t zeros = 0;
      for (std::int64_t cb = 0; cb < CB; ++cb)
        zeros += pack_codes8(im.xc.data() + p * C + cb * 8, im.sb.data() + p * CB + cb, im.zb.data() + p * CB + cb);
      im.pz[static_cast<std::size_t>(p)] = zeros;
    }
  };
  // image bi's patch row l into row R of r (patch: a K-code buffer of the calling thread's)
  const auto fill_row = [&](const Image& im, std::int64_t bi, std::int64_t l, XnorRows& r, std::int64_t R,
                            std::int8_t* patch) {
    if (!byte_runs) {
      cpt.row(im.xc.data(), im.ps.data(), 0, l, patch, K);
      r.set_row(R, KB, K, ap[bi], patch);
      return;
    }
    const std::int64_t oh = l / wo, ow = l % wo;
    std::uint8_t* ar = r.a.data() + R * KB;
    std::uint8_t* zr = r.z.data() + R * KB;
    std::int32_t zeros = 0;
    for (std::int64_t i = 0; i < kh; ++i) {
      const std::int64_t p0 = (oh * sh + i * dh) * Wp + ow * sw;
      for (std::int64_t j = 0; j < kw; ++j) {  // tap (i, j): bits (i * kw + j) * C .. + C, whole bytes
        const std::int64_t p = p0 + j * dw;
        copy_run(ar, im.sb.data() + p * CB, CB);
        copy_run(zr, im.zb.data() + p * CB, CB);
        ar += CB;
        zr += CB;
        zeros += im.pz[static_cast<std::size_t>(p)];
      }
    }
    r.pad_row(R, KB, K / 8);
    r.has_zero[static_cast<std::size_t>(R)] = zeros > 0;
    r.a_k[static_cast<std::size_t>(R)] = static_cast<std::int32_t>(K) - zeros;
    r.scale[static_cast<std::size_t>(R)] = ap[bi];
  };
  // the popcount GEMM of Mc rows into g.y ([Mc, N] rows), in tiles of 64 output columns x row ranges
  const std::int64_t threads = at::get_num_threads(), nt = (N + 63) / 64;
  const auto gemm_row_tiles = [&](const kernels::QGemmXnorArgs& g, std::int64_t Mc) {
    const std::int64_t mtiles = std::min((Mc + 3) / 4, std::max<std::int64_t>(1, (2 * threads + nt - 1) / nt));
    const std::int64_t mt = (Mc + mtiles - 1) / mtiles;
    at::parallel_for(0, nt * mtiles, 1, [&](std::int64_t t0, std::int64_t t1) {
      for (std::int64_t t = t0; t < t1; ++t) {
        const std::int64_t r0 = (t % mtiles) * mt, c0 = (t / mtiles) * 64;
        if (r0 < Mc) k.gemm_xnor(rows_of(g, r0, std::min(Mc, r0 + mt)), c0, std::min(N, c0 + 64));
      }
    });
  };
  if (cl && pointwise) {
    // a 1 x 1, stride-1, unpadded conv on channels_last codes: its patch rows are the pixels' C codes
    // as they lie (linear_w1a1's rows, each with its image's alpha) and the GEMM's [B * L, N] rows
    // its output (no image layout, no per-pixel bit buffers, no row copies: the per-pixel work took
    // 28 % of 8 x 32 x 32 x 32 -> 16, docs/benchmarks.md, twentieth session)
    // in passes of up to 2^16 rows (the packed rows' buffer stays bounded whatever B * H * W is)
    // With C a multiple of 32 (the rows' bytes exactly the pixels' bits) each task packs its rows in
    // one pack_sign_zero call, each row's zero count beside them (as the NCHW pixel rows below; the
    // per-row calls were ~17 % of 8 x 32 x 32 x 32 -> 16: docs/benchmarks.md, forty-ninth session).
    const std::int64_t M = B * L;
    XnorRows r(std::min(M, kPass), KB);
    std::vector<std::int32_t> zeros(static_cast<std::size_t>(pixel_rows ? std::min(M, kPass) : 0));
    for (std::int64_t p0 = 0; p0 < M; p0 += kPass) {
      const std::int64_t Mp = std::min(kPass, M - p0);
      at::parallel_for(0, Mp, std::max<std::int64_t>(1, 16384 / std::max<std::int64_t>(K, 1)),
                       [&](std::int64_t m0, std::int64_t m1) {
                         pixel_rows_of(r, zeros.data(), cp + (p0 + m0) * C, m0, m1,
                                       [&](std::int64_t m) { return ap[(p0 + m) / L]; });
                       });
      kernels::QGemmXnorArgs g = r.args(wl, ws, b, y.data_ptr<float>() + p0 * N, Mp, N, KB, wt);
      g.y_rs = N;
      g.y_cs = 1;
      if (Mp < 512) {  // few rows: tiles of 64 columns (chunks of all columns re-read the weight per chunk)
        gemm_row_tiles(g, Mp);
        continue;
      }
      // many rows: chunks of 256 rows x every column (64-column tiles ran 0.83-0.85x on 8 x 24 x 16 x
      // 16 -> 144 and 8 x 16 x 32 x 32 -> 96; docs/benchmarks.md, twentieth session)
      constexpr std::int64_t rc = 256;
      at::parallel_for(0, (Mp + rc - 1) / rc, 1, [&](std::int64_t t0, std::int64_t t1) {
        k.gemm_xnor(rows_of(g, t0 * rc, std::min(Mp, t1 * rc)), 0, N);
      });
    }
    return y;
  }
  // An NCHW input with an image per thread and rows of at most 16 bytes (K <= 128: a 1x1 conv from
  // up to 128 channels) takes the per-image path below at any L: rows, the GEMM over every column
  // and the transpose of each image in one parallel region on the thread's own buffers. Through the
  // batched path (three regions, a shared [rows, N] buffer) these output-bound layers ran 1.1-2.5x
  // slower and did not scale past one thread (8 x 32 x 8 x 8 -> 192: 61 us on 1 thread and on 2);
  // with longer rows the per-image GEMM (16-64 rows) loses to the batched one (8 x 256 x 4 x 4 ->
  // 256, 3x3: 0.57x), docs/benchmarks.md, twenty-second session.
  if (batched_form) {
    // few positions per image: several images' rows in one popcount GEMM (as conv2d_int8's) into
    // [rows, N], each image's slice transposed into NCHW: images [bb0, bb1), each step across the
    // threads (inner: the GEMM in tiles of 64 output columns x row ranges), or all on the calling
    // thread (images_by_thread)
    const auto batched = [&](std::int64_t bb0, std::int64_t bb1, bool inner) {
      const std::int64_t chunk = std::min(bb1 - bb0, (2 * kConvBatchRows + L - 1) / L);
      XnorRows r(chunk * L, KB);
      // every row of a chunk's [Mc, N] is written by the GEMM before it is read: no zero fill
      std::unique_ptr<float[]> yt(cl ? nullptr : new float[static_cast<std::size_t>(chunk * L * N)]);
      for (std::int64_t b0 = bb0; b0 < bb1; b0 += chunk) {
        const std::int64_t nb = std::min(chunk, bb1 - b0), Mc = nb * L;
        maybe_parallel(inner, 0, nb, 1, [&](std::int64_t i0, std::int64_t i1) {
          Image im = image_buffers();
          std::vector<std::int8_t> patch(static_cast<std::size_t>(K));
          for (std::int64_t i = i0; i < i1; ++i) {
            prepare(im, cp + (b0 + i) * C * H * W);
            for (std::int64_t l = 0; l < L; ++l) fill_row(im, b0 + i, l, r, i * L + l, patch.data());
          }
        });
        kernels::QGemmXnorArgs g = r.args(wl, ws, b, cl ? y.data_ptr<float>() + b0 * L * N : yt.get(), Mc, N, KB, wt);
        g.y_rs = N;
        g.y_cs = 1;
        if (inner) {
          gemm_row_tiles(g, Mc);
        } else {
          k.gemm_xnor(g, 0, N);
        }
        if (cl) continue;  // the rows were the output's
        maybe_parallel(inner, 0, nb, 1, [&](std::int64_t i0, std::int64_t i1) {
          for (std::int64_t i = i0; i < i1; ++i)
            k.transpose_f32(yt.get() + i * L * N, L, N, N, y.data_ptr<float>() + (b0 + i) * N * L, L);
        });
      }
    };
    if (images_by_thread(per_image, wl)) {
      at::parallel_for(0, B, 1, [&](std::int64_t i0, std::int64_t i1) { batched(i0, i1, false); });
    } else {
      batched(0, B, true);
    }
    return y;
  }
  const auto run = [&](std::int64_t b0, std::int64_t b1) {
    Image im = image_buffers();
    XnorRows r(L, KB);
    std::vector<std::int32_t> zeros(static_cast<std::size_t>(pixel_rows ? L : 0));
    struct TagCodes;
    const kernels::BoundedScratch<std::int8_t, TagCodes> own(static_cast<std::size_t>(own_codes ? C * H * W : 1));
    for (std::int64_t bi = b0; bi < b1; ++bi) {
      const std::int8_t* xq = own_codes ? own.get() : cp + bi * C * H * W;  // the image's codes
      if (own_codes) {  // its statistics (G images at a time), then its codes (binary_codes' rule)
        float* cen = own_center.data_ptr<float>();
        if ((bi - b0) % own_stats->group == 0)
          (*own_stats)(bi, static_cast<int>(std::min<std::int64_t>(own_stats->group, b1 - bi)), cen,
                       alpha.data_ptr<float>());
        kernels::cpu::sign_kernels().binary_codes(
            image_codes_args(xf.const_data_ptr<float>() + bi * C * H * W, own.get(), cen + bi, C * H * W), 0, C * H * W);
      }
      if (pixel_rows) {
        cpt.layout(k, xq, cl, std::int8_t{0}, im.xc.data(), nullptr);  // [L, C] codes
        const auto pack_rows = [&](std::int64_t l0, std::int64_t l1) {  // rows [l0, l1): KB bytes each
          k.pack_sign_zero(im.xc.data() + l0 * C, (l1 - l0) * C, r.a.data() + l0 * KB, r.z.data() + l0 * KB,
                           zeros.data() + l0, C);
          for (std::int64_t l = l0; l < l1; ++l) {
            const std::int32_t zl = zeros[static_cast<std::size_t>(l)];
            r.has_zero[static_cast<std::size_t>(l)] = zl > 0;
            r.a_k[static_cast<std::size_t>(l)] = static_cast<std::int32_t>(K) - zl;
            r.scale[static_cast<std::size_t>(l)] = ap[bi];
          }
        };
        if (per_image) {
          pack_rows(0, L);
        } else {
          at::parallel_for(0, L, 256, pack_rows);
        }
      } else if (narrow_rows) {
        cpt.layout(k, xq, cl, std::int8_t{0}, im.xc.data(), nullptr);  // [L, C] codes
        const auto widen = [&](std::int64_t l0, std::int64_t l1) {  // rows [l0, l1) from their pixels' bits
          k.pack_sign_zero(im.xc.data() + l0 * C, (l1 - l0) * C, im.sb.data() + l0 * CB, im.zb.data() + l0 * CB,
                           im.pz.data() + l0, C);
          widen_rows(im.sb.data() + l0 * CB, im.zb.data() + l0 * CB, im.pz.data() + l0, r, l0, l1,
                     [&](std::int64_t) { return ap[bi]; });
        };
        if (per_image) {
          widen(0, L);
        } else {
          at::parallel_for(0, L, 256, widen);
        }
      } else {
        prepare(im, xq);
        const auto rows = [&](std::int64_t l0, std::int64_t l1) {
          std::vector<std::int8_t> patch(static_cast<std::size_t>(byte_runs ? 0 : K));  // the thread's patch
          for (std::int64_t l = l0; l < l1; ++l) fill_row(im, bi, l, r, l, patch.data());
        };
        if (per_image) {
          rows(0, L);
        } else {
          at::parallel_for(0, L, 64, rows);
        }
      }
      // Where the table writes column-major outputs itself (xnor_cols_rows: 16-row blocks transposed
      // in registers), the GEMM writes the NCHW planes directly (no buffer, no pass: 8 x 16 x 32 x 32
      // -> 96 ran 1.75x faster; docs/benchmarks.md, forty-fifth session); otherwise into the
      // thread's [L, N] rows, then transposed into the planes in 8 x 8 blocks (written L apart one
      // float at a time, planes 4 KiB apart at L = 1024 share an L1 set: that layer ran 0.24x fp32,
      // 2.5x slower than through the buffer; nineteenth session).
      float* yb = y.data_ptr<float>() + bi * N * L;
      const bool direct = cl || (k.xnor_cols_rows > 0 && L >= k.xnor_cols_rows);
      struct TagY;
      const kernels::BoundedScratch<float, TagY> yt_buf(static_cast<std::size_t>(direct ? 1 : L * N));
      float* yt = direct ? yb : yt_buf.get();
      kernels::QGemmXnorArgs g = r.args(wl, ws, b, yt, L, N, KB, wt);
      g.y_rs = cl || !direct ? N : 1;
      g.y_cs = cl || !direct ? 1 : L;
      gemm_columns(per_image, N, [&](std::int64_t n0, std::int64_t n1) { k.gemm_xnor(g, n0, n1); });
      if (!direct) {  // (direct: the GEMM wrote the image's output, channels_last rows or NCHW planes)
        const auto out = [&](std::int64_t l0, std::int64_t l1) {
          k.transpose_f32(yt + l0 * N, l1 - l0, N, N, yb + l0, L);
        };
        if (per_image) {
          out(0, L);
        } else {
          at::parallel_for(0, L, 64, out);
        }
      }
      if (clamp_images) clamp->span(yb, N * L);  // the image's output, in cache
    }
  };
  if (per_image) {
    at::parallel_for(0, B, 1, run);
  } else {
    run(0, B);
  }
  if (clamp_images) clamp->pending = false;
  return y;
}

// Runs a conv's kernel f(). Its per-image buffers are std::vectors sized from the geometry: a
// geometry that passes the checks but does not fit in memory (a corrupt file's padding against a
// large stride) is an out-of-memory error (torch.OutOfMemoryError naming the op and the geometry),
// not a std::bad_alloc through the dispatcher.
template <class F>
at::Tensor oom_as_error(const char* op, const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                        at::IntArrayRef padding, const F& f) {
  try {
    return f();
  } catch (const std::bad_alloc&) {
    TORCH_CHECK_WITH(OutOfMemoryError, false,
                     fmt::format("{}: out of memory for the buffers of a {} input, kernel {}, padding {}, stride {}", op,
                                 shape_str(input.sizes()), shape_str(kernel_size), shape_str(padding), shape_str(stride)));
  }
}

at::Tensor conv2d_int8_cpu(const at::Tensor& input, const at::Tensor& weight, std::int64_t weight_bits,
                           at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                           at::IntArrayRef dilation, const at::Tensor& corr, const at::Tensor& out_scale,
                           double act_scale, std::int64_t act_zero_point, std::int64_t act_quant_min,
                           std::int64_t act_quant_max, const std::optional<at::Tensor>& bias, std::int64_t groups,
                           std::optional<double> clamp_min, std::optional<double> clamp_max) {
  return oom_as_error("conv2d_int8", input, kernel_size, stride, padding, [&] {
    NanReport nan;
    FusedClamp fr(check_output_clamp("conv2d_int8", clamp_min, clamp_max));
    at::Tensor y = conv2d_int8_impl(input, weight, weight_bits, kernel_size, stride, padding, dilation, corr,
                                    out_scale, act_scale, act_zero_point, act_quant_min, act_quant_max, bias, groups,
                                    {}, &nan, &fr);
    nan_windows(nan, input, y, kernel_size, stride, padding, dilation, groups);  // (clamp(NaN) is NaN: either order)
    if (fr.pending) fr.apply(y);
    return y;
  });
}

at::Tensor conv2d_w4a8_cpu(const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef kernel_size,
                           at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                           const at::Tensor& group_scale, std::int64_t group_size, double act_scale,
                           std::int64_t act_zero_point, std::int64_t act_quant_min, std::int64_t act_quant_max,
                           const std::optional<at::Tensor>& bias, std::int64_t groups, std::optional<double> clamp_min,
                           std::optional<double> clamp_max) {
  return oom_as_error("conv2d_w4a8", input, kernel_size, stride, padding, [&] {
    NanReport nan;
    FusedClamp fr(check_output_clamp("conv2d_w4a8", clamp_min, clamp_max));
    at::Tensor y = conv2d_w4a8_impl(input, weight, kernel_size, stride, padding, dilation, group_scale, group_size,
                                    act_scale, act_zero_point, act_quant_min, act_quant_max, bias, groups, &nan, &fr);
    nan_windows(nan, input, y, kernel_size, stride, padding, dilation, groups);
    if (fr.pending) fr.apply(y);
    return y;
  });
}

// [N] int32 zeros and float32 ones: a requantization with no correction and a unit scale (empty
// tensors filled by loops: at::zeros / at::ones dispatch a fill each). Held per thread and length
// (up to 64 lengths): the callers only read them, and a small XNOR conv allocated them on every call.
std::pair<at::Tensor, at::Tensor> unit_requantization(std::int64_t N, const at::TensorOptions& options) {
  thread_local std::unordered_map<std::int64_t, std::pair<at::Tensor, at::Tensor>> held;
  const auto it = held.find(N);
  if (it != held.end()) return it->second;
  at::Tensor corr = at::empty({N}, options.dtype(at::kInt)), ones = at::empty({N}, options.dtype(at::kFloat));
  std::fill_n(corr.data_ptr<std::int32_t>(), N, 0);
  std::fill_n(ones.data_ptr<float>(), N, 1.f);
  if (held.size() < 64) held.emplace(N, std::make_pair(corr, ones));
  return {corr, ones};
}

// conv2d_w1a1 with groups > 1: the per-sample codes and alphas of the groups == 1 form
// (binary_codes(input, "bitnet", 0)) and per-image output scales fp32(alpha[b] * ws[n]). Depthwise
// convs (one input channel per group) run conv2d_int8's direct kernels on the codes as given (exact
// int32 sums; zero padding holds code 0), whose fp32(acc + 0) * scale, then + bias, is the row
// form's requantization (two roundings). Other grouped convs: conv2d_int8's grouped GEMMs on the
// codes as float inputs of scale 1 (each quantizes to itself), then the same multiply and add as
// ATen ops. Before this form the Python and C++ layers ran that composite for depthwise convs too:
// 0.25-0.9x FP32 per MobileNetV2 layer (docs/benchmarks.md, twentieth session).
at::Tensor conv2d_w1a1_grouped(const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef kernel_size,
                               at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                               const at::Tensor& weight_scale, const std::optional<at::Tensor>& bias,
                               std::int64_t groups, FusedClamp* clamp) {
  const auto [ho, wo] = check_conv2d_int8_args(input, weight, 1, kernel_size, stride, padding, dilation, groups);
  const std::int64_t B = input.size(0), C = input.size(1), Cg = C / groups;
  check_w1a1_args("conv2d_w1a1", input, Cg * kernel_size[0] * kernel_size[1], weight, weight_scale, bias);
  const std::int64_t N = weight.size(0);
  const auto format = ops::conv_channels_last_io(input) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  if (B * N * ho * wo == 0) return at::empty({B, N, ho, wo}, input.options().memory_format(format));
  const bool cl = format == at::MemoryFormat::ChannelsLast;
  if (Cg == 1 && B >= at::get_num_threads() && input.scalar_type() == at::kFloat) {
    // images in parallel: each image's statistics and scales computed by the conv's thread just
    // before the image's codes (GivenCodes::prepare), not in a parallel pass of their own
    const at::Tensor x = input.contiguous(format), wsc = weight_scale.contiguous();
    // the images' centres, alphas and [B, N] scales in one buffer
    const at::Tensor held = at::empty({2 * B + B * N}, x.options());
    const XnorImageStats stats(x.const_data_ptr<float>(), C, x.size(2) * x.size(3), cl);
    float* cp = held.data_ptr<float>();
    float* ap = cp + B;
    float* sp = ap + B;
    const float* w = wsc.const_data_ptr<float>();
    const std::function<void(std::int64_t, int)> prepare = [&](std::int64_t b, int g) {
      stats(b, g, cp, ap);
      for (std::int64_t j = b; j < b + g; ++j)  // fp32(alpha[b] * ws[n]): at::mul's single rounding
        for (std::int64_t n = 0; n < N; ++n) sp[j * N + n] = ap[j] * w[n];
    };
    const auto [corr, ones] = unit_requantization(N, input.options());
    GivenCodes given;
    given.image_scale = sp;
    given.center = cp;
    given.prepare = &prepare;
    given.prepare_group = stats.group;
    return conv2d_int8_impl(x, weight, 1, kernel_size, stride, padding, dilation, corr, ones, 1.0, 0, -128, 127, bias,
                            groups, given, nullptr, clamp);
  }
  if (Cg == 1) {  // the statistics here, the codes in the conv (GivenCodes::center)
    at::Tensor center;
    const at::Tensor alpha = xnor_conv_codes(input, cl, &center).second;
    // fp32(alpha[b] * ws[n]) by a loop (at::mul's single rounding, without its dispatch; with the
    // filled empties below, 0.3-0.5 us less a call on 8 x 960 x 2 x 2: docs/benchmarks.md, fiftieth
    // session)
    at::Tensor scales = at::empty({B, N}, input.options());
    {
      const at::Tensor wsc = weight_scale.contiguous(), al = alpha.to(at::kFloat).contiguous();
      const float* a = al.const_data_ptr<float>();
      const float* w = wsc.const_data_ptr<float>();
      float* o = scales.data_ptr<float>();
      for (std::int64_t b = 0; b < B; ++b)
        for (std::int64_t n = 0; n < N; ++n) o[b * N + n] = a[b] * w[n];
    }
    // the requantization's correction (0) and scale (1, replaced by the images' scales)
    const auto [corr, ones] = unit_requantization(N, input.options());
    GivenCodes given;
    given.image_scale = scales.data_ptr<float>();
    given.center = center.const_data_ptr<float>();
    return conv2d_int8_impl(input, weight, 1, kernel_size, stride, padding, dilation, corr, ones, 1.0, 0, -128, 127,
                            bias, groups, given, nullptr, clamp);
  }
  const auto [codes, alpha] = xnor_conv_codes(input, cl);  // NHWC codes for a channels_last input
  const at::Tensor scales = at::mul(alpha.reshape({B, 1}), weight_scale.reshape({1, N})).contiguous();
  const auto [corr, ones] = unit_requantization(N, input.options());
  at::Tensor y = conv2d_int8_impl(codes.to(at::kFloat).contiguous(format), weight, 1, kernel_size, stride, padding,
                                  dilation, corr, ones, 1.0, 0, -128, 127, std::nullopt, groups);
  y.mul_(scales.reshape({B, N, 1, 1}));
  if (bias.has_value()) y.add_(bias->reshape({1, N, 1, 1}));
  return y;
}

at::Tensor conv2d_w1a1_cpu(const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef kernel_size,
                           at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                           const at::Tensor& weight_scale, const std::optional<at::Tensor>& bias, std::int64_t groups,
                           std::optional<double> clamp_min, std::optional<double> clamp_max) {
  return oom_as_error("conv2d_w1a1", input, kernel_size, stride, padding, [&] {
    // a 1-channel input is a depthwise conv with N outputs per channel: the direct kernels on its
    // codes (the planar form's 4 outputs per pass), the same bits as the popcount GEMM on its
    // K = kh * kw bits (364 x 1 x 8 x 8 -> 32: 323 -> 118-130 us; docs/benchmarks.md, forty-sixth session)
    FusedClamp fr(check_output_clamp("conv2d_w1a1", clamp_min, clamp_max));
    at::Tensor y =
        groups != 1 || (input.dim() == 4 && input.size(1) == 1)
            ? conv2d_w1a1_grouped(input, weight, kernel_size, stride, padding, dilation, weight_scale, bias, groups, &fr)
            : conv2d_w1a1_impl(input, weight, kernel_size, stride, padding, dilation, weight_scale, bias, &fr);
    if (fr.pending) fr.apply(y);
    return y;
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(qatkit, CPU, m) {
  m.impl("conv2d_w1a1", &conv2d_w1a1_cpu);
  m.impl("conv2d_int8", &conv2d_int8_cpu);
  m.impl("conv2d_w4a8", &conv2d_w4a8_cpu);
}

}  // namespace qatkit::ops
