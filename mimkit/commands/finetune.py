"""``mimkit finetune --checkpoint CKPT``: fine-tune the whole encoder + a linear head (Lightning),
with layer-wise lr decay, drop path and optional mixup/cutmix/label smoothing; prints a table and
writes the results as JSON."""
from __future__ import annotations

import json
import time
from pathlib import Path

from mimkit.commands import add_trust_flag


def register(sub) -> None:
    from mimkit.eval import FINETUNE_DEFAULTS as D
    from mimkit.eval.data import CHECKPOINT_HELP, DATA_HELP, LABELS_PER_CLASS_HELP

    p = sub.add_parser("finetune", help="fine-tune an encoder + linear head (layer decay, drop path, mixup)",
                       description="Fine-tune a pretrained encoder with a new linear head and report test accuracy.")
    p.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    p.add_argument("--data", default="fashion_mnist", help=DATA_HELP)
    p.add_argument("--data-root", help="folder holding the Fashion-MNIST idx files (default: auto-detected)")
    p.add_argument("--pool", choices=("cls", "mean"), default=None,
                   help="classifier input: mean of patch tokens + LayerNorm (default, MAE's global pooling) or "
                        "the cls token")
    p.add_argument("--epochs", type=int, default=D["epochs"], help=f"default {D['epochs']}")
    p.add_argument("--batch-size", type=int, default=D["batch_size"], help=f"default {D['batch_size']}")
    p.add_argument("--blr", type=float, default=D["blr"], help=f"base lr, lr = blr * batch / 256 (default {D['blr']})")
    p.add_argument("--lr", type=float, help="absolute lr (overrides --blr)")
    p.add_argument("--min-lr", type=float, default=D["min_lr"])
    p.add_argument("--layer-decay", type=float, default=D["layer_decay"],
                   help=f"layer-wise lr decay; 1 = none (default {D['layer_decay']})")
    p.add_argument("--weight-decay", type=float, default=D["weight_decay"])
    p.add_argument("--drop-path", type=float, default=D["drop_path"], help=f"stochastic depth (default {D['drop_path']})")
    p.add_argument("--mixup", type=float, default=D["mixup"], help="mixup alpha (0 = off, MAE uses 0.8)")
    p.add_argument("--cutmix", type=float, default=D["cutmix"], help="cutmix alpha (0 = off, MAE uses 1.0)")
    p.add_argument("--label-smoothing", type=float, default=D["label_smoothing"])
    p.add_argument("--warmup-epochs", type=float, default=D["warmup_epochs"])
    p.add_argument("--crop-scale", type=float, nargs=2, default=(0.5, 1.0),
                   help="RandomResizedCrop scale range for training (default 0.5 1.0)")
    p.add_argument("--no-hflip", action="store_true", help="no random horizontal flips")
    p.add_argument("--limit", type=int, help="use only the first N training images")
    p.add_argument("--test-limit", type=int, help="use only the first N test images")
    p.add_argument("--labels-per-class", type=int, metavar="N", help=LABELS_PER_CLASS_HELP)
    p.add_argument("--eval-every", type=int, default=0, help="also evaluate every N epochs (default: only at the end)")
    p.add_argument("--mean", type=float, nargs="+", help="input normalisation mean (default: the dataset's)")
    p.add_argument("--std", type=float, nargs="+", help="input normalisation std")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--accelerator", default="auto", help="auto, cpu, gpu (Lightning)")
    p.add_argument("--out", help="write the results to this JSON file")
    p.add_argument("--save-dir", help="directory for the fine-tuned classifier (classifier.safetensors, "
                                      "finetune.json) and the training logs")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    add_trust_flag(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from mimkit.eval.data import check_same_classes, eval_dataset, labelled_subset, load_model_spec, print_table
    from mimkit.eval.finetune import finetune

    t0 = time.time()
    model = load_model_spec(args.checkpoint)
    pool = args.pool or "mean"
    kw = dict(mean=args.mean, std=args.std, root=args.data_root)
    train, tr_classes = eval_dataset(args.data, "train", model, train_aug=True, limit=args.limit,
                                     crop_scale=tuple(args.crop_scale), hflip=not args.no_hflip, **kw)
    train = labelled_subset(train, args.labels_per_class, args.seed)
    test, te_classes = eval_dataset(args.data, "test", model, limit=args.test_limit, **kw)
    check_same_classes(tr_classes, te_classes)
    _, res = finetune(model, train, test, len(tr_classes), pool=pool, epochs=args.epochs, batch_size=args.batch_size,
                      blr=args.blr, lr=args.lr, min_lr=args.min_lr, layer_decay=args.layer_decay,
                      weight_decay=args.weight_decay, drop_path=args.drop_path, mixup=args.mixup, cutmix=args.cutmix,
                      label_smoothing=args.label_smoothing, warmup_epochs=args.warmup_epochs, seed=args.seed,
                      out_dir=args.save_dir, progress=not args.no_progress, num_workers=args.num_workers,
                      eval_every=args.eval_every, accelerator=args.accelerator)
    summary = {"protocol": "finetune", "checkpoint": args.checkpoint, "data": args.data,
               "crop_scale": list(args.crop_scale), "hflip": not args.no_hflip, "results": res,
               "labels_per_class": args.labels_per_class,
               "total_seconds": round(time.time() - t0, 1)}
    print()
    print_table([("fine-tune", pool, args.epochs, f"{res['train_loss_last_epoch']:.4f}", f"{res['acc']:.4f}")],
                ("protocol", "pool", "epochs", "last-epoch train loss", "test accuracy"))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(summary, indent=2))
        print(f"results: {out}")
    if args.save_dir:
        print(f"classifier: {args.save_dir}/classifier.safetensors")
    return 0
