// AVX-512 (F/BW/VL/DQ) copy of the CPU HexPlane kernels, built with -mavx512f ... -DCPU_CAPABILITY=AVX512 (see isa.h).
#include "hexplane_kernel.h"
