"""Datasets and transforms: Fashion-MNIST (idx files from Debian's package, a configured path or
torchvision's download), any ImageFolder, WebDataset tar shards (``mimkit.shards``), Hugging Face
datasets (``mimkit.hf_dataset``), held-out validation sets, and the MAE augmentation."""
from __future__ import annotations

import gzip
import math
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
    """In-memory images (N, H, W) or (N, C, H, W) (uint8, or float already transformed) with labels.

    ``transform`` is applied item by item; ``batch_transform`` (e.g. :class:`BatchAugment`) instead
    transforms whole batches as tensor ops, ``batch_transform(images[idx], seeds)``, with one seed per
    item. :meth:`get_batch` returns a whole batch at once (one gather, no Python call per image);
    mimkit's loaders use it (:class:`~mimkit.train.loader.SeededSamples`, :class:`BatchedSamples`)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform=None, batch_transform=None):
        if images.ndim == 3:
            images = images.unsqueeze(1)
        if transform is not None and batch_transform is not None:
            raise ValueError("give TensorImages a transform or a batch_transform, not both")
        self.images, self.labels = images, labels
        self.transform, self.batch_transform = transform, batch_transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        if self.batch_transform is not None:
            x, y = self.get_batch([i])
            return x[0], y[0]
        x = self.images[i]
        if self.transform is not None:
            x = self.transform(x)
        return x, self.labels[i]

    def get_batch(self, indices, seeds=None) -> "PreCollated":
        """(images, labels) of ``indices`` as two batched tensors. ``seeds`` (one per item) drive the
        random transform; when None they are drawn from torch's global generator."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        x, y = self.images[idx], self.labels[idx]
        if self.batch_transform is not None:
            if seeds is None:
                seeds = torch.randint(0, 2**62, (len(idx),))
            x = self.batch_transform(x, seeds)
        elif self.transform is not None:
            x = torch.stack([self.transform(xi) for xi in x])
        return PreCollated((x, y))

    def subset(self, rows) -> "TensorImages":
        """The same dataset restricted to ``rows`` (a view-free gather, keeps the batch path)."""
        idx = torch.as_tensor(list(rows), dtype=torch.long)
        return TensorImages(self.images[idx], self.labels[idx], self.transform, self.batch_transform)


class PreCollated(tuple):
    """A batch that a dataset's ``get_batch`` already assembled; :func:`collate` passes it through."""


def collate(batch, inner=None):
    """``collate_fn`` of mimkit's loaders: a :class:`PreCollated` batch as it is, else ``inner``
    (default: torch's ``default_collate``) on the list of items."""
    if isinstance(batch, PreCollated):
        return tuple(batch)
    from torch.utils.data import default_collate

    return (inner or default_collate)(batch)


