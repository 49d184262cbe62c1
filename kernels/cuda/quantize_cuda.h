// Torch-free CUDA quantize-family launchers (float -> integer codes -> float). Raw pointers, the
// caller's stream, no host sync; the scalar math is kernels/common (same bits as the CPU).
#pragma once

#include <cuda_runtime_api.h>

#include "../common/quantize_args.h"

namespace qatkit::kernels::cuda {

/// Launches quantize (see QuantizeArgs) on `stream`.
cudaError_t launch_quantize(const QuantizeArgs& args, cudaStream_t stream);

/// Launches dequantize (see DequantizeArgs) on `stream`.
cudaError_t launch_dequantize(const DequantizeArgs& args, cudaStream_t stream);

}  // namespace qatkit::kernels::cuda
