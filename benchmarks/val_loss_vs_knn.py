"""Does the pretraining validation loss track representation quality? (Fashion-MNIST)

Xie et al. (arXiv 2206.04664, "On Data Scaling in Masked Image Modeling") report that the MIM
validation loss of pretraining predicts fine-tuning accuracy. This script checks the cheap version of
that claim on Fashion-MNIST with mimkit's own pieces, in one command:

1. pretrain a recipe (default MAE ViT-tiny) with ``data.val_fraction`` held out of the 60k training
   images: ``val/loss`` is logged at every epoch end on those images, masks fixed by seed (so epochs
   compare), and a checkpoint is kept per epoch;
2. for every epoch's checkpoint, the 20-NN accuracy (cosine, exp(sim/0.07) votes) of frozen encoder
   features, bank = training images (not the held-out ones), queries = the test split;
3. print the table epoch | val loss | 20-NN, the rank (Spearman) and linear (Pearson) correlation
   between val loss and 20-NN over epochs, and write the JSON + a PNG of both curves.

    python benchmarks/val_loss_vs_knn.py --out results/val_loss_vs_knn.json      # ~45 min on 2 CPU cores
    python benchmarks/val_loss_vs_knn.py --out /tmp/vlk.json --quick              # a few minutes
    python benchmarks/val_loss_vs_knn.py --run runs/<run>                         # reuse a finished run
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="results/val_loss_vs_knn.json", help="results JSON (the PNG goes beside it)")
    p.add_argument("--recipe", default="mae_vit_tiny_patch4_28")
    p.add_argument("--epochs", type=int, default=20, help="pretraining epochs (default 20)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--val-fraction", type=float, default=1 / 12, help="held-out share of the training images "
                                                                       "(default 1/12: 5,000 of 60,000)")
    p.add_argument("--limit", type=int, help="use only the first N training images")
    p.add_argument("--knn-train", type=int, default=10000, help="k-NN bank: this many training images (default 10k)")
    p.add_argument("--knn-test", type=int, default=10000, help="k-NN queries: this many test images (default all 10k)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--run", help="reuse this finished run directory (its val/loss and periodic checkpoints)")
    p.add_argument("--override", nargs="*", default=[], help="extra section.key=value for the pretraining run")
    p.add_argument("--quick", action="store_true", help="smoke settings: 2,000 images, 3 epochs, small k-NN sets")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="unpickle --run's checkpoints fully even if they hold Python objects beyond tensors (they "
                        "can run code: only for files you trust; default: refuse them)")
    args = p.parse_args(argv)
    if args.quick:
        args.epochs, args.batch_size, args.limit = min(args.epochs, 3), 128, 2000
        args.knn_train, args.knn_test = 2000, 1000
    return args


def epoch_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(completed epochs, path) of the run's periodic checkpoints, oldest first."""
    out = []
    for p in Path(run_dir, "checkpoints").glob("epoch*-step*.ckpt"):
        m = re.match(r"epoch(\d+)-step(\d+)", p.stem)
        if m:
            out.append((int(m.group(1)) + 1, p))
    return sorted(out)


def val_losses(run_dir: Path) -> list[float]:
    """val/loss in logging order: the k-th value is the end of epoch k (1-based)."""
    from mimkit.train.callbacks import read_metrics

    m = read_metrics(Path(run_dir) / "logs" / "metrics.csv")
    if "val/loss" not in m:
        raise SystemExit(f"{run_dir} logged no val/loss: pretrain with data.val_fraction (or another data.val_*)")
    return m["val/loss"][1]


def pretrain(args, run_dir: Path) -> Path:
    from mimkit.train.config import load_config
    from mimkit.train.run import run_pretrain

    over = [f"model.name={args.recipe}", f"trainer.max_epochs={args.epochs}", f"data.batch_size={args.batch_size}",
            f"data.val_fraction={args.val_fraction}", "run.checkpoint_every_n_epochs=1", "run.keep_periodic=-1",
            "run.recon_images=0", f"run.seed={args.seed}", f"run.dir={run_dir}",
            f"trainer.enable_progress_bar={str(sys.stdout.isatty()).lower()}", *args.override]
    if args.limit:
        over.append(f"data.limit={args.limit}")
    return run_pretrain(load_config(None, over))


def rank_corr(a, b) -> float:
    import numpy as np

    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1]) if len(a) > 2 else float("nan")


def pearson(a, b) -> float:
    import numpy as np

    return float(np.corrcoef(a, b)[0, 1]) if len(a) > 2 else float("nan")


def knn_sets(args, seed: int):
    """(bank, queries): training images that were not held out, and the test split, evaluation transform."""
    import torch

    from mimkit.data import FMNIST_MEAN, FMNIST_STD, TensorImages, eval_transform, held_out_rows, load_fashion_mnist

    tf = eval_transform(28, FMNIST_MEAN, FMNIST_STD)
    x, y = load_fashion_mnist("train")
    n = min(args.limit or len(x), len(x))
    keep = torch.tensor(held_out_rows(n, args.val_fraction, seed)[0][: args.knn_train])
    xt, yt = load_fashion_mnist("test")
    return TensorImages(x[keep], y[keep], tf), TensorImages(xt[: args.knn_test], yt[: args.knn_test], tf)


