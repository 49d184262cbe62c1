// Host/device annotation shared by the CPU and CUDA kernel tiers (no torch headers here).
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define QATKIT_HD __host__ __device__ __forceinline__
#else
#define QATKIT_HD inline
#endif
