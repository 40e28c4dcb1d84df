"""ViT encoder built from timm blocks.

One configurable class covers both MIM modes (through the shared front end of
:mod:`mimkit.encoders.base`):
* visible tokens only (MAE, data2vec 2.0, I-JEPA): pass ``ids_keep`` and only those patch tokens
  enter the blocks;
* all tokens with a learnable mask token (SimMIM, MaskFeat): pass ``mask`` (N, L), hidden patch
  embeddings are replaced by the mask token before cls and positions are added.
Position embeddings are recomputed (sin-cos) or interpolated (learned) for other input sizes.
``class_token=False`` gives I-JEPA's encoder (patch tokens only, as ``transformers`` ``IJepaModel``).
"""
from __future__ import annotations

from functools import partial

import torch
from timm.layers import PatchEmbed, trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn

from ..base import EncoderOutput
from ..ops import check_image_size, init_xavier_, resize_pos_embed, sincos_pos_embed_2d, to_2tuple
from .base import MaskedEncoder


def attention_probs(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Softmax attention weights (N, heads, T, T) of a timm ``Attention`` for its (normed) input.
    Only computed when a caller asks for attentions, so the normal path keeps fused SDPA."""
    b, t, _ = x.shape
    qkv = attn.qkv(x).reshape(b, t, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k = qkv[0], qkv[1]
    q, k = attn.q_norm(q), attn.k_norm(k)
    return ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)


class ViTEncoder(MaskedEncoder):
    """Args:
        img_size: int or (H, W) the position embedding is built for (other sizes work: positions are
            recomputed or interpolated).
        patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio, qkv_bias: the usual ViT sizes.
        norm_eps: LayerNorm epsilon (1e-6 in MAE; ``transformers`` defaults to 1e-12).
        pos_embed: ``"sincos"`` (fixed 2-D sin-cos, MAE) or ``"learned"`` (SimMIM, BEiT-style ViTs).
        use_mask_token: add a learnable mask token (the all-tokens mode).
        drop_path_rate: stochastic depth, linear over the blocks.
        init_values: layer-scale init (None: no layer scale).
        class_token: prepend a class token (False for I-JEPA).

    ``forward(images (N, C, H, W), mask=None | (N, L), ids_keep=None | (N, K))`` returns an
    :class:`~mimkit.base.EncoderOutput` whose ``last_hidden_state`` is (N, prefix + L or K, D) after
    the final norm (prefix = 1 with a class token).
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
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
        class_token: bool = True,
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
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if use_mask_token else None
        pe = sincos_pos_embed_2d(embed_dim, self.grid_size, cls_token=class_token)
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
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=0.02)
        if self.mask_token is not None:
            nn.init.normal_(self.mask_token, std=0.02)
        if self.pos_embed_type == "learned":
            trunc_normal_(self.pos_embed, std=0.02)
        init_xavier_(self.blocks)
        init_xavier_(self.norm)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token", "mask_token"}

    def pos_embed_for(self, grid: tuple[int, int]) -> torch.Tensor:
        if tuple(grid) == self.grid_size:
            return self.pos_embed
        if self.pos_embed_type == "sincos":
            return sincos_pos_embed_2d(self.embed_dim, grid, cls_token=self.cls_token is not None).to(self.pos_embed)
        return resize_pos_embed(self.pos_embed, self.grid_size, grid, num_prefix=self.num_prefix_tokens)

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

