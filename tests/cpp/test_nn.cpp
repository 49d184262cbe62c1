// Catch2 tests of the C++ QAT modules (qatkit/nn.h): configs reject bad fields, prepare_qat swaps
// the right layers, QAT training from C++ lowers the loss, and the numerics follow the ops.
#include <ATen/autocast_mode.h>
#include <torch/torch.h>

#include "catch.h"
#include <cmath>
#include <functional>
#include <limits>
#include <sstream>
#include <vector>

#include "../../csrc/nn/integer.h"  // detail::cuda_linear_plan / integer_linear (internal)
#include "qatkit/nn.h"
#include "qatkit/ops.h"

namespace qnn = qatkit::nn;

namespace {

torch::nn::Sequential mlp() {
  return torch::nn::Sequential(torch::nn::Linear(16, 64), torch::nn::ReLU(), torch::nn::Linear(64, 64),
                               torch::nn::ReLU(), torch::nn::Linear(64, 4));
}

// A fixed teacher: 4 classes from a random linear map of Gaussian inputs.
std::pair<torch::Tensor, torch::Tensor> data(std::int64_t n) {
  torch::manual_seed(0);
  const torch::Tensor x = torch::randn({n, 16});
  const torch::Tensor teacher = torch::randn({16, 4});
  return {x, x.matmul(teacher).argmax(1)};
}

double train(torch::nn::Sequential& model, int steps, double lr, double* first_loss) {
  auto [x, y] = data(512);
  torch::optim::Adam opt(model->parameters(), torch::optim::AdamOptions(lr));
  double loss_value = 0;
  model->train();
  for (int s = 0; s < steps; ++s) {
    const auto idx = torch::arange((s * 64) % 512, (s * 64) % 512 + 64);
    const torch::Tensor loss = torch::nn::functional::cross_entropy(model->forward(x.index({idx})), y.index({idx}));
    opt.zero_grad();
    loss.backward();
    opt.step();
    loss_value = loss.item<double>();
    if (s == 0) *first_loss = loss_value;
  }
  return loss_value;
}

}  // namespace

CATCH_TEST_CASE("QuantSpec validation names the field and the choices", "[nn]") {
  qnn::QuantSpec s;
  s.granularity = "per_row";
  CATCH_CHECK_THROWS_WITH(s.validated(), Catch::Contains("QuantSpec.granularity must be one of 'per_tensor'"));
  s = {};
  s.bits = 1;
  CATCH_CHECK_THROWS_AS(s.validated(), c10::ValueError);
  CATCH_CHECK_THROWS_WITH(s.validated(), Catch::Contains("QuantSpec.bits must be in [2, 16] for kind 'int', got 1"));
  s = {};
  s.granularity = "per_token";
  CATCH_CHECK_THROWS_WITH(s.validated(), Catch::Contains("'per_token' needs scale='dynamic'"));
  CATCH_CHECK_THROWS_WITH(qnn::QATConfig::preset("w2a2"), Catch::Contains("unknown preset 'w2a2'"));
  qnn::QuantSpec t;
  t.kind = "ternary";
  CATCH_CHECK(t.validated().method == "absmean");
  CATCH_CHECK(qnn::QATConfig::w8a8().default_spec.weight->quant_min() == -127);
}

CATCH_TEST_CASE("prepare_qat swaps Linear and Conv2d, shares parameters, applies first/last", "[nn]") {
  auto model = mlp();
  auto q = qnn::prepare_qat(model, qnn::QATConfig::w8a8());
  CATCH_CHECK(q->size() == 5);
  CATCH_CHECK(q->ptr(0)->as<qnn::QuantLinearImpl>() != nullptr);
  CATCH_CHECK(q->ptr(1)->as<torch::nn::ReLUImpl>() != nullptr);
  CATCH_CHECK(
      q->ptr(0)->as<qnn::QuantLinearImpl>()->weight.is_same(model->ptr(0)->as<torch::nn::LinearImpl>()->weight));
  auto b = qnn::prepare_qat(model, qnn::QATConfig::bitnet_b158());  // first/last stay float
  CATCH_CHECK(b->ptr(0)->as<torch::nn::LinearImpl>() != nullptr);
  CATCH_CHECK(b->ptr(2)->as<qnn::BitLinearImpl>() != nullptr);
  CATCH_CHECK_THROWS_WITH(qnn::prepare_qat(torch::nn::Sequential(torch::nn::ReLU()), qnn::QATConfig::w8a8()),
                          Catch::Contains("nothing to quantize"));
  auto conv = torch::nn::Sequential(torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 4, 3).padding(1)), torch::nn::ReLU(),
                                    torch::nn::Flatten(), torch::nn::Linear(4 * 36, 3));
  auto qc = qnn::prepare_qat(conv, qnn::QATConfig::w8a8());
  CATCH_CHECK(qc->ptr(0)->as<qnn::QuantConv2dImpl>() != nullptr);
  CATCH_CHECK(qc->forward(torch::randn({2, 1, 6, 6})).sizes() == torch::IntArrayRef({2, 3}));
}

CATCH_TEST_CASE("QAT training from C++ lowers the loss for every preset", "[nn]") {
  for (const char* preset : {"w8a8", "w4a8", "w4a4_lsq", "ternary_twn", "bitnet_b158", "binary_w1a8", "xnor_w1a1"}) {
    CATCH_INFO(preset);
    torch::manual_seed(1);
    auto model = mlp();
    auto q = qnn::prepare_qat(model, qnn::QATConfig::preset(preset));
    double first = 0;
    const double last = train(q, 150, 3e-3, &first);
    CATCH_CHECK(last < 0.5 * first);
  }
}

CATCH_TEST_CASE("QuantLinear forward is fake_quantize on weight and observed input", "[nn]") {
  torch::manual_seed(2);
  torch::nn::Linear lin(8, 5);
  qnn::QuantLinear q(lin, qnn::QATConfig::w8a8().default_spec);
  q->train();
  const torch::Tensor x = torch::randn({3, 8});
  const torch::Tensor y = q(x);
  // reference from the ops: per-channel symmetric narrow weights; first observation of the input
  auto [ws, wz] = qatkit::choose_qparams(lin->weight.detach(), -127, 127, true, 0);
  const torch::Tensor wq = qatkit::fake_quantize(lin->weight, ws, wz, -127, 127, 0);
  auto [as, az] = qatkit::choose_qparams(x, -128, 127, false);
  const torch::Tensor xq = qatkit::fake_quantize(x, as, az, -128, 127);
  CATCH_CHECK(torch::equal(y, torch::nn::functional::linear(xq, wq, lin->bias)));
  // observer off: the range stays where it is
  qnn::enable_observer(*q, false);
  const torch::Tensor before = q->named_buffers()["input_fake_quant.running_min"].clone();
  q(x * 100);
  CATCH_CHECK(torch::equal(q->named_buffers()["input_fake_quant.running_min"], before));
  qnn::enable_fake_quant(*q, false);  // activations pass through
  q->eval();
  CATCH_CHECK(torch::equal(q(x), torch::nn::functional::linear(x, wq, lin->bias)));
}

CATCH_TEST_CASE("layers built from options: learned scales start from the float init weight, never from garbage",
                "[nn]") {
  // QuantLinear(options) once attached its weight quantizer to an uninitialized placeholder (a learned
  // scale computed from torch::empty's memory; the C++ loader's convert() failed now and then on it)
  const qnn::LayerSpec spec = qnn::QATConfig::w4a4_lsq().default_spec;
  const double qp = 7.0;  // the spec's quant_max: 4-bit signed
  torch::manual_seed(4);
  qnn::QuantLinear q(torch::nn::LinearOptions(16, 6), spec);
  torch::manual_seed(4);
  torch::nn::Linear plain(torch::nn::LinearOptions(16, 6));
  CATCH_CHECK(torch::equal(q->weight, plain->weight));  // the float module's initialization, as before
  const torch::Tensor want = (plain->weight.abs().mean(1) * 2 / std::sqrt(qp)).clamp_min(1e-6);
  const torch::Tensor got = q->named_parameters()["weight_fake_quant.scale"].detach().reshape({-1});
  CATCH_CHECK(torch::allclose(got, want, 1e-6, 0.0));
  torch::manual_seed(4);
  qnn::QuantConv2d c(torch::nn::Conv2dOptions(3, 4, 3), spec);
  torch::manual_seed(4);
  torch::nn::Conv2d pc(torch::nn::Conv2dOptions(3, 4, 3));
  const torch::Tensor cw = (pc->weight.abs().reshape({4, -1}).mean(1) * 2 / std::sqrt(qp)).clamp_min(1e-6);
  CATCH_CHECK(torch::allclose(c->named_parameters()["weight_fake_quant.scale"].detach().reshape({-1}), cw, 1e-6, 0.0));
  // a clone's reset() placeholder is zeros, and clone() then copies the values over
  auto copy = std::dynamic_pointer_cast<qnn::QuantLinearImpl>(q->clone());
  CATCH_REQUIRE(copy);
  CATCH_CHECK(torch::equal(copy->named_parameters()["weight_fake_quant.scale"], q->named_parameters()["weight_fake_quant.scale"]));
}