def plot(rows, path: Path, title: str) -> Path:
    from mimkit.viz import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ep = [r["epoch"] for r in rows]
    ax.plot(ep, [r["val_loss"] for r in rows], "o-", color="tab:blue", label="validation loss")
    ax.set_xlabel("pretraining epochs")
    ax.set_ylabel("validation loss (held-out images)", color="tab:blue")
    ax2 = ax.twinx()
    for pool, style in (("cls", "s--"), ("mean", "^-")):
        ax2.plot(ep, [r[f"knn_{pool}"] for r in rows], style, color="tab:orange" if pool == "mean" else "tab:red",
                 label=f"20-NN ({pool} pool)")
    ax2.set_ylabel("20-NN accuracy (test split)")
    lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(lines, [ln.get_label() for ln in lines], loc="center right", fontsize=8)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    import torch

    import mimkit
    from mimkit.checkpoint import atomic_write, is_trusted, read_torch_checkpoint, trusted_checkpoints
    from mimkit.eval.features import extract_features
    from mimkit.eval.knn import knn_accuracy

    args = parse_args(argv)
    if args.trust_checkpoint and not is_trusted():  # --trust-checkpoint holds for the whole run
        with trusted_checkpoints():
            return main(argv)
    try:  # a reused run's checkpoints: an untrusted one is refused now, in one line (tensors are mapped)
        for _, ckpt in epoch_checkpoints(args.run) if args.run else []:
            read_torch_checkpoint(ckpt, mmap=True)
    except ValueError as e:
        raise SystemExit(f"val_loss_vs_knn: error: {e}") from None
    out = Path(args.out)
    t0 = time.time()
    if args.run:
        run_dir = Path(args.run)
    else:
        run_dir = out.parent / (out.stem + "_run")
        print(f"==> pretraining {args.recipe} for {args.epochs} epochs, {args.val_fraction:.3f} of the images held out",
              flush=True)
        pretrain(args, run_dir)
    t_pre = time.time() - t0
    losses = val_losses(run_dir)
    ckpts = epoch_checkpoints(run_dir)
    bank, queries = knn_sets(args, args.seed)
    rows = []
    for epoch, ckpt in ckpts:
        if epoch > len(losses):
            continue
        t = time.time()
        model = mimkit.load(ckpt)
        (ftr, ytr), (fte, yte) = (extract_features(model, ds, ("cls", "mean"), progress=False) for ds in (bank, queries))
        r = {"epoch": epoch, "val_loss": losses[epoch - 1], "checkpoint": ckpt.name}
        for pool in ("cls", "mean"):
            r[f"knn_{pool}"] = knn_accuracy(ftr[pool], ytr, fte[pool], yte, k=20, temperature=0.07, num_classes=10)
        rows.append(r)
        print(f"   epoch {epoch:3d}: val loss {r['val_loss']:.4f}, 20-NN cls {r['knn_cls']:.4f}, "
              f"mean {r['knn_mean']:.4f} ({time.time() - t:.0f} s)", flush=True)
        del model
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    if not rows:
        raise SystemExit(f"no periodic checkpoints with a logged val/loss in {run_dir}")
    vl = [r["val_loss"] for r in rows]
    corr = {pool: {"spearman": rank_corr(vl, [r[f"knn_{pool}"] for r in rows]),
                   "pearson": pearson(vl, [r[f"knn_{pool}"] for r in rows])} for pool in ("cls", "mean")}
    table = ["| epoch | val loss | 20-NN (cls) | 20-NN (mean) |", "| --- | --- | --- | --- |"]
    table += [f"| {r['epoch']} | {r['val_loss']:.4f} | {r['knn_cls']:.4f} | {r['knn_mean']:.4f} |" for r in rows]
    print("\n" + "\n".join(table))
    for pool, c in corr.items():
        print(f"val loss vs 20-NN ({pool} pool) over {len(rows)} epochs: Spearman {c['spearman']:+.3f}, "
              f"Pearson {c['pearson']:+.3f} (negative: lower loss, better neighbours)")
    png = plot(rows, out.with_suffix(".png"), f"{args.recipe}: validation loss vs 20-NN")
    result = {"recipe": args.recipe, "run_dir": str(run_dir), "epochs": args.epochs, "batch_size": args.batch_size,
              "val_fraction": args.val_fraction, "limit": args.limit, "knn_train": len(bank), "knn_test": len(queries),
              "knn": "k=20, cosine, exp(sim/0.07) votes; bank = training images not held out, queries = test split",
              "seed": args.seed, "quick": args.quick, "rows": rows, "correlation": corr, "table": "\n".join(table),
              "plot": str(png), "pretrain_seconds": round(t_pre, 1), "total_seconds": round(time.time() - t0, 1)}
    atomic_write(out, lambda tmp: Path(tmp).write_text(json.dumps(result, indent=2)))
    print(f"wrote {out} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
