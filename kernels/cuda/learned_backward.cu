// CUDA backward kernels of the learned quantizers, which reduce qparam gradients: LSQ / LSQ+
// (docs/papers.md §6.1-6.2) and PACT (§6.3). One pass writes dX and reduces the qparam gradient terms
// (kernels/common lsq_grads / pact_grads) in float64. Per-tensor: fixed-size grid of block partials, then one block
// sums them in order. Several channels: one warp per channel (a grid-stride loop over channels), so each channel's sum
// has a fixed order. No atomics, no host synchronisation.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "../common/fake_quant_scalar.h"
#include "elem_io.cuh"
#include "fake_quant_cuda.h"

namespace qatkit::kernels::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kPartialBlocks = 1024;  // per-tensor: fixed, so the summation order never changes

/// One channel's qparams as the elements use them: 1 / s (one IEEE division), s, qmin - z, qmax - z.
/// Formed once per channel, not per element: the outputs may alias nothing the compiler can prove,
/// so it reloaded and divided per element (the H200 run of 2026-12-04: 55-64 % of copy).
struct ChannelQ {
  float inv, s, lo, hi;
};

__device__ __forceinline__ ChannelQ channel_q(const LsqBackwardArgs& a, std::int64_t c) {
  const float s = a.fq.scale[c];
  const float z = a.fq.zero_point[c];
  return {1.0f / s, s, a.fq.quant_min - z, a.fq.quant_max - z};
}

/// Gradients of element i (its channel's q); adds its terms to (ds, dz).
template <typename S>
__device__ __forceinline__ void lsq_element(const LsqBackwardArgs& a, std::int64_t i, const ChannelQ& q, double& ds,
                                            double& dz) {
  using E = Elem<S>;
  using C = typename E::C;
  C gx, gs, gz;
  lsq_grads<C>(E::load(static_cast<const S*>(a.fq.input)[i]), E::load(static_cast<const S*>(a.grad_output)[i]),
               static_cast<C>(q.inv), static_cast<C>(q.s), static_cast<C>(q.lo), static_cast<C>(q.hi), gx, gs, gz);
  static_cast<S*>(a.grad_input)[i] = E::store(gx);
  ds += static_cast<double>(gs);
  dz += static_cast<double>(gz);
}

__device__ __forceinline__ double warp_sum(double v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  return v;
}

/// Block-wide sum of (ds, dz) in a fixed order; the result is valid in thread 0.
__device__ void block_sum(double& ds, double& dz) {
  __shared__ double sh_s[kThreads / 32], sh_z[kThreads / 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  ds = warp_sum(ds);
  dz = warp_sum(dz);
  if (lane == 0) {
    sh_s[warp] = ds;
    sh_z[warp] = dz;
  }
  __syncthreads();
  if (warp == 0) {
    ds = lane < kThreads / 32 ? sh_s[lane] : 0.0;
    dz = lane < kThreads / 32 ? sh_z[lane] : 0.0;
    ds = warp_sum(ds);
    dz = warp_sum(dz);
  }
}

template <typename S>
__global__ void lsq_per_tensor_partials(LsqBackwardArgs a, double* partials) {
  double ds = 0.0, dz = 0.0;
  const ChannelQ q = channel_q(a, 0);
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < a.fq.numel;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    lsq_element<S>(a, i, q, ds, dz);
  }
  block_sum(ds, dz);
  if (threadIdx.x == 0) {
    partials[blockIdx.x] = ds;
    partials[gridDim.x + blockIdx.x] = dz;
  }
}

__global__ void lsq_finish_per_tensor(const double* partials, int blocks, double grad_factor, float* dscale,
                                      float* dzero) {
  double ds = 0.0, dz = 0.0;
  for (int b = threadIdx.x; b < blocks; b += blockDim.x) {
    ds += partials[b];
    dz += partials[blocks + b];
  }
  block_sum(ds, dz);
  if (threadIdx.x == 0) {
    dscale[0] = static_cast<float>(ds * grad_factor);
    dzero[0] = static_cast<float>(dz * grad_factor);
  }
}

template <typename S>
__global__ void lsq_per_channel(LsqBackwardArgs a, double grad_factor, float* dscale, float* dzero) {
  const int lane = threadIdx.x & 31;
  const std::int64_t warps_total = static_cast<std::int64_t>(gridDim.x) * (blockDim.x >> 5);
  const std::int64_t outer = a.fq.numel / (a.fq.inner * a.fq.channels);
  for (std::int64_t c = blockIdx.x * static_cast<std::int64_t>(blockDim.x >> 5) + (threadIdx.x >> 5); c < a.fq.channels;
       c += warps_total) {
    double ds = 0.0, dz = 0.0;
    const ChannelQ q = channel_q(a, c);
    for (std::int64_t o = 0; o < outer; ++o) {
      const std::int64_t base = (o * a.fq.channels + c) * a.fq.inner;
      for (std::int64_t j = lane; j < a.fq.inner; j += 32) lsq_element<S>(a, base + j, q, ds, dz);
    }
    ds = warp_sum(ds);
    dz = warp_sum(dz);
    if (lane == 0) {
      dscale[c] = static_cast<float>(ds * grad_factor);
      dzero[c] = static_cast<float>(dz * grad_factor);
    }
  }
}

