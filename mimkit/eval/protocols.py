"""The frozen-feature protocols and their choices, in one place for every row of every comparison.

A *row* is one way of turning images into vectors: an encoder (one vector per pooling it offers: cls,
mean, both, the last 4 blocks), the same recipe at random init, or raw pixels (one vector per
preprocessing: ``[0, 1]`` and ``standardised``, the images as the encoder receives them). Every row
goes through the same code with the same grid:

* ``knn``: 20-NN, cosine, votes weighted by exp(sim / 0.07) (:mod:`mimkit.eval.knn`); chooses the vector;
* ``linear``: BatchNorm(affine=False) + linear probe on cached features (:mod:`mimkit.eval.linear`);
  chooses the vector and the learning rate (``blrs``);
* ``logreg``: scikit-learn's logistic regression on standardised vectors; chooses the vector and C;
* ``best_linear``: of ``linear`` and ``logreg``, the one that scored higher on the same choice data.

**With all labels** the choices are scored on the per-class validation split
(:func:`mimkit.eval.splits.validation_split`), fitted on the rest; the chosen setting is then fitted on
every training row and the test set read once. **With N labels per class** the choices use those N x
classes labels only (stratified k folds inside the subset); the chosen setting is fitted on the whole
subset and tested, once per subset draw. Each result keeps which test images it got right, so that
differences between rows get paired intervals (:mod:`mimkit.eval.stats`).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from .splits import stratified_folds

FROZEN_PROTOCOLS = ("knn", "linear", "logreg")
PROTOCOL_NAMES = {"knn": "20-NN", "linear": "linear probe", "logreg": "logistic regression",
                  "best_linear": "best linear (chosen on validation)", "finetune": "fine-tune"}


@dataclass(frozen=True)
class Settings:
    """The grid and schedule every row gets."""
    k: int = 20
    probe_epochs: int = 50  # linear probe, all labels
    max_probe_epochs: int = 200  # ... and at most this many on small label sets
    blrs: tuple = (0.1, 0.4)  # linear-probe base learning rates (SGD)
    cs: tuple = (0.01, 0.1, 1.0)  # logistic regression's inverse regularisation
    logreg_iters: int = 200
    logreg_max_dims: int | None = 2048  # logistic regression leaves out an encoder's wider vectors (scikit-learn's
    # lbfgs in float64 would take most of a row's time on the 6,272-number token map); a row whose every vector is
    # wider keeps its narrowest. None: no limit. Raw pixels get RAW_LOGREG_MAX_DIMS instead
    folds: int = 3  # inside a scarce subset
    draws: int = 3  # scarce subsets drawn per N
    seed: int = 0
    protocols: tuple = FROZEN_PROTOCOLS

    def probe_epochs_for(self, n: int) -> int:
        """Epochs of the probe on ``n`` labelled vectors: ``probe_epochs`` on large sets, more on small
        ones (about 100k vectors seen, at most ``max_probe_epochs``)."""
        return int(min(self.max_probe_epochs, max(self.probe_epochs, round(100_000 / max(1, n)))))


#: Raw pixels' width limit for logistic regression (instead of ``Settings.logreg_max_dims``, meant for an encoder's
#: token map): every preprocessing of grayscale images up to 128x128 stays in (as many trials as an encoder), while
#: a 224-px colour image's 150,528 numbers, ~12 GB per float64 copy of 10k images, are left out with a note.
RAW_LOGREG_MAX_DIMS = 16384


def logreg_vectors(feats: dict, s: Settings) -> list[str]:
    """The vectors of ``feats`` ({name: (N, D)}) logistic regression chooses among: those of at most
    ``s.logreg_max_dims`` numbers (all when it is None), or the narrowest when every one is wider."""
    if s.logreg_max_dims is None:
        return list(feats)
    ok = [v for v, x in feats.items() if x.shape[-1] <= s.logreg_max_dims]
    return ok or [min(feats, key=lambda v: feats[v].shape[-1])]


def grid(protocol: str, candidates, s: Settings) -> list[str]:
    """The settings a protocol chooses among: ``vector`` or ``vector@hyper-parameter``; ``candidates``
    are vector names, or {name: vectors} (then logistic regression keeps :func:`logreg_vectors`)."""
    if protocol == "knn":
        return list(candidates)
    if protocol == "logreg" and isinstance(candidates, dict):
        candidates = logreg_vectors(candidates, s)
    values = s.blrs if protocol == "linear" else s.cs
    return [f"{c}@{v:g}" for c in candidates for v in values]


def _split_key(key: str) -> tuple[str, float | None]:
    vec, _, hyper = key.partition("@")
    return vec, float(hyper) if hyper else None


def logistic_regression(xtr, ytr, xq, c, iters: int = 500) -> tuple:
    """(predictions for ``xq``, converged): standardise with the training vectors' statistics, then
    scikit-learn's multinomial logistic regression (lbfgs) with inverse regularisation ``c``. ``c`` may be
    a list: then a list of predictions, one per value, fitted in increasing order, each starting from the
    previous solution (the regularisation path; the same optimum, fewer iterations)."""
    import numpy as np
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(xtr.double().numpy())
    a, q = scaler.transform(xtr.double().numpy()), scaler.transform(xq.double().numpy())
    cs = [c] if not isinstance(c, (list, tuple)) else list(c)
    order = sorted(range(len(cs)), key=lambda i: cs[i])
    clf = LogisticRegression(max_iter=int(iters), warm_start=True)
    preds, converged = [None] * len(cs), True
    for i in order:
        clf.set_params(C=float(cs[i]))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            clf.fit(a, ytr.numpy())
        converged &= not any(issubclass(w.category, ConvergenceWarning) for w in caught)
        preds[i] = torch.from_numpy(np.asarray(clf.predict(q))).long()
    return (preds if isinstance(c, (list, tuple)) else preds[0]), converged


def fit_predict(protocol: str, key: str, feats: dict, ytr, train_rows, query, num_classes: int, s: Settings,
                notes: list | None = None) -> torch.Tensor:
    """Fit ``protocol`` with setting ``key`` on ``feats[vector][train_rows]`` and predict the rows
    ``query`` of ``feats[vector]`` (a tensor of row indices) or the vectors ``query[vector]`` (a dict)."""
    from .knn import knn_predict
    from .linear import fit_linear_probe, predict

    vec, hyper = _split_key(key)
    x, y = feats[vec][train_rows], ytr[train_rows]
    xq = query[vec] if isinstance(query, dict) else feats[vec][query]
    if protocol == "knn":
        return knn_predict(x, y, xq, k=min(s.k, len(x)), num_classes=num_classes)
    if protocol == "linear":
        head, _ = fit_linear_probe(x, y, num_classes=num_classes, epochs=s.probe_epochs_for(len(x)), blr=hyper,
                                   seed=s.seed, progress=False)
        return predict(head, xq.float())
    if protocol == "logreg":
        pred, ok = logistic_regression(x, y, xq, hyper, s.logreg_iters)
        if not ok and notes is not None:
            notes.append(f"logistic regression ({key}, {len(x)} vectors) stopped at {s.logreg_iters} iterations "
                         "before converging")
        return pred
    raise ValueError(f"unknown frozen protocol {protocol!r}; one of {FROZEN_PROTOCOLS}")


def choose(protocol: str, feats: dict, ytr, splits, num_classes: int, s: Settings, notes=None) -> tuple[str, dict]:
    """(the best setting, {setting: mean held-out accuracy}) over ``splits`` [(fit rows, held-out rows)];
    ties go to the first (cheaper) setting. Without splits (too few labels to hold any out) the first
    setting, unscored."""
    keys = grid(protocol, feats, s)
    if not splits:
        return keys[0], {}
    scores = {}
    if protocol == "logreg":  # one regularisation path per vector and split (warm starts)
        for vec in logreg_vectors(feats, s):
            accs = []
            for fit, held in splits:
                preds, ok = logistic_regression(feats[vec][fit], ytr[fit], feats[vec][held], list(s.cs), s.logreg_iters)
                accs.append([float((p == ytr[held]).float().mean()) for p in preds])
                if not ok and notes is not None:
                    notes.append(f"logistic regression ({vec}, {len(fit)} vectors) stopped at {s.logreg_iters} "
                                 "iterations before converging for some C")
            for j, c in enumerate(s.cs):
                scores[f"{vec}@{c:g}"] = sum(a[j] for a in accs) / len(accs)
        scores = {k: scores[k] for k in keys}
    else:
        for key in keys:
            accs = [float((fit_predict(protocol, key, feats, ytr, fit, held, num_classes, s, notes) == ytr[held])
                          .float().mean()) for fit, held in splits]
            scores[key] = sum(accs) / len(accs)
    best = max(scores, key=lambda k: (scores[k], -keys.index(k)))
    return best, scores


def _one(protocol, feats, ytr, choice_splits, train_rows, test_feats, yte, num_classes, s, notes) -> dict:
    best, scores = choose(protocol, feats, ytr, choice_splits, num_classes, s, notes)
    pred = fit_predict(protocol, best, feats, ytr, train_rows, test_feats, num_classes, s, notes)
    correct = pred == yte
    return {"choice": best, "choice_acc": scores.get(best), "scores": scores, "acc": float(correct.float().mean()),
            "correct": correct, "labels": int(len(train_rows))}


def _best_linear(res: dict) -> dict:
    """Of the probe and logistic regression, the one whose choice scored higher (the probe on a tie)."""
    lin, lr = res["linear"], res["logreg"]
    pick = "logreg" if (lr["choice_acc"] or -1) > (lin["choice_acc"] or -1) else "linear"
    return {**res[pick], "choice": f"{pick}: {res[pick]['choice']}"}


def evaluate_row(feats: dict, ytr, test_feats: dict, yte, *, fit_rows, val_rows, subsets: dict | None = None,
                 num_classes: int, s: Settings = Settings(), progress=None) -> dict:
    """Every protocol of ``s`` on one row. ``feats`` / ``test_feats``: {vector name: (N, D)} of the training
    and test images; ``fit_rows`` / ``val_rows``: the validation split; ``subsets``: {N: [rows of each
    draw]} (:func:`mimkit.eval.splits.scarce_subsets`).

    Returns ``{"all": {protocol: result}, "scarce": {N: {protocol: [result per draw]}}, "notes": [...]}``;
    a result holds ``choice``, ``choice_acc`` (its validation or cross-validation accuracy), ``scores``
    (every setting's), ``acc`` (test), ``correct`` (bool per test image) and ``labels`` (how many
    labelled images the fit used; the choices used the same ones)."""
    ytr, yte = torch.as_tensor(ytr).long(), torch.as_tensor(yte).long()
    notes: list[str] = []
    say = progress or (lambda msg: None)
    every = torch.cat([torch.as_tensor(fit_rows), torch.as_tensor(val_rows)]).sort().values
    out: dict = {"all": {}, "scarce": {}, "notes": notes}
    for p in s.protocols:
        out["all"][p] = _one(p, feats, ytr, [(fit_rows, val_rows)], every, test_feats, yte, num_classes, s, notes)
        say(f"{PROTOCOL_NAMES[p]}: {out['all'][p]['acc']:.4f} ({out['all'][p]['choice']})")
    if "linear" in s.protocols and "logreg" in s.protocols:
        out["all"]["best_linear"] = _best_linear(out["all"])
    for n, draws in (subsets or {}).items():
        out["scarce"][int(n)] = per = evaluate_scarce(feats, ytr, test_feats, yte, draws, num_classes, s, notes)
        say(f"{n} labels per class: " + ", ".join(f"{PROTOCOL_NAMES[p]} {sum(r['acc'] for r in rs) / len(rs):.4f}"
                                                  for p, rs in per.items()))
    return out


def evaluate_scarce(feats: dict, ytr, test_feats: dict, yte, draws, num_classes: int, s: Settings,
                    notes: list | None = None) -> dict:
    """{protocol: [result per draw]}: on each draw's rows (N labels per class), the choices by
    stratified folds inside those rows, the fit on all of them, the test set once."""
    per: dict = {}
    for d, rows in enumerate(draws):
        rows = torch.as_tensor(rows).long()
        folds = [(rows[a], rows[b]) for a, b in stratified_folds(ytr[rows], s.folds, s.seed + d)]
        got = {p: _one(p, feats, ytr, folds, rows, test_feats, yte, num_classes, s, notes) for p in s.protocols}
        if "linear" in got and "logreg" in got:
            got["best_linear"] = _best_linear(got)
        for p, r in got.items():
            per.setdefault(p, []).append(r)
    return per


def raw_vectors(images: torch.Tensor, mean, std, train_images: torch.Tensor | None = None) -> dict:
    """Raw pixels as the five vectors a row of raw pixels chooses among, as many as an encoder's poolings
    (:data:`mimkit.eval.features.FROZEN_POOLS`), so that both sides get the same number of trials:

    * ``standardised``: the images as the encoder receives them (per-channel mean/std), flattened;
    * ``[0, 1]``: that undone;
    * ``per-pixel z``: every pixel standardised by its own mean and std over ``train_images`` (the
      training images, no labels; default ``images`` themselves), the usual preprocessing of pixels;
    * ``half``, ``half per-pixel z``: the same two at half the resolution (2x2 means: a blur that
      nearest neighbours on pixels often prefer)."""
    def unit(x):
        m = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        sd = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        return x.float() * sd + m

    def half(x):
        return torch.nn.functional.avg_pool2d(x, 2, ceil_mode=True) if min(x.shape[-2:]) >= 2 else x

    def per_pixel(x, ref):
        ref = ref.flatten(1)
        return (x.flatten(1) - ref.mean(0)) / ref.std(0).clamp_min(1e-6)

    x = images.float()
    ref = x if train_images is None else train_images.float()
    return {"standardised": x.flatten(1), "[0, 1]": unit(x).flatten(1), "per-pixel z": per_pixel(x, ref),
            "half": half(x).flatten(1), "half per-pixel z": per_pixel(half(x), half(ref))}


def crossover(points: dict, baseline: float, key: str = "acc") -> float | None:
    """The smallest budget (minutes) whose point beats ``baseline``, or None: ``points`` =
    {minutes: {key: accuracy, "verdict": ...}}; with verdicts, only a "better" counts."""
    for minutes in sorted(points, key=float):
        p = points[minutes]
        if p.get("verdict", "better") == "better" and p[key] > baseline:
            return float(minutes)
    return None


def compare(results: dict, a: str, b: str, resamples: int = 1000, seed: int = 0) -> list[dict]:
    """Row ``a`` against row ``b`` of {row name: :func:`evaluate_row` output}, per protocol and label budget
    both have: the difference with its paired interval (all labels: bootstrap over the test images; N per
    class: t interval over the same draws) and its verdict."""
    from .stats import draws_difference, paired_difference

    for name in (a, b):
        if name not in results:
            raise ValueError(f"no row {name!r} to compare; the rows are {list(results)}")
    ra, rb = results[a], results[b]
    out = [{"a": a, "b": b, "protocol": p, "labels_per_class": None,
            **paired_difference(r["correct"], rb["all"][p]["correct"], resamples, seed)}
           for p, r in ra["all"].items() if p in rb["all"]]
    for n, per in ra["scarce"].items():
        for p, draws in per.items():
            if p in rb["scarce"].get(n, {}):
                out.append({"a": a, "b": b, "protocol": p, "labels_per_class": int(n),
                            **draws_difference([d["acc"] for d in draws], [d["acc"] for d in rb["scarce"][n][p]])})
    return out


def summarise(results: dict, baseline: str = "raw_pixels", resamples: int = 1000, seed: int = 0) -> list[dict]:
    """Report rows from {row name: :func:`evaluate_row` output}: per row, protocol and label budget the
    test accuracy with its 95% interval, what was chosen and on how many labels, and the difference to
    ``baseline`` (same protocol) with its paired interval and verdict. Scarce budgets: mean +- std over
    the draws, the difference a t interval over the same draws."""
    from .stats import accuracy_interval, draws_difference, over_draws, paired_difference

    base = results.get(baseline)
    rows = []
    for name, res in results.items():
        for p, r in res["all"].items():
            ci = accuracy_interval(r["correct"], resamples, seed)
            row = {"encoder": name, "protocol": p, "labels_per_class": None, "accuracy": r["acc"],
                   "ci": [ci["lo"], ci["hi"]], "choice": r["choice"], "choice_acc": r["choice_acc"],
                   "labels_used": r["labels"]}
            if base is not None and name != baseline and p in base["all"]:
                row["vs_raw"] = paired_difference(r["correct"], base["all"][p]["correct"], resamples, seed)
            rows.append(row)
        for n, per in res["scarce"].items():
            for p, draws in per.items():
                accs = [d["acc"] for d in draws]
                st = over_draws(accs)
                row = {"encoder": name, "protocol": p, "labels_per_class": int(n), "accuracy": st["mean"],
                       "std": st["std"], "draws": accs, "choice": [d["choice"] for d in draws],
                       "choice_acc": [d["choice_acc"] for d in draws], "labels_used": draws[0]["labels"]}
                if base is not None and name != baseline and p in base["scarce"].get(n, {}):
                    row["vs_raw"] = draws_difference(accs, [d["acc"] for d in base["scarce"][n][p]])
                rows.append(row)
    return rows
