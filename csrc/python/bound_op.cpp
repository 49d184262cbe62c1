// qatkit._C.BoundOp: a loaded layer's op with its operands bound, called with the layer's input
// alone (qatkit/qat/integer.py's _bound). The call still goes through the dispatcher
// (OperatorHandle::callBoxed: autograd, autocast, profiler, TorchDispatchMode, the tracer as for
// torch.ops.qatkit.*); what it skips is the generic Python-to-IValue conversion of every operand per
// call (torch::jit::toIValue against the schema, ~0.8 us for linear_w4_weight_only's six operands on
// the project's VMs: docs/benchmarks.md, thirty-eighth session): the bound operands are converted
// once, here, and the input is unpacked directly. It takes only what it can call exactly as
// OpOverload._op would: a plain torch.Tensor (no subclass, so no __torch_function__ of its own) while
// no TorchFunctionMode is active, whose features dim has the layer's size; anything else returns
// None and the caller runs OpOverload._op (the same op; its errors, with the layer named by the caller).
#include <pybind11/pybind11.h>

#include <ATen/PythonTorchFunctionTLS.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/jit/python/pybind_utils.h>

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "bound_op.h"

namespace py = pybind11;

namespace qatkit::python {
namespace {

class BoundOp {
 public:
  // name "qatkit::op", overload "" for .default; args: the operands after the input, in schema
  // order (trailing ones may be left out: the schema's defaults); features: (dim, size) or None
  BoundOp(const std::string& name, const std::string& overload, const py::tuple& args, const py::object& features)
      : op_(c10::Dispatcher::singleton().findSchemaOrThrow(name.c_str(), overload.c_str())) {
    const auto& arguments = op_.schema().arguments();
    TORCH_CHECK_VALUE(!arguments.empty() && args.size() < arguments.size(),
                      "BoundOp: ", name, " takes ", arguments.size(), " operands, got the input and ", args.size(),
                      " more");
    for (std::size_t i = 0; i < args.size(); ++i)
      rest_.push_back(torch::jit::toIValue(args[i], arguments[i + 1].real_type()));
    for (std::size_t i = args.size() + 1; i < arguments.size(); ++i) {
      TORCH_CHECK_VALUE(arguments[i].default_value().has_value(), "BoundOp: ", name, "'s operand ",
                        arguments[i].name(), " has no default and was not given");
      rest_.push_back(*arguments[i].default_value());
    }
    TORCH_CHECK_VALUE(op_.schema().returns().size() == 1, "BoundOp: ", name, " must return one tensor");
    if (!features.is_none()) {
      const auto f = features.cast<std::pair<std::int64_t, std::int64_t>>();
      check_features_ = true;
      dim_ = f.first;
      size_ = f.second;
    }
  }

  // A copy that also checks what a converted layer's forward checks before its bound kernel
  // (convert.py's QuantizedLinear / QuantizedConv2d.forward): the sum of the plan's sources'
  // versions still `version` (no in-place edit since the plan was built), a float32 input on the
  // plan's device (None: any CPU device; else that device), with min_dim..max_dim dims. The forward
  // calls it first and takes its general path (the checks in Python, a rebuilt plan) where it
  // returns None.
  BoundOp guarded(const py::tuple& sources, std::int64_t version, const py::object& device, std::int64_t min_dim,
                  std::int64_t max_dim) const {
    BoundOp b = *this;
    b.guard_ = true;
    for (const auto& s : sources) {
      TORCH_CHECK_TYPE(THPVariable_Check(s.ptr()), "BoundOp.guarded: sources must be tensors");
      b.sources_.push_back(THPVariable_Unpack(s.ptr()));
    }
    b.version_ = version;
    if (!device.is_none()) b.device_ = c10::Device(device.cast<std::string>());
    b.min_dim_ = min_dim;
    b.max_dim_ = max_dim;
    return b;
  }

  // A copy whose call clamps the op's output in place, torch.clamp's values (a Linear's fused
  // activation: qatkit.fuse_activations; a ReLU / ReLU6 / Hardtanh module's dispatch less per call).
  // lo / hi: a float or None (no bound).
  BoundOp clamped(const py::object& lo, const py::object& hi) const {
    BoundOp b = *this;
    if (!lo.is_none()) b.clamp_min_ = lo.cast<double>();
    if (!hi.is_none()) b.clamp_max_ = hi.cast<double>();
    return b;
  }

