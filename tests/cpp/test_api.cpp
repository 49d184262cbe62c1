// Catch2 tests of the LibTorch C++ API: values against ATen's fake quant, gradients through the
// dispatcher (C++ autograd), choose_qparams, and error messages.
#include <torch/torch.h>
#include "catch.h"

#include <cmath>
#include <functional>
#include <thread>
#include <vector>

#include <qatkit/qatkit.h>

CATCH_TEST_CASE("per-tensor fake_quantize equals ATen, with the STE gradient", "[api]") {
  torch::manual_seed(0);
  auto x = (torch::randn({33, 17}) * 4).requires_grad_();
  auto scale = torch::tensor({0.037f});
  auto zp = torch::tensor({3}, torch::kInt);
  auto y = qatkit::fake_quantize(x, scale, zp, -128, 127);
  auto ref = torch::fake_quantize_per_tensor_affine(x.detach(), 0.037, 3, -128, 127);
  CATCH_CHECK(torch::equal(y.detach(), ref));
  y.backward(torch::ones_like(y));
  auto q = torch::round(x.detach() * (1.0f / 0.037f)) + 3;
  auto mask = ((q >= -128) & (q <= 127)).to(torch::kFloat);
  CATCH_CHECK(torch::equal(x.grad(), mask));
  CATCH_CHECK(mask.sum().item<float>() < x.numel());  // the test saw clipped elements
}

CATCH_TEST_CASE("per-channel fake_quantize equals ATen, negative axis", "[api]") {
  torch::manual_seed(1);
  auto x = torch::randn({4, 6, 5});
  auto scale = torch::rand({6}) * 0.1 + 0.01;
  auto zp = torch::randint(-3, 3, {6}, torch::kInt);
  auto y = qatkit::fake_quantize(x, scale, zp, -8, 7, -2);
  auto ref = torch::fake_quantize_per_channel_affine(x, scale, zp, 1, -8, 7);
  CATCH_CHECK(torch::equal(y, ref));
}

CATCH_TEST_CASE("per-group gradient flows through the C++ API", "[api]") {
  auto x = torch::linspace(-2, 2, 64).reshape({4, 16}).requires_grad_();
  auto [scale, zp] = qatkit::choose_qparams(x.detach(), -8, 7, true, std::nullopt, 8);
  CATCH_CHECK(scale.sizes() == torch::IntArrayRef({4, 2}));
  CATCH_CHECK(zp.scalar_type() == torch::kInt);
  auto y = qatkit::fake_quantize(x, scale, zp, -8, 7, std::nullopt, 8);
  y.pow(2).sum().backward();
  // 2*y where the unclamped q is in range; symmetric scale clips the group maximum (7.5 -> 8).
  auto q = torch::round(x.detach() / scale.repeat_interleave(8, 1));
  auto in = (q >= -8) & (q <= 7);
  CATCH_CHECK(torch::equal(x.grad(), torch::where(in, 2 * y.detach(), torch::zeros_like(y))));
}

CATCH_TEST_CASE("choose_qparams matches the min/max formulas", "[api]") {
  auto x = torch::tensor({-1.0f, 0.5f, 3.0f});
  auto [s, z] = qatkit::choose_qparams(x, 0, 255, false);
  CATCH_CHECK(s.item<float>() == 4.0f / 255.0f);
  CATCH_CHECK(z.item<int>() == static_cast<int>(0 - std::nearbyint(-1.0f / (4.0f / 255.0f))));
  auto [s2, z2] = qatkit::choose_qparams(x, -128, 127, true);
  CATCH_CHECK(s2.item<float>() == 3.0f / 127.5f);
  CATCH_CHECK(z2.item<int>() == 0);
}

CATCH_TEST_CASE("bad input raises errors that name the argument", "[api]") {
  auto x = torch::randn({8, 4});
  auto zp = torch::zeros({3}, torch::kInt);
  CATCH_CHECK_THROWS_WITH(qatkit::fake_quantize(x, torch::ones({3}), zp, -8, 7, 0),
                          Catch::Contains("scale must have 8 elements (size of dim 0 of input), got 3"));
  CATCH_CHECK_THROWS_AS(qatkit::fake_quantize(x, torch::ones({1}), torch::zeros({1}), 7, 7), c10::ValueError);
  CATCH_CHECK_THROWS_WITH(qatkit::fake_quantize(x, torch::ones({1}), torch::zeros({1}), 7, 7),
                          Catch::Contains("quant_min must be less than quant_max"));
  CATCH_CHECK_THROWS_WITH(qatkit::fake_quantize(x, -torch::ones({1}), torch::zeros({1}), 0, 7),
                          Catch::Contains("scale must be positive"));
  CATCH_CHECK_THROWS_AS(qatkit::fake_quantize(x.to(torch::kInt), torch::ones({1}), torch::zeros({1}), 0, 7),
                        c10::TypeError);
}

