// CUDA binarize kernels: elementwise apply (deterministic sign or Philox-stochastic) and the
// sign-estimator backward; the scalar math is kernels/common (same bits as the CPU except the
// transcendental SignSwish derivative, equal to rounding).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "../common/fake_quant_scalar.h"
#include "../common/philox.h"
#include "elem_io.cuh"
#include "sign_cuda.h"

namespace qatkit::kernels::cuda {
namespace {

constexpr int kThreads = 256;

template <typename S>
__global__ void binarize_forward_kernel(BinarizeArgs a) {
  using E = Elem<S>;
  using C = typename E::C;
  const S* x = static_cast<const S*>(a.input);
  S* y = static_cast<S*>(a.output);
  const std::uint64_t key = a.seed ? static_cast<std::uint64_t>(*a.seed) : 0;
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < a.numel;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t c = (i / a.inner) % a.channels;
    const C center = a.center ? static_cast<C>(a.center[c]) : C(0);
    const C alpha = a.alpha ? static_cast<C>(a.alpha[c]) : C(1);
    const C v = E::load(x[i]) - center;
    C s;
    if (a.seed) {
      C p = (v + C(1)) / C(2);
      p = p < C(0) ? C(0) : (p > C(1) ? C(1) : p);
      s = v != v ? v : (static_cast<C>(philox_uniform(key, static_cast<std::uint64_t>(i))) < p ? C(1) : C(-1));
    } else {
      s = binary_sign<C>(v, a.zero_negative);
    }
    y[i] = E::store(s * alpha);
  }
}

template <typename S>
__global__ void binarize_backward_kernel(BinarizeBackwardArgs a) {
  using E = Elem<S>;
  using C = typename E::C;
  const S* x = static_cast<const S*>(a.input);
  const S* dy = static_cast<const S*>(a.grad_output);
  S* dx = static_cast<S*>(a.grad_input);
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < a.numel;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t c = (i / a.inner) % a.channels;
    const C center = a.center ? static_cast<C>(a.center[c]) : C(0);
    dx[i] =
        E::store(E::load(dy[i]) * sign_estimator_grad<C>(E::load(x[i]) - center, a.estimator, static_cast<C>(a.beta)));
  }
}

unsigned grid_for(std::int64_t n) {
  std::int64_t blocks = (n + kThreads - 1) / kThreads;
  if (blocks > 65535LL * 8) blocks = 65535LL * 8;
  return static_cast<unsigned>(blocks < 1 ? 1 : blocks);
}

}  // namespace

cudaError_t launch_binarize_forward(const BinarizeArgs& a, cudaStream_t stream) {
  if (a.numel == 0) return cudaSuccess;
  const unsigned g = grid_for(a.numel);
  switch (a.dtype) {
    case DType::kFloat32:
      binarize_forward_kernel<float><<<g, kThreads, 0, stream>>>(a);
      break;
    case DType::kFloat64:
      binarize_forward_kernel<double><<<g, kThreads, 0, stream>>>(a);
      break;
    case DType::kFloat16:
      binarize_forward_kernel<__half><<<g, kThreads, 0, stream>>>(a);
      break;
    case DType::kBFloat16:
      binarize_forward_kernel<__nv_bfloat16><<<g, kThreads, 0, stream>>>(a);
      break;
  }
  return cudaGetLastError();
}

cudaError_t launch_binarize_backward(const BinarizeBackwardArgs& a, cudaStream_t stream) {
  if (a.numel == 0) return cudaSuccess;
  const unsigned g = grid_for(a.numel);
  switch (a.dtype) {
    case DType::kFloat32:
      binarize_backward_kernel<float><<<g, kThreads, 0, stream>>>(a);
      break;
    case DType::kFloat64:
      binarize_backward_kernel<double><<<g, kThreads, 0, stream>>>(a);
      break;
    case DType::kFloat16:
      binarize_backward_kernel<__half><<<g, kThreads, 0, stream>>>(a);
      break;
    case DType::kBFloat16:
      binarize_backward_kernel<__nv_bfloat16><<<g, kThreads, 0, stream>>>(a);
      break;
  }
  return cudaGetLastError();
}

}  // namespace qatkit::kernels::cuda
