"""Model files: ``model.safetensors`` + ``config.json`` (recipe name and constructor arguments), and
models rebuilt from them or from a Lightning ``.ckpt``.

This module stands above both the registry (:func:`mimkit.registry.build_from_config`) and the safe
readers of :mod:`mimkit.files`; the readers' names are re-exported here for old imports
(``from mimkit.checkpoint import read_torch_checkpoint`` keeps working)."""
from __future__ import annotations

import json
from pathlib import Path

from .files import (
    CONFIG,
    OFFICIAL_GLOBALS,
    SAFE_GLOBALS,
    TRUST_HINT,
    WEIGHTS,
    UntrustedCheckpointError,
    YacsCfgNode,
    atomic_write,
    check_checkpoint_file,
    check_training_checkpoint,
    is_trusted,
    jsonable,
    official_globals,
    read_safetensors,
    read_torch_checkpoint,
    trusted_checkpoints,
    unsafe_globals,
)
from .registry import build_from_config

__all__ = ["CONFIG", "OFFICIAL_GLOBALS", "SAFE_GLOBALS", "TRUST_HINT", "WEIGHTS", "UntrustedCheckpointError",
           "YacsCfgNode", "atomic_write", "build_and_load", "build_from_config", "check_checkpoint_file",
           "check_training_checkpoint", "is_trusted", "jsonable", "load_model", "model_config",
           "official_globals", "read_safetensors", "read_torch_checkpoint", "resize_state_dict", "save_model",
           "trusted_checkpoints", "unsafe_globals"]


def model_config(model) -> dict:
    cfg = getattr(model, "mimkit_config", None)
    if not cfg:
        raise ValueError("model has no mimkit_config; build it with mimkit.create() or a from_hf() converter")
    return cfg


def save_model(model, directory, state_dict: dict | None = None) -> Path:
    """Write ``model`` (or ``state_dict``, e.g. gathered from FSDP shards, with ``model``'s config)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    cfg = model_config(model)
    sd = {k: v.detach().contiguous().cpu() for k, v in (state_dict if state_dict is not None else model.state_dict()).items()}
    atomic_write(directory / WEIGHTS, lambda p: save_file(sd, p, metadata={"format": "pt", "mimkit": "1"}))
    atomic_write(directory / CONFIG, lambda p: Path(p).write_text(json.dumps(jsonable(cfg), indent=2)))
    return directory


def load_model(path, map_location="cpu", img_size=None, trust_checkpoint: bool = False, **overrides):
    """Load from a directory (config.json + model.safetensors), a .safetensors file beside a
    config.json, or a Lightning .ckpt written by ``mimkit pretrain``.

    ``img_size`` (int or (H, W)) rebuilds the model for another input resolution: learned position
    embeddings and relative position tables are interpolated (2-D, grid aware), fixed sin-cos ones
    are recomputed for the new grid. Other ``overrides`` replace constructor arguments (e.g.
    ``mask_ratio=0.6``). A ``.ckpt`` is read safely (see :func:`read_torch_checkpoint`);
    ``trust_checkpoint=True`` unpickles it, and any tokenizer file its config names, fully."""
    if trust_checkpoint and not is_trusted():
        with trusted_checkpoints():
            return load_model(path, map_location, img_size, **overrides)
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.is_dir():
        if (path / WEIGHTS).exists():
            cfg_path, weights = path / CONFIG, path / WEIGHTS
        elif (path / "checkpoints" / "last.ckpt").exists():
            return load_model(path / "checkpoints" / "last.ckpt", map_location, img_size, **overrides)
        else:
            raise FileNotFoundError(f"{path} holds neither {WEIGHTS} nor checkpoints/last.ckpt")
    elif path.suffix == ".safetensors":
        cfg_path, weights = path.parent / CONFIG, path
    else:
        ckpt = read_torch_checkpoint(path)
        cfg = ckpt.get("hyper_parameters", {}).get("model_config") if isinstance(ckpt, dict) else None
        if cfg is None:
            raise ValueError(f"{path} is not a mimkit training checkpoint (no model_config in hyper_parameters)")
        sd = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
        return build_and_load(cfg, sd, path, img_size, overrides)
    if not cfg_path.exists():
        raise FileNotFoundError(f"{cfg_path} is missing; a mimkit model file needs its config.json beside it")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_path} is not valid JSON: {e}") from None
    return build_and_load(cfg, read_safetensors(weights), weights, img_size, overrides)


def build_and_load(cfg: dict, sd: dict, source, img_size=None, overrides=None):
    """Build the model of ``cfg`` (+ ``overrides``, ``img_size``) and load ``sd`` into it, resizing
    position tensors for another resolution; a clear error naming ``source`` when they do not match."""
    cfg = {**cfg, **(overrides or {})}
    old_size = cfg.get("img_size")
    if img_size is not None:
        from .ops import to_2tuple

        cfg["img_size"] = img_size if isinstance(img_size, int) else list(to_2tuple(img_size))
    model = build_from_config(cfg)
    if img_size is not None or overrides:
        sd = resize_state_dict(sd, model, old_size, cfg.get("patch_size", getattr(model, "patch_size", None)))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ValueError(f"{source} does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.eval()


def resize_position_tensor(key: str, value, want, trainable: bool | None,
                           old_grid, new_grid):
    """``value`` (saved under ``key`` for a model on ``old_grid`` patches) for a model on ``new_grid`` that
    expects ``want``: fixed (non-trainable) sin-cos embeddings take ``want`` (the model's recomputed table),
    learned absolute embeddings are resized bicubically on the 2-D grid, relative position bias tables
    bilinearly, derived buffers take ``want``. None when ``key`` is no position tensor."""
    from .ops import resize_pos_embed, resize_rel_pos_table

    if key.endswith("pos_embed") and value.ndim == 3:
        if trainable is False:
            return want
        return resize_pos_embed(value, old_grid, new_grid, num_prefix=value.shape[1] - old_grid[0] * old_grid[1])
    if key.endswith("relative_position_bias_table"):
        return resize_rel_pos_table(value, old_grid, new_grid)
    if key.endswith(("relative_position_index", "attn_mask")):
        return want
    return None


def resize_state_dict(sd: dict, model, old_img_size, patch_size) -> dict:
    """Adapt position tensors of ``sd`` (saved for ``old_img_size``) to ``model`` built at another size
    (:func:`resize_position_tensor`). Other shape mismatches are an error."""
    from .ops import to_2tuple

    own = model.state_dict()
    params = dict(model.named_parameters())
    out = dict(sd)
    new_size = to_2tuple(getattr(model, "img_size", old_img_size))
    for k, v in sd.items():
        if k not in own or own[k].shape == v.shape:
            continue
        if old_img_size is None or not patch_size:
            raise ValueError(f"{k}: saved shape {tuple(v.shape)} differs from {tuple(own[k].shape)} and the saved "
                             "config has no img_size/patch_size to resize from")
        old = to_2tuple(old_img_size)
        old_grid = (old[0] // patch_size, old[1] // patch_size)
        new_grid = (new_size[0] // patch_size, new_size[1] // patch_size)
        p = params.get(k)
        out[k] = resize_position_tensor(k, v, own[k], None if p is None else p.requires_grad, old_grid, new_grid)
        if out[k] is None:
            raise ValueError(f"{k}: saved shape {tuple(v.shape)} cannot be adapted to {tuple(own[k].shape)}")
        if out[k].shape != own[k].shape:
            raise ValueError(f"{k}: resized to {tuple(out[k].shape)} but the model expects {tuple(own[k].shape)}")
    return out
