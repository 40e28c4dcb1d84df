"""MaskFeat (Wei et al. 2022) on images: a SimMIM-style ViT (mask token on hidden patches, all tokens
encoded) with a linear head that predicts each hidden patch's HOG features (:class:`mimkit.targets.HOGTarget`:
per channel, 9 unsigned orientation bins, cell 8, L2-normalised per block), MSE on hidden patches only.
Block-wise masking of 40% as in the paper's image experiments.

It is :class:`mimkit.methods.simmim.SimMIM` with ``target="hog"``; any masking works
(``masking="simmim"``, ``"random"``, ``"center"``, ...).
"""
from __future__ import annotations

from ..registry import register_builder, register_recipe
from .simmim import SimMIM


class MaskFeat(SimMIM):
    method = "maskfeat"

    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768, depth=12, num_heads=12,
                 mlp_ratio=4.0, qkv_bias=True, norm_eps=1e-6, pos_embed="learned", drop_path_rate=0.0,
                 init_values=None, mask_ratio=0.4, mask_patch_size=32, masking="block", masking_kwargs=None,
                 hog_bins=9, hog_cell=8, hog_block=1, hog_gaussian_window=0):
        super().__init__(img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
                         depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                         norm_eps=norm_eps, pos_embed=pos_embed, drop_path_rate=drop_path_rate,
                         init_values=init_values, mask_ratio=mask_ratio, mask_patch_size=mask_patch_size,
                         masking=masking, masking_kwargs=masking_kwargs, target="hog", hog_bins=hog_bins,
                         hog_cell=hog_cell, hog_block=hog_block, hog_gaussian_window=hog_gaussian_window)


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
