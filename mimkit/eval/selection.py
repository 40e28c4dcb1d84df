"""Choices made on a validation split held out of the training images; the test set read once.

``mimkit report --pool auto`` (its default), ``benchmarks/fmnist_quality.py`` and ``benchmarks/sweep.py``
evaluate frozen encoders this way.

:func:`frozen_selected` evaluates frozen features with the two standard protocols, 20-NN (cosine)
and the linear probe (BatchNorm + linear, :mod:`mimkit.eval.linear`). For each protocol it first picks
the pooling, and for the probe also its learning rate, by fitting on the training rows outside the
validation split and scoring on that split. Only then does it fit on every training row with the
chosen setting and score the test set, once per protocol. Scarce labels work the same way: a
balanced subset of N labelled images per class, drawn from outside the validation split, is the
training set for both the selection and the final test.
"""
from __future__ import annotations

import torch

PROBE_BLRS = (0.1, 0.4)  # linear-probe base learning rates tried on validation (SGD, see mimkit.eval.linear)


def holdout_split(n: int, val_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(fit rows, validation rows) of ``n`` training rows: the last ``val_size`` rows are held out (for
    Fashion-MNIST's 60k training images, the last 10k)."""
    if not 0 < val_size < n:
        raise ValueError(f"the validation split needs 0 < size < {n} training images, got {val_size}")
    return torch.arange(n - val_size), torch.arange(n - val_size, n)


def _knn(x, y, xq, yq, num_classes, k):
    from .knn import knn_accuracy

    return knn_accuracy(x, y, xq, yq, k=min(k, len(x)), num_classes=num_classes)


def _probe(x, y, xq, yq, num_classes, epochs, blr, seed):
    from .linear import fit_linear_probe

    return fit_linear_probe(x, y, xq, yq, num_classes=num_classes, epochs=epochs, blr=blr, seed=seed,
                            progress=False)[1]["acc"]


def _select(scores: dict) -> str:
    """The best key of {key: validation accuracy}; ties go to the first (the cheaper setting)."""
    return max(scores, key=lambda key: (scores[key], -list(scores).index(key)))


def frozen_selected(ftr: dict, ytr: torch.Tensor, fte: dict, yte: torch.Tensor, *, val_size: int, num_classes: int,
                    probe_epochs: int = 50, scarce_probe_epochs: int = 200, blrs=PROBE_BLRS, k: int = 20,
                    seed: int = 0, labels_per_class=(), subsets: dict | None = None) -> dict:
    """``ftr`` / ``fte``: {pool: (N, D) features} of the training and test images (one extraction).

    Returns ``{"knn": {...}, "linear": {...}, "low_label": {N: {"knn": {...}, "linear": {...}}}}``, where
    each ``{...}`` holds ``test`` (the accuracy on the test set with the chosen setting), ``val`` (every
    setting's validation accuracy), ``pool`` and, for the probe, ``blr``. ``subsets``: {N: training rows}
    to use for the scarce labels instead of drawing them (rows outside the validation split)."""
    from .data import balanced_indices

    fit, val = holdout_split(len(ytr), val_size)
    out: dict = {}

    def protocol(train_rows, epochs, test_rows=None) -> dict:
        """Select on (train_rows -> val), then test with (test_rows or every training row -> test)."""
        yfit, yval = ytr[train_rows], ytr[val]
        knn_val = {p: _knn(f[train_rows], yfit, f[val], yval, num_classes, k) for p, f in ftr.items()}
        lin_val = {f"{p}@{b:g}": _probe(f[train_rows], yfit, f[val], yval, num_classes, epochs, b, seed)
                   for p, f in ftr.items() for b in blrs}
        rows = torch.arange(len(ytr)) if test_rows is None else test_rows
        kp = _select(knn_val)
        lp, lb = _select(lin_val).split("@")
        return {"knn": {"test": _knn(ftr[kp][rows], ytr[rows], fte[kp], yte, num_classes, k), "pool": kp, "val": knn_val},
                "linear": {"test": _probe(ftr[lp][rows], ytr[rows], fte[lp], yte, num_classes, epochs, float(lb), seed),
                           "pool": lp, "blr": float(lb), "val": lin_val}}

    out.update(protocol(fit, probe_epochs))
    out["low_label"] = {}
    if subsets is None:  # N labelled images per class, outside validation
        subsets = {int(n): fit[balanced_indices(ytr[fit], int(n), seed)] for n in labels_per_class}
    for n, sub in subsets.items():
        if len(sub) and int(sub.max()) >= len(ytr) - val_size:
            raise ValueError(f"the {n}-per-class subset reaches into the validation split")
        out["low_label"][int(n)] = protocol(sub, max(probe_epochs, scarce_probe_epochs), test_rows=sub)
    return out
