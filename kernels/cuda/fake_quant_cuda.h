// Torch-free CUDA fake-quant family launchers (fake quantize, LSQ and PACT backward) (raw pointers, the caller's stream, no host sync).
#pragma once

#include <cuda_runtime_api.h>

#include "../common/fake_quant_args.h"

namespace qatkit::kernels::cuda {

/// Launches the forward kernel on `stream`. Returns the launch error (cudaSuccess if none).
/// Each thread owns 8 consecutive elements, i.e. one mask byte; 16-byte vector loads are used
/// when the pointers allow. Bad qparam values are not checked here (that would need a host
/// sync): a zero or negative scale gives Inf/NaN outputs, as the scalar formula implies.
cudaError_t launch_fake_quant_forward(const FakeQuantArgs& args, cudaStream_t stream);

/// Launches the backward kernel (grad_input = mask ? grad_output : 0) on `stream`.
cudaError_t launch_fake_quant_backward(const FakeQuantBackwardArgs& args, cudaStream_t stream);

/// Launches the LSQ backward: writes grad_input and reduces the scale / zero-point gradients
/// into dscale[channels] / dzero_point[channels] (float32, multiplied by grad_factor) on
/// `stream`, with float64 accumulation in a fixed order (deterministic for a given device).
/// `workspace` must hold lsq_workspace_doubles(args) doubles (device memory).
cudaError_t launch_lsq_backward(const LsqBackwardArgs& args, double grad_factor, float* dscale, float* dzero_point,
                                double* workspace, cudaStream_t stream);

/// Doubles of device workspace launch_lsq_backward needs (per-block partial sums).
std::int64_t lsq_workspace_doubles(const LsqBackwardArgs& args);

/// Launches the PACT backward: writes grad_input and the alpha gradient (float32, one element)
/// on `stream`; `workspace` must hold pact_workspace_doubles() doubles (device memory).
cudaError_t launch_pact_backward(const PactBackwardArgs& args, float* dalpha, double* workspace, cudaStream_t stream);

/// Doubles of device workspace launch_pact_backward needs.
std::int64_t pact_workspace_doubles();

}  // namespace qatkit::kernels::cuda
