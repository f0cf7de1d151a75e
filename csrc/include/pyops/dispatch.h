// Runtime dtype -> template dispatch shared by the native backends (host code only: the macros expand to a
// switch over at::ScalarType that instantiates the lambda once per listed type).
#pragma once

#include <ATen/Dispatch.h>

// float, half and bfloat16 storage: the dtypes the CUDA kernels take (the host checks in pyops/<op>.h
// reject float64 on CUDA before any dispatch). Inside the lambda `scalar_t` is the storage type.
#define PYOPS_DISPATCH_FLOAT_HALF_BF16(TYPE, NAME, ...)                                                 \
  AT_DISPATCH_SWITCH(TYPE, NAME,                                                                        \
                     AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__) AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__) \
                         AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))
