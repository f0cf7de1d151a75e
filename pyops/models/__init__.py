from .transformer import GPTBlock, ViTBlock, set_backend

__all__ = ["GPTBlock", "ViTBlock", "set_backend"]
