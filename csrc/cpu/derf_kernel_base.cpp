// Baseline copy of the CPU Derf kernels: the compiler's default flags (see isa.h).
#include "derf_kernel.h"
