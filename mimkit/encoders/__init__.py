from .beit import BEiTEncoder
from .swin import SwinEncoder
from .vit import ViTEncoder, attention_probs

__all__ = ["BEiTEncoder", "SwinEncoder", "ViTEncoder", "attention_probs"]
