"""One registry of model builders and named recipes, as timm's ``register_model`` + ``create_model``.

* A **builder** is a model class (or factory) under a short name: ``"mae"``, ``"simmim"``, ``"beit"``,
  ``"dvae"``... Models that come from elsewhere (converted from ``transformers`` or ``timm``) are built
  from their builder name.
* A **recipe** is a builder plus default options under a descriptive name:
  ``mimkit.create("mae_vit_base_patch16", mask_ratio=0.6)``.

:func:`create` is the only place that builds a registered model, and the only place that sets its
``mimkit_config`` (``{"recipe": name, **options}`` or ``{"recipe": None, "builder": name, **options}``),
which :func:`build_from_config` turns back into the same model (``config.json`` of a saved model, the
``model_config`` of a Lightning checkpoint); a built part passed to a builder (BEiT's tokenizer) is
recorded as ``<name>_config``. Builders and recipes are registered by the modules that stand above
the registry when they are imported, as timm's models register themselves: every module of
:mod:`mimkit.methods` and :mod:`mimkit.tokenizer.recipes`, which ``import mimkit`` imports. The registry
imports none of them (``tests/test_architecture.py``): it only holds what was registered.
"""
from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass, field, replace
from typing import Any, Callable

__all__ = ["build_from_config", "builder_name", "create", "get_builder", "list_builders", "list_models",
           "option_names", "recipe_info", "register_builder", "register_options", "register_recipe"]


@dataclass(frozen=True)
class _Entry:
    builder: Callable[..., Any]
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    recipe: bool = True  # False: a builder under its short name
    builder_name: str = ""
    # config-level options turned into constructor arguments before the builder is called (e.g. BEiT's
    # tokenizer_path / tokenizer_config -> a built tokenizer): (option names, function kwargs -> kwargs)
    prepare: tuple[frozenset, Callable[[dict], dict]] | None = None


_REGISTRY: dict[str, _Entry] = {}


def register_builder(name: str, builder: Callable[..., Any], *, options=(), prepare=None) -> Callable[..., Any]:
    """Register ``builder`` (a model class or factory) under the short name ``name``.

    ``options``/``prepare``: option names the builder does not take itself and the function that turns
    them into constructor arguments (the config layer's job, e.g. loading a tokenizer file)."""
    if name in _REGISTRY:
        raise ValueError(f"{name!r} is registered twice")
    hook = (frozenset(options), prepare) if prepare is not None or options else None
    _REGISTRY[name] = _Entry(builder, {}, "", recipe=False, builder_name=name, prepare=hook)
    return builder


def register_options(builder: str, options, prepare: Callable[[dict], dict]) -> None:
    """Attach ``prepare`` (option names -> constructor arguments) to the registered builder ``builder``
    and to its recipes: how a layer above the core (BEiT's tokenizer files, :mod:`mimkit.tokenizer.recipes`)
    serves options the builder declares without importing that layer."""
    hook = (frozenset(options), prepare)
    base = _builder_entry(builder)
    if base.prepare is not None and base.prepare[1] is not None:
        raise ValueError(f"options of builder {builder!r} are prepared twice")
    for key, entry in list(_REGISTRY.items()):
        if entry.builder_name == base.builder_name:
            _REGISTRY[key] = replace(entry, prepare=hook)


def register_recipe(name: str, builder, description: str = "", **defaults: Any) -> None:
    """Register ``name`` as ``builder(**defaults)``; ``builder`` is a registered builder or its name."""
    if name in _REGISTRY:
        raise ValueError(f"recipe {name!r} is registered twice")
    base = _builder_entry(builder)
    entry = _Entry(base.builder, dict(defaults), description, recipe=True, builder_name=base.builder_name,
                   prepare=base.prepare)
    _check_keys(entry, defaults, name)
    _REGISTRY[name] = entry


def _builder_entry(builder) -> _Entry:
    if isinstance(builder, str):
        entry = _REGISTRY.get(builder)
        if entry is None or entry.recipe:
            raise ValueError(f"unknown builder {builder!r}; register it with register_builder first")
        return entry
    for entry in _REGISTRY.values():
        if not entry.recipe and entry.builder is builder:
            return entry
    raise ValueError(f"{getattr(builder, '__name__', builder)!r} is not a registered builder; call "
                     "register_builder(name, builder) before registering its recipes")


