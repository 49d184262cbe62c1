// Catch2 tests of the torch-free kernel tier: rounding, saturation, special values, edge bit
// widths, storage conversions, and baseline == AVX2 bit for bit on every dtype and layout.
#include "catch.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "common/fake_quant_scalar.h"
#include "cpu/fake_quant/fake_quant_cpu.h"
#include "cpu/qgemm/qgemm_cpu.h"
#include "cpu/quantize/quantize_cpu.h"
#include "cpu/reduce/reduce_cpu.h"
#include "cpu/sign/sign_cpu.h"

using qatkit::kernels::DType;
using qatkit::kernels::FakeQuantArgs;
using qatkit::kernels::FakeQuantBackwardArgs;
using qatkit::kernels::mask_bytes;
namespace cpu = qatkit::kernels::cpu;

namespace {

struct Result {
  std::vector<float> y;
  std::vector<std::uint8_t> mask;
};

// Runs a float32 launch through `k` in chunks of `chunk` elements (a multiple of 8).
Result run_f32(const cpu::FakeQuantKernels& k, const std::vector<float>& x, std::vector<float> scale,
               std::vector<float> zp, std::int64_t inner, float qmin, float qmax, std::int64_t chunk = 64) {
  Result r;
  r.y.assign(x.size(), -7.f);
  r.mask.assign(mask_bytes(static_cast<std::int64_t>(x.size())), 0xAB);
  FakeQuantArgs a;
  a.input = x.data();
  a.output = r.y.data();
  a.mask = r.mask.data();
  a.scale = scale.data();
  a.zero_point = zp.data();
  a.numel = static_cast<std::int64_t>(x.size());
  a.inner = inner;
  a.channels = static_cast<std::int64_t>(scale.size());
  a.quant_min = qmin;
  a.quant_max = qmax;
  for (std::int64_t b = 0; b < a.numel; b += chunk) k.forward(a, b, std::min(a.numel, b + chunk));
  return r;
}

bool bit(const std::vector<std::uint8_t>& m, std::size_t i) { return (m[i / 8] >> (i % 8)) & 1u; }

/// A family's tables for every ISA this machine runs (baseline first), named; each ISA it cannot
/// run is reported, so a log says what was not compared.
template <class T, class F>
std::vector<std::pair<const char*, const T*>> isa_tables(const char* family, F table) {
  std::vector<std::pair<const char*, const T*>> v;
  for (int i = 0; i < cpu::kIsaCount; ++i) {
    const auto isa = static_cast<cpu::Isa>(i);
    if (const T* t = table(isa)) {
      v.emplace_back(cpu::isa_name(isa), t);
    } else {
      CATCH_WARN(family << ": ISA " << cpu::isa_name(isa) << " not run (this CPU or build lacks it)");
    }
  }
  return v;
}
auto fake_quant_isas() {
  return isa_tables<cpu::FakeQuantKernels>("fake_quant", [](cpu::Isa i) { return cpu::fake_quant_kernels(i); });
}
auto reduce_isas() {
  return isa_tables<cpu::ReduceKernels>("reduce", [](cpu::Isa i) { return cpu::reduce_kernels(i); });
}
auto sign_isas() {
  return isa_tables<cpu::SignKernels>("sign", [](cpu::Isa i) { return cpu::sign_kernels(i); });
}
auto quantize_isas() {
  return isa_tables<cpu::QuantizeKernels>("quantize", [](cpu::Isa i) { return cpu::quantize_kernels(i); });
}

}  // namespace

// table_for calls a family's AVX2 / AVX-512 getter only for an ISA the CPU runs: a getter's body is
// compiled for its ISA (GCC copies the AVX-512 qgemm table with zmm moves), and calling every getter
// up front raised SIGILL on an AVX2-only AMD EPYC (Zen 3).
namespace getter_probe {
struct Table {
  int id;
};
const Table kBase{0};
int avx2_calls = 0;
int avx512_calls = 0;
const Table* avx2() {
  ++avx2_calls;
  static const Table t{2};
  return &t;
}
const Table* avx512() {
  ++avx512_calls;
  static const Table t{5};
  return &t;
}
const Table* avx512_absent() {
  ++avx512_calls;
  return nullptr;
}
int amx_calls = 0;
const Table* amx() {
  ++amx_calls;
  static const Table t{7};
  return &t;
}
const Table* amx_absent() {
  ++amx_calls;
  return nullptr;
}
}  // namespace getter_probe

