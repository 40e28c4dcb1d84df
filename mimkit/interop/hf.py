"""Hugging Face ``transformers`` <-> mimkit.

``from_hf(model_or_dir)`` and ``to_hf(model)`` dispatch on the model family. Each family lives in
its own module ``mimkit.interop.hf_<family>`` exposing ``FROM_HF`` (transformers class name ->
converter) and ``TO_HF`` (mimkit method name -> converter)."""
from __future__ import annotations

import importlib
import os

_FAMILIES = ("hf_vitmae", "hf_simmim", "hf_beit")


def _tables():
    from_hf, to_hf = {}, {}
    for fam in _FAMILIES:
        try:
            mod = importlib.import_module(f"mimkit.interop.{fam}")
        except ModuleNotFoundError as e:  # a family not written yet
            if e.name == f"mimkit.interop.{fam}":
                continue
            raise
        from_hf.update(getattr(mod, "FROM_HF", {}))
        to_hf.update(getattr(mod, "TO_HF", {}))
    return from_hf, to_hf


def from_hf(hf_model):
    """Convert a ``transformers`` model (instance or local ``save_pretrained`` directory) to mimkit."""
    if isinstance(hf_model, (str, os.PathLike)):
        hf_model = _load_dir(hf_model)
    table, _ = _tables()
    name = type(hf_model).__name__
    if name not in table:
        raise TypeError(f"cannot convert {name}; supported transformers classes: {sorted(table)}")
    return table[name](hf_model)


def to_hf(model):
    """Convert a mimkit model to the matching ``transformers`` model with identical weights."""
    _, table = _tables()
    method = getattr(model, "method", None)
    if method not in table:
        raise TypeError(f"no transformers export for method {method!r}; supported: {sorted(table)}")
    return table[method](model)


def _load_dir(path):
    import transformers

    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path} is not a directory saved with save_pretrained()")
    config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
    arch = (config.architectures or [None])[0]
    if arch is None or not hasattr(transformers, arch):
        raise ValueError(f"{path}/config.json names no known architecture ({arch!r})")
    return getattr(transformers, arch).from_pretrained(path, local_files_only=True)
