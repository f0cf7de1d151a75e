"""pyops: fused PyTorch ops in CUDA, Triton and C++, each a torch.library op with autograd."""

from ._backend import BACKENDS, available_backends
from . import gaussians  # noqa: F401  (fake kernels of the gs_* stage ops)
from .derf import Derf, convert_to_derf, derf
from .quantizer import VectorQuantizer
from .vq import vq_search, vq_segment_sum

__all__ = ["BACKENDS", "available_backends", "Derf", "convert_to_derf", "derf", "vq_search", "vq_segment_sum", "VectorQuantizer"]
__version__ = "0.1.0"
