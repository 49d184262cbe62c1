// Meta kernel of _no_gradient (csrc/ops/no_gradient.cpp): the input gradient's shape, so a traced
// backward records the op, which raises when the compiled backward runs on a device.
#include <ATen/ops/empty.h>
#include <torch/library.h>

namespace qatkit::ops {
namespace {

at::Tensor no_gradient_meta(const at::Tensor& grad, c10::string_view /*op*/, c10::SymIntArrayRef size,
                            at::ScalarType dtype) {
  return at::empty_symint(size, grad.options().dtype(dtype));
}

}  // namespace

TORCH_LIBRARY_IMPL(qatkit, Meta, m) { m.impl("_no_gradient", &no_gradient_meta); }

}  // namespace qatkit::ops
