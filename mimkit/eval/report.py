"""Does pretraining pay off on *my* images? One report for one or more encoders on a labelled dataset.

Every encoder, **raw pixels** (the images as the encoder receives them, flattened: ``standardised`` or
``[0, 1]``, chosen like a pooling) and **the same recipe at random init** go through the same
protocols with the same choices (:mod:`mimkit.eval.protocols`): 20-NN, the BatchNorm + linear probe and
logistic regression, with all labels (choices on a per-class validation split, :mod:`mimkit.eval.splits`)
and with N labels per class (choices by folds inside the N x classes labels, several subset draws).
Fine-tuning when asked (``finetune_minutes``): each encoder for that many budget-true minutes, beside
the same ViT from scratch for those minutes plus the encoder's pretraining time.

Every accuracy carries a 95% interval and every difference to raw pixels a paired interval and a
verdict (:mod:`mimkit.eval.stats`). :func:`build_report` writes ``report.json`` (``rows``, ``splits``
with the class counts of every split and subset, ``encoders``, ``settings``), ``report.md``,
``report.png`` and ``neighbours.png`` (:mod:`mimkit.eval.render`); data from :mod:`mimkit.eval.folders`.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch

from . import render
from .folders import FMNIST_NAMES, ReportData, load_report_data, say  # noqa: F401  (re-exported)
from .protocols import (
    PROTOCOL_NAMES,
    RAW_LOGREG_MAX_DIMS,
    Settings,
    compare,
    evaluate_row,
    logreg_vectors,
    raw_vectors,
    summarise,
)
from .render import RANDOM, RAW, accuracy, find, report_table, verdict_table  # noqa: F401  (re-exported)

DEFAULT_LABELS_PER_CLASS = (10, 100)


def probe_settings(probe_epochs: int = 50, **changes) -> Settings:
    """The protocols' settings with the probe's epochs as ``mimkit report --probe-epochs`` sets them:
    ``probe_epochs`` with all labels and at most four times as many on small label sets (the defaults,
    50 and 200, are :class:`Settings`' own, so a default run's rows keep their keys)."""
    epochs = int(probe_epochs)
    if epochs < 1:
        raise ValueError(f"the probe needs at least 1 epoch, got {probe_epochs!r}")
    return replace(Settings(**changes), probe_epochs=epochs, max_probe_epochs=4 * epochs)


@dataclass
class ReportConfig:
    """Everything a report can be asked, beside the checkpoints, the data and the output folder."""
    names: list | None = None
    labels_per_class: list | None = None  # None: 10 and 100, those every class can supply
    seed: int = 0
    pool: str = "auto"  # auto: every pooling the encoder offers, chosen per protocol
    draws: int = 3  # scarce subsets per N
    settings: Settings = field(default_factory=Settings)
    val_fraction: float | None = None  # None: a sixth of every class, at most 10k images in all
    finetune_minutes: float | None = None
    finetune_trial_fraction: float = 0.1  # each recipe trial runs this share of its side's minutes (0: no search)
    finetune_flip_choice: bool = True  # flip averaging at scoring chosen on the chosen trial's own weights, per side
    pairs: list | None = None  # [(row a, row b), ...]: also compare these rows with each other (paired intervals)
    pretrain_minutes: object = None  # a number, or one per checkpoint (default: read from the run directory)
    finetune_batch_size: int = 128
    test_fraction: float = 0.2
    limit: int | None = None
    test_limit: int | None = None
    mean: object = None
    std: object = None
    root: object = None
    device: object = None
    batch_size: int = 512
    neighbours: int = 12
    resamples: int = 1000
    cache_dir: object = None  # keep every row's results here and reuse them (long benchmarks resume)
    reuse_rows: object = None  # a read-only folder of rows to reuse when their key matches (committed baselines)
    progress: bool = True
    trust_checkpoint: bool = False


def random_init_like(model, seed: int = 0):
    """The same recipe as ``model`` (its recorded mimkit config), freshly initialised with ``seed``."""
    from ..registry import build_from_config

    cfg = getattr(model, "mimkit_config", None)
    if not cfg:
        raise ValueError(f"{type(model).__name__} records no mimkit config, so its random init cannot be rebuilt")
    with torch.random.fork_rng():
        torch.manual_seed(int(seed))
        return build_from_config(dict(cfg)).eval()


# ---- encoders -------------------------------------------------------------------------------------
def checkpoint_name(spec) -> str:
    """A short name for a checkpoint spec: the run (or model) directory's name, the file's stem, the recipe."""
    s = str(spec)
    for prefix in ("recipe:", "hf:", "timm:"):
        if s.startswith(prefix):
            s = s[len(prefix):]
            return Path(s.rstrip("/")).name if prefix != "recipe:" else s
    p = Path(s.rstrip("/"))
    if p.name == "model" or (p.suffix and p.parent.name in ("model", "checkpoints")):
        p = p.parent.parent if p.parent.name in ("model", "checkpoints") else p.parent
        return p.name
    return p.stem if p.suffix else p.name


def _model_dir(spec) -> str:
    """A run directory's ``model/`` (safetensors, the final weights) when it has one, else the spec as given."""
    p = Path(str(spec))
    if ":" not in str(spec)[:6] and p.is_dir() and (p / "model" / "model.safetensors").exists():
        return str(p / "model")
    return str(spec)


