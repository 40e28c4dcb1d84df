"""Error bars and verdicts: which differences are noise.

* An accuracy on the test set gets a 95% **bootstrap** interval over the test images.
* A difference between two rows read on the same test images (an encoder and raw pixels) gets a
  95% **paired** bootstrap interval: the same resampled images for both sides, 1,000 resamples.
* Scarce-label rows are read over several subset draws: mean +- std, and the difference to raw pixels
  (same draws) a t interval over the draws.
* The verdict is "better" or "worse" only when the interval excludes 0, else "tie".
"""
from __future__ import annotations

import functools
import math

import torch

RESAMPLES = 1000
LEVEL = 0.95
VERDICTS = ("better", "tie", "worse")


@functools.lru_cache(maxsize=4)
def resample_rows(n: int, resamples: int = RESAMPLES, seed: int = 0) -> torch.Tensor:
    """(resamples, n) row indices drawn with replacement; the same ``seed`` gives every row of a report
    the same resamples, which is what makes the intervals of a difference paired. Drawn once per
    (n, resamples, seed) and shared (read only): a report asks for the same draw for every row."""
    return torch.randint(0, n, (int(resamples), int(n)), generator=torch.Generator().manual_seed(int(seed)))


def _quantiles(values: torch.Tensor, level: float = LEVEL) -> tuple[float, float]:
    lo, hi = torch.quantile(values.double(), torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64))
    return float(lo), float(hi)


def accuracy_interval(correct, resamples: int = RESAMPLES, seed: int = 0) -> dict:
    """{"acc", "lo", "hi"}: the accuracy of a 0/1 vector over the test images and its bootstrap interval."""
    c = torch.as_tensor(correct).float()
    idx = resample_rows(len(c), resamples, seed)
    lo, hi = _quantiles(c[idx].mean(1))
    return {"acc": float(c.mean()), "lo": lo, "hi": hi}


def paired_difference(correct_a, correct_b, resamples: int = RESAMPLES, seed: int = 0) -> dict:
    """{"diff", "lo", "hi", "verdict"}: accuracy of ``a`` minus that of ``b`` on the same test images,
    with the paired bootstrap interval (both sides read on each resample's images)."""
    a, b = torch.as_tensor(correct_a).float(), torch.as_tensor(correct_b).float()
    if a.shape != b.shape:
        raise ValueError(f"a paired difference needs the same test images on both sides, got {len(a)} and {len(b)}")
    d = a - b
    idx = resample_rows(len(d), resamples, seed)
    lo, hi = _quantiles(d[idx].mean(1))
    return {"diff": float(d.mean()), "lo": lo, "hi": hi, "verdict": verdict(lo, hi)}


def _miou(inter: torch.Tensor, union: torch.Tensor) -> torch.Tensor:
    """mIoU of summed counts (..., K): the mean over the classes that occur (union > 0)."""
    seen = union > 0
    return torch.where(seen, inter / union.clamp(min=1), 0).sum(-1) / seen.sum(-1).clamp(min=1)


def miou_interval(inter, union, resamples: int = RESAMPLES, seed: int = 0) -> dict:
    """{"miou", "lo", "hi"}: the mIoU of per-image intersections / unions (N, K) and its bootstrap interval
    over the images (each resample sums its images' counts, then averages over the classes)."""
    i, u = torch.as_tensor(inter).double(), torch.as_tensor(union).double()
    idx = resample_rows(len(i), resamples, seed)
    lo, hi = _quantiles(torch.stack([_miou(i[r].sum(0), u[r].sum(0)) for r in idx]))
    return {"miou": float(_miou(i.sum(0), u.sum(0))), "lo": lo, "hi": hi}


def paired_miou_difference(inter_a, union_a, inter_b, union_b, resamples: int = RESAMPLES, seed: int = 0) -> dict:
    """{"diff", "lo", "hi", "verdict"}: mIoU of ``a`` minus that of ``b`` on the same images, with the paired
    bootstrap interval (both sides summed over each resample's images)."""
    ia, ua, ib, ub = (torch.as_tensor(t).double() for t in (inter_a, union_a, inter_b, union_b))
    if ia.shape != ib.shape:
        raise ValueError(f"a paired difference needs the same test images on both sides, got {len(ia)} and {len(ib)}")
    idx = resample_rows(len(ia), resamples, seed)
    d = torch.stack([_miou(ia[r].sum(0), ua[r].sum(0)) - _miou(ib[r].sum(0), ub[r].sum(0)) for r in idx])
    lo, hi = _quantiles(d)
    diff = float(_miou(ia.sum(0), ua.sum(0)) - _miou(ib.sum(0), ub.sum(0)))
    return {"diff": diff, "lo": lo, "hi": hi, "verdict": verdict(lo, hi)}


def verdict(lo: float, hi: float) -> str:
    """"better" when the interval lies above 0, "worse" below, else "tie"."""
    return "better" if lo > 0 else "worse" if hi < 0 else "tie"


# two-sided 97.5% quantiles of Student's t for 1..30 degrees of freedom (then the normal's 1.96)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def over_draws(values) -> dict:
    """{"mean", "std", "n"} of one number measured on several draws (std with n - 1; 0 for one draw)."""
    v = [float(x) for x in values]
    m = sum(v) / len(v)
    sd = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
    return {"mean": m, "std": sd, "n": len(v)}


def draws_difference(values_a, values_b) -> dict:
    """{"diff", "std", "lo", "hi", "verdict"}: the mean over draws of ``a - b`` (each draw the same subset
    for both sides) with its 95% t interval; a single draw has no interval (verdict "tie")."""
    d = [float(a) - float(b) for a, b in zip(values_a, values_b, strict=True)]
    s = over_draws(d)
    if s["n"] < 2:
        return {"diff": s["mean"], "std": 0.0, "lo": -math.inf, "hi": math.inf, "verdict": "tie"}
    half = (_T975[s["n"] - 2] if s["n"] - 1 <= len(_T975) else 1.96) * s["std"] / math.sqrt(s["n"])
    lo, hi = s["mean"] - half, s["mean"] + half
    return {"diff": s["mean"], "std": s["std"], "lo": lo, "hi": hi, "verdict": verdict(lo, hi)}
