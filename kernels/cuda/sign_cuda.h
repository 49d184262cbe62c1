// Torch-free CUDA sign-family launchers (binarize forward and the sign estimators' backward; TWN
// ternarization runs as an ATen composite on CUDA). Raw pointers, the caller's stream, no sync.
#pragma once

#include <cuda_runtime_api.h>

#include "../common/sign_args.h"

namespace qatkit::kernels::cuda {

/// Launches binarize (apply) / its estimator backward on `stream` (see BinarizeArgs).
cudaError_t launch_binarize_forward(const BinarizeArgs& args, cudaStream_t stream);
cudaError_t launch_binarize_backward(const BinarizeBackwardArgs& args, cudaStream_t stream);

}  // namespace qatkit::kernels::cuda
