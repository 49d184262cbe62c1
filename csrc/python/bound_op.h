// qatkit._C.BoundOp (bound_op.cpp): a loaded layer's op with its operands bound.
#pragma once

#include <pybind11/pybind11.h>

namespace qatkit::python {

void register_bound_op(pybind11::module_& m);

}  // namespace qatkit::python
