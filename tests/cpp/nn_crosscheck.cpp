// Cross-language check helper (driven by tests/python/qat/test_cpp_nn.py): builds a C++ QAT layer
// from a preset, loads the weights and inputs a Python test saved with torch.save, runs it as the
// Python test runs the Python layer (three training-mode forwards, the first one's weight
// gradient, one eval forward) and saves the results with torch::pickle_save for comparison.
//   qatkit_nn_crosscheck IN.pt OUT.pt {linear|bitlinear|conv2d|conv2d_dw} PRESET
#include <torch/serialize.h>
#include <torch/torch.h>

#include <fstream>
#include <iostream>
#include <iterator>

#include "qatkit/nn.h"

int main(int argc, char** argv) {
  if (argc != 5 && argc != 6) {
    std::cerr << "usage: qatkit_nn_crosscheck IN.pt OUT.pt {linear|bitlinear|conv2d|conv2d_dw} PRESET [PARAMS_JSON]\n";
    return 2;
  }
  try {
    std::ifstream in(argv[1], std::ios::binary);
    const std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const c10::Dict<c10::IValue, c10::IValue> d = torch::pickle_load(bytes).toGenericDict();
    const torch::Tensor w = d.at("weight").toTensor(), b = d.at("bias").toTensor();
    std::vector<torch::Tensor> xs;
    for (const c10::IValue& v : d.at("x").toListRef()) xs.push_back(v.toTensor());
    const std::string layer = argv[3];
    const qatkit::nn::LayerSpec spec = qatkit::nn::QATConfig::preset(argv[4], argc == 6 ? argv[5] : "{}").default_spec;
    std::shared_ptr<torch::nn::Module> m;
    std::function<torch::Tensor(const torch::Tensor&)> fwd;
    torch::Tensor weight;
    if (layer == "linear" || layer == "bitlinear") {
      torch::nn::Linear lin(torch::nn::LinearOptions(w.size(1), w.size(0)));
      torch::NoGradGuard ng;
      lin->weight.copy_(w);
      lin->bias.copy_(b);
      if (layer == "linear") {
        qatkit::nn::QuantLinear q(lin, spec);
        m = q.ptr();
        fwd = [q](const torch::Tensor& x) mutable { return q(x); };
      } else {
        qatkit::nn::BitLinear q(lin, spec);
        m = q.ptr();
        fwd = [q](const torch::Tensor& x) mutable { return q(x); };
      }
      weight = lin->weight;
    } else {
      const std::int64_t groups = layer == "conv2d_dw" ? w.size(0) : 1;
      torch::nn::Conv2d conv(
          torch::nn::Conv2dOptions(w.size(1) * groups, w.size(0), {w.size(2), w.size(3)}).padding(1).groups(groups));
      torch::NoGradGuard ng;
      conv->weight.copy_(w);
      conv->bias.copy_(b);
      qatkit::nn::QuantConv2d q(conv, spec);
      m = q.ptr();
      fwd = [q](const torch::Tensor& x) mutable { return q(x); };
      weight = conv->weight;
    }
    m->train();
    std::vector<torch::Tensor> outs;
    for (std::size_t i = 0; i < xs.size(); ++i) {
      torch::Tensor y = fwd(xs[i]);
      if (i == 0) {
        y.sum().backward();
        outs.push_back(weight.grad().clone());
      }
      outs.push_back(y.detach());
    }
    m->eval();
    outs.push_back(fwd(xs[0]).detach());
    c10::impl::GenericList list(c10::AnyType::get());  // a plain list: torch.load(weights_only=True) reads it
    for (const auto& t : outs) list.push_back(t);
    const std::vector<char> data = torch::pickle_save(c10::IValue(list));
    std::ofstream(argv[2], std::ios::binary).write(data.data(), static_cast<std::streamsize>(data.size()));
  } catch (const std::exception& e) {
    std::cerr << "qatkit_nn_crosscheck: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
