"""Visual tokenizers for BEiT: a discrete VAE mimkit trains itself, the DALL-E dVAE encoder loaded
from a weights file, codebook statistics and pictures.

Every tokenizer offers ``encode_ids(images) -> (N, h*w)`` long ids and ``vocab_size``, ``grid_size``,
``img_size``, ``in_chans``."""
from __future__ import annotations

from pathlib import Path

from .dalle import DALLEEncoder, load_dalle_encoder, map_pixels, unmap_pixels
from .dvae import DiscreteVAE, perplexity_from_counts, psnr
from .stats import codebook_stats, format_stats

__all__ = ["DALLEEncoder", "DiscreteVAE", "codebook_stats", "format_stats", "load_dalle_encoder",
           "load_tokenizer", "map_pixels", "perplexity_from_counts", "psnr", "unmap_pixels"]

_STATE_DICT_SUFFIXES = (".pt", ".pth", ".bin", ".pkl")


def is_tokenizer(model) -> bool:
    return hasattr(model, "encode_ids") and hasattr(model, "vocab_size") and hasattr(model, "grid_size")


def load_tokenizer(path, **dalle_kwargs):
    """Load a tokenizer from ``path``: a mimkit model directory / ``.safetensors`` / ``.ckpt``
    written by ``mimkit tokenizer train`` (or ``mimkit.save``), or a DALL-E encoder state dict file
    (``.pt``/``.pth``/``.bin``, or a ``.safetensors`` without a ``config.json`` beside it)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"no tokenizer at {path}; train one with `mimkit tokenizer train --config configs/dvae_tiny_28.yaml` "
            "and pass its run directory"
        )
    dalle = path.is_file() and (path.suffix in _STATE_DICT_SUFFIXES or
                                (path.suffix == ".safetensors" and not (path.parent / "config.json").exists()))
    if dalle:
        return load_dalle_encoder(path, **dalle_kwargs)
    from ..checkpoint import WEIGHTS, load_model

    if path.is_dir() and not (path / WEIGHTS).exists() and (path / "model" / WEIGHTS).exists():
        path = path / "model"  # a run directory of `mimkit tokenizer train`
    model = load_model(path)
    if not is_tokenizer(model):
        raise ValueError(f"{path} holds a {getattr(model, 'method', type(model).__name__)} model, not a tokenizer "
                         "(it has no encode_ids); point to a run of `mimkit tokenizer train`")
    return model