CATCH_TEST_CASE("bad input to the C++ QAT API: a table of calls and message fragments", "[nn][bad_input]") {
  struct Case {
    const char* name;
    std::function<void()> call;
    const char* fragment;
  };
  const auto spec_with = [](auto edit) {
    qnn::QuantSpec s;
    edit(s);
    return s;
  };
  const std::vector<Case> cases = {
      {"kind", [&] { spec_with([](auto& s) { s.kind = "float"; }).validated(); },
       "QuantSpec.kind must be one of 'int', 'ternary', 'binary', got 'float'"},
      {"bits", [&] { spec_with([](auto& s) { s.bits = 17; }).validated(); }, "QuantSpec.bits must be in [2, 16]"},
      {"granularity", [&] { spec_with([](auto& s) { s.granularity = "rows"; }).validated(); },
       "QuantSpec.granularity must be one of"},
      {"group_size", [&] { spec_with([](auto& s) { s.granularity = "per_group"; }).validated(); },
       "QuantSpec.group_size must be a positive int"},
      {"stray group_size", [&] { spec_with([](auto& s) { s.group_size = 8; }).validated(); },
       "group_size is only for granularity 'per_group'"},
      {"scale", [&] { spec_with([](auto& s) { s.scale = "minmax"; }).validated(); }, "QuantSpec.scale must be one of"},
      {"observer", [&] { spec_with([](auto& s) { s.observer = "ema"; }).validated(); },
       "QuantSpec.observer must be one of"},
      {"momentum", [&] { spec_with([](auto& s) { s.momentum = 2.0; }).validated(); },
       "QuantSpec.momentum must be in [0, 1], got 2"},
      {"ternary method", [&] { spec_with([](auto& s) { s.kind = "ternary", s.method = "sign"; }).validated(); },
       "QuantSpec.method must be one of 'absmean', 'twn', got 'sign'"},
      {"binary estimator", [&] { spec_with([](auto& s) { s.kind = "binary", s.estimator = "tanh"; }).validated(); },
       "QuantSpec.estimator must be one of 'identity', 'clipped_ste'"},
      {"learned binary", [&] { spec_with([](auto& s) { s.kind = "binary", s.scale = "learned"; }).validated(); },
       "'learned' is for kind 'int'"},
      {"per_token static", [&] { spec_with([](auto& s) { s.granularity = "per_token"; }).validated(); },
       "'per_token' needs scale='dynamic'"},
      {"unknown preset", [] { qnn::QATConfig::preset("w3a3"); }, "unknown preset 'w3a3'; valid presets:"},
      {"dynamic weight",
       [&] {
         qnn::WeightFakeQuantizer(spec_with([](auto& s) { s.scale = "dynamic"; }), torch::randn({4, 4}));
       },
       "'dynamic' is for activations"},
      {"nothing to quantize",
       [] { qnn::prepare_qat(torch::nn::Sequential(torch::nn::ReLU()), qnn::QATConfig::w8a8()); },
       "nothing to quantize"},
      {"all skipped",
       [] {
         auto c = qnn::QATConfig::w8a8();
         c.skip = {"0"};
         qnn::prepare_qat(torch::nn::Sequential(torch::nn::Linear(2, 2)), c);
       },
       "every supported layer was skipped"},
      {"integer input",
       [] {
         qnn::QuantLinear q(torch::nn::Linear(4, 2), qnn::QATConfig::w8a8().default_spec);
         q(torch::ones({2, 4}, torch::kLong));
       },
       "input must be float32, float64, float16 or bfloat16, got Long"},
      {"wrong width",
       [] {
         qnn::QuantLinear q(torch::nn::Linear(4, 2), qnn::QATConfig::w8a8().default_spec);
         q(torch::ones({2, 5}));
       },
       "mat1 and mat2 shapes cannot be multiplied"},
      {"histogram observer",
       [&] { qnn::ActFakeQuantizer(spec_with([](auto& s) { s.symmetric = false, s.observer = "kl"; })); },
       "QuantSpec.observer 'kl' is a Python histogram observer"},
      {"static per-group activations",
       [&] {
         qnn::ActFakeQuantizer(spec_with([](auto& s) { s.granularity = "per_group", s.group_size = 4; }));
       },
       "'per_group' for activations needs scale='dynamic'"},
      {"conv+bn channels",
       [] {
         qnn::QuantConvBn2d(torch::nn::Conv2d(3, 4, 3), torch::nn::BatchNorm2d(5), qnn::QATConfig::w8a8().default_spec);
       },
       "bn.num_features (5) must equal conv.out_channels (4)"},
      {"conv+bn without affine",
       [] {
         qnn::QuantConvBn2d(torch::nn::Conv2d(3, 4, 3), torch::nn::BatchNorm2d(torch::nn::BatchNorm2dOptions(4).affine(false)),
                            qnn::QATConfig::w8a8().default_spec);
       },
       "must be affine and track running statistics"},
      {"bare layer in place",
       [] { qnn::prepare_qat_inplace(*torch::nn::Linear(2, 2), qnn::QATConfig::w8a8()); },
       "the model is a bare layer"},
      {"calibrate without quantizers",
       [] {
         auto seq = torch::nn::Sequential(torch::nn::Linear(2, 2));
         qnn::calibrate(*seq, {torch::ones({1, 2})}, [](const torch::Tensor&) {});
       },
       "the model has no activation quantizers"},
      {"calibrate without forward",
       [] {
         auto q = qnn::prepare_qat(torch::nn::Sequential(torch::nn::Linear(2, 2)), qnn::QATConfig::w8a8());
         qnn::calibrate(*q, {torch::ones({1, 2})}, nullptr);
       },
       "forward must be a callable"},
      {"calibrate with every observer off",
       [] {
         auto q = qnn::prepare_qat(torch::nn::Sequential(torch::nn::Linear(2, 2)), qnn::QATConfig::w8a8());
         qnn::enable_observer(*q, false);
         qnn::calibrate(*q, {torch::ones({1, 2})}, [&](const torch::Tensor& b) { q->forward(b); });
       },
       "every activation observer is switched off (1: "},
      {"convert without QAT layers",
       [] {
         auto seq = torch::nn::Sequential(torch::nn::Linear(2, 2));
         qnn::convert(*seq);
       },
       "the model has no QAT layers"},
      {"ptq without batches",
       [] {
         auto seq = torch::nn::Sequential(torch::nn::Linear(2, 2));
         qnn::ptq(*seq, {}, [](const torch::Tensor&) {}, qnn::QATConfig::w8a8());
       },
       "ptq: batches holds no calibration batch"},
      {"ptq with an empty batch",
       [] {
         auto seq = torch::nn::Sequential(torch::nn::Linear(2, 2));
         qnn::ptq(*seq, {torch::ones({1, 2}), torch::ones({0, 2})}, [](const torch::Tensor&) {}, qnn::QATConfig::w8a8());
       },
       "ptq: calibration batch 1 is empty"},
      {"convert twice",
       [] {
         qnn::QuantLinear q(torch::nn::Linear(4, 2), qnn::LayerSpec{qnn::QATConfig::w8a8().default_spec.weight, {}});
         q->convert();
         q->convert();
       },
       "the layer is already converted"},
  };
  for (const auto& c : cases) {
    CATCH_INFO(c.name);
    CATCH_CHECK_THROWS_WITH(c.call(), Catch::Contains(c.fragment));
  }
}

CATCH_TEST_CASE("torch::save / torch::load restore the quantizer state and its host-side flags", "[nn]") {
  torch::manual_seed(4);
  torch::nn::Linear lin(8, 4);
  qnn::QuantLinear a(lin, qnn::QATConfig::w4a4_lsq().default_spec);
  const torch::Tensor x = torch::randn({3, 8});
  a(x);  // initializes the learned activation scale from this batch
  std::stringstream buf;
  torch::save(a, buf);
  qnn::QuantLinear b(torch::nn::Linear(8, 4), qnn::QATConfig::w4a4_lsq().default_spec);
  torch::load(b, buf);
  CATCH_CHECK(torch::equal(b(x * 10), a(x * 10)));  // b does not re-initialize from the new batch
  qnn::enable_fake_quant(*a, false);
  std::stringstream buf2;
  torch::save(a, buf2);
  torch::load(b, buf2);
  CATCH_CHECK(torch::equal(b(x), a(x)));  // pass-through activations after the load too
}

CATCH_TEST_CASE("a C++ checkpoint records each quantizer's spec; loading another preset's fails naming the key",
                "[nn]") {
  torch::manual_seed(5);
  auto w8 = qnn::prepare_qat(mlp(), qnn::QATConfig::w8a8());
  std::stringstream buf;
  torch::save(w8, buf);
  auto same = qnn::prepare_qat(mlp(), qnn::QATConfig::w8a8());
  torch::load(same, buf);  // same config: loads
  const torch::Tensor x = torch::randn({2, 16});
  same->eval();
  w8->eval();
  CATCH_CHECK(torch::equal(same->forward(x), w8->forward(x)));
  auto other = qnn::prepare_qat(mlp(), qnn::QATConfig::ternary_twn());  // first/last int8, middle ternary
  std::stringstream buf2;
  torch::save(w8, buf2);
  CATCH_CHECK_THROWS_AS(torch::load(other, buf2), c10::ValueError);
  std::stringstream buf3;
  torch::save(w8, buf3);
  CATCH_CHECK_THROWS_WITH(torch::load(other, buf3),
                          Catch::Contains("load: key '2.weight_fake_quant.spec' holds a quantizer saved with another "
                                          "spec (fields [kind, bits, narrow_range, method] differ: saved kind=\"int\", bits=8"));
}

