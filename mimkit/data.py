"""Datasets and transforms: Fashion-MNIST (idx files from Debian's package, a configured path or
torchvision's download), any ImageFolder, WebDataset tar shards (``mimkit.shards``), Hugging Face
datasets (``mimkit.hf_dataset``), held-out validation sets, and the MAE augmentation."""
from __future__ import annotations

import gzip
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

FMNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)
FMNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FMNIST_MEAN, FMNIST_STD = (0.2860,), (0.3530,)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
FMNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                  "Bag", "Ankle boot")

HOW_TO_GET_FMNIST = (
    "Fashion-MNIST was not found. Get it with one of:\n"
    "  * Debian/Ubuntu: sudo apt-get update && sudo apt-get install dataset-fashion-mnist\n"
    "    (files land in /usr/share/datasets/fashion-mnist/)\n"
    "  * point data.root (or $MIMKIT_DATA) at a folder holding train-images-idx3-ubyte[.gz] etc.\n"
    "  * on a machine with internet, mimkit downloads it with torchvision into ./data"
)


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise ValueError(f"{path} is unreadable or truncated ({e}); reinstall the dataset") from None
    magic = int.from_bytes(data[:4], "big")
    ndim = magic & 0xFF
    if magic >> 8 != 0x08 or ndim not in (1, 3):
        raise ValueError(f"{path} is not an idx file of unsigned bytes (magic {magic:#x})")
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise ValueError(f"{path} is truncated: expected {int(np.prod(dims))} values, found {arr.size}")
    return arr.reshape(dims)


def _find_file(d: Path, stem: str) -> Path | None:
    for cand in (d / stem, d / f"{stem}.gz", d / "FashionMNIST" / "raw" / stem,
                 d / "FashionMNIST" / "raw" / f"{stem}.gz"):
        if cand.exists():
            return cand
    return None


def locate_fashion_mnist(root: str | os.PathLike | None = None, download: bool = True) -> Path:
    """Directory holding the Fashion-MNIST idx files: ``root``, ``$MIMKIT_DATA``, Debian's path, ./data;
    else try torchvision's download into ./data; else raise with instructions."""
    cands = [Path(p) for p in (root, os.environ.get("MIMKIT_DATA")) if p] + [Path(p) for p in FMNIST_DIRS]
    cands.append(Path("data"))
    for d in cands:
        if _find_file(d, FMNIST_FILES["train"][0]) and _find_file(d, FMNIST_FILES["test"][0]):
            return d
    if root is not None and not Path(root).exists():
        msg = f"data.root={root} does not exist.\n"
    else:
        msg = ""
    if download:
        try:
            from torchvision.datasets import FashionMNIST

            target = Path(root) if root else Path("data")
            FashionMNIST(str(target), train=True, download=True)
            FashionMNIST(str(target), train=False, download=True)
            return target
        except Exception:  # no network
            pass
    raise FileNotFoundError(msg + HOW_TO_GET_FMNIST)


_IDX_CACHE: dict = {}


