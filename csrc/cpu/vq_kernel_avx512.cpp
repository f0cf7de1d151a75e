// AVX-512 (F/BW/VL/DQ) copy of the CPU VQ kernels, built with -mavx512f ... -DCPU_CAPABILITY=AVX512 (see isa.h).
#include "vq_kernel.h"
