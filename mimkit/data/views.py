"""Multi-crop views for self-distillation methods (iBOT): 2 global crops and ``local_crops_number`` local
crops of every image with iBOT's augmentations (``DataAugmentationiBOT`` in bytedance/ibot ``main_ibot.py``),
made on whole batches as tensor ops and seeded per image and view.

* :class:`MultiCropAugment`: (N, C, H, W) images (uint8, or float in [0, 1]) + one seed per image -> a list
  of normalised views ``[global 1, global 2, local 1, ...]``. Per view, in the reference's order:
  RandomResizedCrop (bicubic; global ``global_scale``, local ``local_scale``), horizontal flip p 0.5,
  colour jitter p 0.8 (brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1 in a random order per image),
  grayscale p 0.2, Gaussian blur (p 1.0 on the first global view, 0.1 on the second, 0.5 on the local
  ones; sigma uniform in ``blur_sigma`` pixels), solarize p 0.2 on the second global view, normalise.
  Saturation, hue and grayscale need colour: on 1-channel images they are identities (as torchvision's on
  a grayscale image) and are skipped. View ``v`` of image ``i`` reads the uniforms ``64 v .. 64 v + 63`` of
  ``seeded_uniforms(seed_i)``: it depends on the image and its seed only -- not on the batch, the process,
  the worker, or how many local crops follow it -- so resume is exact and any number of processes sees the
  same views.
* :class:`MultiCropImages`: a dataset whose ``get_batch(indices, seeds)`` (what mimkit's loader calls, with
  its per-item seeds) returns per-item dicts ``{"images": global view 1, "views": [global view 2, local
  views...]}``; the loader collates them into the model inputs ``images`` (N, C, G, G) and ``views``.
* :func:`multi_crop_dataset`: the training set of a ``data:`` config for a model that asks for views
  (its ``multi_crop`` attribute, e.g. :class:`~mimkit.methods.ibot.IBOT`).

Differences from the reference: the crops are cut from the dataset's images at their stored size (in-memory
datasets) or from the evaluation transform's image at ``data.img_size`` (files), not from the full-size
file; the blur is an exact separable Gaussian (PIL approximates it with box blurs); colour operations run on
floats without PIL's rounding to 8 bits between them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .build import build_dataset, default_stats, take_rows
from .transforms import random_resized_crop_boxes, seeded_uniforms

DRAWS = 64  # uniforms per view: crop 0-39, flip 40, jitter 41-49, grayscale 50, blur 51-52, solarize 53
JITTER = (0.4, 0.4, 0.2, 0.1)  # brightness, contrast, saturation, hue (torchvision ColorJitter arguments)
JITTER_P, GRAYSCALE_P, SOLARIZE_P = 0.8, 0.2, 0.2
BLUR_P = (1.0, 0.1, 0.5)  # first global view, second global view, local views


def _gray(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) luma of RGB images (torchvision's weights); 1-channel images as they are."""
    if x.shape[1] != 3:
        return x
    return (0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)


