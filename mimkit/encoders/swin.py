"""Swin encoder for SimMIM, built from timm's ``SwinTransformer`` stages.

The patch embedding (conv + LayerNorm), the stages and the final norm are timm's own modules, kept
under timm's names (``patch_embed``, ``layers.{i}``, ``norm``) so the encoder state dict is a timm
Swin state dict plus ``mask_token`` (and ``absolute_pos_embed`` when enabled). SimMIM's mask token
replaces hidden patch embeddings after the patch-embedding norm, on the Swin patch grid (patch 4),
before the optional absolute position embedding, as in the SimMIM reference and ``transformers``
``SwinForMaskedImageModeling``.

Layout differences with ``transformers`` that the converters in ``mimkit.interop.hf_simmim`` bridge:
timm merges patches at the *start* of stages 1..S-1, transformers at the *end* of stages 0..S-2 (same
computation); q/k/v are one ``qkv`` linear in timm. transformers pads a stage whose resolution is not
a multiple of the window *before* the cyclic shift, timm *after*; the two agree whenever every stage
resolution is a multiple of the window size (always true for the recipes).
"""
from __future__ import annotations

import torch
from timm.layers import trunc_normal_
from timm.models.swin_transformer import SwinTransformer
from torch import nn

from ..base import EncoderOutput
from ..ops import patch_grid, to_2tuple
from .base import apply_mask_token


class SwinEncoder(nn.Module):
    """Args:
        img_size: int or (H, W); fixed (attention windows and masks are built for it); must be a
            multiple of the output stride ``patch_size * 2^(stages-1)``.
        patch_size, in_chans, embed_dim: patch embedding (timm's conv + LayerNorm).
        depths, num_heads: blocks and heads per stage; window_size, mlp_ratio, qkv_bias: as timm.
        norm_eps: epsilon of the block norms and the final norm.
        ape: learned absolute position embedding on the patch grid.
        use_mask_token: SimMIM's mask token, applied on the patch grid before ``ape``.
        drop_path_rate: stochastic depth, linear over all blocks.

    ``forward(images, mask=None | (N, L))`` -> :class:`~mimkit.base.EncoderOutput` with
    ``last_hidden_state`` (N, h'*w', num_features), the last stage's tokens (no class token).
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 192,
        patch_size: int = 4,
        in_chans: int = 3,
        embed_dim: int = 128,
        depths: tuple[int, ...] = (2, 2, 18, 2),
        num_heads: tuple[int, ...] = (4, 8, 16, 32),
        window_size: int = 6,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        norm_eps: float = 1e-5,
        ape: bool = False,
        use_mask_token: bool = True,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        self.img_size = to_2tuple(img_size)
        depths, num_heads = tuple(int(d) for d in depths), tuple(int(h) for h in num_heads)
        if len(depths) != len(num_heads) or not depths:
            raise ValueError(f"depths {depths} and num_heads {num_heads} must be non-empty and of equal length "
                             f"(one entry per stage)")
        self.patch_size, self.in_chans, self.embed_dim = int(patch_size), in_chans, embed_dim
        self.depths, self.num_heads, self.window_size = depths, num_heads, int(window_size)
        self.num_stages = len(depths)
        self.stride = self.patch_size * 2 ** (self.num_stages - 1)
        h, w = self.img_size
        if h % self.stride or w % self.stride:
            raise ValueError(
                f"image size {h}x{w} must be a multiple of the Swin output stride {self.stride} (patch "
                f"{self.patch_size} x 2^{self.num_stages - 1} patch mergings); resize to e.g. "
                f"{max(self.stride, h // self.stride * self.stride)} px or use fewer stages"
            )
        for i, (d, nh) in enumerate(zip(depths, num_heads)):
            if (embed_dim * 2**i) % nh:
                raise ValueError(f"stage {i} width {embed_dim * 2**i} is not divisible by num_heads {nh}")
        self.grid_size = (h // self.patch_size, w // self.patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.num_features = int(embed_dim * 2 ** (self.num_stages - 1))

        body = SwinTransformer(
            img_size=self.img_size, patch_size=self.patch_size, in_chans=in_chans, num_classes=0,
            embed_dim=embed_dim, depths=depths, num_heads=num_heads, window_size=self.window_size,
            mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop_path_rate=drop_path_rate, strict_img_size=True,
        )
        # keep timm's modules under timm's names (no classifier head: MIM has none)
        self.patch_embed, self.layers, self.norm = body.patch_embed, body.layers, body.norm
        # block norms and the final norm use ``norm_eps``; the patch-embed and patch-merging norms keep
        # LayerNorm's default 1e-5 (as transformers, whose layer_norm_eps only reaches those two)
        for stage in self.layers:
            for blk in stage.blocks:
                blk.norm1.eps = blk.norm2.eps = norm_eps
        self.norm.eps = norm_eps
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if use_mask_token else None
        if self.mask_token is not None:
            trunc_normal_(self.mask_token, std=0.02)
        self.absolute_pos_embed = None
        if ape:
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, self.num_patches, embed_dim))
            trunc_normal_(self.absolute_pos_embed, std=0.02)

    def no_weight_decay(self) -> set[str]:
        names = {"mask_token"} if self.mask_token is not None else set()
        if self.absolute_pos_embed is not None:
            names.add("absolute_pos_embed")
        names |= {n for n, _ in self.named_parameters() if "relative_position_bias_table" in n}
        return names

    def grid(self, images: torch.Tensor) -> tuple[int, int]:
        return patch_grid(images, self.patch_size)

    def out_grid(self, images: torch.Tensor) -> tuple[int, int]:
        """Token grid of the last stage."""
        return images.shape[-2] // self.stride, images.shape[-1] // self.stride

    def check_images(self, images: torch.Tensor) -> None:
        if tuple(images.shape[-2:]) != self.img_size:
            raise ValueError(
                f"this Swin encoder was built for {self.img_size[0]}x{self.img_size[1]} images (its attention "
                f"windows and masks are fixed), got {images.shape[-2]}x{images.shape[-1]}; resize the images or "
                f"create the model with img_size={images.shape[-2]}"
            )

    def embed(self, images: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Patch embedding (+norm) -> mask token -> absolute positions. Returns NHWC."""
        self.check_images(images)
        x = self.patch_embed(images)  # N, h, w, C (normed)
        n, h, w, c = x.shape
        if mask is not None:
            x = apply_mask_token(x, mask, self.mask_token)
        if self.absolute_pos_embed is not None:
            x = x + self.absolute_pos_embed.reshape(1, h, w, c).to(x.dtype)
        return x

    def forward(self, images, mask=None, output_hidden_states=False, output_attentions=False) -> EncoderOutput:
        """``last_hidden_state``: last-stage tokens after the final norm, (N, h'*w', D) with
        h' = H / stride. ``hidden_states``: the embedding and every stage output, flattened."""
        if output_attentions:
            raise ValueError("Swin attends within shifted windows; it has no global attention maps to return "
                             "(use a ViT encoder for attention maps)")
        x = self.embed(images, mask)
        hidden = [x.flatten(1, 2)] if output_hidden_states else None
        for stage in self.layers:
            x = stage(x)
            if output_hidden_states:
                hidden.append(x.flatten(1, 2))
        x = self.norm(x).flatten(1, 2)
        return EncoderOutput(x, tuple(hidden) if output_hidden_states else None, None)
