from .attribute_encoder import (
    AttributeDecoder,
    AttributeEncoder,
    AttributeEncoderConfig,
    AttributeLosses,
    AttributeModel,
    attribute_delta,
    leakage_probe,
    retrieval_metrics,
    train_attribute_model,
)
from .dynamic_scene import DynamicScene, synthetic_dynamic_scene
from .gaussian_scene import GaussianScene, look_at, pinhole, synthetic_scene
from .morel import MoRelConfig, MoRelScene
from .morel_train import DensifyConfig, MoRelLearningRates, MoRelTrainer
from .transformer import GPTBlock, ViTBlock, set_backend
from .vq_tokenizer import TokenizerOutput, VQTokenizer

__all__ = ["DynamicScene", "synthetic_dynamic_scene", "GaussianScene", "look_at", "pinhole", "synthetic_scene",
           "MoRelConfig", "MoRelScene", "DensifyConfig", "MoRelLearningRates", "MoRelTrainer", "GPTBlock", "ViTBlock",
           "set_backend", "TokenizerOutput", "VQTokenizer",
           "AttributeDecoder", "AttributeEncoder", "AttributeEncoderConfig", "AttributeLosses", "AttributeModel",
           "attribute_delta", "leakage_probe", "retrieval_metrics", "train_attribute_model"]
