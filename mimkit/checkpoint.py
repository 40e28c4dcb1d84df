"""Model files: ``model.safetensors`` + ``config.json`` (recipe name and constructor arguments).

Writes are atomic (temporary file in the same directory, then ``os.replace``), so a crash never
leaves a half-written file under the final name. Reads give clear errors for missing, truncated or
foreign files."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

CONFIG = "config.json"
WEIGHTS = "model.safetensors"


def atomic_write(path, write_fn) -> None:
    """Call ``write_fn(tmp_path)`` then rename onto ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write_fn(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def model_config(model) -> dict:
    cfg = getattr(model, "mimkit_config", None)
    if not cfg:
        raise ValueError("model has no mimkit_config; build it with mimkit.create() or a from_hf() converter")
    return cfg


def save_model(model, directory) -> Path:
    from safetensors.torch import save_file

    directory = Path(directory)
    cfg = model_config(model)
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(directory / WEIGHTS, lambda p: save_file(sd, p, metadata={"format": "pt", "mimkit": "1"}))
    atomic_write(directory / CONFIG, lambda p: Path(p).write_text(json.dumps(_jsonable(cfg), indent=2)))
    return directory


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def build_from_config(cfg: dict):
    from .registry import _RECIPES, _load_all, create

    cfg = dict(cfg)
    recipe = cfg.pop("recipe", None)
    builder = cfg.pop("builder", None)
    _load_all()
    if recipe:
        _, defaults, _ = _RECIPES[recipe] if recipe in _RECIPES else (None, {}, None)
        return create(recipe, **{k: v for k, v in cfg.items() if defaults.get(k, object()) != v})
    if builder:
        from .registry import BUILDERS

        if builder not in BUILDERS:
            raise ValueError(f"config names unknown builder {builder!r}; known: {sorted(BUILDERS)}")
        model = BUILDERS[builder](**cfg)
        model.mimkit_config = {"recipe": None, "builder": builder, **cfg}
        return model
    raise ValueError("config.json has neither 'recipe' nor 'builder'")


def read_safetensors(path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path} is not a readable safetensors file (truncated or corrupt?): {e}") from None


def read_torch_checkpoint(path) -> dict:
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises many types for corrupt files
        raise ValueError(
            f"{path} is not a readable PyTorch checkpoint ({type(e).__name__}: {str(e)[:200]}); the file is "
            "truncated or not a checkpoint. Use an earlier checkpoint (e.g. last.ckpt or a periodic one)."
        ) from None


def load_model(path, map_location="cpu"):
    """Load from a directory (config.json + model.safetensors), a .safetensors file beside a
    config.json, or a Lightning .ckpt written by ``mimkit pretrain``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.is_dir():
        if (path / WEIGHTS).exists():
            cfg_path, weights = path / CONFIG, path / WEIGHTS
        elif (path / "checkpoints" / "last.ckpt").exists():
            return load_model(path / "checkpoints" / "last.ckpt")
        else:
            raise FileNotFoundError(f"{path} holds neither {WEIGHTS} nor checkpoints/last.ckpt")
    elif path.suffix == ".safetensors":
        cfg_path, weights = path.parent / CONFIG, path
    else:
        ckpt = read_torch_checkpoint(path)
        cfg = ckpt.get("hyper_parameters", {}).get("model_config") if isinstance(ckpt, dict) else None
        if cfg is None:
            raise ValueError(f"{path} is not a mimkit training checkpoint (no model_config in hyper_parameters)")
        model = build_from_config(cfg)
        sd = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
        model.load_state_dict(sd)
        return model.eval()
    if not cfg_path.exists():
        raise FileNotFoundError(f"{cfg_path} is missing; a mimkit model file needs its config.json beside it")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_path} is not valid JSON: {e}") from None
    model = build_from_config(cfg)
    sd = read_safetensors(weights)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ValueError(f"{weights} does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.eval()