def load_fashion_mnist(split: str = "train", root=None, download: bool = True):
    """(images uint8 (N, 28, 28), labels int64 (N,)) for split 'train' or 'test'. The decoded arrays
    are cached per file (path, size, mtime) for the life of the process; each call returns copies."""
    if split not in FMNIST_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    d = locate_fashion_mnist(root, download)
    img_f, lbl_f = (_find_file(d, s) for s in FMNIST_FILES[split])
    key = tuple((str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in (img_f, lbl_f))
    if key not in _IDX_CACHE:
        images, labels = _read_idx(img_f), _read_idx(lbl_f)
        if len(images) != len(labels):
            raise ValueError(f"{img_f} and {lbl_f} hold different numbers of items")
        if len(_IDX_CACHE) >= 2:  # train + test at most
            _IDX_CACHE.clear()
        _IDX_CACHE[key] = (images, labels)
    images, labels = _IDX_CACHE[key]
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


class TensorImages(Dataset):
    """In-memory uint8 images (N, H, W) or (N, C, H, W) with labels, passed through ``transform``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform=None):
        if images.ndim == 3:
            images = images.unsqueeze(1)
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        x = self.images[i]
        if self.transform is not None:
            x = self.transform(x)
        return x, self.labels[i]


def pretrain_transform(img_size: int, mean, std, crop_scale=(0.2, 1.0), hflip: bool = True):
    """MAE augmentation on uint8 tensors or PIL images: RandomResizedCrop(bicubic) + flip + normalise."""
    from torchvision.transforms import InterpolationMode, v2

    t = [v2.ToImage(),
         v2.RandomResizedCrop(img_size, scale=tuple(crop_scale), interpolation=InterpolationMode.BICUBIC,
                              antialias=True)]
    if hflip:
        t.append(v2.RandomHorizontalFlip())
    t += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose(t)


def eval_transform(img_size: int, mean, std, resize: int | None = None):
    """Resize (shorter side) + centre crop + normalise, for features and evaluation."""
    from torchvision.transforms import InterpolationMode, v2

    return v2.Compose([
        v2.ToImage(),
        v2.Resize(resize or img_size, interpolation=InterpolationMode.BICUBIC, antialias=True),
        v2.CenterCrop(img_size),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(mean), list(std)),
    ])


def default_stats(name: str, in_chans: int):
    if name == "fashion_mnist":
        return FMNIST_MEAN * in_chans, FMNIST_STD * in_chans
    if in_chans == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    return (0.5,) * in_chans, (0.5,) * in_chans


def load_image(source, in_chans: int = 3):
    """Open an image (a path or a binary file object, e.g. ``io.BytesIO`` of a shard member) and convert
    it to ``in_chans`` channels the way every mimkit dataset does: 16-bit and 32-bit images scaled to
    8 bits (full range), transparency composited on white, grayscale replicated or RGB made gray."""
    from PIL import Image

    with Image.open(source) as im:
        im.load()
        if im.mode.startswith("I;16") or im.mode in ("I", "F"):
            arr = np.asarray(im, dtype=np.float32)
            if im.mode.startswith("I;16"):
                hi = 65535.0  # 16-bit: full range, however dark the picture
            elif im.mode == "F" and arr.max() <= 1.0:
                hi = 1.0
            else:  # 32-bit ints: 16-bit data if it exceeds 8 bits
                hi = 65535.0 if arr.max() > 255 else 255.0
            im = Image.fromarray((arr / hi * 255).round().clip(0, 255).astype(np.uint8), "L")
        if im.mode in ("RGBA", "LA", "PA", "P") or "transparency" in im.info:
            im = im.convert("RGBA")
            bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(bg, im)
        return im.convert("L" if in_chans == 1 else "RGB")


class SafeImageFolder(Dataset):
    """torchvision ImageFolder that converts every image (grayscale, RGBA, palette, 16-bit) to
    ``in_chans`` channels and skips unreadable files with a counted warning (or raises with the
    file's path when ``on_error='raise'``). A folder of images without class sub-folders is one
    class. Images smaller than the crop are upsampled by the transforms (RandomResizedCrop/Resize).
    With ``num_workers > 0`` each worker counts its own skipped files."""

    def __init__(self, root, transform=None, in_chans: int = 3, on_error: str = "skip"):
        from torchvision.datasets.folder import IMG_EXTENSIONS, ImageFolder

        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"image folder {root} does not exist")
        if on_error not in ("skip", "raise"):
            raise ValueError(f"data.on_error must be 'skip' or 'raise', got {on_error!r}")
        has_dirs = any(d.is_dir() and not d.name.startswith(".") for d in root.iterdir())
        if has_dirs:
            try:
                folder = ImageFolder(str(root), loader=lambda p: p, allow_empty=True)
                samples, classes = folder.samples, folder.classes
            except FileNotFoundError:
                samples, classes = [], []
        else:  # a flat folder of images: one class
            samples = [(str(f), 0) for f in sorted(root.iterdir())
                       if f.is_file() and f.suffix.lower() in IMG_EXTENSIONS]
            classes = [root.name]
        if not samples:
            raise FileNotFoundError(
                f"no image files under {root}: put images ({', '.join(IMG_EXTENSIONS[:5])}, ...) in it, or one "
                "sub-folder per class (root/class_x/xxx.png), and point data.root at it")
        self.samples, self.classes = samples, classes
        self.transform, self.in_chans, self.on_error = transform, in_chans, on_error
        self.bad: set[str] = set()

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, path: str):
        return load_image(path, self.in_chans)

    def __getitem__(self, i):
        n = len(self.samples)
        for k in range(n):  # an unreadable file is replaced by the next readable one
            path, label = self.samples[(i + k) % n]
            try:
                img = self.load(path)
                break
            except Exception as e:
                if self.on_error == "raise":
                    raise ValueError(f"cannot read image {path}: {type(e).__name__}: {e} "
                                     "(remove or fix the file, or set data.on_error=skip)") from None
                if path not in self.bad:
                    self.bad.add(path)
                    warnings.warn(f"skipping unreadable image {path} ({type(e).__name__}: {e}); "
                                  f"{len(self.bad)} of {n} images skipped so far", stacklevel=2)
        else:
            raise ValueError(f"none of the {n} images under the data folder can be read "
                             f"(e.g. {sorted(self.bad)[:3]}); check the files")
        if self.transform is not None:
            img = self.transform(img)
        return img, label


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
        return HFImages(cfg.get("path") or "", sp, cfg.get("image_column") or "image", transform, in_chans,
                        on_error, encoded)
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
    from .train.loader import mix_seed

    k = int(round(float(fraction) * n))
    if not 1 <= k < n:
        raise ValueError(f"data.val_fraction={fraction} of {n} images holds out {k}; choose a fraction that keeps at "
                         "least one image on each side")
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
