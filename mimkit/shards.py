"""Deprecated path of :mod:`mimkit.data.shards`: ``import mimkit.shards`` gives that module, with a
DeprecationWarning, for one release."""

from .data import deprecated_alias, shards

deprecated_alias(__name__, shards)
