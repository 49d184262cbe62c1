// qatkit._C: pybind11 module for what is not an op (build information, CPU ISA selection), and
// BoundOp (bound_op.cpp): a loaded layer's call of its torch.ops.qatkit op through the dispatcher,
// its operands converted once. Ops are registered in libqatkit only (torch.ops.qatkit.*).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <c10/util/Exception.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <thread>
#include <vector>
#ifdef __linux__
#include <pthread.h>
#include <sched.h>
#endif

#include "qatkit/build_info.h"
#include "qatkit/nn.h"
#include "qatkit/weight_cache.h"

#include "bound_op.h"

namespace py = pybind11;

namespace {

// The round trip of one cache line between two threads pinned to the first two CPUs this process may
// run on, in ns: the median of `repeats` runs of `trips` round trips (release / acquire atomics), or
// -1 where two CPUs cannot be pinned (fewer than two allowed, not Linux). On the project's 2-vCPU VMs
// it is ~60-130 ns when the vCPUs share an L3 and ~400 ns when they do not, and the host moves them
// within a process; the integer kernels' speed moves with it (docs/benchmarks.md, twenty-third
// session), so the benchmark scripts print it with their tables.
double core_to_core_ns(int trips, int repeats) {
  TORCH_CHECK_VALUE(trips >= 1 && repeats >= 1, "core_to_core_ns: trips and repeats must be >= 1, got trips=", trips,
                    " and repeats=", repeats);
#ifdef __linux__
  cpu_set_t allowed;
  CPU_ZERO(&allowed);
  if (sched_getaffinity(0, sizeof allowed, &allowed) != 0) return -1;
  std::vector<int> cpus;
  for (int c = 0; c < CPU_SETSIZE && cpus.size() < 2; ++c)
    if (CPU_ISSET(c, &allowed)) cpus.push_back(c);
  if (cpus.size() < 2) return -1;
  const auto pin = [](int cpu) {
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    return pthread_setaffinity_np(pthread_self(), sizeof one, &one) == 0;
  };
  std::vector<double> runs;
  for (int r = 0; r < repeats; ++r) {
    alignas(64) std::atomic<int> flag{0};
    std::atomic<bool> ready{false}, ok{true};
    std::thread other([&] {
      if (!pin(cpus[1])) ok = false;
      ready = true;
      if (!ok) return;
      for (int i = 0; i < trips; ++i) {
        while (flag.load(std::memory_order_acquire) != 1) {
          if (!ok.load(std::memory_order_relaxed)) return;  // the partner could not pin
        }
        flag.store(0, std::memory_order_release);
      }
    });
    double ns = -1;
    std::thread self([&] {  // a second thread, so the caller's own affinity stays as it is
      if (!pin(cpus[0])) ok = false;
      while (!ready) {
      }
      if (!ok) return;
      const auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < trips; ++i) {
        flag.store(1, std::memory_order_release);
        while (flag.load(std::memory_order_acquire) != 0) {
        }
      }
      ns = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count() / trips;
    });
    self.join();
    other.join();
    if (!ok) return -1;
    runs.push_back(ns);
  }
  std::nth_element(runs.begin(), runs.begin() + static_cast<std::ptrdiff_t>(runs.size() / 2), runs.end());
  return runs[runs.size() / 2];
#else
  return -1;
#endif
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "qatkit native utilities (the ops themselves are torch.ops.qatkit.*)";
  // c10's typed errors become the Python exceptions torch raises for them (message without the
  // C++ backtrace).
  py::register_local_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const c10::ValueError& e) {
      PyErr_SetString(PyExc_ValueError, e.what_without_backtrace());
    } catch (const c10::TypeError& e) {
      PyErr_SetString(PyExc_TypeError, e.what_without_backtrace());
    } catch (const c10::Error& e) {
      PyErr_SetString(PyExc_RuntimeError, e.what_without_backtrace());
    }
  });
  m.def(
      "version", [] { return qatkit::build_info().version; }, "qatkit version string.");
  m.def(
      "torch_version", [] { return qatkit::build_info().torch_version; },
      "Version of torch the native library was compiled against.");
  m.def(
      "cuda_enabled", [] { return qatkit::build_info().cuda; }, "True if CUDA kernels were compiled in.");
  m.def(
      "cpu_isa", [] { return qatkit::build_info().cpu_isa; }, "CPU kernel implementation in use.");
  m.def(
      "amx_bf16", [] { return qatkit::build_info().amx_bf16; },
      "True where the 'amx' table runs linear_w4_weight_only on AMX-BF16 tiles (its own bits, within the bound).");
  m.def("set_cpu_isa", &qatkit::set_cpu_isa, py::arg("name"),
        "Select the CPU kernel implementation ('avx2' or 'baseline'); False if unsupported.");
  m.def(
      "derived_weight_cache_info",
      [] {
        const auto i = qatkit::derived_weight_cache_info();
        py::dict d;
        d["entries"] = i.entries;
        d["bytes"] = i.bytes;
        d["hits"] = i.hits;
        d["misses"] = i.misses;
        d["capacity_bytes"] = i.capacity_bytes;
        return d;
      },
      "The CPU kernels' cache of derived weight forms (qatkit/weight_cache.h): entries, bytes, hits, "
      "misses, capacity_bytes.");
  m.def("core_to_core_ns", &core_to_core_ns, py::arg("trips") = 20000, py::arg("repeats") = 5,
        py::call_guard<py::gil_scoped_release>(),
        "Round trip (ns) of one cache line between threads pinned to the first two allowed CPUs (median "
        "of `repeats` runs of `trips`), or -1 where two cannot be pinned.");
  m.def("clear_derived_weight_cache", &qatkit::clear_derived_weight_cache,
        "Drop the CPU kernels' derived weight forms (computed again on the next call).");
  // The C++ side of the one preset table, so tests can prove Python and C++ build the same configs.
  m.def(
      "nn_preset_names", [] { return qatkit::nn::QATConfig::preset_names(); },
      "Preset names of the table compiled into libqatkit.");
  m.def(
      "nn_preset_json",
      [](const std::string& name, const std::string& params) {
        return qatkit::nn::QATConfig::preset(name, params).to_json();
      },
      py::arg("name"), py::arg("params") = "{}", "The C++ QATConfig of a preset, as JSON (Python's to_dict names).");
  m.def(
      "nn_first_last_json",
      [](const std::string& rule) -> std::string {
        const auto spec = qatkit::nn::QATConfig::first_last_spec(rule);
        if (!spec) return "null";
        qatkit::nn::QATConfig c;
        c.default_spec = *spec;
        return c.to_json();
      },
      py::arg("rule"), "The C++ LayerSpec of a first/last rule, inside a config's JSON ('null' for float).");
  m.def(
      "nn_spec_json", [](const std::string& text) { return qatkit::nn::QuantSpec::from_json(text).to_json(); },
      py::arg("spec_json"), "A QuantSpec validated by C++ (ValueError as in Python), back as JSON.");
  m.def(
      "nn_default_spec_json", [] { return qatkit::nn::QuantSpec{}.to_json(); },
      "A default-constructed C++ QuantSpec as JSON.");
  m.def(
      "nn_preset_table", [] { return qatkit::nn::QATConfig::table_json(); },
      "The preset table text compiled into libqatkit.");
  qatkit::python::register_bound_op(m);
}
