// avx512 copy of the CPU rasterizer row kernels (see isa.h and setup.py's ISA_FLAGS).
#include "gaussians_raster_kernel.h"
