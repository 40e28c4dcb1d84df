"""Input pipeline with decoding and augmentation on the training device.

On a GPU, decoding JPEGs and resizing crops on the CPU workers is often the bottleneck of MAE
training (ViT-B/16 trains at thousands of images/s). With ``data.decode_on_device: true`` the data
workers only read file bytes; the batch is decoded with nvJPEG (``torchvision.io.decode_jpeg(...,
device="cuda")``) and the MAE augmentation (RandomResizedCrop, bicubic, flip, normalise) runs on the
device. The same code runs on the CPU (``device="cpu"``), which is how it is tested here.
Files that are not JPEG, or that fail to decode, are decoded one by one on the CPU; unreadable ones
are replaced by another image of the batch with a counted warning (or raise with ``on_error='raise'``).
"""
from __future__ import annotations

import math
import random
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .images import bytes_tensor


class EncodedImageFolder(Dataset):
    """ImageFolder layout (root/class/file) yielding (raw file bytes as uint8 tensor, label)."""

    def __init__(self, root):
        from torchvision.datasets import ImageFolder

        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"image folder {root} does not exist")
        try:
            self.folder = ImageFolder(str(root), loader=lambda p: p, allow_empty=False)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"no images found under {root} (expected root/<class>/<image>): {e}") from None
        self.samples = self.folder.samples
        self.classes = self.folder.classes

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i):
        path, label = self.samples[i]
        # a plain uint8 tensor over the file's bytes: the tensors torchvision.io.read_file returns
        # cannot be sent from a data worker (num_workers > 0: "Bad file descriptor", then a hang)
        return bytes_tensor(Path(path).read_bytes()), label, path


def collate_encoded(batch):
    data, labels, paths = zip(*batch)
    return {"encoded": list(data), "labels": torch.tensor(labels), "paths": list(paths)}


class DeviceAugment:
    """Decode a list of encoded images on ``device`` and apply the MAE augmentation batch-wise."""

    def __init__(self, img_size: int, mean, std, in_chans: int = 3, crop_scale=(0.2, 1.0),
                 ratio=(3 / 4, 4 / 3), hflip: bool = True, on_error: str = "skip", seed: int | None = None):
        self.size, self.in_chans = int(img_size), int(in_chans)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.scale, self.ratio, self.hflip, self.on_error = tuple(crop_scale), tuple(ratio), hflip, on_error
        self.rng = random.Random(seed)
        self.bad: set[str] = set()

    def _mode(self):
        from torchvision.io import ImageReadMode

        return ImageReadMode.GRAY if self.in_chans == 1 else ImageReadMode.RGB

    def decode(self, encoded: list[torch.Tensor], paths, device) -> list[torch.Tensor]:
        from torchvision.io import decode_image, decode_jpeg

        device = torch.device(device)
        try:
            return list(decode_jpeg(encoded, mode=self._mode(), device=device))
        except (RuntimeError, ValueError):
            pass  # not all JPEG, or one is corrupt: decode one by one
        out: list[torch.Tensor | None] = []
        for data, path in zip(encoded, paths):
            try:
                out.append(decode_image(data, mode=self._mode()).to(device))
            except (RuntimeError, ValueError) as e:
                if self.on_error == "raise":
                    raise ValueError(f"cannot decode image {path}: {e}") from None
                if path not in self.bad:
                    self.bad.add(path)
                    warnings.warn(f"skipping undecodable image {path}; {len(self.bad)} skipped so far", stacklevel=2)
                out.append(None)
        good = [x for x in out if x is not None]
        if not good:
            raise ValueError(f"no image of this batch could be decoded (first: {paths[0]})")
        return [x if x is not None else good[i % len(good)] for i, x in enumerate(out)]

    def crop_box(self, h: int, w: int):
        """RandomResizedCrop's box sampling (torchvision's algorithm), from this object's RNG."""
        area = h * w
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * self.rng.uniform(*self.scale)
            ar = math.exp(self.rng.uniform(*log_ratio))
            cw, ch = int(round(math.sqrt(target * ar))), int(round(math.sqrt(target / ar)))
            if 0 < cw <= w and 0 < ch <= h:
                return self.rng.randint(0, h - ch), self.rng.randint(0, w - cw), ch, cw
        in_ratio = w / h
        if in_ratio < self.ratio[0]:
            cw, ch = w, int(round(w / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            ch, cw = h, int(round(h * self.ratio[1]))
        else:
            cw, ch = w, h
        return (h - ch) // 2, (w - cw) // 2, ch, cw

    def __call__(self, encoded, paths, device) -> torch.Tensor:
        images = self.decode(encoded, paths, device)
        out = []
        for img in images:
            top, left, ch, cw = self.crop_box(img.shape[-2], img.shape[-1])
            crop = img[None, :, top:top + ch, left:left + cw].float()
            crop = F.interpolate(crop, size=(self.size, self.size), mode="bicubic", align_corners=False,
                                 antialias=True)
            if self.hflip and self.rng.random() < 0.5:
                crop = crop.flip(-1)
            out.append(crop)
        x = torch.cat(out).div_(255.0).clamp_(0, 1)
        return (x - self.mean.to(x.device)) / self.std.to(x.device)