CATCH_TEST_CASE("presets and rules come from the table: binaryconnect, parameters, names", "[nn]") {
  const auto bc = qnn::QATConfig::binaryconnect();
  CATCH_CHECK(bc.name == "binaryconnect");
  CATCH_CHECK(bc.default_spec.weight->latent_clip.value() == 1.0);
  CATCH_CHECK(!bc.default_spec.activation.has_value());
  CATCH_CHECK(qnn::QATConfig::binaryconnect(true).name == "binaryconnect_stoch");
  CATCH_CHECK(qnn::QATConfig::binaryconnect(true).default_spec.weight->stochastic);
  const auto wo = qnn::QATConfig::int4_weight_only(128, false);
  CATCH_CHECK(wo.name == "int4_weight_only_g128");
  CATCH_CHECK(!wo.default_spec.activation);
  CATCH_CHECK(!wo.default_spec.weight->symmetric);
  CATCH_CHECK(*wo.default_spec.weight->group_size == 128);
  CATCH_CHECK(qnn::QATConfig::int4_weight_only().name == "int4_weight_only_g32_sym");
  CATCH_CHECK(qnn::QATConfig::binary_weight_only().default_spec.weight->kind == "binary");
  CATCH_CHECK(qnn::QATConfig::w4a8(64).default_spec.weight->group_size.value() == 64);
  CATCH_CHECK(qnn::QATConfig::w4a8(64).name == "w4a8_g64");
  CATCH_CHECK(qnn::QATConfig::first_last_spec("int8")->weight->narrow_range);
  CATCH_CHECK(!qnn::QATConfig::first_last_spec("float").has_value());
  CATCH_CHECK_THROWS_WITH(qnn::QATConfig::first_last_spec("int4"), Catch::Contains("QATConfig.first_last must be"));
  CATCH_CHECK_THROWS_WITH(qnn::QATConfig::preset("w8a8", "{\"group_size\": 8}"),
                          Catch::Contains("preset 'w8a8' has no parameter 'group_size'"));
  CATCH_CHECK_THROWS_WITH(qnn::QuantSpec::from_json("{\"bits\": 4,"), Catch::Contains("malformed JSON at byte"));
  // JSON's number grammar, as Python's json reads it: "+4", "04", ".5", "4.", hex, NaN and 1e999 are
  // not numbers (strtod took the first five); 4.0 and 4e0 are floats (Python: float 4.0), no int
  for (const char* bad :
       {"+4", "04", "-04", ".5", "4.", "0x4", "4e", "4e+", "NaN", "Infinity", "-Infinity", "1e999", "-"}) {
    CATCH_INFO(bad);
    CATCH_CHECK_THROWS_WITH(qnn::QuantSpec::from_json(std::string("{\"bits\": ") + bad + "}"),
                            Catch::Contains("QuantSpec::from_json: malformed JSON at byte"));
  }
  for (const char* as_float : {"4.0", "4e0", "0.4e1", "4E+0"}) {
    CATCH_INFO(as_float);
    CATCH_CHECK_THROWS_WITH(qnn::QuantSpec::from_json(std::string("{\"bits\": ") + as_float + "}"),
                            Catch::Contains("QuantSpec.bits must be an integer, got 4 (written as a float)"));
  }
  CATCH_CHECK(qnn::QuantSpec::from_json("{\"bits\": 4}").bits == 4);
  // \u escapes: any code point as UTF-8 (Python's json.dumps escapes every non-ASCII character, so a
  // layer named "capa_\u00f1" arrives escaped), a pair for one outside the BMP; no lone surrogate
  CATCH_CHECK(qnn::QuantSpec::from_json("{\"kind\": \"\\u0069nt\"}").kind == "int");
  CATCH_CHECK_THROWS_WITH(qnn::QuantSpec::from_json("{\"kind\": \"\\u00f1\\u20AC\\ud83d\\ude00\"}"),
                          Catch::Contains("got '\xC3\xB1\xE2\x82\xAC\xF0\x9F\x98\x80'"));
  for (const char* bad : {"\\ud83d", "\\ud83dx", "\\ude00", "\\ud83d\\u0041", "\\ud83d\\n"}) {
    CATCH_INFO(bad);
    CATCH_CHECK_THROWS_WITH(qnn::QuantSpec::from_json(std::string("{\"kind\": \"") + bad + "\"}"),
                            Catch::Contains("a lone surrogate \\u escape"));
  }
  CATCH_CHECK_THROWS_WITH(qnn::QuantSpec::from_json("{\"kind\": \"\\u+041\"}"), Catch::Contains("bad \\u escape"));
  CATCH_CHECK_THROWS_WITH(qnn::QuantSpec::from_json("{\"kind\": \"\\u04"), Catch::Contains("short \\u escape"));
  CATCH_CHECK(qnn::QuantSpec::from_json("{\"momentum\": 5e-2}").momentum == 0.05);
  CATCH_CHECK(qnn::QuantSpec::from_json("{\"momentum\": 0.1}").momentum == 0.1);  // correctly rounded
  CATCH_CHECK(qnn::QuantSpec::from_json("{\"momentum\": 1e-400}").momentum == 0.0);  // underflow: 0, as in Python
  CATCH_CHECK(qnn::QuantSpec::from_json("{\"momentum\": 4.9e-324}").momentum == 4.9e-324);  // the least subnormal
  CATCH_CHECK(qnn::QuantSpec::from_json("{\"momentum\": 1}").momentum == 1.0);  // an int where a float goes
  CATCH_CHECK(qnn::QuantSpec::from_json(bc.default_spec.weight->to_json()).to_json() ==
              bc.default_spec.weight->to_json());
}

CATCH_TEST_CASE("an all-zero binary channel converts to zeros, not +-1 (scale 0 kept)", "[nn]") {
  // a dead or structurally pruned output channel: binarize gives sign * mean|w| = +-0; convert used
  // to store scale 1 there, so the converted layer computed with +-1 weights
  torch::manual_seed(8);
  for (const auto& cfg : {qnn::QATConfig::binaryconnect(), qnn::QATConfig::binary_w1a8()}) {
    auto seq = torch::nn::Sequential(torch::nn::Linear(16, 8), torch::nn::ReLU(), torch::nn::Linear(8, 4));
    auto c = cfg;
    c.first_last = "";
    auto q = qnn::prepare_qat(seq, c);
    {
      torch::NoGradGuard ng;
      q->ptr(0)->as<qnn::QuantLinear>()->weight[3].zero_();
    }
    q->train();
    q->forward(torch::randn({16, 16}));
    q->eval();
    const torch::Tensor x = torch::randn({5, 16});
    const torch::Tensor want = q->forward(x);
    qnn::convert(*q);
    CATCH_CHECK(torch::equal(q->forward(x), want));
  }
}

CATCH_TEST_CASE("stochastic binary weights draw from a step counter; clip_latent_weights clips", "[nn]") {
  torch::manual_seed(6);
  torch::nn::Linear lin(32, 8);
  qnn::QuantLinear q(lin, qnn::QATConfig::binaryconnect(true).default_spec);
  q->train();
  const torch::Tensor w1 = q->quantized_weight().detach().clone();
  const torch::Tensor w2 = q->quantized_weight().detach().clone();
  CATCH_CHECK(q->weight_fake_quant->named_buffers()["step"].item<std::int64_t>() == 2);
  CATCH_CHECK(!torch::equal(w1, w2));  // a new draw per step (256 signs)
  q->eval();
  const torch::Tensor e = q->quantized_weight();
  CATCH_CHECK(torch::equal(e, q->quantized_weight()));  // deterministic at eval
  CATCH_CHECK(torch::equal(e, qatkit::binarize(q->weight.detach(), "mean_abs", 0, "clipped_ste")));
  {
    torch::NoGradGuard ng;
    q->weight.mul_(10);
  }
  CATCH_CHECK(qnn::clip_latent_weights(*q) == 1);
  CATCH_CHECK(q->weight.abs().max().item<float>() <= 1.0f);
  qnn::QuantLinear plain(torch::nn::Linear(4, 4), qnn::QATConfig::w8a8().default_spec);
  CATCH_CHECK(qnn::clip_latent_weights(*plain) == 0);  // no latent_clip in its spec
}

CATCH_TEST_CASE("prepare_qat: fnmatch skip patterns, overrides, Conv+BN folding and unused patterns warn", "[nn]") {
  auto c = qnn::QATConfig::w8a8();
  c.skip = {"[02]"};  // layers 0 and 2 stay float
  c.overrides = {{"4", qnn::QATConfig::ternary_twn().default_spec}};
  auto q = qnn::prepare_qat(mlp(), c);
  CATCH_CHECK(q->ptr(0)->as<torch::nn::Linear>() != nullptr);
  CATCH_CHECK(q->ptr(2)->as<torch::nn::Linear>() != nullptr);
  CATCH_CHECK(q->ptr(4)->as<qnn::QuantLinear>()->weight_fake_quant->spec().kind == "ternary");
  std::vector<std::string> warnings;
  {
    struct Capture : c10::WarningHandler {
      std::vector<std::string>* out;
      void process(const c10::Warning& w) override { out->push_back(w.msg()); }
    } capture;
    capture.out = &warnings;
    c10::WarningUtils::WarningHandlerGuard guard(&capture);
    auto c2 = qnn::QATConfig::w8a8();
    c2.skip = {"9*"};
    auto folded = qnn::prepare_qat(torch::nn::Sequential(torch::nn::Conv2d(3, 4, 3), torch::nn::BatchNorm2d(4),
                                                         torch::nn::ReLU(), torch::nn::Conv2d(4, 4, 3)),
                                   c2);
    CATCH_CHECK(folded->ptr(0)->as<qnn::QuantConvBn2d>() != nullptr);
    CATCH_CHECK(folded->ptr(1)->as<torch::nn::Identity>() != nullptr);
  }
  std::string all;
  for (const auto& w : warnings) all += w + "\n";
  CATCH_CHECK_THAT(all, Catch::Contains("pattern '9*' matched no supported layer"));
}

