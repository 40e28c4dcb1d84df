"""Deprecated path of :mod:`mimkit.data.device`: ``import mimkit.device_data`` gives that module, with a
DeprecationWarning, for one release."""

from .data import deprecated_alias, device

deprecated_alias(__name__, device)
