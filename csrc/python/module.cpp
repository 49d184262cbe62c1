// qatkit._C: pybind11 module for what is not an op (build information, CPU ISA selection).
// Tensors reach Python through torch.ops.qatkit, never through this module.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "qatkit/build_info.h"

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "qatkit native utilities (the ops themselves are torch.ops.qatkit.*)";
  m.def(
      "version", [] { return qatkit::build_info().version; }, "qatkit version string.");
  m.def(
      "torch_version", [] { return qatkit::build_info().torch_version; },
      "Version of torch the native library was compiled against.");
  m.def(
      "cuda_enabled", [] { return qatkit::build_info().cuda; }, "True if CUDA kernels were compiled in.");
  m.def(
      "cpu_isa", [] { return qatkit::build_info().cpu_isa; }, "CPU kernel implementation in use.");
  m.def("set_cpu_isa", &qatkit::set_cpu_isa, py::arg("name"),
        "Select the CPU kernel implementation ('avx2' or 'baseline'); False if unsupported.");
}
