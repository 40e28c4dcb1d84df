"""Subcommands of the ``mimkit`` CLI: one module each, with ``register(subparsers)``."""

TRUST_HELP = ("unpickle checkpoint files fully, even ones holding Python objects beyond tensors: such a file "
              "can run code when loaded, so only for files whose source you trust (default: refuse them)")


def add_trust_flag(parser) -> None:
    """``--trust-checkpoint``: the explicit opt-in ``mimkit.cli.main`` applies around the command
    (see :func:`mimkit.checkpoint.trusted_checkpoints`)."""
    parser.add_argument("--trust-checkpoint", action="store_true", help=TRUST_HELP)


def write_results(path, summary: dict) -> None:
    """A command's ``--out``: the summary as JSON (parents created), and a line saying where."""
    import json
    from pathlib import Path

    if not path:
        return
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2))
    print(f"results: {out}")
