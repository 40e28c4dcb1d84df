"""Shared image helpers of every reader: decoding to ``in_chans`` channels (:func:`load_image`), file bytes
as a tensor for the device decoder (:func:`bytes_tensor`), error text without buffer reprs, and
:class:`SafeImageFolder` (an ImageFolder that converts every image and skips unreadable ones)."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset


def error_text(e: Exception) -> str:
    """An exception's text without the repr of an in-memory buffer (PIL names the BytesIO it read)."""
    return re.sub(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "the data", str(e))


def bytes_tensor(data: bytes) -> torch.Tensor:
    """Encoded file bytes as a 1-D uint8 tensor that data workers can send (an empty file: 0 elements)."""
    return torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)


def first_readable(i: int, n: int, read, name, bad: set, on_error: str, fix: str, none_left, text=error_text):
    """``(read(j), j)`` for the first item ``j = i, i + 1, ...`` (mod ``n``) that reads: every reader's
    handling of unreadable images. ``on_error='skip'``: an unreadable item is replaced by the next readable
    one, with one counted warning per item (``name(j)`` kept in ``bad``); ``'raise'``: a ValueError names
    it, with the ``fix`` hint. ``none_left()`` is the message when none of the ``n`` items reads."""
    for k in range(n):
        j = (i + k) % n
        try:
            return read(j), j
        except Exception as e:  # noqa: BLE001 - any decoder error means "unreadable"
            item = name(j)
            if on_error == "raise":
                raise ValueError(f"cannot read image {item}: {type(e).__name__}: {text(e)} ({fix})") from None
            if item not in bad:
                bad.add(item)
                warnings.warn(
                    f"skipping unreadable image {item} ({type(e).__name__}: {text(e)}); "
                    f"{len(bad)} of {n} images skipped so far",
                    stacklevel=3,  # the caller of the reader's __getitem__, as before
                )
    raise ValueError(none_left())


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
            samples = [
                (str(f), 0) for f in sorted(root.iterdir()) if f.is_file() and f.suffix.lower() in IMG_EXTENSIONS
            ]
            classes = [root.name]
        if not samples:
            raise FileNotFoundError(
                f"no image files under {root}: put images ({', '.join(IMG_EXTENSIONS[:5])}, ...) in it, or one "
                "sub-folder per class (root/class_x/xxx.png), and point data.root at it"
            )
        self.samples, self.classes = samples, classes
        self.transform, self.in_chans, self.on_error = transform, in_chans, on_error
        self.bad: set[str] = set()

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, path: str):
        return load_image(path, self.in_chans)

    def __getitem__(self, i):
        n = len(self.samples)
        (img, label), _ = first_readable(
            i,
            n,
            lambda j: (self.load(self.samples[j][0]), self.samples[j][1]),
            lambda j: self.samples[j][0],
            self.bad,
            self.on_error,
            "remove or fix the file, or set data.on_error=skip",
            lambda: (
                f"none of the {n} images under the data folder can be read (e.g. {sorted(self.bad)[:3]}); check the files"
            ),
            text=str,
        )
        if self.transform is not None:
            img = self.transform(img)
        return img, label