class BatchedSamples(Dataset):
    """Wraps a dataset with ``get_batch`` so that a plain ``DataLoader(..., collate_fn=collate)``
    fetches each batch with one call (torch's ``__getitems__`` protocol); item access passes through."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        return self.dataset[i]

    def __getitems__(self, indices):
        return self.dataset.get_batch(indices)


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def seeded_uniforms(seeds, n: int) -> torch.Tensor:
    """(N, n) float64 uniforms in [0, 1): column k of row i is a pure function of (seeds[i], k)
    (splitmix64), so each item's random draws do not depend on the batch it is in, the process or
    the worker: exact resume and any world size give the same augmentation."""
    s = np.asarray(torch.as_tensor(seeds, dtype=torch.int64).numpy(), dtype=np.int64).view(np.uint64)
    with np.errstate(over="ignore"):
        z = s[:, None] * np.uint64(0xD1B54A32D192ED03) + (np.arange(1, n + 1, dtype=np.uint64) * _GOLDEN)[None]
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return torch.from_numpy((z >> np.uint64(11)).astype(np.float64) / float(1 << 53))


def random_resized_crop_boxes(u: torch.Tensor, h: int, w: int, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3),
                              tries: int = 10) -> torch.Tensor:
    """torchvision's ``RandomResizedCrop.get_params`` for a batch, from uniforms ``u`` (N, 4 * tries):
    up to ``tries`` (area, log-aspect) draws, the first box that fits is taken, else the centre crop
    clamped to ``ratio``. Returns (N, 4) float64 boxes (top, left, height, width)."""
    n = u.shape[0]
    u = u[:, : 4 * tries].reshape(n, tries, 4)
    area = h * w * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    lr0, lr1 = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(lr0 + (lr1 - lr0) * u[..., 1])
    cw, ch = torch.sqrt(area * aspect).round(), torch.sqrt(area / aspect).round()
    ok = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    top = torch.floor(u[..., 2] * (h - ch + 1)).clamp(min=0)
    left = torch.floor(u[..., 3] * (w - cw + 1)).clamp(min=0)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((n,), -1))
    pick = first.clamp(min=0)[:, None]
    box = torch.stack([top.gather(1, pick), left.gather(1, pick), ch.gather(1, pick), cw.gather(1, pick)], -1)[:, 0]
    in_ratio = w / h  # the fallback: the whole image, clamped to the aspect range, centred
    if in_ratio < ratio[0]:
        fw, fh = w, round(w / ratio[0])
    elif in_ratio > ratio[1]:
        fh, fw = h, round(h * ratio[1])
    else:
        fw, fh = w, h
    fallback = torch.tensor([(h - fh) // 2, (w - fw) // 2, fh, fw], dtype=box.dtype)
    return torch.where((first < 0)[:, None], fallback, box)


class BatchAugment:
    """MAE's augmentation (RandomResizedCrop, bicubic, + horizontal flip + normalise) on a whole batch
    of uint8 images (N, C, H, W) as tensor ops: the crop boxes are drawn as torchvision draws them,
    from per-item seeds (:func:`seeded_uniforms`), and every crop is resampled by one bicubic
    ``grid_sample`` (values clamped to [0, 255], as the uint8 path does). Inside the crop the result
    is bicubic interpolation of the crop; at its edge the kernel reads the image's own neighbouring
    pixels (torchvision, cropping first, replicates the crop's edge), and the image's border is
    replicated.
    Crops are enlarged or kept (Fashion-MNIST's 28 px crops into 28 or 32 px); a crop much larger
    than the output would alias, so such datasets are first resized (``TensorImages`` is for
    in-memory datasets at about the training resolution)."""

    def __init__(self, img_size: int, mean, std, crop_scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3), hflip: bool = True):
        self.size = int(img_size)
        self.mean = torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1) * 255
        self.scale, self.ratio, self.hflip = tuple(float(s) for s in crop_scale), tuple(ratio), bool(hflip)

    def __call__(self, images: torch.Tensor, seeds) -> torch.Tensor:
        with torch.profiler.record_function("mimkit/augment"):
            return self._augment(images, seeds)

    def _augment(self, images: torch.Tensor, seeds) -> torch.Tensor:
        import torch.nn.functional as F

        n, c, h, w = images.shape
        u = seeded_uniforms(seeds, 41)
        top, left, ch, cw = random_resized_crop_boxes(u, h, w, self.scale, self.ratio).unbind(1)
        sx = cw / w  # output x in [-1, 1] (pixel centres) -> input x, align_corners=False convention
        if self.hflip:
            sx = torch.where(u[:, 40] < 0.5, -sx, sx)
        theta = torch.zeros(n, 2, 3, dtype=torch.float64)
        theta[:, 0, 0], theta[:, 0, 2] = sx, (2 * left + cw) / w - 1
        theta[:, 1, 1], theta[:, 1, 2] = ch / h, (2 * top + ch) / h - 1
        x = images.to(torch.float32)
        grid = F.affine_grid(theta.to(x), [n, c, self.size, self.size], align_corners=False)
        x = F.grid_sample(x, grid, mode="bicubic", padding_mode="border", align_corners=False).clamp_(0, 255)
        return (x - self.mean.to(x.device)) / self.std.to(x.device)


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
        if train_transform and cfg.get("batch_augment", True):  # uint8 in memory, augmented batch-wise
            return TensorImages(images, labels, batch_transform=BatchAugment(
                size, mean, std, cfg.get("crop_scale", (0.2, 1.0)), hflip=cfg.get("hflip", True)))
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