CATCH_TEST_CASE("learned activation ranges refuse a non-finite first batch and skip empty ones", "[nn]") {
  torch::manual_seed(7);
  auto q = qnn::prepare_qat(mlp(), qnn::QATConfig::w4a4_lsq());
  q->train();
  auto* mid = q->ptr(2)->as<qnn::QuantLinear>();
  auto bad = torch::randn({4, 64});
  bad[0][0] = std::numeric_limits<float>::quiet_NaN();
  CATCH_CHECK_THROWS_AS(mid->input_fake_quant->forward(bad), c10::ValueError);
  CATCH_CHECK_THROWS_WITH(mid->input_fake_quant->forward(bad),
                          Catch::Contains("activation quantizer '2.input_fake_quant': the first batch"));
  CATCH_CHECK(mid->input_fake_quant->named_buffers()["initialized"].item<int>() == 0);
  CATCH_CHECK(mid->input_fake_quant->forward(torch::randn({0, 64})).numel() == 0);  // empty: nothing to learn
  CATCH_CHECK(mid->input_fake_quant->named_buffers()["initialized"].item<int>() == 0);
  mid->input_fake_quant->forward(torch::randn({4, 64}));
  CATCH_CHECK(mid->input_fake_quant->named_buffers()["initialized"].item<int>() == 1);
}

CATCH_TEST_CASE("a learned activation range is not initialized by an eval-mode forward", "[nn]") {
  torch::manual_seed(9);
  auto q = qnn::prepare_qat(mlp(), qnn::QATConfig::w4a4_lsq());
  auto* mid = q->ptr(2)->as<qnn::QuantLinear>();
  q->eval();
  q->forward(torch::randn({4, 16}) * 100);  // eval observes nothing (a warning)
  CATCH_CHECK(mid->input_fake_quant->named_buffers()["initialized"].item<int>() == 0);
  CATCH_CHECK(mid->input_fake_quant->named_parameters()["scale"].item<float>() == 1.0f);
  q->train();
  q->forward(torch::randn({4, 16}));
  CATCH_CHECK(mid->input_fake_quant->named_buffers()["initialized"].item<int>() == 1);
}

CATCH_TEST_CASE("a learned activation range copied into an earlier copy is not re-initialized (an EMA of the model)",
                "[nn]") {
  torch::manual_seed(8);
  auto src = qnn::prepare_qat(mlp(), qnn::QATConfig::w4a4_lsq());
  auto ema = std::dynamic_pointer_cast<torch::nn::SequentialImpl>(src->clone());  // made before training
  src->train();
  src->forward(torch::randn({4, 16}));
  {
    torch::NoGradGuard ng;  // what a C++ EMA does: copy (or average) every parameter and buffer in place
    auto from = src->named_parameters(), to = ema->named_parameters();
    for (auto& kv : from) to[kv.key()].copy_(kv.value());
    auto bfrom = src->named_buffers(), bto = ema->named_buffers();
    for (auto& kv : bfrom) bto[kv.key()].copy_(kv.value());
  }
  auto* mid = ema->ptr(2)->as<qnn::QuantLinear>();
  const torch::Tensor before = mid->input_fake_quant->named_parameters()["scale"].clone();
  CATCH_CHECK(mid->input_fake_quant->has_observed());
  ema->eval();
  ema->forward(torch::randn({4, 16}) * 100);
  CATCH_CHECK(torch::equal(mid->input_fake_quant->named_parameters()["scale"], before));
}

namespace {

std::string captured(const std::function<void()>& f) {
  struct Capture : c10::WarningHandler {
    std::string out;
    void process(const c10::Warning& w) override { out += w.msg() + "\n"; }
  } capture;
  c10::WarningUtils::WarningHandlerGuard guard(&capture);
  f();
  return capture.out;
}

// A custom module as LibTorch users write them: typed members, containers inside, a custom
// submodule holding its own Sequential.
struct Block : torch::nn::Module {
  Block() : body(register_module("body", torch::nn::Sequential(torch::nn::Conv2d(8, 8, 1), torch::nn::ReLU()))) {}
  torch::Tensor forward(const torch::Tensor& x) { return body->forward(x); }
  torch::nn::Sequential body;
};

struct Net : torch::nn::Module {
  Net()
      : features(register_module("features", torch::nn::Sequential(
                                                 torch::nn::Conv2d(torch::nn::Conv2dOptions(3, 8, 3).padding(1)),
                                                 torch::nn::BatchNorm2d(8), torch::nn::ReLU()))),
        block(register_module("block", std::make_shared<Block>())),
        blocks(register_module("blocks", torch::nn::ModuleList(torch::nn::Sequential(torch::nn::Linear(8, 8)),
                                                                torch::nn::Sequential(torch::nn::Linear(8, 8))))),
        heads(register_module("heads", torch::nn::ModuleDict(torch::OrderedDict<std::string, std::shared_ptr<Module>>{
                                           {"cls", torch::nn::Sequential(torch::nn::Linear(8, 4)).ptr()}}))),
        direct(register_module("direct", torch::nn::Linear(8, 8))),
        seq1d(register_module("seq1d", torch::nn::Sequential(torch::nn::Conv1d(8, 8, 1)))) {}

  torch::Tensor forward(const torch::Tensor& x) {
    torch::Tensor h = block->forward(features->forward(x)).mean({2, 3});          // [N, 8]
    h = seq1d->forward(h.unsqueeze(-1)).squeeze(-1);                               // Conv1d
    for (const auto& b : *blocks) h = b->as<torch::nn::Sequential>()->forward(h);  // ModuleList
    h = direct(h);
    return heads["cls"]->as<torch::nn::Sequential>()->forward(h);
  }

  torch::nn::Sequential features;
  std::shared_ptr<Block> block;
  torch::nn::ModuleList blocks;
  torch::nn::ModuleDict heads;
  torch::nn::Linear direct;
  torch::nn::Sequential seq1d;
};

}  // namespace

CATCH_TEST_CASE("freeze_bn names the BatchNorms it leaves training (unfolded)", "[nn]") {
  // Python: freeze_bn. A BatchNorm after a ReLU is not folded; freeze_bn switched the folded layer
  // only, and the recipe's freeze left that one on batch statistics without a word
  torch::manual_seed(4);
  auto model = torch::nn::Sequential(torch::nn::Conv2d(3, 8, 3), torch::nn::BatchNorm2d(8), torch::nn::ReLU(),
                                     torch::nn::BatchNorm2d(8), torch::nn::Conv2d(8, 4, 3));
  auto cfg = qnn::QATConfig::w8a8();
  cfg.first_last = "";
  std::shared_ptr<torch::nn::SequentialImpl> q;
  (void)captured([&] { q = qnn::prepare_qat(model, cfg).ptr(); });
  const std::string out = captured([&] { qnn::freeze_bn(*q); });
  CATCH_CHECK_THAT(out, Catch::Contains("freeze_bn: 1 BatchNorm layer(s) were not folded (3;"));
  CATCH_CHECK(captured([&] { qnn::freeze_bn(*q, false); }).empty());
}

CATCH_TEST_CASE("spec fields that change nothing in their role are named in a warning", "[nn]") {
  // Python: prepare._unused_fields. An MSE observer on weights (whose ranges are their own min /
  // max) was taken and ignored; a moving-average momentum on a dynamic input likewise
  qnn::QATConfig cfg = qnn::QATConfig::w8a8();
  cfg.first_last = "";
  cfg.default_spec.weight->observer = "mse";
  cfg.default_spec.activation->scale = "dynamic";
  cfg.default_spec.activation->granularity = "per_token";
  cfg.default_spec.activation->is_signed = true;
  cfg.default_spec.activation->symmetric = true;
  cfg.default_spec.activation->momentum = 0.5;
  const std::string out = captured([&] { (void)qnn::prepare_qat(mlp(), cfg); });
  CATCH_CHECK_THAT(out, Catch::Contains("prepare_qat: spec fields that change nothing: default.weight: observer='mse'"));
  CATCH_CHECK_THAT(out, Catch::Contains("default.activation: momentum=0.5"));
  CATCH_CHECK(captured([] { (void)qnn::prepare_qat(mlp(), qnn::QATConfig::w4a4_lsq()); }).find("change nothing") ==
              std::string::npos);
}

