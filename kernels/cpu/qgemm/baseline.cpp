// Portable integer GEMM: the reference every other ISA's table equals bit for bit (the integer
// kernels; the weight-only float kernel, gemm_w4f, sums in its own order within the bound of
// docs/integer.md).
#include <vector>

#include "loops.h"
#include "qgemm_cpu.h"

namespace qatkit::kernels::cpu {
namespace {

void gemm_s8(const QGemmArgs& g, std::int64_t n_begin, std::int64_t n_end) {
  // the panel layout: each row's signed codes gathered first (the row layout's sums, so its bits)
  std::vector<std::int8_t> row(static_cast<std::size_t>(g.panel ? g.K : 0));
  const std::int64_t a_rs = g.panel ? (g.K + 3) / 4 * 4 : g.K;
  for (std::int64_t n = n_begin; n < n_end; ++n) {
    const std::int8_t* w = g.w + n * g.K;
    if (g.panel) {
      detail::s8_panel_row(g, n, row.data());
      w = row.data();
    }
    for (std::int64_t m = 0; m < g.M; ++m) {
      const std::uint32_t acc = detail::dot_s8(g.a + m * a_rs, w, 0, g.K, static_cast<std::uint32_t>(g.corr[n]));
      g.y[m * g.y_rs + n * g.y_cs] = detail::requantize(acc, g, n);
    }
  }
}

void gemm_t2(const QGemmPackedArgs& g, std::int64_t n_begin, std::int64_t n_end) {
  for (std::int64_t m = 0; m < g.M; ++m) {
    for (std::int64_t n = n_begin; n < n_end; ++n) {
      const std::uint32_t s = detail::dot_t2(g.a + m * g.K_pad, g.w + n * (g.K_pad / 4), g.K_pad);
      g.y[m * g.y_rs + n * g.y_cs] = detail::finish_t2(s, g, m, n);
    }
  }
}

void gemm_b1(const QGemmPackedArgs& g, std::int64_t n_begin, std::int64_t n_end) {
  for (std::int64_t m = 0; m < g.M; ++m) {
    for (std::int64_t n = n_begin; n < n_end; ++n) {
      const std::uint32_t s = g.panel ? detail::dot_b1(g.a + m * g.K_pad, detail::b1_panel_row(g, n), g.K_pad, 32)
                                      : detail::dot_b1(g.a + m * g.K_pad, g.w + n * (g.K_pad / 8), g.K_pad);
      g.y[m * g.y_rs + n * g.y_cs] = detail::finish_b1(s, g, m, n);
    }
  }
}

void gemm_w4(const QGemmW4Args& g, std::int64_t n_begin, std::int64_t n_end) {
  const std::int64_t G = g.K / g.group;
  std::vector<std::int32_t> zt(static_cast<std::size_t>(G));
  std::vector<std::uint8_t> row(static_cast<std::size_t>(g.K / 2));
  for (std::int64_t n = n_begin; n < n_end; ++n) {
    const std::uint8_t* w = detail::w4_row(g, n, row.data());
    detail::w4_zero_terms_row(g, w, zt.data());
    for (std::int64_t m = 0; m < g.M; ++m) {
      const std::int8_t* a = g.a + m * g.K;
      g.y[m * g.N + n] = detail::finish_w4(
          g, m, n,
          [&](std::int64_t gi) {
            std::int32_t s = 0;
            for (std::int64_t k = gi * g.group; k < (gi + 1) * g.group; k += 32) s += detail::dot_w4_chunk(a + k, w + k / 2);
            return s;
          },
          [&](std::int64_t gi) { return zt[static_cast<std::size_t>(gi)]; });
    }
  }
}

void gemm_xnor(const QGemmXnorArgs& g, std::int64_t n_begin, std::int64_t n_end) {
  for (std::int64_t m = 0; m < g.M; ++m) {
    for (std::int64_t n = n_begin; n < n_end; ++n) {
      const std::int64_t c = detail::xor_count(g.a + m * g.KB, g.w + n * g.KB, 0, g.KB);
      g.y[m * g.y_rs + n * g.y_cs] = detail::finish_xnor(c, g, m, n);
    }
  }
}

void gemm_w4f(const QGemmW4FArgs& g, std::int64_t n_begin, std::int64_t n_end) {
  std::vector<float> w(static_cast<std::size_t>(g.K));
  for (std::int64_t n = n_begin; n < n_end; ++n) {
    for (std::int64_t k = 0; k < g.K; ++k) w[static_cast<std::size_t>(k)] = detail::w4_weight(g, n, k);
    for (std::int64_t m = 0; m < g.M; ++m) {
      const float* x = g.x + m * g.K;
      float acc = 0.f;
      for (std::int64_t k = 0; k < g.K; ++k) acc += x[k] * w[static_cast<std::size_t>(k)];
      g.y[m * g.N + n] = g.bias ? acc + g.bias[n] : acc;
    }
  }
}

}  // namespace

const QGemmKernels& qgemm_baseline() {
  static const QGemmKernels k{&detail::quantize_rows, &gemm_s8, &gemm_t2, &gemm_b1, &gemm_w4, &gemm_xnor, &gemm_w4f,
                              &detail::dwconv_channels, &detail::dwconv_nhwc, &detail::transpose_f32_tiled,
                              &detail::transpose_s8_s16_tiled, &detail::transpose_s8_tiled, &detail::dequant_w4f_rows, 256,
                              &detail::gemm_w8f_loop, &detail::dequant_w8f_rows};
  return k;
}

}  // namespace qatkit::kernels::cpu
