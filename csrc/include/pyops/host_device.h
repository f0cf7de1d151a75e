// PYOPS_HOST_DEVICE marks inline math that the CPU and CUDA kernels share through the *_math.h headers.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define PYOPS_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define PYOPS_HOST_DEVICE inline
#endif
