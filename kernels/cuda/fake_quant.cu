// CUDA fake-quantize kernels. Built with --fmad=false and IEEE division/rounding so that every
// output equals the CPU kernels' bit for bit (the scalar math is kernels/common/fake_quant_scalar.h).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <atomic>
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

/// Channels whose qparams a block keeps in shared memory (4 floats each: 1 / s, s, qmin - z,
/// qmax - z): 16 KiB at most.
constexpr std::int64_t kSmemChannels = 1024;

/// One channel's qparams as the element loop uses them (the same float values the CPU forms:
/// 1 / s is one IEEE division of s, lo / hi one float subtraction each).
struct QParams {
  float inv, s, lo, hi;
};

__device__ __forceinline__ QParams qparams_of(const FakeQuantArgs& a, std::int64_t c) {
  const float s = a.scale[c], z = a.zero_point[c];
  return {1.0f / s, s, a.quant_min - z, a.quant_max - z};
}

// I: the index type of the per-element channel lookup (chunks that straddle a channel boundary),
// uint32 when every index fits (a 64-bit division is a software routine of dozens of
// instructions). The H200 run of 2026-12-04 measured this kernel compute-bound (52 % of the copy's
// bandwidth, then 77 % with one reciprocal per 8 elements; float16 / bfloat16 42-45 %: the same
// work per element over half the bytes). So the grid is one resident wave (forward_typed) and each
// thread walks its chunks with the per-chunk work taken out of the loop: per-tensor qparams formed
// once per thread; per-channel ones read from shared memory (each block forms 1 / s once per
// channel, up to kSmemChannels channels), the chunk's channel tracked by additions (the grid
// stride is constant) instead of a division and a modulo per chunk. The values are the CPU's
// either way: the same IEEE operations on the same operands.
template <typename S, bool kMask, bool kVec, typename I>
__global__ void forward_kernel(FakeQuantArgs a) {
  using E = Elem<S>;
  using C = typename E::C;
  extern __shared__ QParams smem_q[];
  const S* __restrict__ x = static_cast<const S*>(a.input);
  S* __restrict__ y = static_cast<S*>(a.output);
  const std::int64_t nbytes = mask_bytes(a.numel);
  const std::int64_t inner = a.inner, channels = a.channels;
  const bool in_smem = channels > 1 && channels <= kSmemChannels;
  if (in_smem) {
    for (std::int64_t c = threadIdx.x; c < channels; c += blockDim.x) smem_q[c] = qparams_of(a, c);
    __syncthreads();
  }
  const bool enabled = a.enabled == nullptr || *a.enabled != 0;  // read on the device: no host sync
  const QParams q_tensor = qparams_of(a, 0);  // per tensor: the only channel
  const std::int64_t first = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  // the chunk's position in its channel block (r) and its channel (c), advanced by additions
  std::int64_t r = 0, c = 0, r_step = 0, c_step = 0;
  if (channels != 1) {
    const std::int64_t j = first * 8, step = stride * 8;
    r = j % inner;
    c = (j / inner) % channels;
    r_step = step % inner;
    c_step = (step / inner) % channels;
  }
  for (std::int64_t b = first; b < nbytes; b += stride) {
    const std::int64_t i0 = b * 8;
    const int count = a.numel - i0 < 8 ? static_cast<int>(a.numel - i0) : 8;
    S xs[8];
    if (kVec && count == 8) {
      const Pack8<S> p = *reinterpret_cast<const Pack8<S>*>(x + i0);
#pragma unroll
      for (int k = 0; k < 8; ++k) xs[k] = p.v[k];
    } else {  // unrolled and predicated: constant indices keep xs / ys in registers, not local memory
#pragma unroll
      for (int k = 0; k < 8; ++k) xs[k] = k < count ? x[i0 + k] : S(0.0f);
    }
    // one set of qparams when the 8 elements share a channel (the common case), else per element
    QParams q0 = q_tensor;
    bool uniform = true;
    if (channels != 1) {
      uniform = r + count - 1 < inner;
      q0 = in_smem ? smem_q[c] : qparams_of(a, c);
    }
    const C inv0 = static_cast<C>(q0.inv), sc0 = static_cast<C>(q0.s);
    const C lo0 = static_cast<C>(q0.lo), hi0 = static_cast<C>(q0.hi);
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
          const I ck = ((static_cast<I>(i0) + static_cast<I>(k)) / static_cast<I>(inner)) % static_cast<I>(channels);
          const QParams qk = in_smem ? smem_q[ck] : qparams_of(a, ck);
          inv = static_cast<C>(qk.inv);
          sc = static_cast<C>(qk.s);
          lo = static_cast<C>(qk.lo);
          hi = static_cast<C>(qk.hi);
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
#pragma unroll
      for (int k = 0; k < 8; ++k) {
        if (k < count) y[i0 + k] = ys[k];
      }
    }
    if (kMask) a.mask[b] = static_cast<std::uint8_t>(bits);
    if (channels != 1) {  // the next chunk of this thread: i0 + stride * 8
      r += r_step;
      c += c_step;
      if (r >= inner) {
        r -= inner;
        c += 1;
      }
      if (c >= channels) c -= channels;
    }
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

/// Blocks of `kernel` (kThreads threads, smem bytes) resident on the current device at once: SMs x
/// blocks per SM, asked once per device and kernel (0 where the runtime cannot say).
template <typename Kernel>
std::int64_t resident_blocks(Kernel kernel, std::size_t smem) {
  static std::atomic<int> cache[2][64];  // [smem in use][device]
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) return 0;
  std::atomic<int>& slot = cache[smem ? 1 : 0][dev];
  int v = slot.load(std::memory_order_relaxed);
  if (v == 0) {
    int sms = 0, per_sm = 0;
    if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess ||
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads,
                                                      smem ? kSmemChannels * sizeof(QParams) : 0) != cudaSuccess) {
      (void)cudaGetLastError();
      return 0;
    }
    v = sms * per_sm;
    slot.store(v, std::memory_order_relaxed);
  }
  return v;
}

