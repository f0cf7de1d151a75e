// base copy of the CPU contrastive-loss kernels (see isa.h and setup.py's ISA_FLAGS).
#include "contrastive_kernel.h"
