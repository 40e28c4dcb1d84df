"""Run configuration: YAML files with dotted command-line overrides, checked against defaults."""
from __future__ import annotations

import copy
import difflib
from pathlib import Path

import yaml

DEFAULTS: dict = {
    "model": {"name": "mae_vit_tiny_patch4_28"},  # plus any constructor override of the recipe
    "data": {
        "name": "fashion_mnist",  # fashion_mnist | image_folder | webdataset | hf_dataset
        "root": None,
        "urls": None,  # webdataset: shards "dir/train-{000000..000127}.tar", a list, the shard dir or its index
        "shard_window": 16,  # webdataset: samples are shuffled within windows of this many shards (null: all)
        "path": None,  # hf_dataset: a folder written by save_to_disk, or of parquet files
        "split": "train",  # hf_dataset: the split to train on
        "image_column": "image",  # hf_dataset: the column holding the images
        "val_root": None,  # validation loss on an image folder (data.name=image_folder)
        "val_urls": None,  # ... on shards (data.name=webdataset)
        "val_split": None,  # ... on another split of the source (fashion_mnist: test; hf_dataset: a split name)
        "val_fraction": None,  # ... on this fraction of the training images, held out of training
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
        "decode_on_device": False,  # image_folder: decode JPEGs + augment on the training device (GPU)
        "batch_augment": True,  # in-memory datasets (fashion_mnist): augment whole batches as tensor ops
    },
    "optim": {
        "lr": None,  # absolute learning rate; when null, lr = blr * effective_batch / lr_batch_base
        "blr": 1.5e-4,
        "lr_batch_base": 256,
        "min_lr": 0.0,
        "weight_decay": 0.05,
        "weight_decay_end": None,  # a cosine from weight_decay to this over the run (iBOT: 0.04 -> 0.4); null: constant
        "betas": [0.9, 0.95],
        "warmup_epochs": 1.0,
        "fused": True,  # fused AdamW kernel (CPU and CUDA); null: CUDA only (runs configured before 0.2)
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
        "max_minutes": None,  # a wall-clock budget that is a whole schedule (mimkit.train.budget); replaces max_epochs/max_steps
        "max_time": None,  # stop (with a checkpoint) after this wall time: "DD:HH:MM:SS" or {hours: 11}
        "precision": None,  # default: bf16-mixed on GPU, 32-true on CPU
        "accumulate_grad_batches": 1,
        "gradient_clip_val": None,
        "log_every_n_steps": 10,
        "deterministic": False,
        "compile": "auto",  # torch.compile: true | false | auto (runs of >= 600 optimiser steps; mimkit.train.speed)
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
        "checkpoint_monitor": "step",  # which periodic checkpoints to keep: the newest (step) or best (val/loss)
        "init": None,  # start the encoder from this model (mimkit run/file, hf:DIR, timm:DIR; mimkit.train.init)
        "report": None,  # a labelled ImageFolder or fashion_mnist: `mimkit pretrain` then writes `mimkit report` of the model into <run>/report
        "report_limit": None,  # the report reads only N training and N test images (a quick look; None: all)
        "report_protocols": None,  # frozen protocols of the report (default all: knn, linear, logreg)
        "report_probe_epochs": 50,  # the report's linear probe: epochs with all labels (at most 4x on small label sets)
        "report_rows": None,  # a read-only folder of evaluated rows the report reuses when their key matches
    },
}


# Keys added after a run was configured take, when that run is resumed, the value that reproduces
# what its code did then (its config.yaml lacks them): exact resume across versions.
LEGACY_DEFAULTS = {("data", "batch_augment"): False}


def fill_legacy_defaults(saved: dict, cfg: dict) -> dict:
    """``cfg`` (a resumed run's config merged over DEFAULTS) with each key in ``LEGACY_DEFAULTS`` that
    the saved ``config.yaml`` (``saved``) did not hold set to its legacy value."""
    for (section, key), value in LEGACY_DEFAULTS.items():
        if key not in (saved.get(section) or {}):
            cfg[section][key] = value
    return cfg


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


