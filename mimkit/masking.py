"""Masking strategies, usable by every method.

Every generator is called as ``gen(batch_size, grid, generator=None, device=None)`` and returns a
bool mask (N, h*w) on the model's patch grid, True = hidden. Passing a seeded ``torch.Generator``
makes the result reproducible (random numbers are drawn on the generator's device, then moved to
``device``). Generators that are driven by per-patch noise (MAE shuffle, SimMIM cells) also expose
``from_noise(noise, grid)`` with MAE's convention: the patches/cells with the *smallest* noise stay
visible. ``random_masking`` is MAE's shuffle on token tensors.

| name | class | what is hidden |
| --- | --- | --- |
| ``random`` (``mae``) | :class:`RandomMasking` | exactly ``L - int(L*(1-r))`` random patches |
| ``simmim`` | :class:`SimMIMMasking` | ``ceil(cells*r)`` random cells of a ``mask_patch_size`` grid |
| ``block`` (``beit``) | :class:`BlockMasking` | BEiT block-wise rectangles, at most the target |
| ``center`` | :class:`CenterMasking` | a centred rectangle covering about ``r`` of the grid |
| ``explicit`` | :class:`ExplicitMasking` | a mask the user supplies |
| ``inverse_block`` | :class:`InverseBlockMasking` | data2vec 2.0: all but ``int(L*(1-r))`` patches grown as visible blocks |
| ``multiblock`` | :class:`MultiBlockMasking` | I-JEPA: all but one context block minus several target blocks |
| ``ibot`` | :class:`IBOTMasking` | iBOT: a ratio drawn per view, then BEiT blocks (or random patches) |

:func:`make_masks` is the one front end every method calls: it turns a caller's ``mask`` or ``noise``,
or the method's own generator, into a :class:`Masks` (the bool mask, plus ``ids_keep`` /
``ids_restore`` for encoders that see visible tokens only).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch


def check_ratio(ratio: float, name: str = "mask_ratio") -> float:
    try:
        ratio = float(ratio)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number strictly between 0 and 1 (e.g. 0.75), got {ratio!r}") from None
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"{name} must be strictly between 0 and 1 (e.g. 0.75), got {ratio}")
    return ratio


def _check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _rand(shape, generator, device):
    """Uniform noise drawn on the generator's device (so a CPU generator works for any target)."""
    if generator is not None:
        return torch.rand(shape, generator=generator, device=generator.device).to(device)
    return torch.rand(shape, device=device)


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
    jitter = _rand(mask.shape, generator, mask.device)
    return mask + 0.5 * jitter, len_keep


def _hide_largest(noise: torch.Tensor, count: int) -> torch.Tensor:
    """Bool (N, L): True at the ``count`` entries with the largest noise (MAE: small noise = kept)."""
    n, L = noise.shape
    ids = noise.argsort(1)
    mask = torch.zeros(n, L, dtype=torch.bool, device=noise.device)
    mask.scatter_(1, ids[:, L - count:], True)
    return mask


class MaskGenerator:
    """Base class: ``gen(batch_size, grid, generator=None, device=None) -> bool (N, h*w)``."""

    def __call__(self, batch_size: int, grid: tuple[int, int], generator: torch.Generator | None = None,
                 device=None) -> torch.Tensor:
        raise NotImplementedError

    def check_grid(self, grid: tuple[int, int]) -> None:
        """Raise a clear error if this masking cannot be used on a ``grid`` of patches."""


