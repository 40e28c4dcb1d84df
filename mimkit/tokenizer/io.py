"""Images for the tokenizer commands: Fashion-MNIST, an image folder, or a saved tensor."""
from __future__ import annotations

from pathlib import Path

import torch

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def tokenizer_normalization(tokenizer):
    """(mean, std) the tokenizer expects its inputs normalised with (identity when it has none)."""
    c = tokenizer.in_chans
    mean, std = getattr(tokenizer, "pixel_mean", None), getattr(tokenizer, "pixel_std", None)
    if mean is None:
        return (0.0,) * c, (1.0,) * c
    mean, std = mean.flatten().tolist(), std.flatten().tolist()
    return tuple(mean * (c // len(mean))), tuple(std * (c // len(std)))


def load_images(spec: str, img_size, in_chans: int, mean, std, limit: int | None = None):
    """``spec``: ``fashion_mnist`` / ``fashion_mnist:test`` (default split train), a directory of
    images (searched recursively; ImageFolder layout works), or a ``.pt`` file holding an image
    tensor (N, C, H, W) already in the tokenizer's input space. Returns (images, names)."""
    from ..data import eval_transform

    size = img_size[0] if isinstance(img_size, (tuple, list)) else img_size
    path = Path(spec)
    if spec.split(":")[0] in ("fashion_mnist", "fashion-mnist") and not path.exists():
        from ..data import load_fashion_mnist

        split = spec.split(":")[1] if ":" in spec else "train"
        if in_chans != 1:
            raise ValueError(f"Fashion-MNIST is grayscale but the tokenizer takes {in_chans} channels")
        images, _ = load_fashion_mnist(split)
        if limit:
            images = images[:limit]
        tf = eval_transform(size, mean, std)
        return torch.stack([tf(im.unsqueeze(0)) for im in images]), None
    if not path.exists():
        raise FileNotFoundError(f"{spec} is neither an existing path nor 'fashion_mnist[:train|test]'")
    if path.is_file():
        if path.suffix != ".pt":
            raise ValueError(f"{path}: give a directory of images, a .pt tensor file or fashion_mnist[:split]")
        from ..files import read_torch_checkpoint

        t = read_torch_checkpoint(path)  # weights_only: an untrusted pickle is refused
        if not isinstance(t, torch.Tensor) or t.ndim != 4:
            raise ValueError(f"{path} must hold one image tensor (N, C, H, W)")
        return (t[:limit] if limit else t).float(), None
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if limit:
        files = files[:limit]
    if not files:
        raise FileNotFoundError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) under {path}")
    from PIL import Image

    tf = eval_transform(size, mean, std)
    out = []
    for f in files:
        try:
            with Image.open(f) as im:
                out.append(tf(im.convert("L" if in_chans == 1 else "RGB")))
        except Exception as e:
            raise ValueError(f"cannot read image {f}: {e}") from None
    return torch.stack(out), [str(f.relative_to(path)) for f in files]


def batches(images: torch.Tensor, batch_size: int):
    for i in range(0, len(images), batch_size):
        yield images[i:i + batch_size]