CATCH_TEST_CASE("table_for calls only the getters of ISAs the CPU runs", "[isa]") {
  namespace g = getter_probe;
  auto id = [](const g::Table* t) { return t ? t->id : -1; };
  g::avx2_calls = g::avx512_calls = 0;
  CATCH_CHECK(id(cpu::table_for(cpu::Isa::kBaseline, g::kBase, &g::avx2, &g::avx512)) == 0);
  CATCH_CHECK(g::avx2_calls + g::avx512_calls == 0);

  const bool has2 = cpu::isa_supported(cpu::Isa::kAvx2);
  CATCH_CHECK(id(cpu::table_for(cpu::Isa::kAvx2, g::kBase, &g::avx2, &g::avx512)) == (has2 ? 2 : -1));
  CATCH_CHECK(g::avx2_calls == (has2 ? 1 : 0));
  CATCH_CHECK(g::avx512_calls == 0);

  g::avx2_calls = g::avx512_calls = 0;
  const bool has512 = cpu::isa_supported(cpu::Isa::kAvx512);
  CATCH_CHECK(id(cpu::table_for(cpu::Isa::kAvx512, g::kBase, &g::avx2, &g::avx512)) == (has512 ? 5 : -1));
  CATCH_CHECK(g::avx512_calls == (has512 ? 1 : 0));
  CATCH_CHECK(g::avx2_calls == 0);
  // A family without an AVX-512 table (getter absent or returning nullptr) runs its AVX2 table.
  CATCH_CHECK(id(cpu::table_for<g::Table>(cpu::Isa::kAvx512, g::kBase, &g::avx2, nullptr)) == (has512 ? 2 : -1));
  CATCH_CHECK(id(cpu::table_for(cpu::Isa::kAvx512, g::kBase, &g::avx2, &g::avx512_absent)) == (has512 ? 2 : -1));
  if (!has512) CATCH_WARN("ISA avx512 not run: this CPU lacks it (its getter was checked not to be called)");

  // kAmx: the family's AMX table where it has one, else its AVX-512 table (every family but qgemm).
  g::avx2_calls = g::avx512_calls = g::amx_calls = 0;
  const bool has_amx = cpu::isa_supported(cpu::Isa::kAmx);
  CATCH_CHECK((!has_amx || has512));
  CATCH_CHECK(id(cpu::table_for(cpu::Isa::kAmx, g::kBase, &g::avx2, &g::avx512, &g::amx)) == (has_amx ? 7 : -1));
  CATCH_CHECK(g::amx_calls == (has_amx ? 1 : 0));
  CATCH_CHECK(g::avx512_calls + g::avx2_calls == 0);
  CATCH_CHECK(id(cpu::table_for(cpu::Isa::kAmx, g::kBase, &g::avx2, &g::avx512)) == (has_amx ? 5 : -1));
  CATCH_CHECK(id(cpu::table_for(cpu::Isa::kAmx, g::kBase, &g::avx2, &g::avx512, &g::amx_absent)) == (has_amx ? 5 : -1));
  CATCH_CHECK(id(cpu::table_for<g::Table>(cpu::Isa::kAmx, g::kBase, &g::avx2, nullptr)) == (has_amx ? 2 : -1));
  if (!has_amx) CATCH_WARN("ISA amx not run: this CPU (or its OS) lacks AMX tiles (its getter was checked not to be called)");

  // The integer GEMM family's amx table: W8A8 on int8 tiles; the weight-only 4-bit kernel on bf16
  // tiles only where the CPU has AMX-BF16 too (no other table has one).
  CATCH_CHECK((!cpu::cpu_has_amx_bf16() || has_amx));
  for (int i = 0; i < cpu::kIsaCount; ++i) {
    const auto isa = static_cast<cpu::Isa>(i);
    const cpu::QGemmKernels* t = cpu::qgemm_kernels(isa);
    if (t == nullptr) continue;
    CATCH_INFO(cpu::isa_name(isa));
    // (qgemm_amx() is null in a build without AMX intrinsics; called only once the table is supported)
    const bool tiles = isa == cpu::Isa::kAmx && cpu::cpu_has_amx_bf16() && cpu::qgemm_amx() != nullptr;
    CATCH_CHECK((t->gemm_w4f_amx != nullptr) == tiles);
  }
}

CATCH_TEST_CASE("round half to even on ties, both ISAs", "[kernels]") {
  for (auto [isa, k] : fake_quant_isas()) {
    CATCH_INFO(isa);
    // 16 elements so the vector body runs; scale 1, zero point 0, int8 range.
    std::vector<float> x{0.5f,        1.5f,         2.5f,   -0.5f,   -1.5f, -2.5f, 3.5f,  126.5f,
                         0.49999997f, -0.49999997f, 127.5f, -128.5f, 4.5f,  5.5f,  -3.5f, 0.f};
    const Result r = run_f32(*k, x, {1.f}, {0.f}, static_cast<std::int64_t>(x.size()), -128.f, 127.f);
    const std::vector<float> want{0, 2, 2, 0, -2, -2, 4, 126, 0, 0, 127, -128, 4, 6, -4, 0};
    for (std::size_t i = 0; i < x.size(); ++i) CATCH_CHECK(r.y[i] == want[i]);
    // 127.5 rounds to 128 (outside), -128.5 to -128 (inside): the mask is on the unclamped value.
    CATCH_CHECK_FALSE(bit(r.mask, 10));
    CATCH_CHECK(bit(r.mask, 11));
    CATCH_CHECK(bit(r.mask, 7));
  }
}

CATCH_TEST_CASE("saturation, NaN and infinities", "[kernels]") {
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (auto [isa, k] : fake_quant_isas()) {
    CATCH_INFO(isa);
    std::vector<float> x{1e9f, -1e9f, inf, -inf, nan, 0.25f, 3.f, -3.f, 1e9f, -inf, nan, 2.f};
    // scale 0.5, zero point 10, uint8 range: representable [-5, 122.5]
    const Result r = run_f32(*k, x, {0.5f}, {10.f}, static_cast<std::int64_t>(x.size()), 0.f, 255.f);
    CATCH_CHECK(r.y[0] == 122.5f);
    CATCH_CHECK(r.y[1] == -5.f);
    CATCH_CHECK(r.y[2] == 122.5f);
    CATCH_CHECK(r.y[3] == -5.f);
    CATCH_CHECK(std::isnan(r.y[4]));
    CATCH_CHECK(std::isnan(r.y[10]));
    CATCH_CHECK(r.y[5] == 0.f);  // 0.25 / 0.5 = 0.5 -> ties to 0
    for (std::size_t i : {0, 1, 2, 3, 4, 8, 9, 10}) CATCH_CHECK_FALSE(bit(r.mask, i));
    for (std::size_t i : {5, 6, 7, 11}) CATCH_CHECK(bit(r.mask, i));
    // bits past numel in the last byte are zero
    CATCH_CHECK((r.mask[1] >> 4) == 0);
  }
}

CATCH_TEST_CASE("edge bit widths: 1-step range and 16-bit range", "[kernels]") {
  for (auto [isa, k] : fake_quant_isas()) {
    CATCH_INFO(isa);
    std::vector<float> x(24);
    for (int i = 0; i < 24; ++i) x[i] = -3.f + 0.25f * static_cast<float>(i);
    const Result one = run_f32(*k, x, {1.f}, {0.f}, 24, 0.f, 1.f);
    for (int i = 0; i < 24; ++i) {
      const float q = std::nearbyint(x[i]);
      CATCH_CHECK(one.y[i] == std::fmin(std::fmax(q, 0.f), 1.f));
      CATCH_CHECK(bit(one.mask, i) == (q >= 0.f && q <= 1.f));
    }
    const Result wide = run_f32(*k, x, {1.f / 4096.f}, {32768.f}, 24, 0.f, 65535.f);
    for (int i = 0; i < 24; ++i) CATCH_CHECK(wide.y[i] == std::fmin(std::fmax(x[i], -8.f), 65535.f / 4096.f - 8.f));
  }
}

