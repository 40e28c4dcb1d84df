"""Fashion-MNIST: the idx files from Debian's package, a configured path or torchvision's download,
decoded once per process; its class names and pixel statistics."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

FMNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)
FMNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FMNIST_MEAN, FMNIST_STD = (0.2860,), (0.3530,)
FMNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

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
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise ValueError(f"{path} is truncated: expected {int(np.prod(dims))} values, found {arr.size}")
    return arr.reshape(dims)


def _find_file(d: Path, stem: str) -> Path | None:
    for cand in (
        d / stem,
        d / f"{stem}.gz",
        d / "FashionMNIST" / "raw" / stem,
        d / "FashionMNIST" / "raw" / f"{stem}.gz",
    ):
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
