"""data2vec 2.0 (Baevski et al. 2022, arXiv 2212.07525): predict an EMA teacher's contextual features
of the hidden patches.

* **Student**: a ViT that sees the visible patches + CLS only (positions added before the gather), on
  ``num_masks`` independently masked copies of every image (``clone_batch``) that share one teacher pass.
* **Masking**: inverse block masking (:class:`~mimkit.masking.InverseBlockMasking`): visible 3x3 blocks
  grown from random centres, exactly ``int(L*(1-mask_ratio))`` visible patches per copy.
* **Decoder**: hidden slots filled with N(0, ``mask_noise_std``) noise (no mask token, no positions), the
  token grid through :class:`~mimkit.heads.ConvDecoder`.
* **Target** (:mod:`mimkit.teacher`): the teacher (an EMA of the whole student encoder, eval mode) on the
  unmasked image; the top ``top_k_layers`` blocks' feed-forward outputs, each instance-normalised, averaged,
  layer-normalised.
* **Loss**: squared error summed over channels / sqrt(D), averaged over hidden tokens; plus
  ``cls_loss_weight`` x the same error between the student's CLS output and the target's token mean
  (the reference weighs it 0.01 per sample of its 16 x 16 cloned batch per GPU: 2.56 relative to the mean).
* **EMA**: decay ``ema_decay`` -> ``ema_end_decay`` linearly over ``ema_anneal_steps`` optimiser steps
  (None: the whole run), stepped by the engine after every optimiser step.
"""
from __future__ import annotations

import math

import torch

from ..base import MIMModel, MIMOutput
from ..encoders.vit import ViTEncoder
from ..heads import ConvDecoder
from ..masking import RandomMasking, check_ratio, masking_for
from ..registry import register_builder, register_recipe
from ..teacher import EMATeacher, data2vec_targets, ffn_outputs, linear_schedule


