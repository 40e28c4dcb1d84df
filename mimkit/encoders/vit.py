"""ViT encoder built from timm blocks.

One configurable class covers both MIM modes:
* visible tokens only (MAE): pass ``ids_keep`` and only those patch tokens enter the blocks;
* all tokens with a learnable mask token (SimMIM, BEiT, MaskFeat): pass ``mask`` (N, L), hidden
  patch embeddings are replaced by the mask token before cls and positions are added.
Position embeddings are recomputed (sin-cos) or interpolated (learned) for other input sizes.
"""
from __future__ import annotations

import math
from functools import partial

import torch
from timm.layers import PatchEmbed, trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn

from ..base import EncoderOutput
from ..ops import check_image_size, resize_pos_embed, sincos_pos_embed_2d, to_2tuple


def attention_probs(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Softmax attention weights (N, heads, T, T) of a timm ``Attention`` for its (normed) input.
    Only computed when a caller asks for attentions, so the normal path keeps fused SDPA."""
    b, t, _ = x.shape
    qkv = attn.qkv(x).reshape(b, t, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k = qkv[0], qkv[1]
    q, k = attn.q_norm(q), attn.k_norm(k)
    return ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)


class ViTEncoder(nn.Module):
    def __init__(
        self,
        img_size=224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        norm_eps: float = 1e-6,
        pos_embed: str = "sincos",
        use_mask_token: bool = False,
        drop_path_rate: float = 0.0,
        init_values: float | None = None,
    ):
        super().__init__()
        self.img_size = to_2tuple(img_size)
        check_image_size(self.img_size, patch_size)
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} must be divisible by num_heads {num_heads}")
        if pos_embed not in ("sincos", "learned"):
            raise ValueError(f"pos_embed must be 'sincos' or 'learned', got {pos_embed!r}")
        self.patch_size, self.in_chans, self.embed_dim, self.depth = patch_size, in_chans, embed_dim, depth
        self.num_heads = num_heads
        self.grid_size = (self.img_size[0] // patch_size, self.img_size[1] // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.pos_embed_type = pos_embed
        self.patch_embed = PatchEmbed(self.img_size, patch_size, in_chans, embed_dim, strict_img_size=False)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if use_mask_token else None
        pe = sincos_pos_embed_2d(embed_dim, self.grid_size, cls_token=True)
        self.pos_embed = nn.Parameter(pe, requires_grad=(pos_embed == "learned"))
        norm = partial(nn.LayerNorm, eps=norm_eps)
        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, depth)]
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=qkv_bias, norm_layer=norm,
                  drop_path=dpr[i], init_values=init_values)
            for i in range(depth)
        )
        self.norm = norm(embed_dim)
        self.init_weights()

    # ---- init (reference MAE) -------------------------------------------------------------
    def init_weights(self) -> None:
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        if self.mask_token is not None:
            nn.init.normal_(self.mask_token, std=0.02)
        if self.pos_embed_type == "learned":
            trunc_normal_(self.pos_embed, std=0.02)
        self.blocks.apply(_init_linear_ln)
        _init_linear_ln(self.norm)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token", "mask_token"}

    # ---- helpers ----------------------------------------------------------------------------
    def grid(self, images: torch.Tensor) -> tuple[int, int]:
        check_image_size(tuple(images.shape[-2:]), self.patch_size)
        return images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size

    def pos_embed_for(self, grid: tuple[int, int]) -> torch.Tensor:
        if tuple(grid) == self.grid_size:
            return self.pos_embed
        if self.pos_embed_type == "sincos":
            return sincos_pos_embed_2d(self.embed_dim, grid).to(self.pos_embed)
        return resize_pos_embed(self.pos_embed, self.grid_size, grid)

    def embed(self, images, mask=None, ids_keep=None):
        """Patch tokens (+mask token, +positions, visible subset) with cls prepended."""
        grid = self.grid(images)
        x = self.patch_embed(images)
        if mask is not None:
            if self.mask_token is None:
                raise ValueError("this encoder has no mask token (use_mask_token=False); pass ids_keep instead")
            w = mask.reshape(x.shape[0], -1, 1).to(x.dtype)
            x = x * (1 - w) + self.mask_token.to(x.dtype) * w
        pos = self.pos_embed_for(grid)
        x = x + pos[:, 1:]
        if ids_keep is not None:
            x = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        cls = (self.cls_token + pos[:, :1]).expand(x.shape[0], -1, -1)
        return torch.cat([cls, x], dim=1)

    def forward_tokens(self, x, output_hidden_states=False, output_attentions=False) -> EncoderOutput:
        hidden, attns = [], []
        for blk in self.blocks:
            if output_hidden_states:
                hidden.append(x)
            if output_attentions:
                attns.append(attention_probs(blk.attn, blk.norm1(x)))
            x = blk(x)
        x = self.norm(x)
        if output_hidden_states:
            hidden.append(x)
        return EncoderOutput(x, tuple(hidden) if output_hidden_states else None,
                             tuple(attns) if output_attentions else None)

    def forward(self, images, mask=None, ids_keep=None, output_hidden_states=False,
                output_attentions=False) -> EncoderOutput:
        x = self.embed(images, mask=mask, ids_keep=ids_keep)
        return self.forward_tokens(x, output_hidden_states, output_attentions)


def _init_linear_ln(m: nn.Module) -> None:
    for mod in m.modules():
        if isinstance(mod, nn.Linear):
            nn.init.xavier_uniform_(mod.weight)
            if mod.bias is not None:
                nn.init.zeros_(mod.bias)
        elif isinstance(mod, nn.LayerNorm):
            nn.init.ones_(mod.weight)
            nn.init.zeros_(mod.bias)


def init_linear_ln(m: nn.Module) -> None:
    """Reference MAE init for a module tree: xavier-uniform linears, unit LayerNorms."""
    _init_linear_ln(m)


del math
