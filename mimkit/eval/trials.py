"""Equal-trial searches: every side of a comparison runs the same number of trials, each scored on a
validation split, and keeps the best. One loop for every search (fine-tuning recipes, dense-head learning
rates), so that all of them resume the same way and break ties the same way."""

from __future__ import annotations

from collections.abc import Callable, Iterable


def best_of_trials(
    trials: Iterable,
    run: Callable[[object, object], dict],
    score: str,
    *,
    done: dict | None = None,
    on_trial: Callable[[dict], None] | None = None,
) -> tuple[dict, list[dict]]:
    """Run each ``(key, spec)`` of ``trials`` with ``run(key, spec) -> record`` unless ``done`` (``{key:
    record}`` kept from an earlier run) has it; ``on_trial(record)`` follows each new record (to keep it as
    it ends). Returns ``(best record, records in trial order)``; best is the highest ``record[score]``, the
    first of equals, so a tie keeps the first (untuned) trial."""
    done = dict(done or {})
    records = []
    for key, spec in trials:
        if key not in done:
            done[key] = run(key, spec)
            if on_trial is not None:
                on_trial(done[key])
        records.append(done[key])
    if not records:
        raise ValueError("best_of_trials needs at least one trial")
    return max(records, key=lambda r: r[score]), records
