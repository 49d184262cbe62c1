// CUDA kernel of _no_gradient (csrc/ops/no_gradient.cpp): a backward reached an op without a gradient.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "../no_gradient.h"

namespace qatkit::ops {
namespace {

at::Tensor no_gradient_cuda(const at::Tensor& /*grad*/, c10::string_view op, c10::SymIntArrayRef /*size*/,
                           at::ScalarType /*dtype*/) {
  raise_no_gradient(std::string_view(op.data(), op.size()));
}

}  // namespace

TORCH_LIBRARY_IMPL(qatkit, CUDA, m) { m.impl("_no_gradient", &no_gradient_cuda); }

}  // namespace qatkit::ops
