"""Semantic segmentation folders in the ADE20K layout: ``ROOT/images/<split>/NAME.(png|jpg)`` beside
``ROOT/annotations/<split>/NAME.png``, one label per pixel (0..num_labels-1; 255 = ignore). ADE20K's own
splits are ``training`` and ``validation``. The whole split is read into memory as uint8 tensors (the
sizes mimkit trains on CPU); every image must have its label map, of the same size, with values in range.
Each problem is one clear line naming the file and the fix."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
IGNORE = 255


class SegmentationFolderError(ValueError):
    """A segmentation folder that cannot be read as it is."""


def _pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    img_dir, ann_dir = root / "images" / split, root / "annotations" / split
    for d in (img_dir, ann_dir):
        if not d.is_dir():
            raise SegmentationFolderError(
                f"{d} does not exist: a segmentation folder holds images/{split}/NAME.png and "
                f"annotations/{split}/NAME.png (the ADE20K layout)")
    images = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise SegmentationFolderError(f"no images in {img_dir} (png, jpg, bmp or webp)")
    pairs = []
    for p in images:
        ann = ann_dir / f"{p.stem}.png"
        if not ann.is_file():
            raise SegmentationFolderError(f"{p.name} has no label map: expected {ann} (a PNG of class indices)")
        pairs.append((p, ann))
    return pairs


def read_segmentation_folder(root, split: str, in_chans: int = 3, num_labels: int | None = None, limit=None):
    """(images uint8 (N, C, H, W), labels int64 (N, H, W)) of one split. ``num_labels``: labels must lie
    below it (or be 255, ignored); None takes the largest label found + 1."""
    from PIL import Image

    root = Path(root)
    pairs = _pairs(root, split)[: int(limit) if limit else None]
    images, labels = [], []
    mode = {1: "L", 3: "RGB"}.get(int(in_chans))
    if mode is None:
        raise SegmentationFolderError(f"in_chans must be 1 or 3, got {in_chans}")
    for img_path, ann_path in pairs:
        try:
            img = Image.open(img_path).convert(mode)
            ann = Image.open(ann_path)
        except OSError as e:
            raise SegmentationFolderError(f"cannot read {img_path.name} or its label map: {e}") from None
        if ann.mode not in ("L", "P", "I", "I;16"):
            raise SegmentationFolderError(f"{ann_path} is a {ann.mode} image; a label map is one channel of class "
                                          "indices (mode L or P)")
        if img.size != ann.size:
            raise SegmentationFolderError(f"{ann_path.name} is {ann.size[0]}x{ann.size[1]} but its image is "
                                          f"{img.size[0]}x{img.size[1]}; label maps must match their images")
        x = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).reshape(img.size[1], img.size[0], -1)
        images.append(x.permute(2, 0, 1))
        labels.append(torch.from_numpy(np.asarray(ann, dtype=np.int64).copy()))
    sizes = {tuple(x.shape[-2:]) for x in images}
    if len(sizes) > 1:
        raise SegmentationFolderError(f"images/{split} holds several sizes {sorted(sizes)[:3]}; resize them to one "
                                      "size first")
    y = torch.stack(labels)
    valid = y[y != IGNORE]
    top = int(valid.max()) if valid.numel() else 0
    if num_labels is not None and top >= num_labels:
        bad = next(p for (_, p), t in zip(pairs, labels) if bool(((t != IGNORE) & (t >= num_labels)).any()))
        raise SegmentationFolderError(f"{bad.name} has label {top}, but there are {num_labels} classes "
                                      f"(0..{num_labels - 1}, 255 ignored); pass --num-labels {top + 1}")
    return torch.stack(images), y


def write_segmentation_folder(root, split: str, images: torch.Tensor, labels: torch.Tensor, prefix: str = "") -> None:
    """Write uint8 images (N, C, H, W) and label maps (N, H, W) in the layout :func:`read_segmentation_folder`
    reads (PNG, lossless)."""
    from PIL import Image

    root = Path(root)
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
    for i, (x, y) in enumerate(zip(images, labels)):
        name = f"{prefix}{i:06d}.png"
        arr = x.permute(1, 2, 0).contiguous().numpy()
        Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(root / "images" / split / name)
        Image.fromarray(y.to(torch.uint8).numpy()).save(root / "annotations" / split / name)
