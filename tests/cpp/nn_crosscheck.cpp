// Cross-language check helper (driven by tests/python/qat/test_cpp_nn.py): builds a C++ QAT layer
// from a preset, loads the weights and inputs a Python test saved with torch.save, runs it as the
// Python test runs the Python layer (three training-mode forwards, the first one's weight
// gradient, one eval forward), then converts it (integer codes, scale, zero point, the converted
// eval forward) and saves the results with torch::pickle_save for comparison.
//   qatkit_nn_crosscheck IN.pt OUT.pt {linear|bitlinear|conv2d|conv2d_dw|conv1d|convbn} PRESET [PARAMS_JSON [SCALE_DTYPE]]
//   qatkit_nn_crosscheck IN.pt OUT.pt LAYER spec WEIGHT_JSON ACT_JSON
// (SCALE_DTYPE: the weight spec's QuantSpec.scale_dtype, e.g. float16; spec: any QuantSpec pair as
// Python's dataclasses.asdict JSON, or null for float)
#include <torch/serialize.h>
#include <torch/torch.h>

#include <fstream>
#include <iostream>
#include <iterator>

#include "qatkit/nn.h"

namespace {

/// Convert `layer` in place; its codes, scale and zero point.
template <class Layer>
std::vector<torch::Tensor> frozen(Layer& layer, const qatkit::nn::ConvertedWeight& w) {
  layer.convert();
  return {w.codes, w.scale, w.zero_point};
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 5 || argc > 7) {
    std::cerr << "usage: qatkit_nn_crosscheck IN.pt OUT.pt {linear|bitlinear|conv2d|conv2d_dw|conv1d|convbn} PRESET [PARAMS_JSON]\n";
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
    qatkit::nn::LayerSpec spec;
    if (std::string(argv[4]) == "spec") {  // spec WEIGHT_JSON ACT_JSON: QuantSpec.to_json texts, or null
      if (argc != 7) {
        std::cerr << "usage: qatkit_nn_crosscheck IN.pt OUT.pt LAYER spec WEIGHT_JSON ACT_JSON\n";
        return 2;
      }
      if (std::string(argv[5]) != "null") spec.weight = qatkit::nn::QuantSpec::from_json(argv[5]);
      if (std::string(argv[6]) != "null") spec.activation = qatkit::nn::QuantSpec::from_json(argv[6]);
    } else {
      spec = qatkit::nn::QATConfig::preset(argv[4], argc >= 6 ? argv[5] : "{}").default_spec;
    }
    if (argc == 7 && spec.weight && std::string(argv[4]) != "spec") {
      spec.weight->scale_dtype = argv[6];
      spec.weight = spec.weight->validated();
    }
    std::shared_ptr<torch::nn::Module> m;
    std::function<torch::Tensor(const torch::Tensor&)> fwd;
    std::function<std::vector<torch::Tensor>()> convert;  // converts, returns codes / scale / zero point
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
        convert = [q]() mutable { return frozen(*q, q->frozen); };
      } else {
        qatkit::nn::BitLinear q(lin, spec);
        m = q.ptr();
        fwd = [q](const torch::Tensor& x) mutable { return q(x); };
        convert = [q]() mutable { return frozen(*q, q->frozen); };
      }
      weight = lin->weight;
    } else if (layer == "conv1d") {
      torch::nn::Conv1d conv(torch::nn::Conv1dOptions(w.size(1), w.size(0), w.size(2)).padding(1));
      torch::NoGradGuard ng;
      conv->weight.copy_(w);
      conv->bias.copy_(b);
      qatkit::nn::QuantConv1d q(conv, spec);
      m = q.ptr();
      fwd = [q](const torch::Tensor& x) mutable { return q(x); };
      convert = [q]() mutable { return frozen(*q, q->frozen); };
      weight = conv->weight;
    } else if (layer == "convbn") {
      torch::nn::Conv2d conv(torch::nn::Conv2dOptions(w.size(1), w.size(0), {w.size(2), w.size(3)}).padding(1));
      torch::nn::BatchNorm2d bn(w.size(0));
      torch::NoGradGuard ng;
      conv->weight.copy_(w);
      conv->bias.copy_(b);
      bn->weight.copy_(d.at("bn_weight").toTensor());
      bn->bias.copy_(d.at("bn_bias").toTensor());
      qatkit::nn::QuantConvBn2d q(conv, bn, spec);
      m = q.ptr();
      fwd = [q](const torch::Tensor& x) mutable { return q(x); };
      convert = [q]() mutable { return frozen(*q, q->frozen); };
      weight = conv->weight;
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
      convert = [q]() mutable { return frozen(*q, q->frozen); };
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
    for (const auto& t : convert()) outs.push_back(t);
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
