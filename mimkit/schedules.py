"""Learning-rate schedules as plain functions of the step: the one warm-up + cosine that pretraining
(:mod:`mimkit.train.module`), fine-tuning (:mod:`mimkit.eval.finetune`) and the linear probe
(:mod:`mimkit.eval.linear`) share. A pure function of the step, so nothing about it needs checkpointing,
and the step may be fractional (a budget run reads the schedule at a "virtual" step when it re-fits the
rest of it). Imports nothing of mimkit, and no training framework: any layer may use it."""

from __future__ import annotations

import math

__all__ = ["warmup_cosine"]


def warmup_cosine(step: float, warmup: float, total: float, min_ratio: float = 0.0) -> float:
    """The learning-rate factor at optimiser step ``step`` (0-based, may be fractional): a linear warm-up
    ``(step + 1) / warmup`` over the first ``warmup`` steps (MAE's per-step warm-up; never above 1), then
    a half-cosine from 1 down to ``min_ratio`` at step ``total``, and ``min_ratio`` after it."""
    if step < warmup:
        return min(1.0, (step + 1) / warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
