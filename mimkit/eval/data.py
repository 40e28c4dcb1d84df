"""What the evaluation commands read: a model from any checkpoint spec, and labelled train/test sets
sized for that model (Fashion-MNIST or an ImageFolder directory)."""
from __future__ import annotations

from pathlib import Path

import torch

from ..interop.spec import CHECKPOINT_HELP, load_model_spec  # noqa: F401  (re-exported: the commands read them here)

DATA_HELP = ("fashion_mnist (the real 60k/10k split) or an ImageFolder directory with train/ and test/ "
             "(or val/) sub-folders, one folder per class inside each")


def model_input(model) -> tuple[int, int]:
    """(square image size, channels) the model takes."""
    from ..ops import to_2tuple

    h, w = to_2tuple(getattr(model, "img_size", None) or getattr(model.encoder, "img_size"))
    if h != w:
        raise ValueError(f"evaluation feeds square crops; this model takes {h}x{w} images")
    return int(h), int(getattr(model, "in_chans", None) or model.encoder.in_chans)


class _ToChannels(torch.nn.Module):
    """Repeat a 1-channel image to ``chans`` channels (grayscale data for an RGB model)."""

    def __init__(self, chans: int):
        super().__init__()
        self.chans = chans

    def forward(self, x):
        # (C, H, W) or a batch (N, C, H, W)
        return x.expand(*x.shape[:-3], self.chans, *x.shape[-2:]) if x.shape[-3] == 1 and self.chans > 1 else x


def image_transform(img_size, mean, std, train: bool, crop_scale, hflip, chans, gray_source):
    """The per-image transform of an evaluation dataset (augmented when ``train``), to ``chans`` channels."""
    from torchvision.transforms import v2

    from ..data import eval_transform, pretrain_transform

    tf = pretrain_transform(img_size, mean, std, crop_scale, hflip) if train else eval_transform(img_size, mean, std)
    if gray_source and chans > 1:
        tf = v2.Compose([_ToChannels(chans), tf])
    return tf


def pretransform(images: torch.Tensor, tf, chans: int, size: int, max_bytes: int = 1 << 30,
                 chunk: int = 4096) -> torch.Tensor | None:
    """The deterministic evaluation transform applied once, in batches, to in-memory uint8 images
    (N, H, W): the float tensors it would give item by item, without a Python transform call per
    image on every feature pass. None when the result would exceed ``max_bytes`` (then items are
    transformed on the fly)."""
    n = len(images)
    if n * chans * size * size * 4 > max_bytes:
        return None
    x = images.unsqueeze(1) if images.ndim == 3 else images
    return torch.cat([tf(x[i:i + chunk]) for i in range(0, n, chunk)]).contiguous()


def folder_split(root, split: str) -> Path:
    root = Path(root)
    names = ("train",) if split == "train" else ("test", "val")
    for n in names:
        if (root / n).is_dir():
            return root / n
    raise FileNotFoundError(
        f"{root} needs a {' or '.join(names)}/ sub-folder (ImageFolder layout: {root}/train/<class>/*.png and "
        f"{root}/test/<class>/*.png) for evaluation; split your images into train/ and test/ first")


