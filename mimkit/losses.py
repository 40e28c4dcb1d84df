"""Pixel-target helpers and losses. Every method computes its loss on hidden positions only: the
masked losses here take the mask (1 = hidden); :func:`masked_cross_entropy` and the teacher losses
receive the hidden positions already selected by the method. :class:`IBOTLoss` is iBOT's
self-distillation (class token across views, hidden patches within a view) with its centres."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def normalize_patches(target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """MAE ``norm_pix_loss`` target: each patch minus its mean over its own unbiased std."""
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    return (target - mean) / (var + eps) ** 0.5


def denormalize_patches(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Undo :func:`normalize_patches` on ``pred`` with the statistics of the true ``target`` patches."""
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    return pred * (var + eps) ** 0.5 + mean


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-patch MSE averaged over the patch, then over hidden patches (mask 1 = hidden)."""
    loss = ((pred.float() - target.float()) ** 2).mean(dim=-1)
    return (loss * mask).sum() / mask.sum()


def masked_l1_pixels(pred_img: torch.Tensor, img: torch.Tensor, pixel_mask: torch.Tensor) -> torch.Tensor:
    """SimMIM: ``sum(|x - x'| * m) / (sum(m) + 1e-5) / C`` with a per-pixel mask (N, 1, H, W)."""
    rec = F.l1_loss(img.float(), pred_img.float(), reduction="none")
    return (rec * pixel_mask).sum() / (pixel_mask.sum() + 1e-5) / img.shape[1]


def masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits (M, K) against ids (M,); the caller passes the M hidden positions
    only (BEiT selects them with its mask before the head)."""
    return F.cross_entropy(logits.float(), labels)


# ---- iBOT: self-distillation of the class token across views and of the hidden patches within a view ----
def _full(x: torch.Tensor) -> torch.Tensor:
    """Half-precision logits in float32 (softmax at temperature 0.04 needs it); float32/64 kept."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def warmup_temperature(step: float, total_steps: float, start: float, end: float, warmup_fraction: float,
                       start_fraction: float = 0.0) -> float:
    """iBOT's teacher temperature at optimiser step ``step`` (a float is fine) of ``total_steps``: ``start``
    until ``start_fraction`` of the run, then linear to ``end`` over the next ``warmup_fraction`` of it, then
    ``end``. The reference counts in epochs (``np.linspace`` over ``warmup_teacher_temp_epochs``, the patch
    temperature's warm-up starting at ``pred_start_epoch``); here they are fractions of the run."""
    total = max(float(total_steps), 1.0)
    begin, span = float(start_fraction) * total, float(warmup_fraction) * total
    if step < begin:
        return float(start)
    if span <= 0 or step - begin >= span:
        return float(end)
    return float(start + (end - start) * (step - begin) / span)


def _logsumexp_over_rows(x: torch.Tensor, dist: bool) -> torch.Tensor:
    """(1, K) log of the column sums of ``exp(x)`` (R, K) over the rows of every process."""
    if not dist:
        return torch.logsumexp(x, dim=0, keepdim=True)
    top = x.amax(dim=0, keepdim=True)
    torch.distributed.all_reduce(top, op=torch.distributed.ReduceOp.MAX)
    total = torch.exp(x - top).sum(dim=0, keepdim=True)
    torch.distributed.all_reduce(total)
    return top + total.log()


@torch.no_grad()
@torch.compiler.disable  # collectives, eagerly under torch.compile
def sinkhorn_knopp(logits: torch.Tensor, temp, iterations: int = 3) -> torch.Tensor:
    """DINOv2's ``sinkhorn_knopp_teacher``: ``exp(logits / temp)`` (R, K) normalised ``iterations`` times to
    equal mass per prototype (columns) and per row, over the rows of every process when ``torch.distributed``
    is initialised; returns (R, K) rows that sum to 1. Computed on logarithms (the same numbers
    where DINOv2's exponentials neither overflow nor vanish, and closer to exact: a few 1e-7 in float32 where
    DINOv2's float32 arithmetic is 1e-4 off), in at least float32, returned in the logits' dtype."""
    x = logits.to(torch.promote_types(logits.dtype, torch.float32)) / temp
    if x.shape[0] == 0:
        return x.to(logits.dtype)
    dist = torch.distributed.is_available() and torch.distributed.is_initialized()
    k = x.shape[1]
    # the first normalisation (by the total) is a constant shift that the per-prototype one removes
    for _ in range(int(iterations)):
        x = x - _logsumexp_over_rows(x, dist) - math.log(k)  # each prototype: mass 1 / K
        x = x - torch.logsumexp(x, dim=1, keepdim=True)  # each row: mass 1 (DINOv2's 1 / B, times B)
    if int(iterations) < 1:
        x = x - torch.logsumexp(x, dim=1, keepdim=True)
    return torch.exp(x).to(logits.dtype)


