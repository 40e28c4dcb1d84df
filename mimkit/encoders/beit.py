"""BEiT encoder: a ViT built from timm's BEiT blocks.

Differences from :class:`~mimkit.encoders.vit.ViTEncoder` (all as in the reference BEiT and
``transformers``' ``BeitModel``):

* attention has a bias on the query and value projections but none on the key (timm keeps
  ``q_bias``/``v_bias`` parameters and a zero ``k_bias`` buffer);
* a learned relative position bias over the patch grid plus 3 extra entries (cls->token,
  token->cls, cls->cls), either shared by all blocks (``use_shared_relative_position_bias``, the
  BEiT pretraining default; one :class:`timm.models.beit.RelativePositionBias` at ``rel_pos_bias``)
  or one table per block (``use_relative_position_bias``), or both (they add up);
* optional learned absolute position embeddings (``use_absolute_position_embeddings``);
* layer scale (``layer_scale_init_value``; 0 disables it) on both residual branches.

Parameter names follow timm's ``Beit`` (``patch_embed``, ``cls_token``, ``pos_embed``,
``rel_pos_bias``, ``blocks``, ``norm``) so the encoder's weights load into a timm BEiT.

The forward signature and :class:`~mimkit.base.EncoderOutput` are those of ``ViTEncoder``:
``mask`` (N, L) replaces hidden patch embeddings by the mask token before cls and positions;
``ids_keep`` keeps a subset of patch tokens (the relative position bias is gathered to match);
attention weights are computed (with the bias) only when ``output_attentions`` is asked for.
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import PatchEmbed, trunc_normal_
from timm.models.beit import Block, RelativePositionBias, gen_relative_position_index
from torch import nn

from ..base import EncoderOutput
from ..ops import (
    check_image_size,
    init_trunc_normal_,
    rescale_residual_branches_,
    resize_pos_embed,
    resize_rel_pos_table,
    to_2tuple,
)
from .base import MaskedEncoder


def rel_pos_bias_from_table(table: torch.Tensor, table_window, window) -> torch.Tensor:
    """(heads, 1+h*w, 1+h*w) bias for the grid ``window`` from a table learned on ``table_window``."""
    window = tuple(window)
    table = resize_rel_pos_table(table, table_window, window)
    index = gen_relative_position_index(window, device=table.device)
    t = window[0] * window[1] + 1
    return table[index.reshape(-1)].reshape(t, t, -1).permute(2, 0, 1).contiguous()


class BEiTEncoder(MaskedEncoder):
    """Args:
        img_size, patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio, norm_eps: as
            :class:`~mimkit.encoders.vit.ViTEncoder`.
        qkv_bias: biases on the query and value projections (the key has none, as in BEiT).
        use_mask_token: learnable mask token for hidden patches.
        use_shared_relative_position_bias / use_relative_position_bias: one relative position table for
            all blocks (BEiT pretraining) / one per block; both may be on (they add up).
        use_absolute_position_embeddings: learned absolute positions as well.
        layer_scale_init_value: layer scale on both residual branches (0 disables it).
        drop_path_rate: stochastic depth, linear over the blocks.

    ``forward(images, mask=None | (N, L), ids_keep=None | (N, K))`` -> :class:`~mimkit.base.EncoderOutput`
    with ``last_hidden_state`` (N, 1 + L or K, D).
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
        use_mask_token: bool = True,
        use_shared_relative_position_bias: bool = True,
        use_relative_position_bias: bool = False,
        use_absolute_position_embeddings: bool = False,
        layer_scale_init_value: float = 0.1,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        self.img_size = to_2tuple(img_size)
        check_image_size(self.img_size, patch_size)
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} must be divisible by num_heads {num_heads}")
        if layer_scale_init_value is not None and layer_scale_init_value < 0:
            raise ValueError(f"layer_scale_init_value must be >= 0 (0 disables layer scale), got {layer_scale_init_value}")
        self.patch_size, self.in_chans, self.embed_dim, self.depth = patch_size, in_chans, embed_dim, depth
        self.num_heads = num_heads
        self.grid_size = (self.img_size[0] // patch_size, self.img_size[1] // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.layer_scale_init_value = float(layer_scale_init_value or 0.0)
        self.patch_embed = PatchEmbed(self.img_size, patch_size, in_chans, embed_dim, strict_img_size=False)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if use_mask_token else None
        self.pos_embed = (nn.Parameter(torch.zeros(1, self.num_patches + 1, embed_dim))
                          if use_absolute_position_embeddings else None)
        self.rel_pos_bias = (RelativePositionBias(self.grid_size, num_heads)
                             if use_shared_relative_position_bias else None)
        norm = partial(nn.LayerNorm, eps=norm_eps)
        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, depth)]
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, qkv_bias=qkv_bias, mlp_ratio=mlp_ratio, drop_path=dpr[i],
                  init_values=self.layer_scale_init_value or None, norm_layer=norm,
                  window_size=self.grid_size if use_relative_position_bias else None)
            for i in range(depth)
        )
        self.norm = norm(embed_dim)
        self.init_weights()

    # ---- options, as transformers' BeitConfig names them ---------------------------------------
    @property
    def use_shared_relative_position_bias(self) -> bool:
        return self.rel_pos_bias is not None

    @property
    def use_relative_position_bias(self) -> bool:
        return len(self.blocks) > 0 and self.blocks[0].attn.relative_position_bias_table is not None

    @property
    def use_absolute_position_embeddings(self) -> bool:
        return self.pos_embed is not None

    # ---- init (reference BEiT) ------------------------------------------------------------------
    def init_weights(self) -> None:
        """trunc-normal(0.02) linears and tokens, zero biases, unit norms, then the BEiT rescale of
        each block's output projections by 1/sqrt(2*layer)."""
        init_trunc_normal_(self, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        if self.mask_token is not None:
            trunc_normal_(self.mask_token, std=0.02)
        if self.pos_embed is not None:
            trunc_normal_(self.pos_embed, std=0.02)
        rescale_residual_branches_(self.blocks)

    def no_weight_decay(self) -> set[str]:
        names = {"pos_embed", "cls_token", "mask_token"}
        names |= {n for n, _ in self.named_parameters() if "relative_position_bias_table" in n}
        return names

    # ---- helpers --------------------------------------------------------------------------------
    def pos_embed_for(self, grid: tuple[int, int]) -> torch.Tensor | None:
        if self.pos_embed is None:
            return None
        return resize_pos_embed(self.pos_embed, self.grid_size, grid)

    def shared_bias(self, grid) -> torch.Tensor | None:
        """Shared relative position bias (heads, 1+L, 1+L) for ``grid`` (interpolated if needed)."""
        if self.rel_pos_bias is None:
            return None
        if tuple(grid) == self.grid_size:
            return self.rel_pos_bias()
        return rel_pos_bias_from_table(self.rel_pos_bias.relative_position_bias_table, self.grid_size, grid)

    def block_bias(self, blk, grid) -> torch.Tensor | None:
        """A block's own relative position bias for ``grid`` (None without per-block tables)."""
        table = blk.attn.relative_position_bias_table
        if table is None:
            return None
        return rel_pos_bias_from_table(table, self.grid_size, grid)

    @staticmethod
    def _gather_bias(bias, ids_keep):
        """Restrict a (heads, 1+L, 1+L) bias to cls + the kept tokens: (N, heads, 1+K, 1+K)."""
        if bias is None or ids_keep is None:
            return bias
        idx = torch.cat([torch.zeros_like(ids_keep[:, :1]), ids_keep + 1], dim=1)  # (N, 1+K)
        b = bias.unsqueeze(0).expand(idx.shape[0], -1, -1, -1)
        h, t = b.shape[1], idx.shape[1]
        rows = torch.gather(b, 2, idx[:, None, :, None].expand(-1, h, -1, b.shape[-1]))
        return torch.gather(rows, 3, idx[:, None, None, :].expand(-1, h, t, -1))

    @staticmethod
    def attention(attn, x, bias=None, need_weights=False):
        """A timm BEiT ``Attention`` written out: returns (output, weights or None). Used for the
        attention maps and when a per-block table must be resized for another grid."""
        b, t, c = x.shape
        qkv_bias = None
        if attn.q_bias is not None:
            qkv_bias = torch.cat((attn.q_bias, attn.k_bias, attn.v_bias))
        qkv = F.linear(x, attn.qkv.weight, qkv_bias).reshape(b, t, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if need_weights:
            scores = (q * attn.scale) @ k.transpose(-2, -1)
            if bias is not None:
                scores = scores + bias
            weights = scores.softmax(dim=-1)
            out = attn.attn_drop(weights) @ v
        else:
            weights = None
            mask = bias.to(q.dtype) if bias is not None else None
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                                 dropout_p=attn.attn_drop.p if attn.training else 0.0)
        out = attn.proj_drop(attn.proj(out.transpose(1, 2).reshape(b, t, -1)))
        return out, weights

    def _block(self, blk, x, bias, need_weights):
        out, weights = self.attention(blk.attn, blk.norm1(x), bias, need_weights)
        g1 = blk.gamma_1 if blk.gamma_1 is not None else 1.0
        g2 = blk.gamma_2 if blk.gamma_2 is not None else 1.0
        x = x + blk.drop_path1(g1 * out)
        x = x + blk.drop_path2(g2 * blk.mlp(blk.norm2(x)))
        return x, weights

    def forward_tokens(self, x, grid, ids_keep=None, output_hidden_states=False,
                       output_attentions=False) -> EncoderOutput:
        grid = tuple(grid)
        shared = self._gather_bias(self.shared_bias(grid), ids_keep)
        # timm's block adds its own table only for the grid it was built for
        manual = output_attentions or (self.use_relative_position_bias and (grid != self.grid_size or ids_keep is not None))
        hidden, attns = [], []
        for blk in self.blocks:
            if output_hidden_states:
                hidden.append(x)
            if manual:
                own = self._gather_bias(self.block_bias(blk, grid), ids_keep)
                bias = shared if own is None else (own if shared is None else own + shared)
                x, w = self._block(blk, x, bias, output_attentions)
                if output_attentions:
                    attns.append(w)
            else:
                x = blk(x, shared_rel_pos_bias=shared)
        x = self.norm(x)
        if output_hidden_states:
            hidden.append(x)
        return EncoderOutput(x, tuple(hidden) if output_hidden_states else None,
                             tuple(attns) if output_attentions else None)

    def forward(self, images, mask=None, ids_keep=None, output_hidden_states=False,
                output_attentions=False) -> EncoderOutput:
        x = self.embed(images, mask=mask, ids_keep=ids_keep)
        return self.forward_tokens(x, self.grid(images), ids_keep, output_hidden_states, output_attentions)