def eval_dataset(data: str, split: str, model, *, train_aug: bool = False, limit: int | None = None, mean=None,
                 std=None, crop_scale=(0.2, 1.0), hflip: bool = True, root=None):
    """Labelled dataset for ``model``: ``data`` = 'fashion_mnist' or an ImageFolder directory.
    Returns (dataset, class names)."""
    from ..data import FMNIST_CLASSES, SafeImageFolder, TensorImages, default_stats, load_fashion_mnist

    size, chans = model_input(model)
    name = "fashion_mnist" if data in ("fashion_mnist", "fmnist", "fashion-mnist") else "image_folder"
    d_mean, d_std = default_stats(name, chans)
    mean, std = list(mean or d_mean), list(std or d_std)
    if len(mean) == 1 and chans > 1:
        mean, std = mean * chans, std * chans
    if len(mean) != chans or len(std) != chans:
        raise ValueError(f"mean/std need {chans} values (one per model input channel), got {mean} / {std}")
    if name == "fashion_mnist":
        images, labels = load_fashion_mnist(split, root)
        if limit:
            images, labels = images[: int(limit)], labels[: int(limit)]
        if train_aug:  # augmented as whole batches (mimkit.data.BatchAugment), one seed per image
            from ..data import BatchAugment

            images = images.unsqueeze(1).expand(-1, chans, -1, -1) if chans > 1 else images
            return TensorImages(images, labels, batch_transform=BatchAugment(size, mean, std, crop_scale,
                                                                             hflip=hflip)), list(FMNIST_CLASSES)
        tf = image_transform(size, mean, std, train_aug, crop_scale, hflip, chans, gray_source=True)
        if not train_aug:
            ready = pretransform(images, tf, chans, size)
            if ready is not None:
                return TensorImages(ready, labels), list(FMNIST_CLASSES)
        return TensorImages(images, labels, tf), list(FMNIST_CLASSES)
    path = Path(data)
    if not path.is_dir():
        raise FileNotFoundError(f"--data {data!r} is neither 'fashion_mnist' nor a directory")
    tf = image_transform(size, mean, std, train_aug, crop_scale, hflip, chans, gray_source=False)
    ds = SafeImageFolder(folder_split(path, split), tf, chans)
    classes = list(ds.classes)
    if limit:
        ds = torch.utils.data.Subset(ds, range(min(int(limit), len(ds))))
    return ds, classes


def check_same_classes(train_classes, test_classes) -> None:
    if list(train_classes) != list(test_classes):
        raise ValueError(f"train and test folders hold different classes: {train_classes} vs {test_classes}; "
                         "both need the same class sub-folders")


def print_table(rows: list[tuple], headers: tuple) -> str:
    """A small Markdown table (returned and printed)."""
    cells = [tuple(str(c) for c in headers)] + [tuple(str(c) for c in r) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    out = "\n".join([line(cells[0]), "| " + " | ".join("-" * w for w in widths) + " |", *map(line, cells[1:])])
    print(out)
    return out


LABELS_PER_CLASS_HELP = ("scarce labels: use a balanced subset of N training labels per class, fixed by --seed (the "
                         "encoder was pretrained on all images; the test set is unchanged)")


def dataset_labels(dataset) -> torch.Tensor:
    """Class labels (N,) of an evaluation dataset without loading its images."""
    if isinstance(dataset, torch.utils.data.Subset):
        return dataset_labels(dataset.dataset)[torch.as_tensor(dataset.indices)]
    if hasattr(dataset, "labels"):
        return torch.as_tensor(dataset.labels).long()
    if hasattr(dataset, "samples"):
        return torch.tensor([label for _, label in dataset.samples])
    raise TypeError(f"cannot read the labels of a {type(dataset).__name__} without loading it")


def balanced_indices(labels, per_class: int, seed: int = 0) -> torch.Tensor:
    """Indices of ``per_class`` examples of every class, drawn without replacement with ``seed``
    (the same subset for every encoder evaluated with that seed), sorted."""
    labels = torch.as_tensor(labels).long()
    if isinstance(per_class, bool) or int(per_class) < 1:
        raise ValueError(f"--labels-per-class must be a positive integer, got {per_class!r}")
    g = torch.Generator().manual_seed(int(seed))
    out = []
    for c in labels.unique().tolist():
        idx = (labels == c).nonzero().squeeze(1)
        if len(idx) < per_class:
            raise ValueError(f"class {c} has only {len(idx)} training images, fewer than --labels-per-class "
                             f"{per_class}; use at most {len(idx)}")
        out.append(idx[torch.randperm(len(idx), generator=g)[:per_class]])
    return torch.cat(out).sort().values


def labelled_subset(dataset, per_class: int | None, seed: int = 0):
    """``dataset`` restricted to :func:`balanced_indices` (unchanged when ``per_class`` is None)."""
    if not per_class:
        return dataset
    from ..data import take_rows

    return take_rows(dataset, balanced_indices(dataset_labels(dataset), per_class, seed).tolist())
