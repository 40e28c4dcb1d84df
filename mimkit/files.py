"""Safe, atomic model files, below everything that builds a model: atomic writes, safetensors reads,
PyTorch pickles read with ``weights_only=True`` and an allowlist, checkpoint sanity checks.

Writes are atomic (temporary file in the same directory, then ``os.replace``), so a crash never
leaves a half-written file under the final name. Reads give clear errors for missing, truncated or
foreign files.

Safe by default: every PyTorch pickle mimkit reads (Lightning ``.ckpt``, official MAE ``.pth``,
tokenizer weights) goes through :func:`read_torch_checkpoint`, which unpickles with
``weights_only=True`` and the allowlist :data:`SAFE_GLOBALS`. A file that needs anything else is
refused with :class:`UntrustedCheckpointError` unless the caller opts in (``trust_checkpoint=True``,
``--trust-checkpoint``, or the :func:`trusted_checkpoints` context).

This module imports nothing of mimkit; building a model from a saved config is :mod:`mimkit.checkpoint`."""

from __future__ import annotations

import argparse
import collections
import contextlib
import contextvars
import os
import pickle
import re
import tempfile
from pathlib import Path

import torch

CONFIG = "config.json"
WEIGHTS = "model.safetensors"

# Classes a checkpoint may hold beyond torch's own weights-only set (tensors, storages, dtypes, devices,
# torch.Size, OrderedDict and plain Python containers and scalars). The .ckpt files mimkit and
# Lightning write need none of them: every recipe family (MAE, SimMIM ViT/Swin, MaskFeat, BEiT, dVAE,
# I-JEPA, data2vec 2.0), the step/epoch/last checkpoints and the mimkit 0.1 fixtures load with torch's
# set alone, since hyper_parameters hold the YAML config (plain types) and loop, optimiser, scheduler
# and callback states are dicts of numbers, strings and tensors. Each entry below is for one foreign format:
SAFE_GLOBALS: tuple[type, ...] = (
    argparse.Namespace,  # official MAE training checkpoints (checkpoint-N.pth) keep the run's options in "args"
)


class YacsCfgNode:
    """Stand-in for ``yacs.config.CfgNode`` (a ``dict`` subclass with a few bookkeeping attributes), the
    ``config`` that microsoft/SimMIM's training checkpoints hold: each node is unpickled as a plain
    ``OrderedDict`` (its bookkeeping attributes land in that dict's ``__dict__``); nothing of yacs is
    imported or run."""

    def __new__(cls, *args, **kwargs):
        return collections.OrderedDict()


