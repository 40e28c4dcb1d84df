"""The ``mimkit`` command. Each subcommand lives in ``mimkit/commands/<name>.py`` and defines
``register(subparsers)``; new subcommands are picked up automatically."""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys


def build_parser() -> argparse.ArgumentParser:
    import mimkit.commands as commands

    parser = argparse.ArgumentParser(prog="mimkit", description="Masked image modeling toolkit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"mimkit.commands.{info.name}")
        mod.register(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from mimkit.files import trusted_checkpoints

    try:
        with trusted_checkpoints(bool(getattr(args, "trust_checkpoint", False))):  # --trust-checkpoint
            return int(args.func(args) or 0)
    except (ValueError, KeyError, FileNotFoundError, TypeError) as e:
        if getattr(args, "debug", False):
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"mimkit {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