CATCH_TEST_CASE("bfloat16 and float16 conversions round half to even", "[kernels]") {
  using namespace qatkit::kernels;
  CATCH_CHECK(float_to_bf16(1.0f) == 0x3F80);
  // 1 + 2^-8 is exactly between two bf16 values: ties to even (1.0)
  CATCH_CHECK(float_to_bf16(1.00390625f) == 0x3F80);
  CATCH_CHECK(float_to_bf16(1.01171875f) == 0x3F82);  // 1 + 3*2^-8: ties up to even
  CATCH_CHECK(float_to_bf16(std::numeric_limits<float>::quiet_NaN()) == 0x7FC0);
  CATCH_CHECK(bf16_to_float(0x4049) == 3.140625f);
  CATCH_CHECK(float_to_fp16(1.0f) == 0x3C00);
  CATCH_CHECK(float_to_fp16(65504.f) == 0x7BFF);
  CATCH_CHECK(float_to_fp16(65520.f) == 0x7C00);                      // rounds to Inf
  CATCH_CHECK(float_to_fp16(std::ldexp(1.f, -24)) == 0x0001);         // smallest subnormal
  CATCH_CHECK(float_to_fp16(std::ldexp(1.f, -25)) == 0x0000);         // tie to even (0)
  CATCH_CHECK(float_to_fp16(1.0f + std::ldexp(1.f, -11)) == 0x3C00);  // tie to even
  // every fp16 bit pattern survives a round trip (NaNs stay NaN)
  for (std::uint32_t h = 0; h < 0x10000; ++h) {
    const float f = fp16_to_float(static_cast<std::uint16_t>(h));
    if (std::isnan(f)) {
      CATCH_CHECK(std::isnan(fp16_to_float(float_to_fp16(f))));
    } else if (float_to_fp16(f) != h) {
      CATCH_FAIL("fp16 round trip failed for " << h);
    }
  }
}

namespace {

template <typename T>
std::vector<T> random_storage(std::size_t n, std::uint32_t seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(0.f, 3.f);
  std::vector<T> v(n);
  for (auto& e : v) {
    const float f = dist(gen);
    if constexpr (std::is_same_v<T, std::uint16_t>) {
      e = qatkit::kernels::float_to_bf16(f);
    } else {
      e = static_cast<T>(f);
    }
  }
  return v;
}

// Runs `k` over one layout in storage type T (float/double, or uint16 patterns for half types).
template <typename T>
std::pair<std::vector<std::uint8_t>, std::vector<std::uint8_t>> run_any(const cpu::FakeQuantKernels& k, DType dt,
                                                                        const std::vector<T>& x, std::int64_t inner,
                                                                        std::int64_t channels) {
  std::vector<float> scale(channels), zp(channels);
  for (std::int64_t c = 0; c < channels; ++c) {
    scale[c] = 0.05f + 0.01f * static_cast<float>(c % 7);
    zp[c] = static_cast<float>(c % 5) - 2.f;
  }
  std::vector<T> y(x.size());
  std::vector<std::uint8_t> mask(mask_bytes(static_cast<std::int64_t>(x.size())));
  FakeQuantArgs a;
  a.input = x.data();
  a.output = y.data();
  a.mask = mask.data();
  a.scale = scale.data();
  a.zero_point = zp.data();
  a.numel = static_cast<std::int64_t>(x.size());
  a.inner = inner;
  a.channels = channels;
  a.quant_min = -8.f;
  a.quant_max = 7.f;
  a.dtype = dt;
  for (std::int64_t b = 0; b < a.numel; b += 40) k.forward(a, b, std::min(a.numel, b + 40));
  // Compare raw bytes (NaN != NaN as values, but must match bit for bit between ISAs).
  std::vector<std::uint8_t> bytes(y.size() * sizeof(T));
  std::memcpy(bytes.data(), y.data(), bytes.size());
  return {bytes, mask};
}

}  // namespace

CATCH_TEST_CASE("baseline and AVX2 give identical bits for every dtype and layout", "[kernels]") {
  const cpu::FakeQuantKernels* avx2 = cpu::fake_quant_kernels(cpu::Isa::kAvx2);
  if (!avx2) {
    CATCH_WARN("fake_quant: ISA avx2 not run (this CPU or build lacks it): only the baseline is exercised");
    return;
  }
  const cpu::FakeQuantKernels& base = cpu::fake_quant_baseline();
  // (inner, channels): per-tensor, per-channel along dim 0, innermost per-channel, odd groups.
  const std::vector<std::pair<std::int64_t, std::int64_t>> layouts{{1003, 1}, {59, 17}, {1, 59}, {3, 334}, {8, 125}};
  for (auto [inner, channels] : layouts) {
    const std::size_t n = static_cast<std::size_t>(inner * channels);
    CATCH_INFO("inner=" << inner << " channels=" << channels);
    {
      auto x = random_storage<float>(n, 1);
      x[3] = std::numeric_limits<float>::quiet_NaN();
      x[5] = -std::numeric_limits<float>::infinity();
      CATCH_CHECK(run_any(base, DType::kFloat32, x, inner, channels) ==
                  run_any(*avx2, DType::kFloat32, x, inner, channels));
    }
    {
      auto x = random_storage<double>(n, 2);
      CATCH_CHECK(run_any(base, DType::kFloat64, x, inner, channels) ==
                  run_any(*avx2, DType::kFloat64, x, inner, channels));
    }
    {
      auto x = random_storage<std::uint16_t>(n, 3);  // bf16 patterns
      CATCH_CHECK(run_any(base, DType::kBFloat16, x, inner, channels) ==
                  run_any(*avx2, DType::kBFloat16, x, inner, channels));
      std::vector<std::uint16_t> h(n);
      for (std::size_t i = 0; i < n; ++i) h[i] = qatkit::kernels::float_to_fp16(qatkit::kernels::bf16_to_float(x[i]));
      CATCH_CHECK(run_any(base, DType::kFloat16, h, inner, channels) ==
                  run_any(*avx2, DType::kFloat16, h, inner, channels));
    }
  }
}

