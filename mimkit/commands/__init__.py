"""Subcommands of the ``mimkit`` CLI: one module each, with ``register(subparsers)``."""

TRUST_HELP = ("unpickle checkpoint files fully, even ones holding Python objects beyond tensors: such a file "
              "can run code when loaded, so only for files whose source you trust (default: refuse them)")


def add_trust_flag(parser) -> None:
    """``--trust-checkpoint``: the explicit opt-in ``mimkit.cli.main`` applies around the command
    (see :func:`mimkit.checkpoint.trusted_checkpoints`)."""
    parser.add_argument("--trust-checkpoint", action="store_true", help=TRUST_HELP)
