"""Run configuration: YAML files with dotted command-line overrides, checked against defaults."""
from __future__ import annotations

import copy
import difflib
from pathlib import Path

import yaml

DEFAULTS: dict = {
    "model": {"name": "mae_vit_tiny_patch4_28"},  # plus any constructor override of the recipe
    "data": {
        "name": "fashion_mnist",  # fashion_mnist | image_folder
        "root": None,
        "img_size": 28,
        "in_chans": 1,
        "batch_size": 256,
        "num_workers": 0,
        "crop_scale": [0.2, 1.0],
        "hflip": True,
        "mean": None,
        "std": None,
        "limit": None,  # use only the first N training images
        "on_error": "skip",  # unreadable image files: skip (counted warning) | raise
    },
    "optim": {
        "lr": None,  # absolute learning rate; when null, lr = blr * effective_batch / lr_batch_base
        "blr": 1.5e-4,
        "lr_batch_base": 256,
        "min_lr": 0.0,
        "weight_decay": 0.05,
        "betas": [0.9, 0.95],
        "warmup_epochs": 1.0,
        "fused": None,  # fused AdamW: default on CUDA
    },
    "trainer": {
        "max_epochs": 10,
        "max_steps": -1,
        "accelerator": "auto",
        "devices": "auto",
        "num_nodes": 1,
        "strategy": "auto",  # ddp, fsdp, ...
        "precision": None,  # default: bf16-mixed on GPU, 32-true on CPU
        "accumulate_grad_batches": 1,
        "gradient_clip_val": None,
        "log_every_n_steps": 10,
        "deterministic": False,
        "compile": False,
        "limit_train_batches": None,
        "enable_progress_bar": True,
    },
    "run": {
        "dir": None,  # default runs/<recipe>-<timestamp>
        "root": "runs",
        "seed": 0,
        "checkpoint_every_n_epochs": 1,
        "checkpoint_every_n_steps": None,
        "keep_periodic": 3,
        "recon_every_n_epochs": 1,
        "recon_images": 8,
    },
}


def _suggest(key: str, options) -> str:
    close = difflib.get_close_matches(key, list(options), n=3)
    return f"; did you mean {', '.join(close)}?" if close else f"; valid keys: {', '.join(sorted(options))}"


def merge(base: dict, extra: dict, path: str = "") -> dict:
    """Deep-merge ``extra`` into a copy of ``base``; unknown keys are errors except under ``model``
    (checked against the recipe when the model is built)."""
    out = copy.deepcopy(base)
    for k, v in (extra or {}).items():
        where = f"{path}{k}"
        if path == "" and k not in out:
            raise ValueError(f"unknown config section {k!r}{_suggest(k, out)}")
        if path not in ("", "model.") and k not in out:
            raise ValueError(f"unknown config key {where!r}{_suggest(k, out)}")
        if isinstance(v, dict) and isinstance(out.get(k), dict) and path != "model.":
            out[k] = merge(out[k], v, f"{where}.")
        else:
            out[k] = v
    return out


def parse_overrides(items) -> dict:
    """``["trainer.max_epochs=5", "model.mask_ratio=0.6"]`` -> nested dict (values parsed as YAML)."""
    result: dict = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like section.key=value, e.g. trainer.max_epochs=5")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        if len(parts) < 2:
            raise ValueError(f"override key {key!r} needs a section, e.g. optim.{key} or model.{key}")
        node = result
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(value) if value != "" else None
    return result


def load_config(path=None, overrides=None) -> dict:
    cfg = copy.deepcopy(DEFAULTS)
    if path:
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"config file {p} not found (recipes' configs live in configs/)")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{p} is not valid YAML: {e}") from None
        cfg = merge(cfg, data)
    cfg = merge(cfg, parse_overrides(overrides))
    return cfg


def model_kwargs(cfg: dict) -> tuple[str, dict]:
    m = dict(cfg["model"])
    name = m.pop("name", None)
    if not name:
        raise ValueError("config needs model.name (a recipe; `mimkit models` lists them)")
    return name, m
