"""Fashion-MNIST quality benchmark: is a MIM-pretrained encoder worth more than honest baselines?

One command, one run, the real Fashion-MNIST split (60k train / 10k test):

* raw pixels: logistic regression (scikit-learn, pixels in [0, 1]) and 20-NN (cosine);
* a randomly initialised encoder of the same architecture: 20-NN and linear probe;
* the MAE-pretrained encoder (pretrained here with ``run_pretrain``, or ``--mae-checkpoint``):
  20-NN, linear probe (BatchNorm(affine=False) + Linear on cached features) and fine-tune
  (layer-wise lr decay, drop path, label smoothing);
* the same ViT trained from scratch with the same fine-tune budget (same epochs, batch, lr and
  augmentation; layer decay 1, since there are no pretrained layers to protect);
* optionally other recipes (``--methods simmim_vit_tiny_patch4_28 maskfeat_vit_tiny_patch4_28
  beit_vit_tiny_patch4_28``), rows ``<method>.{knn,linear,finetune}``;
* accuracy against pretraining epochs (k-NN and linear probe on a fixed subset, from the periodic
  checkpoints of the pretraining run) as ``accuracy_vs_epochs.png``.

Writes ``--out results.json`` (accuracies in [0, 1], settings, wall times), ``results.md`` beside it
(the Markdown table, also printed), the plot, and a reconstruction and an attention picture of the
pretrained MAE.

The default run is budgeted for ~50 minutes on 2 free CPU cores (MAE pretraining 15 epochs ~25 min,
two 2-epoch fine-tunes ~9 min each, features, probes, k-NN and the curve ~8 min); ``--quick`` shrinks everything to a
minutes-long smoke run. Usage::

    python benchmarks/fmnist_quality.py --out results/fmnist_quality.json
    python benchmarks/fmnist_quality.py --out /tmp/q.json --quick
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

GOALS = {"mae.linear": 0.87, "mae.knn": 0.85, "mae.finetune": 0.93}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="results/fmnist_quality.json", help="results JSON (results.md goes beside it)")
    p.add_argument("--recipe", default="mae_vit_tiny_patch4_28", help="the MAE recipe (default mae_vit_tiny_patch4_28)")
    p.add_argument("--mae-checkpoint", help="reuse a pretrained MAE (run directory, model dir, .ckpt) instead of "
                                            "pretraining; a run directory's periodic checkpoints feed the epoch curve")
    p.add_argument("--pretrain-epochs", type=int, default=15, help="MAE pretraining epochs (default 15)")
    p.add_argument("--pretrain-batch-size", type=int, default=256)
    p.add_argument("--finetune-epochs", type=int, default=2, help="fine-tune epochs, MAE and scratch (default 2)")
    p.add_argument("--finetune-batch-size", type=int, default=128)
    p.add_argument("--finetune-blr", type=float, default=4e-3,
                   help="fine-tune base lr, lr = blr * batch / 256 (default 4e-3: the best of 1e-3/2e-3/4e-3 in a "
                        "1-epoch fine-tune on 20k images of a 1-epoch MAE, and no worse than 1e-3 from scratch)")
    p.add_argument("--layer-decay", type=float, default=0.75, help="layer-wise lr decay for pretrained encoders")
    p.add_argument("--drop-path", type=float, default=0.1)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--mixup", type=float, default=0.0)
    p.add_argument("--cutmix", type=float, default=0.0)
    p.add_argument("--finetune-warmup", type=float, default=0.2, help="fine-tune warm-up in epochs (default 0.2)")
    p.add_argument("--finetune-crop-scale", type=float, nargs=2, default=(0.8, 1.0))
    p.add_argument("--probe-epochs", type=int, default=50, help="linear-probe epochs on cached features (default 50)")
    p.add_argument("--probe-optimizer", default="sgd", choices=("sgd", "lars", "adamw"))
    p.add_argument("--pool", default="mean", choices=("cls", "mean"),
                   help="feature for the k-NN / linear-probe keys (default mean of patch tokens; both pools are "
                        "always recorded under details)")
    p.add_argument("--finetune-pool", default="mean", choices=("cls", "mean"),
                   help="classifier input for fine-tuning (default mean + LayerNorm, MAE's global pooling)")
    p.add_argument("--methods", nargs="*", default=[], help="other recipes to pretrain and evaluate the same way, "
                                                            "e.g. simmim_vit_tiny_patch4_28")
    p.add_argument("--methods-finetune", action="store_true", help="also fine-tune the --methods encoders")
    p.add_argument("--method-checkpoints", nargs="*", default=[], metavar="METHOD=DIR",
                   help="reuse pretrained --methods encoders instead of pretraining them, e.g. "
                        "simmim=results/methods/fmnist_quality_runs/simmim (run directory or model dir)")
    p.add_argument("--tokenizer", help="BEiT: a trained tokenizer (run dir / model dir) to reuse")
    p.add_argument("--tokenizer-config", default="configs/dvae_tiny_28.yaml",
                   help="BEiT: tokenizer config to train when --tokenizer is not given")
    p.add_argument("--tokenizer-epochs", type=int, help="BEiT: tokenizer epochs (default: its config's)")
    p.add_argument("--curve-every", "--plot-epochs", type=int, default=5,
                   help="evaluate every N pretraining epochs (and the last) for the accuracy-vs-epochs plot "
                        "(0 = off; default 5)")
    p.add_argument("--curve-train", type=int, default=5000, help="training images for the curve's k-NN/probe")
    p.add_argument("--curve-test", type=int, default=2000, help="test images for the curve")
    p.add_argument("--limit", type=int, help="use only the first N training images everywhere (smoke runs)")
    p.add_argument("--test-limit", type=int, help="use only the first N test images everywhere (smoke runs)")
    p.add_argument("--skip", nargs="*", default=[], choices=("raw", "random", "finetune", "scratch", "curve"),
                   help="leave parts out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny smoke settings: 2k/1k images, 1 epoch everywhere")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.limit = args.limit or 2048
        args.test_limit = args.test_limit or 1000
        args.pretrain_epochs, args.finetune_epochs, args.probe_epochs = 2, 1, 10
        args.curve_every, args.curve_train, args.curve_test = 1, 1000, 500
        args.tokenizer_epochs = 1
    return args


class Clock:
    def __init__(self):
        self.t0, self.times = time.time(), {}

    def __call__(self, name):
        clock = self

        class _T:
            def __enter__(self):
                self.t = time.time()
                print(f"\n== {name} ==", flush=True)

            def __exit__(self, *exc):
                clock.times[name] = round(time.time() - self.t, 1)
                print(f"   ({name}: {clock.times[name]:.0f} s, total {time.time() - clock.t0:.0f} s)", flush=True)

        return _T()


def method_key(recipe: str) -> str:
    return recipe.split("_")[0]


def pretrain(recipe: str, epochs: int, run_dir: Path, args, extra_overrides=()):
    from mimkit.train import load_config, run_pretrain

    cfg_file = ROOT / "configs" / f"{recipe}.yaml"
    overrides = [f"model.name={recipe}", f"trainer.max_epochs={epochs}", f"run.dir={run_dir}",
                 f"run.seed={args.seed}", f"data.batch_size={args.pretrain_batch_size}",
                 f"trainer.enable_progress_bar={not args.no_progress}", *extra_overrides]
    if args.limit:
        overrides.append(f"data.limit={args.limit}")
    if args.curve_every and "curve" not in args.skip:
        overrides += [f"run.checkpoint_every_n_epochs={args.curve_every}", "run.keep_periodic=-1"]
    cfg = load_config(cfg_file if cfg_file.exists() else None, overrides)
    return run_pretrain(cfg)


def epoch_checkpoints(run_dir) -> list[tuple[int, Path]]:
    """(completed epochs, path) of a run's periodic checkpoints, oldest first."""
    out = []
    for p in sorted(Path(run_dir, "checkpoints").glob("epoch*-step*.ckpt")):
        m = re.match(r"epoch(\d+)-step(\d+)", p.stem)
        if m:
            out.append((int(m.group(1)) + 1, p))
    return sorted(out)


