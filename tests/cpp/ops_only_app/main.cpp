// Looks qatkit's ops up through the dispatcher without referencing a qatkit symbol.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/torch.h>

#include <iostream>

int main() {
  const auto op = c10::Dispatcher::singleton().findOp({"qatkit::fake_quantize", ""});
  if (!op.has_value()) {
    std::cout << "qatkit::fake_quantize is not registered (libqatkit was not loaded)\n";
    return 1;
  }
  const auto typed = op->typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, std::int64_t,
                                          std::int64_t, std::optional<std::int64_t>, std::optional<std::int64_t>)>();
  const at::Tensor y = typed.call(torch::tensor({0.26f, -1.0f}), torch::tensor({0.5f}),
                                  torch::zeros({1}, torch::kInt), -8, 7, std::nullopt, std::nullopt);
  std::cout << "qatkit::fake_quantize found: " << y[0].item<float>() << "\n";
  return y[0].item<float>() == 0.5f ? 0 : 1;
}