class Data2Vec2(MIMModel):
    """Args:
        img_size, patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio, norm_eps, drop_path_rate, pos_embed:
            the student encoder (:class:`~mimkit.encoders.vit.ViTEncoder`, visible tokens only).
        mask_ratio, num_masks, masking, masking_kwargs: the masking and the masked copies per image.
        decoder_dim, decoder_layers, decoder_kernel, decoder_groups, mask_noise_std: the decoder.
        top_k_layers, cls_loss_weight: the target and the CLS loss.
        ema_decay, ema_end_decay, ema_anneal_steps: the teacher's schedule.

    ``forward(images (N, C, H, W), noise=None, mask=None)`` (per copy (N*num_masks, L), or per image (N, L)) ->
    ``MIMOutput`` with ``pred`` (M, D), the predicted targets of the M hidden tokens, and ``mask``
    (N*num_masks, L).
    """

    method = "data2vec2"
    visible_only = True
    frozen_parts = ("teacher",)

    def __init__(self, img_size: int | tuple[int, int] = 224, patch_size: int = 16, in_chans: int = 3,
                 embed_dim: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0,
                 norm_eps: float = 1e-6, drop_path_rate: float = 0.0, pos_embed: str = "sincos",
                 mask_ratio: float = 0.8, num_masks: int = 16, masking: str = "inverse_block",
                 masking_kwargs: dict | None = None, decoder_dim: int = 768, decoder_layers: int = 6,
                 decoder_kernel: int = 3, decoder_groups: int = 16, mask_noise_std: float = 0.01,
                 top_k_layers: int = 10, cls_loss_weight: float = 2.56, ema_decay: float = 0.9998,
                 ema_end_decay: float = 0.99999, ema_anneal_steps: int | None = 100_000):
        super().__init__(img_size, patch_size, in_chans)
        self.mask_ratio = check_ratio(mask_ratio)
        if num_masks < 1 or not 1 <= top_k_layers <= depth:
            raise ValueError(f"need num_masks >= 1 and 1 <= top_k_layers <= depth ({depth}); got {num_masks}, {top_k_layers}")
        self.num_masks, self.top_k_layers, self.cls_loss_weight = int(num_masks), int(top_k_layers), float(cls_loss_weight)
        self.mask_noise_std = float(mask_noise_std)
        self.ema = (float(ema_decay), float(ema_end_decay), ema_anneal_steps)
        self.encoder = ViTEncoder(img_size, patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio,
                                  norm_eps=norm_eps, drop_path_rate=drop_path_rate, pos_embed=pos_embed)
        self.masking = masking_for(masking, mask_ratio, patch_size, self.encoder.grid_size, masking_kwargs)
        self.noise_masking = RandomMasking(mask_ratio)
        self.decoder = ConvDecoder(embed_dim, decoder_dim, decoder_layers, decoder_kernel, decoder_groups)
        self.teacher = EMATeacher(self.encoder)

    @torch.no_grad()
    def targets(self, images: torch.Tensor) -> torch.Tensor:
        """The teacher's targets (N, L, D) for the unmasked images."""
        with torch.autocast(images.device.type, enabled=False):
            layers = ffn_outputs(self.teacher.encoder, images.float())
        return data2vec_targets(layers, self.top_k_layers, self.encoder.num_prefix_tokens)

    def forward(self, images: torch.Tensor, noise: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> MIMOutput:
        self.check_input(images)
        y = self.targets(images)
        copies = images.repeat_interleave(self.num_masks, 0)  # one teacher pass, num_masks student views
        # a caller's (N, L) mask or noise is used for every copy of its image
        mask, noise = (t.repeat_interleave(self.num_masks, 0) if t is not None and t.shape[0] == images.shape[0]
                       and self.num_masks > 1 else t for t in (mask, noise))
        m = self.masks(copies, noise, mask)
        x = self.encoder(copies, ids_keep=m.ids_keep).last_hidden_state
        n, L = m.ids_restore.shape
        fill = x.new_empty(n, L - m.ids_keep.shape[1], x.shape[-1]).normal_(0, self.mask_noise_std)
        tokens = torch.cat([x[:, 1:], fill], dim=1)
        tokens = torch.gather(tokens, 1, m.ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        pred = self.decoder(tokens, self.grid(images))[m.mask]
        y = y.repeat_interleave(self.num_masks, 0)
        scale = 1.0 / math.sqrt(x.shape[-1])
        loss = ((pred.float() - y[m.mask]) ** 2).sum(-1).mean() * scale
        cls_loss = ((x[:, 0].float() - y.mean(1)) ** 2).sum(-1).mean() * scale
        total = loss + self.cls_loss_weight * cls_loss
        return MIMOutput(loss=total, pred=pred, mask=m.mask.float(),
                         extra={"token_loss": loss.detach(), "cls_loss": cls_loss.detach()})

    def ema_decay_at(self, step: int, total_steps: int) -> float:
        start, end, steps = self.ema
        return linear_schedule(step, start, end, total_steps if steps is None else int(steps))

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        self.teacher.update(self.encoder, self.ema_decay_at(step, total_steps))


register_builder("data2vec2", Data2Vec2)

register_recipe(
    "data2vec2_vit_base_patch16", Data2Vec2,
    "data2vec 2.0 ViT-B/16, 224 px: inverse block mask 0.8, 16 masks per image, 6-layer conv decoder, "
    "targets = mean of the top 10 teacher blocks, EMA 0.9998 -> 0.99999 over 100k steps",
    img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12, mask_ratio=0.8, num_masks=16,
    decoder_dim=768, decoder_layers=6, top_k_layers=10,
)
register_recipe(
    "data2vec2_vit_tiny_patch4_28", Data2Vec2,
    "data2vec 2.0 on a tiny ViT for 28x28 grayscale (Fashion-MNIST) on CPU",
    img_size=28, patch_size=4, in_chans=1, embed_dim=128, depth=6, num_heads=4, mask_ratio=0.65, num_masks=4,
    decoder_dim=128, decoder_layers=3, top_k_layers=6, ema_decay=0.996, ema_end_decay=0.9999, ema_anneal_steps=None,
)
