"""Deprecated path of :mod:`mimkit.data.hf_dataset`: ``import mimkit.hf_dataset`` gives that module, with a
DeprecationWarning, for one release."""

from .data import deprecated_alias, hf_dataset

deprecated_alias(__name__, hf_dataset)
