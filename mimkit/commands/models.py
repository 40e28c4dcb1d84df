"""``mimkit models``: list the registered recipes."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("models", help="list registered recipes")
    p.add_argument("pattern", nargs="?", help="only names containing this")
    p.set_defaults(func=run)


def run(args) -> int:
    from mimkit.registry import list_models, recipe_info

    for name in list_models(args.pattern):
        print(f"{name:40s} {recipe_info(name)[2]}")
    return 0
