"""``trainer.max_minutes``: a wall-clock budget that is a whole schedule, and ends on time.

A run given ``M`` minutes does not train a longer recipe and get cut off. It starts with the
recipe's warm-up, whose learning rates do not depend on the length of the run. Early in the warm-up
it times its own optimiser steps (after a few are skipped for compiling and warming caches) and fixes
a first total so that the cosine ends when the budget does, counted from the start of
``run_pretrain``, set-up included.

The machine's speed drifts (a shared host can take a third of the CPU), so the first total is not the
last word. After the warm-up the run times itself again, and then at every check: the step time over
the last few percent of the budget gives the steps that still fit, and when they differ from the
schedule the rest of it is **re-fitted**. A re-fit never moves the past: every schedule of the run (the
learning rate, an EMA teacher's momentum, a dVAE's temperature) reads a *virtual step* that runs from
0 to the first total, and a re-fit only changes how fast the remaining virtual steps go by (a
piecewise-linear map, continuous and increasing: the learning rate still only falls). The map's knots
are printed, written to ``<run>/schedule.json`` and kept in every checkpoint with the budget spent so
far, so a resumed run continues the same map and the same clock (the time the run was down does not
count).

Every process makes the same decision at the same step: checks happen every ``CHECK_EVERY`` optimiser
steps, where all processes take rank 0's clock (one small collective), so no process waits in a
collective the others never reach.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import lightning as L

from ..files import atomic_write

SKIP_STEPS = 8  # steps not timed: the first ones compile (inductor) and warm the allocator
WINDOW_STEPS = 32  # steps timed before the first total is fixed
WINDOW_FRACTION = 0.05  # ... or this fraction of the budget, whichever comes first; also the re-timing window
CHECK_EVERY = 8  # optimiser steps between checks (each one collective when several processes run)
RESERVE_FRACTION = 0.01  # kept back for what follows the last step (final checkpoint, export)
REFIT_TOLERANCE = 0.005  # re-fit when the steps that fit differ by more than this share of the steps left


def clock() -> float:
    """The budget's clock (seconds); tests replace it to drive time step by step."""
    return time.time()


def budget_total_steps(minutes: float, elapsed_s: float, step: int, seconds_per_step: float,
                       reserve_s: float = 0.0) -> int:
    """Total optimiser steps of a run of ``minutes`` that has done ``step`` steps after ``elapsed_s``
    seconds and takes ``seconds_per_step`` per step from here on: at least one more than ``step``."""
    left = minutes * 60.0 - elapsed_s - reserve_s
    return step + max(1, math.floor(left / max(seconds_per_step, 1e-9)))


def virtual_step(knots, step: float) -> float:
    """The schedule's position at optimiser step ``step``: piecewise linear through ``knots``
    ([actual step, virtual step] pairs, increasing), constant after the last knot."""
    if step <= knots[0][0]:
        return float(knots[0][1]) + (step - knots[0][0])
    for (a0, v0), (a1, v1) in zip(knots, knots[1:]):
        if step <= a1:
            return v0 + (v1 - v0) * (step - a0) / max(a1 - a0, 1e-12)
    return float(knots[-1][1])


def refit(knots, step: int, new_total: int) -> list:
    """``knots`` re-fitted at ``step`` so that the virtual steps left are spread over the actual steps
    up to ``new_total``: the map is unchanged up to ``step`` and still ends at the same virtual total."""
    end = knots[-1][1]
    kept = [k for k in knots if k[0] < step]
    here = virtual_step(knots, step)
    return [*kept, [int(step), round(here, 6)], [int(new_total), end]]


