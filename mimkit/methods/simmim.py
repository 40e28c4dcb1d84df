"""SimMIM (Xie et al. 2021) with a ViT: all tokens enter the encoder, hidden ones replaced by a mask
token (before cls and positions); a 1x1 conv + PixelShuffle head predicts raw pixels; L1 on hidden
pixels only, ``sum(|x - x'| * m) / (sum(m) + 1e-5) / C``. Matches ``transformers``
``ViTForMaskedImageModeling``. The Swin variant is :mod:`mimkit.methods.simmim_swin`.

Masking: SimMIM's random cells of ``mask_patch_size`` px by default; any strategy works
(``masking="random"``, ``"block"``, ``"center"``; extra options in ``masking_kwargs``).
``target="hog"`` (MaskFeat's target with SimMIM's defaults) builds a :class:`~mimkit.methods.maskfeat.MaskFeat`.
"""
from __future__ import annotations

import inspect

import torch

from ..base import MIMModel, MIMOutput
from ..encoders.vit import ViTEncoder
from ..heads import SimMIMHead
from ..losses import masked_l1_pixels
from ..masking import check_ratio, masking_for
from ..ops import pixel_mask
from ..registry import register_builder, register_recipe

TARGETS = ("pixels", "hog")


class SimMIM(MIMModel):
    """Args:
        img_size, patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio, qkv_bias, norm_eps, pos_embed,
            drop_path_rate, init_values: the encoder (:class:`~mimkit.encoders.vit.ViTEncoder` with a mask token).
        encoder_stride: the PixelShuffle factor (default ``patch_size``); as in ``transformers`` it must equal
            ``patch_size`` whenever a mask is used (always, for pretraining).
        mask_ratio, mask_patch_size, masking, masking_kwargs: the masking.
        target: ``"pixels"``, or ``"hog"`` for MaskFeat's HOG target (then the other ``hog_*`` options apply).

    ``forward(images (N, C, H, W), noise=None, mask=None | (N, L))`` -> ``MIMOutput`` with ``pred``
    (N, L, p*p*C), the patchified reconstruction of every patch.
    """

    method = "simmim"

    def __new__(cls, *args, **kwargs):
        if cls is SimMIM and kwargs.get("target", "pixels") == "hog":  # compatibility: SimMIM(target="hog")
            from .maskfeat import MaskFeat

            bound = inspect.signature(SimMIM.__init__).bind(None, *args, **kwargs)
            bound.apply_defaults()
            opts = {k: v for k, v in list(bound.arguments.items())[1:] if k not in ("encoder_stride", "target")}
            return MaskFeat(**opts)
        return super().__new__(cls)

    def __init__(self, img_size: int | tuple[int, int] = 224, patch_size: int = 16, in_chans: int = 3,
                 embed_dim: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, norm_eps: float = 1e-6, pos_embed: str = "learned", drop_path_rate: float = 0.0,
                 init_values: float | None = None, encoder_stride: int | None = None, mask_ratio: float = 0.6,
                 mask_patch_size: int = 32, masking: str = "simmim", masking_kwargs: dict | None = None,
                 target: str = "pixels", hog_bins: int = 9, hog_cell: int = 8, hog_block: int = 1,
                 hog_gaussian_window: int = 0):
        super().__init__(img_size, patch_size, in_chans)
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
        self.mask_ratio = check_ratio(mask_ratio)
        self.target = target
        self.encoder_stride = int(encoder_stride or patch_size)
        self.encoder = ViTEncoder(img_size, patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio,
                                  qkv_bias=qkv_bias, norm_eps=norm_eps, pos_embed=pos_embed, use_mask_token=True,
                                  drop_path_rate=drop_path_rate, init_values=init_values)
        self.masking = masking_for(masking, mask_ratio, patch_size, self.encoder.grid_size, masking_kwargs,
                                   mask_patch_size)
        self.head = SimMIMHead(embed_dim, self.encoder_stride, in_chans)

    def forward(self, images: torch.Tensor, noise: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                output_attentions: bool = False) -> MIMOutput:
        self.check_input(images)
        if self.encoder_stride != self.patch_size:
            raise ValueError(
                f"with a mask, patch_size must equal encoder_stride so the reconstruction has the input's size "
                f"(as in transformers ViTForMaskedImageModeling); got patch_size={self.patch_size}, "
                f"encoder_stride={self.encoder_stride}; create the model with encoder_stride={self.patch_size}")
        grid = self.grid(images)
        hidden = self.masks(images, noise, mask).mask
        enc = self.encoder(images, mask=hidden, output_attentions=output_attentions)
        rec = self.head(enc.last_hidden_state[:, 1:], grid)
        loss = masked_l1_pixels(rec, images, pixel_mask(hidden, grid, self.patch_size))
        extra = {"attentions": enc.attentions} if output_attentions else {}
        return MIMOutput(loss=loss, pred=self.patchify(rec), mask=hidden.float(), extra=extra)

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, noise: torch.Tensor | None = None,
                    mask: torch.Tensor | None = None) -> torch.Tensor:
        """The head's predicted image (N, C, H, W), hidden and visible patches alike."""
        return self.unpatchify(self.forward(images, noise=noise, mask=mask).pred, self.grid(images))


register_builder("simmim", SimMIM)

register_recipe(
    "simmim_vit_base_patch16", SimMIM,
    "SimMIM ViT-B/16, 224 px: mask 0.6 on 32-px cells, 1x1 conv + PixelShuffle head, L1 on hidden pixels",
    img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12, drop_path_rate=0.1,
    mask_ratio=0.6, mask_patch_size=32,
)
register_recipe(
    "simmim_vit_tiny_patch4_28", SimMIM,
    "SimMIM on a tiny ViT for 28x28 grayscale (Fashion-MNIST) on CPU; mask 0.6 on 4-px cells "
    "(28 = 7x4 has no coarser cell that is a multiple of the patch)",
    img_size=28, patch_size=4, in_chans=1, embed_dim=128, depth=6, num_heads=4,
    mask_ratio=0.6, mask_patch_size=4,
)
