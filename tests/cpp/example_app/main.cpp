// A LibTorch program using qatkit: choose per-channel int4 qparams for a weight, fake-quantize
// it, and train through the straight-through estimator; then the README's C++ QAT workflow
// (prepare_qat with Conv2d + BatchNorm2d folding and a report, training, freeze_bn, calibrate,
// convert). Exit code 0 when the gradient is the STE mask and the converted model computes what
// the QAT model computed (so `ctest` can run it as a check).
#include <torch/torch.h>

#include <iostream>

#include <qatkit/nn.h>
#include <qatkit/qatkit.h>

int main() {
  torch::manual_seed(0);
  auto weight = torch::randn({16, 64}).requires_grad_();
  auto [scale, zero_point] = qatkit::choose_qparams(weight.detach(), -8, 7, /*symmetric=*/true, /*axis=*/0);
  auto wq = qatkit::fake_quantize(weight, scale, zero_point, -8, 7, /*axis=*/0);
  auto err = (wq - weight).abs().max().item<float>();
  wq.sum().backward();

  auto q = torch::round(weight.detach() * (1.0f / scale).unsqueeze(1)) + zero_point.unsqueeze(1);
  auto expected = ((q >= -8) & (q <= 7)).to(torch::kFloat);
  const bool ok = torch::equal(weight.grad(), expected);
  std::cout << "qatkit " << qatkit::build_info().version << " (cpu isa " << qatkit::build_info().cpu_isa
            << "): int4 per-channel max |w - fq(w)| = " << err << ", STE gradient "
            << (ok ? "matches" : "DOES NOT match") << " the clip mask (" << expected.sum().item<float>() << " of "
            << expected.numel() << " pass)\n";
  // QAT: prepare (conv + bn folded), train a few steps, freeze BN, calibrate, convert
  auto model = torch::nn::Sequential(torch::nn::Conv2d(3, 16, 3), torch::nn::BatchNorm2d(16), torch::nn::ReLU(),
                                     torch::nn::Flatten(), torch::nn::Linear(16 * 6 * 6, 10));
  qatkit::nn::QATReport report;
  auto qmodel = qatkit::nn::prepare_qat(model, qatkit::nn::QATConfig::w8a8(), &report);
  std::cout << report.to_string();
  torch::optim::Adam opt(qmodel->parameters(), 1e-3);
  const torch::Tensor x = torch::randn({32, 3, 8, 8});
  const torch::Tensor y = torch::randint(0, 10, {32});
  qmodel->train();
  for (int step = 0; step < 5; ++step) {
    opt.zero_grad();
    torch::nn::functional::cross_entropy(qmodel->forward(x), y).backward();
    opt.step();
  }
  qatkit::nn::freeze_bn(*qmodel);
  qatkit::nn::calibrate(*qmodel, {x}, [&](const torch::Tensor& b) { qmodel->forward(b); });
  qmodel->eval();
  torch::Tensor want;
  {
    torch::NoGradGuard ng;
    want = qmodel->forward(x);
  }
  const auto converted = qatkit::nn::convert(*qmodel);
  const bool same = torch::equal(qmodel->forward(x), want);
  std::cout << "QAT: " << converted << " layers converted to integer codes; converted output "
            << (same ? "equals" : "DIFFERS FROM") << " the QAT model's\n";
  return ok && same ? 0 : 1;
}