CATCH_TEST_CASE("weights written in place after prepare_qat start the LSQ step sizes from them", "[nn]") {
  // Python: check_weight_since_prepare. Pretrained weights copied in after prepare_qat left the step
  // sizes initialized from the prepared ones (0.2x for weights 5x larger); the first training
  // forward now starts them from the current weights, and keeps step sizes set since
  auto cfg = qnn::QATConfig::w4a4_lsq();
  cfg.first_last = "";
  torch::manual_seed(1);
  auto pre = mlp();
  {
    torch::NoGradGuard ng;
    for (auto& p : pre->parameters()) p.mul_(5);
  }
  auto want = qnn::prepare_qat(pre, cfg);
  torch::manual_seed(2);
  auto got = qnn::prepare_qat(mlp(), cfg);
  auto src = want->named_parameters();
  for (auto& kv : got->named_parameters()) {
    if (kv.key().find("fake_quant") == std::string::npos) kv.value().data().copy_(src[kv.key()]);
  }
  auto* lw = want->ptr(0)->as<qnn::QuantLinear>();
  auto* lg = got->ptr(0)->as<qnn::QuantLinear>();
  const torch::Tensor s_want = lw->weight_fake_quant->named_parameters()["scale"];
  CATCH_CHECK_FALSE(torch::equal(lg->weight_fake_quant->named_parameters()["scale"], s_want));  // stale until trained
  got->train();
  got->forward(torch::randn({4, 16}));
  CATCH_CHECK(torch::equal(lg->weight_fake_quant->named_parameters()["scale"], s_want));
  // set since prepare: kept
  torch::manual_seed(3);
  auto kept = qnn::prepare_qat(mlp(), cfg);
  auto* lk = kept->ptr(0)->as<qnn::QuantLinear>();
  {
    torch::NoGradGuard ng;
    lk->weight_fake_quant->named_parameters()["scale"].fill_(0.125);
    lk->weight.mul_(5);
  }
  kept->train();
  kept->forward(torch::randn({4, 16}));
  CATCH_CHECK(torch::all(lk->weight_fake_quant->named_parameters()["scale"] == 0.125).item<bool>());
}

CATCH_TEST_CASE("an optimizer built before prepare_qat lacks the learned step sizes: warned once", "[nn]") {
  // The float layers' weights are shared with the QAT layers, so such an optimizer trains them, but
  // the LSQ step sizes prepare_qat creates get gradients and never move (python: optimizer_check.py)
  auto x = torch::randn({32, 16});
  auto run = [&](torch::nn::Sequential& model, torch::optim::Optimizer& opt, int steps) {
    model->train();
    for (int s = 0; s < steps; ++s) {
      opt.zero_grad();
      model->forward(x).pow(2).mean().backward();
      opt.step();
    }
  };
  for (const char* conv : {"linear", "conv_bn"}) {
    CATCH_SECTION(conv) {
      torch::manual_seed(3);
      const bool is_conv = std::string(conv) == "conv_bn";
      auto model = is_conv ? torch::nn::Sequential(torch::nn::Unflatten(1, std::vector<std::int64_t>{1, 4, 4}),
                                                   torch::nn::Conv2d(1, 8, 3), torch::nn::BatchNorm2d(8),
                                                   torch::nn::ReLU(), torch::nn::Flatten(), torch::nn::Linear(32, 4))
                           : mlp();
      torch::optim::SGD before(model->parameters(), 0.01);
      auto cfg = qnn::QATConfig::w4a4_lsq();
      cfg.first_last = "";
      auto q = qnn::prepare_qat(model, cfg);
      std::string out = captured([&] { run(q, before, 6); });
      CATCH_CHECK_THAT(out, Catch::Contains("kept their gradients and values over 3 optimizer steps"));
      CATCH_CHECK_THAT(out, Catch::Contains(is_conv ? "'1.weight_fake_quant.scale'" : "'0.weight_fake_quant.scale'"));
      std::size_t warned = 0;  // once per layer over the 6 steps
      for (std::size_t at = out.find("kept their gradients"); at != std::string::npos; at = out.find("kept their gradients", at + 1)) {
        ++warned;
      }
      CATCH_CHECK(warned == (is_conv ? 2u : 3u));
      // built after prepare_qat: no warning; step sizes kept fixed on purpose: none either
      torch::manual_seed(3);
      auto q2 = qnn::prepare_qat(is_conv ? torch::nn::Sequential(torch::nn::Unflatten(1, std::vector<std::int64_t>{1, 4, 4}),
                                                                 torch::nn::Conv2d(1, 8, 3), torch::nn::BatchNorm2d(8),
                                                                 torch::nn::ReLU(), torch::nn::Flatten(),
                                                                 torch::nn::Linear(32, 4))
                                         : mlp(),
                                 cfg);
      torch::optim::SGD after(q2->parameters(), 0.01);
      CATCH_CHECK(captured([&] { run(q2, after, 6); }).find("kept their gradients") == std::string::npos);
      std::vector<torch::Tensor> weights;
      for (const auto& kv : q2->named_parameters()) {
        if (kv.key().find("fake_quant") != std::string::npos) kv.value().requires_grad_(false);
        else weights.push_back(kv.value());
      }
      torch::optim::SGD only_weights(weights, 0.01);
      CATCH_CHECK(captured([&] { run(q2, only_weights, 6); }).find("kept their gradients") == std::string::npos);
    }
  }
}

CATCH_TEST_CASE("prepare_qat walks a module tree: containers at any depth, typed members warned", "[nn]") {
  torch::manual_seed(0);
  auto net = std::make_shared<Net>();
  qnn::QATReport report;
  const std::string warned = captured([&] { report = qnn::prepare_qat_inplace(*net, qnn::QATConfig::w8a8()); });
  // swapped in place inside every container, at any depth; the BatchNorm neighbour is folded
  CATCH_CHECK(net->features->ptr(0)->as<qnn::QuantConvBn2d>() != nullptr);
  CATCH_CHECK(net->features->ptr(1)->as<torch::nn::Identity>() != nullptr);
  CATCH_CHECK(net->block->body->ptr(0)->as<qnn::QuantConv2d>() != nullptr);
  CATCH_CHECK(net->blocks->ptr(1)->as<torch::nn::Sequential>()->ptr(0)->as<qnn::QuantLinear>() != nullptr);
  CATCH_CHECK(net->heads["cls"]->as<torch::nn::Sequential>()->ptr(0)->as<qnn::QuantLinear>() != nullptr);
  CATCH_CHECK(net->seq1d->ptr(0)->as<qnn::QuantConv1d>() != nullptr);
  // the typed member stays float, with a warning and a report row naming it
  CATCH_CHECK_THAT(warned, Catch::Contains("'direct' stays float: a typed member of the custom module"));
  const qnn::LayerReport* row = report.find("direct");
  CATCH_REQUIRE(row != nullptr);
  CATCH_CHECK(row->qat.empty());
  CATCH_CHECK_THAT(row->reason, Catch::Contains("qatkit::nn::QuantLinear"));
  CATCH_CHECK(report.find("features.0")->qat == "QuantConvBn2d");
  CATCH_CHECK(report.find("blocks.0.0")->rule == "default");
  CATCH_CHECK_THAT(report.to_string(), Catch::Contains("block.body.0"));
  // it trains and evaluates
  net->train();
  const torch::Tensor y = net->forward(torch::randn({2, 3, 6, 6}));
  y.sum().backward();
  CATCH_CHECK(y.sizes() == torch::IntArrayRef({2, 4}));
}

CATCH_TEST_CASE("layers of kinds with no QAT form stay float with one warning and a report row each", "[nn]") {
  // an LSTM, a transposed conv and a custom module holding its own weight matrix: before, prepare_qat
  // left them float without a word
  struct Own : torch::nn::Module {
    Own() : weight(register_parameter("weight", torch::randn({8, 8}))) {}
    torch::Tensor forward(const torch::Tensor& x) { return torch::nn::functional::linear(x, weight); }
    torch::Tensor weight;
  };
  torch::nn::Sequential model(torch::nn::Linear(8, 8), torch::nn::ConvTranspose1d(8, 8, 1), torch::nn::LSTM(8, 8),
                              std::make_shared<Own>(), torch::nn::LayerNorm(torch::nn::LayerNormOptions({8})),
                              torch::nn::Linear(8, 4));
  qnn::QATReport report;
  const std::string warned = captured([&] { report = qnn::prepare_qat_inplace(*model, qnn::QATConfig::w8a8()); });
  CATCH_CHECK_THAT(warned, Catch::Contains("3 layer(s) with weights stay float, no QAT form exists for their kind"));
  CATCH_CHECK_THAT(warned, Catch::Contains("'2' (torch::nn::LSTM)"));
  for (const std::string name : {"1", "2", "3"}) {
    const qnn::LayerReport* row = report.find(name);
    CATCH_REQUIRE(row != nullptr);
    CATCH_CHECK(row->qat.empty());
    CATCH_CHECK_THAT(row->reason, Catch::Contains("qatkit has no QAT form for"));
  }
  CATCH_CHECK_THAT(report.find("3")->reason, Catch::Contains("weight [8, 8]"));
  CATCH_CHECK(report.find("4") == nullptr);  // a LayerNorm's 1-d weight is no weight matrix
  CATCH_CHECK(model->ptr(0)->as<qnn::QuantLinear>() != nullptr);
  // a skip pattern naming the layer is the user's choice: no warning, the pattern counts as used
  torch::nn::Sequential again(torch::nn::Linear(8, 8), torch::nn::ConvTranspose1d(8, 8, 1), torch::nn::Linear(8, 4));
  auto config = qnn::QATConfig::w8a8();
  config.skip = {"1"};
  const std::string quiet = captured([&] { report = qnn::prepare_qat_inplace(*again, config); });
  CATCH_CHECK_THAT(quiet, !Catch::Contains("no QAT form") && !Catch::Contains("matched no supported layer"));
  CATCH_CHECK(report.find("1") != nullptr);
}

