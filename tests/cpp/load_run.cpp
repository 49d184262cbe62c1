// The C++ side of tests/python/test_cpp_load.py, and the example of loading a Python-exported
// model in a LibTorch program:
//     qatkit_load_run model.safetensors input.safetensors output.safetensors
// loads the model with qatkit::nn::load, runs it on the tensor "x" of the input file and writes
// the result as tensor "y" (and prints the first row).
//     qatkit_load_run --many input.safetensors model1 model2 ...
// loads and runs each model file in this one process (the fuzzer's mode under ASan/UBSan:
// scripts/fuzz_load.py --cpp --many) and prints "loaded N refused M"; exit 0 unless it crashes.
#include <torch/torch.h>

#include <iostream>
#include <string>

#include "qatkit/nn.h"

namespace {

torch::Tensor input_x(const char* path) {
  const qatkit::nn::TensorFile in = qatkit::nn::read_safetensors(path);
  for (const auto& [name, t] : in.tensors) {
    if (name == "x") return t;
  }
  return {};
}

int many(int argc, char** argv) {
  const torch::Tensor x = input_x(argv[2]);
  if (!x.defined()) return 2;
  long loaded = 0, refused = 0, forward_refused = 0;
  torch::NoGradGuard ng;
  for (int i = 3; i < argc; ++i) {
    torch::nn::Sequential model;
    try {
      model = qatkit::nn::load(argv[i]);
    } catch (const c10::Error&) {
      ++refused;
      continue;
    }
    try {  // a consistent file may describe a model that does not take this input
      model->forward(x);
      ++loaded;
    } catch (const c10::Error&) {
      ++forward_refused;
    }
  }
  std::cout << "loaded " << loaded << " refused " << refused << " forward_refused " << forward_refused << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc >= 3 && std::string(argv[1]) == "--many") return many(argc, argv);
  if (argc != 4) {
    std::cerr << "usage: " << argv[0] << " model.safetensors input.safetensors output.safetensors\n";
    return 2;
  }
  try {
    torch::nn::Sequential model = qatkit::nn::load(argv[1]);
    const qatkit::nn::TensorFile in = qatkit::nn::read_safetensors(argv[2]);
    torch::Tensor x;
    for (const auto& [name, t] : in.tensors) {
      if (name == "x") x = t;
    }
    if (!x.defined()) {
      std::cerr << "no tensor 'x' in " << argv[2] << "\n";
      return 2;
    }
    torch::NoGradGuard ng;
    const torch::Tensor y = model->forward(x);
    qatkit::nn::TensorFile out;
    out.tensors = {{"y", y.contiguous()}};
    qatkit::nn::write_safetensors(argv[3], out);
    std::cout << "logits[0]: " << y[0] << "\n";
  } catch (const c10::Error& e) {
    std::cerr << e.what_without_backtrace() << "\n";
    return 1;
  }
  return 0;
}