def pretrain_minutes_of(spec) -> float | None:
    """Pretraining wall time of a mimkit run directory, from its files: ``config.yaml`` (written when
    training starts) to ``model/model.safetensors`` (written when it ends). None when unknown."""
    p = Path(str(spec))
    run = p.parent if p.name == "model" else p
    start, end = run / "config.yaml", run / "model" / "model.safetensors"
    if start.exists() and end.exists() and end.stat().st_mtime > start.stat().st_mtime:
        return round((end.stat().st_mtime - start.stat().st_mtime) / 60, 2)
    return None


def _unique(names: list[str]) -> list[str]:
    seen: Counter = Counter()
    out = []
    for n in names:
        seen[n] += 1
        out.append(n if seen[n] == 1 else f"{n}-{seen[n]}")
    return out


class _Clock:  # named wall times, printed as they finish
    def __init__(self, progress: bool):
        self.walls: dict[str, float] = {}
        self.progress = progress

    def __call__(self, name: str):
        clock = self

        class _T:
            def __enter__(self):
                self.t = time.time()
                say(f"== {name} ==", clock.progress)

            def __exit__(self, *exc):
                clock.walls[name] = round(time.time() - self.t, 1)
                say(f"   ({clock.walls[name]:.1f} s)", clock.progress)
        return _T()


def _shown(spec) -> str:  # a path as a report records it: relative to the current directory when inside it
    p = Path(str(spec))
    return str(p.resolve().relative_to(Path.cwd())) if ":" not in str(spec)[:6] and p.resolve().is_relative_to(Path.cwd()) else str(spec)


# the code a row's numbers come from: a cached row is reused only while these files are unchanged
EVAL_CODE = ("protocols", "knn", "linear", "classifier", "features", "splits", "trials", "folders", "data")


def eval_code_id() -> str:
    h = hashlib.sha256()
    for name in EVAL_CODE:
        h.update((Path(__file__).parent / f"{name}.py").read_bytes())
    return h.hexdigest()[:16]


def _row_key(name: str, source: str, data: str, cfg: ReportConfig, extra: str) -> str:
    s = asdict(cfg.settings)
    what = json.dumps([name, source, data, cfg.seed, cfg.draws, cfg.val_fraction, cfg.limit, cfg.test_limit,
                       sorted(cfg.labels_per_class or []), s, extra, eval_code_id()], default=str, sort_keys=True)
    return hashlib.sha256(what.encode()).hexdigest()[:16]