CATCH_TEST_CASE("nothing to quantize leaves the model untouched and says why", "[nn]") {
  auto net = std::make_shared<torch::nn::Module>();
  net->register_module("fc", torch::nn::Linear(4, 4));
  std::string msg;
  captured([&] {
    try {
      qnn::prepare_qat_inplace(*net, qnn::QATConfig::w8a8());
    } catch (const c10::ValueError& e) {
      msg = e.what();
    }
  });
  CATCH_CHECK_THAT(msg, Catch::Contains("nothing to quantize"));
  CATCH_CHECK_THAT(msg, Catch::Contains("typed member"));
  auto seq = torch::nn::Sequential(torch::nn::Linear(4, 4), torch::nn::Linear(4, 4));
  auto c = qnn::QATConfig::w8a8();
  c.skip = {"*"};
  CATCH_CHECK_THROWS_WITH(qnn::prepare_qat(seq, c), Catch::Contains("every supported layer was skipped by the config (skip '*': 0, 1)"));
  CATCH_CHECK(seq->ptr(0)->as<torch::nn::Linear>() != nullptr);
}

CATCH_TEST_CASE("first_last int8 on a two-layer model warns that no layer gets the preset", "[nn]") {
  auto two = torch::nn::Sequential(torch::nn::Linear(8, 8), torch::nn::Linear(8, 2));
  qnn::QATReport report;
  const std::string warned = captured([&] { qnn::prepare_qat(two, qnn::QATConfig::xnor_w1a1(), &report); });
  CATCH_CHECK_THAT(warned, Catch::Contains("first_last='int8' rule gives every quantized layer (0, 1) W8A8"));
  CATCH_CHECK(report.find("0")->rule == "first_last");
}

CATCH_TEST_CASE("Conv1d and Embedding layers; embeddings only when asked, first_last over compute layers", "[nn]") {
  auto model = torch::nn::Sequential(torch::nn::Embedding(50, 8), torch::nn::Linear(8, 8), torch::nn::Linear(8, 8),
                                     torch::nn::Linear(8, 2));
  auto c = qnn::QATConfig::w4a8();  // first_last int8
  qnn::QATReport report;
  auto q = qnn::prepare_qat(model, c, &report);
  CATCH_CHECK(q->ptr(0)->as<torch::nn::Embedding>() != nullptr);
  CATCH_CHECK(report.find("0")->rule == "embeddings=false");
  CATCH_CHECK(report.find("1")->rule == "first_last");  // the first compute layer, not the embedding
  CATCH_CHECK(report.find("2")->rule == "default");
  c.embeddings = true;
  auto q2 = qnn::prepare_qat(model, c);
  auto* emb = q2->ptr(0)->as<qnn::QuantEmbedding>();
  CATCH_REQUIRE(emb != nullptr);
  const torch::Tensor idx = torch::tensor({{1, 2, 3}, {4, 5, 49}});
  const torch::Tensor table = emb->quantized_weight();
  CATCH_CHECK(torch::equal(q2->ptr(0)->as<qnn::QuantEmbedding>()->forward(idx), table.index({idx})));
  CATCH_CHECK(!torch::equal(table, emb->weight));  // quantized (4-bit groups)
}

CATCH_TEST_CASE("QuantConvBn2d: eval equals the float conv+bn with quantization off; freeze_bn; batch stats", "[nn]") {
  torch::manual_seed(3);
  auto model = torch::nn::Sequential(torch::nn::Conv2d(torch::nn::Conv2dOptions(3, 6, 3).padding(1)),
                                     torch::nn::BatchNorm2d(6));
  model->train();
  for (int i = 0; i < 3; ++i) model->forward(torch::randn({4, 3, 5, 5}) * 2 + 1);  // non-trivial running stats
  model->eval();
  const torch::Tensor x = torch::randn({2, 3, 5, 5});
  const torch::Tensor ref = model->forward(x);
  // 16-bit per-channel weights, float inputs: the folded layer in eval is the float conv + bn to
  // within the 16-bit step
  auto c = qnn::QATConfig::w8a8();
  c.default_spec.weight->bits = 16;
  c.default_spec.weight->granularity = "per_channel";
  c.default_spec.activation.reset();
  auto q = qnn::prepare_qat(model, c);
  auto* cb = q->ptr(0)->as<qnn::QuantConvBn2d>();
  CATCH_REQUIRE(cb != nullptr);
  CATCH_CHECK(torch::equal(cb->bn->running_mean, model->ptr(1)->as<torch::nn::BatchNorm2d>()->running_mean));
  q->eval();
  CATCH_CHECK(torch::allclose(q->forward(x), ref, 1e-3, 1e-3));
  c.default_spec.weight->bits = 2;  // and a coarse quantizer really changes it
  auto coarse = qnn::prepare_qat(model, c);
  coarse->eval();
  CATCH_CHECK(!torch::allclose(coarse->forward(x), ref, 1e-2, 1e-2));
  // training uses batch statistics and updates the running ones; after freeze_bn it does not
  q->train();
  const torch::Tensor before = cb->bn->running_mean.clone();
  q->forward(x);
  CATCH_CHECK(!torch::equal(before, cb->bn->running_mean));
  qnn::freeze_bn(*q);
  const torch::Tensor frozen = cb->bn->running_mean.clone();
  const torch::Tensor y_frozen = q->forward(x);
  CATCH_CHECK(torch::equal(frozen, cb->bn->running_mean));
  q->eval();
  CATCH_CHECK(torch::equal(y_frozen, q->forward(x)));  // frozen training = the inference form
}

CATCH_TEST_CASE("calibrate observes with only the quantizers in training mode and names idle ones", "[nn]") {
  torch::manual_seed(5);
  auto model = torch::nn::Sequential(torch::nn::Conv2d(3, 4, 3), torch::nn::BatchNorm2d(4), torch::nn::ReLU(),
                                     torch::nn::Flatten(), torch::nn::Linear(4 * 4 * 4, 2));
  auto q = qnn::prepare_qat(model, qnn::QATConfig::w8a8());
  q->train();
  auto* cb = q->ptr(0)->as<qnn::QuantConvBn2d>();
  const torch::Tensor stats = cb->bn->running_mean.clone();
  qnn::calibrate(*q, {torch::randn({2, 3, 6, 6}), torch::randn({2, 3, 6, 6})},
                 [&](const torch::Tensor& b) { q->forward(b); });
  CATCH_CHECK(q->is_training());                               // modes restored
  CATCH_CHECK(torch::equal(stats, cb->bn->running_mean));      // BatchNorm stayed in eval
  CATCH_CHECK(cb->input_fake_quant->has_observed());
  auto fresh = qnn::prepare_qat(model, qnn::QATConfig::w8a8());
  CATCH_CHECK_THROWS_WITH(
      qnn::calibrate(*fresh, {torch::randn({2, 3, 6, 6})}, [&](const torch::Tensor& b) { fresh->ptr(0)->as<qnn::QuantConvBn2d>()->forward(b); }),
      Catch::Contains("1 activation quantizer(s) observed nothing: 4.input_fake_quant"));
  CATCH_CHECK_THROWS_WITH(qnn::convert(*fresh), Catch::Contains("input quantizer of layer '4' has not observed any data"));
}

CATCH_TEST_CASE("convert refuses a NaN weight or bias and an Inf binary weight, naming the layer, converting nothing",
                "[nn]") {
  // Python's convert._check_finite: a NaN has no code (binary_codes and quantize_affine give numbers)
  struct Case {
    std::string preset, param, what;
    float value;
  };
  for (const Case& k : {Case{"binary_weight_only", "weight", "holds NaN", NAN},
                        Case{"binary_weight_only", "weight", "binary scale mean|w| is infinite", INFINITY},
                        Case{"w4a4_lsq", "weight", "holds NaN", NAN}, Case{"w8a8", "bias", "holds NaN", NAN}}) {
    CATCH_INFO(k.preset << " " << k.param);
    torch::manual_seed(3);
    auto c = qnn::QATConfig::preset(k.preset);
    c.first_last = "";
    auto model = torch::nn::Sequential(torch::nn::Linear(16, 32), torch::nn::ReLU(), torch::nn::Linear(32, 4));
    auto q = qnn::prepare_qat(model, c);
    if (k.preset != "binary_weight_only") {  // (weight-only: no activation quantizer to calibrate)
      qnn::calibrate(*q, {torch::randn({8, 16})}, [&](const torch::Tensor& b) { q->forward(b); });
    }
    {
      torch::NoGradGuard ng;
      q->ptr(2)->named_parameters(false)[k.param].view(-1)[1].fill_(k.value);
    }
    CATCH_CHECK_THROWS_WITH(qnn::convert(*q), Catch::Contains("the " + k.param + " of layer '2'") &&
                                                  Catch::Contains(k.what));
    CATCH_CHECK(!q->ptr(0)->as<qnn::QuantLinear>()->converted());  // checked before any layer converts
  }
  // an Inf weight under a learned scale saturates to the end code, as the QAT layer computes: converts
  torch::manual_seed(3);
  auto c = qnn::QATConfig::preset("w4a4_lsq");
  c.first_last = "";
  auto q = qnn::prepare_qat(torch::nn::Sequential(torch::nn::Linear(16, 32), torch::nn::ReLU(), torch::nn::Linear(32, 4)),
                            c);
  qnn::calibrate(*q, {torch::randn({8, 16})}, [&](const torch::Tensor& b) { q->forward(b); });
  {
    torch::NoGradGuard ng;
    q->ptr(2)->named_parameters(false)["weight"].view(-1)[1].fill_(INFINITY);
  }
  q->eval();
  const torch::Tensor x = torch::randn({3, 16});
  torch::Tensor want;
  {
    torch::NoGradGuard ng;
    want = q->forward(x);
  }
  CATCH_CHECK(torch::isfinite(want).all().item<bool>());
  CATCH_CHECK(qnn::convert(*q) == 2);
  CATCH_CHECK(torch::equal(q->forward(x), want));
}

