"""``mimkit demo``: pretrain the best CPU recipe on Fashion-MNIST, judge its encoder by 20-NN against
raw pixels on the real test set, and write pictures: the whole job in one command (<= 15 minutes on
2 CPU cores)."""
from __future__ import annotations

import json
import time
from pathlib import Path

DEFAULT_RECIPE = "mae_vit_tiny_patch4_28"
DEFAULT_EPOCHS = 3  # ~700 optimiser steps: about 12 minutes of pretraining on 2 CPU cores


def register(sub) -> None:
    p = sub.add_parser("demo", help="pretrain the best CPU recipe on Fashion-MNIST, evaluate (20-NN vs raw pixels), "
                                    "write pictures")
    p.add_argument("--out", default="runs/demo", help="run directory (default runs/demo)")
    p.add_argument("--recipe", default=DEFAULT_RECIPE, help=f"recipe (default {DEFAULT_RECIPE}, configs/<recipe>.yaml)")
    p.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help=f"pretraining epochs (default {DEFAULT_EPOCHS})")
    p.add_argument("--limit", type=int, default=None, help="use only the first N training images")
    p.add_argument("--debug", action="store_true")
    p.add_argument("overrides", nargs="*", help="extra section.key=value overrides")
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    import mimkit
    from mimkit.data import FMNIST_MEAN, FMNIST_STD, build_dataset
    from mimkit.eval.features import extract_features, has_cls_token
    from mimkit.eval.knn import knn_accuracy
    from mimkit.train.config import load_config
    from mimkit.train.run import run_pretrain

    t0 = time.time()
    cfg_file = Path(__file__).resolve().parents[2] / "configs" / f"{args.recipe}.yaml"
    cfg = load_config(cfg_file if cfg_file.exists() else None, args.overrides)
    cfg["model"]["name"] = args.recipe
    if args.epochs is not None:
        cfg["trainer"]["max_epochs"] = int(args.epochs)
    cfg["run"]["dir"] = args.out
    if args.limit:
        cfg["data"]["limit"] = args.limit
    run_dir = Path(run_pretrain(cfg))
    t_train = time.time() - t0

    model = mimkit.load(run_dir / "model")
    d = dict(cfg["data"], limit=None)
    train = build_dataset(d, "train", train_transform=False)
    test = build_dataset(d, "test", train_transform=False)
    pools = ("mean", "cls") if has_cls_token(model) else ("mean",)
    ftr, ytr = extract_features(model, train, pools, desc="train features")
    fte, yte = extract_features(model, test, pools, desc="test features")
    results = {f"knn20_{how}": knn_accuracy(ftr[how], ytr, fte[how], yte) for how in pools}
    results["knn20_raw_pixels"] = knn_accuracy(train.images.flatten(1).float() / 255, train.labels,
                                               test.images.flatten(1).float() / 255, test.labels)
    pictures = [p for p in (run_dir / "reconstructions" / "latest.png", run_dir / "loss_curve.png") if p.exists()]
    if has_cls_token(model):
        from mimkit.viz import save_attention_grid

        imgs = torch.stack([test[i][0] for i in range(8)])
        pictures.append(save_attention_grid(model, imgs, run_dir / "attention.png", FMNIST_MEAN, FMNIST_STD))

    from mimkit.train.callbacks import read_metrics

    losses = read_metrics(run_dir / "logs" / "metrics.csv").get("train/loss") if (run_dir / "logs" / "metrics.csv").exists() else None
    final_loss = losses[1][-1] if losses else None
    summary = {"recipe": args.recipe, "epochs": cfg["trainer"]["max_epochs"], "final_train_loss": final_loss,
               "pretrain_seconds": round(t_train, 1), "total_seconds": round(time.time() - t0, 1), **results,
               "pictures": [str(p) for p in pictures]}
    (run_dir / "demo_results.json").write_text(json.dumps(summary, indent=2))
    best = max(pools, key=lambda h: results[f"knn20_{h}"])
    print("\n== mimkit demo ==")
    print(f"pretraining  : {args.recipe}, {cfg['trainer']['max_epochs']} epochs, {t_train / 60:.1f} min, "
          f"final loss {final_loss if final_loss is None else round(final_loss, 4)}")
    print(f"20-NN test accuracy (Fashion-MNIST, 10k test images): pretrained encoder {results['knn20_mean']:.4f} "
          f"(mean-pooled" + (f"; cls {results['knn20_cls']:.4f}" if "cls" in pools else "") + ")"
          f"   vs   raw pixels {results['knn20_raw_pixels']:.4f}")
    gap = results[f"knn20_{best}"] - results["knn20_raw_pixels"]
    print(f"             : the encoder is {abs(gap) * 100:.1f} points {'above' if gap >= 0 else 'below'} raw pixels")
    print(f"pictures     : {', '.join(str(p) for p in pictures)}")
    print(f"results      : {run_dir}/demo_results.json; model: {run_dir}/model")
    print(f"total time   : {(time.time() - t0) / 60:.1f} min")
    return 0
