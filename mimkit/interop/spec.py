"""A mimkit model from any checkpoint spec a command takes (``--checkpoint``, ``--init``): a mimkit run or
file, a ``transformers`` directory, a timm export or a recipe at random init. Here, below the training
engine and the evaluation, so that both read models the same way."""
from __future__ import annotations

CHECKPOINT_HELP = ("mimkit model: run directory, model directory, .safetensors or Lightning .ckpt; "
                   "hf:DIR = a transformers save_pretrained directory (converted with from_hf); "
                   "timm:DIR = a directory written by `mimkit export --format timm`; "
                   "recipe:NAME = a randomly initialised recipe (a baseline)")


def load_model_spec(spec: str, trust_checkpoint: bool = False, **overrides):
    """Model from a checkpoint spec (see ``CHECKPOINT_HELP``). Pickled files (``.ckpt``, a transformers
    ``pytorch_model.bin``) are read safely; ``trust_checkpoint=True`` unpickles them fully."""
    from ..files import is_trusted, trusted_checkpoints

    if trust_checkpoint and not is_trusted():
        with trusted_checkpoints():
            return load_model_spec(spec, **overrides)
    spec = str(spec)
    if spec.startswith("hf:"):
        from .hf import from_hf

        return from_hf(spec[3:]).eval()
    if spec.startswith("timm:"):
        from . import timm as timm_interop

        if not hasattr(timm_interop, "import_timm_dir"):
            raise ValueError("this mimkit has no timm import (mimkit.interop.timm.import_timm_dir)")
        return timm_interop.import_timm_dir(spec[5:], **overrides).eval()
    if spec.startswith("recipe:"):
        from ..registry import create

        return create(spec[7:], **overrides).eval()
    from ..checkpoint import load_model

    return load_model(spec, **overrides)
