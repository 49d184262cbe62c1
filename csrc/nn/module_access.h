// Access to torch::nn::Module's protected parameter table (LibTorch has no unregister_parameter):
// converted layers drop their float weight, and PTQ gives a bias-free conv a folded bias.
#pragma once

#include <torch/nn/module.h>

#include <string>

namespace qatkit::nn::detail {

struct ModuleAccess : torch::nn::Module {
  /// Remove parameter `name` from `m` (nothing if it has none).
  static void erase_parameter(torch::nn::Module& m, const std::string& name) {
    auto table = &ModuleAccess::parameters_;
    if ((m.*table).contains(name)) (m.*table).erase(name);
  }
};

}  // namespace qatkit::nn::detail