class BudgetAware:
    """What a LightningModule needs to follow a :class:`BudgetSchedule`: every schedule it runs (the
    learning rate, a model's own) reads :meth:`schedule_position` instead of the raw step."""

    step_knots: list | None = None
    nominal_total: int | None = None

    def schedule_position(self, step: float) -> tuple[float, int, int]:
        """(position, warm-up steps, total steps) at optimiser step ``step``: the step itself until a
        budget fixes its map, then the virtual step of the nominal schedule."""
        if self.step_knots:
            return virtual_step(self.step_knots, step), getattr(self, "warmup_steps", 0), int(self.nominal_total)
        return step, getattr(self, "warmup_steps", 0), getattr(self, "total_steps", 1)


class BudgetSchedule(L.Callback):
    """Fixes, then keeps re-fitting, the run's total steps from its measured step time (see the module
    docstring).

    ``t_origin``: :func:`clock` when the run started (the budget's zero). The module reads
    ``total_steps`` / ``warmup_steps`` and, once fixed, ``step_knots`` / ``nominal_total`` (see
    :meth:`mimkit.train.module.MIMModule.schedule_position`)."""

    def __init__(self, minutes: float, t_origin: float, run_dir: Path | None = None,
                 skip: int | None = None, window: int | None = None, check_every: int | None = None):
        if not minutes or minutes <= 0:
            raise ValueError(f"trainer.max_minutes must be a positive number of minutes, got {minutes!r}")
        self.minutes, self.t_origin, self.run_dir = float(minutes), float(t_origin), run_dir
        self.skip = SKIP_STEPS if skip is None else int(skip)
        self.window = WINDOW_STEPS if window is None else int(window)
        self.every = CHECK_EVERY if check_every is None else int(check_every)
        self.schedule: dict | None = None  # once fixed: total_steps, warmup_steps, knots, refits, ...
        self.history: list[list[float]] = []  # [step, elapsed seconds] at the recent checks
        self._spent_before = 0.0  # budget seconds spent before a resume
        self._last_step = -1

    @property
    def budget_s(self) -> float:
        return self.minutes * 60.0

    def elapsed(self) -> float:
        return clock() - self.t_origin + self._spent_before

    # ---- kept in checkpoints: a resumed run continues the same map and the same clock
    def state_dict(self) -> dict:
        return {"schedule": json.loads(json.dumps(self.schedule)) if self.schedule else None,
                "history": [list(h) for h in self.history], "spent_s": self.elapsed()}

    def load_state_dict(self, state: dict) -> None:
        self.schedule = json.loads(json.dumps(state["schedule"])) if state.get("schedule") else None
        self.history = [list(h) for h in state.get("history", [])]
        if self.schedule is not None and "spent_s" in state:
            self._spent_before = float(state["spent_s"])  # the clock goes on from where it stopped

    def on_train_start(self, trainer, pl_module) -> None:
        self._last_step = trainer.global_step
        if self.schedule:  # resumed after the schedule was fixed
            self._apply(trainer, pl_module)
            return
        # until the schedule is fixed the run is open-ended; warm-up learning rates do not depend on it
        pl_module.total_steps = max(pl_module.total_steps, 10**9)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == self._last_step:  # inside an accumulation of micro-batches
            return
        self._last_step = step
        if step % self.every:
            return
        # every process reaches this step: all take rank 0's clock, so all decide alike
        elapsed = float(trainer.strategy.broadcast(self.elapsed(), src=0))
        self.history.append([step, elapsed])
        if self.schedule is None:
            self._maybe_fix(trainer, pl_module, step, elapsed)
        else:
            self._maybe_refit(trainer, pl_module, step, elapsed)
        keep = elapsed - 2 * WINDOW_FRACTION * self.budget_s  # what the next re-timing can still need
        while len(self.history) > 2 and self.history[1][1] <= keep:
            self.history.pop(0)

    def _maybe_fix(self, trainer, pl_module, step: int, elapsed: float) -> None:
        timed = [h for h in self.history if h[0] >= self.skip]
        over = elapsed >= self.budget_s
        if not over:
            if len(timed) < 2:
                return
            if timed[-1][0] - timed[0][0] < self.window and timed[-1][1] - timed[0][1] < WINDOW_FRACTION * self.budget_s:
                return
        (s0, e0), (s1, e1) = (timed[0], timed[-1]) if len(timed) >= 2 else ((0, 0.0), (step, elapsed))
        sps = (e1 - e0) / max(1, s1 - s0)
        total = step if over else budget_total_steps(self.minutes, elapsed, step, sps, RESERVE_FRACTION * self.budget_s)
        warmup = min(int(getattr(pl_module, "warmup_steps", 0)), max(step, total // 2))
        self.schedule = {"max_minutes": self.minutes, "total_steps": total, "nominal_total": total,
                         "warmup_steps": warmup, "seconds_per_step": round(sps, 5), "fixed_at_step": step,
                         "fixed_at_minutes": round(elapsed / 60, 3), "timed_steps": [int(s0), int(s1)],
                         "knots": [[0, 0.0], [total, float(total)]], "refits": []}
        self._apply(trainer, pl_module)
        self._say(trainer, f"budget {self.minutes:g} min: {sps:.3f} s per step (steps {s0}-{s1}) -> {total} optimiser "
                           f"steps{self._epochs(pl_module, total)}, warm-up {warmup}; fixed at {elapsed / 60:.2f} min")
        self._write()

    def _maybe_refit(self, trainer, pl_module, step: int, elapsed: float) -> None:
        s = self.schedule
        total = int(s["total_steps"])
        if step < int(s["warmup_steps"]) or step >= total:
            return
        if elapsed >= self.budget_s:  # out of time: stop here (the cosine is cut short; recorded)
            new_total, sps = step, float("nan")
        else:
            since = elapsed - max(WINDOW_FRACTION * self.budget_s, 0.0)
            past = [h for h in self.history if h[1] <= since and h[0] < step] or self.history[:1]
            s0, e0 = past[-1]
            if step - s0 < self.every:
                return
            sps = (elapsed - e0) / (step - s0)
            new_total = budget_total_steps(self.minutes, elapsed, step, sps, RESERVE_FRACTION * self.budget_s)
        if abs(new_total - total) <= max(0, REFIT_TOLERANCE * (total - step)) or new_total == total:
            return
        s["knots"] = refit(s["knots"], step, new_total)
        s["total_steps"] = int(new_total)
        s["refits"].append({"step": step, "minutes": round(elapsed / 60, 3), "seconds_per_step": round(sps, 5),
                            "total_steps": int(new_total), "was": total})
        self._apply(trainer, pl_module)
        self._say(trainer, f"budget {self.minutes:g} min: at step {step} ({elapsed / 60:.2f} min) the steps take "
                           f"{sps:.3f} s -> {new_total} optimiser steps (was {total}); the rest of the cosine re-fitted")
        self._write()

    def on_train_end(self, trainer, pl_module) -> None:
        if self.schedule is not None and trainer.is_global_zero:
            self.schedule["finished_at_step"] = int(trainer.global_step)
            self.schedule["wall_minutes"] = round(self.elapsed() / 60, 3)
            self._write()

    def _apply(self, trainer, pl_module) -> None:
        s = self.schedule
        pl_module.total_steps = int(s["total_steps"])
        pl_module.warmup_steps = int(s["warmup_steps"])
        pl_module.nominal_total = int(s.get("nominal_total", s["total_steps"]))
        pl_module.step_knots = s.get("knots") or [[0, 0.0], [int(s["total_steps"]), float(s["total_steps"])]]
        trainer.fit_loop.epoch_loop.max_steps = int(s["total_steps"])

    @staticmethod
    def _epochs(pl_module, total: int) -> str:
        per_epoch = getattr(pl_module, "steps_per_epoch_hint", None)
        return f" ({total / per_epoch:.2f} epochs)" if per_epoch else ""

    @staticmethod
    def _say(trainer, msg: str) -> None:
        if trainer.is_global_zero:
            print(f"mimkit: {msg}", flush=True)

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