def features(model, train, test, progress):
    from mimkit.eval.features import extract_features, has_cls_token

    pools = ("cls", "mean") if has_cls_token(model) else ("mean",)
    ftr, ytr = extract_features(model, train, pools, 512, None, 0, progress, "train features")
    fte, yte = extract_features(model, test, pools, 512, None, 0, progress, "test features")
    return ftr, ytr, fte, yte


def _cuda():
    import torch

    return torch.cuda.is_available()


def frozen_evals(model, train, test, args, probe=True, limit_train=None, limit_test=None) -> dict:
    """k-NN and linear probe for every pool; returns {pool: {"knn": acc, "linear": acc, ...}}."""
    from torch.utils.data import Subset

    from mimkit.eval.knn import knn_accuracy
    from mimkit.eval.linear import fit_linear_probe

    if limit_train:
        train = Subset(train, range(min(limit_train, len(train))))
    if limit_test:
        test = Subset(test, range(min(limit_test, len(test))))
    t = time.time()
    ftr, ytr, fte, yte = features(model, train, test, not args.no_progress)
    out = {"feature_seconds": round(time.time() - t, 1)}
    for pool in ftr:
        r = {"knn": knn_accuracy(ftr[pool], ytr, fte[pool], yte, k=20, temperature=0.07, num_classes=10)}
        if probe:
            _, info = fit_linear_probe(ftr[pool], ytr, fte[pool], yte, num_classes=10, epochs=args.probe_epochs,
                                       optimizer=args.probe_optimizer, seed=args.seed, progress=not args.no_progress)
            r["linear"] = info["acc"]
            r["linear_train_acc"] = info["train_acc"]
            r["linear_seconds"] = info["fit_seconds"]
        out[pool] = r
    return out