CATCH_TEST_CASE("backward keeps the gradient exactly where the mask bit is set", "[kernels]") {
  for (auto [isa, k] : fake_quant_isas()) {
    CATCH_INFO(isa);
    const std::int64_t n = 29;
    std::vector<float> g(n), dx(n, -1.f);
    for (std::int64_t i = 0; i < n; ++i) g[i] = static_cast<float>(i) + 0.5f;
    std::vector<std::uint8_t> mask{0b10110001, 0xFF, 0x00, 0b00011010};
    FakeQuantBackwardArgs a;
    a.grad_output = g.data();
    a.mask = mask.data();
    a.grad_input = dx.data();
    a.numel = n;
    k->backward(a, 0, 16);
    k->backward(a, 16, n);
    for (std::int64_t i = 0; i < n; ++i) {
      const bool keep = (mask[i / 8] >> (i % 8)) & 1u;
      CATCH_CHECK(dx[i] == (keep ? g[i] : 0.f));
    }
  }
}

CATCH_TEST_CASE("qparams_valid flags every bad scale and zero point, both ISAs", "[kernels]") {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  for (auto [isa, k] : fake_quant_isas()) {
    CATCH_INFO(isa);
    std::vector<float> s(37, 0.1f), z(37, 3.f);
    CATCH_CHECK(k->qparams_valid(s.data(), z.data(), 37, -8.f, 7.f));
    CATCH_CHECK(k->qparams_valid(s.data(), z.data(), 0, -8.f, 7.f));
    // each bad value, placed in the vector body (index 5) and in the scalar tail (index 35)
    for (std::size_t at : {5u, 35u}) {
      for (float bad_s : {0.f, -0.1f, nan, inf, 1e-39f}) {
        auto s2 = s;
        s2[at] = bad_s;
        CATCH_CHECK_FALSE(k->qparams_valid(s2.data(), z.data(), 37, -8.f, 7.f));
      }
      for (float bad_z : {7.5f, 8.f, -9.f, nan, inf}) {
        auto z2 = z;
        z2[at] = bad_z;
        CATCH_CHECK_FALSE(k->qparams_valid(s.data(), z2.data(), 37, -8.f, 7.f));
      }
    }
  }
}

CATCH_TEST_CASE("LSQ backward: formula per element, identical sums on every ISA", "[kernels]") {
  using qatkit::kernels::LsqBackwardArgs;
  const std::int64_t n = 203;  // 25 vector bodies + a tail
  std::vector<float> x = random_storage<float>(n, 7), dy = random_storage<float>(n, 8);
  float scale = 0.4f, zp = 2.f;
  std::vector<std::pair<double, double>> sums;
  std::vector<std::vector<float>> dxs;
  for (auto [isa, k] : fake_quant_isas()) {
    std::vector<float> dx(n, -1.f);
    LsqBackwardArgs a;
    a.fq.input = x.data();
    a.grad_output = dy.data();
    a.grad_input = dx.data();
    a.fq.scale = &scale;
    a.fq.zero_point = &zp;
    a.fq.numel = n;
    a.fq.inner = n;
    a.fq.quant_min = -8.f;
    a.fq.quant_max = 7.f;
    double ds = 0, dz = 0;
    k->lsq_backward_run(a, 0, n, 0, &ds, &dz);
    // independent check in float64 of the formula (docs/papers.md §6.1), element by element
    double ref_s = 0, ref_z = 0;
    for (std::int64_t i = 0; i < n; ++i) {
      const float xs = x[i] * (1.0f / scale);
      const float r = std::nearbyint(xs);
      const float lo = -8.f - zp, hi = 7.f - zp;
      const bool in = r >= lo && r <= hi;
      CATCH_CHECK(dx[i] == (in ? dy[i] : 0.f));
      ref_s += static_cast<double>(dy[i] * (in ? r - xs : (r < lo ? lo : hi)));
      ref_z += in ? 0.0 : static_cast<double>(-(dy[i] * scale));
    }
    CATCH_CHECK(ds == Approx(ref_s).epsilon(1e-12));
    CATCH_CHECK(dz == Approx(ref_z).epsilon(1e-12));
    sums.emplace_back(ds, dz);
    dxs.push_back(dx);
  }
  for (std::size_t i = 1; i < sums.size(); ++i) {
    CATCH_CHECK(sums[i] == sums[0]);  // bit for bit, not approximately
    CATCH_CHECK(dxs[i] == dxs[0]);
  }
}