CATCH_TEST_CASE("build info", "[api]") {
  const auto info = qatkit::build_info();
  CATCH_CHECK_FALSE(info.version.empty());
  CATCH_CHECK((info.cpu_isa == "amx" || info.cpu_isa == "avx512" || info.cpu_isa == "avx2" ||
               info.cpu_isa == "baseline"));
}

CATCH_TEST_CASE("fake_quantize_learnable: LSQ gradients from C++", "[api]") {
  torch::manual_seed(3);
  auto x = (torch::randn({8, 16}) * 2).requires_grad_();
  auto scale = torch::full({8}, 0.1).requires_grad_();
  auto zp = torch::zeros({8}).requires_grad_();
  auto y = qatkit::fake_quantize_learnable(x, scale, zp, -8, 7, 0, std::nullopt, 0.5);
  CATCH_CHECK(torch::equal(y.detach(), qatkit::fake_quantize(x.detach(), scale.detach(), zp.detach(), -8, 7, 0)));
  y.sum().backward();
  // scale gradient by the formula: sum over the row of (r - x/s) inside, qmin/qmax outside, times 0.5
  auto xs = x.detach() * (1.0f / 0.1f);
  auto r = torch::round(xs);
  auto in = (r >= -8) & (r <= 7);
  auto per_elem = torch::where(in, r - xs, torch::where(r < -8, torch::full_like(r, -8), torch::full_like(r, 7)));
  CATCH_CHECK(torch::allclose(scale.grad(), per_elem.sum(1) * 0.5, 1e-5, 1e-5));
  CATCH_CHECK(torch::allclose(
      zp.grad(), torch::where(in, torch::zeros_like(r), -0.1 * torch::ones_like(r)).sum(1) * 0.5, 1e-5, 1e-5));
  CATCH_CHECK(torch::equal(x.grad(), in.to(torch::kFloat)));
}

CATCH_TEST_CASE("pact_quantize: clip-then-quantize and its gradients from C++", "[api]") {
  auto x = torch::linspace(-2, 5, 57).requires_grad_();
  auto alpha = torch::full({1}, 3.0f).requires_grad_();
  auto y = qatkit::pact_quantize(x, alpha, 15);
  const auto s = 3.0f / 15.0f;
  auto ref = torch::round(x.detach().clamp(0, 3) * (1.0f / s)) * s;
  CATCH_CHECK(torch::allclose(y.detach(), ref));
  y.sum().backward();
  auto xd = x.detach();
  CATCH_CHECK(torch::equal(x.grad(), ((xd >= 0) & (xd < 3)).to(torch::kFloat)));
  CATCH_CHECK(alpha.grad().item<float>() == (xd >= 3).sum().item<float>());
}

CATCH_TEST_CASE("binarize, ternarize and per-token quantize from C++", "[api]") {
  auto w = torch::tensor({0.5f, -2.0f, 0.0f, 1.5f}).requires_grad_();
  auto y = qatkit::binarize(w, "mean_abs", std::nullopt, "clipped_ste");
  CATCH_CHECK(torch::allclose(y, torch::tensor({1.0f, -1.0f, 1.0f, 1.0f}) * 1.0f));
  y.sum().backward();
  CATCH_CHECK(torch::equal(w.grad(), torch::tensor({1.0f, 0.0f, 1.0f, 0.0f})));  // hardtanh window
  auto t = qatkit::ternarize(torch::tensor({0.1f, -3.0f, 1.0f, 0.0f}));
  CATCH_CHECK(torch::allclose(t, torch::tensor({0.0f, -1.025f, 1.025f, 0.0f})));  // gamma = mean|W|
  auto q = qatkit::quantize_per_token(torch::tensor({{1.0f, -0.5f}, {0.25f, 0.0f}}));
  CATCH_CHECK(torch::allclose(q, torch::tensor({{1.0f, -0.5f}, {0.25f, 0.0f}}), 0, 1e-2));
  auto s =
      qatkit::binarize(torch::zeros({1000}), "none", std::nullopt, "identity", 1.0, torch::tensor({5}, torch::kLong));
  CATCH_CHECK(torch::equal(s, qatkit::binarize(torch::zeros({1000}), "none", std::nullopt, "identity", 1.0,
                                               torch::tensor({5}, torch::kLong))));
  CATCH_CHECK_THROWS_WITH(qatkit::binarize(w, "xnor"), Catch::Contains("scaling must be one of"));
}