def _entry(name: str) -> _Entry:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.4)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"unknown recipe {name!r}.{hint} `mimkit.list_models()` or `mimkit models` lists them all.")
    return _REGISTRY[name]


def _accepted(entry: _Entry) -> set[str] | None:
    b = entry.builder  # a class's options are its __init__'s (a compatibility __new__ may take **kwargs)
    params = dict(inspect.signature(b.__init__ if isinstance(b, type) else b).parameters)
    params.pop("self", None)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    names = {k for k, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    if entry.prepare is not None:
        names |= entry.prepare[0]
    return names


def _check_keys(entry: _Entry, kwargs: dict, name: str) -> None:
    accepted = _accepted(entry)
    if accepted is None:
        return
    for key in kwargs:
        if key not in accepted:
            close = difflib.get_close_matches(key, sorted(accepted), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; valid keys: {', '.join(sorted(accepted))}"
            raise ValueError(f"unknown option {key!r} for recipe {name!r}{hint}")


def list_models(pattern: str | None = None) -> list[str]:
    """Names of all registered recipes (optionally those containing ``pattern``)."""
    return sorted(n for n, e in _REGISTRY.items() if e.recipe and (pattern is None or pattern in n))


def list_builders() -> list[str]:
    """Short names of all registered builders (``mae``, ``simmim``, ..., ``dvae``)."""
    return sorted(n for n, e in _REGISTRY.items() if not e.recipe)


def get_builder(name: str) -> Callable[..., Any]:
    """The model class (or factory) behind a builder or recipe name."""
    return _entry(name).builder


def builder_name(name: str) -> str:
    """Short builder name of a recipe (``"mae_vit_base_patch16"`` -> ``"mae"``), or the name itself."""
    return _entry(name).builder_name


def option_names(name: str) -> set[str] | None:
    """Options a builder or recipe accepts (None: any)."""
    return _accepted(_entry(name))


def recipe_info(name: str) -> tuple[Callable[..., Any], dict[str, Any], str]:
    """``(builder, defaults, description)`` of a recipe (or of a builder, with no defaults)."""
    e = _entry(name)
    return e.builder, dict(e.defaults), e.description


def create(name: str, **overrides: Any):
    """Build the recipe (or builder) ``name`` with keyword ``overrides`` (e.g. ``mask_ratio=0.6``)."""
    entry = _entry(name)
    _check_keys(entry, overrides, name)
    kwargs = {**entry.defaults, **overrides}
    ctor = dict(kwargs)
    if entry.prepare is not None:
        keys, prepare = entry.prepare
        if prepare is None:
            raise ValueError(f"nothing prepares the options {', '.join(sorted(keys))} of {name!r} "
                             "(register_options was not called)")
        ctor = prepare({k: ctor.pop(k) for k in keys if k in ctor}) | ctor
    model = entry.builder(**ctor)
    for key, value in ctor.items():  # a built part (BEiT's tokenizer) is recorded by its own config
        part_config = getattr(value, "mimkit_config", None)
        if part_config and key not in kwargs:
            kwargs.setdefault(f"{key}_config", dict(part_config))
    model.mimkit_config = {"recipe": name, **kwargs} if entry.recipe else {"recipe": None, "builder": name, **kwargs}
    return model


def build_from_config(cfg: dict):
    """Rebuild a model from its ``mimkit_config`` (as saved in ``config.json`` or a checkpoint)."""
    cfg = dict(cfg)
    recipe = cfg.pop("recipe", None)
    builder = cfg.pop("builder", None)
    if recipe:
        return create(recipe, **cfg)
    if builder:
        entry = _REGISTRY.get(builder)
        if entry is None or entry.recipe:
            raise ValueError(f"config names unknown builder {builder!r}; known: {list_builders()}")
        return create(builder, **cfg)
    raise ValueError("config.json has neither 'recipe' nor 'builder'")
