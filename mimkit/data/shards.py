"""WebDataset tar shards: write them from an image folder (``mimkit shard``), read them for training
(``data.name=webdataset``).

Format. A shard is a plain (uncompressed) tar file in the WebDataset layout: the members of one sample
share a key (the file name up to its first dot) and differ by extension, e.g. ``000000042.jpg`` and
``000000042.cls`` (the class index as text). Shards written elsewhere (timm, OpenCLIP, img2dataset) read
the same way: the first member with an image extension is the image, ``cls`` the label (0 without).
``mimkit shard`` also writes ``<prefix>.index.json`` beside the shards: the shard list with sample
counts and file sizes in the layout of webdataset's indexed reader (wids, ``"__kind__":
"wids-shard-index-v1"``), plus each sample's image offset, size and label, so that opening a run costs one
JSON read instead of a pass over every tar header.

Why mimkit reads shards by index instead of with ``webdataset.WebDataset``. mimkit's training data
order has three guarantees (``mimkit.train.loader``): the order is a pure function of (seed, epoch);
under DDP the global batch at step k is the same set of images whatever the number of processes (a
2-process run equals a 1-process run with the doubled batch); and a run killed mid-epoch resumes at the
exact next sample. ``webdataset.WebDataset`` is an ``IterableDataset`` that splits *shards* between
nodes and workers and shuffles with a buffer: its order depends on the world size and worker count,
and it keeps no position inside an epoch (its documented resume is approximate, or ``resampled``
shards), so none of the three can hold. webdataset's own answer for exact access is its indexed
reader (wids): a map-style dataset over the shards' member offsets. mimkit does the same with its
existing sampler: the tar headers are parsed by Python's ``tarfile`` (when a shard has no index
entry), shards are written with ``webdataset.TarWriter`` and keys split with webdataset's rule
(``webdataset.tariterators.base_plus_ext``), and a sample is read with one ``pread`` of its image bytes.

Locality (``data.shard_window``). A global shuffle over a million images read at random is what an
ImageFolder does; for shards, each epoch shuffles the shard order and then the samples *within
windows* of ``shard_window`` consecutive shards (:class:`ShardWindowOrder`). At any time every process
reads from the same few shards (page cache and read-ahead help, a network file system sees reads from
a handful of open files instead of a million ``open`` calls), and each rank reads only the bytes of its
own samples. ``mimkit shard`` shuffles images before writing, so a window is a random mix of classes.
"""
from __future__ import annotations

import glob
import io
import json
import os
import re
import tarfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .images import SafeImageFolder, bytes_tensor, error_text, first_readable, load_image
from .seeds import mix_seed

INDEX_SUFFIX = ".index.json"
INDEX_KIND = "wids-shard-index-v1"
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "ppm", "pgm", "tif", "tiff", "gif")
LABEL_EXTS = ("cls", "label", "cls.txt")
_SIZE_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000 ** 2, "gb": 1000 ** 3, "tb": 1000 ** 4,
               "kib": 1024, "mib": 1024 ** 2, "gib": 1024 ** 3, "tib": 1024 ** 4}