CATCH_TEST_CASE("ops called from concurrent std::threads give the serial bits", "[api][threads]") {
  torch::manual_seed(3);
  const torch::Tensor x = torch::randn({53, 211}) * 2;
  const torch::Tensor s = torch::rand({53}) * 0.05 + 0.01;
  const torch::Tensor z = torch::randint(-4, 4, {53}, torch::kInt);
  const auto run = [&] {
    std::vector<torch::Tensor> out;
    const torch::Tensor xs = x.clone().requires_grad_();
    const torch::Tensor y = qatkit::fake_quantize(xs, s, z, -128, 127, 0);
    y.backward(torch::ones_like(y));
    out.push_back(y.detach());
    out.push_back(xs.grad());
    const torch::Tensor sl = s.clone().requires_grad_();
    const torch::Tensor yl = qatkit::fake_quantize_learnable(x, sl, z.to(torch::kFloat), -8, 7, 0);
    yl.sum().backward();
    out.push_back(yl.detach());
    out.push_back(sl.grad());
    out.push_back(qatkit::binarize(x, "bitnet", 0, "approx_sign"));
    out.push_back(qatkit::ternarize(x, "twn", 0));
    out.push_back(qatkit::quantize_per_token(x));
    return out;
  };
  const std::vector<torch::Tensor> expected = run();
  std::vector<std::vector<torch::Tensor>> results(6);
  std::vector<std::thread> threads;
  for (std::size_t t = 0; t < results.size(); ++t) {
    threads.emplace_back([&, t] {
      for (int k = 0; k < 5; ++k) results[t] = run();
    });
  }
  for (auto& th : threads) th.join();
  for (const auto& r : results) {
    CATCH_REQUIRE(r.size() == expected.size());
    for (std::size_t i = 0; i < r.size(); ++i) CATCH_CHECK(torch::equal(r[i], expected[i]));
  }
}

CATCH_TEST_CASE("linear_dynamic_int8 from C++: BitLinear's per-token integer form, bit for bit", "[api]") {
  torch::manual_seed(5);
  const torch::Tensor x = torch::randn({3, 70}) * 3, w = torch::randint(-1, 2, {20, 70}).to(torch::kChar);
  const torch::Tensor ws = torch::rand({20}) + 0.05, b = torch::randn({20});
  // ops.pack_ternary_t2: codes + 1, K padded to 128 with code 1 (zero), k = 32 i + j in bits 2 i of byte j
  torch::Tensor c = torch::cat({w.to(torch::kInt) + 1, torch::ones({20, 58}, torch::kInt)}, 1).reshape({20, 1, 4, 32});
  const torch::Tensor packed = (c.select(2, 0) + c.select(2, 1) * 4 + c.select(2, 2) * 16 + c.select(2, 3) * 64)
                                   .to(torch::kByte).reshape({20, 32}).contiguous();
  // the "row" form from its formulas: s[m] = max(amax, 1e-5) / 127, codes x * (1 / s) rounded half to
  // even and clamped, exact sums, fp32(acc) * fp32(s * ws) + b
  const torch::Tensor s = x.abs().amax({1}).clamp_min(1e-5) / 127.0f;
  const torch::Tensor q = torch::round(x * (1.0f / s).unsqueeze(1)).clamp(-128, 127);
  const torch::Tensor want = torch::matmul(q.to(torch::kDouble), w.to(torch::kDouble).t()).to(torch::kFloat) *
                                 (s.unsqueeze(1) * ws.unsqueeze(0)) + b;
  CATCH_CHECK(torch::equal(qatkit::linear_dynamic_int8(x, packed, 2, ws, 127, b), want));
  CATCH_CHECK_THROWS_WITH(qatkit::linear_dynamic_int8(x, packed, 4, ws), Catch::Contains("weight_bits must be 8, 2 or 1"));
  CATCH_CHECK_THROWS_WITH(qatkit::linear_dynamic_int8(x, packed, 2, ws.narrow(0, 0, 3)),
                          Catch::Contains("weight_scale must have shape [N] = [20]"));
}

