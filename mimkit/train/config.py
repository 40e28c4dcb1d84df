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
        "on_error": "skip",
        "decode_on_device": False,  # image_folder: decode JPEGs + augment on the training device (GPU)  # unreadable image files: skip (counted warning) | raise
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
        "strategy": "auto",  # ddp, fsdp (wraps every transformer block), or any Lightning strategy name
        "fsdp_sharding": "FULL_SHARD",  # FSDP: FULL_SHARD | SHARD_GRAD_OP | HYBRID_SHARD | NO_SHARD
        "activation_checkpointing": False,  # FSDP: recompute each block's activations in backward
        "max_time": None,  # stop (with a checkpoint) after this wall time: "DD:HH:MM:SS" or {hours: 11}
        "precision": None,  # default: bf16-mixed on GPU, 32-true on CPU
        "accumulate_grad_batches": 1,
        "gradient_clip_val": None,
        "log_every_n_steps": 10,
        "deterministic": False,
        "compile": False,
        "limit_train_batches": None,
        "enable_progress_bar": True,
        "tune_cpu_malloc": True,  # CPU: let glibc reuse activation memory (mimkit.train.allocator)
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


def _num(cfg: dict, dotted: str, kind=float, low=None, high=None, allow_none=False, strict_low=False):
    section, key = dotted.split(".")
    v = cfg[section].get(key)
    if v is None and allow_none:
        return
    bad = isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and float(v) != int(v))
    if not bad:
        bad = (low is not None and (v <= low if strict_low else v < low)) or (high is not None and v > high)
    if bad:
        rng = []
        if low is not None:
            rng.append(f"{'>' if strict_low else '>='} {low}")
        if high is not None:
            rng.append(f"<= {high}")
        what = "an integer" if kind is int else "a number"
        raise ValueError(f"{dotted} must be {what}{' ' + ' and '.join(rng) if rng else ''}"
                         f"{' (or null)' if allow_none else ''}, got {v!r}")


def validate(cfg: dict) -> dict:
    """Check the values of a pretraining config (types and ranges) with messages naming the key;
    the model's own options are checked when the model is built."""
    d, t, o = cfg["data"], cfg["trainer"], cfg["optim"]
    for k in ("data.batch_size", "data.img_size", "data.in_chans", "trainer.accumulate_grad_batches",
              "trainer.num_nodes", "trainer.log_every_n_steps", "run.checkpoint_every_n_epochs"):
        _num(cfg, k, int, 1, allow_none=k.startswith("run."))
    for k in ("data.num_workers", "run.seed", "run.recon_images", "run.recon_every_n_epochs"):
        _num(cfg, k, int, 0, allow_none=k.startswith("run.recon"))
    _num(cfg, "data.limit", int, 1, allow_none=True)
    _num(cfg, "run.keep_periodic", int, -1)
    _num(cfg, "run.checkpoint_every_n_steps", int, 1, allow_none=True)
    _num(cfg, "trainer.max_epochs", int, -1)
    _num(cfg, "trainer.max_steps", int, -1)
    if t["max_epochs"] == -1 and t["max_steps"] == -1:
        raise ValueError("trainer.max_epochs and trainer.max_steps are both -1 (endless); set one of them")
    _num(cfg, "optim.lr", float, 0, allow_none=True, strict_low=True)
    _num(cfg, "optim.blr", float, 0, strict_low=True)
    _num(cfg, "optim.lr_batch_base", float, 0, strict_low=True)
    for k in ("optim.min_lr", "optim.weight_decay", "optim.warmup_epochs"):
        _num(cfg, k, float, 0)
    _num(cfg, "trainer.gradient_clip_val", float, 0, allow_none=True, strict_low=True)
    betas = o.get("betas")
    if not (isinstance(betas, (list, tuple)) and len(betas) == 2
            and all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in betas)):
        raise ValueError(f"optim.betas must be two numbers in [0, 1), e.g. [0.9, 0.95]; got {betas!r}")
    cs = d.get("crop_scale")
    if not (isinstance(cs, (list, tuple)) and len(cs) == 2
            and all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in cs) and 0 < cs[0] <= cs[1] <= 1):
        raise ValueError(f"data.crop_scale must be [min, max] with 0 < min <= max <= 1, e.g. [0.2, 1.0]; got {cs!r}")
    if d.get("on_error") not in ("skip", "raise"):
        raise ValueError(f"data.on_error must be 'skip' (counted warning) or 'raise', got {d.get('on_error')!r}")
    if d.get("name") not in ("fashion_mnist", "image_folder"):
        close = difflib.get_close_matches(str(d.get("name")), ["fashion_mnist", "image_folder"], n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise ValueError(f"data.name must be 'fashion_mnist' or 'image_folder', got {d.get('name')!r}{hint}")
    if d["name"] == "image_folder" and not d.get("root"):
        raise ValueError("data.name=image_folder needs data.root=<folder of images>")
    return cfg