CATCH_TEST_CASE("convert freezes QAT layers in place into integer codes equal to the QAT eval output", "[nn]") {
  for (const std::string preset : {"w8a8", "w4a8", "w4a4_lsq", "ternary_twn", "xnor_w1a1", "bitnet_b158"}) {
    CATCH_INFO(preset);
    torch::manual_seed(11);
    auto c = qnn::QATConfig::preset(preset);
    c.first_last = "";
    auto model = torch::nn::Sequential(torch::nn::Conv2d(torch::nn::Conv2dOptions(3, 8, 3).padding(1)),
                                       torch::nn::BatchNorm2d(8), torch::nn::ReLU(), torch::nn::Flatten(),
                                       torch::nn::Linear(8 * 6 * 6, 32), torch::nn::ReLU(), torch::nn::Linear(32, 4));
    auto q = qnn::prepare_qat(model, c);
    double first = 0;
    q->train();
    for (int i = 0; i < 3; ++i) {
      const torch::Tensor loss = q->forward(torch::randn({8, 3, 6, 6})).square().mean();
      loss.backward();
      first += loss.item<double>();
    }
    q->eval();
    const torch::Tensor x = torch::randn({4, 3, 6, 6});
    torch::Tensor want;
    {
      torch::NoGradGuard ng;
      want = q->forward(x);
    }
    CATCH_CHECK(qnn::convert(*q) == 3);
    CATCH_CHECK(torch::equal(q->forward(x), want));
    auto* lin = q->ptr(4)->as<qnn::QuantLinear>();
    CATCH_CHECK(lin->converted());
    CATCH_CHECK(lin->named_parameters().find("weight") == nullptr);
    CATCH_CHECK(lin->named_buffers()["weight_int"].scalar_type() == torch::kChar);
    CATCH_CHECK(q->ptr(0)->as<qnn::QuantConvBn2d>()->named_children().size() <= 1);  // bn folded away
    q->train();
    CATCH_CHECK(torch::equal(q->forward(x), want));  // frozen: training mode changes nothing
    CATCH_CHECK(qnn::convert(*q) == 0);               // already converted
  }
}

namespace {

struct UserNet : torch::nn::Module {
  explicit UserNet(const qnn::LayerSpec& s)
      : fc1(register_module("fc1", qnn::QuantLinear(torch::nn::LinearOptions(16, 32), s))),
        fc2(register_module("fc2", qnn::QuantLinear(torch::nn::LinearOptions(32, 4), s))) {}
  torch::Tensor forward(const torch::Tensor& x) { return fc2(torch::relu(fc1(x))); }
  qnn::QuantLinear fc1, fc2;
};

}  // namespace

CATCH_TEST_CASE("a custom module written with QuantLinear members calibrates and converts in place", "[nn]") {
  torch::manual_seed(2);
  auto net = std::make_shared<UserNet>(qnn::QATConfig::w8a8().default_spec);
  qnn::calibrate(*net, {torch::randn({8, 16})}, [&](const torch::Tensor& b) { net->forward(b); });
  const torch::Tensor x = torch::randn({3, 16});
  net->eval();
  const torch::Tensor want = net->forward(x).detach();
  CATCH_CHECK(qnn::convert(*net) == 2);
  CATCH_CHECK(net->fc1->converted());  // the typed member itself changed state
  CATCH_CHECK(torch::equal(net->forward(x), want));
}

namespace {

/// `model` prepared for `preset` (no first / last rule), calibrated on `x` (weight-only presets have
/// nothing to observe), converted, and in integer compute.
torch::nn::Sequential integer_model(const std::string& preset, const torch::nn::Sequential& model,
                                    const torch::Tensor& x) {
  auto c = qnn::QATConfig::preset(preset);
  c.first_last = "";
  auto q = qnn::prepare_qat(model, c);
  if (preset.find("weight_only") == std::string::npos) {
    qnn::calibrate(*q, {x}, [&](const torch::Tensor& b) { q->forward(b); });
  }
  qnn::convert(*q);
  qnn::set_compute(*q, "integer");
  return q;
}

}  // namespace

CATCH_TEST_CASE("the row-layout plans CUDA Linears take give the CPU panel plans' bits", "[nn][integer]") {
  // detail::cuda_linear_plan builds a Linear's plan in the row layouts on its codes' device (what a
  // CUDA input runs on); on the CPU the kernels take both layouts, so here the row plan must give the
  // panel plan's outputs bit for bit: its operands are right before a GPU runs them.
  for (const std::string preset : {"w8a8", "w4a8", "ternary_twn", "binary_w1a8", "bitnet_b158", "int4_weight_only",
                                   "int8_weight_only", "xnor_w1a1"}) {
    CATCH_INFO(preset);
    torch::manual_seed(5);
    auto model = torch::nn::Sequential(torch::nn::Linear(64, 96), torch::nn::ReLU(), torch::nn::Linear(96, 32));
    const torch::Tensor x = torch::randn({40, 64}) * 2;
    auto q = integer_model(preset, model, x);
    CATCH_CHECK(qnn::set_compute(*q, "integer") == 2);
    torch::NoGradGuard ng;
    torch::Tensor h = x;
    for (std::size_t i : {0u, 2u}) {
      auto* lin = q->ptr(i)->as<qnn::QuantLinear>();
      CATCH_REQUIRE(lin != nullptr);
      const qnn::IntegerKernelPlan* rows = qnn::detail::cuda_linear_plan(*lin);
      CATCH_REQUIRE(rows != nullptr);  // XNOR too: linear_w1a1 on the W1A8 kernels there
      CATCH_CHECK(rows->weight.dim() == 2);
      CATCH_CHECK(rows->weight.size(0) == lin->options.out_features());
      const torch::Tensor in = preset == "bitnet_b158" ? at::rms_norm(h, {h.size(1)}, std::nullopt, 1e-6) : h;
      CATCH_CHECK(torch::equal(qnn::detail::integer_linear(*rows, in), qnn::detail::integer_linear(*lin->frozen.integer, in)));
      CATCH_CHECK(qnn::detail::cuda_linear_plan(*lin) == rows);  // built once
      h = torch::relu(lin->forward(h));
    }
  }
}

CATCH_TEST_CASE("the row-layout plans CUDA convs take give the CPU conv plans' bits", "[nn][integer]") {
  // detail::cuda_conv_plan: a conv's plan in the row layouts (conv2d_int8 on CUDA runs the Linear
  // kernels on patch rows); the CPU conv kernel takes int8 rows too, so on the CPU the row plan
  // gives the CPU plan's outputs bit for bit (XNOR's groups-1 convs: conv2d_w1a1's plan).
  for (const std::string preset : {"w8a8", "ternary_twn", "binary_w1a8", "xnor_w1a1"}) {
    CATCH_INFO(preset);
    torch::manual_seed(7);
    auto model = torch::nn::Sequential(torch::nn::Conv2d(torch::nn::Conv2dOptions(3, 12, 3).padding(1)),
                                       torch::nn::ReLU(),
                                       torch::nn::Conv2d(torch::nn::Conv2dOptions(12, 12, 3).padding(1).groups(12)),
                                       torch::nn::ReLU(), torch::nn::Flatten(), torch::nn::Linear(12 * 36, 4));
    const torch::Tensor x = torch::randn({4, 3, 6, 6}) * 2;
    auto q = integer_model(preset, model, x);
    torch::NoGradGuard ng;
    torch::Tensor h = x;
    int checked = 0;
    for (std::size_t i : {0u, 2u}) {
      auto* conv = q->ptr(i)->as<qnn::QuantConv2d>();
      CATCH_REQUIRE(conv != nullptr);
      if (conv->frozen.integer) {
        const qnn::IntegerKernelPlan* rows = qnn::detail::cuda_conv_plan(*conv);
        CATCH_REQUIRE(rows != nullptr);  // XNOR's groups-1 convs too (conv2d_w1a1)
        const auto run = [&](const qnn::IntegerKernelPlan& p) {
          return qnn::detail::integer_conv(p, h, {3, 3}, {1, 1}, {1, 1}, {1, 1});
        };
        CATCH_CHECK(torch::equal(run(*rows), run(*conv->frozen.integer)));
        ++checked;
      }
      h = torch::relu(conv->forward(h));
    }
    CATCH_CHECK(checked >= 1);
  }
}

