from .transformer import GPTBlock, ViTBlock, set_backend
from .vq_tokenizer import TokenizerOutput, VQTokenizer

__all__ = ["GPTBlock", "ViTBlock", "set_backend", "TokenizerOutput", "VQTokenizer"]
