// Cross-language check of the C++ post-training quantization (driven by
// tests/python/ptq/test_cpp_ptq.py): builds a Conv2d+BN+ReLU / Linear Sequential, loads the float
// weights and BatchNorm statistics a Python test saved, runs qatkit::nn::ptq with a preset on the
// saved calibration batches, and saves the eval output on the saved inputs.
//   qatkit_ptq_crosscheck IN.pt OUT.pt PRESET
#include <torch/serialize.h>
#include <torch/torch.h>

#include <fstream>
#include <iostream>
#include <iterator>

#include "qatkit/nn.h"

int main(int argc, char** argv) {
  if (argc != 4) {
    std::cerr << "usage: qatkit_ptq_crosscheck IN.pt OUT.pt PRESET\n";
    return 2;
  }
  try {
    std::ifstream in(argv[1], std::ios::binary);
    const std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const c10::Dict<c10::IValue, c10::IValue> d = torch::pickle_load(bytes).toGenericDict();
    auto model = torch::nn::Sequential(
        torch::nn::Conv2d(torch::nn::Conv2dOptions(3, 8, 3).padding(1)), torch::nn::BatchNorm2d(8), torch::nn::ReLU(),
        torch::nn::Conv2d(torch::nn::Conv2dOptions(8, 8, 3).padding(1).bias(false)), torch::nn::BatchNorm2d(8),
        torch::nn::ReLU(), torch::nn::Flatten(), torch::nn::Linear(8 * 6 * 6, 10));
    {
      torch::NoGradGuard ng;
      const c10::Dict<c10::IValue, c10::IValue> sd = d.at("state").toGenericDict();
      auto params = model->named_parameters();
      auto buffers = model->named_buffers();
      for (const auto& item : sd) {
        const std::string key = item.key().toStringRef();
        if (auto* p = params.find(key)) {
          p->copy_(item.value().toTensor());
        } else if (auto* b = buffers.find(key)) {
          b->copy_(item.value().toTensor());
        } else {
          throw std::runtime_error("unknown key " + key);
        }
      }
    }
    std::vector<torch::Tensor> batches;
    for (const c10::IValue& v : d.at("calib").toListRef()) batches.push_back(v.toTensor());
    const qatkit::nn::QATConfig config = qatkit::nn::QATConfig::preset(argv[3]);
    qatkit::nn::ptq(*model, batches, [&](const torch::Tensor& b) { model->forward(b); }, config);
    torch::Tensor y;
    {
      torch::NoGradGuard ng;
      y = model->forward(d.at("x").toTensor());
    }
    c10::impl::GenericList list(c10::AnyType::get());
    list.push_back(y);
    const std::vector<char> data = torch::pickle_save(c10::IValue(list));
    std::ofstream(argv[2], std::ios::binary).write(data.data(), static_cast<std::streamsize>(data.size()));
  } catch (const std::exception& e) {
    std::cerr << "qatkit_ptq_crosscheck: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
