"""Subcommands of the ``mimkit`` CLI: one module each, with ``register(subparsers)``."""
