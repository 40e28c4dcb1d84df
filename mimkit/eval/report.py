"""Does pretraining pay off on *my* images? One report for one or more encoders on a labelled dataset.

For every encoder and, always beside them, **raw pixels** (the images exactly as the encoder receives
them: resized, centre-cropped, normalised, then flattened) and **the same recipe at random init**:

* 20-NN (:func:`mimkit.eval.knn.knn_accuracy`: cosine, votes weighted by exp(sim / 0.07)) and the
  linear probe (:func:`mimkit.eval.linear.fit_linear_probe`: BatchNorm(affine=False) + Linear on cached
  features) with all labels and with each scarce-label size (:func:`mimkit.eval.data.balanced_indices`,
  fixed by ``seed``). Raw pixels get the 20-NN and scikit-learn's logistic regression (lbfgs, C=1,
  100 iterations), the linear baseline ``benchmarks/fmnist_quality.py`` has always used (the probe
  when scikit-learn is not installed);
* fine-tuning when asked (``finetune_minutes``): each encoder for that many minutes
  (:func:`mimkit.eval.finetune.finetune`), and the random init trained from scratch for the same
  wall time plus the encoder's pretraining time (the equal-time scratch baseline).

:func:`build_report` writes ``report.json`` (``rows``: ``{encoder, protocol, labels_per_class,
accuracy, ...}``), ``report.md``, ``report.png`` (accuracy per protocol and label budget, a bar per
encoder, raw pixels as a line) and ``neighbours.png`` (test images with their nearest training
images under the encoder and under raw pixels). Data: ``fashion_mnist`` or any labelled ImageFolder
(``train/`` + ``test/`` or ``val/``; or one folder of class sub-folders split by ``test_fraction``).
"""
from __future__ import annotations

import json
import math
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

DEFAULT_LABELS_PER_CLASS = (10, 100)
PROTOCOLS = ("knn", "linear", "finetune")
PROTOCOL_NAMES = {"knn": "20-NN", "linear": "linear probe", "finetune": "fine-tune"}
RAW, RANDOM = "raw_pixels", "random_init"
FMNIST_NAMES = ("fashion_mnist", "fmnist", "fashion-mnist")


def _say(msg: str, progress: bool = True) -> None:
    if progress:
        print(msg, flush=True)


# ---- data -----------------------------------------------------------------------------------------
@dataclass
class ReportData:
    """Labelled train/test images exactly as the encoder receives them (float tensors, already
    resized and normalised), with what the report says about them."""
    train: object  # mimkit.data.TensorImages
    test: object
    classes: list
    info: dict = field(default_factory=dict)
    mean: tuple = ()
    std: tuple = ()

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def _check_class_folders(folder: Path, role: str) -> None:
    from torchvision.datasets.folder import IMG_EXTENSIONS

    if not _class_dirs(folder):
        has_images = any(f.suffix.lower() in IMG_EXTENSIONS for f in folder.iterdir() if f.is_file())
        raise ValueError(
            f"{folder} has no class sub-folders ({'it holds images directly' if has_images else 'it is empty'}); "
            f"a report needs labels: put each class's images in its own sub-folder, {folder}/<class name>/*.png"
            + (" (or train/ and test/ folders with the same class sub-folders)" if role == "data" else ""))


def _scan(folder: Path, chans: int):
    """(samples [(path, label)], classes) of an ImageFolder, without reading any image."""
    from ..data import SafeImageFolder

    ds = SafeImageFolder(folder, None, chans)
    return list(ds.samples), list(ds.classes), ds


def _read(samples, ds, tf, desc: str, progress: bool):
    """Decode and transform every image; unreadable files are counted and skipped (as in training).
    Returns (images (N, C, S, S) float, labels (N,), skipped paths, original sizes Counter)."""
    from tqdm.auto import tqdm

    xs, ys, bad, sizes = [], [], [], Counter()
    for path, label in tqdm(samples, desc=desc, disable=not progress, leave=False):
        try:
            img = ds.load(path)
        except Exception as e:  # noqa: BLE001 - any decoder error means "unreadable"
            bad.append((str(path), f"{type(e).__name__}: {e}"))
            continue
        sizes[img.size] += 1
        xs.append(tf(img))
        ys.append(label)
    if not xs:
        raise ValueError(f"none of the {len(samples)} images ({desc}) can be read (e.g. {bad[0][0]}: {bad[0][1]}); "
                         "check the files")
    return torch.stack(xs), torch.tensor(ys, dtype=torch.long), bad, sizes


