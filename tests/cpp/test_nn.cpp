// Catch2 tests of the C++ QAT modules (qatkit/nn.h): configs reject bad fields, prepare_qat swaps
// the right layers, QAT training from C++ lowers the loss, and the numerics follow the ops.
#include <torch/torch.h>
#include <catch2/catch.hpp>

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
