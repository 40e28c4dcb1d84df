"""Masking strategies. Every generator returns a bool mask (N, h*w), True = hidden, on the model's
patch grid, and is seedable through a ``torch.Generator``. ``random_masking`` is MAE's shuffle."""
from __future__ import annotations

import math
import random

import torch


def check_ratio(ratio: float, name: str = "mask_ratio") -> float:
    ratio = float(ratio)
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"{name} must be strictly between 0 and 1 (e.g. 0.75), got {ratio}")
    return ratio


def shuffle_ids(noise: torch.Tensor, len_keep: int):
    """MAE's shuffle: ``ids_shuffle = argsort(noise)``, ``ids_restore = argsort(ids_shuffle)``, keep
    the first ``len_keep``. Returns ``(ids_keep, ids_restore, mask)``; ``mask`` is float (N, L),
    1 = removed, in the original order."""
    n, L = noise.shape
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    mask = (ids_restore >= len_keep).to(torch.float32)
    return ids_keep, ids_restore, mask


def random_masking(x: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None):
    """MAE per-sample shuffle masking, as in the reference and ``transformers`` ViTMAE.

    Keeps the ``int(L * (1 - mask_ratio))`` tokens with the smallest ``noise``. Returns
    ``(x_kept, mask, ids_restore, ids_keep)``.
    """
    n, L, d = x.shape
    if noise is None:
        noise = torch.rand(n, L, device=x.device)
    elif noise.shape != (n, L):
        raise ValueError(f"noise must have shape (batch, num_patches) = {(n, L)}, got {tuple(noise.shape)}")
    ids_keep, ids_restore, mask = shuffle_ids(noise, int(L * (1 - mask_ratio)))
    x_kept = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, d))
    return x_kept, mask.to(x.dtype), ids_restore, ids_keep


def mask_to_noise(mask: torch.Tensor, generator: torch.Generator | None = None):
    """Turn a bool/float mask (N, L), 1 = hidden, into MAE shuffle noise and the number of tokens
    the encoder keeps. Visible tokens sort first. When rows hide different counts (block masking),
    every row keeps the smallest visible count; the extra visible patches of the other rows are
    dropped at random and count as hidden (so the loss stays on exactly what the encoder missed)."""
    mask = mask.float()
    visible = (1 - mask).sum(1)
    len_keep = int(visible.min().item())
    jitter = torch.rand(mask.shape, generator=generator, device=mask.device if generator is None else "cpu")
    return mask + 0.5 * jitter.to(mask.device), len_keep


class MaskGenerator:
    """Base class: ``gen(batch_size, grid, generator=None, device=None) -> bool (N, h*w)``."""

    def __call__(self, batch_size: int, grid: tuple[int, int], generator: torch.Generator | None = None,
                 device=None) -> torch.Tensor:
        raise NotImplementedError


class RandomMasking(MaskGenerator):
    """MAE: exactly ``L - int(L*(1-ratio))`` random patches hidden per image."""

    def __init__(self, ratio: float = 0.75):
        self.ratio = check_ratio(ratio)

    def __call__(self, batch_size, grid, generator=None, device=None):
        L = grid[0] * grid[1]
        noise = torch.rand(batch_size, L, generator=generator, device=device)
        keep = int(L * (1 - self.ratio))
        ids = noise.argsort(1)
        mask = torch.ones(batch_size, L, dtype=torch.bool, device=device)
        mask.scatter_(1, ids[:, :keep], False)
        return mask


class SimMIMMasking(MaskGenerator):
    """SimMIM: ``ceil(cells*ratio)`` random cells of a ``mask_patch_size`` grid, upsampled to the
    model's patch grid."""

    def __init__(self, ratio: float = 0.6, mask_patch_size: int = 32, model_patch_size: int = 16):
        self.ratio = check_ratio(ratio)
        if mask_patch_size % model_patch_size:
            raise ValueError(
                f"mask_patch_size {mask_patch_size} must be a multiple of the model patch size "
                f"{model_patch_size}; use e.g. mask_patch_size={model_patch_size * max(1, round(mask_patch_size / model_patch_size))}"
            )
        self.mask_patch_size, self.model_patch_size = mask_patch_size, model_patch_size
        self.scale = mask_patch_size // model_patch_size

    def __call__(self, batch_size, grid, generator=None, device=None):
        gh, gw = grid
        if gh % self.scale or gw % self.scale:
            raise ValueError(
                f"image of {gh * self.model_patch_size}x{gw * self.model_patch_size} px is not divisible by "
                f"mask_patch_size {self.mask_patch_size}; pick a mask_patch_size that divides the image size"
            )
        ch, cw = gh // self.scale, gw // self.scale
        cells = ch * cw
        count = int(math.ceil(cells * self.ratio))
        noise = torch.rand(batch_size, cells, generator=generator, device=device)
        ids = noise.argsort(1)[:, :count]
        m = torch.zeros(batch_size, cells, dtype=torch.bool, device=device)
        m.scatter_(1, ids, True)
        m = m.reshape(batch_size, ch, cw)
        m = m.repeat_interleave(self.scale, 1).repeat_interleave(self.scale, 2)
        return m.reshape(batch_size, gh * gw)