def _numpy_scalar_globals() -> tuple:
    """numpy scalars (``np.float64(0.5)``: ``numpy.core.multiarray.scalar`` and its dtype), which fairseq
    training checkpoints hold in their logged meters; not numpy arrays."""
    import numpy as np

    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import scalar
    dtypes = tuple(type(np.dtype(t)) for t in ("float64", "float32", "int64"))
    return ((scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"), np.dtype) + dtypes


# What each official format's files hold beyond torch's set (``mimkit import --from official``); a file
# is read with its own format's entries only (all of them when the format is guessed from the keys):
OFFICIAL_GLOBALS = {
    "mae": (argparse.Namespace,),  # facebookresearch/mae checkpoint-N.pth: "args"
    "beit": (argparse.Namespace,),  # microsoft/unilm beit checkpoint-N.pth: "args"
    "simmim": ((YacsCfgNode, "yacs.config.CfgNode"),),  # microsoft/SimMIM ckpt_epoch_N.pth: "config"
    "ijepa": (),  # facebookresearch/ijepa .pth.tar: state dicts, numbers and strings only
    "data2vec2": (argparse.Namespace, _numpy_scalar_globals),  # fairseq: legacy "args", numpy meters
}


def official_globals(method: str | None = None) -> tuple:
    """The allowlist entries for one official format (None: every format's)."""
    if method is not None and method not in OFFICIAL_GLOBALS:
        raise ValueError(f"unknown official format {method!r}; --method is one of {', '.join(OFFICIAL_GLOBALS)}")
    out = []
    for name in [method] if method else list(OFFICIAL_GLOBALS):
        for g in OFFICIAL_GLOBALS[name]:
            items = g() if callable(g) and not isinstance(g, type) else (g,)
            out += [i for i in items if i not in out]
    return tuple(out)


def _global_name(g) -> str:
    return g[1] if isinstance(g, tuple) else f"{g.__module__}.{g.__qualname__}"


TRUST_HINT = "If you trust this file, pass --trust-checkpoint (trust_checkpoint=True in Python)."

_TRUSTED: contextvars.ContextVar[bool] = contextvars.ContextVar("mimkit_trust_checkpoint", default=False)


class UntrustedCheckpointError(ValueError):
    """A checkpoint that only full unpickling could read: it names classes or functions outside
    :data:`SAFE_GLOBALS` and torch's weights-only set, and unpickling them could run code."""

    def __init__(self, path, names):
        self.path, self.names = Path(path), list(names)
        shown = ", ".join(self.names[:3]) + (f" and {len(self.names) - 3} more" if len(self.names) > 3 else "")
        super().__init__(
            f"untrusted checkpoint {path}: it holds {shown}, not only tensors and plain containers, "
            f"and unpickling it could run code, so mimkit does not load it. {TRUST_HINT}"
        )


@contextlib.contextmanager
def trusted_checkpoints(enabled: bool = True):
    """Within this block, checkpoint reads unpickle fully (``--trust-checkpoint``): only for files whose
    source you trust. ``enabled=False`` changes nothing."""
    token = _TRUSTED.set(bool(enabled) or _TRUSTED.get())
    try:
        yield
    finally:
        _TRUSTED.reset(token)


def is_trusted(trust_checkpoint: bool = False) -> bool:
    """Whether a read may unpickle fully: the caller's ``trust_checkpoint`` or an enclosing
    :func:`trusted_checkpoints` block."""
    return bool(trust_checkpoint) or _TRUSTED.get()


def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask() to read is racy with other threads)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


def atomic_write(path, write_fn) -> None:
    """Call ``write_fn(tmp_path)`` on a temporary file in the same directory, flush it to disk, then
    rename it onto ``path`` (``os.replace`` is atomic): a crash or kill at any moment leaves either the
    old file or the new one under ``path``, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
    try:
        write_fn(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        try:  # make the rename itself durable
            dfd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError:
            pass
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def jsonable(obj):
    """Tuples as lists, recursively (a config as JSON/YAML writes and reads it back)."""
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    return obj


def read_safetensors(path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path} is not a readable safetensors file (truncated or corrupt?): {e}") from None


def check_checkpoint_file(path) -> None:
    """Cheap sanity check of a PyTorch checkpoint file before a long set-up: it exists, is not empty
    and is a complete zip archive (torch.save's format; a truncated copy has no central directory)."""
    import zipfile

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise ValueError(f"{path} is a directory, not a checkpoint file")
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"{path} is empty (0 bytes): the write never finished. Use an earlier checkpoint.")
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path} is not a complete PyTorch checkpoint ({size} bytes; truncated, or not written by "
            "torch.save). Use an earlier checkpoint (last.ckpt or a periodic one in checkpoints/)."
        )


def check_training_checkpoint(ckpt, path, resume: bool = True) -> dict:
    """``ckpt`` (loaded from ``path``) must be a mimkit/Lightning training checkpoint; with ``resume``
    it must also hold the optimiser and loop state needed to continue."""
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        kind = type(ckpt).__name__ if not isinstance(ckpt, dict) else f"dict with keys {sorted(map(str, ckpt))[:6]}"
        raise ValueError(
            f"{path} is not a mimkit training checkpoint (it holds a {kind}); pass a .ckpt written by "
            "`mimkit pretrain` (run_dir/checkpoints/last.ckpt)"
        )
    if not (ckpt.get("hyper_parameters") or {}).get("model_config"):
        raise ValueError(
            f"{path} is a Lightning checkpoint but not one of `mimkit pretrain` (no model_config in hyper_parameters)"
        )
    if resume:
        missing = [k for k in ("optimizer_states", "loops") if k not in ckpt]
        if missing:
            raise ValueError(
                f"{path} holds weights only (no {', '.join(missing)}), so training cannot continue from "
                "it; start a new run, or resume from a full checkpoint"
            )
    return ckpt


