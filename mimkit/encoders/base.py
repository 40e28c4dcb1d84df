"""The masked front end shared by the ViT and BEiT encoders (lightly's ``MaskedVisionTransformer``
``preprocess`` is the model): patch embedding -> mask token on hidden patches -> absolute positions ->
visible subset -> class token (with its position) in front.

An encoder built on it holds ``patch_embed`` (timm ``PatchEmbed``), ``cls_token`` (or None),
``mask_token`` (or None), ``patch_size`` and ``pos_embed_for(grid)`` (the absolute position embedding
for a token grid, with a leading cls row when there is a class token; None without absolute
positions). Both MIM modes go through :meth:`MaskedEncoder.embed`:

* all tokens with a learnable mask token (SimMIM, BEiT, MaskFeat): ``mask`` (N, L), 1 = hidden;
* visible tokens only (MAE, data2vec 2.0, I-JEPA): ``ids_keep`` (N, K), positions added before the gather.
"""
from __future__ import annotations

import torch
from torch import nn

from ..ops import patch_grid


def apply_mask_token(x: torch.Tensor, mask: torch.Tensor, token: torch.Tensor | None) -> torch.Tensor:
    """``x * (1 - m) + token * m`` for tokens ``x`` (N, L, D) or a token map (N, h, w, D) and a mask
    with one entry per token (1 = hidden); a clear error without a mask token or for a wrong size."""
    if token is None:
        raise ValueError("this encoder has no mask token (use_mask_token=False); pass ids_keep instead")
    per_image = x[0, ..., 0].numel()
    if mask.numel() != x.shape[0] * per_image:
        raise ValueError(f"mask must have shape (batch, num_patches) = ({x.shape[0]}, {per_image}), "
                         f"got {tuple(mask.shape)}")
    w = mask.reshape(*x.shape[:-1], 1).to(x.dtype)
    return x * (1 - w) + token.to(x.dtype).reshape(*([1] * (x.ndim - 1)), -1) * w


class MaskedEncoder(nn.Module):
    """Base of :class:`~mimkit.encoders.vit.ViTEncoder` and :class:`~mimkit.encoders.beit.BEiTEncoder`."""

    patch_size: int
    cls_token: nn.Parameter | None
    mask_token: nn.Parameter | None

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens in front of the patch tokens (1 with a class token, else 0)."""
        return 0 if self.cls_token is None else 1

    def grid(self, images: torch.Tensor) -> tuple[int, int]:
        """Token grid (h, w) of ``images`` (a clear error when the patch size does not divide them)."""
        return patch_grid(images, self.patch_size)

    def pos_embed_for(self, grid: tuple[int, int]) -> torch.Tensor | None:
        return None

    def embed(self, images: torch.Tensor, mask: torch.Tensor | None = None,
              ids_keep: torch.Tensor | None = None) -> torch.Tensor:
        """Images (N, C, H, W) -> tokens (N, prefix + L or K, D), ready for the blocks."""
        grid = self.grid(images)
        x = self.patch_embed(images)
        if mask is not None:
            x = apply_mask_token(x, mask, self.mask_token)
        pos = self.pos_embed_for(grid)
        prefix = self.num_prefix_tokens
        if pos is not None:
            x = x + pos[:, prefix:]
        if ids_keep is not None:
            x = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        if not prefix:
            return x
        cls = self.cls_token if pos is None else self.cls_token + pos[:, :1]
        return torch.cat([cls.expand(x.shape[0], -1, -1), x], dim=1)
