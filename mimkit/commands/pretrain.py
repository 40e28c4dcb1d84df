"""``mimkit pretrain --config configs/X.yaml [section.key=value ...] [--resume CKPT]``.

With ``run.report=DATA`` the command then writes ``mimkit report`` of the trained encoder into
``<run>/report``: the report is the command layer's business (:func:`pretrain_and_report`, also used by
``mimkit demo``), so the training engine (:mod:`mimkit.train`) imports no evaluation."""
from __future__ import annotations

from pathlib import Path

from mimkit.commands import add_trust_flag


def register(sub) -> None:
    p = sub.add_parser("pretrain", help="self-supervised pretraining (Lightning)",
                       description="Pretrain a recipe. Overrides are dotted keys, e.g. trainer.max_epochs=5 "
                                   "data.batch_size=128 model.mask_ratio=0.6 optim.blr=1e-4")
    p.add_argument("--config", help="YAML config (see configs/)")
    p.add_argument("--resume", help="checkpoint or run directory to continue from (e.g. runs/<run> or "
                                    "runs/<run>/checkpoints/last.ckpt); the run's own config.yaml is reused")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    p.add_argument("--minutes", type=float, help="a wall-clock budget that is a whole schedule (trainer.max_minutes): "
                                                  "the run times its first steps, then fixes warm-up + cosine to end at it")
    p.add_argument("--init", metavar="SPEC", help="start the encoder from a model trained elsewhere (run.init): a mimkit "
                                                  "run or model file, hf:DIR (transformers) or timm:DIR; positions, "
                                                  "patch size and channels adapted (mimkit.train.init)")
    add_trust_flag(p)
    p.add_argument("overrides", nargs="*", help="section.key=value")
    p.set_defaults(func=run)


def run(args) -> int:
    from mimkit.train.config import load_config
    from mimkit.train.run import config_from_checkpoint

    overrides = list(args.overrides or [])
    if args.minutes is not None:
        overrides.append(f"trainer.max_minutes={args.minutes}")
    if args.init:
        if args.resume:
            raise ValueError("--init starts a new run from another model's encoder; --resume continues a run "
                             "from its own checkpoint: use one of them")
        overrides.append(f"run.init={args.init}")
    if args.resume:
        cfg = config_from_checkpoint(args.resume, overrides)
    else:
        cfg = load_config(args.config, overrides)
    pretrain_and_report(cfg, resume=args.resume)
    return 0


def pretrain_and_report(cfg: dict, resume: str | None = None) -> Path:
    """:func:`~mimkit.train.run.run_pretrain`, then, when ``run.report`` names data (``fashion_mnist`` or a
    labelled folder), the report of ``<run>/model`` on it, written to ``<run>/report``, by the process of
    global rank 0 only. A failed report is one printed line; the trained run is kept either way.
    Returns the run directory."""
    from mimkit.train.run import run_pretrain

    run_dir = Path(run_pretrain(cfg, resume=resume))
    if cfg["run"].get("report") and global_rank() == 0:
        from mimkit.eval.report import report_after_training

        report_after_training(run_dir, cfg)
    return run_dir


def global_rank() -> int:
    """This process's global rank, as the training strategy set it (0 without one, or when the process
    group was never started)."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or 0)