  // The op's output, or None where OpOverload._op must take the call (see the file's comment).
  py::object operator()(const py::handle& x) const {
    if (!THPVariable_CheckExact(x.ptr()) || at::impl::torch_function_mode_enabled()) return py::none();
    const at::Tensor& t = THPVariable_Unpack(x.ptr());
    if (guard_) {
      if (t.scalar_type() != at::kFloat || t.dim() < min_dim_ || t.dim() > max_dim_) return py::none();
      if (device_ ? t.device() != *device_ : !t.is_cpu()) return py::none();
      std::int64_t v = 0;
      for (const auto& s : sources_) v += static_cast<std::int64_t>(s._version());
      if (v != version_) return py::none();
    }
    if (check_features_) {
      const std::int64_t nd = t.dim();
      if (nd == 0 || dim_ >= nd || dim_ < -nd || t.sym_size(dim_ < 0 ? dim_ + nd : dim_) != size_) return py::none();
    }
    std::vector<c10::IValue> stack;
    stack.reserve(1 + rest_.size());
    stack.emplace_back(t);
    for (const auto& v : rest_) stack.push_back(v);
    bool failed = false;
    try {
      // the op's TORCH_WARNs become Python warnings when the handler goes, as torch's own bindings
      // give them (OpOverload._op included)
      torch::PyWarningHandler warnings;
      try {
        py::gil_scoped_release no_gil;
        op_.callBoxed(stack);
        if (clamp_min_ || clamp_max_) {
          std::optional<at::Scalar> lo, hi;
          if (clamp_min_) lo = *clamp_min_;
          if (clamp_max_) hi = *clamp_max_;
          stack[0].toTensor().clamp_(lo, hi);
        }
      } catch (const c10::Error&) {
        // the op's own check failed: OpOverload._op runs it again and raises torch's exception for it
        warnings.set_in_exception();
        failed = true;
      }
    } catch (python_error& e) {  // a warning the filters made an error: raised as it is
      e.restore();
      throw py::error_already_set();
    }
    if (failed) return py::none();
    return py::reinterpret_steal<py::object>(THPVariable_Wrap(std::move(stack[0]).toTensor()));
  }

 private:
  c10::OperatorHandle op_;
  std::vector<c10::IValue> rest_;
  bool check_features_ = false;
  std::int64_t dim_ = 0, size_ = 0;
  // guarded(): the forward's checks
  bool guard_ = false;
  std::vector<at::Tensor> sources_;
  std::int64_t version_ = 0, min_dim_ = 0, max_dim_ = 0;
  std::optional<c10::Device> device_;
  // clamped(): the fused activation's bounds
  std::optional<double> clamp_min_, clamp_max_;
};

}  // namespace

void register_bound_op(py::module_& m) {
  py::class_<BoundOp>(m, "BoundOp",
                      "BoundOp(name, overload, args, features): x -> the op on (x, *args) through the "
                      "dispatcher, or None where OpOverload._op must take the call (a tensor subclass, an "
                      "active TorchFunctionMode, x's features dim not `size`, an error the op raised).")
      .def(py::init<const std::string&, const std::string&, const py::tuple&, const py::object&>(),
           py::arg("name"), py::arg("overload"), py::arg("args"), py::arg("features") = py::none())
      .def("__call__", &BoundOp::operator(), py::arg("x"))
      .def("guarded", &BoundOp::guarded, py::arg("sources"), py::arg("version"), py::arg("device"),
           py::arg("min_dim"), py::arg("max_dim"),
           "A copy that also returns None unless the sources' versions still sum to `version` and x is "
           "float32 on `device` (None: any CPU device) with min_dim..max_dim dims (a converted layer's "
           "forward's checks before its bound kernel).")
      .def("clamped", &BoundOp::clamped, py::arg("lo"), py::arg("hi"),
           "A copy that clamps the op's output in place (lo / hi: a float or None), torch.clamp's values: "
           "a converted Linear's fused activation.");
}

}  // namespace qatkit::python
