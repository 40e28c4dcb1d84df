"""mimkit.schedules.warmup_cosine: the one learning-rate schedule of pretraining, fine-tuning and the
linear probe, at whole steps (what it always gave) and at fractional ones (a budget run's virtual step)."""

from __future__ import annotations

import math

import pytest

from mimkit.schedules import warmup_cosine


def reference(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """The schedule as train/module.py and eval/linear.py each defined it before there was one."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@pytest.mark.parametrize(
    "warmup, total, min_ratio", [(0, 1, 0.0), (1, 10, 0.0), (5, 40, 0.1), (10, 10, 0.0), (3, 1000, 0.5)]
)
def test_whole_steps_give_what_they_always_gave(warmup, total, min_ratio):
    for step in range(total + 5):
        assert warmup_cosine(step, warmup, total, min_ratio) == reference(step, warmup, total, min_ratio)
    assert warmup_cosine(total + 3, warmup, total) == 0.0  # min_ratio defaults to 0


def test_fractional_steps_lie_on_the_same_curve():
    warmup, total, lo = 4, 20, 0.1
    grid = [i / 8 for i in range(0, 8 * (total + 2))]
    f = [warmup_cosine(s, warmup, total, lo) for s in grid]
    assert all(0 < v <= 1.0 for v in f)  # the warm-up never overshoots 1 between whole steps
    rising = [v for s, v in zip(grid, f) if s <= warmup - 1]  # (step + 1) / warmup reaches 1 at warmup - 1
    top = [v for s, v in zip(grid, f) if warmup - 1 <= s <= warmup]
    falling = [v for s, v in zip(grid, f) if s >= warmup]
    assert all(a < b for a, b in zip(rising, rising[1:])) and top == [1.0] * len(top)
    assert all(a >= b for a, b in zip(falling, falling[1:])) and falling[-1] == pytest.approx(lo)
    assert warmup_cosine(2.5, warmup, total, lo) == pytest.approx(3.5 / warmup)
    assert warmup_cosine(warmup + (total - warmup) / 2, warmup, total, lo) == pytest.approx(lo + (1 - lo) / 2)
    assert warmup_cosine(12.25, warmup, total, lo) == pytest.approx(
        lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * 8.25 / 16))
    )
