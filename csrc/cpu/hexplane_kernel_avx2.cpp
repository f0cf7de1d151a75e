// AVX2+FMA+F16C copy of the CPU HexPlane kernels, built with -mavx2 -mfma -mf16c -DCPU_CAPABILITY=AVX2 (see isa.h).
#include "hexplane_kernel.h"
