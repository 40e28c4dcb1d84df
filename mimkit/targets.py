"""Prediction targets computed from the input images (no learned parameters): MaskFeat's HOG
features, BEiT's visual tokens from a frozen tokenizer, and the teacher features of data2vec 2.0 and
I-JEPA (:mod:`mimkit.teacher`).

:class:`HOGTarget` is MaskFeat's histogram-of-oriented-gradients target:

* gradients per channel with the centred ``[-1, 0, 1]`` filters (Dalal & Triggs) on the
  reflect-padded image;
* unsigned orientation ``atan2(gy, gx) mod pi`` split into ``bins`` equal bins (9 -> 20 degrees),
  hard assignment, each pixel voting with its gradient magnitude (optionally weighted by a Gaussian
  window of ``gaussian_window`` pixels, sigma = window/2, tiled over the image, as MaskFeat's
  implementation does);
* votes summed over ``cell x cell`` pixel cells;
* each block of ``block x block`` cells L2-normalised over its bins and cells, per channel (``block=1``,
  the default, normalises every cell's histogram on its own, as MaskFeat's code does);
* the histograms of the cells inside one model patch are concatenated into that patch's target,
  ordered ``(cell row, cell col, channel, bin)``: (N, L, (p/cell)^2 * C * bins), e.g. 2*2*3*9 = 108 for
  ViT-B/16 with cell 8.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _check_int(v, name):
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return v


class HOGTarget(nn.Module):
    """Args:
        in_chans: image channels (histograms per channel); bins: orientation bins over 0-180 degrees;
        cell: cell side in pixels; block: cells per normalisation block side; gaussian_window: 0 or the
        side of the tiled Gaussian weighting window.

    ``forward(images (N, C, H, W), patch_size)`` -> (N, L, (patch/cell)^2 * C * bins).
    """

    def __init__(self, in_chans: int = 3, bins: int = 9, cell: int = 8, block: int = 1, gaussian_window: int = 0):
        super().__init__()
        self.in_chans = _check_int(in_chans, "in_chans")
        self.bins = _check_int(bins, "hog_bins")
        self.cell = _check_int(cell, "hog_cell")
        self.block = _check_int(block, "hog_block")
        self.gaussian_window = int(gaussian_window or 0)
        if self.gaussian_window < 0:
            raise ValueError(f"hog_gaussian_window must be >= 0 (0 = off), got {gaussian_window}")
        k = torch.tensor([-1.0, 0.0, 1.0])
        self.register_buffer("kx", k.view(1, 1, 1, 3).repeat(in_chans, 1, 1, 1), persistent=False)
        self.register_buffer("ky", k.view(1, 1, 3, 1).repeat(in_chans, 1, 1, 1), persistent=False)
        if self.gaussian_window:
            r = torch.arange(self.gaussian_window, dtype=torch.float32) - (self.gaussian_window - 1) / 2
            g = torch.exp(-(r**2) / (2 * (self.gaussian_window / 2) ** 2))
            self.register_buffer("gkern", (g[:, None] * g[None, :]) / g.max() ** 2, persistent=False)

    def check(self, img_size, patch_size: int) -> None:
        """Raise a clear error when cells, blocks and patches do not nest."""
        h, w = img_size
        if patch_size % self.cell:
            raise ValueError(
                f"HOG cell {self.cell} does not divide the patch size {patch_size}; pick hog_cell from "
                f"{[c for c in range(1, patch_size + 1) if patch_size % c == 0]}"
            )
        if (patch_size // self.cell) % self.block:
            raise ValueError(f"hog_block {self.block} must divide the {patch_size // self.cell} cells per patch side")
        if self.gaussian_window and (h % self.gaussian_window or w % self.gaussian_window):
            raise ValueError(f"hog_gaussian_window {self.gaussian_window} must divide the image size {h}x{w}")

    def dim(self, patch_size: int) -> int:
        """Feature size of one patch's target."""
        return (patch_size // self.cell) ** 2 * self.in_chans * self.bins

    @torch.no_grad()
    def histograms(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised cell histograms (N, C, bins, H/cell, W/cell)."""
        n, c, h, w = images.shape
        if c != self.in_chans:
            raise ValueError(f"HOG target expects {self.in_chans} channel(s), got {c}")
        if h % self.cell or w % self.cell:
            raise ValueError(f"image size {h}x{w} is not divisible by the HOG cell {self.cell}")
        x = F.pad(images.float(), (1, 1, 1, 1), mode="reflect")
        gx = F.conv2d(x, self.kx.float(), groups=c)[:, :, 1:-1, :]
        gy = F.conv2d(x, self.ky.float(), groups=c)[:, :, :, 1:-1]
        mag = torch.sqrt(gx**2 + gy**2)
        if self.gaussian_window:
            gw = self.gaussian_window
            mag = mag * self.gkern.repeat(h // gw, w // gw)
        angle = torch.remainder(torch.atan2(gy, gx), math.pi)
        idx = (angle / (math.pi / self.bins)).floor().long().clamp_(0, self.bins - 1)
        hist = torch.zeros(n, c, self.bins, h, w, device=images.device, dtype=mag.dtype)
        hist.scatter_(2, idx.unsqueeze(2), mag.unsqueeze(2))
        hc, wc = h // self.cell, w // self.cell
        hist = hist.reshape(n, c, self.bins, hc, self.cell, wc, self.cell).sum(dim=(4, 6))
        b = self.block
        if hc % b or wc % b:
            raise ValueError(f"the {hc}x{wc} cell grid is not divisible by hog_block {b}")
        blocks = hist.reshape(n, c, self.bins, hc // b, b, wc // b, b)
        norm = blocks.pow(2).sum(dim=(2, 4, 6), keepdim=True).sqrt().clamp_min(1e-12)
        return (blocks / norm).reshape(n, c, self.bins, hc, wc)

    @torch.no_grad()
    def forward(self, images: torch.Tensor, patch_size: int) -> torch.Tensor:
        """Per-patch targets (N, L, (p/cell)^2 * C * bins)."""
        hist = self.histograms(images)
        n, c, nb, hc, wc = hist.shape
        k = patch_size // self.cell
        if patch_size % self.cell or hc % k or wc % k:
            raise ValueError(f"patch size {patch_size} is not a multiple of the HOG cell {self.cell} "
                             f"or the image is not divisible by it")
        gh, gw = hc // k, wc // k
        t = hist.reshape(n, c, nb, gh, k, gw, k).permute(0, 3, 5, 4, 6, 1, 2)
        return t.reshape(n, gh * gw, k * k * c * nb)


# ---- visual tokens (BEiT) -------------------------------------------------------------------------
NO_TOKENIZER = (
    "BEiT needs visual-token targets but this model has no tokenizer and no labels were given. Train one "
    "first, e.g. `mimkit tokenizer train --config configs/dvae_tiny_28.yaml` (writes runs/dvae_tiny_28/model), "
    "then create the model with tokenizer_path=runs/dvae_tiny_28/model (config key model.tokenizer_path), "
    "or pass labels=<(N, num_patches) token ids>."
)


def freeze(module: nn.Module | None) -> nn.Module | None:
    """A target network that never trains: eval mode, no gradients (so no weight decay either)."""
    if module is not None:
        module.eval()
        module.requires_grad_(False)
    return module


def vocabulary(tokenizer: nn.Module | None, vocab_size: int | None) -> int:
    """The vocabulary a token head predicts: ``vocab_size``, checked against the tokenizer's (None: the
    tokenizer's own)."""
    if vocab_size is None:
        if tokenizer is None:
            raise ValueError("vocab_size=None takes the tokenizer's vocabulary, but no tokenizer_path was given")
        return int(tokenizer.vocab_size)
    if tokenizer is not None and tokenizer.vocab_size != vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} codes but vocab_size={vocab_size}; "
                         f"set vocab_size={tokenizer.vocab_size} (or vocab_size=None)")
    return int(vocab_size)


