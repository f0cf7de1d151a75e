// Baseline copy of the CPU VQ kernels: the compiler's default flags (see isa.h).
#include "vq_kernel.h"