template <typename S, bool kMask, bool kVec, typename I>
void forward_launch_one(const FakeQuantArgs& a, cudaStream_t stream) {
  const auto kernel = forward_kernel<S, kMask, kVec, I>;
  const std::size_t smem = a.channels > 1 && a.channels <= kSmemChannels ? a.channels * sizeof(QParams) : 0;
  // one resident wave (or fewer blocks): each thread walks several chunks (forward_kernel)
  const std::int64_t nbytes = mask_bytes(a.numel);
  std::int64_t blocks = grid_for(nbytes).x;
  const std::int64_t wave = resident_blocks(kernel, smem);
  if (wave > 0 && blocks > wave) blocks = wave;
  kernel<<<static_cast<unsigned>(blocks), kThreads, smem, stream>>>(a);
}

template <typename S, typename I>
void forward_launch(const FakeQuantArgs& a, bool v, cudaStream_t stream) {
  if (a.mask) {
    if (v)
      forward_launch_one<S, true, true, I>(a, stream);
    else
      forward_launch_one<S, true, false, I>(a, stream);
  } else {
    if (v)
      forward_launch_one<S, false, true, I>(a, stream);
    else
      forward_launch_one<S, false, false, I>(a, stream);
  }
}

template <typename S>
cudaError_t forward_typed(const FakeQuantArgs& a, cudaStream_t stream) {
  const std::size_t vec = sizeof(Pack8<S>) >= 16 ? 16 : sizeof(Pack8<S>);
  const bool v = aligned(a.input, vec) && aligned(a.output, vec);
  // every index below numel + 8 (inner and channels divide numel): 32 bits when that fits
  if (a.numel < (std::int64_t{1} << 32) - 16) {
    forward_launch<S, std::uint32_t>(a, v, stream);
  } else {
    forward_launch<S, std::int64_t>(a, v, stream);
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
