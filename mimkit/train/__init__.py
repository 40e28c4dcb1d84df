"""Training on Lightning. Import cost stays out of ``import mimkit``."""
from .config import DEFAULTS, load_config


def run_pretrain(cfg, resume=None, callbacks=(), trust_checkpoint: bool = False):
    """See :func:`mimkit.train.run.run_pretrain` (imported on first call: Lightning loads slowly)."""
    from .run import run_pretrain as _run

    return _run(cfg, resume, callbacks=callbacks, trust_checkpoint=trust_checkpoint)


__all__ = ["DEFAULTS", "load_config", "run_pretrain"]
