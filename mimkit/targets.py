"""Prediction targets computed from the input images (no learned parameters).

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
