"""Tensor helpers shared by every method: patch grids, patchify, position embeddings and their
resizing (absolute and relative), and the weight initialisations the references use."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from timm.layers import to_2tuple as _timm_2tuple
from torch import nn


def token_grid(ids: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Token ids (N, h*w) row-major -> (N, h, w); (N, h, w) passes through. Raises if they do not fill the grid."""
    if ids.ndim != 2:
        return ids
    h, w = grid
    if ids.shape[1] != h * w:
        raise ValueError(f"{ids.shape[1]} ids do not fill a {h}x{w} grid; pass grid=(h, w)")
    return ids.reshape(-1, h, w)


def check_image_size(img_size: tuple[int, int], patch_size: int) -> None:
    """Raise a clear error when the image cannot be cut into whole patches."""
    h, w = img_size
    if h % patch_size or w % patch_size:
        raise ValueError(
            f"image size {h}x{w} is not divisible by patch size {patch_size}; "
            f"resize/crop images to a multiple of {patch_size} (e.g. {h - h % patch_size or patch_size}"
            f"x{w - w % patch_size or patch_size}) or pick a patch size that divides it"
        )


def patch_grid(images_or_size, patch_size: int) -> tuple[int, int]:
    """Token grid (h, w) of images (N, C, H, W) or of a size (H, W) cut into ``patch_size`` patches;
    a clear error when they do not divide."""
    size = tuple(images_or_size.shape[-2:]) if torch.is_tensor(images_or_size) else to_2tuple(images_or_size)
    check_image_size(size, patch_size)
    return size[0] // patch_size, size[1] // patch_size


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


def pixel_mask(mask: torch.Tensor, grid, patch: int) -> torch.Tensor:
    """(N, L) patch mask -> (N, 1, H, W) float pixel mask (each entry repeated ``patch`` times per axis)."""
    m = mask.reshape(-1, grid[0], grid[1]).float()
    return m.repeat_interleave(patch, 1).repeat_interleave(patch, 2).unsqueeze(1).contiguous()


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
    """Bicubic 2-D interpolation of a learned/fixed (1, prefix+h*w, D) position embedding (timm's
    ``resample_abs_pos_embed``, without anti-aliasing)."""
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    if pos_embed.shape[1] - num_prefix != old_grid[0] * old_grid[1]:
        raise ValueError(f"position embedding has {pos_embed.shape[1] - num_prefix} grid entries, expected {old_grid}")
    return resample_abs_pos_embed(pos_embed, list(new_grid), list(old_grid), num_prefix_tokens=num_prefix,
                                  antialias=False)


def resize_rel_pos_table(table: torch.Tensor, old_window, new_window) -> torch.Tensor:
    """Bilinear resize of a BEiT relative position bias table ((2h-1)*(2w-1)+3, heads) to another grid,
    keeping the 3 cls entries, as ``transformers``' ``BeitRelativePositionBias`` does (identical for
    square grids; correct row/column order for rectangular ones)."""
    old_window, new_window = tuple(old_window), tuple(new_window)
    if old_window == new_window:
        return table
    oh, ow = 2 * old_window[0] - 1, 2 * old_window[1] - 1
    nh, nw = 2 * new_window[0] - 1, 2 * new_window[1] - 1
    sub = table[: oh * ow].reshape(1, oh, ow, -1).permute(0, 3, 1, 2)
    sub = F.interpolate(sub.float(), size=(nh, nw), mode="bilinear").to(table.dtype)
    sub = sub.permute(0, 2, 3, 1).reshape(nh * nw, -1)
    return torch.cat([sub, table[oh * ow:]], dim=0)


def to_2tuple(x) -> tuple[int, int]:
    """timm's ``to_2tuple`` that insists on a pair of ints (configs give lists, e.g. ``img_size: [28, 28]``)."""
    pair = _timm_2tuple(x)
    if len(pair) != 2:
        raise ValueError(f"expected an int or a pair, got {x!r}")
    return int(pair[0]), int(pair[1])



# ---- weight initialisation --------------------------------------------------------------------------
def init_xavier_(module: nn.Module) -> None:
    """Reference MAE init for a module tree: xavier-uniform linears with zero biases, unit LayerNorms."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def init_trunc_normal_(module: nn.Module, std: float = 0.02) -> None:
    """BEiT / I-JEPA init for a module tree: trunc-normal(std) linears with zero biases, unit LayerNorms."""
    from timm.layers import trunc_normal_

    for m in module.modules():
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


@torch.no_grad()
def rescale_residual_branches_(blocks) -> None:
    """BEiT's and I-JEPA's ``fix_init_weight``: block ``i``'s attention and MLP output projections are
    divided by ``sqrt(2 * (i + 1))``."""
    for i, blk in enumerate(blocks):
        blk.attn.proj.weight.div_(math.sqrt(2.0 * (i + 1)))
        blk.mlp.fc2.weight.div_(math.sqrt(2.0 * (i + 1)))
