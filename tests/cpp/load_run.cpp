// The C++ side of tests/python/test_cpp_load.py, and the example of loading a Python-exported
// model in a LibTorch program:
//     qatkit_load_run model.safetensors input.safetensors output.safetensors
// loads the model with qatkit::nn::load, runs it on the tensor "x" of the input file and writes
// the result as tensor "y" (and prints the first row).
#include <torch/torch.h>

#include <iostream>

#include "qatkit/nn.h"

int main(int argc, char** argv) {
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
