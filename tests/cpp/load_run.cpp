// The C++ side of tests/python/test_cpp_load.py, and the example of loading a Python-exported
// model in a LibTorch program:
//     qatkit_load_run [--float] [--unfused] [--cuda] model.safetensors input.safetensors output.safetensors
// loads the model with qatkit::nn::load (integer kernels where they run a layer, as Python's
// qatkit.load; --float: the QAT model's float math; --unfused: fuse_activations=false), runs it on
// the tensor "x" of the input file and writes the result as tensor "y" (and prints how many
// activations load fused, "fused N", and the first row). --cuda: model and input moved to
// the GPU first (the Linear layers' CUDA kernels; tests/python/qat/test_cuda_qat.py).
//     qatkit_load_run --many [--each] [--resnet WIDTH] input.safetensors model1 model2 ...
// loads (--resnet: load_into the ResNet-18 below) and runs each model file in this one process (the fuzzer's mode under ASan/UBSan:
// scripts/fuzz_load.py --cpp --many) and prints "loaded N refused M forward_refused K"; exit 0
// unless it crashes. --each: first a line per file, "<outcome> <path> [<the error's first line>]"
// (scripts/fuzz_load.py --cpp --many N --agree compares them with Python's loader).
//     qatkit_load_run --resave model.safetensors out.safetensors
// loads a file and writes it again with qatkit::nn::save.
//     qatkit_load_run --qat-save PRESET input.safetensors out.safetensors output.safetensors
// builds a small CNN in C++ (conv-BN-ReLU, depthwise conv, pooling, Linear), prepares it with the
// preset, calibrates it on "x", saves it with qatkit::nn::save and writes the C++ converted
// model's outputs on "x" as "y" (tests/python/test_cpp_load.py loads the file in Python).
//     qatkit_load_run --resnet WIDTH [--float-ends] [--float] [--cuda] [--save PRESET] [--bench ROUNDS]
//                     model.safetensors input.safetensors output.safetensors
// a model with its own forward: the CIFAR ResNet-18 of python/qatkit/testing/models.py
// (resnet18(10, width=WIDTH, small_input=True)) written in C++ with qatkit layers, the way a
// LibTorch program writes it to run a file exported after PTQ or QAT, filled by
// qatkit::nn::load_into; runs "x" and writes "y" (tests/python/test_cpp_load_into.py). --bench
// ROUNDS: then times it against its FP32 twin in this process (docs/benchmarks.md). --save PRESET:
// the other way, the C++ model built with the preset's QAT layers, calibrated on "x", converted and
// written to model.safetensors by qatkit::nn::save (Python's qatkit.load_into reads it). --cuda: the
// loaded model and "x" moved to the GPU first (tests/python/qat/test_cuda_qat.py).
//     qatkit_load_run --threads N model.safetensors input.safetensors
// one loaded model shared by N threads (a server's pattern): each runs the forward 20 times on
// slices of "x" of 1, half and all its rows, and every output must equal the one computed first on
// one thread; prints "threads N: M forwards equal" (exit 0) or the first mismatch (exit 3).
#include <torch/torch.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <functional>
#include <cmath>
#include <clocale>
#include <cstdlib>
#include <iostream>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "qatkit/nn.h"

namespace {

torch::Tensor input_x(const char* path) {
  const qatkit::nn::TensorFile in = qatkit::nn::read_safetensors(path);
  for (const auto& [name, t] : in.tensors) {
    if (name == "x") return t;
  }
  return {};
}

// An error's first line (the outcome lines of --many --each are one line per file).
std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }

}  // namespace

