from .vit import ViTEncoder, attention_probs

__all__ = ["ViTEncoder", "attention_probs"]