CATCH_TEST_CASE("absmax and abssum: every ISA and dtype, identical sums", "[kernels]") {
  const std::int64_t n = 1001;
  auto x = random_storage<float>(n, 11);
  x[417] = -9.5f;  // the largest magnitude is negative
  for (auto [isa, k] : reduce_isas()) {
    CATCH_INFO(isa);
    bool ok = true;
    CATCH_CHECK(k->absmax(x.data(), DType::kFloat32, n, &ok) == 9.5f);
    CATCH_CHECK(ok);
    std::vector<double> xd(x.begin(), x.end());
    CATCH_CHECK(k->absmax(xd.data(), DType::kFloat64, n, &ok) == 9.5f);
    std::vector<std::uint16_t> xb(n);
    for (std::int64_t i = 0; i < n; ++i) xb[i] = qatkit::kernels::float_to_bf16(x[i]);
    CATCH_CHECK(k->absmax(xb.data(), DType::kBFloat16, n, &ok) == 9.5f);
    double ref = 0;
    for (float v : x) ref += std::fabs(static_cast<double>(v));
    CATCH_CHECK(k->abssum(x.data(), DType::kFloat32, n) == Approx(ref).epsilon(1e-12));
    CATCH_CHECK(k->abssum(x.data(), DType::kFloat32, n) ==
                cpu::reduce_baseline().abssum(x.data(), DType::kFloat32, n));
    CATCH_CHECK(k->abssum(xb.data(), DType::kBFloat16, n) ==
                cpu::reduce_baseline().abssum(xb.data(), DType::kBFloat16, n));
    // sum x with sum |x|: the same |x| sum as abssum, the plain sum in the same lanes, every ISA the
    // baseline's bits (body and tail: n = 1001, and 5 < 8)
    for (const std::int64_t m : {n, std::int64_t{5}}) {
      double ref_s = 0;
      for (std::int64_t i = 0; i < m; ++i) ref_s += static_cast<double>(x[i]);
      for (const auto& [ptr, dt] : {std::pair<const void*, DType>{x.data(), DType::kFloat32},
                                    std::pair<const void*, DType>{xd.data(), DType::kFloat64},
                                    std::pair<const void*, DType>{xb.data(), DType::kBFloat16}}) {
        cpu::SumAbsLanes l, bl, split;
        k->sum_abssum(ptr, dt, m, &l);
        cpu::reduce_baseline().sum_abssum(ptr, dt, m, &bl);
        CATCH_CHECK(l.abssum() == k->abssum(ptr, dt, m));
        CATCH_CHECK(l.sum() == bl.sum());
        CATCH_CHECK(l.abssum() == bl.abssum());
        if (dt != DType::kBFloat16) CATCH_CHECK(l.sum() == Approx(ref_s).epsilon(1e-12));
        // one run in pieces of multiples of 8 on the same lanes: the one run's bits
        const std::int64_t cut = m / 16 * 8;
        const std::size_t es = dt == DType::kFloat64 ? 8 : dt == DType::kFloat32 ? 4 : 2;
        k->sum_abssum(ptr, dt, cut, &split);
        k->sum_abssum(static_cast<const char*>(ptr) + cut * es, dt, m - cut, &split);
        CATCH_CHECK(split.sum() == l.sum());
        CATCH_CHECK(split.abssum() == l.abssum());
      }
    }
    for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
      for (std::int64_t at : {std::int64_t{3}, n - 2}) {  // vector body and tail
        auto y = x;
        y[at] = bad;
        bool flag = true;
        k->absmax(y.data(), DType::kFloat32, n, &flag);
        CATCH_CHECK_FALSE(flag);
      }
    }
  }
}

namespace {
/// The same float64 value bit for bit (any NaN matches any NaN: the sums' NaN payloads are not part
/// of the contract).
bool same_bits(double x, double y) {
  return (std::isnan(x) && std::isnan(y)) || std::memcmp(&x, &y, sizeof x) == 0;
}
}  // namespace