class RandomMasking(MaskGenerator):
    """MAE: exactly ``L - int(L*(1-ratio))`` random patches hidden per image (``rounding="mae"``), or
    ``max(1, round(L*ratio))`` (``rounding="round"``, BEiT's rule for a caller's noise)."""

    def __init__(self, ratio: float = 0.75, rounding: str = "mae"):
        self.ratio = check_ratio(ratio)
        if rounding not in ("mae", "round"):
            raise ValueError(f"rounding must be 'mae' or 'round', got {rounding!r}")
        self.rounding = rounding

    def num_hidden(self, L: int) -> int:
        if self.rounding == "round":
            return max(1, int(round(L * self.ratio)))
        return L - int(L * (1 - self.ratio))

    def from_noise(self, noise: torch.Tensor, grid=None) -> torch.Tensor:
        """MAE's rule: keep the ``int(L*(1-r))`` patches with the smallest noise."""
        return _hide_largest(noise, self.num_hidden(noise.shape[1]))

    def __call__(self, batch_size, grid, generator=None, device=None):
        L = grid[0] * grid[1]
        return self.from_noise(_rand((batch_size, L), generator, device))

    def __repr__(self):
        return f"RandomMasking(ratio={self.ratio})"


class SimMIMMasking(MaskGenerator):
    """SimMIM: ``ceil(cells*ratio)`` random cells of a ``mask_patch_size`` grid, each cell repeated
    ``mask_patch_size/model_patch_size`` times on both axes of the model's patch grid."""

    def __init__(self, ratio: float = 0.6, mask_patch_size: int = 32, model_patch_size: int = 16):
        self.ratio = check_ratio(ratio)
        _check_positive_int(mask_patch_size, "mask_patch_size")
        _check_positive_int(model_patch_size, "model_patch_size")
        if mask_patch_size % model_patch_size:
            lo = max(model_patch_size, mask_patch_size // model_patch_size * model_patch_size)
            raise ValueError(
                f"mask_patch_size {mask_patch_size} must be a multiple of the model patch size "
                f"{model_patch_size}; use e.g. mask_patch_size={lo} or {lo + model_patch_size}"
            )
        self.mask_patch_size, self.model_patch_size = mask_patch_size, model_patch_size
        self.scale = mask_patch_size // model_patch_size

    def check_grid(self, grid):
        gh, gw = grid
        if gh % self.scale or gw % self.scale:
            p = self.model_patch_size
            raise ValueError(
                f"image of {gh * p}x{gw * p} px is not divisible by mask_patch_size {self.mask_patch_size}; "
                f"resize the image to a multiple of {self.mask_patch_size} or pick a mask_patch_size that "
                f"divides the image size (and is a multiple of the patch size {p})"
            )

    def cell_grid(self, grid) -> tuple[int, int]:
        self.check_grid(grid)
        return grid[0] // self.scale, grid[1] // self.scale

    def num_hidden_cells(self, cells: int) -> int:
        return int(math.ceil(cells * self.ratio))

    def from_noise(self, noise: torch.Tensor, grid) -> torch.Tensor:
        """Mask from noise on the cell grid (N, cells), or on the patch grid (N, h*w), in which case
        each cell takes the noise of its top-left patch. The cells with the largest noise are hidden."""
        gh, gw = grid
        ch, cw = self.cell_grid(grid)
        n = noise.shape[0]
        if noise.ndim != 2 or noise.shape[1] not in (ch * cw, gh * gw):
            raise ValueError(f"noise must have shape (batch, cells) = (N, {ch * cw}) or (batch, num_patches) = "
                             f"(N, {gh * gw}), got {tuple(noise.shape)}")
        if noise.shape[1] != ch * cw:
            noise = noise.reshape(n, gh, gw)[:, :: self.scale, :: self.scale].reshape(n, ch * cw)
        m = _hide_largest(noise, self.num_hidden_cells(ch * cw)).reshape(n, ch, cw)
        m = m.repeat_interleave(self.scale, 1).repeat_interleave(self.scale, 2)
        return m.reshape(n, gh * gw)

    def __call__(self, batch_size, grid, generator=None, device=None):
        ch, cw = self.cell_grid(grid)
        return self.from_noise(_rand((batch_size, ch * cw), generator, device), grid)

    def __repr__(self):
        return (f"SimMIMMasking(ratio={self.ratio}, mask_patch_size={self.mask_patch_size}, "
                f"model_patch_size={self.model_patch_size})")


def block_mask(rng: random.Random, h: int, w: int, target: float, min_area: float, max_area: float | None,
               log_aspect: tuple[float, float], rects: list | None = None) -> torch.Tensor:
    """BEiT's block-wise mask of one sample on an ``h x w`` grid, flattened (bool, True = hidden): until
    ``target`` patches (an int for BEiT, a float for iBOT) are hidden, up to 10 draws of a rectangle of
    area ``U(min_area, remaining)`` (at most ``max_area``) and log-uniform aspect, accepted when it adds
    between 1 and the remaining number of patches; a pass that adds nothing ends the sample.
    ``rects`` receives the accepted rectangles ``(top, left, height, width)``."""
    mask = torch.zeros(h, w, dtype=torch.bool)
    count = 0
    while count < target:
        max_patches = min(target - count, max_area or target)
        delta = 0
        for _ in range(10):
            # the reference draws uniform(min, max) even when min > max (Python then returns a
            # value between the two); kept for fidelity
            area = rng.uniform(min_area, max_patches)
            aspect = math.exp(rng.uniform(*log_aspect))
            bh = int(round(math.sqrt(area * aspect)))
            bw = int(round(math.sqrt(area / aspect)))
            if bw < w and bh < h:
                top = rng.randint(0, h - bh)
                left = rng.randint(0, w - bw)
                new = bh * bw - int(mask[top:top + bh, left:left + bw].sum())
                if 0 < new <= max_patches:
                    mask[top:top + bh, left:left + bw] = True
                    delta = new
                    if rects is not None:
                        rects.append((top, left, bh, bw))
                if delta > 0:
                    break
        if delta == 0:
            break
        count += delta
    return mask.reshape(-1)


class BlockMasking(MaskGenerator):
    """BEiT block-wise masking, as in the reference implementation.

    Until ``target`` patches are hidden: up to 10 attempts to draw a rectangle of area
    ``~U(min_num_patches, remaining)`` and aspect ratio log-uniform in ``[min_aspect, max_aspect]``
    (rounded sides, strictly smaller than the grid) at a random position; it is accepted if it adds
    between 1 and ``remaining`` new patches. A pass that adds nothing ends the sample, so a mask
    may hide fewer patches than the target, never more. ``target`` is ``num_masking_patches`` or
    ``round(L * ratio)``."""

    def __init__(self, num_masking_patches: int | None = None, ratio: float | None = 0.4,
                 min_num_patches: int = 16, max_num_patches: int | None = None,
                 min_aspect: float = 0.3, max_aspect: float | None = None):
        if num_masking_patches is None:
            self.ratio = check_ratio(ratio)
        else:
            _check_positive_int(num_masking_patches, "num_masking_patches")
            self.ratio = None
        _check_positive_int(min_num_patches, "min_num_patches")
        if max_num_patches is not None:
            _check_positive_int(max_num_patches, "max_num_patches")
        if not min_aspect > 0:
            raise ValueError(f"min_aspect must be > 0 (e.g. 0.3), got {min_aspect}")
        max_aspect = max_aspect or 1.0 / min_aspect
        if max_aspect < min_aspect:
            raise ValueError(f"max_aspect {max_aspect} must be >= min_aspect {min_aspect}")
        self.num_masking_patches = num_masking_patches
        self.min_num_patches = min_num_patches
        self.max_num_patches = max_num_patches
        self.log_aspect = (math.log(min_aspect), math.log(max_aspect))

    def target(self, grid) -> int:
        L = grid[0] * grid[1]
        return self.num_masking_patches if self.num_masking_patches is not None else int(round(L * self.ratio))

    def check_grid(self, grid):
        if self.target(grid) > grid[0] * grid[1]:
            raise ValueError(f"num_masking_patches {self.num_masking_patches} exceeds the {grid[0]}x{grid[1]} "
                             f"patch grid; use at most {grid[0] * grid[1]} or pass ratio instead")

    def _one(self, rng: random.Random, h: int, w: int, target: int, rects: list | None = None) -> torch.Tensor:
        return block_mask(rng, h, w, target, self.min_num_patches, self.max_num_patches, self.log_aspect, rects)

    def __call__(self, batch_size, grid, generator=None, device=None, rects: list | None = None):
        """``rects``: optional list that receives, per sample, the list of accepted rectangles
        ``(top, left, height, width)`` (for inspection and tests)."""
        self.check_grid(grid)
        h, w = grid
        target = self.target(grid)
        gen_device = generator.device if generator is not None else "cpu"
        seeds = torch.randint(0, 2**31 - 1, (batch_size,), generator=generator, device=gen_device).tolist()
        masks = []
        for s in seeds:
            r = [] if rects is not None else None
            masks.append(self._one(random.Random(s), h, w, target, r))
            if rects is not None:
                rects.append(r)
        return torch.stack(masks).to(device)

    def __repr__(self):
        return (f"BlockMasking(num_masking_patches={self.num_masking_patches}, ratio={self.ratio}, "
                f"min_num_patches={self.min_num_patches})")


def _ratio_list(value, name: str) -> tuple[float, ...]:
    values = tuple(value) if isinstance(value, (list, tuple)) else (value,)
    try:
        values = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number or a list of numbers, got {value!r}") from None
    if not values:
        raise ValueError(f"{name} must not be empty")
    return values


class IBOTMasking(MaskGenerator):
    """iBOT's masking (bytedance/ibot ``loader.py``, ``ImageFolderMask``): every row (one view of one
    image) draws its own prediction ratio as ``get_pred_ratio`` does -- for each pair ``(r, var)`` of
    ``pred_ratio`` / ``pred_ratio_var`` a uniform in ``[r - var, r + var]`` (``r`` when ``var`` is 0), then a
    uniform choice among the pairs -- and hides about ``ratio * L`` patches (a float target, not rounded):

    * ``shape="block"``: BEiT's block-wise rectangles (:func:`block_mask`), with iBOT's smallest block
      ``(min(h, w) // 3) ** 2`` patches (16 on 14x14, 4 on 7x7) and aspect in ``[min_aspect, 1/min_aspect]``;
    * ``shape="rand"``: ``int(ratio * L)`` random patches.

    A ratio of 0 hides nothing: with ``pred_ratio=(0, 0.3)``, ``pred_ratio_var=(0, 0.2)`` (the ViT-S/16
    command) half the views stay whole and the others hide 10-50%. Differences from :class:`BlockMasking`:
    the ratio is drawn per row, the target is the float ``ratio * L``, the smallest block follows the
    grid, and there is no largest block. Each row draws from its own ``random.Random`` seeded from
    ``generator`` (the reference draws from Python's global ``random`` in its data workers)."""

    def __init__(self, pred_ratio=0.3, pred_ratio_var=0.0, min_aspect: float = 0.3, shape: str = "block"):
        self.pred_ratio = _ratio_list(pred_ratio, "pred_ratio")
        var = _ratio_list(pred_ratio_var, "pred_ratio_var")
        if len(var) == 1 and len(self.pred_ratio) > 1:
            var = var * len(self.pred_ratio)  # the reference broadcasts a single variance
        if len(var) != len(self.pred_ratio):
            raise ValueError(f"pred_ratio_var needs one value per pred_ratio ({len(self.pred_ratio)}), got {len(var)}")
        for r, v in zip(self.pred_ratio, var):
            if not (0 <= v <= r and r + v <= 1):
                raise ValueError(f"each pred_ratio r and its pred_ratio_var v need 0 <= v <= r and r + v <= 1 "
                                 f"(ratios are drawn in [r - v, r + v]); got r={r}, v={v}")
        self.pred_ratio_var = var
        if not min_aspect > 0:
            raise ValueError(f"min_aspect must be > 0 (e.g. 0.3), got {min_aspect}")
        self.log_aspect = (math.log(min_aspect), math.log(1.0 / min_aspect))
        if shape not in ("block", "rand"):
            raise ValueError(f"shape must be 'block' or 'rand', got {shape!r}")
        self.shape = shape

    def draw_ratio(self, rng: random.Random) -> float:
        """One view's ratio, with the reference's draws in its order (one uniform per pair with a
        variance, then ``choice``)."""
        ratios = [rng.uniform(r - v, r + v) if v > 0 else r for r, v in zip(self.pred_ratio, self.pred_ratio_var)]
        return rng.choice(ratios) if len(ratios) > 1 else ratios[0]

    def one(self, rng: random.Random, grid, ratios: list | None = None) -> torch.Tensor:
        """The mask (h*w,) of one view from ``rng``; ``ratios`` receives the ratio drawn."""
        h, w = grid
        ratio = self.draw_ratio(rng)
        if ratios is not None:
            ratios.append(ratio)
        high = ratio * h * w
        if self.shape == "rand":
            m = torch.zeros(h * w, dtype=torch.bool)
            m[rng.sample(range(h * w), int(high))] = True
            return m
        return block_mask(rng, h, w, high, (min(h, w) // 3) ** 2, None, self.log_aspect)

    def __call__(self, batch_size, grid, generator=None, device=None, ratios: list | None = None):
        """``ratios``: optional list that receives each row's drawn ratio (for inspection and tests)."""
        gen_device = generator.device if generator is not None else "cpu"
        seeds = torch.randint(0, 2**31 - 1, (batch_size,), generator=generator, device=gen_device).tolist()
        if not seeds:
            return torch.zeros(0, grid[0] * grid[1], dtype=torch.bool, device=device)
        return torch.stack([self.one(random.Random(s), grid, ratios) for s in seeds]).to(device)

    def __repr__(self):
        return f"IBOTMasking(pred_ratio={self.pred_ratio}, pred_ratio_var={self.pred_ratio_var}, shape={self.shape!r})"


class CenterMasking(MaskGenerator):
    """Inpainting: a centred rectangle of ``round(h*sqrt(r)) x round(w*sqrt(r))`` patches (at least
    one), the same for every image."""

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

    def __repr__(self):
        return f"CenterMasking(ratio={self.ratio})"


class ExplicitMasking(MaskGenerator):
    """A user-supplied mask: (h, w), (h*w,), (1, h*w) or (N, h*w); nonzero = hidden."""

    def __init__(self, mask):
        self.mask = torch.as_tensor(mask).bool()

    def __call__(self, batch_size, grid, generator=None, device=None):
        L = grid[0] * grid[1]
        m = self.mask.reshape(-1, L) if self.mask.numel() % L == 0 and self.mask.numel() else None
        if m is None or m.shape[0] not in (1, batch_size):
            raise ValueError(f"explicit mask of shape {tuple(self.mask.shape)} does not fit a batch of "
                             f"{batch_size} on a {grid[0]}x{grid[1]} patch grid; pass (h, w) = {tuple(grid)}, "
                             f"({L},) or ({batch_size}, {L})")
        return m.expand(batch_size, -1).clone().to(device)


class InverseBlockMasking(MaskGenerator):
    """data2vec 2.0's inverse block masking (fairseq ``compute_block_mask_2d`` with ``inverse_mask``):
    ``int(L*(1-r+adjust)/block^2)`` random centres each grow a ``block x block`` square of *visible*
    patches (clipped at the border), then random single patches are added or removed until exactly
    ``int(L*(1-r))`` are visible; all the others are hidden (the same count in every row)."""

    def __init__(self, ratio: float = 0.8, block: int = 3, adjust: float = 0.07):
        self.ratio = check_ratio(ratio)
        self.block = _check_positive_int(block, "block")
        self.adjust = float(adjust)

    def num_visible(self, L: int) -> int:
        return max(1, int(L * (1 - self.ratio)))

    def __call__(self, batch_size, grid, generator=None, device=None):
        h, w = grid
        L = h * w
        n_centres = max(1, int(L * (1 - self.ratio + self.adjust) / self.block**2))
        gen_device = generator.device if generator is not None else "cpu"
        centres = torch.randint(0, L, (batch_size, n_centres), generator=generator, device=gen_device)
        r0 = self.block // 2
        offs = torch.arange(self.block, device=gen_device) - r0
        rows = (centres // w)[..., None, None] + offs[:, None]  # (N, C, b, 1)
        cols = (centres % w)[..., None, None] + offs[None, :]   # (N, C, 1, b)
        idx = rows.clamp(0, h - 1) * w + cols.clamp(0, w - 1)  # (N, C, b, b), clipped like the reference
        grown = torch.zeros(batch_size, L, device=gen_device).scatter_(1, idx.reshape(batch_size, -1), 1.0)
        # exactly num_visible: a random subset of the grown patches first, then random others
        key = grown + torch.rand(batch_size, L, generator=generator, device=gen_device)
        keep = key.argsort(1, descending=True)[:, : self.num_visible(L)]
        hidden = torch.ones(batch_size, L, dtype=torch.bool, device=gen_device).scatter_(1, keep, False)
        return hidden.to(device)

    def __repr__(self):
        return f"InverseBlockMasking(ratio={self.ratio}, block={self.block}, adjust={self.adjust})"


class MultiBlockMasking(MaskGenerator):
    """I-JEPA's multi-block masking (``src/masks/multiblock.py``). Per batch, one target-block size
    (scale ``target_scale`` of the grid, aspect ``target_aspect``) and one context size (scale
    ``context_scale``, square) are drawn; per image, ``num_targets`` target blocks at random places (they
    may overlap) and one context block, minus every target (at least ``min_keep`` patches: the
    constraints are relaxed one target at a time after 20 failed draws). Index lists are cut to the
    shortest in the batch, as the reference does.

    ``sample(...)`` returns ``(context (N, Kc), targets (N, num_targets, Kt))`` patch indices; calling the
    generator returns the usual bool mask with everything outside the context hidden."""

    def __init__(self, num_targets: int = 4, target_scale=(0.15, 0.2), target_aspect=(0.75, 1.5),
                 context_scale=(0.85, 1.0), min_keep: int = 10):
        self.num_targets = _check_positive_int(num_targets, "num_targets")
        self.target_scale, self.target_aspect = tuple(map(float, target_scale)), tuple(map(float, target_aspect))
        self.context_scale = tuple(map(float, context_scale))
        self.min_keep = int(min_keep)
        for name, (lo, hi) in (("target_scale", self.target_scale), ("context_scale", self.context_scale)):
            if not 0 < lo <= hi <= 1:
                raise ValueError(f"{name} must be (min, max) with 0 < min <= max <= 1, got {(lo, hi)}")

    def _block_size(self, rng: random.Random, grid, scale, aspect) -> tuple[int, int]:
        u = rng.random()  # one draw for both, as the reference
        keep = int(grid[0] * grid[1] * (scale[0] + u * (scale[1] - scale[0])))
        ar = aspect[0] + u * (aspect[1] - aspect[0])
        bh, bw = int(round(math.sqrt(keep * ar))), int(round(math.sqrt(keep / ar)))
        return max(1, min(bh, grid[0] - 1)), max(1, min(bw, grid[1] - 1))

    @staticmethod
    def _boxes(n: int, grid, size, generator, device) -> torch.Tensor:
        """``n`` blocks of ``size`` at random places as bool (n, h, w) (top-left corner uniform, as the
        reference: ``randint(0, h - bh)``)."""
        h, w = grid
        bh, bw = size
        top = torch.randint(0, h - bh, (n, 1, 1), generator=generator, device=device)
        left = torch.randint(0, w - bw, (n, 1, 1), generator=generator, device=device)
        r = torch.arange(h, device=device).view(1, h, 1)
        c = torch.arange(w, device=device).view(1, 1, w)
        return (r >= top) & (r < top + bh) & (c >= left) & (c < left + bw)

    def sample(self, batch_size: int, grid, generator: torch.Generator | None = None, device=None):
        gen_device = generator.device if generator is not None else "cpu"
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=gen_device))
        batch_rng = random.Random(seed)
        t_size = self._block_size(batch_rng, grid, self.target_scale, self.target_aspect)
        c_size = self._block_size(batch_rng, grid, self.context_scale, (1.0, 1.0))
        n, nt, L = batch_size, self.num_targets, grid[0] * grid[1]
        targets = self._boxes(n * nt, grid, t_size, generator, gen_device).reshape(n, nt, L)
        need = min(self.min_keep, c_size[0] * c_size[1] - 1)
        context = torch.zeros(n, L, dtype=torch.bool, device=gen_device)
        todo = torch.arange(n, device=gen_device)
        for attempt in range(20 * (nt + 1)):  # 20 draws, then one target constraint fewer (the reference)
            kept = nt - attempt // 20
            c = self._boxes(len(todo), grid, c_size, generator, gen_device).reshape(len(todo), L)
            if kept > 0:
                c &= ~targets[todo, :kept].any(1)
            ok = c.sum(1) > need
            context[todo[ok]] = c[ok]
            todo = todo[~ok]
            if not len(todo):
                break
        # index lists in row-major order, cut to the shortest in the batch (as the reference)
        kc = int(context.sum(1).min())
        kt = int(targets.sum(2).min())
        ctx = context.float().argsort(dim=1, descending=True, stable=True)[:, :kc]
        tgt = targets.float().argsort(dim=2, descending=True, stable=True)[:, :, :kt]
        return ctx.to(device), tgt.to(device)

    def __call__(self, batch_size, grid, generator=None, device=None):
        context, _ = self.sample(batch_size, grid, generator, device)
        hidden = torch.ones(batch_size, grid[0] * grid[1], dtype=torch.bool, device=context.device)
        return hidden.scatter_(1, context, False)

    def __repr__(self):
        return (f"MultiBlockMasking(num_targets={self.num_targets}, target_scale={self.target_scale}, "
                f"context_scale={self.context_scale})")


MASKINGS = {
    "random": RandomMasking,
    "mae": RandomMasking,
    "simmim": SimMIMMasking,
    "block": BlockMasking,
    "beit": BlockMasking,
    "center": CenterMasking,
    "explicit": ExplicitMasking,
    "inverse_block": InverseBlockMasking,
    "multiblock": MultiBlockMasking,
    "ibot": IBOTMasking,
}


def build_masking(name: str, ratio: float | None = None, patch_size: int | None = None, **kwargs) -> MaskGenerator:
    """Build a masking by name. ``ratio`` and ``patch_size`` (the model's patch size) are generic
    defaults a method can always pass: ``ratio`` is used by every ratio-based masking unless
    ``kwargs`` set it, ``patch_size`` becomes SimMIM's ``model_patch_size``."""
    if name not in MASKINGS:
        raise ValueError(f"unknown masking {name!r}; choose one of {sorted(MASKINGS)}")
    cls = MASKINGS[name]
    import inspect

    takes_ratio = "ratio" in inspect.signature(cls).parameters
    if ratio is not None and takes_ratio and "num_masking_patches" not in kwargs:
        kwargs.setdefault("ratio", ratio)
    if patch_size is not None and cls is SimMIMMasking:
        kwargs.setdefault("model_patch_size", patch_size)
    try:
        return cls(**kwargs)
    except TypeError as e:
        accepted = [k for k in inspect.signature(cls).parameters]
        raise ValueError(f"bad options for masking {name!r}: {e}; accepted: {accepted}") from None


def masking_for(name: str, ratio: float | None, patch_size: int, grid=None, options: dict | None = None,
                mask_patch_size: int | None = None) -> MaskGenerator:
    """A method's masking from its constructor options (``masking``, its ratio, ``masking_kwargs``; SimMIM
    cells of ``mask_patch_size`` px), checked against the model's patch ``grid``."""
    kw = dict(options or {})
    if name == "simmim" and mask_patch_size is not None:
        kw.setdefault("mask_patch_size", mask_patch_size)
    try:
        gen = build_masking(name, ratio=ratio, patch_size=patch_size, **kw)
    except ValueError as e:
        if options and "bad options" in str(e):
            raise ValueError(f"{e}; masking_kwargs={options} do not fit masking={name!r} (a recipe may set them for "
                             f"its own masking): pass masking_kwargs=None or options for {name!r}") from None
        raise
    if grid is not None:
        gen.check_grid(grid)
    return gen


# ---- the front end every method calls ---------------------------------------------------------------
@dataclass
class Masks:
    """``mask``: (N, L) bool, True = hidden. For visible-only encoders (MAE-style) also ``ids_keep``
    (N, K), the kept patches in the order the encoder sees them, and ``ids_restore`` (N, L), which puts
    ``[kept, hidden]`` tokens back into grid order; every row then keeps the same number K, and ``mask``
    is exactly what the encoder did not see."""

    mask: torch.Tensor
    ids_keep: torch.Tensor | None = None
    ids_restore: torch.Tensor | None = None


def check_mask(mask, batch: int, grid) -> torch.Tensor:
    """A caller's mask as bool (N, L); a clear error for the wrong size."""
    mask = torch.as_tensor(mask)
    L = grid[0] * grid[1]
    if mask.numel() != batch * L:
        raise ValueError(f"mask must have shape (batch, num_patches) = ({batch}, {L}) (a {grid[0]}x{grid[1]} "
                         f"patch grid), got {tuple(mask.shape)}")
    return mask.reshape(batch, L).bool()


@torch.compiler.disable  # drawn eagerly under torch.compile: Python-side generators, and the same masks as eager
def make_masks(masking: MaskGenerator, batch: int, grid, *, noise: torch.Tensor | None = None,
               mask: torch.Tensor | None = None, generator: torch.Generator | None = None, device=None,
               visible_only: bool = False, noise_masking: MaskGenerator | None = None) -> Masks:
    """Masks for one batch: the caller's ``mask`` (nonzero = hidden) if given, else ``noise`` (N, L)
    read by ``noise_masking`` (default ``masking``; the patches with the smallest noise stay visible),
    else a draw of ``masking`` (from ``generator`` when given). With ``visible_only`` the result also
    holds MAE's ``ids_keep`` / ``ids_restore``: a random masking keeps MAE's shuffle of its noise
    exactly (as ``transformers`` ViTMAE); any other mask goes through :func:`mask_to_noise`."""
    L = grid[0] * grid[1]
    if mask is not None:
        m = check_mask(mask, batch, grid).to(device)
    else:
        rule = (noise_masking or masking) if noise is not None else masking
        shuffle = visible_only and isinstance(rule, RandomMasking)
        if noise is not None:
            if not hasattr(rule, "from_noise"):
                raise ValueError(f"noise only drives 'random' and 'simmim' masking, not {rule!r}; pass mask= instead")
            per_patch = isinstance(rule, RandomMasking)
            if noise.ndim != 2 or noise.shape[0] != batch or (per_patch and noise.shape[1] != L):
                want = f"(batch, num_patches) = {(batch, L)}" if per_patch else f"(batch, ...) with batch {batch}"
                raise ValueError(f"noise must have shape {want}, got {tuple(noise.shape)}")
            noise = noise.to(device)
        elif shuffle:
            noise = _rand((batch, L), generator, device)
        if shuffle:  # MAE: keep the int(L*(1-r)) patches with the smallest noise
            ids_keep, ids_restore, m = shuffle_ids(noise, L - rule.num_hidden(L))
            return Masks(m.bool(), ids_keep, ids_restore)
        m = rule.from_noise(noise, grid) if noise is not None else masking(batch, grid, generator=generator, device=device)
        m = m.bool()
    if not visible_only:
        return Masks(m)
    jittered, len_keep = mask_to_noise(m, generator)
    ids_keep, ids_restore, m = shuffle_ids(jittered, len_keep)
    return Masks(m.bool(), ids_keep, ids_restore)