def row_file(name: str, key: str) -> str:
    return f"{''.join(c if c.isalnum() or c in '-_.' else '_' for c in name)}-{key}.pt"


def _cached(cache_dir, name: str, key: str, compute, reuse=None, said=lambda msg: None):
    """``compute()``, or its saved result when ``cache_dir`` (or the read-only ``reuse``) holds one with the
    same key (tensors and plain values only: read with ``weights_only=True``). Computed rows go to ``cache_dir``."""
    for d in (cache_dir, reuse):
        if d is not None and (Path(d) / row_file(name, key)).exists():
            said(f"   reusing the evaluated row {_shown(Path(d) / row_file(name, key))} (same data, settings, weights "
                 "and evaluation code)")
            return torch.load(Path(d) / row_file(name, key), map_location="cpu", weights_only=True)
    out = compute()
    if cache_dir is not None:
        from ..files import atomic_write

        path = Path(cache_dir) / row_file(name, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: torch.save(out, tmp))
    return out


def _source_id(spec, model) -> str:
    """What identifies an encoder's weights for the cache: the SHA-256 of its weights file (so a committed
    cache is reused from a fresh clone, where paths and times differ), else of its parameters and buffers
    (the random init: a change to how a recipe initialises makes a new row), with its recipe."""
    p = Path(_model_dir(spec)) if isinstance(spec, (str, Path)) else None
    f = p / "model.safetensors" if p is not None and p.is_dir() else p
    h = hashlib.sha256()
    if f is not None and f.is_file():
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        return f"sha256:{h.hexdigest()}"
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        _hash_tensor(h, v)
    return f"sha256:{h.hexdigest()}:" + json.dumps(getattr(model, "mimkit_config", None), default=str, sort_keys=True)


def _hash_tensor(h, t: torch.Tensor) -> None:
    h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())


def _data_id(data, rd, cfg: ReportConfig) -> str:
    """What identifies the images for the cache: the built-in Fashion-MNIST by its name (its files are fixed),
    anything else (a folder, whose files may change under the same path; other mean / std) by the SHA-256 of
    the images and labels exactly as the encoders receive them."""
    if str(data) == "fashion_mnist" and cfg.mean is None and cfg.std is None and cfg.root is None:
        return str(data)
    h = hashlib.sha256()
    for t in (rd.train.images, rd.train.labels, rd.test.images, rd.test.labels):
        _hash_tensor(h, torch.as_tensor(t))
    return f"{data}:sha256:{h.hexdigest()}"