CATCH_TEST_CASE("the convs' fused clamp from C++: ReLU / ReLU6 / Hardtanh of the conv bit for bit, the default unclamped",
                "[api]") {
  torch::manual_seed(6);
  const torch::Tensor x = torch::randn({3, 8, 9, 7}) * 2;
  const torch::Tensor w = torch::randint(-127, 128, {16, 72}).to(torch::kChar);
  const torch::Tensor corr = torch::randint(-300, 300, {16}).to(torch::kInt), scale = torch::rand({16}) * 0.01;
  const torch::Tensor b = torch::randn({16}) - 1;
  for (const torch::Tensor& xi : {x, x.contiguous(at::MemoryFormat::ChannelsLast)}) {
    const torch::Tensor plain = qatkit::conv2d_int8(xi, w, 8, {3, 3}, {1, 1}, {1, 1}, {1, 1}, corr, scale, 0.04, 9, 0, 255, b);
    const torch::Tensor relu =
        qatkit::conv2d_int8(xi, w, 8, {3, 3}, {1, 1}, {1, 1}, {1, 1}, corr, scale, 0.04, 9, 0, 255, b, 1, 0.0);
    CATCH_CHECK(torch::equal(relu, torch::relu(plain)));
    CATCH_CHECK(plain.lt(0).any().item<bool>());  // the clamp had work: negative outputs unfused
    CATCH_CHECK(relu.strides() == plain.strides());
    const torch::Tensor hardtanh =
        qatkit::conv2d_int8(xi, w, 8, {3, 3}, {1, 1}, {1, 1}, {1, 1}, corr, scale, 0.04, 9, 0, 255, b, 1, -0.5, 0.25);
    CATCH_CHECK(torch::equal(hardtanh, torch::hardtanh(plain, -0.5, 0.25)));
    CATCH_CHECK(plain.gt(0.25).any().item<bool>());
    const torch::Tensor below = qatkit::conv2d_int8(xi, w, 8, {3, 3}, {1, 1}, {1, 1}, {1, 1}, corr, scale, 0.04, 9, 0,
                                                    255, b, 1, std::nullopt, 0.1);
    CATCH_CHECK(torch::equal(below, torch::clamp_max(plain, 0.1)));
  }
  CATCH_CHECK_THROWS_WITH(qatkit::conv2d_int8(x, w, 8, {3, 3}, {1, 1}, {1, 1}, {1, 1}, corr, scale, 0.04, 9, 0, 255, b,
                                              1, 1.0, 0.5),
                          Catch::Contains("conv2d_int8: clamp_min (1) must be at most clamp_max (0.5)"));
  CATCH_CHECK_THROWS_WITH(qatkit::conv2d_int8(x, w, 8, {3, 3}, {1, 1}, {1, 1}, {1, 1}, corr, scale, 0.04, 9, 0, 255, b,
                                              1, std::nan("")),
                          Catch::Contains("clamp_min and clamp_max must not be NaN"));
}

CATCH_TEST_CASE("integer kernels from C++: a backward through them raises, naming the op", "[api]") {
  torch::manual_seed(6);
  const torch::Tensor x = (torch::randn({3, 70}) * 3).requires_grad_(), w = torch::randint(-1, 2, {20, 70}).to(torch::kChar);
  const torch::Tensor ws = torch::rand({20}) + 0.05;
  torch::Tensor c = torch::cat({w.to(torch::kInt) + 1, torch::ones({20, 58}, torch::kInt)}, 1).reshape({20, 1, 4, 32});
  const torch::Tensor packed = (c.select(2, 0) + c.select(2, 1) * 4 + c.select(2, 2) * 16 + c.select(2, 3) * 64)
                                   .to(torch::kByte).reshape({20, 32}).contiguous();
  const torch::Tensor y = qatkit::linear_dynamic_int8(x, packed, 2, ws, 127);
  CATCH_CHECK(torch::equal(y, qatkit::linear_dynamic_int8(x.detach(), packed, 2, ws, 127)));
  CATCH_REQUIRE(y.requires_grad());  // the forward runs on a tensor that requires grad
  CATCH_CHECK_THROWS_WITH(y.sum().backward(), Catch::Contains("qatkit::linear_dynamic_int8 has no gradient") &&
                                                  Catch::Contains("inference only"));
  const auto [codes, alpha] = qatkit::binary_codes(x, "bitnet", 0);
  CATCH_CHECK(!codes.requires_grad());
  CATCH_CHECK_THROWS_WITH(alpha.sum().backward(), Catch::Contains("qatkit::binary_codes has no gradient"));
  torch::NoGradGuard no_grad;
  CATCH_CHECK(!qatkit::linear_dynamic_int8(x, packed, 2, ws, 127).requires_grad());
}

