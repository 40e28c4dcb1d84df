"""Hugging Face ``datasets`` as a training source (``data.name=hf_dataset``).

``data.path`` is a dataset written with ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` or a
folder of parquet files (``DIR/*.parquet``, or per split ``DIR/<split>/*.parquet`` /
``DIR/<split>-*.parquet``, the layout of datasets pushed to the Hub). Both are memory-mapped Arrow
tables with random access by row, so the dataset is map-style and mimkit's own resumable, rank-aware
sampler (``mimkit.train.loader``) gives it the same DDP split and exact resume as an ImageFolder.

The image column (``data.image_column``, default ``image``) is read as encoded bytes (the ``Image``
feature with ``decode=False``) and decoded by mimkit, so every image gets the same channel conversion
and the same counted skip of unreadable images as an ImageFolder, and ``data.decode_on_device`` can hand
the raw bytes to the device decoder. A ``label`` column (integers or a ``ClassLabel``) gives labels
(0 without one).
"""
from __future__ import annotations

import io
from pathlib import Path

from torch.utils.data import Dataset

from .images import bytes_tensor, error_text, first_readable, load_image


def _datasets():
    try:
        import datasets
    except ImportError:
        raise ValueError("data.name=hf_dataset needs the Hugging Face `datasets` package: "
                         "pip install 'mimkit[hf]' (or pip install datasets)") from None
    return datasets


def _parquet_files(root: Path, split: str) -> list[str]:
    for pattern in (f"{split}/*.parquet", f"{split}-*.parquet", f"{split}_*.parquet", f"*-{split}-*.parquet",
                    f"data/{split}-*.parquet", f"data/{split}/*.parquet"):
        found = sorted(root.glob(pattern))
        if found:
            return [str(f) for f in found]
    return [str(f) for f in sorted(root.glob("*.parquet"))]


def open_hf_dataset(path, split: str = "train", what: str = "data.path"):
    """The ``datasets.Dataset`` of ``split`` at ``path`` (save_to_disk output or parquet files)."""
    datasets = _datasets()
    root = Path(str(path)).expanduser()
    if not str(path):
        raise ValueError(f"data.name=hf_dataset needs {what}=<folder written by save_to_disk, or of parquet files>")
    if not root.exists():
        raise FileNotFoundError(f"{what}={root} does not exist")
    if (root / "dataset_dict.json").exists() or (root / "state.json").exists():
        try:
            ds = datasets.load_from_disk(str(root))
        except Exception as e:  # noqa: BLE001 - the library raises many kinds
            raise ValueError(f"{root} is not a readable saved dataset ({type(e).__name__}: {error_text(e)}); save it again "
                             "with save_to_disk") from None
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise ValueError(f"{root} has no split {split!r} (it has {', '.join(ds)}); set data.split")
            ds = ds[split]
        elif split != "train" and split != str(ds.split):
            raise ValueError(f"{root} holds one dataset{f' (split {ds.split})' if ds.split else ''}, not a split named "
                             f"{split!r}; use the saved "
                             "dataset as it is (data.split=train) or save a DatasetDict with that split")
        return ds
    if root.is_dir():
        files = _parquet_files(root, split)
        if files:
            try:
                return datasets.Dataset.from_parquet(files, split="train")
            except Exception as e:  # noqa: BLE001
                raise ValueError(f"cannot read the parquet files under {root} ({type(e).__name__}: {error_text(e)}); "
                                 "check or rewrite them") from None
    raise FileNotFoundError(f"{root} holds neither a dataset written by save_to_disk (dataset_info.json, state.json) "
                            "nor parquet files; point data.path at one")


class HFImages(Dataset):
    """Map-style images from a Hugging Face dataset: item ``i`` is ``(transform(image), label)``, or
    ``(uint8 bytes, label, name)`` with ``encoded=True`` (``data.decode_on_device``)."""

    def __init__(self, path, split: str = "train", image_column: str = "image", transform=None,
                 in_chans: int = 3, on_error: str = "skip", encoded: bool = False, what: str = "data.path"):
        datasets = _datasets()
        if on_error not in ("skip", "raise"):
            raise ValueError(f"data.on_error must be 'skip' or 'raise', got {on_error!r}")
        ds = open_hf_dataset(path, split, what)
        cols = list(ds.column_names)
        if image_column not in cols:
            raise ValueError(f"data.image_column={image_column} is not a column of {path} (columns: {', '.join(cols)}); "
                             "set data.image_column")
        keep = [image_column] + (["label"] if "label" in cols and image_column != "label" else [])
        ds = ds.select_columns(keep)
        feat = ds.features[image_column]
        if isinstance(feat, datasets.Image) and feat.decode:
            ds = ds.cast_column(image_column, datasets.Image(decode=False))
        if len(ds) == 0:
            raise ValueError(f"split {split!r} of {path} has no rows")
        self.ds, self.col, self.has_label, self.path, self.split = ds, image_column, "label" in keep, str(path), split
        self.transform, self.in_chans, self.on_error, self.encoded = transform, int(in_chans), on_error, encoded
        self.bad: set[str] = set()

    def __len__(self) -> int:
        return len(self.ds)

    def name(self, i: int) -> str:
        return f"{self.path}[{self.split}][{i}]"

    def _row(self, i: int):
        row = self.ds[int(i)]
        label = row.get("label") if self.has_label else 0
        return row[self.col], int(label if label is not None and label >= 0 else 0)

    def read_bytes(self, i: int) -> tuple[bytes, int]:
        value, label = self._row(i)
        if isinstance(value, dict):
            data = value.get("bytes")
            if data is None and value.get("path"):
                data = Path(value["path"]).read_bytes()
        elif isinstance(value, (bytes, bytearray)):
            data = bytes(value)
        elif hasattr(value, "save"):  # a PIL image (a column the library decoded itself)
            buf = io.BytesIO()
            value.save(buf, format="PNG")
            data = buf.getvalue()
        else:
            raise TypeError(f"column {self.col!r} holds {type(value).__name__}, not an image (bytes or the Image feature)")
        if data is None:
            raise ValueError("the image cell is empty")
        return data, label

    def _decode(self, j: int):
        data, label = self.read_bytes(j)
        return load_image(io.BytesIO(data), self.in_chans), label

    def __getitem__(self, i):
        i = int(i)
        if self.encoded:
            data, label = self.read_bytes(i)
            return bytes_tensor(data), label, self.name(i)
        n = len(self)
        (img, label), _ = first_readable(i, n, self._decode, self.name, self.bad, self.on_error,
                                         "fix the dataset, or set data.on_error=skip",
                                         lambda: f"none of the {n} images of {self.path} can be read; check the dataset")
        if self.transform is not None:
            img = self.transform(img)
        return img, label
