"""iBOT (Zhou et al. 2022, arXiv 2111.07832; bytedance/ibot): masked image modeling with an online
tokenizer -- an EMA teacher's distribution over learned prototypes is the target of the masked patches, and
the same self-distillation runs on the class token across views.

* **Views** (:mod:`mimkit.data.views`): 2 global crops and ``local_crops_number`` local crops per image,
  made by the data layer from the ``multi_crop`` this model declares; ``forward(images, views)`` takes the
  first global view as ``images`` and the others as ``views``. Without ``views`` (validation, tools) the
  two global views are ``images`` itself and there are no local crops.
* **Masking** (:class:`~mimkit.masking.IBOTMasking`): each global view of each image draws its ratio from
  ``pred_ratio`` / ``pred_ratio_var`` and hides BEiT blocks; none before ``pred_start_fraction`` of the run.
* **Student**: a ViT with a learned mask token on the hidden patches (:class:`~mimkit.encoders.vit.ViTEncoder`,
  all tokens), learned positions interpolated for the local crops as the reference's
  ``interpolate_pos_encoding``; then :class:`~mimkit.heads.IBOTHead`. The head runs on the class tokens
  of every view and on the hidden patches only (the loss reads nothing else).
* **Teacher**: an EMA of the encoder and the head (momentum ``momentum_teacher`` -> 1 on a cosine over the
  run), on the unmasked global views.
* **Loss** (:class:`~mimkit.losses.IBOTLoss`): centred, sharpened teacher softmax; class token across views,
  hidden patches within a view; teacher temperatures warm up linearly.
* **Schedules** are fractions of the run (the engine passes the optimiser step and the total, possibly as
  floats): the reference's epochs over its 800 for the ImageNet recipes (30 warm-up epochs -> 30/800). The
  prototype layers get no update in the first ``freeze_last_layer_fraction`` (their gradients are dropped
  before clipping and the optimiser step, as the reference's ``cancel_gradients_last_layer``).
* **Clipping** (``clip_grad``, the reference's 3.0): each parameter's gradient norm clipped on its own, after
  the freeze, as the reference's ``clip_gradients``; None leaves it to the engine's global-norm clip
  (``trainer.gradient_clip_val``). The reference's weight decay 0.04 -> 0.4 on a cosine is the engine's
  ``optim.weight_decay_end``.
* **Evaluation**: ``eval_teacher=True`` makes the EMA teacher's encoder the one that evaluation, export and
  the tools read (:meth:`feature_encoder`), as the reference evaluates the teacher; default the student.

Differences from the reference: under FSDP ``clip_grad`` clips each process's shard of a parameter.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..base import MIMModel, MIMOutput
from ..encoders.vit import ViTEncoder
from ..heads import IBOTHead
from ..losses import IBOTLoss, warmup_temperature
from ..masking import IBOTMasking, RandomMasking
from ..ops import init_trunc_normal_
from ..registry import register_builder, register_recipe
from ..teacher import EMATeacher


def cosine_momentum(step: float, total_steps: float, start: float, end: float = 1.0) -> float:
    """The reference's momentum after optimiser step ``step`` (1-based; floats fine) of ``total_steps``:
    ``end + (start - end) * (1 + cos(pi * i / total)) / 2`` at iteration ``i = step - 1``."""
    i = min(max(float(step) - 1.0, 0.0), max(float(total_steps), 1.0))
    return float(end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * i / max(float(total_steps), 1.0))))


def interpolate_pos_embed(pos_embed: torch.Tensor, grid, new_grid) -> torch.Tensor:
    """The reference's (DINO's) ``interpolate_pos_encoding``: bicubic resampling of a learned (1, 1+h*w, D)
    table with scale factors ``(new + 0.1) / old`` (not the target size), the class row unchanged."""
    (h, w), (nh, nw) = tuple(grid), tuple(new_grid)
    if (h, w) == (nh, nw):
        return pos_embed
    d = pos_embed.shape[-1]
    table = pos_embed[:, 1:].reshape(1, h, w, d).permute(0, 3, 1, 2)
    table = F.interpolate(table, scale_factor=((nh + 0.1) / h, (nw + 0.1) / w), mode="bicubic")
    if tuple(table.shape[-2:]) != (nh, nw):
        raise ValueError(f"position interpolation gave a {tuple(table.shape[-2:])} grid, expected {(nh, nw)}")
    return torch.cat([pos_embed[:, :1], table.permute(0, 2, 3, 1).reshape(1, nh * nw, d)], dim=1)


def encode_tokens(encoder: ViTEncoder, images: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Final tokens (N, 1+L, D) of ``encoder`` on ``images`` at any size; learned positions at another grid
    are interpolated as the reference does (fixed sin-cos ones are recomputed by the encoder)."""
    grid = encoder.grid(images)
    if grid == encoder.grid_size or encoder.pos_embed_type != "learned":
        return encoder(images, mask=mask).last_hidden_state
    pos = interpolate_pos_embed(encoder.pos_embed, encoder.grid_size, grid)
    x = encoder.patch_embed(images) + pos[:, 1:]
    x = torch.cat([(encoder.cls_token + pos[:, :1]).expand(x.shape[0], -1, -1), x], dim=1)
    return encoder.forward_tokens(x).last_hidden_state


