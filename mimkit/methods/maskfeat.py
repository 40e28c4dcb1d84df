"""MaskFeat (Wei et al. 2022) on images: a ViT with a mask token on hidden patches (all tokens
encoded, as SimMIM) and a linear head that predicts each hidden patch's HOG features
(:class:`mimkit.targets.HOGTarget`: per channel, 9 unsigned orientation bins, cell 8, L2-normalised per
block); MSE on hidden patches only. Block-wise masking of 40% as in the paper's image experiments;
any masking works (``masking="simmim"``, ``"random"``, ``"center"``, ...).
"""
from __future__ import annotations

import torch
from timm.layers import trunc_normal_
from torch import nn

from ..base import MIMModel, MIMOutput
from ..encoders.vit import ViTEncoder
from ..losses import masked_mse
from ..masking import check_ratio, masking_for
from ..registry import register_builder, register_recipe
from ..targets import HOGTarget


class MaskFeat(MIMModel):
    """Args:
        img_size, patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio, qkv_bias, norm_eps, pos_embed,
            drop_path_rate, init_values: the encoder (:class:`~mimkit.encoders.vit.ViTEncoder` with a mask token).
        mask_ratio, mask_patch_size, masking, masking_kwargs: the masking.
        hog_bins, hog_cell, hog_block, hog_gaussian_window: the HOG target (see :class:`~mimkit.targets.HOGTarget`).

    ``forward(images (N, C, H, W), noise=None, mask=None | (N, L))`` -> ``MIMOutput`` with ``pred``
    (N, L, (p/cell)^2 * C * bins), the predicted HOG features of every patch.
    """

    method = "maskfeat"

    def __init__(self, img_size: int | tuple[int, int] = 224, patch_size: int = 16, in_chans: int = 3,
                 embed_dim: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, norm_eps: float = 1e-6, pos_embed: str = "learned", drop_path_rate: float = 0.0,
                 init_values: float | None = None, mask_ratio: float = 0.4, mask_patch_size: int = 32,
                 masking: str = "block", masking_kwargs: dict | None = None, hog_bins: int = 9, hog_cell: int = 8,
                 hog_block: int = 1, hog_gaussian_window: int = 0):
        super().__init__(img_size, patch_size, in_chans)
        self.mask_ratio = check_ratio(mask_ratio)
        self.target = "hog"
        self.encoder = ViTEncoder(img_size, patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio,
                                  qkv_bias=qkv_bias, norm_eps=norm_eps, pos_embed=pos_embed, use_mask_token=True,
                                  drop_path_rate=drop_path_rate, init_values=init_values)
        self.masking = masking_for(masking, mask_ratio, patch_size, self.encoder.grid_size, masking_kwargs,
                                   mask_patch_size)
        self.hog = HOGTarget(in_chans, hog_bins, hog_cell, hog_block, hog_gaussian_window)
        self.hog.check(self.img_size, patch_size)
        self.head = nn.Linear(embed_dim, self.hog.dim(patch_size))
        trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, images: torch.Tensor, noise: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                output_attentions: bool = False) -> MIMOutput:
        self.check_input(images)
        hidden = self.masks(images, noise, mask).mask
        enc = self.encoder(images, mask=hidden, output_attentions=output_attentions)
        pred = self.head(enc.last_hidden_state[:, 1:])
        loss = masked_mse(pred, self.hog(images, self.patch_size), hidden.to(pred.dtype))
        extra = {"attentions": enc.attentions} if output_attentions else {}
        return MIMOutput(loss=loss, pred=pred, mask=hidden.float(), extra=extra)


register_builder("maskfeat", MaskFeat)

register_recipe(
    "maskfeat_vit_base_patch16", MaskFeat,
    "MaskFeat ViT-B/16, 224 px: block-wise mask 0.4, linear head on HOG (9 bins, cell 8: 108 features "
    "per patch), MSE on hidden patches",
    img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12, drop_path_rate=0.1,
    mask_ratio=0.4, masking="block", hog_bins=9, hog_cell=8,
)
register_recipe(
    "maskfeat_vit_tiny_patch4_28", MaskFeat,
    "MaskFeat on a tiny ViT for 28x28 grayscale (Fashion-MNIST) on CPU: HOG cell 4 = one cell per 4-px "
    "patch (cell 8 does not fit a 4-px patch), 9 bins; block-wise mask 0.4 with blocks of >= 4 patches",
    img_size=28, patch_size=4, in_chans=1, embed_dim=128, depth=6, num_heads=4,
    mask_ratio=0.4, masking="block", masking_kwargs={"min_num_patches": 4}, hog_bins=9, hog_cell=4,
)
