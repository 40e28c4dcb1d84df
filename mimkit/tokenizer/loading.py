"""Loading a tokenizer from a file or a saved config: what BEiT's ``tokenizer_path`` /
``tokenizer_config`` options and ``mimkit tokenizer`` read."""
from __future__ import annotations

from pathlib import Path

from .dalle import load_dalle_encoder
from .dalle_pytorch import load_dalle_pytorch_dvae
from .weights import read_state_dict

_STATE_DICT_SUFFIXES = (".pt", ".pth", ".bin", ".pkl")


def is_tokenizer(model) -> bool:
    return hasattr(model, "encode_ids") and hasattr(model, "vocab_size") and hasattr(model, "grid_size")


def tokenizer_options(options: dict) -> dict:
    """The registry's config layer for BEiT: ``tokenizer_config`` (a saved tokenizer's mimkit config;
    its weights arrive with the BEiT state dict) or ``tokenizer_path`` (read from disk) -> a frozen
    ``tokenizer`` module, or None."""
    config, path = options.get("tokenizer_config"), options.get("tokenizer_path")
    if config:
        from ..registry import build_from_config

        tok = build_from_config(config)
    elif path:
        tok = load_tokenizer(path)
    else:
        return {"tokenizer": None}
    return {"tokenizer": tok}


def load_tokenizer(path, trust_checkpoint: bool = False, **dalle_kwargs):
    """Load a tokenizer from ``path``: a mimkit model directory / ``.safetensors`` / ``.ckpt``
    written by ``mimkit tokenizer train`` (or ``mimkit.save``), or a state dict file (``.pt``/``.pth``/
    ``.bin``, or a ``.safetensors`` without a ``config.json`` beside it) of the DALL-E encoder or of
    BEiT's DALLE-pytorch dVAE (``pytorch_model.bin``), told apart by their keys. ``dalle_kwargs``
    (``img_size``, ``pixel_mean``, ``pixel_std``) go to the state dict loaders. Files are read safely;
    ``trust_checkpoint=True`` unpickles one that holds more than tensors."""
    from ..files import is_trusted, trusted_checkpoints

    if trust_checkpoint and not is_trusted():
        with trusted_checkpoints():
            return load_tokenizer(path, **dalle_kwargs)
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"no tokenizer at {path}; train one with `mimkit tokenizer train --config configs/dvae_tiny_28.yaml` "
            "and pass its run directory"
        )
    dalle = path.is_file() and (path.suffix in _STATE_DICT_SUFFIXES or
                                (path.suffix == ".safetensors" and not (path.parent / "config.json").exists()))
    if dalle:
        from .dalle_pytorch import is_dalle_pytorch_state_dict

        sd = read_state_dict(path)
        if is_dalle_pytorch_state_dict(sd):
            return load_dalle_pytorch_dvae(sd, **dalle_kwargs)
        return load_dalle_encoder(sd, **dalle_kwargs)
    from ..checkpoint import load_model
    from ..files import WEIGHTS

    if path.is_dir() and not (path / WEIGHTS).exists() and (path / "model" / WEIGHTS).exists():
        path = path / "model"  # a run directory of `mimkit tokenizer train`
    model = load_model(path)
    if not is_tokenizer(model):
        raise ValueError(f"{path} holds a {getattr(model, 'method', type(model).__name__)} model, not a tokenizer "
                         "(it has no encode_ids); point to a run of `mimkit tokenizer train`")
    return model