class BlockMasking(MaskGenerator):
    """BEiT block-wise masking: rectangles of area ~U(min, remaining) and log-uniform aspect ratio,
    accepted when they add between 1 and the remaining number of new patches."""

    def __init__(self, num_masking_patches: int | None = None, ratio: float | None = 0.4,
                 min_num_patches: int = 16, max_num_patches: int | None = None,
                 min_aspect: float = 0.3, max_aspect: float | None = None):
        if num_masking_patches is None:
            self.ratio = check_ratio(ratio)
        else:
            self.ratio = None
        self.num_masking_patches = num_masking_patches
        self.min_num_patches = min_num_patches
        self.max_num_patches = max_num_patches
        max_aspect = max_aspect or 1.0 / min_aspect
        self.log_aspect = (math.log(min_aspect), math.log(max_aspect))

    def _one(self, rng: random.Random, h: int, w: int, target: int) -> torch.Tensor:
        mask = torch.zeros(h, w, dtype=torch.bool)
        max_num = self.max_num_patches or target
        count = 0
        while count < target:
            max_patches = min(target - count, max_num)
            delta = 0
            for _ in range(10):
                area = rng.uniform(min(self.min_num_patches, max_patches), max_patches)
                aspect = math.exp(rng.uniform(*self.log_aspect))
                bh = int(round(math.sqrt(area * aspect)))
                bw = int(round(math.sqrt(area / aspect)))
                if bw < w and bh < h:
                    top = rng.randint(0, h - bh)
                    left = rng.randint(0, w - bw)
                    new = bh * bw - int(mask[top:top + bh, left:left + bw].sum())
                    if 0 < new <= max_patches:
                        mask[top:top + bh, left:left + bw] = True
                        delta = new
                    if delta > 0:
                        break
            if delta == 0:
                break
            count += delta
        return mask.reshape(-1)

    def __call__(self, batch_size, grid, generator=None, device=None):
        h, w = grid
        target = self.num_masking_patches or int(round(h * w * self.ratio))
        seeds = torch.randint(0, 2**31 - 1, (batch_size,), generator=generator).tolist()
        masks = [self._one(random.Random(s), h, w, target) for s in seeds]
        return torch.stack(masks).to(device)


class CenterMasking(MaskGenerator):
    """Inpainting: a centred square hiding about ``ratio`` of the patch grid (same for every image)."""

    def __init__(self, ratio: float = 0.25):
        self.ratio = check_ratio(ratio)

    def __call__(self, batch_size, grid, generator=None, device=None):
        h, w = grid
        sh = max(1, min(h, int(round(h * math.sqrt(self.ratio)))))
        sw = max(1, min(w, int(round(w * math.sqrt(self.ratio)))))
        top, left = (h - sh) // 2, (w - sw) // 2
        m = torch.zeros(h, w, dtype=torch.bool, device=device)
        m[top:top + sh, left:left + sw] = True
        return m.reshape(1, -1).expand(batch_size, -1).clone()


class ExplicitMasking(MaskGenerator):
    """A user-supplied mask: (h, w), (h*w,), or (N, h*w); nonzero = hidden."""

    def __init__(self, mask):
        self.mask = torch.as_tensor(mask).bool()

    def __call__(self, batch_size, grid, generator=None, device=None):
        L = grid[0] * grid[1]
        m = self.mask.reshape(-1, L) if self.mask.numel() % L == 0 else None
        if m is None or m.shape[0] not in (1, batch_size):
            raise ValueError(f"explicit mask of shape {tuple(self.mask.shape)} does not fit a batch of "
                             f"{batch_size} on a {grid[0]}x{grid[1]} patch grid")
        return m.expand(batch_size, -1).clone().to(device)


MASKINGS = {
    "random": RandomMasking,
    "simmim": SimMIMMasking,
    "block": BlockMasking,
    "center": CenterMasking,
}


def build_masking(name: str, **kwargs) -> MaskGenerator:
    if name not in MASKINGS:
        raise ValueError(f"unknown masking {name!r}; choose one of {sorted(MASKINGS)}")
    return MASKINGS[name](**kwargs)
