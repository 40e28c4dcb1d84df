"""``mimkit finetune --checkpoint CKPT``: fine-tune the whole encoder + a linear head (Lightning),
with layer-wise lr decay, drop path and optional mixup/cutmix/label smoothing; prints a table and
writes the results as JSON."""
from __future__ import annotations

import json
import time
from pathlib import Path

from mimkit.commands import add_trust_flag, write_results


def register(sub) -> None:
    from mimkit.eval import FINETUNE_DEFAULTS as D
    from mimkit.eval.data import CHECKPOINT_HELP, DATA_HELP, LABELS_PER_CLASS_HELP

    p = sub.add_parser("finetune", help="fine-tune an encoder + linear head (layer decay, drop path, mixup), or a "
                                        "segmenter (--task segmentation)",
                       description="Fine-tune a pretrained encoder with a new linear head and report test accuracy; "
                                   "with --task segmentation, train transformers' UperNet or DPT on the encoder as a "
                                   "backbone and report mIoU.")
    p.add_argument("--checkpoint", help=CHECKPOINT_HELP)
    p.add_argument("--task", choices=("classify", "segmentation"), default="classify",
                   help="segmentation: --data is a folder in the ADE20K layout (images/training, "
                        "annotations/training, images/validation, annotations/validation; label maps are PNGs "
                        "of class indices, 255 ignored); 'validation' is read once, as the test set")
    p.add_argument("--backbone", help="segmentation: a directory from mimkit export --format hf-backbone (instead "
                                      "of --checkpoint)")
    p.add_argument("--head", choices=("upernet", "dpt"), default="upernet", help="segmentation head (transformers)")
    p.add_argument("--head-channels", type=int, default=64, help="segmentation head width (default 64)")
    p.add_argument("--num-labels", type=int, help="segmentation classes (default: the largest label in the "
                                                  "training maps + 1)")
    p.add_argument("--minutes", type=float, help="a training budget in minutes instead of --epochs: warm-up, then a "
                                                 "cosine timed to end at the budget, as mimkit pretrain --minutes "
                                                 "(segmentation: default 10)")
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
    p.add_argument("--ema", type=float, default=D["ema"],
                   help="decay of an exponential moving average of the weights, which is then tested and saved "
                        "(timm ModelEmaV3 with warm-up; e.g. 0.999; default 0 = off)")
    p.add_argument("--flip-tta", action="store_true",
                   help="score each test (and validation) image as the mean of its and its mirror image's logits "
                        "(only where a flipped image keeps its class)")
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
    if args.task == "segmentation":
        return run_segmentation(args)
    if not args.checkpoint:
        raise ValueError("mimkit finetune needs --checkpoint (a run directory, model directory or checkpoint file)")
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
                      eval_every=args.eval_every, accelerator=args.accelerator, minutes=args.minutes, ema=args.ema,
                      flip_tta=args.flip_tta)
    summary = {"protocol": "finetune", "checkpoint": args.checkpoint, "data": args.data,
               "crop_scale": list(args.crop_scale), "hflip": not args.no_hflip, "results": res,
               "labels_per_class": args.labels_per_class,
               "total_seconds": round(time.time() - t0, 1)}
    print()
    print_table([("fine-tune", pool, res["epochs"], f"{res['train_loss_last_epoch']:.4f}", f"{res['acc']:.4f}")],
                ("protocol", "pool", "epochs", "last-epoch train loss", "test accuracy"))
    write_results(args.out, summary)
    if args.save_dir:
        print(f"classifier: {args.save_dir}/classifier.safetensors")
    return 0


def run_segmentation(args) -> int:
    import torch

    from mimkit.data.segmentation import read_segmentation_folder
    from mimkit.eval.segment import finetune_segmentation, plot_segmentation

    if bool(args.checkpoint) == bool(args.backbone):
        raise ValueError("--task segmentation takes one of --checkpoint (a mimkit model) or --backbone (a directory "
                         "from mimkit export --format hf-backbone)")
    if args.data == "fashion_mnist":
        raise ValueError("--task segmentation needs --data DIR, a folder in the ADE20K layout (images/training, "
                         "annotations/training, images/validation, annotations/validation)")
    t0 = time.time()
    in_chans = _backbone_channels(args)
    xtr, ytr = read_segmentation_folder(args.data, "training", in_chans, args.num_labels, args.limit)
    num_labels = args.num_labels or int(ytr[ytr != 255].max()) + 1
    xte, yte = read_segmentation_folder(args.data, "validation", in_chans, num_labels, args.test_limit)
    g = torch.Generator().manual_seed(args.seed)
    perm = torch.randperm(len(xtr), generator=g)
    n_val = max(1, len(xtr) // 10)  # a tenth of the training images: the score watched during training
    val, fit = perm[:n_val], perm[n_val:]
    backbone = args.backbone or _backbone_of(args.checkpoint, xtr.shape[-1])
    res = finetune_segmentation(backbone, (xtr[fit], ytr[fit]), (xtr[val], ytr[val]), (xte, yte), num_labels,
                                minutes=args.minutes or 10.0, head=args.head, channels=args.head_channels,
                                batch_size=args.batch_size if args.batch_size != 128 else 32, blr=args.blr,
                                layer_decay=args.layer_decay, weight_decay=args.weight_decay, seed=args.seed,
                                progress=not args.no_progress, out_dir=args.save_dir)
    out_dir = Path(args.out).parent if args.out else Path(args.save_dir or ".")
    pic = plot_segmentation(xte[:6], yte[:6], {args.head: res["pred"][:6]}, out_dir / "segmentation.png", num_labels)
    summary = {"task": "segmentation", "data": Path(args.data).name, "num_labels": num_labels,
               "results": {k: v for k, v in res.items() if k not in ("inter", "union", "pred", "segmenter")},
               "total_seconds": round(time.time() - t0, 1)}
    print(f"\nsegmentation ({args.head}, {res['minutes']} min, {res['steps']} steps): validation mIoU "
          f"{res['val_miou']:.4f}, test mIoU {res['test_miou']:.4f}; predictions beside the truth: {pic}")
    write_results(args.out, summary)
    return 0


def _backbone_channels(args) -> int:
    if args.backbone:
        cfg = json.loads((Path(args.backbone) / "config.json").read_text())
        return int(cfg.get("num_channels", 3))
    from mimkit.eval.data import load_model_spec

    return int(getattr(load_model_spec(args.checkpoint), "in_chans", 3))


def _backbone_of(checkpoint, size: int):
    """The exported backbone of a mimkit model, its positions resized to the folder's image size."""
    import tempfile

    import mimkit
    from mimkit.eval.data import load_model_spec
    from mimkit.interop.hf_backbone import to_hf_backbone

    model = load_model_spec(checkpoint)
    if tuple(getattr(model, "img_size", (size, size))) != (size, size):
        with tempfile.TemporaryDirectory() as d:
            mimkit.save(model, d)
            model = mimkit.load(d, img_size=size)
    return to_hf_backbone(model)
