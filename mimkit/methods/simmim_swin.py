"""SimMIM (Xie et al. 2021) with a Swin encoder: the mask token replaces hidden patch embeddings on
the Swin patch grid (patch 4); the 1x1 conv + PixelShuffle head works on the last stage (stride
``patch_size * 2^(stages-1)``, 32 for 4 stages); L1 on hidden pixels. Matches ``transformers``
``SwinForMaskedImageModeling``."""
from __future__ import annotations

import torch

from ..base import MIMModel, MIMOutput
from ..encoders.swin import SwinEncoder
from ..heads import SimMIMHead
from ..losses import masked_l1_pixels
from ..masking import check_ratio, masking_for
from ..ops import pixel_mask
from ..registry import register_builder, register_recipe


class SimMIMSwin(MIMModel):
    """Args:
        img_size, patch_size, in_chans, embed_dim, depths, num_heads, window_size, mlp_ratio, qkv_bias, norm_eps,
            ape, drop_path_rate: the encoder (:class:`~mimkit.encoders.swin.SwinEncoder` with a mask token).
        mask_ratio, mask_patch_size, masking, masking_kwargs: the masking, on the patch-4 grid.

    ``forward(images (N, C, H, W), noise=None, mask=None | (N, L))`` -> ``MIMOutput`` with ``pred``
    (N, L, p*p*C) on the patch grid.
    """

    method = "simmim_swin"

    def __init__(self, img_size: int | tuple[int, int] = 192, patch_size: int = 4, in_chans: int = 3,
                 embed_dim: int = 128, depths: tuple[int, ...] = (2, 2, 18, 2),
                 num_heads: tuple[int, ...] = (4, 8, 16, 32), window_size: int = 6, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, norm_eps: float = 1e-5, ape: bool = False, drop_path_rate: float = 0.0,
                 mask_ratio: float = 0.6, mask_patch_size: int = 32, masking: str = "simmim",
                 masking_kwargs: dict | None = None):
        super().__init__(img_size, patch_size, in_chans)
        self.mask_ratio = check_ratio(mask_ratio)
        self.encoder = SwinEncoder(img_size, patch_size, in_chans, embed_dim, depths, num_heads, window_size,
                                   mlp_ratio, qkv_bias, norm_eps, ape, use_mask_token=True,
                                   drop_path_rate=drop_path_rate)
        self.encoder_stride = self.encoder.stride
        self.masking = masking_for(masking, mask_ratio, patch_size, self.encoder.grid_size, masking_kwargs,
                                   mask_patch_size)
        self.head = SimMIMHead(self.encoder.num_features, self.encoder_stride, in_chans)

    def forward(self, images: torch.Tensor, noise: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> MIMOutput:
        self.check_input(images)
        self.encoder.check_images(images)
        grid = self.grid(images)
        hidden = self.masks(images, noise, mask).mask
        tokens = self.encoder(images, mask=hidden).last_hidden_state
        rec = self.head(tokens, self.encoder.out_grid(images))
        loss = masked_l1_pixels(rec, images, pixel_mask(hidden, grid, self.patch_size))
        return MIMOutput(loss=loss, pred=self.patchify(rec), mask=hidden.float())

    @torch.no_grad()
    def encode(self, images: torch.Tensor, **kwargs) -> torch.Tensor:
        """(N, 1+L', D): Swin has no cls token, so the average of the last-stage tokens (timm's Swin
        classifier input) takes its place in front of the L' = (H/stride)*(W/stride) tokens."""
        tokens = self.encoder(images, **kwargs).last_hidden_state
        return torch.cat([tokens.mean(1, keepdim=True), tokens], dim=1)

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, noise: torch.Tensor | None = None,
                    mask: torch.Tensor | None = None) -> torch.Tensor:
        """The head's predicted image (N, C, H, W)."""
        return self.unpatchify(self.forward(images, noise=noise, mask=mask).pred, self.grid(images))


register_builder("simmim_swin", SimMIMSwin)

register_recipe(
    "simmim_swin_base_window6_192", SimMIMSwin,
    "SimMIM Swin-B (window 6), 192 px: mask 0.6 on 32-px cells at the patch-4 grid, head on stride 32",
    img_size=192, patch_size=4, embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=6,
    mask_ratio=0.6, mask_patch_size=32,
)
register_recipe(
    "simmim_swin_tiny_window4_32", SimMIMSwin,
    "SimMIM on a tiny 2-stage Swin (window 4, stride 8) for grayscale images resized to 32x32 "
    "(Fashion-MNIST) on CPU; mask 0.6 on 8-px cells",
    img_size=32, patch_size=4, in_chans=1, embed_dim=48, depths=(2, 4), num_heads=(3, 6), window_size=4,
    mask_ratio=0.6, mask_patch_size=8,
)
