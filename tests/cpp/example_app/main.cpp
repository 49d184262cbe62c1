// A LibTorch program using qatkit: choose per-channel int4 qparams for a weight, fake-quantize
// it, and train through the straight-through estimator. Exit code 0 when the gradient is the
// STE mask (so `ctest` can run it as a check).
#include <torch/torch.h>

#include <iostream>

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
  return ok ? 0 : 1;
}
