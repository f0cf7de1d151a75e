// Baseline copy of the CPU HexPlane kernels: the compiler's default flags (see isa.h).
#include "hexplane_kernel.h"
