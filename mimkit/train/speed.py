"""Speed levers of the training and evaluation loops, each measured in ``docs/speed.md``
(``python benchmarks/cpu_roofline.py``).

* :func:`compile_for_training`: ``torch.compile`` of a model's forward (inductor also compiles its
  backward). On the CPU, attention over short sequences is switched to the matmul + softmax path
  (timm's ``fused_attn = False``) first: eagerly the CPU flash kernel and that path cost the same at
  the tiny recipes' 13-65 tokens, but inductor fuses the written-out softmax, scaling and
  reshapes with their neighbours, which it cannot do across the flash kernel.
* :func:`should_compile`: ``trainer.compile=auto`` compiles when the run is long enough to win back
  the compile time (inductor takes 30-70 s for a tiny recipe on 2 CPU cores, seconds when its cache
  is warm) and a C++ compiler is there for inductor's CPU backend.
* :func:`short_sequence_attention`: the switch itself, for any model built on timm attention.
* :func:`compile_methods`: ``torch.compile`` of named parts only, for a model whose whole forward does
  not compile well (iBOT: masks of a different size in every step, and a loss that updates its centres
  in place): its encoders' token passes, which have fixed shapes and hold most of the work.
"""
from __future__ import annotations

import shutil
import warnings

import torch

MATH_ATTENTION_MAX_TOKENS = 64  # CPU: at most this many tokens per sequence -> matmul + softmax attention
COMPILE_MIN_STEPS = 600  # trainer.compile=auto: compile runs of at least this many optimiser steps
COMPILE_MIN_MINUTES = 4.0  # ... or budget runs (trainer.max_minutes) of at least this many minutes


def max_tokens(model: torch.nn.Module) -> int | None:
    """The longest token sequence the model's attention sees (patches + prefix tokens; Swin: its
    window), or None when the model does not say."""
    enc = getattr(model, "encoder", model)
    window = getattr(enc, "window_size", None)
    if isinstance(window, int):  # Swin attends within windows of window x window tokens
        return window * window
    n = getattr(enc, "num_patches", None)
    if n is None:
        return None
    prefix = 1 if getattr(enc, "cls_token", None) is not None else 0
    return int(n) + prefix


def short_sequence_attention(model: torch.nn.Module, enable: bool = True) -> int:
    """Set timm's ``fused_attn`` to ``not enable`` on every attention module of ``model``; returns
    how many were switched. Outputs are the same function (softmax(q k^T / sqrt(d)) v) either way."""
    n = 0
    for mod in model.modules():
        if hasattr(mod, "fused_attn"):
            mod.fused_attn = not enable
            n += 1
    return n


def has_cpu_compiler() -> bool:
    """Inductor's CPU backend builds C++: a compiler must be on PATH."""
    import os

    return any(shutil.which(c) for c in (os.environ.get("CXX") or "g++", "g++", "c++", "clang++"))


def should_compile(setting, total_steps: int | None, device_type: str) -> bool:
    """``trainer.compile``: true / false, or ``auto`` (long runs on a CPU with a C++ compiler, or on CUDA)."""
    if isinstance(setting, str) and setting.lower() == "auto":
        if device_type == "cpu" and not has_cpu_compiler():
            return False
        if device_type not in ("cpu", "cuda"):
            return False
        return total_steps is not None and total_steps >= COMPILE_MIN_STEPS
    if isinstance(setting, str):
        if setting.lower() in ("true", "false"):
            return setting.lower() == "true"
        raise ValueError(f"trainer.compile must be true, false or auto, got {setting!r}")
    return bool(setting)


def _short_attention_on_cpu(model: torch.nn.Module, device) -> None:
    longest = max_tokens(model)
    if torch.device(device or "cpu").type == "cpu" and longest is not None and longest <= MATH_ATTENTION_MAX_TOKENS:
        short_sequence_attention(model)


def compile_for_training(model: torch.nn.Module, device=None):
    """``torch.compile(model)`` with short-sequence attention written out on the CPU."""
    _short_attention_on_cpu(model, device)
    return torch.compile(model)


class Compiled:
    """``fn`` (a model, or one of its methods) compiled, falling back to the eager ``fn`` for good (one
    warning) if compiling fails at a call; the failed call is repeated eagerly from the same random
    state, so it draws the same masks and drop-path as an eager run would. A model gets short-sequence
    attention on the CPU (:func:`compile_for_training`); a method is compiled for fixed shapes."""

    def __init__(self, fn, device_type: str = "cpu"):
        self.model = fn
        self.fn = compile_for_training(fn, device_type) if isinstance(fn, torch.nn.Module) else \
            torch.compile(fn, dynamic=False)

    def __call__(self, *args, **kwargs):
        if self.fn is None:
            return self.model(*args, **kwargs)
        state = torch.get_rng_state()
        try:
            return self.fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - any compiler failure (no C++ compiler, an unsupported op)
            compile_failed(e)
            self.fn = None
            torch.set_rng_state(state)
            return self.model(*args, **kwargs)


def compile_methods(model: torch.nn.Module, names, device_type: str = "cpu"):
    """Compile the methods ``names`` (dotted paths from ``model``: ``"encoder.forward_tokens"``) in place,
    each a :class:`Compiled` with its eager fallback; state-dict keys stay unchanged. Returns a function
    that puts the eager methods back (call it before the model is copied or used elsewhere: a copy would
    keep calling the original's compiled method)."""
    _short_attention_on_cpu(model, device_type)
    patched = []
    for name in names:
        path, _, method = str(name).rpartition(".")
        owner = model.get_submodule(path) if path else model
        eager = getattr(owner, method, None)
        if not callable(eager):
            raise ValueError(f"compile_training names {name!r}, which is not a method of {type(model).__name__}")
        owner.__dict__[method] = Compiled(eager, device_type)
        patched.append((owner, method))

    def restore():
        for owner, method in patched:
            owner.__dict__.pop(method, None)
    return restore


_warned = False


def compile_failed(error: Exception) -> None:
    """One warning when ``torch.compile`` fails; the caller then runs eagerly."""
    global _warned
    if not _warned:
        _warned = True
        first = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
        warnings.warn(f"torch.compile failed ({type(error).__name__}: {first}); training continues eagerly "
                      "(set trainer.compile=false to skip the attempt)", stacklevel=3)
