// Build information and CPU ISA selection exposed to C++ and (through _C) to Python.
#include "qatkit/build_info.h"

#include <torch/version.h>

#include "../kernels/cpu/isa.h"
#include "../kernels/cpu/qgemm/qgemm_cpu.h"

#ifndef QATKIT_VERSION
#define QATKIT_VERSION "0.0.0"
#endif

namespace qatkit {

BuildInfo build_info() {
  BuildInfo info;
  info.version = QATKIT_VERSION;
  info.torch_version = TORCH_VERSION;
#ifdef QATKIT_WITH_CUDA
  info.cuda = true;
#endif
  info.cpu_isa = kernels::cpu::isa_name(kernels::cpu::active_isa());
  const kernels::cpu::QGemmKernels* amx = kernels::cpu::qgemm_kernels(kernels::cpu::Isa::kAmx);
  info.amx_bf16 = kernels::cpu::isa_supported(kernels::cpu::Isa::kAmx) && amx != nullptr && amx->gemm_w4f_amx != nullptr;
  return info;
}

bool set_cpu_isa(const std::string& name) { return kernels::cpu::set_isa(name.c_str()); }

}  // namespace qatkit