def _stratified_split(labels: list[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Per-class split with a fixed seed: round(fraction * n) test images per class (at least 1, and
    at least 1 left for training)."""
    if not 0 < fraction < 1:
        raise ValueError(f"--test-fraction must be in (0, 1), got {fraction}")
    g = torch.Generator().manual_seed(int(seed))
    lab = torch.tensor(labels)
    train, test = [], []
    for c in lab.unique().tolist():
        idx = (lab == c).nonzero().squeeze(1)
        idx = idx[torch.randperm(len(idx), generator=g)]
        k = min(max(1, round(fraction * len(idx))), len(idx) - 1)
        test += idx[:k].tolist()
        train += idx[k:].tolist()
    return sorted(train), sorted(test)


def _subsample(samples, limit, seed):
    if not limit or limit >= len(samples):
        return samples
    g = torch.Generator().manual_seed(int(seed))
    keep = sorted(torch.randperm(len(samples), generator=g)[: int(limit)].tolist())
    return [samples[i] for i in keep]


def _check_classes_match(train_classes, test_classes, train_dir, test_dir) -> None:
    if list(train_classes) != list(test_classes):
        only_tr = sorted(set(train_classes) - set(test_classes))
        only_te = sorted(set(test_classes) - set(train_classes))
        raise ValueError(f"{train_dir} and {test_dir} hold different classes (only in {Path(train_dir).name}/: "
                         f"{only_tr or 'none'}; only in {Path(test_dir).name}/: {only_te or 'none'}); both need the same "
                         "class sub-folders")


def load_report_data(data: str, model, *, test_fraction: float = 0.2, seed: int = 0, limit: int | None = None,
                     test_limit: int | None = None, mean=None, std=None, root=None, progress: bool = True,
                     max_bytes: int = 8 << 30) -> ReportData:
    """The labelled train/test sets of a report, as ``model`` receives them: ``data`` =
    'fashion_mnist' (the real 60k/10k split, :func:`mimkit.eval.data.eval_dataset`) or an ImageFolder
    directory: ``train/`` + ``test/`` (or ``val/``) sub-folders, or one folder of class sub-folders
    split per class by ``test_fraction`` with ``seed``. Images of any size and mode are converted to
    the model's channels, resized (shorter side) and centre-cropped to its input and normalised.
    ``limit`` / ``test_limit``: the first N Fashion-MNIST images, or N images drawn with ``seed`` from a folder."""
    from ..data import TensorImages, default_stats
    from .data import dataset_labels, eval_dataset, image_transform, model_input, pretransform

    size, chans = model_input(model)
    fmnist = str(data) in FMNIST_NAMES
    d_mean, d_std = default_stats("fashion_mnist" if fmnist else "image_folder", chans)
    m, s = list(mean or d_mean), list(std or d_std)
    if len(m) == 1 and chans > 1:
        m, s = m * chans, s * chans
    if len(m) != chans or len(s) != chans:
        raise ValueError(f"mean/std need {chans} values (one per model input channel), got {m} / {s}")
    if fmnist:
        sets = []
        for split, lim in (("train", limit), ("test", test_limit)):
            ds, classes = eval_dataset("fashion_mnist", split, model, limit=lim, mean=m, std=s, root=root)
            if ds.transform is not None:  # too big for eval_dataset's in-memory copy: materialise within max_bytes
                ready = pretransform(ds.images, ds.transform, chans, size, max_bytes)
                if ready is None:
                    raise ValueError(f"{len(ds)} images at {chans}x{size}x{size} do not fit in "
                                     f"{max_bytes / 2**30:.0f} GiB; use --limit / --test-limit")
                ds = TensorImages(ready, ds.labels)
            sets.append(ds)
        train, test = sets
        info = {"source": "fashion_mnist", "layout": "the real Fashion-MNIST split, 60k train / 10k test",
                "original_sizes": {"28x28": len(train) + len(test)}, "original_mode": "grayscale",
                "skipped_unreadable": 0}
    else:
        path = Path(data)
        if not path.is_dir():
            raise FileNotFoundError(f"--data {data!r} is neither 'fashion_mnist' nor a directory")
        tf = image_transform(size, m, s, False, (1.0, 1.0), False, chans, gray_source=False)
        if (path / "train").is_dir():
            from .data import folder_split

            tr_dir, te_dir = path / "train", folder_split(path, "test")
            _check_class_folders(tr_dir, "train")
            _check_class_folders(te_dir, "test")
            tr_samples, classes, tr_ds = _scan(tr_dir, chans)
            te_samples, te_classes, te_ds = _scan(te_dir, chans)
            _check_classes_match(classes, te_classes, tr_dir, te_dir)
            layout = f"{tr_dir.name}/ and {te_dir.name}/ sub-folders"
        else:
            _check_class_folders(path, "data")
            samples, classes, tr_ds = _scan(path, chans)
            te_ds = tr_ds
            if len(classes) >= 2:
                tr_rows, te_rows = _stratified_split([lab for _, lab in samples], test_fraction, seed)
            else:
                tr_rows, te_rows = list(range(len(samples))), []
            tr_samples, te_samples = [samples[i] for i in tr_rows], [samples[i] for i in te_rows]
            layout = f"one folder split per class: {test_fraction:g} of each class held out for testing (seed {seed})"
        if len(classes) < 2:
            raise ValueError(f"{path} holds only one class ({classes[0]!r}); a report compares how well features "
                             "separate classes, so it needs at least two class sub-folders")
        tr_samples, te_samples = _subsample(tr_samples, limit, seed), _subsample(te_samples, test_limit, seed)
        need = (len(tr_samples) + len(te_samples)) * chans * size * size * 4
        if need > max_bytes:
            raise ValueError(f"{len(tr_samples) + len(te_samples)} images at {chans}x{size}x{size} need "
                             f"{need / 2**30:.1f} GiB in memory (more than {max_bytes / 2**30:.0f} GiB); use --limit / "
                             "--test-limit to report on a sample")
        xtr, ytr, bad_tr, sz_tr = _read(tr_samples, tr_ds, tf, "reading train images", progress)
        xte, yte, bad_te, sz_te = _read(te_samples, te_ds, tf, "reading test images", progress)
        bad = bad_tr + bad_te
        if bad:
            warnings.warn(f"skipped {len(bad)} unreadable image(s) of {len(tr_samples) + len(te_samples)} "
                          f"(e.g. {bad[0][0]}: {bad[0][1]})", stacklevel=2)
            _say(f"   skipped {len(bad)} unreadable image(s) of {len(tr_samples) + len(te_samples)} (e.g. {bad[0][0]})",
                 progress)
        sizes = sz_tr + sz_te
        train, test = TensorImages(xtr, ytr), TensorImages(xte, yte)
        info = {"source": str(path), "layout": layout,
                "original_sizes": {f"{w}x{h}": n for (w, h), n in sizes.most_common(5)},
                "distinct_original_sizes": len(sizes),
                "original_mode": f"read as {'colour (RGB)' if chans == 3 else 'grayscale' if chans == 1 else f'{chans} channels'}",
                "skipped_unreadable": len(bad), "skipped_examples": [p for p, _ in bad[:5]]}
    ytr, yte = dataset_labels(train), dataset_labels(test)
    info.update({"classes": list(classes), "train_images": len(train), "test_images": len(test),
                 "train_per_class": {classes[c]: int((ytr == c).sum()) for c in range(len(classes))},
                 "test_per_class": {classes[c]: int((yte == c).sum()) for c in range(len(classes))},
                 "encoder_input": f"{chans}x{size}x{size}",
                 "preprocessing": f"converted to {chans} channel(s), shorter side resized to {size} (bicubic), "
                                  f"centre crop {size}x{size}, normalised with mean {m} std {s}"})
    return ReportData(train, test, list(classes), info, tuple(m), tuple(s))


def check_labels_per_class(data: ReportData, labels_per_class) -> None:
    """Every class needs at least max(``labels_per_class``) training images: a clear error naming the
    classes that have fewer."""
    if not labels_per_class:
        return
    for n in labels_per_class:
        if isinstance(n, bool) or int(n) < 1:
            raise ValueError(f"--labels-per-class takes positive integers, got {n!r}")
    top = max(int(n) for n in labels_per_class)
    short = {c: k for c, k in data.info["train_per_class"].items() if k < top}
    if short:
        worst = min(short.values())
        listed = ", ".join(f"{c!r} has {k}" for c, k in sorted(short.items(), key=lambda kv: kv[1]))
        raise ValueError(f"--labels-per-class {top} needs {top} training images in every class, but {listed}; "
                         f"use --labels-per-class of at most {worst}, or add images to those classes")
    missing = [c for c, k in data.info["test_per_class"].items() if k == 0]
    if missing:
        raise ValueError(f"the test set has no readable image of class(es) {missing}; add some, or remove the class")


def pixel_features(dataset, batch_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw pixels: each image exactly as the encoder receives it (the dataset's transform applied),
    flattened to (N, C*H*W) float32; and the labels."""
    from .data import dataset_labels

    if getattr(dataset, "transform", 1) is None and hasattr(dataset, "images") and dataset.images.is_floating_point():
        return dataset.images.flatten(1).float(), dataset_labels(dataset)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    xs, ys = zip(*[(x.flatten(1).float(), torch.as_tensor(y)) for x, y in loader])
    return torch.cat(xs), torch.cat(ys)


# ---- protocols ------------------------------------------------------------------------------------
def scarce_indices(labels, labels_per_class, seed: int = 0) -> dict[int, torch.Tensor]:
    """{N: balanced indices of N labels per class} (:func:`mimkit.eval.data.balanced_indices`, ``seed``)."""
    from .data import balanced_indices

    return {int(n): balanced_indices(labels, int(n), seed) for n in (labels_per_class or ())}


def frozen_protocols(ftr, ytr, fte, yte, num_classes: int, idx_by_n=None, *, probe_epochs: int = 50,
                     scarce_probe_epochs: int = 200, seed: int = 0, k: int = 20, progress: bool = False,
                     all_labels: bool = True) -> dict:
    """20-NN and linear probe on frozen features: ``{pool: {None | N: {"knn": acc, "linear": acc}}}``
    (``ftr`` / ``fte`` may be a tensor, then the pool is ``"features"``), on all training features
    (key None, ``probe_epochs``; skipped when ``all_labels`` is False) and on the rows ``idx_by_n[N]``
    (``max(probe_epochs, scarce_probe_epochs)``)."""
    from .knn import knn_accuracy
    from .linear import fit_linear_probe

    if isinstance(ftr, torch.Tensor):
        ftr, fte = {"features": ftr}, {"features": fte}
    out = {}
    for pool in ftr:
        out[pool] = {}
        for n, idx in [(None, None)] * all_labels + list((idx_by_n or {}).items()):
            x, y = (ftr[pool], ytr) if idx is None else (ftr[pool][idx], ytr[idx])
            acc_knn = knn_accuracy(x, y, fte[pool], yte, k=min(k, len(x)), num_classes=num_classes)
            _, info = fit_linear_probe(x, y, fte[pool], yte, num_classes=num_classes,
                                       epochs=probe_epochs if idx is None else max(probe_epochs, scarce_probe_epochs),
                                       seed=seed, progress=progress)
            out[pool][n] = {"knn": acc_knn, "linear": info["acc"]}
    return out


def has_sklearn() -> bool:
    try:
        import sklearn  # noqa: F401
    except ImportError:
        return False
    return True


def logistic_regression_accuracy(xtr, ytr, xte, yte, max_iter: int = 100) -> float:
    """scikit-learn LogisticRegression (lbfgs, C=1, ``max_iter``): the raw-pixel linear baseline."""
    import numpy as np
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = LogisticRegression(max_iter=max_iter).fit(xtr.numpy(), ytr.numpy())
    return float(np.mean(clf.predict(xte.numpy()) == yte.numpy()))


def raw_pixel_protocols(xtr, ytr, xte, yte, num_classes: int, idx_by_n=None, *, seed: int = 0, k: int = 20,
                        probe_epochs: int = 50, scarce_probe_epochs: int = 200, progress: bool = False) -> dict:
    """Raw pixels (flattened images): ``{None | N: {"knn": acc, "linear": acc}, "linear_method": str}``:
    the cosine 20-NN and logistic regression (the linear probe when scikit-learn is missing)."""
    from .knn import knn_accuracy

    sk = has_sklearn()
    out = {"linear_method": "logistic regression (scikit-learn lbfgs, C=1, 100 iterations)" if sk else
           "linear probe (scikit-learn not installed)"}
    for n, idx in [(None, None), *(idx_by_n or {}).items()]:
        x, y = (xtr, ytr) if idx is None else (xtr[idx], ytr[idx])
        r = {"knn": knn_accuracy(x, y, xte, yte, k=min(k, len(x)), num_classes=num_classes)}
        if sk:
            r["linear"] = logistic_regression_accuracy(x, y, xte, yte)
        else:
            r["linear"] = frozen_protocols(x, y, xte, yte, num_classes, None, probe_epochs=probe_epochs if idx is None
                                           else max(probe_epochs, scarce_probe_epochs), seed=seed,
                                           progress=progress)["features"][None]["linear"]
        out[n] = r
    return out


def random_init_like(model, seed: int = 0):
    """The same recipe as ``model`` (its recorded mimkit config), freshly initialised with ``seed``."""
    from ..registry import build_from_config

    cfg = getattr(model, "mimkit_config", None)
    if not cfg:
        raise ValueError(f"{type(model).__name__} records no mimkit config, so its random init cannot be rebuilt")
    with torch.random.fork_rng():
        torch.manual_seed(int(seed))
        return build_from_config(dict(cfg)).eval()


def _finetune_aug(data: ReportData, crop_scale=(0.8, 1.0), hflip: bool = True):
    """The training images with fine-tuning augmentation (random resized crop + flip) on the
    already-normalised tensors."""
    from torchvision.transforms import InterpolationMode, v2

    from ..data import TensorImages

    size = data.train.images.shape[-1]
    t = [v2.RandomResizedCrop(size, scale=tuple(crop_scale), interpolation=InterpolationMode.BICUBIC, antialias=True)]
    if hflip:
        t.append(v2.RandomHorizontalFlip())
    return TensorImages(data.train.images, data.train.labels, v2.Compose(t))


def seconds_per_finetune_step(model, train, test, num_classes: int, *, batch_size: int = 128, pool: str = "mean",
                              steps: int = 16, seed: int = 0) -> float:
    """Measured wall time of one fine-tuning step on ``train`` (data loading, augmentation and
    Lightning's per-step and per-epoch work included): two short runs of
    :func:`mimkit.eval.finetune.finetune`, 2 and ``2 + steps`` steps, and the difference of their times."""
    from .finetune import finetune

    batch_size = max(2, min(int(batch_size), len(train)))
    per_epoch = max(1, len(train) // batch_size)
    probe_test = torch.utils.data.Subset(test, range(min(len(test), 32)))
    times = []
    for n in (2, 2 + steps):
        t = time.time()
        finetune(model, train, probe_test, num_classes, pool=pool, epochs=1, batch_size=batch_size, seed=seed,
                 warmup_epochs=0, progress=False, trainer_kwargs={"max_steps": n, "max_epochs": math.ceil(n / per_epoch)})
        times.append(time.time() - t)
    return max((times[1] - times[0]) / steps, 1e-4)


def finetune_for_minutes(model, train_aug, test, num_classes: int, minutes: float, *, seconds_per_step: float,
                         batch_size: int = 128, layer_decay: float = 0.75, blr: float = 2e-3, drop_path: float = 0.1,
                         label_smoothing: float = 0.1, pool: str = "mean", seed: int = 0, progress: bool = True,
                         keep_classifier: bool = False) -> dict:
    """Fine-tune (:func:`mimkit.eval.finetune.finetune`) for ``minutes`` of wall time: the number of
    optimiser steps is ``minutes * 60 / seconds_per_step``, and the schedule (10% warm-up, cosine)
    runs over exactly those steps. Returns finetune's results with ``minutes`` (measured) and ``steps``
    (and the fine-tuned ``classifier`` with ``keep_classifier``)."""
    from .finetune import finetune

    batch_size = max(2, min(int(batch_size), len(train_aug)))
    per_epoch = max(1, len(train_aug) // batch_size)
    steps = max(1, int(minutes * 60 / max(seconds_per_step, 1e-6)))
    epochs = math.ceil(steps / per_epoch)
    clf, res = finetune(model, train_aug, test, num_classes, pool=pool, epochs=1, batch_size=batch_size, blr=blr,
                        layer_decay=layer_decay, drop_path=drop_path, label_smoothing=label_smoothing,
                        warmup_epochs=0.1 * steps / per_epoch, seed=seed, progress=progress,
                        trainer_kwargs={"max_steps": steps, "max_epochs": epochs})
    return {**res, "epochs": round(steps / per_epoch, 2), "steps": steps, "minutes": round(res["fit_seconds"] / 60, 2),
            "budget_minutes": round(minutes, 2), **({"classifier": clf} if keep_classifier else {})}


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


# ---- the report -----------------------------------------------------------------------------------
def build_report(checkpoints, data: str = "fashion_mnist", out_dir=None, *, names=None,
                 labels_per_class=None, seed: int = 0, pool: str = "auto",
                 finetune_minutes: float | None = None, pretrain_minutes=None, probe_epochs: int = 50,
                 scarce_probe_epochs: int = 200, test_fraction: float = 0.2, limit: int | None = None,
                 test_limit: int | None = None, mean=None, std=None, root=None, device=None,
                 batch_size: int = 512, finetune_batch_size: int = 128, neighbours: int = 12,
                 progress: bool = True, trust_checkpoint: bool = False) -> dict:
    """The report of ``checkpoints`` (specs as ``--checkpoint`` takes them, or loaded models) on
    ``data``; writes ``report.json``, ``report.md``, ``report.png`` and ``neighbours.png`` to
    ``out_dir`` (when given) and returns the report dict (``rows`` = ``[{encoder, protocol,
    labels_per_class, accuracy, ...}]``). ``pretrain_minutes``: a number or one per checkpoint, for
    the scratch baseline's budget (default: read from each run directory's file times)."""
    from .data import load_model_spec
    from .features import check_pool, extract_features, frozen_pools

    t_start = time.time()
    walls: dict[str, float] = {}

    def timed(name):
        class _T:
            def __enter__(self):
                self.t = time.time()
                _say(f"== {name} ==", progress)

            def __exit__(self, *exc):
                walls[name] = round(time.time() - self.t, 1)
                _say(f"   ({walls[name]:.1f} s)", progress)
        return _T()

    checkpoints = list(checkpoints) if isinstance(checkpoints, (list, tuple)) else [checkpoints]
    if not checkpoints:
        raise ValueError("a report needs at least one --checkpoint")
    auto_sizes = labels_per_class is None
    labels_per_class = sorted({int(n) for n in (DEFAULT_LABELS_PER_CLASS if auto_sizes else labels_per_class)})
    notes: list[str] = []
    if finetune_minutes is not None and not finetune_minutes > 0:
        raise ValueError(f"--finetune-minutes must be > 0, got {finetune_minutes}")
    models = [load_model_spec(_model_dir(c), trust_checkpoint) if isinstance(c, (str, Path)) else c
              for c in checkpoints]
    names = _unique(list(names) if names else [checkpoint_name(c) if isinstance(c, (str, Path))
                                               else getattr(m, "mimkit_config", {}).get("recipe", f"encoder{i}")
                                               for i, (c, m) in enumerate(zip(checkpoints, models))])
    if len(names) != len(models):
        raise ValueError(f"{len(names)} names for {len(models)} checkpoints")
    if any(n in (RAW, RANDOM) for n in names):
        raise ValueError(f"{RAW!r} and {RANDOM!r} name the baselines; rename the checkpoint")
    auto = pool == "auto"  # every frozen pooling, chosen on a validation split (mimkit.eval.selection)
    for m in models:
        if not auto:
            check_pool(m, pool)
    if pretrain_minutes is None or isinstance(pretrain_minutes, (int, float)):
        pre = [pretrain_minutes if pretrain_minutes is not None else
               (pretrain_minutes_of(c) if isinstance(c, (str, Path)) else None) for c in checkpoints]
    else:
        pre = list(pretrain_minutes)
    first = models[0]
    from .data import model_input

    inputs = {model_input(m) for m in models}
    if len(inputs) > 1:
        raise ValueError(f"the checkpoints take different inputs {sorted(inputs)} (size, channels); report them "
                         "separately, so that raw pixels and every encoder see the same images")

    with timed("data"):
        rd = load_report_data(data, first, test_fraction=test_fraction, seed=seed, limit=limit, test_limit=test_limit,
                              mean=mean, std=std, root=root, progress=progress)
        info = rd.info
        if auto_sizes:
            fewest = min(info["train_per_class"].values())
            dropped = [n for n in labels_per_class if n > fewest]
            labels_per_class = [n for n in labels_per_class if n <= fewest]
            if dropped:
                notes.append(f"scarce-label budget(s) {dropped} per class left out: the smallest class has {fewest} "
                             "training images")
                _say(f"   {notes[-1]}", progress)
        check_labels_per_class(rd, labels_per_class)
        _say(f"   {info['train_images']} train / {info['test_images']} test images, {rd.num_classes} classes "
             f"({', '.join(rd.classes[:10])}{', ...' if rd.num_classes > 10 else ''}); {info['preprocessing']}"
             + (f"; skipped {info['skipped_unreadable']} unreadable" if info.get("skipped_unreadable") else ""), progress)
    nc = rd.num_classes
    xtr, ytr = pixel_features(rd.train)
    xte, yte = pixel_features(rd.test)
    val_size = None
    if auto:  # the last sixth of the training images (at most 10k) is the validation split
        from .data import balanced_indices
        from .selection import holdout_split

        val_size = min(10000, len(ytr) // 6)
        fit, _ = holdout_split(len(ytr), val_size)
        idx_by_n = {int(n): fit[balanced_indices(ytr[fit], int(n), seed)] for n in labels_per_class}
    else:
        idx_by_n = scarce_indices(ytr, labels_per_class, seed)
    rows: list[dict] = []

    def add(encoder, protocol, n, acc, **extra):
        rows.append({"encoder": encoder, "protocol": protocol, "labels_per_class": n, "accuracy": float(acc), **extra})

    with timed("raw pixels: 20-NN + linear"):
        raw = raw_pixel_protocols(xtr, ytr, xte, yte, nc, idx_by_n, seed=seed, probe_epochs=probe_epochs,
                                  scarce_probe_epochs=scarce_probe_epochs)
        for n in [None, *idx_by_n]:
            add(RAW, "knn", n, raw[n]["knn"], method="20-NN cosine")
            add(RAW, "linear", n, raw[n]["linear"], method=raw["linear_method"])
        _say(f"   20-NN {raw[None]['knn']:.4f}, linear {raw[None]['linear']:.4f}", progress)

    feats: dict[str, tuple] = {}
    encoders = {}
    try:
        init = random_init_like(first, seed)
    except ValueError as e:
        init = None
        _say(f"   (no random-init baseline: {e})", progress)
    todo = ([(RANDOM, init)] if init is not None else []) + list(zip(names, models))
    for name, model in todo:
        with timed(f"{name}: features, 20-NN + linear probe"):
            how = frozen_pools(model) if auto else pool
            ftr, f_ytr = extract_features(model, rd.train, how, batch_size, device, 0, progress, f"{name} train features")
            fte, f_yte = extract_features(model, rd.test, how, batch_size, device, 0, progress, f"{name} test features")
            if auto:
                from .selection import frozen_selected

                ev = frozen_selected(ftr, f_ytr, fte, f_yte, val_size=val_size, num_classes=nc, probe_epochs=probe_epochs,
                                     scarce_probe_epochs=scarce_probe_epochs, seed=seed, subsets=idx_by_n)
                for n in [None, *idx_by_n]:
                    e = ev if n is None else ev["low_label"][n]
                    add(name, "knn", n, e["knn"]["test"], method="20-NN cosine", pool=e["knn"]["pool"],
                        val=max(e["knn"]["val"].values()))
                    add(name, "linear", n, e["linear"]["test"], method="BatchNorm + linear probe",
                        pool=e["linear"]["pool"], blr=e["linear"]["blr"], val=max(e["linear"]["val"].values()))
                res = {None: {"knn": ev["knn"]["test"], "linear": ev["linear"]["test"]}}
                ftr, fte = ftr[ev["knn"]["pool"]], fte[ev["knn"]["pool"]]  # the neighbours picture's features
            else:
                res = frozen_protocols(ftr, f_ytr, fte, f_yte, nc, idx_by_n, probe_epochs=probe_epochs,
                                       scarce_probe_epochs=scarce_probe_epochs, seed=seed, progress=progress)["features"]
                for n, r in res.items():
                    add(name, "knn", n, r["knn"], method="20-NN cosine", pool=pool)
                    add(name, "linear", n, r["linear"], method="BatchNorm + linear probe", pool=pool)
            feats[name] = (ftr, fte)
            _say(f"   20-NN {res[None]['knn']:.4f}, linear {res[None]['linear']:.4f}"
                 + (f" (pooling {ev['knn']['pool']} / {ev['linear']['pool']}, chosen on validation)" if auto else ""),
                 progress)
        cfg = getattr(model, "mimkit_config", None) or {}
        encoders[name] = {"recipe": cfg.get("recipe"), "source": None if name == RANDOM else
                          str(checkpoints[names.index(name)]) if isinstance(checkpoints[names.index(name)], (str, Path))
                          else "model", "feature_dim": int(ftr.shape[1]),
                          "pretrain_minutes": None if name == RANDOM else pre[names.index(name)]}

    ft_pool = "mean" if auto else pool  # the fine-tuned classifier pools one way
    ft_settings = None
    if finetune_minutes:
        train_aug = _finetune_aug(rd)
        known = [p for p in pre if p is not None]
        scratch_minutes = finetune_minutes + (max(known) if known else 0.0)
        ft_settings = {"minutes_per_run": finetune_minutes, "seconds_per_step_measured": {},
                       "batch_size": finetune_batch_size, "blr": 2e-3, "layer_decay": 0.75, "drop_path": 0.1,
                       "label_smoothing": 0.1, "crop_scale": [0.8, 1.0], "scratch_minutes": round(scratch_minutes, 2),
                       "scratch_budget": ("fine-tuning minutes + the longest pretraining time among the encoders "
                                          f"({max(known):.1f} min)") if known else
                                         "fine-tuning minutes only (no pretraining time known: pass --pretrain-minutes)"}
        for n in [None, *idx_by_n]:
            sub = train_aug if n is None else torch.utils.data.Subset(train_aug, idx_by_n[n].tolist())
            bs = min(finetune_batch_size, len(sub))
            budget = "all labels" if n is None else f"{n} labels per class"
            with timed(f"fine-tuning step time, {budget}"):
                sps = seconds_per_finetune_step(first, sub, rd.test, nc, batch_size=bs, pool=ft_pool, seed=seed)
                ft_settings["seconds_per_step_measured"][str(n)] = round(sps, 4)
                _say(f"   {sps:.3f} s per step", progress)
            for name, model in list(zip(names, models)) + ([(RANDOM, init)] if init is not None else []):
                minutes, decay = (scratch_minutes, 1.0) if name == RANDOM else (finetune_minutes, 0.75)
                what = "from scratch" if name == RANDOM else "fine-tune"
                with timed(f"{name}: {what} {minutes:g} min, {budget}"):
                    r = finetune_for_minutes(model, sub, rd.test, nc, minutes, seconds_per_step=sps, batch_size=bs,
                                             layer_decay=decay, pool=ft_pool, seed=seed, progress=progress)
                    add(name, "finetune", n, r["acc"], method="fine-tune" if name != RANDOM else "from scratch, equal time",
                        minutes=r["minutes"], steps=r["steps"], epochs=r["epochs"], pool=ft_pool)
                    _say(f"   {r['acc']:.4f} ({r['steps']} steps, {r['minutes']:.2f} min)", progress)

    report = {
        "rows": rows, "data": info, "encoders": encoders, "labels_per_class": labels_per_class, "seed": seed,
        "pool": pool, "val_size": val_size, "notes": notes,
        "protocols": {
            "knn": "20-NN: L2-normalised features, cosine similarity, votes weighted by exp(sim / 0.07)",
            "linear": f"linear probe: BatchNorm1d(affine=False) + Linear on cached features, SGD, {probe_epochs} epochs "
                      f"({max(probe_epochs, scarce_probe_epochs)} with scarce labels); raw pixels: {raw['linear_method']}",
            "finetune": (f"whole encoder + head for {finetune_minutes:g} min each (AdamW, layer decay 0.75, drop path "
                         "0.1, label smoothing 0.1, random resized crop + flip); random_init = the same ViT from "
                         f"scratch for {ft_settings['scratch_minutes']:g} min") if finetune_minutes else None,
            "scarce_labels": f"balanced subsets of N training labels per class, fixed by seed {seed}; test set unchanged",
            "raw_pixels": "the images exactly as the encoder receives them, flattened",
        },
        "finetune": ft_settings,
        "device": str(device or ("cuda" if torch.cuda.is_available() else "cpu")), "threads": torch.get_num_threads(),
        "wall_seconds": walls,
    }
    report["wall_seconds"]["total"] = round(time.time() - t_start, 1)
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        pics = {}
        with timed("pictures"):
            try:
                pics["report"] = str(plot_report(report, out_dir / "report.png"))
                for i, name in enumerate(names):
                    file = "neighbours.png" if i == 0 else f"neighbours_{_safe(name)}.png"
                    pics[f"neighbours:{name}"] = str(plot_neighbours(rd, feats[name], (xtr, xte), name,
                                                                     out_dir / file, neighbours, seed))
            except Exception as e:  # noqa: BLE001 - never lose the numbers for a picture
                _say(f"   (pictures failed: {type(e).__name__}: {e})", True)
        report["pictures"] = pics
        report["wall_seconds"].pop("total")
        report["wall_seconds"]["total"] = round(time.time() - t_start, 1)
        (out_dir / "report.json").write_text(json.dumps(report, indent=2, default=str))
        (out_dir / "report.md").write_text(report_markdown(report) + "\n")
    return report


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


# ---- tables and pictures --------------------------------------------------------------------------
def _columns(report: dict) -> list[tuple[str, int | None]]:
    cols = []
    for proto in PROTOCOLS:
        for n in [None, *report["labels_per_class"]]:
            if any(r["protocol"] == proto and r["labels_per_class"] == n for r in report["rows"]):
                cols.append((proto, n))
    return cols


def _encoders(report: dict) -> list[str]:
    return list(dict.fromkeys(r["encoder"] for r in report["rows"]))


def accuracy(report: dict, encoder: str, protocol: str, labels_per_class=None):
    """The accuracy of one row of ``report`` (None when absent)."""
    for r in report["rows"]:
        if r["encoder"] == encoder and r["protocol"] == protocol and r["labels_per_class"] == labels_per_class:
            return r["accuracy"]
    return None


def _col_name(proto, n) -> str:
    return f"{PROTOCOL_NAMES[proto]}, {'all labels' if n is None else f'{n}/class'}"


def report_table(report: dict) -> str:
    """The Markdown table: a row per encoder, a column per protocol and label budget, the best in bold."""
    cols = _columns(report)
    encs = _encoders(report)
    best = {c: max((accuracy(report, e, *c) or -1) for e in encs) for c in cols}
    body = []
    for e in encs:
        cells = []
        for c in cols:
            a = accuracy(report, e, *c)
            cells.append("-" if a is None else (f"**{a:.4f}**" if a == best[c] else f"{a:.4f}"))
        body.append((e.replace("_", " ") if e in (RAW, RANDOM) else f"`{e}`", *cells))
    head = ("encoder", *(_col_name(*c) for c in cols))
    cells = [head] + body
    w = [max(len(r[i]) for r in cells) for i in range(len(head))]
    line = lambda r: "| " + " | ".join(c.ljust(x) for c, x in zip(r, w)) + " |"  # noqa: E731
    return "\n".join([line(head), "| " + " | ".join("-" * x for x in w) + " |", *map(line, body)])


def report_markdown(report: dict) -> str:
    d = report["data"]
    lines = ["# mimkit report", "", report_table(report), ""]
    lines += ["## Data", "",
              f"- source: `{d['source']}` ({d['layout']})",
              f"- {d['train_images']} training images, {d['test_images']} test images, {len(d['classes'])} classes: "
              + ", ".join(f"{c} ({d['train_per_class'][c]} / {d['test_per_class'][c]})" for c in d["classes"])
              + " (train / test)",
              "- original sizes (most common): " + ", ".join(f"{k} ({v})" for k, v in d["original_sizes"].items())
              + f"; {d['original_mode']}",
              f"- as the encoder receives them ({d['encoder_input']}): {d['preprocessing']}"]
    if d.get("skipped_unreadable"):
        lines.append(f"- skipped {d['skipped_unreadable']} unreadable image(s), e.g. {', '.join(d['skipped_examples'])}")
    lines += ["", "## Encoders", ""]
    for name, e in report["encoders"].items():
        pre = e.get("pretrain_minutes")
        lines.append(f"- `{name}`: recipe {e.get('recipe')}, feature dim {e['feature_dim']}, "
                     + ("the same recipe at random init (seed %d)" % report["seed"] if name == RANDOM else
                        f"from {e['source']}" + (f", pretrained for {pre:.1f} min" if pre else "")))
    lines += ["", "## Protocols", ""]
    lines += [f"- {k}: {v}" for k, v in report["protocols"].items() if v]
    lines += [f"- frozen features: pooling (cls, mean, both, last 4 blocks) and probe lr chosen per encoder and protocol on "
              f"the last {report['val_size']} training images, then fitted on all of them; the test set read once"
              if report["pool"] == "auto" else f"- frozen features: {report['pool']} pooling"]
    lines += [f"- note: {n}" for n in report.get("notes") or ()]
    lines += ["", "## Wall times", ""]
    lines += [f"- {k}: {v:.1f} s" for k, v in report["wall_seconds"].items()]
    lines += [f"- device: {report['device']}, {report['threads']} threads"]
    if report.get("pictures"):
        lines += ["", "## Pictures", ""] + [f"![{k}]({Path(v).name})" for k, v in report["pictures"].items()]
    return "\n".join(lines)


def plot_report(report: dict, path) -> Path:
    """``report.png``: accuracy per protocol and label budget, one bar per encoder, raw pixels as a line."""
    from ..viz import pyplot

    plt = pyplot()
    cols = _columns(report)
    encs = [e for e in _encoders(report) if e != RAW]
    width = 0.8 / max(1, len(encs))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(cols) + 2), 4.2))
    colours = plt.get_cmap("tab10")
    for i, e in enumerate(encs):
        xs = [j + (i - (len(encs) - 1) / 2) * width for j in range(len(cols))]
        ys = [accuracy(report, e, *c) for c in cols]
        bars = ax.bar([x for x, y in zip(xs, ys) if y is not None], [y for y in ys if y is not None], width * 0.95,
                      label=e.replace("_", " ") + (" (from scratch when fine-tuned)" if e == RANDOM and
                                                   any(c[0] == "finetune" for c in cols) else ""),
                      color="lightgrey" if e == RANDOM else colours((i - (1 if RANDOM in encs else 0)) % 10))
        for b in bars:
            ax.annotate(f"{b.get_height():.3f}", (b.get_x() + b.get_width() / 2, b.get_height()), ha="center",
                        va="bottom", fontsize=6, rotation=90)
    labelled = False
    for j, c in enumerate(cols):
        a = accuracy(report, RAW, *c)
        if a is not None:
            ax.hlines(a, j - 0.45, j + 0.45, colors="black", linestyles="--", linewidth=1.5,
                      label=None if labelled else "raw pixels")
            labelled = True
    ax.set_xticks(range(len(cols)))
    ax.set_xticklabels([_col_name(*c).replace(", ", "\n") for c in cols], fontsize=8)
    lows = [r["accuracy"] for r in report["rows"]]
    ax.set_ylim(max(0.0, min(lows) - 0.1), min(1.0, max(lows) + 0.08))
    ax.set_ylabel("test accuracy")
    d = report["data"]
    ax.set_title(f"{Path(str(d['source'])).name}: {d['train_images']} train / {d['test_images']} test images, "
                 f"{len(d['classes'])} classes", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def pick_queries(labels: torch.Tensor, n: int, seed: int = 0) -> list[int]:
    """``n`` test indices spread over the classes (round robin), drawn with ``seed``."""
    g = torch.Generator().manual_seed(int(seed))
    per = [(labels == c).nonzero().squeeze(1) for c in labels.unique().tolist()]
    per = [p[torch.randperm(len(p), generator=g)].tolist() for p in per]
    out = []
    while len(out) < min(n, len(labels)):
        for p in per:
            if p and len(out) < n:
                out.append(p.pop(0))
    return out


def nearest(train_feats: torch.Tensor, query_feats: torch.Tensor, k: int) -> torch.Tensor:
    """(Q, k) indices of the cosine-nearest training rows (the k-NN protocol's neighbours)."""
    import torch.nn.functional as F

    sim = F.normalize(query_feats.float(), dim=1) @ F.normalize(train_feats.float(), dim=1).T
    return sim.topk(min(k, len(train_feats)), dim=1).indices


def plot_neighbours(data: ReportData, enc_feats: tuple, raw_feats: tuple, name: str, path, n: int = 12,
                    seed: int = 0, k: int = 8) -> Path:
    """``neighbours.png``: ``n`` test images, each with its ``k`` nearest training images under the
    encoder and under raw pixels; wrong-class neighbours get a red frame."""
    from ..viz import denormalize, pyplot

    plt = pyplot()
    ytr, yte = data.train.labels, data.test.labels
    q = pick_queries(yte, n, seed)
    nn_enc = nearest(enc_feats[0], enc_feats[1][q], k)
    nn_raw = nearest(raw_feats[0], raw_feats[1][q], k)
    show = lambda x: denormalize(x[None].float(), data.mean, data.std)[0]  # noqa: E731
    cols = 1 + k + 1 + k
    fig, axes = plt.subplots(len(q), cols, figsize=(cols * 0.75, len(q) * 0.85 + 0.6), squeeze=False)
    wrong = {"encoder": 0, "raw": 0}

    def draw(ax, img, frame=None):
        img = show(img)
        if img.shape[0] == 1:
            ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1)
        else:
            ax.imshow(img.permute(1, 2, 0).numpy())
        ax.set_xticks([]), ax.set_yticks([])
        for s in ax.spines.values():
            s.set_visible(frame is not None)
            if frame:
                s.set_edgecolor(frame), s.set_linewidth(2.5)

    for r, qi in enumerate(q):
        draw(axes[r][0], data.test.images[qi], "black")
        axes[r][0].set_ylabel(str(data.classes[int(yte[qi])])[:12], fontsize=6, rotation=0, ha="right", va="center")
        axes[r][1 + k].axis("off")
        for j in range(k):
            for key, idx, c0 in (("encoder", nn_enc, 1), ("raw", nn_raw, 2 + k)):
                ti = int(idx[r, j])
                bad = int(ytr[ti]) != int(yte[qi])
                wrong[key] += bad
                draw(axes[r][c0 + j], data.train.images[ti], "red" if bad else None)
    axes[0][0].set_title("test image", fontsize=7)
    axes[0][1 + k // 2].set_title(f"{k} nearest: {name}", fontsize=7)
    axes[0][2 + k + k // 2].set_title(f"{k} nearest: raw pixels", fontsize=7)
    tot = len(q) * k
    fig.suptitle(f"nearest training images (cosine); red = another class. Wrong neighbours: {name} "
                 f"{wrong['encoder']}/{tot}, raw pixels {wrong['raw']}/{tot}", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def report_after_training(run_dir, cfg: dict) -> dict | None:
    """``run.report=DATA`` at the end of ``mimkit pretrain``: the report of ``run_dir/model`` on DATA,
    written to ``run_dir/report``. An error is one printed line; the trained run is kept either way."""
    import sys

    run_dir = Path(run_dir)
    d = cfg.get("data", {})
    try:
        report = build_report([run_dir / "model"], cfg["run"]["report"], run_dir / "report", names=[run_dir.name],
                              seed=int(cfg["run"].get("seed") or 0), mean=d.get("mean"), std=d.get("std"),
                              progress=bool(cfg.get("trainer", {}).get("enable_progress_bar", True)))
    except (ValueError, FileNotFoundError, TypeError, KeyError) as e:
        print(f"mimkit pretrain: report: error: {e} (the trained model is in {run_dir / 'model'}; run `mimkit report "
              f"--checkpoint {run_dir}` once fixed)", file=sys.stderr, flush=True)
        return None
    print(report_table(report), flush=True)
    print(f"mimkit: report {run_dir / 'report' / 'report.md'} (report.png, neighbours.png)", flush=True)
    return report
