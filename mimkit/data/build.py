"""The one place that turns a ``data:`` config into a dataset: Fashion-MNIST, an image folder, WebDataset
shards or a Hugging Face dataset (:func:`build_dataset`), the held-out validation set
(:func:`build_val_dataset`), row limits and held-out rows, and each source's default statistics."""

from __future__ import annotations

from pathlib import Path

import torch

from .fashion_mnist import FMNIST_MEAN, FMNIST_STD, load_fashion_mnist
from .images import SafeImageFolder
from .seeds import mix_seed
from .tensors import TensorImages
from .transforms import IMAGENET_MEAN, IMAGENET_STD, BatchAugment, eval_transform, pretrain_transform


def default_stats(name: str, in_chans: int):
    if name == "fashion_mnist":
        return FMNIST_MEAN * in_chans, FMNIST_STD * in_chans
    if in_chans == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    return (0.5,) * in_chans, (0.5,) * in_chans


def build_dataset(cfg: dict, split: str = "train", train_transform: bool = True):
    """Dataset from the ``data`` config section."""
    name = cfg.get("name", "fashion_mnist")
    size, in_chans = int(cfg["img_size"]), int(cfg.get("in_chans", 1))
    mean, std = default_stats(name, in_chans)
    mean, std = cfg.get("mean") or mean, cfg.get("std") or std
    if train_transform:
        tf = pretrain_transform(size, mean, std, cfg.get("crop_scale", (0.2, 1.0)), cfg.get("hflip", True))
    else:
        tf = eval_transform(size, mean, std)
    if name == "fashion_mnist":
        if in_chans != 1:
            raise ValueError("Fashion-MNIST is grayscale: set data.in_chans=1 (and the model's in_chans=1)")
        images, labels = load_fashion_mnist(split, cfg.get("root"))
        limit = cfg.get("limit")
        if limit:
            images, labels = images[: int(limit)], labels[: int(limit)]
        if train_transform and cfg.get("batch_augment", True):  # uint8 in memory, augmented batch-wise
            return TensorImages(
                images,
                labels,
                batch_transform=BatchAugment(
                    size, mean, std, cfg.get("crop_scale", (0.2, 1.0)), hflip=cfg.get("hflip", True)
                ),
            )
        return TensorImages(images, labels, tf)
    if name == "image_folder":
        root = cfg.get("root") or ""
        sub = Path(root) / split
        path = sub if sub.is_dir() else Path(root)
        ds = SafeImageFolder(path, tf, in_chans, cfg.get("on_error", "skip"))
        limit = cfg.get("limit")
        if limit:
            ds = torch.utils.data.Subset(ds, range(min(int(limit), len(ds))))
        return ds
    if name in ("webdataset", "hf_dataset"):
        return limit_rows(source_dataset(cfg, split, tf), cfg.get("limit"))
    raise ValueError(f"unknown dataset {name!r}; use one of {', '.join(DATASET_NAMES)}")


DATASET_NAMES = ("fashion_mnist", "image_folder", "webdataset", "hf_dataset")


def source_dataset(cfg: dict, split: str = "train", transform=None, encoded: bool = False):
    """The streamed-at-scale sources: ``webdataset`` tar shards (``data.urls``; another split reads
    ``data.val_urls``) or a Hugging Face dataset (``data.path``, split ``data.split`` for 'train',
    else the named split). ``encoded=True`` yields raw bytes for ``data.decode_on_device``."""
    name, in_chans, on_error = cfg.get("name"), int(cfg.get("in_chans", 1)), cfg.get("on_error", "skip")
    if name == "webdataset":
        from .shards import ShardImages

        if split == "train":
            return ShardImages(cfg.get("urls"), transform, in_chans, on_error, encoded, "data.urls")
        if not cfg.get("val_urls"):
            raise ValueError(f"data.name=webdataset has no {split!r} split: give its shards as data.val_urls")
        return ShardImages(cfg.get("val_urls"), transform, in_chans, on_error, encoded, "data.val_urls")
    if name == "hf_dataset":
        from .hf_dataset import HFImages

        sp = (cfg.get("split") or "train") if split == "train" else split
        return HFImages(
            cfg.get("path") or "", sp, cfg.get("image_column") or "image", transform, in_chans, on_error, encoded
        )
    raise ValueError(f"data.name={name} is not a shard or Hugging Face source")


def limit_rows(ds, limit):
    """The first ``limit`` items of ``ds`` (all when ``limit`` is falsy)."""
    if not limit or int(limit) >= len(ds):
        return ds
    return take_rows(ds, range(int(limit)))


def take_rows(ds, rows):
    """``ds`` restricted to ``rows``; shard datasets keep their shard structure (see ShardImages.subset)."""
    if hasattr(ds, "subset"):
        return ds.subset(list(rows))
    return torch.utils.data.Subset(ds, list(rows))


def held_out_rows(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """``data.val_fraction``: (training rows, held-out rows) of a dataset of ``n`` items, the held-out
    ones drawn with ``seed`` (the same on every process and every run; both lists sorted)."""
    k = int(round(float(fraction) * n))
    if not 1 <= k < n:
        raise ValueError(
            f"data.val_fraction={fraction} of {n} images holds out {k}; choose a fraction that keeps at "
            "least one image on each side"
        )
    g = torch.Generator().manual_seed(mix_seed(seed, 0x7A1))
    perm = torch.randperm(n, generator=g)
    return sorted(perm[k:].tolist()), sorted(perm[:k].tolist())


def build_val_dataset(cfg: dict, seed: int = 0):
    """The held-out set for the validation loss (evaluation transform: resize + centre crop, no random
    augmentation), or None when no ``data.val_*`` key is set: ``val_root`` (an image folder),
    ``val_urls`` (shards), ``val_split`` (a split of the same source: Fashion-MNIST 'test', a Hugging
    Face split) or ``val_fraction`` (rows held out of the training set, see :func:`held_out_rows`)."""
    name = cfg.get("name", "fashion_mnist")
    size, in_chans = int(cfg["img_size"]), int(cfg.get("in_chans", 1))
    mean, std = default_stats(name, in_chans)
    tf = eval_transform(size, cfg.get("mean") or mean, cfg.get("std") or std)
    if cfg.get("val_fraction"):
        full = build_dataset(cfg, "train", train_transform=False)
        return take_rows(full, held_out_rows(len(full), cfg["val_fraction"], seed)[1])
    if cfg.get("val_root"):
        return SafeImageFolder(cfg["val_root"], tf, in_chans, cfg.get("on_error", "skip"))
    if cfg.get("val_urls"):
        return source_dataset(cfg, "val", tf)
    if cfg.get("val_split"):
        if name == "fashion_mnist":
            images, labels = load_fashion_mnist(cfg["val_split"], cfg.get("root"))
            return TensorImages(images, labels, tf)
        return source_dataset(cfg, cfg["val_split"], tf)
    return None
