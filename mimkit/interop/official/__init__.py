"""Checkpoints in the layouts of the methods' official code, in and out.

One module per format family, each with ``load(obj, part, img_size, overrides) -> (model, extras)``
and ``export(model, extras) -> obj`` (what ``torch.save`` writes):

| method | official code | module |
| --- | --- | --- |
| ``mae`` | facebookresearch/mae | :mod:`.mae` |
| ``beit`` | microsoft/unilm ``beit/`` | :mod:`.beit` |
| ``simmim`` | microsoft/SimMIM (ViT and Swin) | :mod:`.simmim` |
| ``ijepa`` | facebookresearch/ijepa | :mod:`.ijepa` |
| ``data2vec2`` | facebookresearch/fairseq ``examples/data2vec`` (image) | :mod:`.data2vec2` |

:func:`load_official` reads a file weights-only with the globals its format needs
(:data:`mimkit.checkpoint.OFFICIAL_GLOBALS`), guesses the method from the keys when it is not given,
and builds the mimkit model; ``extras`` are the file's tensors that have no place in it (a fine-tuned
classifier, a decoder mimkit's model lacks, data2vec 2.0's input norm), which :func:`official_checkpoint`
puts back.
"""
from __future__ import annotations

import importlib

from .common import METHODS, read_official
from .mae import infer_mae_kwargs, load_official_mae, official_mae_state_dict  # noqa: F401 (the MAE API)

# mimkit method -> official format module
_EXPORT = {"mae": "mae", "beit": "beit", "simmim": "simmim", "simmim_swin": "simmim", "ijepa": "ijepa",
           "data2vec2": "data2vec2"}


def _module(method: str):
    if method not in METHODS:
        raise ValueError(f"unknown official format {method!r}; --method is one of {', '.join(METHODS)}")
    return importlib.import_module(f"{__name__}.{method}")


def guess_method(obj: dict) -> str | None:
    """The official format of a checkpoint's top-level dict, from its keys; None when unclear."""
    if isinstance(obj.get("target_encoder"), dict) or (isinstance(obj.get("encoder"), dict)
                                                       and isinstance(obj.get("predictor"), dict)):
        return "ijepa"
    inner = next((obj[k] for k in ("model", "module", "state_dict", "model_ema") if isinstance(obj.get(k), dict)), obj)
    keys = {k.removeprefix("module.") for k in inner if isinstance(k, str)}
    has = lambda *names: any(k.startswith(names) for k in keys)  # noqa: E731
    if has("modality_encoders.IMAGE.", "_ema"):
        return "data2vec2"
    if has("encoder.") and "decoder.0.weight" in keys:
        return "simmim"
    if "patch_embed.proj.weight" not in keys:
        return None
    if has("lm_head.") or has("rel_pos_bias.") or any(k.endswith("attn.q_bias") for k in keys):
        return "beit"
    if has("decoder_embed.", "decoder_blocks.") or any(k.endswith("attn.qkv.bias") for k in keys):
        return "mae"
    return None


def load_official(path_or_obj, method: str | None = None, part: str | None = None, img_size=None,
                  return_extras: bool = False, trust_checkpoint: bool = False, **overrides):
    """A mimkit model from an official checkpoint (a path or its loaded top-level dict).

    ``method``: ``mae``, ``beit``, ``simmim``, ``ijepa``, ``data2vec2`` (guessed from the keys if None);
    ``part``: which state dict to read (``model_ema`` for MAE/BEiT EMA weights, ``target_encoder`` for
    I-JEPA's EMA encoder, ``ema`` for data2vec 2.0's teacher); ``img_size``: build for another resolution
    (positions resized as the reference does); ``overrides``: builder arguments the file does not hold
    (``num_heads``, ``norm_pix_loss``, ``mask_ratio``, ``vocab_size``...). ``return_extras``: also return
    the tensors with no place in the model. Read weights-only; ``trust_checkpoint=True`` unpickles fully."""
    from ...files import is_trusted, trusted_checkpoints

    if trust_checkpoint and not is_trusted():
        with trusted_checkpoints():
            return load_official(path_or_obj, method, part, img_size, return_extras, **overrides)
    obj = read_official(path_or_obj, method)
    if method is None:
        method = guess_method(obj)
        if method is None:
            where = path_or_obj if not isinstance(path_or_obj, dict) else "this checkpoint"
            raise ValueError(f"cannot tell which official code wrote {where} from its keys; pass --method "
                             f"({', '.join(METHODS)})")
    model, extras = _module(method).load(obj, part=part, img_size=img_size, overrides=overrides)
    return (model, extras) if return_extras else model


def official_checkpoint(model, extras: dict | None = None, method: str | None = None) -> dict:
    """What the official code of ``model``'s method saves (``torch.save(obj, path)``), with ``extras``
    from :func:`load_official` put back. ``method="simmim"`` writes a BEiT that came from a SimMIM ViT
    back in SimMIM's layout."""
    name = method or _EXPORT.get(getattr(model, "method", None))
    if name is None:
        raise ValueError(f"no official layout for method {getattr(model, 'method', None)!r}; "
                         f"supported: {', '.join(sorted(_EXPORT))}")
    return _module(name).export(model, extras)


def save_official(model, path, extras: dict | None = None, method: str | None = None):
    """Write :func:`official_checkpoint` to ``path`` (atomically)."""
    import torch

    from ...files import atomic_write

    obj = official_checkpoint(model, extras, method)
    atomic_write(path, lambda p: torch.save(obj, p))
    return path


EXTRAS = "official_extras.safetensors"  # beside an imported model: the file's tensors it has no place for


def save_extras(extras: dict, path) -> None:
    from safetensors.torch import save_file

    from ...files import atomic_write

    sd = {k: v.detach().contiguous().cpu() for k, v in extras.items()}
    atomic_write(path, lambda p: save_file(sd, p))


def load_extras(model_path) -> dict:
    """The extras saved beside a mimkit model by ``mimkit import --from official`` ({} if none)."""
    from pathlib import Path

    from ...files import read_safetensors

    path = Path(model_path)
    path = path / EXTRAS if path.is_dir() else path.parent / EXTRAS
    return read_safetensors(path) if path.is_file() else {}