// The float64 chains of sum x and sum |x| on runs that stress them (sums that round in every step,
// subnormals, signed zeros, NaN and Inf in the vector body, the 8-element steps and the tail,
// lanes continued across calls at cuts off any vector width, lanes that start far from zero):
// every ISA's lanes against the baseline's bit for bit; and sum_abssum_runs' runs side by side
// against single calls. (An AVX-512 form that summed blocks in any order when no addition could
// round was tried: a float64 sum of ~10^5 float32 activations does round, and it fell back on ~40 %
// of blocks; docs/benchmarks.md, fiftieth session.)
CATCH_TEST_CASE("the sum_abssum_runs / sum_abssum / abssum chains: the baseline's bits on every ISA for adversarial runs", "[kernels]") {
  std::mt19937 gen(23);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::uniform_int_distribution<int> pos(0, 1 << 30);
  const std::int64_t n = 3 * 2048 + 32 * 5 + 13;  // 8-element steps and a tail of 5
  auto gaussian = [&](float scale) {
    std::vector<float> x(n);
    for (auto& v : x) v = normal(gen) * scale;
    return x;
  };
  std::vector<std::pair<const char*, std::vector<float>>> runs;
  runs.emplace_back("gaussian", gaussian(1.f));
  runs.emplace_back("large sums", gaussian(3e4f));
  {
    auto x = gaussian(1.f);
    for (int t = 0; t < 6; ++t) x[pos(gen) % n] = 1e-30f * normal(gen);  // below every sum's last bit
    runs.emplace_back("tiny elements", x);
  }
  {
    auto x = gaussian(1.f);
    for (std::int64_t i = 0; i < n; i += 3) x[i] *= 1e30f;  // sums that round at most steps
    runs.emplace_back("wide range", x);
  }
  {
    auto x = gaussian(1.f);
    for (auto& v : x) v = v < 0.f ? 0.f : v;  // ReLU: half zeros
    x[5] = -0.f;
    runs.emplace_back("relu", x);
  }
  runs.emplace_back("zeros", std::vector<float>(n, 0.f));
  runs.emplace_back("negative zeros", std::vector<float>(n, -0.f));
  {
    auto x = gaussian(1e-40f);  // subnormals
    runs.emplace_back("subnormals", x);
  }
  {
    std::vector<float> x(n);
    for (std::int64_t i = 0; i < n; ++i) x[i] = 1.f + static_cast<float>(i % 7) * 0x1p-23f;  // sums past 2^29
    runs.emplace_back("ones", x);
  }
  for (const float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                          -std::numeric_limits<float>::infinity()}) {
    for (const std::int64_t at : {std::int64_t{40}, std::int64_t{2048 + 9}, n - 3}) {
      auto x = gaussian(1.f);
      x[at] = bad;
      runs.emplace_back("non-finite", x);
    }
  }
  const auto& base = cpu::reduce_baseline();
  for (auto [isa, k] : reduce_isas()) {
    for (const auto& [what, x] : runs) {
      CATCH_INFO(isa << ", " << what);
      // one run; the same run in pieces on the same lanes (cuts at multiples of 8 off the 16- and
      // 32-element steps); a run continuing lanes that start far from zero
      for (const std::int64_t cut : {std::int64_t{0}, std::int64_t{8}, std::int64_t{2056}, n / 16 * 8}) {
        cpu::SumAbsLanes l, bl;
        k->sum_abssum(x.data(), DType::kFloat32, cut, &l);
        k->sum_abssum(x.data() + cut, DType::kFloat32, n - cut, &l);
        base.sum_abssum(x.data(), DType::kFloat32, cut, &bl);
        base.sum_abssum(x.data() + cut, DType::kFloat32, n - cut, &bl);
        for (int j = 0; j < 8; ++j) {
          CATCH_CHECK(same_bits(l.s[j], bl.s[j]));
          CATCH_CHECK(same_bits(l.a[j], bl.a[j]));
        }
      }
      cpu::SumAbsLanes l, bl;
      for (int j = 0; j < 8; ++j) l.s[j] = bl.s[j] = 1e15 + j * 0.375, l.a[j] = bl.a[j] = 0x1p-60 * (j + 1);
      k->sum_abssum(x.data(), DType::kFloat32, n, &l);
      base.sum_abssum(x.data(), DType::kFloat32, n, &bl);
      for (int j = 0; j < 8; ++j) {
        CATCH_CHECK(same_bits(l.s[j], bl.s[j]));
        CATCH_CHECK(same_bits(l.a[j], bl.a[j]));
      }
      for (const std::int64_t m : {n, std::int64_t{2048}, std::int64_t{77}})
        CATCH_CHECK(same_bits(k->abssum(x.data(), DType::kFloat32, m), base.abssum(x.data(), DType::kFloat32, m)));
    }
    // sum_abssum_runs: 1-6 of the runs side by side (each run's lanes starting where a first piece
    // left them), lengths with and without a tail, every run's lanes the single calls' bits
    for (const std::int64_t m : {std::int64_t{n}, std::int64_t{5}, std::int64_t{0}, std::int64_t{64}}) {
      for (int count = 1; count <= 6; ++count) {
        std::vector<const void*> ptrs;
        std::vector<cpu::SumAbsLanes> got(static_cast<std::size_t>(count)), want(got.size());
        std::vector<cpu::SumAbsLanes*> lanes;
        for (int r = 0; r < count; ++r) {
          const auto& x = runs[static_cast<std::size_t>((r * 5 + count) % static_cast<int>(runs.size()))].second;
          k->sum_abssum(x.data(), DType::kFloat32, 16, &got[static_cast<std::size_t>(r)]);
          base.sum_abssum(x.data(), DType::kFloat32, 16, &want[static_cast<std::size_t>(r)]);
          base.sum_abssum(x.data() + 16, DType::kFloat32, std::min<std::int64_t>(m, n - 16), &want[static_cast<std::size_t>(r)]);
          ptrs.push_back(x.data() + 16);
          lanes.push_back(&got[static_cast<std::size_t>(r)]);
        }
        k->sum_abssum_runs(ptrs.data(), DType::kFloat32, std::min<std::int64_t>(m, n - 16), lanes.data(), count);
        for (int r = 0; r < count; ++r) {
          CATCH_INFO(isa << ", " << count << " runs of " << m << ", run " << r);
          for (int j = 0; j < 8; ++j) {
            CATCH_CHECK(same_bits(got[static_cast<std::size_t>(r)].s[j], want[static_cast<std::size_t>(r)].s[j]));
            CATCH_CHECK(same_bits(got[static_cast<std::size_t>(r)].a[j], want[static_cast<std::size_t>(r)].a[j]));
          }
        }
      }
    }
    // other dtypes: the single calls' bits too
    std::vector<std::uint16_t> xb(static_cast<std::size_t>(n));
    for (std::int64_t i = 0; i < n; ++i) xb[static_cast<std::size_t>(i)] = qatkit::kernels::float_to_bf16(runs[0].second[static_cast<std::size_t>(i)]);
    const void* bp[3] = {xb.data(), xb.data() + 8, xb.data() + 24};
    cpu::SumAbsLanes g3[3], w3[3];
    cpu::SumAbsLanes* gl[3] = {&g3[0], &g3[1], &g3[2]};
    k->sum_abssum_runs(bp, DType::kBFloat16, n - 40, gl, 3);
    for (int r = 0; r < 3; ++r) {
      base.sum_abssum(bp[r], DType::kBFloat16, n - 40, &w3[r]);
      CATCH_CHECK(g3[r].sum() == w3[r].sum());
      CATCH_CHECK(g3[r].abssum() == w3[r].abssum());
    }
  }
}

CATCH_TEST_CASE("binary codes: the sign formula and identical codes on every ISA", "[kernels]") {
  using qatkit::kernels::BinarizeArgs;
  const std::int64_t n = 1003;  // 32-element steps, a tail, runs of 2 channels cut at odd places
  auto x = random_storage<float>(n, 23);
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  const float center[2] = {0.25f, -1.5f};
  // special values in the vector body and in a run's tail: +-0, the centre itself, NaN, +-Inf; then
  // the floats next to the centre, and the centre plus the smallest subnormal (which rounds back to it)
  for (const std::int64_t at : {std::int64_t{3}, std::int64_t{40}, std::int64_t{990}}) {  // 990: run 1's tail
    const float c = center[(at / 500) % 2];
    x[at] = 0.f;
    x[at + 1] = -0.f;
    x[at + 2] = c;
    x[at + 3] = nan;
    x[at + 4] = inf;
    x[at + 5] = -inf;
  }
  x[60] = std::nextafter(center[0], inf);
  x[61] = std::nextafter(center[0], -inf);
  x[62] = center[0] + std::numeric_limits<float>::denorm_min();
  for (const bool zero_negative : {false, true}) {
    auto codes = [&](const cpu::SignKernels& k) {
      std::vector<std::int8_t> y(n, 99);
      BinarizeArgs a;
      a.input = x.data();
      a.output = y.data();
      a.center = center;
      a.numel = n;
      a.inner = 500;  // channel 0: [0, 500), 1: [500, 1000), 0 again: [1000, 1003)
      a.channels = 2;
      a.zero_negative = zero_negative;
      for (std::int64_t b = 0; b < n; b += 131) k.binary_codes(a, b, std::min(n, b + 131));
      return y;
    };
    const std::vector<std::int8_t> want = codes(cpu::sign_baseline());
    for (std::int64_t i = 0; i < n; ++i) {
      const float v = x[i] - center[(i / 500) % 2];
      const int expect = std::isnan(v) ? 0 : v > 0.f ? 1 : v < 0.f ? -1 : (zero_negative ? -1 : 1);
      CATCH_INFO(i);
      CATCH_CHECK(static_cast<int>(want[i]) == expect);
    }
    for (auto [isa, k] : sign_isas()) {
      CATCH_INFO(isa << " zero_negative " << zero_negative);
      CATCH_CHECK(codes(*k) == want);
    }
    // codes_s16: the formula's codes (one centre) as int16, rows of 37 (16-element steps and a
    // tail) written 41 apart, the 4 codes between rows left as they were
    const std::int64_t rows = 27, len = 37, rs = 41;
    for (auto [isa, k] : sign_isas()) {
      CATCH_INFO(isa << " codes_s16 zero_negative " << zero_negative);
      std::vector<std::int16_t> y(static_cast<std::size_t>(rows * rs), 77);
      k->codes_s16(x.data(), rows, len, y.data(), rs, center[0], zero_negative);
      std::int64_t wrong = 0;
      for (std::int64_t r = 0; r < rows; ++r) {
        for (std::int64_t e = 0; e < rs; ++e) {
          const float v = x[r * len + e] - center[0];
          const int expect = e >= len ? 77 : std::isnan(v) ? 0 : v > 0.f ? 1 : v < 0.f ? -1 : (zero_negative ? -1 : 1);
          wrong += y[r * rs + e] != expect;
        }
      }
      CATCH_CHECK(wrong == 0);
    }
  }
}

