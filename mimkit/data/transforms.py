"""The MAE augmentation and the evaluation transform: torchvision's per image, :class:`BatchAugment`
on whole uint8 batches from per-item seeds (:func:`seeded_uniforms`); ImageNet's pixel statistics."""

from __future__ import annotations

import math

import numpy as np
import torch

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

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


def random_resized_crop_boxes(
    u: torch.Tensor, h: int, w: int, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3), tries: int = 10
) -> torch.Tensor:
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

    t = [
        v2.ToImage(),
        v2.RandomResizedCrop(
            img_size, scale=tuple(crop_scale), interpolation=InterpolationMode.BICUBIC, antialias=True
        ),
    ]
    if hflip:
        t.append(v2.RandomHorizontalFlip())
    t += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose(t)


def eval_transform(img_size: int, mean, std, resize: int | None = None):
    """Resize (shorter side) + centre crop + normalise, for features and evaluation."""
    from torchvision.transforms import InterpolationMode, v2

    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(resize or img_size, interpolation=InterpolationMode.BICUBIC, antialias=True),
            v2.CenterCrop(img_size),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(mean), list(std)),
        ]
    )
