"""``mimkit report --checkpoint RUN [--checkpoint RUN2 ...] --data DIR|fashion_mnist``: does pretraining
pay off on my images? Every encoder beside raw pixels and the same recipe at random init: 20-NN, the
linear probe and logistic regression (choices on a per-class validation split, or inside the N labels
per class), with all labels and with scarce labels, each with its interval and verdict, fine-tuning with ``--finetune-minutes``.
Writes ``report.json``, ``report.md``, ``report.png`` and ``neighbours.png`` to ``--out``
(:func:`mimkit.eval.report.build_report`)."""
from __future__ import annotations

from mimkit.commands import add_trust_flag


def _sizes(text: str) -> list[int]:
    import argparse

    try:
        out = [int(t) for t in str(text).replace(" ", "").split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 10,100, got {text!r}") from None
    if any(n < 1 for n in out):
        raise argparse.ArgumentTypeError(f"labels per class must be positive, got {text!r}")
    return out


def register(sub) -> None:
    from mimkit.eval.data import CHECKPOINT_HELP

    p = sub.add_parser("report", help="does pretraining pay off on my images? encoders vs raw pixels and random init: "
                                      "20-NN, linear probe, scarce labels, fine-tuning; report.md + pictures",
                       description="Does pretraining pay off on my images? Every encoder beside raw pixels and the "
                                   "same recipe at random init: 20-NN and the linear probe with all and with scarce "
                                   "labels, fine-tuning with --finetune-minutes. Writes report.json, report.md, "
                                   "report.png and neighbours.png to --out.")
    p.add_argument("--checkpoint", action="append", required=True, help=CHECKPOINT_HELP + " (repeat for several)")
    p.add_argument("--name", action="append", help="a name per --checkpoint in the report (default: its directory's)")
    p.add_argument("--data", default="fashion_mnist",
                   help="fashion_mnist, or a labelled ImageFolder: DIR/train/<class>/* and DIR/test/<class>/* (or "
                        "val/), or DIR/<class>/* split by --test-fraction; any image size or mode (resized to the "
                        "encoder's input)")
    p.add_argument("--labels-per-class", type=_sizes, default=None, metavar="N[,N...]",
                   help="scarce-label budgets: balanced subsets of N training labels per class, fixed by --seed "
                        "(default 10,100, those every class has enough images for; '' for none)")
    p.add_argument("--finetune-minutes", type=float, metavar="M",
                   help="also fine-tune each encoder for M minutes per label budget, beside the same ViT from scratch "
                        "for M + its pretraining minutes; each side's recipe chosen on validation by the same trials")
    p.add_argument("--finetune-trial-fraction", type=float, default=0.1, metavar="F",
                   help="each of the 4 recipe trials per side (lr, layer decay or drop path, mixup) fine-tunes for F x "
                        "that side's minutes on the validation split (default 0.1; 0: one fixed recipe for every side)")
    p.add_argument("--no-finetune-flip-choice", action="store_true",
                   help="do not choose flip averaging at scoring (each side's chosen trial scored with and without "
                        "the logits of the mirror image averaged, on the same weights; by default kept where better)")
    p.add_argument("--pretrain-minutes", type=float,
                   help="the encoders' pretraining time for the scratch budget (default: read from the run directory)")
    p.add_argument("--out", default="report", help="output directory (default ./report)")
    p.add_argument("--test-fraction", type=float, default=0.2,
                   help="a single folder of class sub-folders: this fraction of each class is the test set (default 0.2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, the labelled subsets, the random init")
    p.add_argument("--pool", choices=("auto", "cls", "mean", "both", "last4", "tokens"), default="auto",
                   help="frozen feature: auto (default) chooses per encoder and protocol among cls, mean, both (cls + mean), "
                        "last4 (the last 4 blocks) and tokens (the map of patch tokens, at most 7x7) on a validation "
                        "split held out of the training images")
    p.add_argument("--probe-epochs", type=int, default=50, help="linear-probe epochs, all labels (default 50; more "
                                                                 "on small label sets, up to 200)")
    p.add_argument("--draws", type=int, default=3, help="scarce-label subsets drawn per N (default 3): rows are mean "
                                                         "+- std over the draws")
    p.add_argument("--folds", type=int, default=3, help="with N labels per class, the choices are made by this many "
                                                         "folds inside the N x classes labels (default 3)")
    p.add_argument("--limit", type=int, help="only N training images (Fashion-MNIST: the first N; a folder: N drawn "
                                             "with --seed)")
    p.add_argument("--test-limit", type=int, help="only N test images")
    p.add_argument("--data-root", help="folder holding the Fashion-MNIST idx files (default: auto-detected)")
    p.add_argument("--mean", type=float, nargs="+", help="input normalisation mean (default: the dataset's)")
    p.add_argument("--std", type=float, nargs="+", help="input normalisation std")
    p.add_argument("--batch-size", type=int, default=512, help="feature-extraction batch size")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars and step lines")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    add_trust_flag(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from mimkit.eval.render import verdict_table
    from mimkit.eval.report import build_report, report_table

    sizes = args.labels_per_class
    if args.name and len(args.name) != len(args.checkpoint):
        raise ValueError(f"--name given {len(args.name)} times for {len(args.checkpoint)} --checkpoint; give one per "
                         "checkpoint or none")
    from mimkit.eval.report import probe_settings

    settings = probe_settings(args.probe_epochs, folds=args.folds)
    report = build_report(args.checkpoint, args.data, args.out, names=args.name, labels_per_class=sizes,
                          seed=args.seed, pool=args.pool, draws=args.draws, settings=settings,
                          finetune_minutes=args.finetune_minutes, pretrain_minutes=args.pretrain_minutes,
                          finetune_trial_fraction=args.finetune_trial_fraction,
                          finetune_flip_choice=not args.no_finetune_flip_choice,
                          test_fraction=args.test_fraction, limit=args.limit, test_limit=args.test_limit,
                          mean=args.mean, std=args.std, root=args.data_root, device=args.device,
                          batch_size=args.batch_size, progress=not args.no_progress)
    out = Path(args.out)
    d = report["data"]
    print()
    print(report_table(report))
    print()
    print(verdict_table(report))
    print(f"\n{d['train_images']} train / {d['test_images']} test images, {len(d['classes'])} classes; "
          f"{d['preprocessing']}" + (f"; skipped {d['skipped_unreadable']} unreadable" if d.get("skipped_unreadable")
                                     else ""))
    print(f"report: {out / 'report.md'}, {out / 'report.json'}, pictures {out / 'report.png'}, "
          f"{out / 'neighbours.png'}; wall time {report['wall_seconds']['total'] / 60:.1f} min")
    return 0