class IBOTLoss(nn.Module):
    """iBOT's loss (bytedance/ibot ``main_ibot.py``, ``iBOTLoss``) with its two centres as buffers.

    * class token: teacher probabilities ``softmax((t - center) / teacher_temp)`` of each global view ``q``
      against the student's ``log_softmax(s / student_temp)`` of every view ``v != q`` (global and local),
      cross-entropy averaged over the batch, then over the ``G * V - G`` pairs;
    * patches: on the hidden patches of each global view, the same cross-entropy against the teacher's
      ``softmax((t - center2) / teacher_patch_temp)`` of the *same* view; summed per view and image, divided
      by its count of hidden patches (at least 1), averaged over the batch, then over the ``G`` views;
    * total ``lambda1 * cls + lambda2 * patch``;
    * after the loss, the centres move to ``m * c + (1 - m) * batch mean`` of the teacher's class-token
      logits and of its patch logits averaged over the tokens of each view; the batch sum is
      all-reduced over the processes when ``torch.distributed`` is initialised (as the reference).

    ``forward`` takes the hidden patches only (the student's prediction is computed nowhere else):

    * ``student_cls`` (V*B, K): class-token logits of every view, view-major, the G global views first;
    * ``student_patch``, ``teacher_patch`` (M, K2): logits at the hidden patches, in the row-major order
      of ``mask`` (what ``tokens[mask]`` gives);
    * ``teacher_cls`` (G*B, K); ``teacher_patch_mean`` (G*B, K2): the teacher's patch logits averaged over
      all patches of each view (with a bias-free last layer, the last layer of the averaged bottleneck);
    * ``mask`` (G*B, L) bool, True = hidden.

    Returns ``{"loss", "cls", "patch", "teacher_entropy"}`` (the last detached: the entropy of the
    teacher's class-token distribution, a collapse gauge).

    ``centering="sinkhorn"`` replaces the centres by DINOv2's Sinkhorn-Knopp teacher
    (``sinkhorn_knopp_teacher`` in facebookresearch/dinov2 ``dino_clstoken_loss.py``): the teacher's
    sharpened scores of the batch's class tokens (all global views together), and of its hidden patches,
    are normalised ``sinkhorn_iterations`` times to equal mass per prototype and per row -- a teacher that
    cannot give every image the same flat distribution. The centres are then neither used nor updated.
    """

    def __init__(self, out_dim: int, patch_out_dim: int | None = None, student_temp: float = 0.1,
                 center_momentum: float = 0.9, center_momentum2: float = 0.9, lambda1: float = 1.0,
                 lambda2: float = 1.0, centering: str = "ema", sinkhorn_iterations: int = 3):
        super().__init__()
        if centering not in ("ema", "sinkhorn"):
            raise ValueError(f"centering must be 'ema' (iBOT's centres) or 'sinkhorn' (DINOv2), got {centering!r}")
        self.centering, self.sinkhorn_iterations = centering, int(sinkhorn_iterations)
        self.student_temp = float(student_temp)
        self.center_momentum, self.center_momentum2 = float(center_momentum), float(center_momentum2)
        self.lambda1, self.lambda2 = float(lambda1), float(lambda2)
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.register_buffer("center2", torch.zeros(1, 1, patch_out_dim or out_dim))

    def forward(self, student_cls, student_patch, teacher_cls, teacher_patch, teacher_patch_mean, mask,
                teacher_temp: float, teacher_patch_temp: float, num_global: int = 2,
                update_center: bool = True) -> dict:
        s_cls, s_patch = _full(student_cls), _full(student_patch)
        t_cls, t_patch = _full(teacher_cls).detach(), _full(teacher_patch).detach()
        g = int(num_global)
        b = t_cls.shape[0] // g
        v = s_cls.shape[0] // b
        if g * b != t_cls.shape[0] or v * b != s_cls.shape[0] or v < 2 or mask.shape[0] != g * b:
            raise ValueError(f"iBOT's loss needs G*B teacher rows, V*B student rows (V >= 2) and G*B mask rows; got "
                             f"{t_cls.shape[0]}, {s_cls.shape[0]}, {mask.shape[0]} with G={g}")
        # class token: every teacher global view q against every student view v != q
        t_prob = self.teacher_probs(t_cls, self.center, teacher_temp)
        s_logp = F.log_softmax(s_cls / self.student_temp, dim=-1)
        pairs = -torch.einsum("qbk,vbk->qv", t_prob.reshape(g, b, -1), s_logp.reshape(v, b, -1)) / b
        off = ~torch.eye(g, v, dtype=torch.bool, device=pairs.device)
        cls = (pairs * off).sum() / (g * v - min(g, v)) * self.lambda1
        # patches: the same view's teacher at the hidden patches, per image over its hidden count
        ce = self.patch_cross_entropy(s_patch, t_patch, teacher_patch_temp)
        per_token = torch.zeros(mask.shape, dtype=ce.dtype, device=ce.device).masked_scatter(mask.bool(), ce)
        per_view = per_token.sum(-1) / mask.sum(-1).clamp(min=1.0)
        patch = per_view.mean() * self.lambda2
        with torch.no_grad():
            entropy = -(t_prob * torch.log(t_prob.clamp_min(1e-30))).sum(-1).mean()
        if update_center and self.centering == "ema":
            self.update_center(t_cls, _full(teacher_patch_mean))
        return {"loss": cls + patch, "cls": cls, "patch": patch, "teacher_entropy": entropy}

    def teacher_probs(self, logits: torch.Tensor, center: torch.Tensor, temp) -> torch.Tensor:
        """The teacher's target distributions of ``logits`` (R, K): centred, sharpened softmax, or the
        Sinkhorn-Knopp normalisation of the sharpened scores over the R rows."""
        if self.centering == "sinkhorn":
            return sinkhorn_knopp(logits, temp, self.sinkhorn_iterations)
        return F.softmax((logits - center.reshape(1, -1)) / temp, dim=-1)

    def patch_cross_entropy(self, student_patch, teacher_patch, teacher_patch_temp) -> torch.Tensor:
        """(M,) the patch term at each of M hidden patches: the teacher's centred, sharpened softmax
        against the student's log-softmax."""
        t_prob = self.teacher_probs(teacher_patch, self.center2, teacher_patch_temp)
        return torch.sum(-t_prob * F.log_softmax(student_patch / self.student_temp, dim=-1), dim=-1)

    @torch.no_grad()
    @torch.compiler.disable  # an in-place buffer update and a collective, eagerly under torch.compile
    def update_center(self, teacher_cls: torch.Tensor, teacher_patch_mean: torch.Tensor) -> None:
        """EMA of the batch means (over all processes) of the teacher's class and patch logits."""
        cls_sum = teacher_cls.sum(0, keepdim=True)
        patch_sum = teacher_patch_mean.sum(0, keepdim=True)
        world = 1
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            world = torch.distributed.get_world_size()
            both = torch.cat([cls_sum, patch_sum], dim=1)
            torch.distributed.all_reduce(both)
            cls_sum, patch_sum = both[:, : cls_sum.shape[1]], both[:, cls_sum.shape[1]:]
        cls_center = cls_sum / (len(teacher_cls) * world)
        patch_center = (patch_sum / (len(teacher_patch_mean) * world)).unsqueeze(0)
        self.center.copy_(self.center * self.center_momentum + cls_center * (1 - self.center_momentum))
        self.center2.copy_(self.center2 * self.center_momentum2 + patch_center * (1 - self.center_momentum2))
