"""Deprecated path: moved to :mod:`mimkit.data.shards` (the data layer package). ``import mimkit.shards``
keeps working, with a DeprecationWarning, for one release; import from ``mimkit.data.shards`` (or
``mimkit.data``) instead."""

from __future__ import annotations

import warnings

from .data import shards as _moved
from .data.shards import *  # noqa: F401,F403

warnings.warn(
    "mimkit.shards is deprecated and goes in the next release: import from mimkit.data.shards "
    "(e.g. from mimkit.data.shards import ShardImages, write_shards)",
    DeprecationWarning,
    stacklevel=2,
)


def __getattr__(name: str):
    return getattr(_moved, name)
