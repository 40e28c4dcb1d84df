"""SimMIM (Xie et al. 2021): all tokens enter the encoder, hidden ones replaced by a mask token; a
1x1 conv + PixelShuffle head predicts raw pixels; L1 on hidden pixels only.

Two encoders: :class:`SimMIM` (ViT, matches ``transformers`` ``ViTForMaskedImageModeling``) and
:class:`SimMIMSwin` (timm Swin, matches ``SwinForMaskedImageModeling``). Every axis is an option:
``masking`` ("simmim", "random", "block", "center"; extra options in ``masking_kwargs``) and, for the
ViT, ``target`` ("pixels": conv + PixelShuffle head and L1, or "hog": MaskFeat's linear head on HOG
features and MSE, see :mod:`mimkit.methods.maskfeat`).
"""
from __future__ import annotations

import torch
from torch import nn

from ..base import MIMModel, MIMOutput
from ..encoders.swin import SwinEncoder
from ..encoders.vit import ViTEncoder
from ..heads import SimMIMHead
from ..losses import masked_l1_pixels, masked_mse
from ..masking import build_masking, check_ratio
from ..registry import register_builder, register_recipe
from ..targets import HOGTarget

TARGETS = ("pixels", "hog")


def _build_masking(masking, mask_ratio, mask_patch_size, patch_size, masking_kwargs, grid):
    kw = dict(masking_kwargs or {})
    if masking == "simmim":
        kw.setdefault("mask_patch_size", mask_patch_size)
    try:
        gen = build_masking(masking, ratio=mask_ratio, patch_size=patch_size, **kw)
    except ValueError as e:
        if masking_kwargs and "bad options" in str(e):
            raise ValueError(f"{e}; masking_kwargs={masking_kwargs} do not fit masking={masking!r} (a recipe may set "
                             f"them for its own masking): pass masking_kwargs=None or options for {masking!r}") from None
        raise
    gen.check_grid(grid)
    return gen


class _MaskedMixin:
    """Mask resolution shared by the SimMIM-style methods: explicit mask > noise > generator."""

    def resolve_mask(self, images, noise=None, mask=None, grid=None) -> torch.Tensor:
        n = images.shape[0]
        grid = grid or self.grid(images)
        L = grid[0] * grid[1]
        if mask is not None:
            mask = torch.as_tensor(mask, device=images.device)
            if mask.numel() != n * L:
                raise ValueError(f"mask must have shape (batch, num_patches) = ({n}, {L}) (a {grid[0]}x{grid[1]} "
                                 f"patch grid), got {tuple(mask.shape)}")
            return mask.reshape(n, L).bool()
        if noise is not None:
            if not hasattr(self.masking, "from_noise"):
                raise ValueError(f"noise only drives 'random' and 'simmim' masking, not {self.masking!r}; "
                                 f"pass mask= instead")
            if noise.ndim != 2 or noise.shape[0] != n:
                raise ValueError(f"noise must have shape (batch, ...) with batch {n}, got {tuple(noise.shape)}")
            return self.masking.from_noise(noise.to(images.device), grid)
        return self.masking(n, grid, device=images.device)

    def pixel_mask(self, mask: torch.Tensor, grid, p: int) -> torch.Tensor:
        """(N, L) patch mask -> (N, 1, H, W) pixel mask (repeat_interleave by the patch size)."""
        m = mask.reshape(-1, grid[0], grid[1])
        return m.repeat_interleave(p, 1).repeat_interleave(p, 2).unsqueeze(1).contiguous()


