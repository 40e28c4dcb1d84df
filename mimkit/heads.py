"""Prediction heads."""
from __future__ import annotations

from functools import partial

import torch
from timm.models.vision_transformer import Block
from torch import nn

from .encoders.vit import init_linear_ln
from .ops import sincos_pos_embed_2d, to_2tuple


class MAEDecoder(nn.Module):
    """MAE decoder: linear to decoder width, mask tokens re-inserted and un-shuffled with
    ``ids_restore``, fixed sin-cos decoder positions, N timm blocks, norm, linear to ``out_dim``.
    Input: encoder tokens (N, 1+kept, D) with cls first. Output: (N, L, out_dim), cls dropped."""

    def __init__(self, grid_size, embed_dim: int, out_dim: int, decoder_embed_dim: int = 512,
                 decoder_depth: int = 8, decoder_num_heads: int = 16, mlp_ratio: float = 4.0,
                 norm_eps: float = 1e-6, qkv_bias: bool = True):
        super().__init__()
        self.grid_size = to_2tuple(grid_size)
        self.decoder_embed_dim = decoder_embed_dim
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        pe = sincos_pos_embed_2d(decoder_embed_dim, self.grid_size, cls_token=True)
        self.decoder_pos_embed = nn.Parameter(pe, requires_grad=False)
        norm = partial(nn.LayerNorm, eps=norm_eps)
        self.decoder_blocks = nn.ModuleList(
            Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=qkv_bias, norm_layer=norm)
            for _ in range(decoder_depth)
        )
        self.decoder_norm = norm(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, out_dim)
        nn.init.normal_(self.mask_token, std=0.02)
        init_linear_ln(self)

    def no_weight_decay(self) -> set[str]:
        return {"mask_token", "decoder_pos_embed"}

    def forward(self, x: torch.Tensor, ids_restore: torch.Tensor, grid=None) -> torch.Tensor:
        x = self.decoder_embed(x)
        n, L = ids_restore.shape
        mask_tokens = self.mask_token.to(x.dtype).expand(n, L + 1 - x.shape[1], -1)
        x_ = torch.cat([x[:, 1:], mask_tokens], dim=1)
        x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        x = torch.cat([x[:, :1], x_], dim=1)
        grid = tuple(grid) if grid is not None else self.grid_size
        pos = self.decoder_pos_embed if grid == self.grid_size else \
            sincos_pos_embed_2d(self.decoder_embed_dim, grid).to(self.decoder_pos_embed)
        x = x + pos
        for blk in self.decoder_blocks:
            x = blk(x)
        x = self.decoder_norm(x)
        return self.decoder_pred(x)[:, 1:]


class SimMIMHead(nn.Module):
    """SimMIM decoder: 1x1 Conv2d(width -> stride^2 * C) + PixelShuffle(stride) on the token grid.
    Input: tokens (N, h*w, D) without cls (or a map (N, D, h, w)). Output: image (N, C, h*stride, w*stride)."""

    def __init__(self, embed_dim: int, encoder_stride: int, out_chans: int = 3):
        super().__init__()
        self.encoder_stride, self.out_chans = encoder_stride, out_chans
        self.conv = nn.Conv2d(embed_dim, encoder_stride**2 * out_chans, kernel_size=1)
        self.shuffle = nn.PixelShuffle(encoder_stride)

    def forward(self, x: torch.Tensor, grid=None) -> torch.Tensor:
        if x.ndim == 3:
            n, L, d = x.shape
            h, w = to_2tuple(grid) if grid is not None else (int(L**0.5), int(L**0.5))
            if h * w != L:
                raise ValueError(f"{L} tokens do not form a {h}x{w} grid; pass grid=(h, w)")
            x = x.transpose(1, 2).reshape(n, d, h, w)
        return self.shuffle(self.conv(x))
