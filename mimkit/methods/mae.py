"""MAE (He et al. 2021): visible-only ViT encoder + transformer decoder + per-patch MSE.

Masking is MAE's per-sample shuffle: the ``int(L*(1-mask_ratio))`` patches with the smallest noise
stay visible, exactly as the reference and ``transformers`` ViTMAE (``noise`` always means that, as
there); any other strategy (``masking="block"``, ``"simmim"``, ``"center"``) or an explicit ``mask``
goes through the same shuffle (:func:`mimkit.masking.make_masks`). The loss is the MSE of each hidden
patch averaged over the patch, then over hidden patches; with ``norm_pix_loss`` the target patch is
normalised by its own mean and (unbiased) variance.
"""
from __future__ import annotations

import torch

from ..base import MIMModel, MIMOutput
from ..encoders.vit import ViTEncoder
from ..heads import MAEDecoder
from ..losses import denormalize_patches, masked_mse, normalize_patches
from ..masking import RandomMasking, check_ratio, masking_for
from ..registry import register_builder, register_recipe


class MAE(MIMModel):
    """Args:
        img_size, patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio, norm_eps, drop_path_rate,
            pos_embed: the encoder (:class:`~mimkit.encoders.vit.ViTEncoder`, visible tokens only).
        decoder_embed_dim, decoder_depth, decoder_num_heads: the MAE decoder.
        norm_pix_loss: predict per-patch normalised pixels.
        mask_ratio: share of hidden patches.
        masking, masking_kwargs: the masking strategy (``"random"`` = MAE's shuffle) and its options.

    ``forward(images (N, C, H, W), noise=None | (N, L), mask=None | (N, L))`` -> ``MIMOutput`` with
    ``pred`` (N, L, p*p*C) and ``mask`` (N, L), 1 = hidden.
    """

    method = "mae"
    visible_only = True

    def __init__(self, img_size: int | tuple[int, int] = 224, patch_size: int = 16, in_chans: int = 3,
                 embed_dim: int = 768, depth: int = 12, num_heads: int = 12, decoder_embed_dim: int = 512,
                 decoder_depth: int = 8, decoder_num_heads: int = 16, mlp_ratio: float = 4.0,
                 norm_pix_loss: bool = False, mask_ratio: float = 0.75, norm_eps: float = 1e-6,
                 drop_path_rate: float = 0.0, masking: str = "random", masking_kwargs: dict | None = None,
                 pos_embed: str = "sincos"):
        super().__init__(img_size, patch_size, in_chans)
        self.mask_ratio = check_ratio(mask_ratio)
        self.norm_pix_loss = norm_pix_loss
        self.encoder = ViTEncoder(img_size, patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio,
                                  norm_eps=norm_eps, drop_path_rate=drop_path_rate, pos_embed=pos_embed)
        self.decoder = MAEDecoder(self.encoder.grid_size, embed_dim, patch_size**2 * in_chans,
                                  decoder_embed_dim, decoder_depth, decoder_num_heads, mlp_ratio, norm_eps)
        self.noise_masking = RandomMasking(mask_ratio)
        self.masking = self.noise_masking if masking in ("random", "mae") else masking_for(
            masking, mask_ratio, patch_size, self.encoder.grid_size, masking_kwargs)

    def forward(self, images: torch.Tensor, noise: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                output_attentions: bool = False) -> MIMOutput:
        self.check_input(images)
        m = self.masks(images, noise, mask)
        enc = self.encoder(images, ids_keep=m.ids_keep, output_attentions=output_attentions)
        pred = self.decoder(enc.last_hidden_state, m.ids_restore, self.grid(images))
        target = self.patchify(images)
        if self.norm_pix_loss:
            target = normalize_patches(target)
        hidden = m.mask.float()
        loss = masked_mse(pred, target, hidden)
        extra = {"attentions": enc.attentions} if output_attentions else {}
        return MIMOutput(loss=loss, pred=pred, mask=hidden, extra=extra)

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, noise: torch.Tensor | None = None,
                    mask: torch.Tensor | None = None) -> torch.Tensor:
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
