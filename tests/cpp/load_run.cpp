// The C++ side of tests/python/test_cpp_load.py, and the example of loading a Python-exported
// model in a LibTorch program:
//     qatkit_load_run [--float] [--unfused] [--cuda] model.safetensors input.safetensors output.safetensors
// loads the model with qatkit::nn::load (integer kernels where they run a layer, as Python's
// qatkit.load; --float: the QAT model's float math; --unfused: fuse_activations=false), runs it on
// the tensor "x" of the input file and writes the result as tensor "y" (and prints how many
// activations load fused, "fused N", and the first row). --cuda: model and input moved to
// the GPU first (the Linear layers' CUDA kernels; tests/python/qat/test_cuda_qat.py).
//     qatkit_load_run --many [--each] input.safetensors model1 model2 ...
// loads and runs each model file in this one process (the fuzzer's mode under ASan/UBSan:
// scripts/fuzz_load.py --cpp --many) and prints "loaded N refused M forward_refused K"; exit 0
// unless it crashes. --each: first a line per file, "<outcome> <path> [<the error's first line>]"
// (scripts/fuzz_load.py --cpp --many N --agree compares them with Python's loader).
//     qatkit_load_run --resave model.safetensors out.safetensors
// loads a file and writes it again with qatkit::nn::save.
//     qatkit_load_run --qat-save PRESET input.safetensors out.safetensors output.safetensors
// builds a small CNN in C++ (conv-BN-ReLU, depthwise conv, pooling, Linear), prepares it with the
// preset, calibrates it on "x", saves it with qatkit::nn::save and writes the C++ converted
// model's outputs on "x" as "y" (tests/python/test_cpp_load.py loads the file in Python).
//     qatkit_load_run --threads N model.safetensors input.safetensors
// one loaded model shared by N threads (a server's pattern): each runs the forward 20 times on
// slices of "x" of 1, half and all its rows, and every output must equal the one computed first on
// one thread; prints "threads N: M forwards equal" (exit 0) or the first mismatch (exit 3).
#include <torch/torch.h>

#include <atomic>
#include <clocale>
#include <iostream>
#include <string>
#include <thread>
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

int many(int argc, char** argv, bool each) {
  const torch::Tensor x = input_x(argv[2]);
  if (!x.defined()) return 2;
  long loaded = 0, refused = 0, forward_refused = 0;
  torch::NoGradGuard ng;
  for (int i = 3; i < argc; ++i) {
    torch::nn::Sequential model;
    try {
      model = qatkit::nn::load(argv[i]);
    } catch (const c10::Error& e) {
      ++refused;
      if (each) std::cout << "refused " << argv[i] << " " << first_line(e.what_without_backtrace()) << "\n";
      continue;
    }
    try {  // a consistent file may describe a model that does not take this input
      model->forward(x);
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
    return each ? many(argc - 1, argv + 1, true) : many(argc, argv, false);
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