class IBOT(MIMModel):
    """Args:
        img_size, patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio, norm_eps, drop_path_rate,
            pos_embed: the student encoder (:class:`~mimkit.encoders.vit.ViTEncoder` with a mask token).
        out_dim, patch_out_dim, hidden_dim, bottleneck_dim, head_layers, norm_last_layer, shared_head: the head.
        local_crops_number, local_size, global_scale, local_scale, blur_sigma: the views the data layer makes.
        pred_ratio, pred_ratio_var, pred_shape, pred_start_fraction: the masking of the global views.
        teacher_temp, warmup_teacher_temp, teacher_patch_temp, warmup_teacher_patch_temp,
            warmup_teacher_temp_fraction, student_temp, center_momentum, lambda1, lambda2: the loss.
        momentum_teacher: the teacher's EMA momentum at the start (-> 1 on a cosine).
        freeze_last_layer_fraction: the share of the run during which the prototype layers do not train.
        clip_grad: the largest gradient norm of each parameter (None: no per-parameter clip).
        eval_teacher: evaluate and export the teacher's encoder instead of the student's.
        centering: ``"ema"`` (the reference's centres) or ``"sinkhorn"`` (DINOv2's Sinkhorn-Knopp teacher).

    ``forward(images (N, C, H, W), views=None, noise=None, mask=None)`` -> ``MIMOutput`` with ``pred`` (M, K2),
    the student's logits at the M hidden patches, and ``mask`` (2N, L): the two global views' masks, view-major.
    A caller's ``mask``/``noise`` of N rows is used for both global views (2N rows: one per view).
    """

    method = "ibot"
    frozen_parts = ("teacher", "teacher_head")
    # the loss updates its centres in place in the forward (as the reference; a compiled backward could
    # recompute the teacher's probabilities from the updated centre) and the hidden patches change in number
    # every step, so only the encoders' token passes (fixed shapes, most of the work) are compiled
    compile_training = ("encoder.forward_tokens", "teacher.encoder.forward_tokens")

    def __init__(self, img_size: int | tuple[int, int] = 224, patch_size: int = 16, in_chans: int = 3,
                 embed_dim: int = 384, depth: int = 12, num_heads: int = 6, mlp_ratio: float = 4.0,
                 norm_eps: float = 1e-6, drop_path_rate: float = 0.1, pos_embed: str = "learned",
                 out_dim: int = 8192, patch_out_dim: int | None = None, hidden_dim: int = 2048,
                 bottleneck_dim: int = 256, head_layers: int = 3, norm_last_layer: bool = True,
                 shared_head: bool = False, local_crops_number: int = 10, local_size: int = 96,
                 global_scale=(0.25, 1.0), local_scale=(0.05, 0.25), blur_sigma=(0.1, 2.0),
                 pred_ratio=(0.0, 0.3), pred_ratio_var=(0.0, 0.2), pred_shape: str = "block",
                 pred_start_fraction: float = 0.0, teacher_temp: float = 0.07, warmup_teacher_temp: float = 0.04,
                 teacher_patch_temp: float = 0.07, warmup_teacher_patch_temp: float = 0.04,
                 warmup_teacher_temp_fraction: float = 30 / 800, student_temp: float = 0.1,
                 center_momentum: float = 0.9, lambda1: float = 1.0, lambda2: float = 1.0,
                 momentum_teacher: float = 0.996, freeze_last_layer_fraction: float = 1 / 800,
                 clip_grad: float | None = None, eval_teacher: bool = False, centering: str = "ema"):
        super().__init__(img_size, patch_size, in_chans)
        if clip_grad is not None and not float(clip_grad) > 0:
            raise ValueError(f"clip_grad is the largest gradient norm of a parameter, > 0 (or None); got {clip_grad}")
        if int(local_size) % patch_size:
            raise ValueError(f"local_size {local_size} must be a multiple of the patch size {patch_size}")
        for name, value in (("pred_start_fraction", pred_start_fraction), ("freeze_last_layer_fraction",
                            freeze_last_layer_fraction), ("warmup_teacher_temp_fraction", warmup_teacher_temp_fraction)):
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{name} is a fraction of the run, between 0 and 1; got {value}")
        self.encoder = ViTEncoder(img_size, patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio,
                                  norm_eps=norm_eps, pos_embed=pos_embed, use_mask_token=True,
                                  drop_path_rate=drop_path_rate)
        self._init_like_reference(self.encoder)
        self.head = IBOTHead(embed_dim, out_dim, patch_out_dim, hidden_dim, bottleneck_dim, head_layers,
                             norm_last_layer, shared_head)
        self.teacher, self.teacher_head = EMATeacher(self.encoder), EMATeacher(self.head)
        self.criterion = IBOTLoss(out_dim, self.head.patch_out_dim, student_temp, center_momentum, center_momentum,
                                  lambda1, lambda2, centering=centering)
        self.masking = IBOTMasking(pred_ratio, pred_ratio_var, shape=pred_shape)
        top = max(self.masking.pred_ratio)  # a caller's noise hides the largest mean ratio's share
        self.noise_masking = RandomMasking(top, rounding="round") if 0 < top < 1 else None
        self.multi_crop = dict(local_size=int(local_size), local_crops_number=int(local_crops_number),
                               global_scale=tuple(global_scale), local_scale=tuple(local_scale),
                               blur_sigma=tuple(blur_sigma))
        self.temps = (float(warmup_teacher_temp), float(teacher_temp), float(warmup_teacher_patch_temp),
                      float(teacher_patch_temp), float(warmup_teacher_temp_fraction))
        self.pred_start, self.freeze_last = float(pred_start_fraction), float(freeze_last_layer_fraction)
        self.momentum_teacher = float(momentum_teacher)
        self.clip_grad, self.eval_teacher = None if clip_grad is None else float(clip_grad), bool(eval_teacher)
        # set by on_train_step before every step (a tensor and a flag: no recompiling under torch.compile)
        self.register_buffer("teacher_temps", torch.tensor(self.teacher_temperatures(0, 1)), persistent=False)
        self.masking_on = self.pred_start <= 0

    @staticmethod
    def _init_like_reference(enc: ViTEncoder) -> None:
        """The reference ViT's init: trunc-normal(0.02) linears, class token and learned positions; a
        zero mask token; the patch embedding keeps torch's default."""
        init_trunc_normal_(enc.blocks)
        enc.patch_embed.proj.reset_parameters()
        torch.nn.init.trunc_normal_(enc.cls_token, std=0.02)
        torch.nn.init.zeros_(enc.mask_token)
        if enc.pos_embed.requires_grad:
            torch.nn.init.trunc_normal_(enc.pos_embed, std=0.02)

    # ---- schedules (fractions of the run; floats accepted) -------------------------------------
    def on_train_step(self, step: float, total_steps: float) -> None:
        self.teacher_temps.copy_(torch.tensor(self.teacher_temperatures(step, total_steps)))
        self.masking_on = step >= self.pred_start * total_steps

    def teacher_temperatures(self, step: float, total_steps: float) -> tuple[float, float]:
        """(class-token, patch) teacher temperatures at optimiser step ``step`` of ``total_steps``."""
        t0, t1, p0, p1, warm = self.temps
        return (warmup_temperature(step, total_steps, t0, t1, warm),
                warmup_temperature(step, total_steps, p0, p1, warm, start_fraction=self.pred_start))

    def before_optimizer_step(self, step: float, total_steps: float) -> None:
        """Drop the prototype layers' gradients (no update, no weight decay) in the first part of the run,
        then clip each parameter's gradient norm to ``clip_grad`` (the reference's ``clip_gradients``)."""
        if step < self.freeze_last * total_steps:
            for layer in self.head.last_layers():
                for p in layer.parameters():
                    p.grad = None
        grads = [p.grad for p in self.parameters() if p.grad is not None] if self.clip_grad is not None else []
        if grads:  # each scaled by clip / (norm + 1e-6) where that is below 1; no host sync
            scales = [(self.clip_grad / (n + 1e-6)).clamp(max=1.0) for n in torch._foreach_norm(grads)]
            torch._foreach_mul_(grads, scales)

    def after_optimizer_step(self, step: float, total_steps: float) -> None:
        m = cosine_momentum(step, total_steps, self.momentum_teacher)
        self.teacher.update(self.encoder, m)
        self.teacher_head.update(self.head, m)

    def feature_encoder(self) -> ViTEncoder:
        return self.teacher.encoder if self.eval_teacher else self.encoder

    # ---- forward --------------------------------------------------------------------------------
    def view_masks(self, globals_: torch.Tensor, noise=None, mask=None) -> torch.Tensor:
        """(2N, L) bool masks of the two global views (rows view-major)."""
        n = globals_.shape[0] // 2
        if mask is None and noise is None:
            if self.training and not self.masking_on:  # before pred_start_fraction of the run
                h, w = self.grid(globals_)
                return torch.zeros(2 * n, h * w, dtype=torch.bool, device=globals_.device)
            return self.masks(globals_).mask
        noise, mask = (torch.cat([t, t]) if t is not None and t.shape[0] == n else t for t in (noise, mask))
        return self.masks(globals_, noise, mask).mask

    def forward(self, images: torch.Tensor, views=None, noise: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> MIMOutput:
        self.check_input(images)
        views = list(views) if views is not None else []
        second = views[0] if views else images
        if second.shape != images.shape:
            raise ValueError(f"the second global view must have the shape of images {tuple(images.shape)}, "
                             f"got {tuple(second.shape)}")
        g = torch.cat([images, second])
        m = self.view_masks(g, noise, mask)
        with torch.no_grad():  # the teacher: unmasked global views; patch logits at the hidden patches only
            z = self.teacher_head.encoder.project(self.teacher(g).last_hidden_state)
            t_cls = self.teacher_head.encoder.cls_logits(z[:, 0])
            t_patch = self.teacher_head.encoder.patch_logits(z[:, 1:][m])
            t_patch_mean = self.teacher_head.encoder.patch_logits(z[:, 1:].mean(1))  # the last layer is linear
        s = self.encoder(g, mask=m).last_hidden_state
        cls = [s[:, 0]]
        start = 1
        while start < len(views):  # local crops, one encoder pass per run of equal sizes (MultiCropWrapper)
            end = start + 1
            while end < len(views) and views[end].shape == views[start].shape:
                end += 1
            cls.append(encode_tokens(self.encoder, torch.cat(views[start:end]))[:, 0])
            start = end
        cls = torch.cat(cls)
        z = self.head.project(torch.cat([cls, s[:, 1:][m]]))
        s_cls, s_patch = self.head.cls_logits(z[: len(cls)]), self.head.patch_logits(z[len(cls):])
        temps = self.teacher_temps.detach().clone()
        out = self.criterion(s_cls, s_patch, t_cls, t_patch, t_patch_mean, m, temps[0], temps[1],
                             update_center=self.training)
        extra = {"cls_loss": out["cls"].detach(), "patch_loss": out["patch"].detach(),
                 "teacher_entropy": out["teacher_entropy"], "teacher_temp": temps[0]}
        return MIMOutput(loss=out["loss"], pred=s_patch, mask=m.float(), extra=extra)

    @torch.no_grad()
    def patch_cross_entropy(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(N, L): the loss's patch term at each patch ``mask`` (N, L) hides, NaN at the others -- the
        cross-entropy between the teacher's centred, sharpened softmax on the unmasked ``images`` (at the
        current patch temperature) and the student's softmax on the masked ones."""
        mask = mask.bool()
        head, t_head = self.head, self.teacher_head.encoder
        t = t_head.patch_logits(t_head.project(self.teacher(images).last_hidden_state[:, 1:][mask]))
        s = head.patch_logits(head.project(self.encoder(images, mask=mask).last_hidden_state[:, 1:][mask]))
        ce = self.criterion.patch_cross_entropy(s, t, self.teacher_temps[1])
        return torch.full(mask.shape, float("nan"), device=ce.device).masked_scatter(mask, ce.float())


register_builder("ibot", IBOT)

_REFERENCE = dict(  # the ViT-S/16 command of the reference README (arguments' defaults otherwise)
    img_size=224, patch_size=16, drop_path_rate=0.1, out_dim=8192, patch_out_dim=8192, hidden_dim=2048,
    bottleneck_dim=256, norm_last_layer=False, shared_head=True, local_crops_number=10, local_size=96,
    global_scale=(0.25, 1.0), local_scale=(0.05, 0.25), pred_ratio=(0.0, 0.3), pred_ratio_var=(0.0, 0.2),
    teacher_temp=0.07, warmup_teacher_temp=0.04, teacher_patch_temp=0.07, warmup_teacher_patch_temp=0.04,
    warmup_teacher_temp_fraction=30 / 800, momentum_teacher=0.996, freeze_last_layer_fraction=1 / 800,
    lambda1=1.0, lambda2=1.0,
)
register_recipe(
    "ibot_vit_small_patch16", IBOT,
    "iBOT ViT-S/16, 224 px (the reference README's 800-epoch command): 2 global + 10 local crops, block masks "
    "with ratio 0 or 0.1-0.5 per view, 8192 shared prototypes, teacher temperature 0.04 -> 0.07",
    embed_dim=384, depth=12, num_heads=6, **_REFERENCE,
)
register_recipe(
    "ibot_vit_base_patch16", IBOT,
    "iBOT ViT-B/16, 224 px, with the ViT-S/16 command's settings",
    embed_dim=768, depth=12, num_heads=12, **_REFERENCE,
)
register_recipe(
    "ibot_vit_tiny_patch4_28", IBOT,
    "iBOT on a tiny ViT for 28x28 grayscale (Fashion-MNIST) on CPU: 2 global + 4 local 12-px crops, "
    "2048 shared prototypes",
    img_size=28, patch_size=4, in_chans=1, embed_dim=128, depth=6, num_heads=4, drop_path_rate=0.0,
    out_dim=2048, hidden_dim=512, bottleneck_dim=128, norm_last_layer=False, shared_head=True,
    local_crops_number=4, local_size=12, global_scale=(0.25, 1.0), local_scale=(0.05, 0.25), blur_sigma=(0.1, 1.0),
    pred_ratio=(0.0, 0.3), pred_ratio_var=(0.0, 0.2), warmup_teacher_temp_fraction=0.1,
    freeze_last_layer_fraction=0.02,
)
register_recipe(
    "ibot_vit_tiny_patch7_28", IBOT,
    "iBOT on a tiny ViT for 28x28 grayscale on CPU, chosen on validation at a 6-minute budget "
    "(benchmarks/sweeps/ibot_cpu.yaml): a 4x4 grid of 7-px patches (~3x fewer tokens than patch 4), 2 global "
    "+ 4 local 14-px crops, 512 shared prototypes, teacher momentum 0.99",
    img_size=28, patch_size=7, in_chans=1, embed_dim=128, depth=6, num_heads=4, drop_path_rate=0.0,
    out_dim=512, hidden_dim=256, bottleneck_dim=128, norm_last_layer=False, shared_head=True,
    local_crops_number=4, local_size=14, global_scale=(0.25, 1.0), local_scale=(0.05, 0.25), blur_sigma=(0.1, 1.0),
    pred_ratio=(0.0, 0.3), pred_ratio_var=(0.0, 0.2), momentum_teacher=0.99, warmup_teacher_temp_fraction=0.1,
    freeze_last_layer_fraction=0.02,
)
