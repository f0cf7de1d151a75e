"""pyops: fused PyTorch ops in CUDA, Triton and C++, each a torch.library op with autograd."""

from ._backend import BACKENDS, available_backends
from .anchors import AnchorDecoder, AnchorMLP, DecodedGaussians, anchor_blend_weight, anchor_decode
from .attribute_pair import attribute_pair_loss
from .contrastive import contrastive_loss
from .derf import Derf, convert_to_derf, derf
from .derf_linear import DerfLinear, FusedDerf, derf_linear, fuse_derf_linear
from .gaussians import (
                        intersect_tiles,
                        isect_offsets,
                        project_gaussians,
                        quat_scale_to_covar,
                        rasterize_gaussians,
                        rasterize_to_pixels,
                        spherical_harmonics,
                        tile_offsets,
)
from .hexplane import HexPlaneField, hexplane_features
from .quantizer import VectorQuantizer
from .retrieve import retrieve
from .vq import vq_search, vq_segment_sum
from .vq_index import VQIndex

__all__ = ["BACKENDS", "available_backends", "Derf", "convert_to_derf", "derf", "vq_search", "vq_segment_sum",
           "VQIndex", "VectorQuantizer", "hexplane_features", "HexPlaneField",
           "intersect_tiles", "project_gaussians", "quat_scale_to_covar", "rasterize_gaussians",
           "rasterize_to_pixels", "spherical_harmonics", "isect_offsets", "tile_offsets",
           "anchor_blend_weight", "anchor_decode", "AnchorDecoder", "AnchorMLP", "DecodedGaussians",
           "derf_linear", "DerfLinear", "FusedDerf", "fuse_derf_linear", "retrieve", "attribute_pair_loss",
           "contrastive_loss"]
__version__ = "0.1.0"
