"""Hugging Face ``transformers`` <-> mimkit.

``from_hf(model_or_dir)`` and ``to_hf(model)`` dispatch on the model family. Each family lives in
its own module ``mimkit.interop.hf_<family>`` exposing ``FROM_HF`` (transformers class name ->
converter) and ``TO_HF`` (mimkit method name -> converter)."""
from __future__ import annotations

import importlib
import os
import pickle
from pathlib import Path

import torch

_FAMILIES = ("hf_vitmae", "hf_simmim", "hf_beit", "hf_ijepa", "hf_vit")


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
        hf_model = load_hf_dir(hf_model)
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


def load_hf_dir(path):
    """The ``transformers`` model a ``save_pretrained`` directory holds, built by the class its config.json
    names; PyTorch ``.bin`` weights are read weights-only unless --trust-checkpoint is given."""
    import transformers

    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path} is not a directory saved with save_pretrained()")
    config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
    arch = (config.architectures or [None])[0]
    if arch is None or not hasattr(transformers, arch):
        raise ValueError(f"{path}/config.json names no known architecture ({arch!r})")
    cls = getattr(transformers, arch)
    trusted = _trusted_weights(path)
    if trusted is not None:
        return cls.from_pretrained(None, config=config, state_dict=trusted)
    try:  # transformers reads pytorch_model.bin weights-only; mimkit turns its refusal into one clear line
        return cls.from_pretrained(path, local_files_only=True)
    except pickle.UnpicklingError as e:
        raise _untrusted(path, e) from None


def _trusted_weights(directory: str) -> dict | None:
    """Under --trust-checkpoint, the tensors of the ``.bin`` weights of a directory without
    safetensors, unpickled fully here (transformers always reads them weights-only); else None."""
    from ..files import is_trusted, read_torch_checkpoint

    d = Path(directory)
    bins = sorted(d.glob("*.bin"))
    if not is_trusted() or not bins or any(d.glob("*.safetensors")):
        return None
    sd = {}
    for f in bins:
        obj = read_torch_checkpoint(f, trust_checkpoint=True)
        sd.update({k: v for k, v in obj.items() if isinstance(v, torch.Tensor)} if isinstance(obj, dict) else {})
    return sd


def _untrusted(directory: str, error: Exception):
    """The clear refusal for a directory whose PyTorch weights file needs full unpickling."""
    from ..files import UntrustedCheckpointError, unsafe_globals

    files = sorted(p for p in Path(directory).glob("*") if p.suffix in (".bin", ".pt", ".pth"))
    for f in files:
        names = unsafe_globals(f)
        if names:
            return UntrustedCheckpointError(f, names)
    return UntrustedCheckpointError(files[0] if files else directory,
                                    unsafe_globals(directory, str(error)) or ["objects other than tensors"])