CATCH_TEST_CASE("binarize, ternary and TWN statistic: formula, identical bits on every ISA", "[kernels]") {
  using qatkit::kernels::BinarizeArgs;
  using qatkit::kernels::BinarizeBackwardArgs;
  using qatkit::kernels::SignEstimator;
  const std::int64_t n = 1003;  // vector body and a tail
  auto x = random_storage<float>(n, 21);
  x[5] = 0.f;
  x[6] = -0.f;
  x[7] = std::numeric_limits<float>::quiet_NaN();
  const float alpha[2] = {0.75f, 1.5f}, center[2] = {0.f, 0.25f}, threshold[2] = {0.5f, 0.3f};
  auto binarize = [&](const cpu::SignKernels& k) {
    std::vector<float> y(n, -7.f);
    BinarizeArgs a;
    a.input = x.data();
    a.output = y.data();
    a.alpha = alpha;
    a.center = center;
    a.numel = n;
    a.inner = 500;  // channel 0: [0, 500), 1: [500, 1000), 0 again: [1000, 1003)
    a.channels = 2;
    for (std::int64_t b = 0; b < n; b += 97) k.binarize_forward(a, b, std::min(n, b + 97));
    return y;
  };
  auto ternary = [&](const cpu::SignKernels& k) {
    std::vector<float> y(n, -7.f);
    qatkit::kernels::TernaryArgs a;
    a.input = x.data();
    a.output = y.data();
    a.alpha = alpha;
    a.threshold = threshold;
    a.numel = n;
    a.inner = 500;
    a.channels = 2;
    for (std::int64_t b = 0; b < n; b += 97) k.ternary_forward(a, b, std::min(n, b + 97));
    return y;
  };
  const auto& base = cpu::sign_baseline();
  const auto& rbase = cpu::reduce_baseline();
  const std::vector<float> yb = binarize(base), yt = ternary(base);
  for (std::int64_t i = 0; i < n; ++i) {
    const int c = static_cast<int>((i / 500) % 2);
    const float v = x[i] - center[c];
    CATCH_INFO(i);
    if (std::isnan(v)) {
      CATCH_CHECK(std::isnan(yb[i]));
      CATCH_CHECK(yt[i] == 0.f);
      continue;
    }
    CATCH_CHECK(yb[i] == (v >= 0.f ? alpha[c] : -alpha[c]));  // sign(0) = +1
    CATCH_CHECK(yt[i] == (std::fabs(x[i]) > threshold[c] ? (x[i] > 0.f ? alpha[c] : -alpha[c]) : 0.f));
  }
  std::vector<float> g = random_storage<float>(n, 22);
  for (auto [isa, k] : sign_isas()) {
    CATCH_INFO(isa);
    const auto b2 = binarize(*k), t2 = ternary(*k);
    CATCH_CHECK(std::memcmp(b2.data(), yb.data(), n * sizeof(float)) == 0);
    CATCH_CHECK(std::memcmp(t2.data(), yt.data(), n * sizeof(float)) == 0);
  }
  for (auto [isa, k] : sign_isas()) {
    CATCH_INFO(isa);
    for (auto est : {SignEstimator::kIdentity, SignEstimator::kClippedSte, SignEstimator::kApproxSign,
                     SignEstimator::kSwishSign}) {
      std::vector<float> dx(n), dx_base(n);
      BinarizeBackwardArgs a;
      a.input = x.data();
      a.grad_output = g.data();
      a.center = center;
      a.numel = n;
      a.inner = 500;
      a.channels = 2;
      a.estimator = est;
      a.grad_input = dx.data();
      k->binarize_backward(a, 0, n);
      a.grad_input = dx_base.data();
      base.binarize_backward(a, 0, n);
      CATCH_CHECK(std::memcmp(dx.data(), dx_base.data(), n * sizeof(float)) == 0);
    }
  }
  for (auto [isa, k] : reduce_isas()) {
    CATCH_INFO(isa);
    auto finite = x;
    finite[7] = 2.f;
    double ref = 0;
    std::int64_t ref_count = 0;
    for (float v : finite) {
      if (std::fabs(v) > 0.6f) ref += std::fabs(static_cast<double>(v)), ++ref_count;
    }
    double sum = -1, sum_base = -2;
    std::int64_t count = -1, count_base = -2;
    k->twn_stats(finite.data(), DType::kFloat32, n, 0.6f, &sum, &count);
    rbase.twn_stats(finite.data(), DType::kFloat32, n, 0.6f, &sum_base, &count_base);
    CATCH_CHECK(count == ref_count);
    CATCH_CHECK(sum == Approx(ref).epsilon(1e-12));
    CATCH_CHECK(sum == sum_base);  // the same bits on every ISA
    CATCH_CHECK(count == count_base);
    std::vector<std::uint16_t> xb(n);
    for (std::int64_t i = 0; i < n; ++i) xb[i] = qatkit::kernels::float_to_bf16(finite[i]);
    k->twn_stats(xb.data(), DType::kBFloat16, n, 0.6f, &sum, &count);
    rbase.twn_stats(xb.data(), DType::kBFloat16, n, 0.6f, &sum_base, &count_base);
    CATCH_CHECK(sum == sum_base);
    CATCH_CHECK(count == count_base);
  }
}