def pick(res: dict, pool: str) -> dict:
    return res.get(pool) or res["mean"]


def run_finetune(model, train_aug, test, args, layer_decay, out_dir) -> dict:
    from mimkit.eval.finetune import finetune

    _, res = finetune(model, train_aug, test, 10, pool=args.finetune_pool, epochs=args.finetune_epochs,
                      batch_size=args.finetune_batch_size, blr=args.finetune_blr, layer_decay=layer_decay,
                      drop_path=args.drop_path, mixup=args.mixup, cutmix=args.cutmix,
                      label_smoothing=args.label_smoothing, warmup_epochs=args.finetune_warmup, seed=args.seed,
                      out_dir=out_dir, progress=not args.no_progress)
    return res


def raw_pixels(args) -> dict:
    import warnings

    import numpy as np
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    from mimkit.data import load_fashion_mnist
    from mimkit.eval.knn import knn_accuracy

    xtr, ytr = load_fashion_mnist("train")
    xte, yte = load_fashion_mnist("test")
    if args.limit:
        xtr, ytr = xtr[: args.limit], ytr[: args.limit]
    if args.test_limit:
        xte, yte = xte[: args.test_limit], yte[: args.test_limit]
    ftr, fte = xtr.flatten(1).float() / 255, xte.flatten(1).float() / 255
    t = time.time()
    knn = knn_accuracy(ftr, ytr, fte, yte, k=20, temperature=0.07, num_classes=10)
    t_knn = time.time() - t
    t = time.time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = LogisticRegression(max_iter=args.logreg_iter).fit(ftr.numpy(), ytr.numpy())
    logreg = float(np.mean(clf.predict(fte.numpy()) == yte.numpy()))
    return {"logreg": logreg, "knn": knn, "logreg_seconds": round(time.time() - t, 1),
            "knn_seconds": round(t_knn, 1), "logreg_settings": f"scikit-learn LogisticRegression(lbfgs, C=1, "
                                                              f"max_iter={args.logreg_iter}), pixels / 255"}


def curve(run_dir, random_model, train, test, args, clock, final=None) -> dict | None:
    """k-NN / linear probe on a fixed subset for the random init (epoch 0), every periodic checkpoint
    of ``run_dir`` and ``final`` = (epochs, model) when the last epoch has no periodic checkpoint."""
    import mimkit

    ckpts = epoch_checkpoints(run_dir) if run_dir else []
    if not ckpts:
        print("no periodic checkpoints found: no accuracy-vs-epochs curve")
        return None
    if final is not None and final[0] > ckpts[-1][0]:
        ckpts.append(final)
    pts = []
    todo = ([(0, random_model)] if random_model is not None else []) + ckpts
    for ep, path in todo:
        m = mimkit.load(path) if isinstance(path, Path) else path
        r = frozen_evals(m, train, test, args, limit_train=args.curve_train, limit_test=args.curve_test)
        pts.append({"epoch": ep, **{p: r[p] for p in r if p != "feature_seconds"}})
        print(f"   epoch {ep}: " + ", ".join(f"{p} k-NN {r[p]['knn']:.4f} linear {r[p]['linear']:.4f}"
                                           for p in r if p != "feature_seconds"), flush=True)
    # raw-pixel 20-NN on the same subset, as a reference line
    from mimkit.eval.knn import knn_accuracy

    ntr, nte = min(args.curve_train, len(train)), min(args.curve_test, len(test))
    raw_knn = knn_accuracy(train.images[:ntr].flatten(1).float(), train.labels[:ntr],
                           test.images[:nte].flatten(1).float(), test.labels[:nte], num_classes=10)
    return {"train_images": ntr, "test_images": nte, "raw_pixels_knn": raw_knn, "points": pts}


