"""Deprecated path: moved to :mod:`mimkit.data.device` (the data layer package). ``import mimkit.device_data``
keeps working, with a DeprecationWarning, for one release; import from ``mimkit.data.device`` (or
``mimkit.data``) instead."""

from __future__ import annotations

import warnings

from .data import device as _moved
from .data.device import *  # noqa: F401,F403

warnings.warn(
    "mimkit.device_data is deprecated and goes in the next release: import from mimkit.data.device "
    "(e.g. from mimkit.data.device import DeviceAugment, EncodedImageFolder)",
    DeprecationWarning,
    stacklevel=2,
)


def __getattr__(name: str):
    return getattr(_moved, name)
