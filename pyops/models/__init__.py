from .dynamic_scene import DynamicScene, synthetic_dynamic_scene
from .gaussian_scene import GaussianScene, look_at, pinhole, synthetic_scene
from .transformer import GPTBlock, ViTBlock, set_backend
from .vq_tokenizer import TokenizerOutput, VQTokenizer

__all__ = ["DynamicScene", "synthetic_dynamic_scene", "GaussianScene", "look_at", "pinhole", "synthetic_scene",
           "GPTBlock", "ViTBlock", "set_backend", "TokenizerOutput", "VQTokenizer"]