def plot_curve(cur: dict, path: Path, title: str) -> Path:
    from mimkit.viz import save_curve

    series = {}
    for pool in ("cls", "mean"):
        pts = [p for p in cur["points"] if pool in p]
        if not pts:
            continue
        xs = [p["epoch"] for p in pts]
        series[f"20-NN ({pool})"] = (xs, [p[pool]["knn"] for p in pts])
        series[f"linear probe ({pool})"] = (xs, [p[pool]["linear"] for p in pts])
    return save_curve(None, series, path, xlabel="pretraining epochs",
                      ylabel=f"test accuracy ({cur['test_images']} test, {cur['train_images']} train images)",
                      title=title, marker="o", hlines={"raw pixels 20-NN": cur["raw_pixels_knn"]})


def table(results: dict, args) -> str:
    f = lambda v: "–" if v is None else f"{v:.4f}"  # noqa: E731
    g = lambda *ks: _get(results, *ks)  # noqa: E731
    rows = [
        ("raw pixels", f(g("raw_pixels", "knn")),
         f(g("raw_pixels", "logreg")) + (" (logreg)" if g("raw_pixels", "logreg") is not None else ""), "–"),
        ("random-init encoder", f(g("random_init", "knn")), f(g("random_init", "linear")), "–"),
        (f"MAE, {args.pretrain_epochs} ep pretraining" if not args.mae_checkpoint else f"MAE ({args.mae_checkpoint})",
         f(g("mae", "knn")), f(g("mae", "linear")),
         f(g("mae", "finetune"))),
        ("same ViT from scratch", "–", "–", f(g("scratch", "finetune"))),
    ]
    for m in results.get("methods", []):
        rows.append((m, f(g(m, "knn")), f(g(m, "linear")), f(g(m, "finetune"))))
    head = ("encoder", "20-NN", "linear probe", f"fine-tune ({args.finetune_epochs} ep)")
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(4)]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    lines = [line(head), "| " + " | ".join("-" * w for w in widths) + " |", *map(line, rows)]
    s = results["settings"]
    lines += ["", f"Fashion-MNIST test set ({s['test_images']} images), {s['train_images']} training images; "
                  f"frozen features: {args.pool} pooling, fine-tune: {args.finetune_pool} pooling; goals: linear >= 0.87, 20-NN >= 0.85, fine-tune >= 0.93 and above scratch.",
              "Wall times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in results["wall_seconds"].items())]
    return "\n".join(lines)


def _get(d, *keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def main(argv=None) -> int:
    import torch

    import mimkit
    from mimkit.eval.data import eval_dataset
    from mimkit.viz import save_attention_grid

    args = parse_args(argv)
    args.logreg_iter = 100  # scikit-learn's default; 0.844 on the full split
    out = Path(args.out)
    out_dir = out.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    work = out_dir / (out.stem + "_runs")
    clock = Clock()
    torch.manual_seed(args.seed)
    results: dict = {"settings": {}, "wall_seconds": clock.times}
    probe_model = mimkit.create(args.recipe)
    kw = dict(limit=args.limit)
    train, _ = eval_dataset("fashion_mnist", "train", probe_model, **kw)
    test, _ = eval_dataset("fashion_mnist", "test", probe_model, limit=args.test_limit)
    train_aug, _ = eval_dataset("fashion_mnist", "train", probe_model, train_aug=True,
                                crop_scale=tuple(args.finetune_crop_scale), **kw)
    results["settings"] = {
        "recipe": args.recipe, "train_images": len(train), "test_images": len(test), "pool": args.pool,
        "finetune_pool": args.finetune_pool,
        "mae_pretrain_epochs": args.pretrain_epochs if not args.mae_checkpoint else f"reused {args.mae_checkpoint}",
        "pretrain_batch_size": args.pretrain_batch_size, "finetune_epochs": args.finetune_epochs,
        "finetune_batch_size": args.finetune_batch_size, "finetune_blr": args.finetune_blr,
        "finetune_lr": args.finetune_blr * args.finetune_batch_size / 256, "layer_decay_pretrained": args.layer_decay,
        "layer_decay_scratch": 1.0, "drop_path": args.drop_path, "label_smoothing": args.label_smoothing,
        "mixup": args.mixup, "cutmix": args.cutmix, "finetune_warmup_epochs": args.finetune_warmup,
        "finetune_crop_scale": list(args.finetune_crop_scale), "probe_epochs": args.probe_epochs,
        "probe_optimizer": args.probe_optimizer, "knn": "k=20, cosine, exp(sim/0.07) votes", "seed": args.seed,
        "threads": torch.get_num_threads(), "device": "cuda" if _cuda() else "cpu", "quick": args.quick,
    }

    def save():
        out.write_text(json.dumps(results, indent=2, default=str))

    # ---- raw pixels -------------------------------------------------------------------------
    if "raw" not in args.skip:
        with clock("raw pixels: logistic regression + 20-NN"):
            results["raw_pixels"] = raw_pixels(args)
            print(f"   logreg {results['raw_pixels']['logreg']:.4f}, 20-NN {results['raw_pixels']['knn']:.4f}")
        save()

    # ---- random init ------------------------------------------------------------------------
    torch.manual_seed(args.seed)
    random_model = mimkit.create(args.recipe)
    if "random" not in args.skip:
        with clock("random-init encoder: 20-NN + linear probe"):
            r = frozen_evals(random_model, train, test, args)
            results["random_init"] = {**pick(r, args.pool), "details": r}
            print(f"   20-NN {results['random_init']['knn']:.4f}, linear {results['random_init']['linear']:.4f}")
        save()

    # ---- MAE --------------------------------------------------------------------------------
    run_dir = None
    if args.mae_checkpoint:
        p = Path(args.mae_checkpoint)
        mae = mimkit.load(p / "model" if (p / "model" / "config.json").exists() else p)
        run_dir = p if (p / "checkpoints").is_dir() else None
    else:
        with clock("MAE pretraining"):
            run_dir = pretrain(args.recipe, args.pretrain_epochs, work / "mae", args)
        mae = mimkit.load(run_dir / "model")
    with clock("MAE: 20-NN + linear probe"):
        r = frozen_evals(mae, train, test, args)
        results["mae"] = {**pick(r, args.pool), "details": r}
        print(f"   20-NN {results['mae']['knn']:.4f}, linear {results['mae']['linear']:.4f}")
    save()
    imgs = torch.stack([test[i][0] for i in range(min(8, len(test)))])
    try:
        from mimkit.data import FMNIST_MEAN, FMNIST_STD
        from mimkit.viz import save_reconstruction_grid

        g = torch.Generator().manual_seed(args.seed)
        noise = torch.rand(imgs.shape[0], mae.encoder.num_patches, generator=g)
        results["pictures"] = {
            "reconstruction": str(save_reconstruction_grid(mae, imgs, out_dir / "mae_reconstructions.png", FMNIST_MEAN,
                                                           FMNIST_STD, noise=noise,
                                                           title=f"MAE, random masking {mae.mask_ratio:.0%}, test images")),
            "attention": str(save_attention_grid(mae, imgs, out_dir / "mae_attention.png", FMNIST_MEAN, FMNIST_STD)),
        }
    except Exception as e:  # pictures are a bonus; never lose the numbers for them
        print(f"   (pictures failed: {type(e).__name__}: {e})")

    if "finetune" not in args.skip:
        with clock("MAE: fine-tune"):
            ft = run_finetune(mae, train_aug, test, args, args.layer_decay, work / "mae_finetune")
            results["mae"]["finetune"] = ft["acc"]
            results["mae"]["finetune_details"] = ft
            print(f"   fine-tune {ft['acc']:.4f} ({ft['train_images_per_second']:.0f} img/s)")
        save()
    if "scratch" not in args.skip:
        with clock("scratch: same ViT, same fine-tune budget"):
            torch.manual_seed(args.seed)
            ft = run_finetune(mimkit.create(args.recipe), train_aug, test, args, 1.0, work / "scratch_finetune")
            results["scratch"] = {"finetune": ft["acc"], "finetune_details": ft}
            print(f"   scratch {ft['acc']:.4f}")
        save()

    # ---- other methods ----------------------------------------------------------------------
    results["methods"] = []
    reused = {}
    for item in args.method_checkpoints:
        key, sep, path = item.partition("=")
        if not sep or not Path(path).exists():
            raise SystemExit(f"--method-checkpoints takes METHOD=DIR with an existing DIR, got {item!r}")
        reused[key] = Path(path)
    for recipe in args.methods:
        key = method_key(recipe)
        reuse = reused.get(key)
        with clock(f"{key}: {'evaluation of ' + str(reuse) if reuse else 'pretraining + evaluation'}"):
            extra = []
            if reuse:
                rd = reuse
                m = mimkit.load(rd / "model" if (rd / "model" / "config.json").exists() else rd)
            elif key == "beit":
                tok = args.tokenizer or train_tokenizer(args, work / "tokenizer", results)
                if tok is None:
                    results[key] = {"skipped": "BEiT needs a tokenizer: pass --tokenizer RUN, or provide "
                                               f"{args.tokenizer_config} (a `mimkit tokenizer train` config)"}
                    print("   " + results[key]["skipped"])
                    continue
                extra = [f"model.tokenizer_path={tok}"]
            if not reuse:
                rd = pretrain(recipe, args.pretrain_epochs, work / key, args, extra)
                m = mimkit.load(rd / "model")
            r = frozen_evals(m, train, test, args)
            results[key] = {**pick(r, args.pool), "details": r, "recipe": recipe,
                            "pretrain_epochs": f"reused {reuse}" if reuse else args.pretrain_epochs,
                            **results.get(key, {})}
            print(f"   20-NN {results[key]['knn']:.4f}, linear {results[key]['linear']:.4f}")
            if args.methods_finetune and "finetune" not in args.skip:
                ft = run_finetune(m, train_aug, test, args, args.layer_decay, work / f"{key}_finetune")
                results[key]["finetune"], results[key]["finetune_details"] = ft["acc"], ft
                print(f"   fine-tune {ft['acc']:.4f}")
            if args.curve_every and "curve" not in args.skip:
                torch.manual_seed(args.seed)
                cur = curve(rd, mimkit.create(recipe), train, test, args, clock, (args.pretrain_epochs, m))
                if cur:
                    results[key]["curve"] = cur
                    cur["plot"] = str(plot_curve(cur, out_dir / f"accuracy_vs_epochs_{key}.png",
                                                 f"{recipe}: frozen-feature accuracy vs pretraining"))
            results["methods"].append(key)
        save()

    # ---- accuracy against pretraining epochs ------------------------------------------------
    if args.curve_every and "curve" not in args.skip:
        with clock("accuracy vs pretraining epochs"):
            final = (args.pretrain_epochs, mae) if not args.mae_checkpoint else None
            cur = curve(run_dir, random_model, train, test, args, clock, final)
            if cur:
                results["curve"] = cur
                results["curve"]["plot"] = str(plot_curve(cur, out_dir / "accuracy_vs_epochs.png",
                                                          f"{args.recipe}: frozen-feature accuracy vs pretraining"))
        save()

    results["goals"] = {k: {"goal": v, "reached": (_get(results, *k.split(".")) or 0) >= v} for k, v in GOALS.items()}
    if _get(results, "mae", "finetune") is not None and _get(results, "scratch", "finetune") is not None:
        results["goals"]["mae.finetune > scratch.finetune"] = {
            "reached": results["mae"]["finetune"] > results["scratch"]["finetune"]}
    results["total_seconds"] = round(time.time() - clock.t0, 1)
    save()
    md = table(results, args)
    (out_dir / "results.md").write_text(md + "\n")
    print("\n" + md)
    print(f"\nresults: {out}; table: {out_dir / 'results.md'}")
    return 0


def train_tokenizer(args, run_dir: Path, results: dict):
    """Train BEiT's tokenizer with its config (the engine of ``mimkit tokenizer train``) and record its
    codebook report; None when the config is missing."""
    cfg_file = Path(args.tokenizer_config)
    cfg_file = cfg_file if cfg_file.is_absolute() or cfg_file.exists() else ROOT / cfg_file
    if not cfg_file.exists():
        return None
    from mimkit.train import load_config, run_pretrain

    overrides = [f"run.dir={run_dir}", f"trainer.enable_progress_bar={not args.no_progress}"]
    if args.tokenizer_epochs:
        overrides.append(f"trainer.max_epochs={args.tokenizer_epochs}")
    if args.limit:
        overrides.append(f"data.limit={args.limit}")
    cfg = load_config(cfg_file, overrides)
    rd = Path(run_pretrain(cfg))
    try:
        from mimkit.commands.tokenizer import report_after_training

        results["beit"] = {"tokenizer": {"run": str(rd), "report": report_after_training(rd, cfg, 1000)}}
    except Exception as e:  # the report is informative only
        results["beit"] = {"tokenizer": {"run": str(rd), "report_error": f"{type(e).__name__}: {e}"}}
    return rd / "model"


if __name__ == "__main__":
    sys.exit(main())
