"""Training on Lightning. Import cost stays out of ``import mimkit``."""
from .config import DEFAULTS, load_config


def run_pretrain(cfg, resume=None):
    from .run import run_pretrain as _run

    return _run(cfg, resume)


__all__ = ["DEFAULTS", "load_config", "run_pretrain"]
