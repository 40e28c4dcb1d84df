"""I-JEPA (Assran et al. 2023, arXiv 2301.08243): from one context block, predict an EMA teacher's
features of several target blocks of the same image.

* **Masking** (:class:`~mimkit.masking.MultiBlockMasking`): per batch one target-block size (scale
  0.15-0.2, aspect 0.75-1.5) and one context size (scale 0.85-1, square); per image ``num_targets``
  target blocks and one context block minus all targets.
* **Context encoder**: a ViT without class token, fixed 2-D sin-cos positions added before the context
  patches are gathered (``transformers`` ``IJepaModel`` holds this encoder).
* **Predictor** (:class:`~mimkit.heads.JEPAPredictor`): a narrow ViT that reads the context and one mask
  token + position per target patch, each target block its own sequence.
* **Target** (:mod:`mimkit.teacher`): the teacher (EMA of the context encoder) on the full image, its
  final tokens layer-normalised (no affine), gathered at the target blocks.
* **Loss**: smooth L1 (beta 1), as the official code (the paper writes L2).
* **EMA**: momentum ``ema_momentum`` -> ``ema_end_momentum`` (1.0) linearly over the whole run.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..base import MIMModel, MIMOutput
from ..encoders.vit import ViTEncoder
from ..heads import JEPAPredictor
from ..masking import MultiBlockMasking, RandomMasking, check_mask
from ..ops import init_trunc_normal_, rescale_residual_branches_
from ..registry import register_builder, register_recipe
from ..teacher import EMATeacher, ijepa_targets, linear_schedule


class IJEPA(MIMModel):
    """Args:
        img_size, patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio, norm_eps, drop_path_rate:
            the context encoder (:class:`~mimkit.encoders.vit.ViTEncoder`, no class token, sin-cos positions).
        predictor_embed_dim, predictor_depth, predictor_num_heads: the predictor.
        num_targets, target_scale, target_aspect, context_scale, min_keep: the multi-block masking.
        ema_momentum, ema_end_momentum: the teacher's schedule (linear over the run).
        pos_embed: ``"sincos"`` (fixed, the reference) or ``"learned"`` (a converted table that is not sin-cos).

    ``forward(images (N, C, H, W), mask=None | (N, L))`` -> ``MIMOutput`` with ``pred`` (M, D), the
    predicted features of the M target patches, and ``mask`` (N, L), 1 = outside the context. An
    explicit ``mask`` makes its visible patches the context and its hidden ones a single target block.
    """

    method = "ijepa"
    visible_only = True
    frozen_parts = ("teacher",)

    def __init__(self, img_size: int | tuple[int, int] = 224, patch_size: int = 16, in_chans: int = 3,
                 embed_dim: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0,
                 norm_eps: float = 1e-6, drop_path_rate: float = 0.0, predictor_embed_dim: int = 384,
                 predictor_depth: int = 6, predictor_num_heads: int = 12, num_targets: int = 4,
                 target_scale: tuple[float, float] = (0.15, 0.2), target_aspect: tuple[float, float] = (0.75, 1.5),
                 context_scale: tuple[float, float] = (0.85, 1.0), min_keep: int = 10, ema_momentum: float = 0.996,
                 ema_end_momentum: float = 1.0, pos_embed: str = "sincos"):
        super().__init__(img_size, patch_size, in_chans)
        self.encoder = ViTEncoder(img_size, patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio,
                                  norm_eps=norm_eps, drop_path_rate=drop_path_rate, class_token=False,
                                  pos_embed=pos_embed)
        init_trunc_normal_(self.encoder.blocks)  # the reference's ViT init
        rescale_residual_branches_(self.encoder.blocks)
        self.masking = MultiBlockMasking(num_targets, target_scale, target_aspect, context_scale, min_keep)
        self.noise_masking = RandomMasking(0.75)  # noise= gives an MAE-style random context (inspection)
        self.predictor = JEPAPredictor(self.encoder.grid_size, embed_dim, predictor_embed_dim, predictor_depth,
                                       predictor_num_heads, mlp_ratio, norm_eps)
        self.teacher = EMATeacher(self.encoder)
        self.ema = (float(ema_momentum), float(ema_end_momentum))

    @torch.compiler.disable  # masks are drawn eagerly under torch.compile (sizes vary per batch)
    def blocks(self, images: torch.Tensor, noise=None, mask=None):
        """(context ids (N, Kc), target ids (N, B, Kt), hidden mask (N, L)) for one batch."""
        n, grid = images.shape[0], self.grid(images)
        if mask is None and noise is None:
            ctx, tgt = self.masking.sample(n, grid, device=images.device)
        else:
            m = check_mask(mask, n, grid).to(images.device) if mask is not None else self.make_mask(images, noise)
            counts = m.sum(1)
            if not bool((counts == counts[0]).all()) or not 0 < int(counts[0]) < m.shape[1]:
                raise ValueError("an explicit I-JEPA mask must hide the same number of patches (at least one, not "
                                 "all) in every image")
            order = m.float().argsort(dim=1, stable=True)
            k = m.shape[1] - int(counts[0])
            ctx, tgt = order[:, :k], order[:, None, k:]
        hidden = torch.ones(n, grid[0] * grid[1], dtype=torch.bool, device=images.device).scatter_(1, ctx, False)
        return ctx, tgt, hidden

    def forward(self, images: torch.Tensor, noise: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> MIMOutput:
        self.check_input(images)
        ctx, tgt, hidden = self.blocks(images, noise, mask)
        n, nb, kt = tgt.shape
        with torch.no_grad(), torch.autocast(images.device.type, enabled=False):
            h = ijepa_targets(self.teacher(images.float()).last_hidden_state)
            y = torch.gather(h, 1, tgt.reshape(n, nb * kt, 1).expand(-1, -1, h.shape[-1]))
        z = self.encoder(images, ids_keep=ctx).last_hidden_state
        pred = self.predictor(z, ctx, tgt, self.grid(images)).reshape(n, nb * kt, -1)
        loss = F.smooth_l1_loss(pred.float(), y, beta=1.0)
        return MIMOutput(loss=loss, pred=pred.reshape(-1, pred.shape[-1]), mask=hidden.float())

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        self.teacher.update(self.encoder, linear_schedule(step, *self.ema, total_steps))


register_builder("ijepa", IJEPA)

register_recipe(
    "ijepa_vit_base_patch16", IJEPA,
    "I-JEPA ViT-B/16, 224 px: 4 target blocks (scale 0.15-0.2), context 0.85-1, predictor 384 x 6, "
    "smooth-L1 on layer-normed EMA features, momentum 0.996 -> 1",
    img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12, predictor_embed_dim=384,
    predictor_depth=6, predictor_num_heads=12,
)
register_recipe(
    "ijepa_vit_tiny_patch4_28", IJEPA,
    "I-JEPA on a tiny ViT for 28x28 grayscale (Fashion-MNIST) on CPU",
    img_size=28, patch_size=4, in_chans=1, embed_dim=128, depth=6, num_heads=4, predictor_embed_dim=64,
    predictor_depth=2, predictor_num_heads=4, num_targets=4, min_keep=4,
)