def build_report(checkpoints, data: str = "fashion_mnist", out_dir=None, config: ReportConfig | None = None,
                 **options) -> dict:
    """The report of ``checkpoints`` (specs as ``--checkpoint`` takes them, or loaded models) on ``data``
    (``fashion_mnist`` or a labelled ImageFolder); ``config`` (or its fields as keywords) says the rest.
    Writes ``report.json``, ``report.md``, ``report.png`` and ``neighbours.png`` to ``out_dir`` when given;
    returns the report dict."""
    from .data import load_model_spec, model_input
    from .features import check_pool, extract_features, frozen_pools
    from .splits import class_counts, scarce_subsets, validation_split

    known = {f.name for f in fields(ReportConfig)}
    bad = sorted(set(options) - known)
    if bad:
        raise TypeError(f"build_report got unknown option(s) {bad}; see ReportConfig")
    cfg = replace(config or ReportConfig(), **options)
    if cfg.finetune_minutes is not None and not cfg.finetune_minutes > 0:
        raise ValueError(f"--finetune-minutes must be > 0, got {cfg.finetune_minutes}")
    if not 0 <= cfg.finetune_trial_fraction <= 1:
        raise ValueError(f"--finetune-trial-fraction must lie in [0, 1], got {cfg.finetune_trial_fraction}")
    if int(cfg.draws) < 1:
        raise ValueError(f"--draws must be at least 1, got {cfg.draws}")
    s = replace(cfg.settings, seed=cfg.seed)
    t_start, clock = time.time(), _Clock(cfg.progress)
    checkpoints = list(checkpoints) if isinstance(checkpoints, (list, tuple)) else [checkpoints]
    if not checkpoints:
        raise ValueError("a report needs at least one --checkpoint")
    models = [load_model_spec(_model_dir(c), cfg.trust_checkpoint) if isinstance(c, (str, Path)) else c
              for c in checkpoints]
    names = _unique(list(cfg.names) if cfg.names else [checkpoint_name(c) if isinstance(c, (str, Path))
                                                       else getattr(m, "mimkit_config", {}).get("recipe", f"encoder{i}")
                                                       for i, (c, m) in enumerate(zip(checkpoints, models))])
    if len(names) != len(models):
        raise ValueError(f"{len(names)} names for {len(models)} checkpoints")
    if any(n in (RAW, RANDOM) for n in names):
        raise ValueError(f"{RAW!r} and {RANDOM!r} name the baselines; rename the checkpoint")
    auto = cfg.pool == "auto"
    for m in models:
        if not auto:
            check_pool(m, cfg.pool)
    if len({model_input(m) for m in models}) > 1:
        raise ValueError(f"the checkpoints take different inputs {sorted({model_input(m) for m in models})} (size, "
                         "channels); report them separately, so that raw pixels and every encoder see the same images")
    pm = cfg.pretrain_minutes
    pre = (list(pm) if isinstance(pm, (list, tuple)) else
           [pm if pm is not None else (pretrain_minutes_of(c) if isinstance(c, (str, Path)) else None) for c in checkpoints])
    notes: list[str] = []

    with clock("data"):
        rd = load_report_data(data, models[0], test_fraction=cfg.test_fraction, seed=cfg.seed, limit=cfg.limit,
                              test_limit=cfg.test_limit, mean=cfg.mean, std=cfg.std, root=cfg.root, progress=cfg.progress)
        info, nc = rd.info, rd.num_classes
        ytr, yte = rd.train.labels.long(), rd.test.labels.long()
        missing = [c for c, k in info["test_per_class"].items() if k == 0]
        if missing:
            raise ValueError(f"the test set has no readable image of class(es) {missing}; add some, or remove the class")
        frac = cfg.val_fraction or min(1 / 6, 10000 / len(ytr))
        fit, val = validation_split(ytr, frac, cfg.seed)
        fewest = min(class_counts(ytr, fit, rd.classes).values())
        sizes = sorted({int(n) for n in (DEFAULT_LABELS_PER_CLASS if cfg.labels_per_class is None else cfg.labels_per_class)})
        if cfg.labels_per_class is None and any(n > fewest for n in sizes):
            notes.append(f"scarce-label budget(s) {[n for n in sizes if n > fewest]} per class left out: the smallest "
                         f"class has {fewest} training images outside the validation split")
            sizes = [n for n in sizes if n <= fewest]
        subsets = {n: scarce_subsets(ytr, fit, n, cfg.draws, cfg.seed, rd.classes) for n in sizes}
        splits = {"validation": {"images": len(val), "per_class": class_counts(ytr, val, rd.classes)},
                  "fit": {"images": len(fit), "per_class": class_counts(ytr, fit, rd.classes)},
                  "scarce": {str(n): {"images": len(d[0]), "draws": [class_counts(ytr, r, rd.classes) for r in d]}
                             for n, d in subsets.items()}}
        say(f"   {info['train_images']} train / {info['test_images']} test images, {nc} classes; validation {len(val)} "
             f"images drawn per class; scarce subsets {sizes} per class x {cfg.draws} draws", cfg.progress)

    results, vectors, encoders = {}, {}, {}
    data_id = _data_id(data, rd, cfg) if cfg.cache_dir is not None or cfg.reuse_rows is not None else str(data)

    def run_row(name: str, source: str, make_vectors) -> None:
        # raw pixels' logistic regression keeps every vector up to a memory-safe width (all five for images up to
        # 128x128), so the baseline is not cut to fewer trials by the limit meant for an encoder's token map
        rs = s if name != RAW or s.logreg_max_dims is None else replace(
            s, logreg_max_dims=max(s.logreg_max_dims, RAW_LOGREG_MAX_DIMS))
        with clock(f"{name}: " + ", ".join(PROTOCOL_NAMES[p] for p in s.protocols)):
            tr, te = make_vectors()
            vectors[name] = (tr, te)
            extra = ",".join(sorted(tr))
            if name == RAW and "logreg" in s.protocols and len(logreg_vectors(tr, rs)) < len(tr):
                extra += f"|logreg<={rs.logreg_max_dims}"  # (the key changes only where the limit bites)
                notes.append(f"raw_pixels: logistic regression left out the preprocessings wider than "
                             f"{rs.logreg_max_dims} numbers (memory), so it had fewer trials than 20-NN and the probe")
            key = _row_key(name, source, data_id, cfg, extra)
            results[name] = _cached(cfg.cache_dir, name, key, lambda: evaluate_row(
                tr, ytr, te, yte, fit_rows=fit, val_rows=val, subsets=subsets, num_classes=nc, s=rs,
                progress=lambda msg: say(f"   {msg}", cfg.progress)), cfg.reuse_rows, lambda m: say(m, cfg.progress))
            notes.extend(f"{name}: {n}" for n in dict.fromkeys(results[name]["notes"]))

    run_row(RAW, "raw", lambda: (raw_vectors(rd.train.images, rd.mean, rd.std),
                                 raw_vectors(rd.test.images, rd.mean, rd.std, rd.train.images)))
    try:
        init = random_init_like(models[0], cfg.seed)
    except ValueError as e:
        init = None
        say(f"   (no random-init baseline: {e})", cfg.progress)
    todo = ([(RANDOM, init, None)] if init is not None else []) + list(zip(names, models, checkpoints))
    for name, model, spec in todo:
        how = frozen_pools(model) if auto else cfg.pool

        def feats(model=model, how=how, name=name):
            ftr, _ = extract_features(model, rd.train, how, cfg.batch_size, cfg.device, 0, cfg.progress, f"{name} train")
            fte, _ = extract_features(model, rd.test, how, cfg.batch_size, cfg.device, 0, cfg.progress, f"{name} test")
            return (ftr, fte) if isinstance(ftr, dict) else ({how: ftr}, {how: fte})
        run_row(name, _source_id(spec, model), feats)  # the random init: its recipe and config
        c = getattr(model, "mimkit_config", None) or {}
        encoders[name] = {"recipe": c.get("recipe"), "source": None if spec is None else
                          (_shown(spec) if isinstance(spec, (str, Path)) else "model"),
                          "feature_dims": {k: int(v.shape[1]) for k, v in vectors[name][0].items()},
                          "pretrain_minutes": None if spec is None else pre[names.index(name)]}
    rows = summarise(results, RAW, cfg.resamples, cfg.seed)
    pairs = [c for a, b in (cfg.pairs or []) for c in compare(results, a, b, cfg.resamples, cfg.seed)]
    ft = (_finetune_rows(cfg, rd, names, models, init, pre, (fit, val), subsets, rows, clock, notes)
          if cfg.finetune_minutes else None)
    report = {"rows": rows, "data": info, "splits": splits, "encoders": encoders, "labels_per_class": sizes,
              "seed": cfg.seed, "pool": cfg.pool, "draws": cfg.draws, "resamples": cfg.resamples,
              "settings": asdict(s), "notes": list(dict.fromkeys(notes)), "finetune": ft, "pairs": pairs,
              "protocols": _protocol_text(s, cfg, len(val), ft),
              "device": str(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")),
              "threads": torch.get_num_threads(), "wall_seconds": clock.walls}
    if out_dir is not None:
        _write(report, Path(out_dir), rd, names, results, vectors, cfg, clock)
    report["wall_seconds"]["total"] = round(time.time() - t_start, 1)
    if out_dir is not None:
        (Path(out_dir) / "report.json").write_text(json.dumps(report, indent=2, default=str))
    return report


def _protocol_text(s: Settings, cfg: ReportConfig, n_val: int, ft) -> dict:
    return {
        "knn": f"{s.k}-NN: L2-normalised vectors, cosine similarity, votes weighted by exp(sim / 0.07)",
        "linear": f"BatchNorm1d(affine=False) + Linear on cached vectors, SGD, base lr chosen from {list(s.blrs)}, "
                  f"{s.probe_epochs} epochs with all labels (more on small sets, at most {s.max_probe_epochs})",
        "logreg": f"scikit-learn logistic regression (lbfgs, {s.logreg_iters} iterations) on standardised vectors, C "
                  f"chosen from {list(s.cs)}",
        "best_linear": "of the probe and logistic regression, the one with the higher accuracy on the choice data",
        "choices": (f"all labels: every setting (vector x lr / C) scored on a validation split of {n_val} training "
                    "images drawn per class, the best fitted on all training images, the test set read once; N labels "
                    f"per class: scored by {s.folds}-fold cross-validation inside the N x classes labels, fitted on them, "
                    f"tested, over {cfg.draws} subset draws (the same for every row)"),
        "raw_pixels": "the images flattened, five preprocessings chosen like an encoder's five poolings: "
                      "'standardised' (exactly as the encoder receives them), '[0, 1]', 'per-pixel z' (each pixel "
                      "standardised over the training images), and 'half' / 'half per-pixel z' (2x2 means); logistic "
                      f"regression tries all five up to {RAW_LOGREG_MAX_DIMS} numbers each (every preprocessing of "
                      f"images up to 128x128; an encoder's vectors wider than {s.logreg_max_dims} numbers are left out "
                      "of it)",
        "finetune": (f"whole encoder + head for {cfg.finetune_minutes:g} budget-true minutes each (AdamW, drop path, "
                     "label smoothing 0.1, random resized crop + flip); random_init = the same ViT from scratch for "
                     f"{ft['scratch_minutes']:g} min; " + (
                         "the recipe of every side chosen by the same trials (base: blr 2e-3, layer decay 0.75 or none "
                         "from scratch; blr 4e-3; layer decay 0.9 or no drop path from scratch; mixup 0.8 + cutmix 1.0), "
                         f"each {cfg.finetune_trial_fraction:g} of the side's minutes, fitted outside the validation split "
                         "and scored on it (N labels per class: a per-class fifth of the first draw's labels), the test "
                         "set read once by the chosen recipe" if cfg.finetune_trial_fraction else
                         "one fixed recipe for every side (blr 2e-3, layer decay 0.75, none from scratch)")) if ft else None,
        "intervals": f"95% bootstrap over test images ({cfg.resamples} resamples, paired for differences); scarce "
                     f"labels: mean +- std over {cfg.draws} draws, differences a t interval over the draws",
    }


def _finetune_rows(cfg, rd, names, models, init, pre, split, subsets, rows, clock, notes) -> dict:
    """Fine-tune every encoder for ``finetune_minutes`` per label budget and draw, and the random init
    from scratch for those minutes plus the longest pretraining time; rows with paired intervals
    against the scratch run on the same labels. Each side's recipe is first chosen by the same number of
    trials (:func:`mimkit.eval.finetune.tune_finetune`, each ``finetune_trial_fraction`` of the side's
    minutes): with all labels on the report's validation split, with N labels per class on a per-class
    fifth of the first draw's N x classes labels (those labels only); the chosen recipe then fits every
    draw of that budget, and the test set is read once per run. With ``finetune_flip_choice`` flip averaging at
    scoring is chosen too, on the chosen trial's own weights scored both ways (no extra trial, either side)."""
    from .finetune import (
        BASE_LAYER_DECAY,
        FINETUNE_TRIALS,
        choice_sets,
        finetune_augmented,
        finetune_for_minutes,
        tune_finetune,
    )
    from .splits import validation_split
    from .stats import accuracy_interval, draws_difference, over_draws, paired_difference

    known = [p for p in pre if p is not None]
    scratch = cfg.finetune_minutes + (max(known) if known else 0.0)
    if not known:
        notes.append("fine-tune: no pretraining time known for the scratch budget (pass --pretrain-minutes)")
    train_aug = finetune_augmented(rd)
    budgets = [(None, [torch.arange(len(rd.train))])] + list(subsets.items())
    got: dict = {}
    tuned: dict = {}
    side = list(zip(names, models)) + ([(RANDOM, init)] if init is not None else [])
    frac = float(cfg.finetune_trial_fraction)
    for n, draws in budgets:
        choice = None
        if frac > 0 and (n is None or n >= 2):
            fit, val = split
            if n is not None:  # those N x classes labels only
                fit, val = validation_split(rd.train.labels[draws[0]], 0.2, cfg.seed)
                fit, val = draws[0][fit], draws[0][val]
            choice = choice_sets(rd, fit, val)
        elif frac > 0:
            notes.append(f"fine-tune: {n} label per class leaves nothing to choose a recipe on; the untuned one is used")
        for name, model in side:
            kind = "scratch" if name == RANDOM else "pretrained"
            minutes = scratch if name == RANDOM else cfg.finetune_minutes
            if choice is None:
                tuned[(name, n)] = {"chosen": {"trial": FINETUNE_TRIALS[kind][0][0],
                                               "recipe": {"layer_decay": BASE_LAYER_DECAY[kind]}}, "trials": []}
                continue
            with clock(f"{name}: {len(FINETUNE_TRIALS[kind])} recipe trials of {frac * minutes:.2g} min on validation, "
                       f"{'all labels' if n is None else f'{n}/class'}"):
                tuned[(name, n)] = tune_finetune(model, kind, choice[0], choice[1], rd.num_classes, frac * minutes,
                                                 batch_size=min(cfg.finetune_batch_size, len(choice[0])),
                                                 seed=cfg.seed, progress=cfg.progress,
                                                 choose_flip=cfg.finetune_flip_choice)
        for d, rows_d in enumerate(draws):
            sub = train_aug if n is None else torch.utils.data.Subset(train_aug, rows_d.tolist())
            bs = min(cfg.finetune_batch_size, len(sub))
            for name, model in side:
                minutes = scratch if name == RANDOM else cfg.finetune_minutes
                recipe = tuned[(name, n)]["chosen"]["recipe"]
                with clock(f"{name}: {'from scratch' if name == RANDOM else 'fine-tune'} {minutes:g} min, "
                           f"{'all labels' if n is None else f'{n}/class, draw {d}'}"):
                    r = finetune_for_minutes(model, sub, rd.test, rd.num_classes, minutes, batch_size=bs,
                                             seed=cfg.seed + d, progress=cfg.progress, **recipe)
                got.setdefault((name, n), []).append(r)
    for (name, n), rs in got.items():
        base = got.get((RANDOM, n))
        chosen = tuned[(name, n)]["chosen"]
        row = {"encoder": name, "protocol": "finetune", "labels_per_class": n, "labels_used": len(rs[0]["correct"]) and
               (len(rd.train) if n is None else n * rd.num_classes),
               "choice": chosen["trial"], "choice_acc": chosen.get("val_acc"), "recipe": chosen["recipe"],
               "minutes": [r["minutes"] for r in rs], "steps": [r["steps"] for r in rs]}
        if n is None:
            ci = accuracy_interval(rs[0]["correct"], cfg.resamples, cfg.seed)
            row.update(accuracy=ci["acc"], ci=[ci["lo"], ci["hi"]])
            if base and name != RANDOM:
                row["vs_scratch"] = paired_difference(rs[0]["correct"], base[0]["correct"], cfg.resamples, cfg.seed)
        else:
            st = over_draws([r["acc"] for r in rs])
            row.update(accuracy=st["mean"], std=st["std"], draws=[r["acc"] for r in rs])
            if base and name != RANDOM:
                row["vs_scratch"] = draws_difference([r["acc"] for r in rs], [r["acc"] for r in base])
        rows.append(row)
    return {"minutes_per_run": cfg.finetune_minutes, "scratch_minutes": round(scratch, 2),
            "batch_size": cfg.finetune_batch_size, "drop_path": 0.1, "label_smoothing": 0.1,
            "trial_fraction": frac, "flip_choice": bool(frac and cfg.finetune_flip_choice), "trials_per_side": {k: len(v) for k, v in FINETUNE_TRIALS.items()} if frac else 0,
            "recipes": {name: {("all" if n is None else str(n)): t for (nm, n), t in tuned.items() if nm == name}
                        for name, _ in side}}


def _write(report, out_dir: Path, rd, names, results, vectors, cfg, clock) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    pics = {}
    with clock("pictures"):
        try:
            pics["report"] = str(render.plot_report(report, out_dir / "report.png"))
            raw_pick = results[RAW]["all"]["knn"]["choice"]
            raw = (vectors[RAW][0][raw_pick], vectors[RAW][1][raw_pick])
            for i, name in enumerate(names):
                pick = results[name]["all"]["knn"]["choice"]
                file = "neighbours.png" if i == 0 else f"neighbours_{render._safe(name)}.png"
                pics[f"neighbours:{name}"] = str(render.plot_neighbours(
                    rd, (vectors[name][0][pick], vectors[name][1][pick]), raw, name, out_dir / file, cfg.neighbours, cfg.seed))
        except Exception as e:  # noqa: BLE001 - never lose the numbers for a picture
            say(f"   (pictures failed: {type(e).__name__}: {e})", True)
    report["pictures"] = {k: Path(v).name for k, v in pics.items()}
    (out_dir / "report.md").write_text(render.report_markdown(report) + "\n")


def report_after_training(run_dir, cfg: dict) -> dict | None:
    """``run.report=DATA`` at the end of ``mimkit pretrain``: the report of ``run_dir/model`` on DATA,
    written to ``run_dir/report``. An error is one printed line; the trained run is kept either way."""
    import sys

    run_dir = Path(run_dir)
    d = cfg.get("data", {})
    try:
        lim, protos = cfg["run"].get("report_limit"), cfg["run"].get("report_protocols")
        epochs = cfg["run"].get("report_probe_epochs") or Settings.probe_epochs
        options = {"settings": probe_settings(epochs, **({"protocols": tuple(protos)} if protos else {}))}
        report = build_report([run_dir / "model"], cfg["run"]["report"], run_dir / "report", names=[run_dir.name],
                              limit=lim, test_limit=lim, **options, pairs=[(run_dir.name, RANDOM)],
                              reuse_rows=cfg["run"].get("report_rows"), cache_dir=run_dir / "report" / "rows",
                              seed=int(cfg["run"].get("seed") or 0), mean=d.get("mean"), std=d.get("std"),
                              progress=bool(cfg.get("trainer", {}).get("enable_progress_bar", True)))
    except (ValueError, FileNotFoundError, TypeError, KeyError) as e:
        print(f"mimkit pretrain: report: error: {e} (the trained model is in {run_dir / 'model'}; run `mimkit report "
              f"--checkpoint {run_dir}` once fixed)", file=sys.stderr, flush=True)
        return None
    print(report_table(report), flush=True)
    print(verdict_table(report), flush=True)
    print("\n".join(render.pair_lines(report, run_dir.name, RANDOM)), flush=True)  # "against random init, ..."
    print(f"mimkit: report {run_dir / 'report' / 'report.md'} (report.png, neighbours.png)", flush=True)
    return report