CATCH_TEST_CASE("quantize codes: dequantize(quantize(x)) equals the fake-quant forward, identical on every ISA",
                "[kernels]") {
  using qatkit::kernels::CodeType;
  using qatkit::kernels::DequantizeArgs;
  using qatkit::kernels::QuantizeArgs;
  const std::int64_t n = 1003;
  auto x = random_storage<float>(n, 31);
  x[3] = std::numeric_limits<float>::infinity();
  x[4] = -std::numeric_limits<float>::infinity();
  x[5] = -0.01f;  // rounds to -0: the fake-quant output and the dequantized code are +0
  const float scale[2] = {0.05f, 0.3f}, zp[2] = {3.f, -2.f};
  std::vector<float> fq(n);
  {
    qatkit::kernels::FakeQuantArgs a;
    a.input = x.data();
    a.output = fq.data();
    a.scale = scale;
    a.zero_point = zp;
    a.numel = n;
    a.inner = 500;
    a.channels = 2;
    a.quant_min = -8.f;
    a.quant_max = 7.f;
    cpu::fake_quant_baseline().forward(a, 0, n);
  }
  std::vector<std::int8_t> base_codes;
  for (auto [isa, k] : quantize_isas()) {
    CATCH_INFO(isa);
    std::vector<std::int8_t> codes(n, 99);
    QuantizeArgs q;
    q.input = x.data();
    q.codes = codes.data();
    q.scale = scale;
    q.zero_point = zp;
    q.numel = n;
    q.inner = 500;
    q.channels = 2;
    q.quant_min = -8.f;
    q.quant_max = 7.f;
    q.code_type = CodeType::kInt8;
    for (std::int64_t b = 0; b < n; b += 97) k->quantize(q, b, std::min(n, b + 97));
    std::vector<float> y(n, -7.f);
    DequantizeArgs d;
    d.codes = codes.data();
    d.output = y.data();
    d.scale = scale;
    d.zero_point = zp;
    d.numel = n;
    d.inner = 500;
    d.channels = 2;
    d.code_type = CodeType::kInt8;
    k->dequantize(d, 0, n);
    for (std::int64_t i = 0; i < n; ++i) {
      const int c = static_cast<int>((i / 500) % 2);
      CATCH_INFO(i);
      CATCH_CHECK(codes[i] >= -8);
      CATCH_CHECK(codes[i] <= 7);
      // an independent float64 reference of the code: round half to even, then clamp
      const double r = std::nearbyint(static_cast<double>(x[i] * (1.0f / scale[c]))) + zp[c];
      CATCH_CHECK(codes[i] == static_cast<int>(std::min(7.0, std::max(-8.0, r))));
    }
    CATCH_CHECK(std::memcmp(y.data(), fq.data(), n * sizeof(float)) == 0);  // bit for bit, incl. the sign of 0
    if (base_codes.empty()) base_codes = codes;
    CATCH_CHECK(codes == base_codes);
  }
}

CATCH_TEST_CASE("the qgemm tables' transposes equal the definition on every ISA (blocks, edges, strides)",
                "[kernels]") {
  namespace kc = qatkit::kernels::cpu;
  std::mt19937 gen(41);
  std::uniform_int_distribution<int> byte(-128, 127);
  // 4-7 and 12-15 rows: AVX2's 4-row blocks (alone, and after an 8-row block), with and without a tail
  const std::int64_t sizes[] = {1, 2, 3, 4, 5, 7, 8, 12, 15, 16, 17, 31, 32, 33, 40};
  for (const kc::Isa isa : {kc::Isa::kBaseline, kc::Isa::kAvx2, kc::Isa::kAvx512}) {
    const kc::QGemmKernels* k = kc::qgemm_kernels(isa);
    if (k == nullptr) {
      CATCH_WARN("ISA " << static_cast<int>(isa) << " not run: this CPU lacks it");
      continue;
    }
    for (const std::int64_t rows : sizes) {
      for (const std::int64_t cols : sizes) {
        for (const bool packed : {false, true}) {
          // source rows 5 elements longer than cols, destination rows 3 longer than rows (strided);
          // or both packed (the contiguous forms of 1, 2 and 4 columns)
          const std::int64_t src_rs = packed ? cols : cols + 5, dst_rs = packed ? rows : rows + 3;
          std::vector<std::int8_t> s8(static_cast<std::size_t>(rows * src_rs));
          std::vector<float> f32(s8.size());
          for (std::size_t i = 0; i < s8.size(); ++i) {
            s8[i] = static_cast<std::int8_t>(byte(gen));
            f32[i] = static_cast<float>(byte(gen)) * 0.37f;
          }
          std::vector<std::int8_t> d8(static_cast<std::size_t>(cols * dst_rs), 99);
          std::vector<std::int16_t> d16(d8.size(), 999);
          std::vector<float> df(d8.size(), -1.5f);
          k->transpose_s8(s8.data(), rows, cols, src_rs, d8.data(), dst_rs);
          k->transpose_s8_s16(s8.data(), rows, cols, src_rs, d16.data(), dst_rs);
          k->transpose_f32(f32.data(), rows, cols, src_rs, df.data(), dst_rs);
          bool ok = true;
          for (std::int64_t c = 0; c < cols; ++c) {
            for (std::int64_t r = 0; r < dst_rs; ++r) {
              const std::size_t d = static_cast<std::size_t>(c * dst_rs + r), src = static_cast<std::size_t>(r * src_rs + c);
              if (r < rows) {
                ok = ok && d8[d] == s8[src] && d16[d] == s8[src] && df[d] == f32[src];
              } else {  // past each destination row's rows: untouched
                ok = ok && d8[d] == 99 && d16[d] == 999 && df[d] == -1.5f;
              }
            }
          }
          CATCH_INFO("isa " << static_cast<int>(isa) << " rows " << rows << " cols " << cols << " packed " << packed);
          CATCH_CHECK(ok);
        }
      }
    }
  }
}