template <typename S>
cudaError_t launch_typed(const LsqBackwardArgs& a, double grad_factor, float* dscale, float* dzero, double* ws,
                         cudaStream_t stream) {
  if (a.fq.channels == 1) {
    lsq_per_tensor_partials<S><<<kPartialBlocks, kThreads, 0, stream>>>(a, ws);
    lsq_finish_per_tensor<<<1, kThreads, 0, stream>>>(ws, kPartialBlocks, grad_factor, dscale, dzero);
  } else {
    const std::int64_t warps_per_block = kThreads / 32;
    std::int64_t blocks = (a.fq.channels + warps_per_block - 1) / warps_per_block;
    if (blocks > 65535LL * 8) blocks = 65535LL * 8;
    lsq_per_channel<S><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(a, grad_factor, dscale, dzero);
  }
  return cudaGetLastError();
}

template <typename S>
__global__ void pact_partials(PactBackwardArgs a, double* partials) {
  using E = Elem<S>;
  using C = typename E::C;
  const S* x = static_cast<const S*>(a.input);
  const S* dy = static_cast<const S*>(a.grad_output);
  S* dx = static_cast<S*>(a.grad_input);
  const C alpha = static_cast<C>(*a.alpha);
  double da = 0.0, unused = 0.0;
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < a.numel;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    C gx, ga;
    pact_grads<C>(E::load(x[i]), E::load(dy[i]), alpha, gx, ga);
    dx[i] = E::store(gx);
    da += static_cast<double>(ga);
  }
  block_sum(da, unused);
  if (threadIdx.x == 0) partials[blockIdx.x] = da;
}

__global__ void pact_finish(const double* partials, int blocks, float* dalpha) {
  double da = 0.0, unused = 0.0;
  for (int b = threadIdx.x; b < blocks; b += blockDim.x) da += partials[b];
  block_sum(da, unused);
  if (threadIdx.x == 0) *dalpha = static_cast<float>(da);
}

template <typename S>
cudaError_t pact_typed(const PactBackwardArgs& a, float* dalpha, double* ws, cudaStream_t stream) {
  pact_partials<S><<<kPartialBlocks, kThreads, 0, stream>>>(a, ws);
  pact_finish<<<1, kThreads, 0, stream>>>(ws, kPartialBlocks, dalpha);
  return cudaGetLastError();
}

}  // namespace

std::int64_t pact_workspace_doubles() { return kPartialBlocks; }

cudaError_t launch_pact_backward(const PactBackwardArgs& a, float* dalpha, double* workspace, cudaStream_t stream) {
  if (a.numel == 0) return cudaMemsetAsync(dalpha, 0, sizeof(float), stream);
  switch (a.dtype) {
    case DType::kFloat32:
      return pact_typed<float>(a, dalpha, workspace, stream);
    case DType::kFloat64:
      return pact_typed<double>(a, dalpha, workspace, stream);
    case DType::kFloat16:
      return pact_typed<__half>(a, dalpha, workspace, stream);
    case DType::kBFloat16:
      return pact_typed<__nv_bfloat16>(a, dalpha, workspace, stream);
  }
  return cudaErrorInvalidValue;
}

std::int64_t lsq_workspace_doubles(const LsqBackwardArgs& args) { return args.fq.channels == 1 ? 2 * kPartialBlocks : 0; }

cudaError_t launch_lsq_backward(const LsqBackwardArgs& a, double grad_factor, float* dscale, float* dzero,
                                double* workspace, cudaStream_t stream) {
  if (a.fq.numel == 0) {  // empty input: the gradients are sums over nothing
    // zero-length buffers are null pointers, which cudaMemsetAsync rejects even for 0 bytes
    // (invalid argument, seen on an H200); the CUDA glue answers an empty input before this
    if (dscale == nullptr || dzero == nullptr) return cudaSuccess;
    const cudaError_t e = cudaMemsetAsync(dscale, 0, sizeof(float) * a.fq.channels, stream);
    return e != cudaSuccess ? e : cudaMemsetAsync(dzero, 0, sizeof(float) * a.fq.channels, stream);
  }
  switch (a.fq.dtype) {
    case DType::kFloat32:
      return launch_typed<float>(a, grad_factor, dscale, dzero, workspace, stream);
    case DType::kFloat64:
      return launch_typed<double>(a, grad_factor, dscale, dzero, workspace, stream);
    case DType::kFloat16:
      return launch_typed<__half>(a, grad_factor, dscale, dzero, workspace, stream);
    case DType::kBFloat16:
      return launch_typed<__nv_bfloat16>(a, grad_factor, dscale, dzero, workspace, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace qatkit::kernels::cuda
