"""``mimkit demo``: MAE pretraining of the tiny CPU recipe on Fashion-MNIST, 20-NN evaluation of its
encoder against raw pixels, and pictures — the whole job in one command (about 15 minutes on 2 cores)."""
from __future__ import annotations

import json
import time
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("demo", help="pretrain MAE on Fashion-MNIST, evaluate (20-NN), write pictures")
    p.add_argument("--out", default="runs/demo", help="run directory (default runs/demo)")
    p.add_argument("--epochs", type=int, default=6, help="pretraining epochs (default 6, ~11 min on 2 free cores)")
    p.add_argument("--recipe", default="mae_vit_tiny_patch4_28")
    p.add_argument("--limit", type=int, default=None, help="use only the first N training images")
    p.add_argument("--debug", action="store_true")
    p.add_argument("overrides", nargs="*", help="extra section.key=value overrides")
    p.set_defaults(func=run)


def run(args) -> int:
    import mimkit
    from mimkit.data import build_dataset
    from mimkit.eval.features import extract_features
    from mimkit.eval.knn import knn_accuracy
    from mimkit.train.config import load_config
    from mimkit.train.run import run_pretrain

    t0 = time.time()
    cfg_file = Path(__file__).resolve().parents[2] / "configs" / f"{args.recipe}.yaml"
    cfg = load_config(cfg_file if cfg_file.exists() else None, args.overrides)
    cfg["model"]["name"] = args.recipe
    cfg["trainer"]["max_epochs"] = args.epochs
    cfg["run"]["dir"] = args.out
    if args.limit:
        cfg["data"]["limit"] = args.limit
    run_dir = run_pretrain(cfg)
    t_train = time.time() - t0

    model = mimkit.load(run_dir / "model")
    d = dict(cfg["data"], limit=None)
    train = build_dataset(d, "train", train_transform=False)
    test = build_dataset(d, "test", train_transform=False)
    results = {}
    ftr, ytr = extract_features(model, train, ("mean", "cls"), desc="train features")
    fte, yte = extract_features(model, test, ("mean", "cls"), desc="test features")
    for how in ("mean", "cls"):
        results[f"knn20_{how}"] = knn_accuracy(ftr[how], ytr, fte[how], yte)
    raw_tr = train.images.flatten(1).float() / 255
    raw_te = test.images.flatten(1).float() / 255
    results["knn20_raw_pixels"] = knn_accuracy(raw_tr, train.labels, raw_te, test.labels)

    from mimkit.train.callbacks import read_metrics

    metrics_csv = run_dir / "logs" / "metrics.csv"
    final_loss = None
    if metrics_csv.exists():
        losses = read_metrics(metrics_csv).get("train/loss")
        final_loss = losses[1][-1] if losses else None
    summary = {"recipe": args.recipe, "epochs": args.epochs, "final_train_loss": final_loss,
               "pretrain_seconds": round(t_train, 1), "total_seconds": round(time.time() - t0, 1), **results}
    (Path(run_dir) / "demo_results.json").write_text(json.dumps(summary, indent=2))
    print("\n== mimkit demo ==")
    print(f"pretraining  : {args.recipe}, {args.epochs} epochs, {t_train / 60:.1f} min, final loss {final_loss}")
    print(f"20-NN test accuracy (Fashion-MNIST): encoder mean-pool {results['knn20_mean']:.4f}, "
          f"cls {results['knn20_cls']:.4f}; raw pixels {results['knn20_raw_pixels']:.4f}")
    print(f"pictures     : {run_dir}/reconstructions/latest.png, {run_dir}/loss_curve.png")
    print(f"results      : {run_dir}/demo_results.json; model: {run_dir}/model")
    print(f"total time   : {(time.time() - t0) / 60:.1f} min")
    return 0
