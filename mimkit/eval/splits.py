"""Which labelled rows each choice and each fit may read: the validation split, the scarce-label subsets
and the folds inside them. Everything is drawn **per class** with a seeded shuffle, never "the last
rows": an image folder's rows are sorted by class, so the last rows would be one class.

* :func:`validation_split`: the same fraction of every class is held out of the training rows, for
  the choices made with all labels (pooling, learning rate, C, preprocessing);
* :func:`scarce_subsets`: N labelled images of every class, drawn from the fitting rows, one subset
  per draw (several draws give a mean and a spread); a class that cannot supply N is one error
  naming it;
* :func:`stratified_folds`: k folds inside a scarce subset, so that the choices of a row with N labels
  per class are made with those N x classes labels only.
"""
from __future__ import annotations

import torch


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def _per_class(labels: torch.Tensor, rows: torch.Tensor, seed: int) -> dict[int, torch.Tensor]:
    """{class: its rows among ``rows``, shuffled with ``seed``}, classes in increasing order."""
    g = _generator(seed)
    out = {}
    for c in labels.unique().tolist():
        mine = rows[labels[rows] == c]
        out[int(c)] = mine[torch.randperm(len(mine), generator=g)]
    return out


def validation_split(labels, fraction: float = 1 / 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(fit rows, validation rows), both sorted: ``round(fraction * n_c)`` rows of every class ``c``
    (at least one, and at least one left to fit on) are held out, drawn with ``seed``."""
    labels = torch.as_tensor(labels).long()
    if not 0 < fraction < 1:
        raise ValueError(f"the validation fraction must lie in (0, 1), got {fraction}")
    fit, val = [], []
    for c, rows in _per_class(labels, torch.arange(len(labels)), seed).items():
        if len(rows) < 2:
            raise ValueError(f"class {c} has {len(rows)} training image(s); choosing on a validation split needs at "
                             "least 2 per class (one to fit, one to validate): add images to it")
        k = min(max(1, round(fraction * len(rows))), len(rows) - 1)
        val.append(rows[:k])
        fit.append(rows[k:])
    return torch.cat(fit).sort().values, torch.cat(val).sort().values


def scarce_subsets(labels, rows, per_class: int, draws: int = 3, seed: int = 0, class_names=None) -> list[torch.Tensor]:
    """``draws`` subsets of ``rows`` (sorted), each with ``per_class`` rows of every class, drawn per class
    with seeds ``seed``, ``seed + 1``, ... (the same subsets for every encoder and baseline)."""
    labels = torch.as_tensor(labels).long()
    rows = torch.as_tensor(rows).long()
    if isinstance(per_class, bool) or int(per_class) < 1:
        raise ValueError(f"--labels-per-class takes positive integers, got {per_class!r}")
    per_class = int(per_class)
    out = []
    for d in range(int(draws)):
        chosen = []
        for c, mine in _per_class(labels, rows, seed + d).items():
            if len(mine) < per_class:
                name = class_names[c] if class_names is not None else c
                raise ValueError(f"class {name!r} has {len(mine)} training images outside the validation split, fewer "
                                 f"than --labels-per-class {per_class}; use --labels-per-class {len(mine)} or less, or add "
                                 "images to that class")
            chosen.append(mine[:per_class])
        out.append(torch.cat(chosen).sort().values)
    return out


def stratified_folds(labels, k: int = 5, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``min(k, fewest per class)`` folds over positions ``0..len(labels)-1``: [(train positions, held-out
    positions)], every class spread evenly over the folds. Empty when a class has one row (nothing to
    hold out)."""
    labels = torch.as_tensor(labels).long()
    fewest = int(torch.bincount(labels).masked_select(torch.bincount(labels) > 0).min()) if len(labels) else 0
    k = min(int(k), fewest)
    if k < 2:
        return []
    fold_of = torch.empty(len(labels), dtype=torch.long)
    for _, rows in _per_class(labels, torch.arange(len(labels)), seed).items():
        fold_of[rows] = torch.arange(len(rows)) % k
    everything = torch.arange(len(labels))
    return [(everything[fold_of != f], everything[fold_of == f]) for f in range(k)]


def class_counts(labels, rows=None, class_names=None) -> dict:
    """{class name: how many of ``rows`` (default: all) carry it}, every class listed (zeros included)."""
    labels = torch.as_tensor(labels).long()
    sel = labels if rows is None else labels[torch.as_tensor(rows).long()]
    n = len(class_names) if class_names is not None else int(labels.max()) + 1
    counts = torch.bincount(sel, minlength=n).tolist()
    names = class_names if class_names is not None else range(n)
    return {str(name): int(counts[i]) for i, name in enumerate(names)}