// The CIFAR ResNet-18 of python/qatkit/testing/models.py as a LibTorch program writes it to load a
// file exported from that model after PTQ or QAT: the modules at the Python model's names, qatkit
// layers where the file holds packed ones (their LayerSpec does not matter: load_into gives them the
// file's), and the file's model as it computes — its BatchNorms folded into the convs, so the convs
// have biases and no BatchNorm follows them. float_ends: the stem conv and the classifier stay float
// layers (torch::nn::Conv2d / Linear), as the bitnet_b158 preset keeps them.
namespace resnet {
namespace nn = torch::nn;
using qatkit::nn::QuantConv2d;

// python/qatkit/testing/models.py's _c: max(8, round(channels * width / 8) * 8), round half even
std::int64_t width_of(std::int64_t channels, double width) {
  return std::max<std::int64_t>(8, static_cast<std::int64_t>(std::nearbyint(channels * width / 8)) * 8);
}

// Conv: qatkit::nn::QuantConv2d (what load_into fills) or torch::nn::Conv2d (--bench's FP32 twin)
template <class Conv>
Conv make_conv(const nn::Conv2dOptions& o, const qatkit::nn::LayerSpec& s) {
  if constexpr (std::is_same_v<Conv, QuantConv2d>) {
    return QuantConv2d(o, s);
  } else {
    return nn::Conv2d(o);
  }
}

template <class Conv>
struct BlockImpl : nn::Module {
  BlockImpl(std::int64_t cin, std::int64_t cout, std::int64_t stride, const qatkit::nn::LayerSpec& s)
      : conv1(register_module("conv1", make_conv<Conv>(nn::Conv2dOptions(cin, cout, 3).stride(stride).padding(1), s))),
        relu(register_module("relu", nn::ReLU(nn::ReLUOptions(true)))),
        conv2(register_module("conv2", make_conv<Conv>(nn::Conv2dOptions(cout, cout, 3).padding(1), s))) {
    if (stride != 1 || cin != cout) {
      downsample = register_module("downsample", nn::Sequential(make_conv<Conv>(nn::Conv2dOptions(cin, cout, 1).stride(stride), s)));
    }
  }
  torch::Tensor forward(const torch::Tensor& x) {
    torch::Tensor out = conv2(relu(conv1(x)));
    out += downsample ? downsample->forward(x) : x;
    return relu(out);
  }
  Conv conv1{nullptr};
  nn::ReLU relu{nullptr};
  Conv conv2{nullptr};
  nn::Sequential downsample{nullptr};
};
template <class Conv>
using Block = nn::ModuleHolder<BlockImpl<Conv>>;

struct ResNetImpl : nn::Module {
  /// float_ends: the stem conv and the classifier float; all_float: every layer (the FP32 twin)
  /// spec: the qatkit layers' (a QAT model's; load_into replaces it with the file's)
  ResNetImpl(double width, bool float_ends, bool all_float = false,
             const qatkit::nn::LayerSpec& s = qatkit::nn::QATConfig::w8a8().default_spec, std::int64_t classes = 10) {
    float_ends = float_ends || all_float;
    std::int64_t c = width_of(64, width);
    const auto stem = nn::Conv2dOptions(3, c, 3).padding(1);  // (bias: the folded BatchNorm's)
    conv1 = float_ends ? nn::AnyModule(nn::Conv2d(stem)) : nn::AnyModule(QuantConv2d(stem, s));
    register_module("conv1", conv1.ptr());
    relu = register_module("relu", nn::ReLU(nn::ReLUOptions(true)));
    const std::int64_t planes[4] = {64, 128, 256, 512};
    for (int i = 0; i < 4; ++i) {
      const std::int64_t p = width_of(planes[i], width);
      const std::int64_t stride = i == 0 ? 1 : 2;
      nn::Sequential layer = all_float ? nn::Sequential(Block<nn::Conv2d>(c, p, stride, s), Block<nn::Conv2d>(p, p, 1, s))
                                       : nn::Sequential(Block<QuantConv2d>(c, p, stride, s), Block<QuantConv2d>(p, p, 1, s));
      layers.push_back(register_module("layer" + std::to_string(i + 1), layer));
      c = p;
    }
    fc = float_ends ? nn::AnyModule(nn::Linear(c, classes)) : nn::AnyModule(qatkit::nn::QuantLinear(nn::LinearOptions(c, classes), s));
    register_module("fc", fc.ptr());
  }
  torch::Tensor forward(torch::Tensor x) {
    x = relu(conv1.forward(x));
    for (auto& layer : layers) x = layer->forward(x);
    return fc.forward(torch::flatten(torch::adaptive_avg_pool2d(x, {1, 1}), 1));
  }
  nn::AnyModule conv1, fc;
  nn::ReLU relu{nullptr};
  std::vector<nn::Sequential> layers;
};
TORCH_MODULE(ResNet);

// --bench: the loaded model against its FP32 twin (the same architecture, every layer torch's float
// Conv2d / Linear) in this process, interleaved: per round 5 calls of each, in NCHW and
// channels_last; medians of the rounds' per-call times. Prints a table row per format.
void bench(ResNet& model, const torch::Tensor& x, double width, int rounds) {
  ResNet fp(width, true, true);
  fp->eval();
  torch::NoGradGuard ng;
  const torch::Tensor xc = x.contiguous(torch::MemoryFormat::ChannelsLast);
  ResNet fpc(width, true, true);
  fpc->eval();
  for (auto& p : fpc->parameters()) p.set_data(p.contiguous(p.dim() == 4 ? torch::MemoryFormat::ChannelsLast : torch::MemoryFormat::Contiguous));
  const auto per_call = [](const std::function<void()>& f) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < 5; ++i) f();
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / 5;
  };
  std::vector<std::function<void()>> fns = {[&] { fp->forward(x); }, [&] { model->forward(x); },
                                            [&] { fpc->forward(xc); }, [&] { model->forward(xc); }};
  std::vector<std::vector<double>> ms(fns.size());
  for (auto& f : fns) f();  // warm-up: the integer plans' caches, oneDNN's primitives
  for (int r = 0; r < rounds; ++r) {
    for (std::size_t i = 0; i < fns.size(); ++i) ms[i].push_back(per_call(fns[i]));
  }
  const auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  std::printf("| format | batch | fp32 ms | loaded ms | vs fp32 |\n|---|---|---|---|---|\n");
  for (int f = 0; f < 2; ++f) {
    const double a = median(ms[2 * f]), b = median(ms[2 * f + 1]);
    std::printf("| %s | %lld | %.2f | %.2f | %.2fx |\n", f ? "channels_last" : "NCHW", static_cast<long long>(x.size(0)),
                a, b, a / b);
  }
}