def _blend(a: torch.Tensor, b: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return (f * a + (1.0 - f) * b).clamp(0.0, 1.0)


def _brightness(x, f):
    return (x * f).clamp(0.0, 1.0)


def _contrast(x, f):
    return _blend(x, _gray(x).mean(dim=(1, 2, 3), keepdim=True), f)


def _saturation(x, f):
    return _blend(x, _gray(x), f)


def _hue(x, f):
    """Shift the hue of RGB images by ``f`` (N, 1, 1, 1) turns (torchvision's RGB <-> HSV on tensors)."""
    r, g, b = x.unbind(1)
    maxc, minc = x.amax(1), x.amin(1)
    eqc = maxc == minc
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eqc, ones, maxc)
    div = torch.where(eqc, ones, cr)
    rc, gc, bc = (maxc - r) / div, (maxc - g) / div, (maxc - b) / div
    h = (maxc == r) * (bc - gc) + ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    h = h + ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = torch.fmod(h / 6.0 + 1.0, 1.0)
    h = torch.remainder(h + f.reshape(-1, 1, 1), 1.0)
    v = maxc
    i = torch.floor(h * 6.0)
    fr = h * 6.0 - i
    i = i.to(torch.int64) % 6
    p = (v * (1.0 - s)).clamp(0.0, 1.0)
    q = (v * (1.0 - s * fr)).clamp(0.0, 1.0)
    t = (v * (1.0 - s * (1.0 - fr))).clamp(0.0, 1.0)
    sel = (i.unsqueeze(1) == torch.arange(6, device=x.device).view(1, 6, 1, 1)).to(x.dtype)  # (N, 6, H, W)
    table = torch.stack([torch.stack(c, 1) for c in ((v, q, p, p, t, v), (t, v, v, q, p, p), (p, p, t, v, v, q))], 1)
    return (table * sel.unsqueeze(1)).sum(2)


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Separable Gaussian blur with a per-image ``sigma`` (N,) over a fixed ``radius`` (so an image's
    result does not depend on the others in the batch); the border is replicated."""
    n, c, h, w = x.shape
    d = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-(d**2) / (2.0 * sigma.to(x).view(-1, 1) ** 2))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (N*C, 2r+1)
    y = F.pad(x.reshape(1, n * c, h, w), (radius, radius, radius, radius), mode="replicate")
    y = F.conv2d(y, k.view(n * c, 1, 1, -1), groups=n * c)
    y = F.conv2d(y, k.view(n * c, 1, -1, 1), groups=n * c)
    return y.reshape(n, c, h, w)


def _where_rows(x: torch.Tensor, rows: torch.Tensor, fn) -> torch.Tensor:
    """``x`` with ``fn`` applied to the images where the bool ``rows`` (N,) is set (in place)."""
    idx = torch.nonzero(rows).squeeze(1)
    if len(idx):
        x[idx] = fn(x[idx], idx)
    return x


class MultiCropAugment:
    """iBOT's multi-crop augmentation on a batch; see the module docstring.

    Args:
        global_size, local_size: output sizes of the global and local crops (pixels, square).
        local_crops_number: local crops per image (0: the two global views only).
        global_scale, local_scale: RandomResizedCrop area ranges (fractions of the image).
        mean, std: the normalisation of the views (per channel, in [0, 1] units).
        blur_sigma: the Gaussian blur's sigma range in output pixels (the reference's 0.1-2 at 224 / 96 px).
        ratio: RandomResizedCrop's aspect range.
    """

    def __init__(self, global_size: int, local_size: int = 96, local_crops_number: int = 10,
                 global_scale=(0.25, 1.0), local_scale=(0.05, 0.25), mean=(0.485, 0.456, 0.406),
                 std=(0.229, 0.224, 0.225), blur_sigma=(0.1, 2.0), ratio=(3 / 4, 4 / 3)):
        if int(local_crops_number) < 0:
            raise ValueError(f"local_crops_number must be >= 0, got {local_crops_number}")
        for name, (lo, hi) in (("global_scale", global_scale), ("local_scale", local_scale)):
            if not 0 < lo <= hi <= 1:
                raise ValueError(f"{name} must be (min, max) with 0 < min <= max <= 1, got {(lo, hi)}")
        if not 0 < blur_sigma[0] <= blur_sigma[1]:
            raise ValueError(f"blur_sigma must be (min, max) with 0 < min <= max, got {tuple(blur_sigma)}")
        self.mean = torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1)
        self.blur_sigma, self.ratio = tuple(float(s) for s in blur_sigma), tuple(ratio)
        self.blur_radius = max(1, math.ceil(3 * self.blur_sigma[1]))
        gs, ls = tuple(float(s) for s in global_scale), tuple(float(s) for s in local_scale)
        # (size, crop scale, blur probability, solarize probability) of every view, in the reference's order
        self.specs = [(int(global_size), gs, BLUR_P[0], 0.0), (int(global_size), gs, BLUR_P[1], SOLARIZE_P)]
        self.specs += [(int(local_size), ls, BLUR_P[2], 0.0)] * int(local_crops_number)

    def __call__(self, images: torch.Tensor, seeds) -> list[torch.Tensor]:
        with torch.profiler.record_function("mimkit/multi_crop"):
            x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
            u = seeded_uniforms(seeds, DRAWS * len(self.specs)).reshape(x.shape[0], len(self.specs), DRAWS)
            return [self.view(x, u[:, i], *spec) for i, spec in enumerate(self.specs)]

    def view(self, x: torch.Tensor, u: torch.Tensor, size: int, scale, blur_p: float, solarize_p: float):
        """One view of every image of ``x`` (N, C, H, W) in [0, 1] from its uniforms ``u`` (N, DRAWS)."""
        n, c, h, w = x.shape
        top, left, ch, cw = random_resized_crop_boxes(u, h, w, scale, self.ratio).unbind(1)
        sx = torch.where(u[:, 40] < 0.5, -cw / w, cw / w)  # horizontal flip p 0.5
        theta = torch.zeros(n, 2, 3, dtype=torch.float64)
        theta[:, 0, 0], theta[:, 0, 2] = sx, (2 * left + cw) / w - 1
        theta[:, 1, 1], theta[:, 1, 2] = ch / h, (2 * top + ch) / h - 1
        grid = F.affine_grid(theta.to(x), [n, c, size, size], align_corners=False)
        v = F.grid_sample(x, grid, mode="bicubic", padding_mode="border", align_corners=False).clamp_(0, 1)
        u = u.to(torch.float32)
        # colour jitter: the four adjustments in a random order per image (grayscale images: two of them)
        factors = [1 + JITTER[0] * (2 * u[:, 42] - 1), 1 + JITTER[1] * (2 * u[:, 43] - 1),
                   1 + JITTER[2] * (2 * u[:, 44] - 1), JITTER[3] * (2 * u[:, 45] - 1)]
        order = u[:, 46:50].argsort(1)
        ops = (_brightness, _contrast, _saturation, _hue)[: 4 if c == 3 else 2]
        jitter = u[:, 41] < JITTER_P
        for slot in range(4):
            for k, op in enumerate(ops):
                v = _where_rows(v, jitter & (order[:, slot] == k),
                                lambda xs, idx, op=op, f=factors[k]: op(xs, f[idx].view(-1, 1, 1, 1)))
        if c == 3:
            v = _where_rows(v, u[:, 50] < GRAYSCALE_P, lambda xs, idx: _gray(xs).expand(-1, 3, -1, -1))
        lo, hi = self.blur_sigma
        sigma = lo + (hi - lo) * u[:, 52]
        v = _where_rows(v, u[:, 51] <= blur_p, lambda xs, idx: _gaussian_blur(xs, sigma[idx], self.blur_radius))
        v = _where_rows(v, u[:, 53] < solarize_p, lambda xs, idx: torch.where(xs >= 128 / 255, 1.0 - xs, xs))
        return (v - self.mean.to(v)) / self.std.to(v)


class MultiCropImages(Dataset):
    """The multi-crop views of a dataset's images, a batch at a time (see the module docstring).

    Args:
        base: the dataset; an in-memory one with uint8 ``images`` (``TensorImages``) is cropped from those,
            any other gives its (normalised) images, which are brought back to [0, 1] with ``mean``/``std``.
        augment: the :class:`MultiCropAugment`.
        mean, std: the base dataset's normalisation.
    """

    def __init__(self, base, augment: MultiCropAugment, mean, std):
        self.base, self.augment = base, augment
        self.mean, self.std = tuple(mean), tuple(std)

    def __len__(self) -> int:
        return len(self.base)

    def raw(self, indices) -> torch.Tensor:
        """The images to crop (N, C, H, W): uint8, or float in [0, 1]."""
        images = getattr(self.base, "images", None)
        if isinstance(images, torch.Tensor) and images.dtype == torch.uint8 and images.ndim == 4:
            return images[torch.as_tensor(list(indices), dtype=torch.long)]
        x = torch.stack([self.base[i][0] for i in indices]).float()
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return (x * std + mean).clamp(0, 1)

    def get_batch(self, indices, seeds=None) -> list[dict]:
        """Per-item dicts ``{"images", "views"}`` of ``indices``, their views drawn from ``seeds`` (one per
        item; when None, from torch's global generator)."""
        indices = list(indices)
        if seeds is None:
            seeds = torch.randint(0, 2**62, (len(indices),))
        first, *rest = self.augment(self.raw(indices), seeds)
        return [{"images": first[i], "views": [v[i] for v in rest]} for i in range(len(indices))]

    def __getitem__(self, i):
        return self.get_batch([i])[0]  # the seed comes from the global generator, seeded per item by the loader

    def subset(self, rows) -> "MultiCropImages":
        return MultiCropImages(take_rows(self.base, rows), self.augment, self.mean, self.std)


def multi_crop_dataset(cfg: dict, spec: dict) -> MultiCropImages:
    """The training set of the ``data`` config ``cfg`` as multi-crop views; ``spec``: the model's
    ``multi_crop`` (:class:`MultiCropAugment` arguments except the global size, which is ``data.img_size``,
    and the normalisation, which is the data's)."""
    if cfg.get("decode_on_device"):
        raise ValueError("data.decode_on_device does not make multi-crop views (iBOT); set it to false")
    name, in_chans = cfg.get("name", "fashion_mnist"), int(cfg.get("in_chans", 1))
    mean, std = default_stats(name, in_chans)
    mean, std = cfg.get("mean") or mean, cfg.get("std") or std
    base = build_dataset(cfg, "train", train_transform=False)
    return MultiCropImages(base, MultiCropAugment(int(cfg["img_size"]), mean=mean, std=std, **spec), mean, std)