def tokenizer_view(tokenizer: nn.Module, images: torch.Tensor, grid) -> torch.Tensor:
    """The same crop at the tokenizer's resolution, ``grid * downsample`` pixels per side (bilinear,
    antialiased), so each token lands on one model patch."""
    down = tokenizer.img_size[0] // tokenizer.grid_size[0], tokenizer.img_size[1] // tokenizer.grid_size[1]
    size = (grid[0] * down[0], grid[1] * down[1])
    if tuple(images.shape[-2:]) == size:
        return images
    return F.interpolate(images.float(), size=size, mode="bilinear", align_corners=False, antialias=True)


@torch.no_grad()
def token_ids(tokenizer: nn.Module | None, images: torch.Tensor, grid, view: torch.Tensor | None = None) -> torch.Tensor:
    """Target ids (N, h*w) of the frozen ``tokenizer`` on ``view`` (default: :func:`tokenizer_view`),
    computed in float32."""
    if tokenizer is None:
        raise ValueError(NO_TOKENIZER)
    view = tokenizer_view(tokenizer, images, grid) if view is None else view
    if view.shape[1] != tokenizer.in_chans:
        raise ValueError(f"the tokenizer takes {tokenizer.in_chans} channel(s) but its view has {view.shape[1]}")
    with torch.autocast(view.device.type, enabled=False):
        ids = tokenizer.encode_ids(view.float())
    n, L = images.shape[0], grid[0] * grid[1]
    if ids.shape != (n, L):
        raise ValueError(f"the tokenizer gives {ids.shape[1]} ids per image but BEiT has {L} patches; "
                         "tokenizer_images must be a view whose token grid matches the patch grid")
    return ids


def hidden_labels(labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Ids of the hidden patches, (M,) in ``mask`` order, from ids for every patch (N, L) or already
    one per hidden patch (M,) (the ``transformers`` convention)."""
    labels = labels.long()
    n, L = mask.shape
    if labels.shape == (n, L):
        return labels[mask]
    if labels.ndim == 1 and labels.numel() == int(mask.sum()):
        return labels
    raise ValueError(f"labels must be (batch, num_patches) = {(n, L)} ids or one id per hidden patch "
                     f"({int(mask.sum())}), got shape {tuple(labels.shape)}")


def check_token_range(ids: torch.Tensor, vocab_size: int) -> None:
    """Ids outside the vocabulary: a clear error on CPU; on an accelerator an asynchronous device
    assert (no host sync per step)."""
    if ids.device.type == "cpu":
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= vocab_size:
            raise ValueError(f"label ids must lie in [0, {vocab_size}); got [{lo}, {hi}]")
    else:
        torch._assert_async((ids >= 0).all() & (ids < vocab_size).all(), f"BEiT label ids must lie in [0, {vocab_size})")
