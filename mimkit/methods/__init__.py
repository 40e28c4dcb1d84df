"""Methods: each file composes masking, an encoder, a head and a target/loss, and registers its builders
and recipes in :mod:`mimkit.registry` when it is imported.

Importing this package imports every module in it (as timm's ``models/__init__.py`` does), so a new
method is a new file here and nothing else: no list to edit. ``import mimkit`` imports this package;
the registry itself imports no method (``tests/test_architecture.py``)."""

from __future__ import annotations

import importlib
import pkgutil


def _import_all() -> tuple[str, ...]:
    names = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
    for name in names:
        importlib.import_module(f"{__name__}.{name}")
    return tuple(names)


MODULES = _import_all()  # the method modules, each imported (and so registered) once
