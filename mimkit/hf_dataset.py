"""Deprecated path: moved to :mod:`mimkit.data.hf_dataset` (the data layer package). ``import mimkit.hf_dataset``
keeps working, with a DeprecationWarning, for one release; import from ``mimkit.data.hf_dataset`` (or
``mimkit.data``) instead."""

from __future__ import annotations

import warnings

from .data import hf_dataset as _moved
from .data.hf_dataset import *  # noqa: F401,F403

warnings.warn(
    "mimkit.hf_dataset is deprecated and goes in the next release: import from mimkit.data.hf_dataset "
    "(e.g. from mimkit.data.hf_dataset import HFImages)",
    DeprecationWarning,
    stacklevel=2,
)


def __getattr__(name: str):
    return getattr(_moved, name)
