"""``trainer.max_minutes``: a wall-clock budget that is a whole schedule.

A run given ``M`` minutes does not train a longer recipe and get cut off. It starts with the
recipe's warm-up, whose learning rates do not depend on the length of the run. Early in the warm-up
it times its own optimiser steps, after a few are skipped for compiling and warming caches. It then
fixes the total number of steps so that the cosine decay ends when the budget does, counted from
the start of ``run_pretrain``, set-up included. After that the run is an ordinary fixed-step run:
the steps it chose are written to ``<run>/schedule.json`` and kept in every checkpoint, and a resumed
run follows the same schedule step for step.

All processes of a multi-process run take rank 0's measurement, so they agree on the schedule.
A run resumed from a checkpoint written before its schedule was fixed (its first few dozen steps)
measures again.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import lightning as L

from ..files import atomic_write

SKIP_STEPS = 8  # steps not timed: the first ones compile (inductor) and warm the allocator
WINDOW_STEPS = 32  # steps timed before the schedule is fixed
WINDOW_FRACTION = 0.05  # ... or this fraction of the budget, whichever comes first
RESERVE_FRACTION = 0.01  # kept back for what follows the last step (final checkpoint, export)


def budget_total_steps(minutes: float, elapsed_s: float, step: int, seconds_per_step: float,
                       reserve_s: float = 0.0) -> int:
    """Total optimiser steps of a run of ``minutes`` that has done ``step`` steps after ``elapsed_s``
    seconds and takes ``seconds_per_step`` per step from here on: at least one more than ``step``."""
    left = minutes * 60.0 - elapsed_s - reserve_s
    return step + max(1, math.floor(left / max(seconds_per_step, 1e-9)))


class BudgetSchedule(L.Callback):
    """Fixes the run's total steps from its measured step time (see the module docstring).

    ``t_origin``: ``time.time()`` when the run started (the budget's zero). ``module.total_steps``
    and ``module.warmup_steps`` are what the learning-rate schedule (and a model's own schedule,
    such as an EMA teacher's decay) read at every step."""

    def __init__(self, minutes: float, t_origin: float, run_dir: Path | None = None,
                 skip: int | None = None, window: int | None = None):
        if not minutes or minutes <= 0:
            raise ValueError(f"trainer.max_minutes must be a positive number of minutes, got {minutes!r}")
        self.minutes, self.t_origin, self.run_dir = float(minutes), float(t_origin), run_dir
        self.skip = SKIP_STEPS if skip is None else int(skip)
        self.window = WINDOW_STEPS if window is None else int(window)
        self.schedule: dict | None = None  # once fixed: total_steps, warmup_steps, seconds_per_step, ...
        self._start: tuple[int, float] | None = None
        self._last_step = -1

    # ---- kept in checkpoints: a resumed run takes the same schedule
    def state_dict(self) -> dict:
        return {"schedule": dict(self.schedule) if self.schedule else None}

    def load_state_dict(self, state: dict) -> None:
        self.schedule = dict(state["schedule"]) if state.get("schedule") else None

    def on_train_start(self, trainer, pl_module) -> None:
        if self.schedule:  # resumed after the schedule was fixed
            self._apply(trainer, pl_module)
            return
        # until the schedule is fixed the run is open-ended; warm-up learning rates do not depend on it
        pl_module.total_steps = max(pl_module.total_steps, 10**9)
        self._start = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.schedule or step == self._last_step:  # fixed, or inside an accumulation of micro-batches
            return
        self._last_step = step
        now = time.time()
        if self._start is None:
            if step >= self.skip:
                self._start = (step, now)
            elif now - self.t_origin < self.minutes * 60:
                return
        begin_step, begin_t = self._start or (0, self.t_origin)
        enough = step - begin_step >= self.window or now - begin_t >= WINDOW_FRACTION * self.minutes * 60
        over = now - self.t_origin >= self.minutes * 60
        if not (enough or over) or (step == begin_step and not over):
            return
        sps = (now - begin_t) / max(1, step - begin_step)
        elapsed = now - self.t_origin
        total = step if over else budget_total_steps(self.minutes, elapsed, step, sps, RESERVE_FRACTION * self.minutes * 60)
        total = int(trainer.strategy.broadcast(total, src=0))  # every process takes rank 0's schedule
        warmup = min(int(getattr(pl_module, "warmup_steps", 0)), max(step, total // 2))
        self.schedule = {"max_minutes": self.minutes, "total_steps": total, "warmup_steps": warmup,
                         "seconds_per_step": round(sps, 5), "fixed_at_step": step,
                         "fixed_at_minutes": round(elapsed / 60, 3), "timed_steps": [begin_step, step]}
        self._apply(trainer, pl_module)
        per_epoch = getattr(pl_module, "steps_per_epoch_hint", None)
        epochs = f" ({total / per_epoch:.2f} epochs)" if per_epoch else ""
        if trainer.is_global_zero:
            print(f"mimkit: budget {self.minutes:g} min: {sps:.3f} s per step (steps {begin_step}-{step}) -> "
                  f"{total} optimiser steps{epochs}, warm-up {warmup}; schedule fixed at {elapsed / 60:.2f} min",
                  flush=True)
        self._write()

    def on_train_end(self, trainer, pl_module) -> None:
        if self.schedule is not None and trainer.is_global_zero:
            self.schedule["finished_at_step"] = int(trainer.global_step)
            self.schedule["wall_minutes"] = round((time.time() - self.t_origin) / 60, 3)
            self._write()

    def _apply(self, trainer, pl_module) -> None:
        s = self.schedule
        pl_module.total_steps = int(s["total_steps"])
        pl_module.warmup_steps = int(s["warmup_steps"])
        trainer.fit_loop.epoch_loop.max_steps = int(s["total_steps"])

    def _write(self) -> None:
        if self.run_dir is None:
            return
        from lightning.pytorch.utilities import rank_zero_only

        if rank_zero_only.rank != 0:
            return
        path = Path(self.run_dir) / "schedule.json"
        atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(self.schedule, indent=2) + "\n"))


def read_schedule(run_dir) -> dict | None:
    """The schedule a budget run fixed (``<run>/schedule.json``), or None."""
    p = Path(run_dir) / "schedule.json"
    return json.loads(p.read_text()) if p.exists() else None
