// Included first by the ISA copies (*_avx2.cpp, *_avx512.cpp), before their `#pragma GCC target`: GCC 13's
// libstdc++ marks allocator members always_inline, and a library header first compiled under the pragma then
// fails to inline them ("target specific option mismatch"). So every header except ATen's vector headers
// (which must see the ISA macros) is compiled here, without the pragma.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>