CATCH_TEST_CASE("bad input to every C++ op function: a table of calls and message fragments", "[api][bad_input]") {
  struct Case {
    const char* name;
    std::function<void()> call;
    const char* fragment;
  };
  const torch::Tensor x = torch::randn({4, 6});
  const torch::Tensor s1 = torch::ones({1}) * 0.1, z1 = torch::zeros({1}, torch::kInt);
  torch::Tensor out = torch::empty({4, 6});
  torch::Tensor out64 = torch::empty({4, 6}, torch::kDouble);
  torch::Tensor rmin = torch::full({1}, INFINITY), rmax = torch::full({1}, -INFINITY), sc = torch::ones({1});
  torch::Tensor zp = torch::zeros({1}, torch::kInt);
  const torch::Tensor on = torch::ones({1}, torch::kLong);
  const std::vector<Case> cases = {
      {"fake_quantize scale size", [&] { qatkit::fake_quantize(x, torch::ones({3}), z1, -8, 7, 0); },
       "scale must have 4 elements"},
      {"fake_quantize range", [&] { qatkit::fake_quantize(x, s1, z1, 7, 7); }, "quant_min"},
      {"fake_quantize integer input", [&] { qatkit::fake_quantize(x.to(torch::kInt), s1, z1, -8, 7); },
       "input must be float32, float64, float16 or bfloat16"},
      {"fake_quantize_out dtype", [&] { qatkit::fake_quantize_out(out64, x, s1, z1, -8, 7); },
       "out must have input's dtype"},
      {"fake_quantize_learnable axis", [&] { qatkit::fake_quantize_learnable(x, s1, z1.to(torch::kFloat), -8, 7, 5); },
       "axis"},
      {"pact_quantize alpha", [&] { qatkit::pact_quantize(x, torch::ones({2}), 15); }, "alpha"},
      {"pact_quantize quant_max", [&] { qatkit::pact_quantize(x, torch::ones({1}), 0); }, "quant_max"},
      {"quantize_per_token quant_max", [&] { qatkit::quantize_per_token(x, 0); }, "quant_max"},
      {"quantize_per_token_out dtype", [&] { qatkit::quantize_per_token_out(out64, x); },
       "out must have input's dtype"},
      {"quantize_per_tensor_dynamic input", [&] { qatkit::quantize_per_tensor_dynamic(x.to(torch::kLong)); },
       "input must be float32"},
      {"ternarize method", [&] { qatkit::ternarize(x, "sign"); }, "method must be one of 'absmean', 'twn', got 'sign'"},
      {"ternarize_out dtype", [&] { qatkit::ternarize_out(out64, x); }, "out must have input's dtype"},
      {"binarize scaling", [&] { qatkit::binarize(x, "xnor"); }, "scaling must be one of"},
      {"binarize estimator", [&] { qatkit::binarize(x, "none", std::nullopt, "tanh"); }, "estimator must be one of"},
      {"binarize beta", [&] { qatkit::binarize(x, "none", std::nullopt, "swish_sign", -1.0); },
       "beta must be positive and finite"},
      {"binarize seed dtype", [&] { qatkit::binarize(x, "none", std::nullopt, "clipped_ste", 1.0, torch::ones({1})); },
       "seed must be an int64 tensor"},
      {"binarize_out dtype", [&] { qatkit::binarize_out(out64, x); }, "out must have input's dtype"},
      {"binarize_apply alpha size",
       [&] { qatkit::detail::binarize_apply(x, std::nullopt, torch::ones({3}), 0, false, std::nullopt); },
       "alpha must have 4 elements"},
      {"binarize_backward grad shape",
       [&] {
         qatkit::detail::binarize_backward(torch::ones({2, 2}), x, std::nullopt, std::nullopt, "clipped_ste", 1.0);
       },
       "grad must have input's shape"},
      {"binarize_backward_out dtype",
       [&] { qatkit::detail::binarize_backward_out(out64, x, x, std::nullopt, std::nullopt, "clipped_ste", 1.0); },
       "out must have input's dtype"},
      {"fused observer buffer dtype",
       [&] {
         torch::Tensor zf = torch::zeros({1});
         qatkit::fused_observe_fake_quantize(x, rmin, rmax, sc, zf, on, on);
       },
       "zero_point must be Int"},
      {"fused observer momentum", [&] { qatkit::fused_observe_fake_quantize(x, rmin, rmax, sc, zp, on, on, 2.0); },
       "momentum"},
      {"choose_qparams group_size", [&] { qatkit::choose_qparams(x, -8, 7, true, std::nullopt, 4); }, "group_size"},
      {"choose_qparams non-finite", [&] { qatkit::choose_qparams(torch::full({3}, NAN), -8, 7, true); }, "finite"},
  };
  for (const auto& c : cases) {
    CATCH_INFO(c.name);
    CATCH_CHECK_THROWS_WITH(c.call(), Catch::Contains(c.fragment));
  }
}