// qatkit_load_run --resnet WIDTH [--float-ends] [--float] [--cuda] [--save PRESET] [--bench ROUNDS] model input output
int run(int argc, char** argv) {
  bool float_ends = false, cuda = false;
  int rounds = 0;
  std::string save_preset;
  std::string compute = "integer";
  std::vector<std::string> rest;
  for (int i = 3; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--float-ends") {
      float_ends = true;
    } else if (a == "--float") {
      compute = "float";
    } else if (a == "--cuda") {
      cuda = true;
    } else if (a == "--save" && i + 1 < argc) {
      save_preset = argv[++i];
    } else if (a == "--bench" && i + 1 < argc) {
      rounds = std::atoi(argv[++i]);
      if (rounds < 1 || rounds > 1000) {
        std::cerr << "--bench: ROUNDS must be 1 to 1000, got '" << argv[i] << "'\n";
        return 2;
      }
    } else {
      rest.push_back(a);
    }
  }
  if (rest.size() != 3) {
    std::cerr << "usage: qatkit_load_run --resnet WIDTH [--float-ends] [--float] [--cuda] [--save PRESET] "
                 "[--bench ROUNDS] model input output\n";
    return 2;
  }
  char* end = nullptr;
  const double width = std::strtod(argv[2], &end);
  if (end == argv[2] || *end != '\0' || !(width > 0 && width <= 4)) {
    std::cerr << "--resnet: WIDTH must be a number in (0, 4], got '" << argv[2] << "'\n";
    return 2;
  }
  torch::Tensor x = input_x(rest[1].c_str());
  if (!x.defined()) return 2;
  ResNet model(width, float_ends);
  if (!save_preset.empty()) {
    // the other way: the C++ model with QAT layers of the preset, calibrated on x, converted, written
    // by qatkit::nn::save (a custom module: no structure), then run in `compute` as if loaded
    model = ResNet(width, float_ends, false, qatkit::nn::QATConfig::preset(save_preset).default_spec);
    qatkit::nn::calibrate(*model, {x}, [&](const torch::Tensor& b) { model->forward(b); });
    qatkit::nn::convert(*model);
    qatkit::nn::save(*model, rest[0]);
    qatkit::nn::set_compute(*model, compute);
    std::cout << "saved\n";
  } else {
    const std::int64_t n = qatkit::nn::load_into(*model, rest[0], compute);
    std::cout << "loaded " << n << " layers\n";
  }
  torch::NoGradGuard ng;
  if (cuda) {  // the loaded layers' CUDA plans (built at the first call there), as load's --cuda
    model->to(torch::kCUDA);
    x = x.to(torch::kCUDA);
  }
  qatkit::nn::TensorFile out;
  out.tensors = {{"y", model->forward(x).cpu().contiguous()}};
  qatkit::nn::write_safetensors(rest[2], out);
  if (rounds > 0) bench(model, x, width, rounds);
  return 0;
}

}  // namespace resnet