class SimMIM(_MaskedMixin, MIMModel):
    """SimMIM with a ViT encoder (learned absolute positions, mask token before cls and positions).

    ``encoder_stride`` (default: ``patch_size``) is the PixelShuffle factor; as in ``transformers`` it
    must equal ``patch_size`` whenever a mask is used (always, for pretraining)."""

    method = "simmim"

    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768, depth=12, num_heads=12,
                 mlp_ratio=4.0, qkv_bias=True, norm_eps=1e-6, pos_embed="learned", drop_path_rate=0.0,
                 init_values=None, encoder_stride=None, mask_ratio=0.6, mask_patch_size=32, masking="simmim",
                 masking_kwargs=None, target="pixels", hog_bins=9, hog_cell=8, hog_block=1,
                 hog_gaussian_window=0):
        super().__init__(img_size, patch_size, in_chans)
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
        self.mask_ratio = check_ratio(mask_ratio)
        self.target = target
        self.encoder_stride = int(encoder_stride or patch_size)
        self.encoder = ViTEncoder(img_size, patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio,
                                  qkv_bias=qkv_bias, norm_eps=norm_eps, pos_embed=pos_embed, use_mask_token=True,
                                  drop_path_rate=drop_path_rate, init_values=init_values)
        self.masking = _build_masking(masking, mask_ratio, mask_patch_size, patch_size, masking_kwargs,
                                      self.encoder.grid_size)
        if target == "pixels":
            self.hog = None
            self.head = SimMIMHead(embed_dim, self.encoder_stride, in_chans)
        else:
            self.hog = HOGTarget(in_chans, hog_bins, hog_cell, hog_block, hog_gaussian_window)
            self.hog.check(self.img_size, patch_size)
            self.head = nn.Linear(embed_dim, self.hog.dim(patch_size))
        self._init_head()

    def _init_head(self):
        # SimMIM reference init for the head: trunc-normal(0.02) weights, zero bias
        from timm.layers import trunc_normal_

        w = self.head.conv.weight if isinstance(self.head, SimMIMHead) else self.head.weight
        b = self.head.conv.bias if isinstance(self.head, SimMIMHead) else self.head.bias
        trunc_normal_(w, std=0.02)
        nn.init.zeros_(b)

    def _check_stride(self):
        if self.encoder_stride != self.patch_size:
            raise ValueError(
                f"with a mask, patch_size must equal encoder_stride so the reconstruction has the input's size "
                f"(as in transformers ViTForMaskedImageModeling); got patch_size={self.patch_size}, "
                f"encoder_stride={self.encoder_stride}; create the model with encoder_stride={self.patch_size}"
            )

    def forward(self, images, noise=None, mask=None, output_attentions=False) -> MIMOutput:
        self.check_input(images)
        grid = self.grid(images)
        mask = self.resolve_mask(images, noise, mask, grid)
        enc = self.encoder(images, mask=mask, output_attentions=output_attentions)
        tokens = enc.last_hidden_state[:, 1:]
        extra = {"attentions": enc.attentions} if output_attentions else {}
        if self.target == "pixels":
            self._check_stride()
            rec = self.head(tokens, grid)
            loss = masked_l1_pixels(rec, images, self.pixel_mask(mask, grid, self.patch_size))
            pred = self.patchify(rec)
        else:
            pred = self.head(tokens)
            loss = masked_mse(pred, self.hog(images, self.patch_size), mask.to(pred.dtype))
        return MIMOutput(loss=loss, pred=pred, mask=mask.float(), extra=extra)

    @property
    def reconstruct(self):
        """``reconstruct(images, noise=None, mask=None)``: the head's predicted image (N, C, H, W), hidden
        and visible patches alike. Only pixel-target models have it (``hasattr(model, "reconstruct")`` is
        False for HOG targets, which predict features, not images)."""
        if self.target != "pixels":
            raise AttributeError("reconstruct")
        return self._reconstruct

    @torch.no_grad()
    def _reconstruct(self, images, noise=None, mask=None) -> torch.Tensor:
        out = self.forward(images, noise=noise, mask=mask)
        return self.unpatchify(out.pred, self.grid(images))


