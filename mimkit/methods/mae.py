"""MAE (He et al. 2021): visible-only ViT encoder + transformer decoder + per-patch MSE."""
from __future__ import annotations

import torch

from ..base import MIMModel, MIMOutput
from ..encoders.vit import ViTEncoder
from ..heads import MAEDecoder
from ..losses import denormalize_patches, masked_mse, normalize_patches
from ..masking import build_masking, check_ratio, mask_to_noise, shuffle_ids
from ..registry import register_builder, register_recipe


class MAE(MIMModel):
    method = "mae"

    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768, depth=12, num_heads=12,
                 decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16, mlp_ratio=4.0,
                 norm_pix_loss=False, mask_ratio=0.75, norm_eps=1e-6, drop_path_rate=0.0,
                 masking="random", masking_kwargs=None, pos_embed="sincos"):
        super().__init__(img_size, patch_size, in_chans)
        self.mask_ratio = check_ratio(mask_ratio)
        self.norm_pix_loss = norm_pix_loss
        self.encoder = ViTEncoder(img_size, patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio,
                                  norm_eps=norm_eps, drop_path_rate=drop_path_rate, pos_embed=pos_embed)
        self.decoder = MAEDecoder(self.encoder.grid_size, embed_dim, patch_size**2 * in_chans,
                                  decoder_embed_dim, decoder_depth, decoder_num_heads, mlp_ratio, norm_eps)
        # any other strategy (block, simmim, center) feeds MAE's shuffle through mask_to_noise
        self.masking = None if masking in ("random", "mae") else build_masking(
            masking, ratio=mask_ratio, patch_size=patch_size, **(masking_kwargs or {}))

    def _ids(self, images, noise, mask):
        n, grid = images.shape[0], self.grid(images)
        L = grid[0] * grid[1]
        if mask is None and self.masking is not None and noise is None:
            mask = self.masking(n, grid, device=images.device)
        if mask is not None:
            mask = mask.reshape(n, L).to(images.device)
            noise, len_keep = mask_to_noise(mask)
        else:
            len_keep = int(L * (1 - self.mask_ratio))
            if noise is None:
                noise = torch.rand(n, L, device=images.device)
            elif noise.shape != (n, L):
                raise ValueError(f"noise must have shape (batch, num_patches) = {(n, L)}, got {tuple(noise.shape)}")
        return shuffle_ids(noise.to(images.device), len_keep)

    def forward(self, images, noise=None, mask=None, output_attentions=False) -> MIMOutput:
        self.check_input(images)
        ids_keep, ids_restore, mask = self._ids(images, noise, mask)
        enc = self.encoder(images, ids_keep=ids_keep, output_attentions=output_attentions)
        pred = self.decoder(enc.last_hidden_state, ids_restore, self.grid(images))
        target = self.patchify(images)
        if self.norm_pix_loss:
            target = normalize_patches(target)
        loss = masked_mse(pred, target, mask)
        extra = {"attentions": enc.attentions} if output_attentions else {}
        return MIMOutput(loss=loss, pred=pred, mask=mask, extra=extra)

    @torch.no_grad()
    def reconstruct(self, images, noise=None, mask=None) -> torch.Tensor:
        """Predicted images (N, C, H, W) in input space (un-normalised for ``norm_pix_loss``)."""
        out = self.forward(images, noise=noise, mask=mask)
        pred = out.pred
        if self.norm_pix_loss:
            pred = denormalize_patches(pred, self.patchify(images))
        return self.unpatchify(pred, self.grid(images))


register_builder("mae", MAE)

_SIZES = {
    "base": dict(embed_dim=768, depth=12, num_heads=12),
    "large": dict(embed_dim=1024, depth=24, num_heads=16),
    "huge": dict(embed_dim=1280, depth=32, num_heads=16),
}
for _size, _patch in (("base", 16), ("large", 16), ("huge", 14)):
    register_recipe(f"mae_vit_{_size}_patch{_patch}", MAE, f"MAE ViT-{_size[0].upper()}/{_patch}, 224 px, ImageNet recipe",
                    img_size=224, patch_size=_patch, norm_pix_loss=True, **_SIZES[_size])

register_recipe(
    "mae_vit_tiny_patch4_28", MAE, "MAE on a tiny ViT for 28x28 grayscale (Fashion-MNIST) on CPU",
    img_size=28, patch_size=4, in_chans=1, embed_dim=128, depth=6, num_heads=4,
    decoder_embed_dim=64, decoder_depth=2, decoder_num_heads=4, norm_pix_loss=False, mask_ratio=0.75,
)