def read_torch_checkpoint(path, mmap: bool = False, trust_checkpoint: bool = False, extra_globals=()):
    """``torch.load`` on CPU with ``weights_only=True`` and :data:`SAFE_GLOBALS` (+ ``extra_globals``,
    e.g. :func:`official_globals` of a format); clear errors for damaged files and
    :class:`UntrustedCheckpointError` for files that need more. ``trust_checkpoint``
    (or :func:`trusted_checkpoints`) unpickles fully instead. ``mmap`` maps tensors lazily (a cheap
    look at a large checkpoint; ignored for legacy, non-zip files, which torch cannot map)."""
    import zipfile

    path = Path(path)
    trusted = is_trusted(trust_checkpoint)
    mmap = mmap and path.is_file() and zipfile.is_zipfile(path)
    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS) + list(extra_globals)):
            return torch.load(path, map_location="cpu", weights_only=not trusted, mmap=mmap)
    except pickle.UnpicklingError as e:  # weights_only refused something, or the bytes are no pickle
        names = [] if trusted else unsafe_globals(path, str(e), extra_globals)
        if names:
            raise UntrustedCheckpointError(path, names) from None
        error = e
    except Exception as e:  # torch raises many types for corrupt files
        error = e
    reason = f"{type(error).__name__}: {_first_line(error)}"
    unreadable = ValueError(
        f"{path} is not a readable PyTorch checkpoint ({reason}); the file is truncated or not "
        "a checkpoint. Use an earlier checkpoint (e.g. last.ckpt or a periodic one)."
    )
    unreadable.reason = reason  # for callers that word their own message
    raise unreadable from None


def _first_line(error: Exception) -> str:
    text = str(error)
    if "Weights only load failed" in text:  # torch's long advice about weights_only: keep its cause
        text = text.rsplit("WeightsUnpickler error:", 1)[-1].split("Check the documentation of torch.load")[0]
    return " ".join(text.split())[:200]


def unsafe_globals(path, error_text: str = "", extra_globals=()) -> list[str]:
    """Classes/functions a pickled checkpoint would import beyond the safe set: the one torch's
    weights-only error names and those found by reading the pickle's opcodes (nothing is executed).
    Empty when the file is no pickle at all (damaged or foreign bytes)."""
    found = set(re.findall(r"GLOBAL (\S+)", error_text))
    try:
        names = _pickle_globals(path)
    except Exception:  # unreadable archive: not a question of trust
        names = set()
    try:
        from torch._weights_only_unpickler import _get_allowed_globals

        allowed = set(_get_allowed_globals())
    except ImportError:  # a torch without this table: name everything outside torch
        allowed = {n for n in names if n.startswith("torch.")}
    allowed |= {_global_name(c) for c in (*SAFE_GLOBALS, *extra_globals)}
    names = {"builtins." + n.removeprefix("__builtin__.") if n.startswith("__builtin__.") else n for n in names}
    unsafe = {n.removeprefix("builtins.") for n in names if n not in allowed}
    return sorted(unsafe | found)


def _pickle_globals(path) -> set[str]:
    """Names the pickles in ``path`` (a torch zip archive's data.pkl, or a legacy/raw pickle stream)
    import, from GLOBAL/INST/STACK_GLOBAL opcodes, read with :mod:`pickletools` without unpickling."""
    import io
    import zipfile

    path = Path(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            member = next((n for n in z.namelist() if n.endswith("data.pkl")), None)
            data = z.read(member) if member else b""
        return _stream_globals(io.BytesIO(data), len(data))
    with open(path, "rb") as f:
        return _stream_globals(f, path.stat().st_size)


def _stream_globals(f, size: int) -> set[str]:
    """:func:`_pickle_globals` of an open stream: the pickles one after another (a legacy torch.save
    file holds several), until the end or bytes that are no pickle (a legacy file's raw tensors)."""
    import pickletools

    names: set[str] = set()
    while f.tell() < size:
        strings: list[str] = []  # pushed strings: STACK_GLOBAL takes module and name from the last two
        memo: dict[int, object] = {}
        last = None
        try:
            for op, arg, _ in pickletools.genops(f):
                if op.name in ("GLOBAL", "INST"):
                    names.add(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.add(f"{strings[-2]}.{strings[-1]}")
                if op.name == "MEMOIZE":
                    memo[len(memo)] = last
                elif op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
                    memo[int(arg)] = last
                elif op.name in ("GET", "BINGET", "LONG_BINGET"):
                    last = memo.get(int(arg))
                    if isinstance(last, str):
                        strings.append(last)
                else:
                    last = arg if isinstance(arg, str) else None
                    if last is not None and ("UNICODE" in op.name or "STRING" in op.name):
                        strings.append(last)
        except Exception:  # not (or no longer) a pickle
            break
    return names