namespace {

// --many [--each] [--resnet WIDTH] input files...: each file loaded (qatkit::nn::load; with --resnet,
// qatkit::nn::load_into a fresh resnet::ResNet of that width) and run on "x" in this process.
int many(int argc, char** argv, bool each, double resnet_width) {
  const torch::Tensor x = input_x(argv[2]);
  if (!x.defined()) return 2;
  long loaded = 0, refused = 0, forward_refused = 0;
  torch::NoGradGuard ng;
  for (int i = 3; i < argc; ++i) {
    std::function<torch::Tensor(const torch::Tensor&)> forward;
    try {
      if (resnet_width > 0) {
        resnet::ResNet net(resnet_width, false);
        qatkit::nn::load_into(*net, argv[i]);
        forward = [net](const torch::Tensor& t) mutable { return net->forward(t); };
      } else {
        torch::nn::Sequential model = qatkit::nn::load(argv[i]);
        forward = [model](const torch::Tensor& t) mutable { return model->forward(t); };
      }
    } catch (const c10::Error& e) {
      ++refused;
      if (each) std::cout << "refused " << argv[i] << " " << first_line(e.what_without_backtrace()) << "\n";
      continue;
    }
    try {  // a consistent file may describe a model that does not take this input
      forward(x);
      ++loaded;
      if (each) std::cout << "loaded " << argv[i] << "\n";
    } catch (const std::exception& e) {  // a c10::Error, or LibTorch's oneDNN's dnnl::error (below)
      ++forward_refused;
      if (each) std::cout << "forward_refused " << argv[i] << " " << first_line(e.what()) << "\n";
    }
  }
  std::cout << "loaded " << loaded << " refused " << refused << " forward_refused " << forward_refused << "\n";
  return 0;
}

}  // namespace

int qat_save(char** argv) {
  namespace nn = torch::nn;
  torch::manual_seed(0);
  nn::Sequential model(nn::Unflatten(nn::UnflattenOptions(1, {1, 8, 8})),
                       nn::Conv2d(nn::Conv2dOptions(1, 8, 3).padding(1)), nn::BatchNorm2d(8), nn::ReLU(),
                       nn::Conv2d(nn::Conv2dOptions(8, 8, 3).padding(1).groups(8)), nn::ReLU(),
                       nn::MaxPool2d(nn::MaxPool2dOptions(2)), nn::Flatten(), nn::Linear(8 * 16, 32), nn::GELU(),
                       nn::Dropout(0.1), nn::Linear(32, 10));
  model->eval();
  const torch::Tensor x = input_x(argv[3]);
  if (!x.defined()) return 2;
  nn::Sequential q = qatkit::nn::prepare_qat(model, qatkit::nn::QATConfig::preset(argv[2]));
  if (std::string(argv[2]).find("weight_only") == std::string::npos) {
    qatkit::nn::calibrate(*q, {x}, [&](const torch::Tensor& b) { q->forward(b); });
  }
  qatkit::nn::save(q, argv[4]);
  qatkit::nn::convert(*q);
  torch::NoGradGuard ng;
  qatkit::nn::TensorFile out;
  out.tensors = {{"y", q->forward(x).contiguous()}};
  qatkit::nn::write_safetensors(argv[5], out);
  return 0;
}

int threads(int n, const char* model_path, const char* input_path) {
  torch::nn::Sequential model = qatkit::nn::load(model_path);
  const torch::Tensor x = input_x(input_path);
  const std::int64_t rows = x.size(0);
  const std::vector<std::int64_t> sizes = {1, std::max<std::int64_t>(1, rows / 2), rows};
  std::vector<torch::Tensor> want;
  {
    torch::InferenceMode guard;
    for (const std::int64_t r : sizes) want.push_back(model->forward(x.narrow(0, 0, r)));
  }
  std::atomic<int> done{0}, bad{0};
  std::string first_bad;
  std::vector<std::thread> pool;
  for (int t = 0; t < n; ++t) {
    pool.emplace_back([&, t] {
      torch::InferenceMode guard;  // (grad mode is per thread)
      for (int i = 0; i < 20; ++i) {
        const std::size_t k = static_cast<std::size_t>(t + i) % sizes.size();
        const torch::Tensor y = model->forward(x.narrow(0, 0, sizes[k]));
        if (!torch::equal(y, want[k]) && bad++ == 0) {
          first_bad = "thread " + std::to_string(t) + ", forward " + std::to_string(i) + ", " +
                      std::to_string(sizes[k]) + " rows: max |diff| " +
                      std::to_string((y - want[k]).abs().max().item<double>());
        }
        ++done;
      }
    });
  }
  for (auto& th : pool) th.join();
  if (bad > 0) {
    std::cout << "threads " << n << ": " << bad << " of " << done << " forwards differ; first: " << first_bad << "\n";
    return 3;
  }
  std::cout << "threads " << n << ": " << done << " forwards equal\n";
  return 0;
}