def parse_size(text) -> int:
    """``"1GB"`` -> 10**9, ``"512MiB"`` -> 512 * 2**20, ``"2e8"``/``200000000`` -> bytes."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return int(text)
    m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = m.group(2).lower() if m else None
    if not m or unit not in _SIZE_UNITS:
        raise ValueError(f"--shard-size {text!r} is not a size; write e.g. 1GB, 500MB or 256MiB")
    try:
        return int(float(m.group(1)) * _SIZE_UNITS[unit])
    except ValueError:
        raise ValueError(f"--shard-size {text!r} is not a size; write e.g. 1GB, 500MB or 256MiB") from None


# ------------------------------------------------------------------------------------------ reading

def _is_remote(url: str) -> bool:
    return bool(re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", url)) or url.startswith("pipe:")


def resolve_shards(spec, what: str = "data.urls") -> tuple[list[Path], Path | None]:
    """The shard files named by ``spec`` (a brace pattern ``train-{000000..000127}.tar``, a glob, a
    list of those, a directory of shards, or a ``*.index.json`` file) and the index file when the spec
    names one (directly or as the only index in a directory). Raises a one-line error for a URL, a
    missing shard, or a pattern that matches nothing."""
    import braceexpand

    if spec is None or spec == "" or spec == []:
        raise ValueError(f"{what} is empty: give the shards, e.g. {what}=/data/shards/train-{{000000..000127}}.tar, "
                         "a list of tar files, or the shard directory")
    items = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    paths: list[Path] = []
    index = None
    for item in items:
        item = str(item)
        if _is_remote(item):
            raise ValueError(f"{what}={item!r} is a URL: mimkit reads shards from a file system path (local disk or a "
                             "network mount such as NFS, Lustre or a bucket mounted with FUSE); copy or mount the shards")
        p = Path(item).expanduser()
        if p.is_dir():
            idx = sorted(p.glob(f"*{INDEX_SUFFIX}"))
            if len(idx) > 1:
                raise ValueError(f"{p} holds {len(idx)} shard indexes ({', '.join(i.name for i in idx)}); point {what} at "
                                 "one of them, e.g. " + str(idx[0]))
            if idx:
                index = idx[0]
                paths += index_shards(index)
                continue
            tars = sorted(p.glob("*.tar"))
            if not tars:
                raise FileNotFoundError(f"no .tar shards in {p} ({what}); write them with `mimkit shard --images DIR "
                                        f"--out {p}` or point {what} at the shard files")
            paths += tars
            continue
        if item.endswith(".json"):
            if not p.exists():
                raise FileNotFoundError(f"shard index {p} does not exist ({what})")
            index = p
            paths += index_shards(p)
            continue
        expanded = list(braceexpand.braceexpand(item))
        for e in expanded:
            if any(c in e for c in "*?["):
                found = sorted(glob.glob(os.path.expanduser(e)))
                if not found:
                    raise FileNotFoundError(f"{what}={item!r} matches no file ({e}); check the path and the pattern")
                paths += [Path(f) for f in found]
            else:
                paths.append(Path(e).expanduser())
    if not paths:
        raise ValueError(f"{what}={spec!r} names no shard; check the pattern")
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"shard {missing[0]} does not exist ({len(missing)} of the {len(paths)} shards named by "
                                f"{what} are missing); check the pattern, or copy the missing shards")
    return paths, index


def index_shards(index: Path) -> list[Path]:
    """The shard paths an index file lists (relative to the index's folder)."""
    doc = read_index(index)
    return [(index.parent / e["url"]) for e in doc["shardlist"]]


def read_index(index: Path) -> dict:
    try:
        doc = json.loads(Path(index).read_text())
        assert isinstance(doc.get("shardlist"), list)
    except (OSError, ValueError, AssertionError, AttributeError) as e:
        raise ValueError(f"shard index {index} is not a readable index file ({type(e).__name__}); rewrite it with "
                         "`mimkit shard --reindex` or remove it to scan the shards") from None
    return doc


def _key_ext(name: str):
    from webdataset.tariterators import base_plus_ext

    return base_plus_ext(name)


def scan_shard(path: Path) -> dict:
    """Read one shard's tar headers (not its image bytes): ``{"url", "nsamples", "filesize", "offsets",
    "sizes", "labels", "no_image"}``. Raises a one-line ValueError for a compressed, truncated or
    damaged tar."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:2] == b"\x1f\x8b" or head[:3] == b"BZh" or head[:4] == b"\xfd7zX":
        raise ValueError(f"shard {path} is compressed: mimkit reads uncompressed .tar shards (it reads samples at their "
                         "offsets); decompress it, or rewrite the images with `mimkit shard`")
    samples: dict[str, dict] = {}
    order: list[str] = []
    end = 0
    try:
        with tarfile.open(path, "r:") as tar:
            for m in tar:
                end = m.offset_data + ((m.size + 511) // 512) * 512
                if not m.isreg():
                    continue
                key, ext = _key_ext(m.name)
                if key is None or os.path.basename(key).startswith("__"):
                    continue
                if key not in samples:
                    samples[key] = {}
                    order.append(key)
                samples[key][ext.lower()] = m
            labels_of = {k: s for k, s in samples.items() if any(e in s for e in LABEL_EXTS)}
            label = {}
            for k, s in labels_of.items():
                m = next(s[e] for e in LABEL_EXTS if e in s)
                try:
                    label[k] = int(tar.extractfile(m).read().decode().strip() or 0)
                except ValueError:
                    label[k] = 0
    except tarfile.ReadError as e:
        raise ValueError(f"shard {path} is not a readable tar file ({e}): it is truncated or damaged; copy it again "
                         "or rewrite it with `mimkit shard`") from None
    # tarfile stops quietly at a truncated header: what follows the last complete member must be the
    # zero blocks that end a tar archive
    with open(path, "rb") as f:
        f.seek(end)
        rest = f.read()
    if rest.strip(b"\0") or end > size:
        raise ValueError(f"shard {path} is truncated or damaged after byte {end} (of {size}): copy it again or rewrite "
                         "it with `mimkit shard`")
    offsets, sizes, labels, no_image = [], [], [], 0
    for k in order:
        s = samples[k]
        ext = next((e for e in IMAGE_EXTS if e in s), None)
        if ext is None:
            no_image += 1
            continue
        offsets.append(int(s[ext].offset_data))
        sizes.append(int(s[ext].size))
        labels.append(int(label.get(k, 0)))
    return {"url": path.name, "nsamples": len(offsets), "filesize": size, "offsets": offsets, "sizes": sizes,
            "labels": labels, "no_image": no_image}


def _entries(paths: list[Path], index: Path | None, progress: bool = True) -> list[dict]:
    """One table entry per shard: from an index file in the shards' folder when it lists the shard
    (its file size is checked), else by scanning the tar headers."""
    docs: dict[Path, dict] = {}
    cands = [index] if index else []
    for d in sorted({p.parent for p in paths}):
        cands += sorted(d.glob(f"*{INDEX_SUFFIX}"))
    by_path: dict[Path, tuple[dict, Path]] = {}
    for c in cands:
        if c in docs:
            continue
        docs[c] = read_index(c)
        for e in docs[c]["shardlist"]:
            if "offsets" in e:
                by_path.setdefault((c.parent / e["url"]).resolve(), (e, c))
    out: list[dict | None] = [None] * len(paths)
    todo = []
    for i, p in enumerate(paths):
        hit = by_path.get(p.resolve())
        if hit is None:
            todo.append(i)
            continue
        e, c = hit
        size = p.stat().st_size
        if int(e.get("filesize", size)) != size:
            raise ValueError(f"shard {p} has {size} bytes but its index {c} says {e['filesize']}: the shard is truncated "
                             "or was rewritten; copy it again, or rewrite the index with `mimkit shard --reindex`")
        out[i] = e
    if todo:
        from concurrent.futures import ThreadPoolExecutor

        t0, shown = time.time(), False
        with ThreadPoolExecutor(max_workers=min(8, len(todo))) as pool:
            for n, (i, e) in enumerate(zip(todo, pool.map(lambda i: scan_shard(paths[i]), todo)), 1):
                out[i] = e
                if progress and time.time() - t0 > 5 and (not shown or n % 50 == 0 or n == len(todo)):
                    print(f"mimkit: indexing shards without an index file: {n}/{len(todo)} "
                          "(`mimkit shard --reindex` writes one)", flush=True)
                    shown = True
        missing_img = sum(out[i].get("no_image", 0) for i in todo)
        if missing_img:
            warnings.warn(f"skipping {missing_img} samples without an image member ({', '.join(IMAGE_EXTS[:4])}, ...) "
                          f"in {len(todo)} shards", stacklevel=3)
    return out  # type: ignore[return-value]


class ShardImages(Dataset):
    """Map-style dataset over WebDataset tar shards: item ``i`` is ``(transform(image), label)`` (or,
    with ``encoded=True``, ``(uint8 bytes, label, name)`` for ``data.decode_on_device``). Images are
    converted to ``in_chans`` channels as in :class:`mimkit.data.SafeImageFolder`; a member that cannot
    be decoded is replaced by the next readable sample with a counted warning, or raises with
    ``on_error='raise'``. Rows are kept in shard order; :meth:`subset` keeps that order, and
    :meth:`shard_bounds` tells the order which rows share a shard."""

    def __init__(self, urls, transform=None, in_chans: int = 3, on_error: str = "skip", encoded: bool = False,
                 what: str = "data.urls", progress: bool = True):
        if on_error not in ("skip", "raise"):
            raise ValueError(f"data.on_error must be 'skip' or 'raise', got {on_error!r}")
        paths, index = resolve_shards(urls, what)
        entries = _entries(paths, index, progress)
        self.paths = [str(p) for p in paths]
        counts = [int(e["nsamples"]) for e in entries]
        n = sum(counts)
        if n == 0:
            raise ValueError(f"the {len(paths)} shard(s) named by {what} hold no images (no member with an image "
                             f"extension: {', '.join(IMAGE_EXTS)})")
        self.shard = np.repeat(np.arange(len(paths), dtype=np.int32), counts)
        self.offset = np.concatenate([np.asarray(e["offsets"], dtype=np.int64) for e in entries])
        self.size = np.concatenate([np.asarray(e["sizes"], dtype=np.int64) for e in entries])
        self.label = np.concatenate([np.asarray(e["labels"], dtype=np.int64) for e in entries])
        for e, p in zip(entries, paths):
            if len(e["offsets"]) != int(e["nsamples"]) or (e["offsets"] and
                                                             max(e["offsets"]) + max(e["sizes"]) > p.stat().st_size):
                raise ValueError(f"the index entry of shard {p} does not match the file; rewrite the index with "
                                 "`mimkit shard --reindex`")
        self.transform, self.in_chans, self.on_error, self.encoded = transform, int(in_chans), on_error, encoded
        self.bad: set[str] = set()
        self._fds: dict[int, int] = {}
        self._pid = None

    # -- structure
    def __len__(self) -> int:
        return len(self.offset)

    def subset(self, rows) -> "ShardImages":
        """The rows ``rows`` (sorted, so shard order and windows are kept) as a new dataset."""
        import copy

        rows = np.sort(np.asarray(rows, dtype=np.int64))
        sub = copy.copy(self)
        sub.shard, sub.offset, sub.size, sub.label = (a[rows] for a in (self.shard, self.offset, self.size, self.label))
        sub.bad, sub._fds, sub._pid = set(), {}, None
        return sub

    def with_transform(self, transform) -> "ShardImages":
        sub = self.subset(np.arange(len(self)))
        sub.transform = transform
        return sub

    def shard_bounds(self) -> list[tuple[int, int]]:
        """``(start, end)`` row ranges of consecutive rows in one shard."""
        if not len(self.shard):
            return []
        cuts = np.flatnonzero(np.diff(self.shard)) + 1
        starts = np.concatenate([[0], cuts])
        ends = np.concatenate([cuts, [len(self.shard)]])
        return list(zip(starts.tolist(), ends.tolist()))

    # -- reading
    def _fd(self, s: int) -> int:
        if self._pid != os.getpid():  # a forked data worker opens its own files
            self._fds, self._pid = {}, os.getpid()
        fd = self._fds.get(s)
        if fd is None:
            if len(self._fds) >= 64:  # keep at most 64 shards open
                old = next(iter(self._fds))
                os.close(self._fds.pop(old))
            fd = self._fds[s] = os.open(self.paths[s], os.O_RDONLY)
        return fd

    def read_bytes(self, i: int) -> bytes:
        s, off, size = int(self.shard[i]), int(self.offset[i]), int(self.size[i])
        data = os.pread(self._fd(s), size, off)
        if len(data) != size:
            raise EOFError(f"the shard ends {size - len(data)} bytes early (truncated since it was indexed)")
        return data

    def name(self, i: int) -> str:
        """``shard.tar:member`` of row ``i``, for messages (the member name is read from its tar header)."""
        s, off = int(self.shard[i]), int(self.offset[i])
        member = f"@{off}"
        try:
            hdr = tarfile.TarInfo.frombuf(os.pread(self._fd(s), 512, off - 512), "utf-8", "surrogateescape")
            member = hdr.name or member
        except Exception:  # noqa: BLE001 - only for the message
            pass
        return f"{self.paths[s]}:{member}"

    def __getitem__(self, i):
        i = int(i)
        if self.encoded:
            try:
                data = self.read_bytes(i)
            except (OSError, EOFError) as e:  # the device decoder counts an empty file as undecodable, skips it
                if self.on_error == "raise":
                    raise ValueError(f"cannot read image {self.name(i)}: {type(e).__name__}: {error_text(e)}") from None
                data = b""
            return bytes_tensor(data), int(self.label[i]), self.name(i)
        n = len(self)
        img, j = first_readable(i, n, lambda j: load_image(io.BytesIO(self.read_bytes(j)), self.in_chans), self.name,
                                self.bad, self.on_error, "rewrite the shard, or set data.on_error=skip",
                                lambda: f"none of the {n} images in the shards can be read (e.g. {sorted(self.bad)[:2]}); "
                                        "check the shards")
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.label[j])

    def __del__(self):
        if getattr(self, "_pid", None) == os.getpid():
            for fd in self._fds.values():
                try:
                    os.close(fd)
                except OSError:
                    pass

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_fds"], state["_pid"] = {}, None  # file descriptors do not travel to worker processes
        return state


class ShardWindowOrder:
    """The epoch order of a :class:`ShardImages`: shards shuffled by (seed, epoch), then the samples of
    each window of ``window`` consecutive shards shuffled together (``None``: one window, a global
    shuffle). A pure function of (seed, epoch) and the dataset's rows; ``ResumableSampler`` cuts it
    into global batches and hands rank ``r`` every ``W``-th item, as for any dataset."""

    def __init__(self, bounds: list[tuple[int, int]], window: int | None):
        self.bounds, self.window = list(bounds), (int(window) if window else None)

    def __call__(self, seed: int, epoch: int, num_samples: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(mix_seed(seed, epoch))
        n_shards = len(self.bounds)
        shard_perm = torch.randperm(n_shards, generator=g).tolist()
        w = self.window or n_shards
        parts = []
        for a in range(0, n_shards, w):
            rows = torch.cat([torch.arange(*self.bounds[s]) for s in shard_perm[a:a + w]])
            parts.append(rows[torch.randperm(len(rows), generator=g)])
        order = torch.cat(parts)
        assert len(order) == num_samples
        return order


# ------------------------------------------------------------------------------------------ writing

def _prepare(job):
    """Worker: check that the image decodes (as in training) and return the bytes to store."""
    path, label, resize = job

    ext = Path(path).suffix.lower().lstrip(".")
    ext = {"jpeg": "jpg", "tiff": "tif"}.get(ext, ext)
    try:
        with open(path, "rb") as f:
            data = f.read()
        if resize:
            from PIL import Image

            with Image.open(io.BytesIO(data)) as probe:
                gray = probe.mode in ("1", "L", "LA", "I", "F") or probe.mode.startswith("I;16")
                lossless = probe.format != "JPEG"
            im = load_image(io.BytesIO(data), 1 if gray else 3)
            w, h = im.size
            scale = resize / min(w, h)
            if scale < 1:
                im = im.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BICUBIC)
            buf = io.BytesIO()
            if lossless:
                im.save(buf, format="PNG")
                ext = "png"
            else:
                im.save(buf, format="JPEG", quality=95)
                ext = "jpg"
            data = buf.getvalue()
        else:
            load_image(io.BytesIO(data), 3)
            if ext not in IMAGE_EXTS:
                ext = "img"
    except Exception as e:  # noqa: BLE001
        return None, f"{type(e).__name__}: {error_text(e)}", label, ext
    return data, None, label, ext


def write_shards(images, out, prefix: str = "train", shard_size=None, per_shard: int | None = None,
                 resize: int | None = None, seed: int = 0, shuffle: bool = True, workers: int = 0,
                 on_error: str = "skip", overwrite: bool = False, progress: bool = True) -> dict:
    """Write the images of an image folder (the formats and layout ``data.name=image_folder`` reads;
    class sub-folders become the ``cls`` field) as WebDataset shards ``out/<prefix>-000000.tar, ...``
    plus ``out/<prefix>.index.json``. A shard closes when it would exceed ``shard_size`` bytes or holds
    ``per_shard`` images (default: 1 GB). Images are shuffled with ``seed`` first, so that a few shards
    hold a random mix of classes. Unreadable images are skipped with a counted warning (or raise with
    ``on_error='raise'``). Every shard and the index are written atomically. Returns the index."""
    from webdataset import TarWriter

    from ..files import atomic_write

    if per_shard is not None and shard_size is not None:
        raise ValueError("give --shard-size or --per-shard, not both")
    if per_shard is not None and int(per_shard) < 1:
        raise ValueError(f"--per-shard must be >= 1, got {per_shard}")
    max_bytes = parse_size(shard_size if shard_size is not None else ("1GB" if per_shard is None else "1TB"))
    if max_bytes < 10240:
        raise ValueError(f"--shard-size {shard_size} is smaller than a tar file's minimum (10 KB)")
    if resize is not None and int(resize) < 1:
        raise ValueError(f"--resize must be >= 1 pixel, got {resize}")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", prefix):
        raise ValueError(f"--prefix {prefix!r} must be a plain file-name prefix (letters, digits, _ . -)")
    folder = SafeImageFolder(images, None, 3, on_error)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    old = sorted(out.glob(f"{prefix}-*.tar"))
    if old and not overwrite:
        raise ValueError(f"{out} already holds {len(old)} {prefix}-*.tar shards; choose another --out or --prefix, or "
                         "pass --overwrite")
    for p in old:
        p.unlink()
    order = list(range(len(folder.samples)))
    if shuffle:
        g = torch.Generator().manual_seed(mix_seed(seed, 0x5AAD))
        order = torch.randperm(len(order), generator=g).tolist()
    jobs = [(folder.samples[i][0], int(folder.samples[i][1]), resize) for i in order]
    shardlist: list[dict] = []
    state = {"writer": None, "file": None, "tmp": None, "count": 0, "bytes": 0}
    skipped: list[str] = []
    t0 = last = time.time()
    written = 0

    def close():
        w = state["writer"]
        if w is None:
            return
        w.close()
        f = state["file"]
        f.flush()
        os.fsync(f.fileno())
        f.close()
        final = out / f"{prefix}-{len(shardlist):06d}.tar"
        os.replace(state["tmp"], final)
        entry = scan_shard(final)
        entry.pop("no_image", None)
        shardlist.append(entry)
        state.update(writer=None, file=None, tmp=None, count=0, bytes=0)

    def open_new():
        tmp = out / f".{prefix}-{len(shardlist):06d}.tar.tmp"
        f = open(tmp, "wb")
        state.update(file=f, tmp=tmp, writer=TarWriter(f, encoder=False, mtime=0), count=0, bytes=1024)

    results = _map(_prepare, jobs, workers)
    try:
        for (path, _, _), (data, err, label, ext) in zip(jobs, results):
            if data is None:
                if on_error == "raise":
                    raise ValueError(f"cannot read image {path}: {err} (remove or fix the file, or pass --on-error skip)")
                skipped.append(path)
                warnings.warn(f"skipping unreadable image {path} ({err}); {len(skipped)} of {len(jobs)} images skipped "
                              "so far", stacklevel=2)
                continue
            cls = str(label).encode()
            # image + cls members (header + data padded to 512 bytes each); the file is padded to 10 KiB
            need = 512 + (len(data) + 511) // 512 * 512 + 512 + 512
            if state["writer"] is not None and (-(-(state["bytes"] + need) // 10240) * 10240 > max_bytes or
                                                (per_shard is not None and state["count"] >= int(per_shard))):
                close()
            if state["writer"] is None:
                open_new()
            state["writer"].write({"__key__": f"{written:09d}", ext: data, "cls": cls})
            state["count"] += 1
            state["bytes"] += need
            written += 1
            if progress and time.time() - last > 2:
                last = time.time()
                print(f"mimkit shard: {written + len(skipped)}/{len(jobs)} images, {len(shardlist) + 1} shards, "
                      f"{len(skipped)} skipped, {written / (last - t0):.0f} img/s", flush=True)
        close()
    finally:
        if state["file"] is not None:
            state["file"].close()
            os.unlink(state["tmp"])
    if not written:
        raise ValueError(f"none of the {len(jobs)} images under {images} can be read; nothing written")
    index = {"__kind__": INDEX_KIND, "wids_version": 1, "name": prefix, "written_by": "mimkit shard",
             "source": str(Path(images).resolve()), "classes": list(folder.classes), "total": written,
             "skipped": len(skipped), "resize": resize, "seed": seed if shuffle else None, "shardlist": shardlist}
    atomic_write(out / f"{prefix}{INDEX_SUFFIX}", lambda tmp: Path(tmp).write_text(json.dumps(index)))
    return index


def reindex(spec, out: Path | None = None, name: str = "shards") -> Path:
    """Scan the shards named by ``spec`` and write an index for them (``<folder>/<name>.index.json``)."""
    from ..files import atomic_write

    paths, _ = resolve_shards(spec, "--reindex")
    parents = {p.parent.resolve() for p in paths}
    if len(parents) != 1:
        raise ValueError("--reindex needs shards in one folder (the index lists them relative to it)")
    folder = parents.pop()
    entries = _entries(paths, None)
    for e in entries:
        e.pop("no_image", None)
    index = {"__kind__": INDEX_KIND, "wids_version": 1, "name": name, "written_by": "mimkit shard --reindex",
             "total": sum(e["nsamples"] for e in entries), "shardlist": entries}
    target = Path(out) if out else folder / f"{name}{INDEX_SUFFIX}"
    atomic_write(target, lambda tmp: Path(tmp).write_text(json.dumps(index)))
    return target


def _map(fn, jobs, workers: int):
    """``map(fn, jobs)`` in order, in ``workers`` processes when > 0 (chunked, lazily consumed)."""
    if workers and workers > 0 and len(jobs) > 64:
        import multiprocessing as mp

        ctx = mp.get_context("fork") if hasattr(os, "fork") else mp.get_context()
        pool = ctx.Pool(workers)

        def gen():
            try:
                yield from pool.imap(fn, jobs, chunksize=32)
            finally:
                pool.terminate()

        return gen()
    return map(fn, jobs)
