"""One registry of named recipes: ``mimkit.create("mae_vit_base_patch16", **overrides)``."""
from __future__ import annotations

import difflib
import importlib
import inspect
import pkgutil
from typing import Any, Callable

_RECIPES: dict[str, tuple[Callable[..., Any], dict[str, Any], str]] = {}
_LOADED = False
#: builders by short name, for models built outside a recipe (e.g. converted from transformers)
BUILDERS: dict[str, Callable[..., Any]] = {}


def register_builder(name: str, builder: Callable[..., Any]) -> Callable[..., Any]:
    BUILDERS[name] = builder
    return builder


def register_recipe(name: str, builder: Callable[..., Any], description: str = "", **defaults: Any) -> None:
    """Register ``name`` as ``builder(**defaults)``. ``builder`` is a model class or factory."""
    if name in _RECIPES:
        raise ValueError(f"recipe {name!r} is registered twice")
    _check_keys(builder, defaults, name)
    _RECIPES[name] = (builder, dict(defaults), description)


def _accepted(builder) -> set[str] | None:
    params = inspect.signature(builder).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return {k for k, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _check_keys(builder, kwargs: dict, name: str) -> None:
    accepted = _accepted(builder)
    if accepted is None:
        return
    for key in kwargs:
        if key not in accepted:
            close = difflib.get_close_matches(key, sorted(accepted), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; valid keys: {', '.join(sorted(accepted))}"
            raise ValueError(f"unknown option {key!r} for recipe {name!r}{hint}")


def _load_all() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    import mimkit.methods as methods

    for info in pkgutil.iter_modules(methods.__path__):
        importlib.import_module(f"mimkit.methods.{info.name}")


def list_models(pattern: str | None = None) -> list[str]:
    """Names of all registered recipes (optionally those containing ``pattern``)."""
    _load_all()
    names = sorted(_RECIPES)
    return [n for n in names if pattern is None or pattern in n]


def recipe_info(name: str) -> tuple[Callable[..., Any], dict[str, Any], str]:
    _load_all()
    if name not in _RECIPES:
        close = difflib.get_close_matches(name, list(_RECIPES), n=3, cutoff=0.4)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"unknown recipe {name!r}.{hint} `mimkit.list_models()` or `mimkit models` lists them all.")
    return _RECIPES[name]


def create(name: str, **overrides: Any):
    """Build the recipe ``name`` with keyword ``overrides`` (e.g. ``mask_ratio=0.6``)."""
    builder, defaults, _ = recipe_info(name)
    _check_keys(builder, overrides, name)
    kwargs = {**defaults, **overrides}
    model = builder(**kwargs)
    model.mimkit_config = {"recipe": name, **kwargs}
    return model
