// CUDA fake-quantize kernels. Built with --fmad=false and IEEE division/rounding so that every
// output equals the CPU kernels' bit for bit (the scalar math is kernels/common/fake_quant_scalar.h).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "../common/fake_quant_scalar.h"
#include "elem_io.cuh"
#include "fake_quant_cuda.h"

namespace qatkit::kernels::cuda {
namespace {

constexpr int kThreads = 256;

/// 8 elements of S as one aligned vector for 16-byte (or 2x16-byte) loads and stores.
template <typename S>
struct alignas(sizeof(S) * 8 > 16 ? 16 : sizeof(S) * 8) Pack8 {
  S v[8];
};

// I: the index type of the channel lookup, uint32 when every index fits (a 64-bit division is a
// software routine of dozens of instructions; the H200 run of 2026-12-04 measured this kernel at
// 52 % of the copy's bandwidth, compute-bound on the divisions and a reciprocal per element).
template <typename S, bool kMask, bool kVec, typename I>
__global__ void forward_kernel(FakeQuantArgs a) {
  using E = Elem<S>;
  using C = typename E::C;
  const S* __restrict__ x = static_cast<const S*>(a.input);
  S* __restrict__ y = static_cast<S*>(a.output);
  const std::int64_t nbytes = mask_bytes(a.numel);
  const I inner = static_cast<I>(a.inner), channels = static_cast<I>(a.channels);
  const bool enabled = a.enabled == nullptr || *a.enabled != 0;  // read on the device: no host sync
  for (std::int64_t b = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; b < nbytes;
       b += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t i0 = b * 8;
    const int count = a.numel - i0 < 8 ? static_cast<int>(a.numel - i0) : 8;
    S xs[8];
    if (kVec && count == 8) {
      const Pack8<S> p = *reinterpret_cast<const Pack8<S>*>(x + i0);
#pragma unroll
      for (int k = 0; k < 8; ++k) xs[k] = p.v[k];
    } else {
      for (int k = 0; k < count; ++k) xs[k] = x[i0 + k];
    }
    // One qparam lookup and one reciprocal when the 8 elements share a channel (the common case),
    // else per element; the values are the same either way (1 / s is one IEEE division of s).
    const I j0 = static_cast<I>(i0);
    I c0 = 0;
    bool uniform = true;
    if (channels != 1) {
      const I blk0 = j0 / inner;
      uniform = (j0 + static_cast<I>(count - 1)) / inner == blk0;
      c0 = blk0 % channels;
    }
    const float s0 = a.scale[c0], z0 = a.zero_point[c0];
    const C inv0 = static_cast<C>(1.0f / s0), sc0 = static_cast<C>(s0);
    const C lo0 = static_cast<C>(a.quant_min - z0), hi0 = static_cast<C>(a.quant_max - z0);
    std::uint32_t bits = 0;
    S ys[8];
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      if (k < count && !enabled) {  // disabled: identity, every mask bit set
        ys[k] = xs[k];
        bits |= 1u << k;
      } else if (k < count) {
        C inv = inv0, sc = sc0, lo = lo0, hi = hi0;
        if (!uniform) {
          const I c = ((j0 + static_cast<I>(k)) / inner) % channels;
          const float s = a.scale[c], z = a.zero_point[c];
          inv = static_cast<C>(1.0f / s);
          sc = static_cast<C>(s);
          lo = static_cast<C>(a.quant_min - z);
          hi = static_cast<C>(a.quant_max - z);
        }
        std::uint32_t in;
        ys[k] = E::store(fake_quant_value<C>(E::load(xs[k]), inv, sc, lo, hi, in));
        bits |= in << k;
      }
    }
    if (kVec && count == 8) {
      Pack8<S> p;
#pragma unroll
      for (int k = 0; k < 8; ++k) p.v[k] = ys[k];
      *reinterpret_cast<Pack8<S>*>(y + i0) = p;
    } else {
      for (int k = 0; k < count; ++k) y[i0 + k] = ys[k];
    }
    if (kMask) a.mask[b] = static_cast<std::uint8_t>(bits);
  }
}

template <typename S, bool kVec>
__global__ void backward_kernel(FakeQuantBackwardArgs a) {
  const S* __restrict__ g = static_cast<const S*>(a.grad_output);
  S* __restrict__ dx = static_cast<S*>(a.grad_input);
  const std::int64_t nbytes = mask_bytes(a.numel);
  for (std::int64_t b = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; b < nbytes;
       b += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t i0 = b * 8;
    const std::uint32_t bits = a.mask[b];
    if (kVec && a.numel - i0 >= 8) {
      Pack8<S> p = *reinterpret_cast<const Pack8<S>*>(g + i0);
#pragma unroll
      for (int k = 0; k < 8; ++k) p.v[k] = ((bits >> k) & 1u) ? p.v[k] : S(0.0f);
      *reinterpret_cast<Pack8<S>*>(dx + i0) = p;
    } else {
      const int count = a.numel - i0 < 8 ? static_cast<int>(a.numel - i0) : 8;
      for (int k = 0; k < count; ++k) dx[i0 + k] = ((bits >> k) & 1u) ? g[i0 + k] : S(0.0f);
    }
  }
}

bool aligned(const void* p, std::size_t n) { return reinterpret_cast<std::uintptr_t>(p) % n == 0; }

dim3 grid_for(std::int64_t nbytes) {
  // Enough blocks to fill the GPU several times over; the grid-stride loop covers the rest.
  std::int64_t blocks = (nbytes + kThreads - 1) / kThreads;
  if (blocks > 65535LL * 8) blocks = 65535LL * 8;
  return dim3(static_cast<unsigned>(blocks < 1 ? 1 : blocks));
}

template <typename S, typename I>
void forward_launch(const FakeQuantArgs& a, bool v, dim3 grid, cudaStream_t stream) {
  if (a.mask) {
    if (v)
      forward_kernel<S, true, true, I><<<grid, kThreads, 0, stream>>>(a);
    else
      forward_kernel<S, true, false, I><<<grid, kThreads, 0, stream>>>(a);
  } else {
    if (v)
      forward_kernel<S, false, true, I><<<grid, kThreads, 0, stream>>>(a);
    else
      forward_kernel<S, false, false, I><<<grid, kThreads, 0, stream>>>(a);
  }
}

template <typename S>
cudaError_t forward_typed(const FakeQuantArgs& a, cudaStream_t stream) {
  const std::int64_t nbytes = mask_bytes(a.numel);
  const std::size_t vec = sizeof(Pack8<S>) >= 16 ? 16 : sizeof(Pack8<S>);
  const bool v = aligned(a.input, vec) && aligned(a.output, vec);
  const dim3 grid = grid_for(nbytes);
  // every index below numel + 8 (inner and channels divide numel): 32 bits when that fits
  if (a.numel < (std::int64_t{1} << 32) - 16) {
    forward_launch<S, std::uint32_t>(a, v, grid, stream);
  } else {
    forward_launch<S, std::int64_t>(a, v, grid, stream);
  }
  return cudaGetLastError();
}

template <typename S>
cudaError_t backward_typed(const FakeQuantBackwardArgs& a, cudaStream_t stream) {
  const std::size_t vec = sizeof(Pack8<S>) >= 16 ? 16 : sizeof(Pack8<S>);
  const dim3 grid = grid_for(mask_bytes(a.numel));
  if (aligned(a.grad_output, vec) && aligned(a.grad_input, vec))
    backward_kernel<S, true><<<grid, kThreads, 0, stream>>>(a);
  else
    backward_kernel<S, false><<<grid, kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_fake_quant_forward(const FakeQuantArgs& a, cudaStream_t stream) {
  if (a.numel == 0) return cudaSuccess;
  switch (a.dtype) {
    case DType::kFloat32:
      return forward_typed<float>(a, stream);
    case DType::kFloat64:
      return forward_typed<double>(a, stream);
    case DType::kFloat16:
      return forward_typed<__half>(a, stream);
    case DType::kBFloat16:
      return forward_typed<__nv_bfloat16>(a, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t launch_fake_quant_backward(const FakeQuantBackwardArgs& a, cudaStream_t stream) {
  if (a.numel == 0) return cudaSuccess;
  switch (a.dtype) {
    case DType::kFloat32:
      return backward_typed<float>(a, stream);
    case DType::kFloat64:
      return backward_typed<double>(a, stream);
    case DType::kFloat16:
      return backward_typed<__half>(a, stream);
    case DType::kBFloat16:
      return backward_typed<__nv_bfloat16>(a, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace qatkit::kernels::cuda
