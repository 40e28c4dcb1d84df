"""mimkit: masked image modeling (MAE, SimMIM ViT/Swin, BEiT, MaskFeat, data2vec 2.0, I-JEPA) on plain PyTorch modules."""
from . import methods, tokenizer  # noqa: F401  (their modules register every builder and recipe)
from .base import EncoderOutput, MIMModel, MIMOutput
from .registry import create, list_models, register_recipe

__version__ = "0.1.0"
__all__ = ["create", "list_models", "register_recipe", "MIMModel", "MIMOutput", "EncoderOutput", "load", "save"]


def load(path, **kwargs):
    """Load a mimkit model from a run directory, a ``.safetensors`` file or a Lightning ``.ckpt``.
    A ``.ckpt`` is read with ``weights_only=True``: one holding other Python objects is refused unless
    ``trust_checkpoint=True`` (only for files you trust: unpickling can run code)."""
    from .checkpoint import load_model

    return load_model(path, **kwargs)


def save(model, path):
    """Save ``model`` as ``model.safetensors`` + ``config.json`` in directory ``path``."""
    from .checkpoint import save_model

    return save_model(model, path)
