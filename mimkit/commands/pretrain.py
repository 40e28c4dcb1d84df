"""``mimkit pretrain --config configs/X.yaml [section.key=value ...] [--resume CKPT]``."""
from __future__ import annotations

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
    add_trust_flag(p)
    p.add_argument("overrides", nargs="*", help="section.key=value")
    p.set_defaults(func=run)


def run(args) -> int:
    from mimkit.train.config import load_config
    from mimkit.train.run import config_from_checkpoint, run_pretrain

    overrides = list(args.overrides or [])
    if args.minutes is not None:
        overrides.append(f"trainer.max_minutes={args.minutes}")
    if args.resume:
        cfg = config_from_checkpoint(args.resume, overrides)
    else:
        cfg = load_config(args.config, overrides)
    run_pretrain(cfg, resume=args.resume)
    return 0