class SimMIMSwin(_MaskedMixin, MIMModel):
    """SimMIM with a Swin encoder: mask token on the Swin patch grid (patch 4), head on the last stage
    (stride ``patch_size * 2^(stages-1)``, 32 for 4 stages), L1 on hidden pixels."""

    method = "simmim_swin"

    def __init__(self, img_size=192, patch_size=4, in_chans=3, embed_dim=128, depths=(2, 2, 18, 2),
                 num_heads=(4, 8, 16, 32), window_size=6, mlp_ratio=4.0, qkv_bias=True, norm_eps=1e-5, ape=False,
                 drop_path_rate=0.0, mask_ratio=0.6, mask_patch_size=32, masking="simmim", masking_kwargs=None):
        super().__init__(img_size, patch_size, in_chans)
        self.mask_ratio = check_ratio(mask_ratio)
        self.target = "pixels"
        self.encoder = SwinEncoder(img_size, patch_size, in_chans, embed_dim, depths, num_heads, window_size,
                                   mlp_ratio, qkv_bias, norm_eps, ape, use_mask_token=True,
                                   drop_path_rate=drop_path_rate)
        self.encoder_stride = self.encoder.stride
        self.masking = _build_masking(masking, mask_ratio, mask_patch_size, patch_size, masking_kwargs,
                                      self.encoder.grid_size)
        self.head = SimMIMHead(self.encoder.num_features, self.encoder_stride, in_chans)
        from timm.layers import trunc_normal_

        trunc_normal_(self.head.conv.weight, std=0.02)
        nn.init.zeros_(self.head.conv.bias)

    def forward(self, images, noise=None, mask=None) -> MIMOutput:
        self.check_input(images)
        self.encoder.check_images(images)
        grid = self.grid(images)
        mask = self.resolve_mask(images, noise, mask, grid)
        tokens = self.encoder(images, mask=mask).last_hidden_state
        rec = self.head(tokens, self.encoder.out_grid(images))
        loss = masked_l1_pixels(rec, images, self.pixel_mask(mask, grid, self.patch_size))
        return MIMOutput(loss=loss, pred=self.patchify(rec), mask=mask.float())

    @torch.no_grad()
    def encode(self, images: torch.Tensor, **kwargs) -> torch.Tensor:
        """(N, 1+L', D): Swin has no cls token, so the average of the last-stage tokens (timm's Swin
        classifier input) takes its place in front of the L' = (H/stride)*(W/stride) tokens."""
        tokens = self.encoder(images, **kwargs).last_hidden_state
        return torch.cat([tokens.mean(1, keepdim=True), tokens], dim=1)

    @torch.no_grad()
    def reconstruct(self, images, noise=None, mask=None) -> torch.Tensor:
        out = self.forward(images, noise=noise, mask=mask)
        return self.unpatchify(out.pred, self.grid(images))


register_builder("simmim", SimMIM)
register_builder("simmim_swin", SimMIMSwin)

register_recipe(
    "simmim_vit_base_patch16", SimMIM,
    "SimMIM ViT-B/16, 224 px: mask 0.6 on 32-px cells, 1x1 conv + PixelShuffle head, L1 on hidden pixels",
    img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12, drop_path_rate=0.1,
    mask_ratio=0.6, mask_patch_size=32,
)
register_recipe(
    "simmim_swin_base_window6_192", SimMIMSwin,
    "SimMIM Swin-B (window 6), 192 px: mask 0.6 on 32-px cells at the patch-4 grid, head on stride 32",
    img_size=192, patch_size=4, embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=6,
    mask_ratio=0.6, mask_patch_size=32,
)
register_recipe(
    "simmim_vit_tiny_patch4_28", SimMIM,
    "SimMIM on a tiny ViT for 28x28 grayscale (Fashion-MNIST) on CPU; mask 0.6 on 4-px cells "
    "(28 = 7x4 has no coarser cell that is a multiple of the patch)",
    img_size=28, patch_size=4, in_chans=1, embed_dim=128, depth=6, num_heads=4,
    mask_ratio=0.6, mask_patch_size=4,
)
register_recipe(
    "simmim_swin_tiny_window4_32", SimMIMSwin,
    "SimMIM on a tiny 2-stage Swin (window 4, stride 8) for grayscale images resized to 32x32 "
    "(Fashion-MNIST) on CPU; mask 0.6 on 8-px cells",
    img_size=32, patch_size=4, in_chans=1, embed_dim=48, depths=(2, 4), num_heads=(3, 6), window_size=4,
    mask_ratio=0.6, mask_patch_size=8,
)
