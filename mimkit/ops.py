"""Tensor helpers shared by every method: patchify, sin-cos position embeddings, interpolation."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def check_image_size(img_size: tuple[int, int], patch_size: int) -> None:
    """Raise a clear error when the image cannot be cut into whole patches."""
    h, w = img_size
    if h % patch_size or w % patch_size:
        raise ValueError(
            f"image size {h}x{w} is not divisible by patch size {patch_size}; "
            f"resize/crop images to a multiple of {patch_size} (e.g. {h - h % patch_size or patch_size}"
            f"x{w - w % patch_size or patch_size}) or pick a patch size that divides it"
        )


def patchify(imgs: torch.Tensor, p: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, h*w, p*p*C), channel-last inside a patch (MAE's ``nchpwq->nhwpqc``)."""
    n, c, hh, ww = imgs.shape
    check_image_size((hh, ww), p)
    h, w = hh // p, ww // p
    x = imgs.reshape(n, c, h, p, w, p)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(n, h * w, p * p * c)


def unpatchify(x: torch.Tensor, p: int, grid: tuple[int, int], channels: int) -> torch.Tensor:
    """(N, h*w, p*p*C) -> (N, C, H, W); inverse of :func:`patchify`."""
    h, w = grid
    n = x.shape[0]
    x = x.reshape(n, h, w, p, p, channels)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(n, channels, h * p, w * p)


def _sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    if dim % 2:
        raise ValueError(f"sin-cos embedding width must be even, got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    out = pos.reshape(-1).double()[:, None] * omega[None, :]
    return torch.cat([out.sin(), out.cos()], dim=1)


def sincos_pos_embed_2d(dim: int, grid: tuple[int, int], cls_token: bool = True) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding laid out as the reference MAE / ``transformers`` ViTMAE.

    The first half of the channels encodes the column (w) index, the second half the row (h) index,
    each as ``[sin | cos]``. With ``cls_token`` a row of zeros is prepended. Returns (1, [1+]h*w, dim).
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding width must be a multiple of 4, got {dim}")
    gh, gw = grid
    hh, ww = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    emb = torch.cat([_sincos_1d(dim // 2, ww), _sincos_1d(dim // 2, hh)], dim=1)
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim, dtype=emb.dtype), emb], dim=0)
    return emb.float().unsqueeze(0)


def resize_pos_embed(
    pos_embed: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int], num_prefix: int = 1
) -> torch.Tensor:
    """Bicubic 2-D interpolation of a learned/fixed (1, prefix+h*w, D) position embedding."""
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    prefix, grid = pos_embed[:, :num_prefix], pos_embed[:, num_prefix:]
    d = grid.shape[-1]
    if grid.shape[1] != old_grid[0] * old_grid[1]:
        raise ValueError(f"position embedding has {grid.shape[1]} grid entries, expected {old_grid}")
    grid = grid.reshape(1, old_grid[0], old_grid[1], d).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=tuple(new_grid), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], d).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)


def to_2tuple(x) -> tuple[int, int]:
    if isinstance(x, (tuple, list)):
        if len(x) != 2:
            raise ValueError(f"expected an int or a pair, got {x!r}")
        return int(x[0]), int(x[1])
    return int(x), int(x)


def grid_side(n: int) -> int:
    s = int(math.isqrt(n))
    if s * s != n:
        raise ValueError(f"{n} tokens do not form a square grid; pass the grid explicitly")
    return s