int main(int argc, char** argv) {
  // the user's locale, as a program that prints numbers for people sets it (a decimal comma made
  // strtod read the header's 0.01 as 0 and the loader refuse every file before 2026-12-07)
  std::setlocale(LC_ALL, "");
  if (argc == 5 && std::string(argv[1]) == "--threads") {
    try {
      return threads(std::stoi(argv[2]), argv[3], argv[4]);
    } catch (const c10::Error& e) {
      std::cerr << e.what_without_backtrace() << "\n";
      return 1;
    }
  }
  if (argc >= 3 && std::string(argv[1]) == "--many") {
    const bool each = argc >= 4 && std::string(argv[2]) == "--each";
    if (each) {
      ++argv;
      --argc;
    }
    double width = 0;
    if (argc >= 4 && std::string(argv[2]) == "--resnet") {
      width = std::strtod(argv[3], nullptr);
      if (!(width > 0 && width <= 4)) {
        std::cerr << "--many --resnet: WIDTH must be a number in (0, 4]\n";
        return 2;
      }
      argv += 2;
      argc -= 2;
    }
    return many(argc, argv, each, width);
  }
  std::string compute = "integer";
  bool cuda = false, fuse = true;
  for (;;) {  // leading flags of the run mode
    if (argc >= 5 && std::string(argv[1]) == "--float") {
      compute = "float";
    } else if (argc >= 5 && std::string(argv[1]) == "--both") {  // y (integer) and y_float in one run
      compute = "both";
    } else if (argc >= 5 && std::string(argv[1]) == "--cuda") {
      cuda = true;
    } else if (argc >= 5 && std::string(argv[1]) == "--unfused") {
      fuse = false;
    } else {
      break;
    }
    ++argv;
    --argc;
  }
  if (argc >= 3 && std::string(argv[1]) == "--resnet") {
    try {
      return resnet::run(argc, argv);
    } catch (const std::exception& e) {  // c10::Error (the loader's refusals)
      const auto* c10e = dynamic_cast<const c10::Error*>(&e);
      std::cerr << (c10e ? c10e->what_without_backtrace() : e.what()) << "\n";
      return 1;
    }
  }
  try {
    if (argc == 4 && std::string(argv[1]) == "--resave") {
      qatkit::nn::save(qatkit::nn::load(argv[2]), argv[3]);
      return 0;
    }
    if (argc == 6 && std::string(argv[1]) == "--qat-save") return qat_save(argv);
  } catch (const c10::Error& e) {
    std::cerr << e.what_without_backtrace() << "\n";
    return 1;
  }
  if (argc != 4) {
    std::cerr << "usage: " << argv[0] << " model.safetensors input.safetensors output.safetensors\n";
    return 2;
  }
  bool loaded = false;
  try {
    const bool both = compute == "both";
    torch::nn::Sequential model = qatkit::nn::load(argv[1], both ? "integer" : compute, fuse);
    loaded = true;
    int fused = 0;
    for (const auto& m : model->modules()) fused += std::dynamic_pointer_cast<qatkit::nn::FusedActivationImpl>(m) != nullptr;
    std::cout << "fused " << fused << "\n";
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
    if (cuda) {
      model->to(torch::kCUDA);
      x = x.to(torch::kCUDA);
    }
    const torch::Tensor y = model->forward(x).cpu();
    qatkit::nn::TensorFile out;
    out.tensors = {{"y", y.contiguous()}};
    if (both) {  // the float load of the same file: one process start (~0.26 s) instead of two
      torch::nn::Sequential float_model = qatkit::nn::load(argv[1], "float");
      if (cuda) float_model->to(torch::kCUDA);
      out.tensors.emplace_back("y_float", float_model->forward(x).cpu().contiguous());
    }
    qatkit::nn::write_safetensors(argv[3], out);
    if (y.dim() > 0 && y.size(0) > 0) {
      std::cout << "logits[0]: " << y[0] << "\n";
    } else {
      std::cout << "output shape: " << y.sizes() << "\n";  // an empty batch, or a 0-d output
    }
  } catch (const c10::Error& e) {
    std::cerr << e.what_without_backtrace() << "\n";
    return 1;
  } catch (const std::exception& e) {
    // qatkit::nn::load refuses a bad file with a c10::Error; anything else from it stays a crash
    // (a finding for scripts/fuzz_load.py). A model's forward runs LibTorch's modules, which may
    // throw other std::exceptions: oneDNN's dnnl::error for a float conv geometry it cannot
    // describe (padding 2^28 on an 8 x 8 image), where Python's binding raises RuntimeError.
    if (!loaded) throw;
    std::cerr << e.what() << "\n";
    return 1;
  }
  return 0;
}
