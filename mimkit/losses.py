"""Pixel-target helpers and losses. Every method computes its loss on hidden positions only: the
masked losses here take the mask (1 = hidden); :func:`masked_cross_entropy` and the teacher losses
receive the hidden positions already selected by the method."""
from __future__ import annotations

import torch
import torch.nn.functional as F


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