def _yaml_value(text: str):
    """A command-line value as YAML reads it, except that ``3e-3`` is a number (YAML 1.1 wants ``3.0e-3``)."""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value) if any(c in value for c in ".eE") and value.strip().lower() not in ("e", "inf", "nan") else value
        except ValueError:
            return value
    return value


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
        node[parts[-1]] = _yaml_value(value) if value != "" else None
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
    from .speed import should_compile

    should_compile(t.get("compile"), None, "cpu")  # a clear error for a value other than true/false/auto
    _num(cfg, "trainer.max_epochs", int, -1)
    _num(cfg, "trainer.max_steps", int, -1)
    _num(cfg, "trainer.max_minutes", float, 0, allow_none=True, strict_low=True)
    if t["max_epochs"] == -1 and t["max_steps"] == -1 and not t.get("max_minutes"):
        raise ValueError("trainer.max_epochs and trainer.max_steps are both -1 (endless); set one of them")
    _num(cfg, "optim.lr", float, 0, allow_none=True, strict_low=True)
    _num(cfg, "optim.blr", float, 0, strict_low=True)
    _num(cfg, "optim.lr_batch_base", float, 0, strict_low=True)
    for k in ("optim.min_lr", "optim.weight_decay", "optim.warmup_epochs"):
        _num(cfg, k, float, 0)
    _num(cfg, "optim.weight_decay_end", float, 0, allow_none=True)
    if o.get("weight_decay_end") is not None and not o["weight_decay"] > 0:
        raise ValueError("optim.weight_decay_end schedules the weight decay of the parameters that have one: "
                         "it needs optim.weight_decay > 0")
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
    names = ("fashion_mnist", "image_folder", "webdataset", "hf_dataset")
    if d.get("name") not in names:
        close = difflib.get_close_matches(str(d.get("name")), names, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise ValueError(f"data.name must be one of {', '.join(names)}, got {d.get('name')!r}{hint}")
    if d["name"] == "image_folder" and not d.get("root"):
        raise ValueError("data.name=image_folder needs data.root=<folder of images>")
    _validate_sources(cfg)
    _validate_report(cfg)
    return cfg


def _validate_report(cfg: dict) -> None:
    """``run.report``: fashion_mnist or an existing folder, checked before training, not after it."""
    rep = cfg["run"].get("report")
    protos = cfg["run"].get("report_protocols")
    known = ("knn", "linear", "logreg")
    if protos is not None and (isinstance(protos, str) or not protos or any(p not in known for p in protos)):
        raise ValueError(f"run.report_protocols must be a non-empty list of {list(known)}, got {protos!r}")
    epochs = cfg["run"].get("report_probe_epochs")
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
        raise ValueError(f"run.report_probe_epochs must be a whole number of epochs >= 1, got {epochs!r}")
    if rep in (None, "", False):
        return
    from pathlib import Path

    if not isinstance(rep, str) or not (rep in ("fashion_mnist", "fmnist", "fashion-mnist") or Path(rep).is_dir()):
        raise ValueError(f"run.report must be fashion_mnist or a labelled image folder (DIR/train/<class>/*, "
                         f"DIR/test/<class>/*, or DIR/<class>/*), got {rep!r}, which is not a directory")


def _validate_sources(cfg: dict) -> None:
    """The shard / Hugging Face / validation-set keys of ``data`` and ``run.checkpoint_monitor``."""
    d, name = cfg["data"], cfg["data"]["name"]
    urls = d.get("urls")
    if name == "webdataset":
        if not urls or not (isinstance(urls, str) or (isinstance(urls, list) and all(isinstance(u, str) for u in urls))):
            raise ValueError("data.name=webdataset needs data.urls: a brace pattern such as "
                             "/data/shards/train-{000000..000127}.tar, a list of tar files, or the shard directory")
    _num(cfg, "data.shard_window", int, 1, allow_none=True)
    if name == "hf_dataset" and not d.get("path"):
        raise ValueError("data.name=hf_dataset needs data.path=<folder written by save_to_disk, or of parquet files>")
    for k in ("split", "image_column"):
        if not isinstance(d.get(k), str) or not d.get(k):
            raise ValueError(f"data.{k} must be a non-empty string, got {d.get(k)!r}")
    if d.get("decode_on_device") and name == "fashion_mnist":
        raise ValueError("data.decode_on_device decodes encoded image files: use it with data.name=image_folder, "
                         "webdataset or hf_dataset")
    given = [k for k in ("val_root", "val_urls", "val_split", "val_fraction") if d.get(k) not in (None, "", [])]
    if len(given) > 1:
        raise ValueError(f"set one validation source, not {' and '.join('data.' + k for k in given)}")
    if d.get("val_fraction") is not None:
        v = d["val_fraction"]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
            raise ValueError(f"data.val_fraction must be a number between 0 and 1 (e.g. 0.05), got {v!r}")
    allowed = {"val_root": ("image_folder",), "val_urls": ("webdataset",), "val_split": ("fashion_mnist", "hf_dataset")}
    for k in given:
        if k in allowed and name not in allowed[k]:
            alt = {"image_folder": "val_root", "webdataset": "val_urls", "hf_dataset": "val_split",
                   "fashion_mnist": "val_split"}[name]
            raise ValueError(f"data.{k} is for data.name={' or '.join(allowed[k])}; with data.name={name} use "
                             f"data.{alt} or data.val_fraction")
    if d.get("val_split") is not None and name == "fashion_mnist" and d["val_split"] != "test":
        raise ValueError(f"Fashion-MNIST has a 'test' split only: data.val_split=test, got {d['val_split']!r}")
    mon = cfg["run"].get("checkpoint_monitor")
    if mon not in ("step", "val/loss"):
        close = difflib.get_close_matches(str(mon), ["step", "val/loss"], n=1, cutoff=0.4)
        raise ValueError(f"run.checkpoint_monitor must be 'step' (keep the newest) or 'val/loss' (keep the best), "
                         f"got {mon!r}" + (f"; did you mean {close[0]}?" if close else ""))
    if mon == "val/loss" and not given:
        raise ValueError("run.checkpoint_monitor=val/loss needs a validation set: set data.val_fraction, "
                         "data.val_root, data.val_urls or data.val_split")
