"""A labelled dataset for a report, exactly as the encoder receives it: Fashion-MNIST's real split or
any ImageFolder (``train/`` + ``test/`` or ``val/``, or one folder of class sub-folders split per
class), converted, resized, centre-cropped and normalised, with what the report says about it (sizes,
modes, classes and their counts, unreadable files skipped). Bad folders are one clear error."""
from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

FMNIST_NAMES = ("fashion_mnist", "fmnist", "fashion-mnist")


def say(msg: str, progress: bool = True) -> None:
    if progress:
        print(msg, flush=True)


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
            say(f"   skipped {len(bad)} unreadable image(s) of {len(tr_samples) + len(te_samples)} (e.g. {bad[0][0]})",
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