CATCH_TEST_CASE("an in-place edit of a converted layer's tensors after the first call is computed with",
                "[nn][integer]") {
  // A kernel plan holds forms derived from the layer's tensors (packed panels, the zero-point
  // correction, the int32 bias, the output multipliers). An edit after the first call (bias
  // correction, a scale tweak, a code flip, a new input scale) used to leave the plan as it was;
  // now the forward sees the versions change and builds the plan again: the output equals the one
  // set_compute's fresh plans give, and differs from before the edit (Python's integer.refresh).
  int checked = 0;
  for (const std::string preset : {"w8a8", "w4a8", "ternary_twn", "binary_w1a8", "xnor_w1a1", "bitnet_b158",
                                   "int8_weight_only", "int4_weight_only"}) {
    for (const bool conv : {false, true}) {
      for (const std::string edit : {"bias", "scale", "codes", "input scale"}) {
        CATCH_INFO(preset << (conv ? " conv " : " linear ") << edit);
        torch::manual_seed(3);
        torch::nn::Sequential model =
            conv ? torch::nn::Sequential(torch::nn::Conv2d(torch::nn::Conv2dOptions(4, 32, 3).padding(1)),
                                         torch::nn::ReLU(), torch::nn::Conv2d(torch::nn::Conv2dOptions(32, 32, 3).padding(1)),
                                         torch::nn::ReLU(), torch::nn::Flatten(), torch::nn::Linear(32 * 16, 8))
                 : torch::nn::Sequential(torch::nn::Linear(64, 64), torch::nn::ReLU(), torch::nn::Linear(64, 64),
                                         torch::nn::ReLU(), torch::nn::Linear(64, 8));
        const torch::Tensor x = conv ? torch::randn({4, 4, 4, 4}) : torch::randn({16, 64});
        auto q = integer_model(preset, model, x);
        torch::NoGradGuard ng;
        const torch::Tensor before = q->forward(x);
        qnn::ConvertedWeight* f = nullptr;
        torch::Tensor bias;
        qnn::ActFakeQuantizer aq{nullptr};
        if (auto* l = q->ptr(2)->as<qnn::QuantLinear>()) {
          f = &l->frozen, bias = l->bias, aq = l->input_fake_quant;
        } else if (auto* cv = q->ptr(2)->as<qnn::QuantConv2d>()) {
          f = &cv->frozen, bias = cv->bias, aq = cv->input_fake_quant;
        }
        CATCH_REQUIRE(f != nullptr);
        const bool planned = f->integer != nullptr;
        if (edit == "bias") {
          bias.add_(0.5);
        } else if (edit == "scale") {
          f->scale.mul_(1.5);
        } else if (edit == "codes") {  // a row's codes reversed: valid codes of any width
          torch::Tensor row = f->codes[0];
          row.copy_(row.flatten().flip(0).reshape(row.sizes()));
        } else {
          if (!aq || !aq->qparams().first.defined() || aq->spec().scale == "dynamic") continue;
          aq->qparams().first.mul_(1.25);
        }
        const torch::Tensor got = q->forward(x);
        qnn::set_compute(*q, "integer");  // fresh plans from the edited tensors
        CATCH_CHECK(torch::equal(got, q->forward(x)));
        CATCH_CHECK(!torch::equal(got, before));  // the edit matters
        checked += planned;
      }
    }
  }
  CATCH_CHECK(checked >= 40);
}

CATCH_TEST_CASE("a model converted and run under c10::InferenceMode computes as outside it", "[nn][integer]") {
  // its tensors are inference tensors, which keep no version counter: the plans' edit check leaves
  // them out instead of throwing 'Inference tensors do not track version counter'
  for (const std::string preset : {"w8a8", "int4_weight_only", "xnor_w1a1"}) {
    CATCH_INFO(preset);
    auto build = [&] {
      torch::manual_seed(4);
      auto model = torch::nn::Sequential(torch::nn::Linear(64, 64), torch::nn::ReLU(), torch::nn::Linear(64, 8));
      return integer_model(preset, model, torch::randn({8, 64}));
    };
    torch::manual_seed(9);
    const torch::Tensor x = torch::randn({8, 64});
    torch::Tensor want;
    {
      torch::NoGradGuard ng;
      want = build()->forward(x);
    }
    c10::InferenceMode guard;
    auto q = build();
    CATCH_CHECK(torch::equal(q->forward(x), want));
    CATCH_CHECK(torch::equal(q->forward(x), want));
  }
}

CATCH_TEST_CASE("under autocast a converted layer in integer compute widens a bfloat16 input", "[nn][integer]") {
  // a float layer before it outputs bfloat16 under autocast; the integer layer widens it exactly to
  // float32 (as autocast's float32 ops do) and returns float32; outside autocast it raises TypeError
  for (const std::string preset : {"w8a8", "ternary_twn", "bitnet_b158"}) {
    CATCH_INFO(preset);
    torch::manual_seed(6);
    auto model = torch::nn::Sequential(torch::nn::Linear(32, 48), torch::nn::ReLU(), torch::nn::Linear(48, 8));
    const torch::Tensor x = torch::randn({12, 32});
    auto q = integer_model(preset, model, x);
    torch::NoGradGuard ng;
    auto* lin = q->ptr(2)->as<qnn::QuantLinear>();
    CATCH_REQUIRE(lin->frozen.integer != nullptr);
    const torch::Tensor h = torch::relu(q->ptr(0)->as<qnn::QuantLinear>()->forward(x)).to(torch::kBFloat16);
    const torch::Tensor want = lin->forward(h.to(torch::kFloat));
    CATCH_CHECK_THROWS_WITH(lin->forward(h), Catch::Contains("computes in integer form from float32 inputs, got a BFloat16"));
    const bool was = at::autocast::is_autocast_enabled(at::kCPU);
    at::autocast::set_autocast_enabled(at::kCPU, true);
    torch::Tensor got;
    try {
      got = lin->forward(h);
    } catch (...) {
      at::autocast::set_autocast_enabled(at::kCPU, was);
      throw;
    }
    at::autocast::set_autocast_enabled(at::kCPU, was);
    CATCH_CHECK(got.scalar_type() == torch::kFloat);
    CATCH_CHECK(torch::equal(got, want));
  }
}

CATCH_TEST_CASE("an in-place edit that takes a layer off its integer kernel warns", "[nn][integer]") {
  // -128 is outside the [-127, 127] the int8 kernels take: float math from then on, said in a warning
  torch::manual_seed(8);
  auto model = torch::nn::Sequential(torch::nn::Linear(32, 32), torch::nn::ReLU(), torch::nn::Linear(32, 8));
  const torch::Tensor x = torch::randn({6, 32});
  auto q = integer_model("w8a8", model, x);
  torch::NoGradGuard ng;
  q->forward(x);
  auto* lin = q->ptr(2)->as<qnn::QuantLinear>();
  CATCH_REQUIRE(lin->frozen.integer != nullptr);
  lin->frozen.codes.index_put_({0, 0}, -128);
  const std::string warned = captured([&] { q->forward(x); });
  CATCH_CHECK(lin->frozen.integer == nullptr);
  CATCH_CHECK_THAT(warned, Catch::Contains("linear (32 inputs): after an in-place edit of its tensors the layer "
                                           "computes in float math"));
  CATCH_CHECK(captured([&] { q->forward(x); }).empty());  // said once: float math is its form now
}

CATCH_TEST_CASE("a converted layer's member assigned a new tensor is computed with", "[nn][integer]") {
  // the plan kept the old tensor's handle, whose version never moves: the forward now also checks
  // that its sources are the layer's current members (detail::plan_stale)
  for (const std::string edit : {"bias", "scale", "codes", "input scale"}) {
    CATCH_INFO(edit);
    torch::manual_seed(12);
    auto model = torch::nn::Sequential(torch::nn::Linear(32, 48), torch::nn::ReLU(), torch::nn::Linear(48, 8));
    const torch::Tensor x = torch::randn({6, 32});
    auto q = integer_model("w8a8", model, x);
    torch::NoGradGuard ng;
    const torch::Tensor before = q->forward(x);
    auto* lin = q->ptr(2)->as<qnn::QuantLinear>();
    CATCH_REQUIRE(lin->frozen.integer != nullptr);
    if (edit == "bias") {
      lin->bias = lin->bias + 0.5;
    } else if (edit == "scale") {
      lin->frozen.scale = lin->frozen.scale * 1.5;
    } else if (edit == "codes") {
      lin->frozen.codes = lin->frozen.codes.flip({1}).contiguous();
    } else {
      lin->input_fake_quant->qparams().first.mul_(1.25);  // in place: the version check
    }
    const torch::Tensor got = q->forward(x);
    qnn::set_compute(*q, "integer");  // fresh plans from the layer's members
    CATCH_CHECK(torch::equal(got, q->forward(x)));
    CATCH_CHECK(!torch::equal(got, before));
  }
}

CATCH_TEST_CASE("calibrate warns about observers switched off and calibrates the others", "[nn]") {
  // After enable_observer(model, false) calibrate ran the batches and changed no range without a
  // word; every observer off is a ValueError (the error table above), some off a warning naming them.
  torch::manual_seed(0);
  auto q = qnn::prepare_qat(torch::nn::Sequential(torch::nn::Linear(4, 4), torch::nn::ReLU(), torch::nn::Linear(4, 2)),
                            qnn::QATConfig::w8a8());
  q->train();
  q->forward(torch::randn({8, 4}));
  qnn::enable_observer(*q, false);
  auto first = q->ptr(0)->as<qnn::QuantLinearImpl>()->input_fake_quant;
  auto last = q->ptr(2)->as<qnn::QuantLinearImpl>()->input_fake_quant;
  first->enable_observer(true);
  const auto buffers = [](const std::shared_ptr<torch::nn::Module>& m) { return m->named_buffers()["running_max"].clone(); };
  const torch::Tensor first_before = buffers(first.ptr()), last_before = buffers(last.ptr());
  const std::string said = captured([&] {
    qnn::calibrate(*q, {torch::randn({8, 4}) * 10}, [&](const torch::Tensor& b) { q->forward(b); });
  });
  CATCH_CHECK(said.find("1 activation quantizer(s) have their observer switched off") != std::string::npos);
  CATCH_CHECK(!torch::equal(buffers(first.ptr()), first_before));
  CATCH_CHECK(torch::equal(buffers(last.ptr()), last_before));
  qnn::enable_observer(*q, true);
  CATCH_CHECK(captured([&] {
                qnn::calibrate(*q, {torch::randn({8, 4})}, [&](const torch::Tensor& b) { q->forward(b); });
              }).find("switched off") == std::string::npos);
}
