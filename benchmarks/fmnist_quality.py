"""Fashion-MNIST quality benchmark: does pretraining pay off against honest baselines, with full and
scarce labels, on a small budget?

One command, one run, the real split (60k training images, all used unlabelled for pretraining;
10k test images for every number):

* **raw pixels**: the images as the encoder receives them (normalised), flattened: logistic regression
  (scikit-learn) and 20-NN (cosine);
* **random init**: the same ViT untrained, 20-NN and linear probe;
* **the best recipe** (``--recipe``, default the tuned CPU recipe), pretrained here (or ``--checkpoint``):
  20-NN, linear probe (BatchNorm(affine=False) + Linear on cached features) and fine-tuning;
* **scarce labels**: 60 and 600 labels per class (balanced, fixed by ``--seed``), for raw pixels
  (20-NN, logistic regression) and the pretrained encoder (20-NN, linear probe, fine-tuning);
* **scratch**: the same ViT trained from scratch with the same fine-tuning recipe for the **same total
  wall time** as pretraining + fine-tuning (epochs = that time / the measured time of one fine-tuning
  epoch; layer decay 1, since there are no pretrained layers to protect);
* ``quality_vs_time.png``: 20-NN (on a fixed 10k / 2k subset) against wall-clock minutes of
  pretraining, raw pixels as a line.

``--mode curve`` (the default) pretrains each method of ``--methods`` (default mae) at each budget of
``--curve`` (default 7.5, 15 and 30 minutes: about an hour here) with a budget-true schedule
(``trainer.max_minutes``: warm-up and cosine end at the budget) and evaluates every point the same
way: 20-NN and the linear probe, pooling and probe lr chosen on a validation split (the last
``--val-size`` = 10k training images, :mod:`mimkit.eval.selection`), the test set read once, all labels
and 60 and 600 per class (about 64 minutes in all here). It writes ``curve.<recipe>.<minutes>``, ``crossover.<recipe>.{knn,linear}``
(the first budget that beats raw pixels, or null) and ``quality_vs_time.png`` (minutes on a log axis,
raw pixels and random init as flat lines). Finished points are kept: a later run with more budgets
(``--curve 60,120``) adds to the same ``--out`` and reuses finished runs of the same settings. The
best method on validation is then, with ``--finetune``, fine-tuned with scarce labels (schedules sized to
the labels, early stopping on held-out labels) and, with ``--finetune-budgets 30,60``, pretrained + fine-tuned within one
total budget against the same ViT from scratch for the whole total.

``--mode best`` (the issue-14 run; the mode of ``--checkpoint``) pretrains one recipe as configured,
then adds fine-tuning and the equal-time scratch ViT. ``--all-methods --minutes-per-method M`` pretrains
every method (MAE, SimMIM, MaskFeat, BEiT with its tokenizer, data2vec 2.0, I-JEPA) for the same
budget-true M minutes each (the tokenizer's training counts in BEiT's budget): each gets a 20-NN and
linear row.

Writes ``--out`` (JSON: ``raw_pixels``, ``random_init``, ``methods.<recipe>``, ``best``, ``scratch``,
``low_label.<N>``, ``wall_minutes``), ``results.md`` beside it (the table, also printed) and the
pictures. The frozen protocols (raw pixels, random init, the encoder's 20-NN and linear probe, with all
and scarce labels) are those of ``mimkit report`` (:mod:`mimkit.eval.report`): on the same inputs both
print the same numbers. Usage::

    python benchmarks/fmnist_quality.py --out results/fmnist_quality.json            # the curve at 7.5, 15, 30 min
    python benchmarks/fmnist_quality.py --curve 60,120 --out results/fmnist_quality.json   # once: the long points
    python benchmarks/fmnist_quality.py --all-methods --minutes-per-method 10 --out results/methods/fmnist_quality.json
    python benchmarks/fmnist_quality.py --quick --out /tmp/q.json          # a few minutes, smoke test
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BEST_RECIPE = "mae_vit_tiny_patch4_28"
ALL_METHODS = ["mae_vit_tiny_patch4_28", "simmim_vit_tiny_patch4_28", "maskfeat_vit_tiny_patch4_28",
               "beit_vit_tiny_patch4_28", "data2vec2_vit_tiny_patch4_28", "ijepa_vit_tiny_patch4_28"]
LOW_LABELS = (60, 600)
DEFAULT_CURVE = (7.5, 15, 30)  # the default run: about 60 minutes on 2 CPU cores
GOALS = {"knn": 0.87, "linear": 0.88, "finetune": 0.92, "low_label_margin": 0.05}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="results/fmnist_quality.json", help="results JSON (results.md and pictures beside it)")
    p.add_argument("--recipe", default=BEST_RECIPE, help=f"the recipe to pretrain (default {BEST_RECIPE})")
    p.add_argument("--checkpoint", help="reuse a pretrained encoder (run directory or model dir) instead of pretraining; "
                                        "--pretrain-minutes then says how long it took")
    p.add_argument("--pretrain-epochs", type=float, help="pretraining epochs (default: the recipe config's)")
    p.add_argument("--pretrain-minutes", type=float, help="with --checkpoint: its pretraining time, for the scratch budget")
    p.add_argument("--overrides", nargs="*", default=[], help="extra section.key=value overrides for pretraining")
    p.add_argument("--finetune-epochs", type=float, default=1, help="fine-tuning epochs with all labels (default 1)")
    p.add_argument("--finetune-batch-size", type=int, default=128)
    p.add_argument("--finetune-blr", type=float, default=2e-3, help="fine-tune base lr, lr = blr * batch / 256")
    p.add_argument("--layer-decay", type=float, default=0.75, help="layer-wise lr decay for the pretrained encoder")
    p.add_argument("--drop-path", type=float, default=0.1)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--finetune-warmup", type=float, default=0.3, help="fine-tune warm-up, epochs")
    p.add_argument("--finetune-crop-scale", type=float, nargs=2, default=(0.8, 1.0))
    p.add_argument("--low-label-steps", type=int, default=400,
                   help="optimiser steps of each scarce-label fine-tune (batch 64; default 400)")
    p.add_argument("--probe-epochs", type=int, default=50, help="linear-probe epochs on cached features")
    p.add_argument("--low-labels", type=int, nargs="*", default=list(LOW_LABELS),
                   help=f"scarce-label budgets, labels per class (default {' '.join(map(str, LOW_LABELS))})")
    p.add_argument("--pool", default="mean", choices=("cls", "mean"), help="frozen feature (both are recorded)")
    p.add_argument("--mode", choices=("curve", "best", "all"), default=None,
                   help="curve (the default; best when --checkpoint is given): each method at each budget of --curve, budget-true schedules, choices made on "
                        "validation; best: one recipe with fine-tuning and the equal-time scratch ViT; all: every method "
                        "for --minutes-per-method")
    p.add_argument("--curve", default=",".join(map(str, DEFAULT_CURVE)),
                   help="pretraining budgets in minutes, comma-separated (default %(default)s; the 60 and 120 minute "
                        "points are run once and kept in results/)")
    p.add_argument("--val-size", type=int, default=10000,
                   help="validation split: the last N training images (default 10000); every choice is made on it")
    p.add_argument("--finetune-budgets", default="",
                   help="--mode curve: total minutes (comma-separated, e.g. 30,60) that pretraining + fine-tuning share, "
                        "split as validation says is best, against the same ViT trained from scratch for the whole total")
    p.add_argument("--finetune", action="store_true",
                   help="--mode curve: also fine-tune the best method with scarce labels (--low-labels; schedules sized to "
                        "the labels, early stopping on held-out labels); off by default to keep the default run near an hour")
    p.add_argument("--pretrain-shares", default="0.5,0.75",
                   help="the pretraining shares of a --finetune-budgets total tried on validation (default %(default)s)")
    p.add_argument("--rerun", action="store_true", help="pretrain again even where a finished run of the same "
                                                        "recipe, budget and settings is in the work directory")
    p.add_argument("--all-methods", action="store_true", help="pretrain every method for --minutes-per-method")
    p.add_argument("--minutes-per-method", type=float, default=10.0)
    p.add_argument("--methods", default=None,
                   help="comma-separated methods or recipes (mae, data2vec2, ...): --mode curve: default mae; "
                        "--mode all: default every method")
    p.add_argument("--curve-points", type=int, default=5, help="points per quality-vs-time line")
    p.add_argument("--curve-train", type=int, default=10000, help="training images for the curve's 20-NN")
    p.add_argument("--curve-test", type=int, default=2000, help="test images for the curve's 20-NN")
    p.add_argument("--skip", nargs="*", default=[], choices=("finetune", "scratch", "low_label", "curve"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, help="only the first N training images everywhere (smoke runs)")
    p.add_argument("--test-limit", type=int, help="only the first N test images everywhere (smoke runs)")
    p.add_argument("--quick", action="store_true", help="smoke settings: 4k/1k images, short everything")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="unpickle --checkpoint's .ckpt files fully even if they hold Python objects beyond tensors "
                        "(they can run code: only for files you trust; default: refuse them)")
    args = p.parse_args(argv)
    if args.all_methods:
        args.mode = "all"
    args.mode = args.mode or ("best" if args.checkpoint else "curve")
    args.methods = [recipe_of(m) for m in args.methods.split(",")] if args.methods else None
    try:
        args.budgets = sorted({float(b) for b in str(args.curve).split(",") if b.strip()})
    except ValueError:
        p.error(f"--curve takes minutes separated by commas, e.g. 7.5,15,30; got {args.curve!r}")
    if not args.budgets or min(args.budgets) <= 0:
        p.error(f"--curve needs positive minutes, got {args.curve!r}")
    try:
        args.ft_budgets = [float(b) for b in args.finetune_budgets.split(",") if b.strip()]
        args.shares = [float(b) for b in args.pretrain_shares.split(",") if b.strip()]
    except ValueError:
        p.error("--finetune-budgets and --pretrain-shares take numbers separated by commas, e.g. 30,60 and 0.5,0.75")
    if any(not 0 < f < 1 for f in args.shares) or any(b <= 0 for b in args.ft_budgets):
        p.error("--pretrain-shares must lie strictly between 0 and 1 and --finetune-budgets must be positive")
    if args.quick:
        args.limit, args.test_limit = args.limit or 4096, args.test_limit or 1000
        args.pretrain_epochs = args.pretrain_epochs or 1
        args.finetune_epochs, args.probe_epochs, args.low_label_steps = 1, 10, 20
        args.minutes_per_method = min(args.minutes_per_method, 0.5)
        args.curve_train, args.curve_test, args.curve_points = 1000, 500, 2
        args.val_size = min(args.val_size, 1000)
        if args.curve == ",".join(map(str, DEFAULT_CURVE)):
            args.budgets = [0.25, 0.5]
    return args


def recipe_of(name: str) -> str:
    """``mae`` -> ``mae_vit_tiny_patch4_28`` (the method's tiny CPU recipe); a recipe name stays as it is."""
    name = name.strip()
    for r in ALL_METHODS:
        if name == r or name == r.split("_vit")[0]:
            return r
    if (ROOT / "configs" / f"{name}.yaml").exists():
        return name
    raise SystemExit(f"fmnist_quality: error: unknown method {name!r}; use one of "
                     f"{', '.join(r.split('_vit')[0] for r in ALL_METHODS)} or a recipe in configs/")


class Clock:
    """Named wall times, printed as they finish."""

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
                print(f"   ({name}: {clock.times[name]:.0f} s, total {(time.time() - clock.t0) / 60:.1f} min)", flush=True)

        return _T()


# ---- data and protocols: mimkit.eval.report's ------------------------------------------------------
def datasets(model, args):
    from mimkit.eval.data import eval_dataset
    from mimkit.eval.report import load_report_data

    rd = load_report_data("fashion_mnist", model, limit=args.limit, test_limit=args.test_limit, progress=False)
    train_aug, _ = eval_dataset("fashion_mnist", "train", model, train_aug=True, limit=args.limit,
                                crop_scale=tuple(args.finetune_crop_scale))
    return rd.train, rd.test, train_aug


def features(model, train, test, args):
    from mimkit.eval.features import extract_features, has_cls_token

    pools = ("cls", "mean") if has_cls_token(model) else ("mean",)
    ftr, ytr = extract_features(model, train, pools, 512, None, 0, not args.no_progress, "train features")
    fte, yte = extract_features(model, test, pools, 512, None, 0, not args.no_progress, "test features")
    return ftr, ytr, fte, yte


def frozen(ftr, ytr, fte, yte, args, idx=None) -> dict:
    """20-NN and linear probe per pool, on all training features or the rows ``idx``
    (:func:`mimkit.eval.report.frozen_protocols`, as ``mimkit report``)."""
    from mimkit.eval.report import frozen_protocols

    res = frozen_protocols(ftr, ytr, fte, yte, 10, None if idx is None else {0: idx}, probe_epochs=args.probe_epochs,
                           seed=args.seed, all_labels=idx is None)
    return {pool: r[None if idx is None else 0] for pool, r in res.items()}


def pick(res: dict, pool: str) -> dict:
    return res.get(pool) or res["mean"]


def raw_pixels(args, idx_by_n, model) -> dict:
    """Raw pixels as ``model`` receives them (:func:`mimkit.eval.report.raw_pixel_protocols`)."""
    from mimkit.eval.report import pixel_features, raw_pixel_protocols

    train, test, _ = datasets(model, args)
    (xtr, ytr), (xte, yte) = pixel_features(train), pixel_features(test)
    r = raw_pixel_protocols(xtr, ytr, xte, yte, 10, idx_by_n, seed=args.seed, probe_epochs=args.probe_epochs)
    out = {"knn": r[None]["knn"], "logreg": r[None]["linear"],
           "low_label": {str(n): {"knn": r[n]["knn"], "logreg": r[n]["linear"]} for n in idx_by_n}}
    out["settings"] = f"{r['linear_method']} and 20-NN cosine, on the normalised pixels the encoder receives"
    return out


def finetune_run(model, train_aug, test, args, layer_decay, epochs, out_dir, batch_size=None, warmup=None) -> dict:
    from mimkit.eval.finetune import finetune

    _, res = finetune(model, train_aug, test, 10, pool="mean", epochs=epochs, batch_size=batch_size or
                      args.finetune_batch_size, blr=args.finetune_blr, layer_decay=layer_decay,
                      drop_path=args.drop_path, label_smoothing=args.label_smoothing,
                      warmup_epochs=args.finetune_warmup if warmup is None else warmup, seed=args.seed,
                      out_dir=out_dir, progress=not args.no_progress)
    return res


# ---- pretraining ----------------------------------------------------------------------------------
def pretrain(recipe: str, run_dir: Path, args, overrides=(), epochs=None, max_steps=None, every_n_steps=None):
    from mimkit.train import load_config, run_pretrain

    cfg_file = ROOT / "configs" / f"{recipe}.yaml"
    ov = [f"model.name={recipe}", f"run.dir={run_dir}", f"run.seed={args.seed}", "run.recon_images=0",
          f"trainer.enable_progress_bar={not args.no_progress}", "run.keep_periodic=-1", *overrides]
    if args.limit:
        ov.append(f"data.limit={args.limit}")
    if epochs is not None:
        ov.append(f"trainer.max_epochs={max(1, math.ceil(epochs))}")
    if max_steps is not None:
        ov += [f"trainer.max_steps={max_steps}", "trainer.max_epochs=-1"]
    if every_n_steps:
        ov.append(f"run.checkpoint_every_n_steps={every_n_steps}")
    cfg = load_config(cfg_file if cfg_file.exists() else None, ov)
    t0 = time.time()
    run_pretrain(cfg)
    return time.time() - t0, cfg


def checkpoints(run_dir) -> list[tuple[int, Path]]:
    """(step, path) of a run's periodic checkpoints."""
    out = []
    for p in Path(run_dir, "checkpoints").glob("*.ckpt"):
        m = re.search(r"step(\d+)", p.stem)
        if m:
            out.append((int(m.group(1)), p))
    return sorted(out)


def curve(run_dir, seconds_per_step, init_model, args) -> list[dict]:
    """20-NN on a fixed subset at the random init and every periodic checkpoint: [{step, minutes, knn}]."""
    from torch.utils.data import Subset

    import mimkit
    from mimkit.eval.features import extract_features, has_cls_token
    from mimkit.eval.knn import knn_accuracy

    sets = None
    pts = []
    for step, path in [(0, None), *checkpoints(run_dir)]:
        m = init_model if path is None else mimkit.load(path)
        if m is None:
            continue
        if sets is None:
            train, test, _ = datasets(m, args)
            sets = Subset(train, range(min(args.curve_train, len(train)))), Subset(test, range(min(args.curve_test, len(test))))
        how = args.pool if has_cls_token(m) else "mean"
        ftr, ytr = extract_features(m, sets[0], how, 512, None, 0, False)
        fte, yte = extract_features(m, sets[1], how, 512, None, 0, False)
        pts.append({"step": step, "minutes": round(step * seconds_per_step / 60, 2),
                    "knn": knn_accuracy(ftr, ytr, fte, yte, num_classes=10)})
        print(f"   step {step}: {pts[-1]['minutes']:.1f} min, 20-NN {pts[-1]['knn']:.4f}", flush=True)
    return pts


def raw_curve_knn(args, model) -> float:
    from mimkit.eval.knn import knn_accuracy
    from mimkit.eval.report import pixel_features

    train, test, _ = datasets(model, args)
    (xtr, ytr), (xte, yte) = pixel_features(train), pixel_features(test)
    n, t = min(args.curve_train, len(xtr)), min(args.curve_test, len(xte))
    return knn_accuracy(xtr[:n], ytr[:n], xte[:t], yte[:t], num_classes=10)


def plot_quality_vs_time(lines: dict, raw: float, path: Path, subtitle: str) -> Path:
    from mimkit.viz import save_curve

    series = {name: ([p["minutes"] for p in pts], [p["knn"] for p in pts]) for name, pts in lines.items()}
    return save_curve(None, series, path, xlabel="wall-clock minutes of pretraining (2 CPU cores)",
                      ylabel="20-NN test accuracy", marker="o", hlines={"raw pixels": raw},
                      title=f"Fashion-MNIST: 20-NN against pretraining time\n{subtitle}")


# ---- the two modes --------------------------------------------------------------------------------
def run_best(args, results, clock, out_dir, work):
    import torch

    import mimkit
    from mimkit.eval.data import balanced_indices, dataset_labels
    from mimkit.eval.report import random_init_like

    torch.manual_seed(args.seed)
    given = None
    if args.checkpoint:
        given = mimkit.load(Path(args.checkpoint) / "model" if (Path(args.checkpoint) / "model").is_dir()
                            else args.checkpoint)
    # the random init of the recipe (or of the given checkpoint's config), as `mimkit report` builds it
    init = random_init_like(given if given is not None else mimkit.create(args.recipe), args.seed)
    train, test, train_aug = datasets(init, args)
    labels = dataset_labels(train)
    idx_by_n = {n: balanced_indices(labels, n, args.seed) for n in args.low_labels if n * 10 <= len(labels)}
    with clock(f"raw pixels: 20-NN + logistic regression (all labels, {', '.join(map(str, idx_by_n))} per class)"):
        results["raw_pixels"] = raw_pixels(args, idx_by_n, init)
        print(f"   20-NN {results['raw_pixels']['knn']:.4f}, logreg {results['raw_pixels']['logreg']:.4f}")
    with clock("random-init encoder: 20-NN + linear probe"):
        r = frozen(*features(init, train, test, args), args)
        results["random_init"] = {**pick(r, args.pool), "details": r}
    save(results, args)

    run_dir = work / "pretrain"
    if args.checkpoint:
        model = given
        pre_s = 60 * (args.pretrain_minutes or 0)
        run_dir = Path(args.checkpoint) if (Path(args.checkpoint) / "checkpoints").is_dir() else None
    else:
        with clock(f"pretraining {args.recipe}"):
            pre_s, _ = pretrain(args.recipe, run_dir, args, args.overrides, epochs=args.pretrain_epochs)
        model = mimkit.load(run_dir / "model")
    entry = results.setdefault("methods", {}).setdefault(args.recipe, {})
    entry["minutes"] = round(pre_s / 60, 2)
    with clock("pretrained encoder: 20-NN + linear probe, all and scarce labels"):
        feats = features(model, train, test, args)
        r = frozen(*feats, args)
        entry.update({**pick(r, args.pool), "details": r})
        for n, idx in idx_by_n.items():
            lr = pick(frozen(*feats, args, idx=idx), args.pool)
            results.setdefault("low_label", {})[str(n)] = {
                "raw_knn": results["raw_pixels"]["low_label"][str(n)]["knn"],
                "raw_logreg": results["raw_pixels"]["low_label"][str(n)]["logreg"],
                "knn": lr["knn"], "linear": lr["linear"]}
        print(f"   20-NN {entry['knn']:.4f}, linear {entry['linear']:.4f}; scarce labels: "
              + ", ".join(f"{n}/class 20-NN {v['knn']:.4f} linear {v['linear']:.4f}"
                          for n, v in results.get("low_label", {}).items()))
    save(results, args)
    if "finetune" not in args.skip:
        with clock("pretrained encoder: fine-tune, all labels"):
            ft = finetune_run(model, train_aug, test, args, args.layer_decay, args.finetune_epochs, work / "finetune")
            entry["finetune"], entry["finetune_minutes"], entry["finetune_details"] = \
                ft["acc"], round(ft["fit_seconds"] / 60, 2), ft
            print(f"   fine-tune {ft['acc']:.4f} in {ft['fit_seconds'] / 60:.1f} min")
        save(results, args)
    if "low_label" not in args.skip and "finetune" not in args.skip:
        from torch.utils.data import Subset

        for n, idx in idx_by_n.items():
            with clock(f"pretrained encoder: fine-tune on {n} labels per class"):
                sub = Subset(train_aug, idx.tolist())
                epochs = max(1, round(args.low_label_steps * 64 / len(sub)))
                ft = finetune_run(model, sub, test, args, args.layer_decay, epochs, None, batch_size=64, warmup=0.1 * epochs)
                results["low_label"][str(n)]["finetune"] = ft["acc"]
                results["low_label"][str(n)]["finetune_epochs"] = epochs
                print(f"   {n}/class fine-tune {ft['acc']:.4f} ({epochs} epochs)")
            save(results, args)
    if "scratch" not in args.skip and "finetune" not in args.skip:
        epoch_s = entry["finetune_details"]["fit_seconds"] / args.finetune_epochs
        budget = pre_s + entry["finetune_details"]["fit_seconds"]
        epochs = round(budget / epoch_s, 2)  # fractional: the exact wall-clock budget, not a rounded one
        with clock(f"scratch: the same ViT, {epochs} fine-tune epochs = the {budget / 60:.1f} min of pretraining + fine-tuning"):
            torch.manual_seed(args.seed)
            ft = finetune_run(mimkit.create(args.recipe), train_aug, test, args, 1.0, epochs, work / "scratch")
            results["scratch"] = {"finetune": ft["acc"], "minutes": round(ft["fit_seconds"] / 60, 2),
                                  "epochs": epochs, "budget_minutes": round(budget / 60, 2), "details": ft}
            print(f"   scratch {ft['acc']:.4f} in {ft['fit_seconds'] / 60:.1f} min")
        save(results, args)
    if "curve" not in args.skip and run_dir is not None and checkpoints(run_dir):
        with clock("20-NN against pretraining time"):
            steps = max(s for s, _ in checkpoints(run_dir))
            pts = curve(run_dir, pre_s / max(1, steps), init, args)
            entry["curve"] = pts
            raw = raw_curve_knn(args, init)
            results["pictures"] = {"quality_vs_time": str(plot_quality_vs_time(
                {args.recipe: pts}, raw, out_dir / "quality_vs_time.png",
                f"{args.curve_train} train / {args.curve_test} test images; {args.recipe}"))}
    results["best"] = {"recipe": args.recipe, "knn": entry.get("knn"), "linear": entry.get("linear"),
                       "finetune": entry.get("finetune"), "checkpoint": str(run_dir / "model") if run_dir else args.checkpoint}
    pictures(model, test, out_dir, results)


def run_all(args, results, clock, out_dir, work):
    import torch

    import mimkit

    recipes = args.methods or ALL_METHODS
    lines = {}
    for recipe in recipes:
        torch.manual_seed(args.seed)
        init = mimkit.create(recipe) if not recipe.startswith("beit") else None
        budget = args.minutes_per_method
        overrides = []
        with clock(f"{recipe}: {budget:g} minutes of pretraining (budget-true schedule)"):
            t_tok = 0.0
            if recipe.startswith("beit"):  # its tokenizer's training counts in its budget
                t_tok, _ = pretrain("dvae_tiny_28", work / f"{recipe}-tokenizer", args,
                                    [f"trainer.max_minutes={budget * 0.3}"])
                overrides = [f"model.tokenizer_path={work / f'{recipe}-tokenizer' / 'model'}"]
                init = mimkit.create(recipe, tokenizer_path=str(work / f"{recipe}-tokenizer" / "model"))
            secs, cfg = pretrain(recipe, work / recipe, args, [*overrides, f"trainer.max_minutes={budget - t_tok / 60}"])
        from mimkit.train.budget import read_schedule

        steps, batch = read_schedule(work / recipe)["total_steps"], int(cfg["data"]["batch_size"])
        model = mimkit.load(work / recipe / "model")
        train, test, _ = datasets(model, args)
        r = frozen(*features(model, train, test, args), args)
        results.setdefault("methods", {})[recipe] = {**pick(r, args.pool), "details": r,
                                                     "minutes": round((secs + t_tok) / 60, 2), "steps": steps,
                                                     "batch_size": batch}
        print(f"   {recipe}: 20-NN {results['methods'][recipe]['knn']:.4f}, linear "
              f"{results['methods'][recipe]['linear']:.4f} ({(secs + t_tok) / 60:.1f} min)")
        if "random_init" not in results and init is not None:
            ri = frozen(*features(init, train, test, args), args)
            results["random_init"] = {**pick(ri, args.pool), "details": ri, "recipe": recipe}
        lines[recipe.split("_vit")[0]] = [*([{"minutes": 0.0, "knn": results["random_init"]["knn"]}]
                                            if "random_init" in results else []),
                                          {"minutes": round((secs + t_tok) / 60, 2), "knn": results["methods"][recipe]["knn"]}]
        save(results, args)
    if "raw_pixels" not in results:
        results["raw_pixels"] = raw_pixels(args, {}, model)
    if lines:
        results["pictures"] = {"quality_vs_time": str(plot_quality_vs_time(
            lines, raw_curve_knn(args, model), out_dir / "quality_vs_time.png",
            f"{args.minutes_per_method:g} min per method; 20-NN on {args.curve_train} train / {args.curve_test} test images"))}


# ---- the curve: each method at each budget, budget-true schedules, choices made on validation --------
def curve_overrides(minutes: float, args) -> list[str]:
    """What a curve point's pretraining adds to the recipe config: the budget (``trainer.max_minutes``,
    a whole warm-up + cosine schedule) and the run settings; the recipe's own hyper-parameters stay."""
    return [f"trainer.max_minutes={float(minutes)}", "run.keep_periodic=1", *args.overrides]


def finished_budget_run(run_dir: Path, recipe: str, minutes: float, args) -> bool:
    """Whether ``run_dir`` holds a finished budget run of ``recipe`` at ``minutes`` with the settings this
    benchmark would use (recipe config + overrides, same seed and data), so that it need not run again."""
    return why_not_reused(run_dir, recipe, minutes, args) is None


def why_not_reused(run_dir: Path, recipe: str, minutes: float, args) -> str | None:
    """None when ``run_dir`` can be reused (see :func:`finished_budget_run`), else the reason."""
    import yaml

    from mimkit.train import load_config
    from mimkit.train.budget import read_schedule

    sched = read_schedule(run_dir) if run_dir.is_dir() else None
    if not sched or sched.get("finished_at_step") != sched.get("total_steps") or not (run_dir / "model").is_dir():
        return "no finished run there"
    if float(sched.get("max_minutes", -1)) != float(minutes):
        return f"its budget was {sched.get('max_minutes')} min"
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    ov = [f"model.name={recipe}", f"run.seed={args.seed}", *curve_overrides(minutes, args)]
    if args.limit:
        ov.append(f"data.limit={args.limit}")
    want = load_config(ROOT / "configs" / f"{recipe}.yaml", ov)
    for section in ("model", "data", "optim", "trainer"):
        for key in sorted(set(saved.get(section, {})) | set(want[section])):
            if key != "enable_progress_bar" and saved.get(section, {}).get(key) != want[section].get(key):
                return f"{section}.{key} was {saved.get(section, {}).get(key)!r}, now {want[section].get(key)!r}"
    if saved["run"]["seed"] != want["run"]["seed"]:
        return f"run.seed was {saved['run']['seed']}"
    return None


def evaluate_frozen(model, train, test, args, labels_per_class=()) -> dict:
    """Every frozen pooling the model has, from one pass over the images; pooling and probe lr chosen
    on the validation split (:func:`mimkit.eval.selection.frozen_selected`), the test set read once per
    protocol."""
    from mimkit.eval.features import extract_features, frozen_pools
    from mimkit.eval.selection import frozen_selected

    pools = frozen_pools(model)
    ftr, ytr = extract_features(model, train, pools, 512, None, 0, not args.no_progress, "train features")
    fte, yte = extract_features(model, test, pools, 512, None, 0, not args.no_progress, "test features")
    return frozen_selected(ftr, ytr, fte, yte, val_size=args.val_size, num_classes=10, probe_epochs=args.probe_epochs,
                           seed=args.seed, labels_per_class=labels_per_class)


def point_summary(ev: dict) -> dict:
    return {"knn": ev["knn"]["test"], "linear": ev["linear"]["test"], "knn_pool": ev["knn"]["pool"],
            "linear_pool": ev["linear"]["pool"], "linear_blr": ev["linear"]["blr"],
            "val": {"knn": max(ev["knn"]["val"].values()), "linear": max(ev["linear"]["val"].values())}}


def crossover(points: dict, raw: float, key: str) -> float | None:
    """The smallest budget (minutes) whose test accuracy on ``key`` beats ``raw``, or None."""
    for minutes in sorted(points, key=float):
        if points[minutes].get(key) is not None and points[minutes][key] > raw:
            return float(minutes)
    return None


def run_curve(args, results, clock, out_dir, work):
    import mimkit
    from mimkit.eval.data import balanced_indices, dataset_labels
    from mimkit.eval.report import random_init_like

    recipes = args.methods or [BEST_RECIPE]
    for r in recipes:
        if r.startswith("beit"):
            raise SystemExit("fmnist_quality: error: --mode curve does not train BEiT's tokenizer inside the budget; "
                             "use --mode all for BEiT")
    results["curve"] = {r: v for r, v in (results.get("curve") or {}).items()}
    init = random_init_like(recipe_model(recipes[0], args), args.seed)
    train, test, _ = datasets(init, args)
    labels = dataset_labels(train)
    low = [n for n in args.low_labels if n * 10 <= len(labels) - args.val_size]
    idx_by_n = {n: balanced_indices(labels[: len(labels) - args.val_size], n, args.seed) for n in low}
    with clock("raw pixels: 20-NN + logistic regression"):
        results["raw_pixels"] = raw_pixels(args, idx_by_n, init)
        print(f"   20-NN {results['raw_pixels']['knn']:.4f}, logreg {results['raw_pixels']['logreg']:.4f}")
    with clock("random-init encoder (pooling and probe lr chosen on validation)"):
        ev = evaluate_frozen(init, train, test, args)
        results["random_init"] = {**point_summary(ev), "details": ev}
        print(f"   20-NN {ev['knn']['test']:.4f} ({ev['knn']['pool']}), linear {ev['linear']['test']:.4f} ({ev['linear']['pool']})")
    save(results, args)
    for recipe in recipes:
        pts = results["curve"].setdefault(recipe, {})
        for minutes in args.budgets:
            key = f"{minutes:g}"
            run_dir = budget_run(recipe, minutes, args, work, clock)
            from mimkit.train.budget import read_schedule

            sched = read_schedule(run_dir)
            model = mimkit.load(run_dir / "model")
            with clock(f"{recipe} at {minutes:g} min: 20-NN + linear probe, all and {', '.join(map(str, low))} labels per class"):
                ev = evaluate_frozen(model, train, test, args, low)
            pts[key] = {**point_summary(ev), "steps": sched["total_steps"], "wall_minutes": sched.get("wall_minutes"),
                        "epochs": round(sched["total_steps"] * int(model_batch(run_dir)) / len(labels), 2),
                        "seconds_per_step": sched["seconds_per_step"], "run": str(run_dir),
                        "low_label": {str(n): {"knn": v["knn"]["test"], "linear": v["linear"]["test"],
                                               "val_knn": max(v["knn"]["val"].values()),
                                               "val_linear": max(v["linear"]["val"].values())}
                                      for n, v in ev["low_label"].items()},
                        "details": ev}
            print(f"   {recipe} {minutes:g} min ({sched['total_steps']} steps): 20-NN {pts[key]['knn']:.4f} "
                  f"({pts[key]['knn_pool']}), linear {pts[key]['linear']:.4f} ({pts[key]['linear_pool']}, blr "
                  f"{pts[key]['linear_blr']:g}); validation {pts[key]['val']['knn']:.4f} / {pts[key]['val']['linear']:.4f}")
            finish_curve(results, args, out_dir)
            save(results, args)
    best = results.get("best", {}).get("recipe")
    if best and args.finetune and "finetune" not in args.skip and "low_label" not in args.skip:
        model = mimkit.load(Path(results["best"]["checkpoint"]))
        results["scarce_finetune"] = {"recipe": best, "minutes": results["best"]["minutes"],
                                      "low_label": scarce_finetunes(model, train, test, labels, args, clock)}
        finish_curve(results, args, out_dir)
        save(results, args)
    if best and args.ft_budgets and "finetune" not in args.skip:
        finetune_budgets(best, args, results, clock, work, train, test, labels)
    finish_curve(results, args, out_dir)


def recipe_model(recipe: str, args):
    """The recipe's model as its config (and ``--overrides``) builds it, untrained."""
    from mimkit.registry import build_from_config
    from mimkit.train import load_config
    from mimkit.train.config import model_kwargs

    name, kw = model_kwargs(load_config(ROOT / "configs" / f"{recipe}.yaml", [f"model.name={recipe}", *args.overrides]))
    return build_from_config({"recipe": name, **kw})


def budget_run(recipe: str, minutes: float, args, work: Path, clock) -> Path:
    """The run directory of ``recipe`` pretrained for ``minutes`` (budget-true), reused when finished."""
    import shutil

    import torch

    run_dir = work / "curve" / f"{recipe}-{minutes:g}min"
    why = why_not_reused(run_dir, recipe, minutes, args)
    if why and run_dir.is_dir() and not args.rerun:
        print(f"   ({run_dir} is not reused: {why})", flush=True)
    if not args.rerun and why is None:
        print(f"\n== {recipe}, {minutes:g} min: a finished run of these settings is in {run_dir}; reusing it "
              "(--rerun to pretrain again) ==", flush=True)
        return run_dir
    shutil.rmtree(run_dir, ignore_errors=True)
    with clock(f"{recipe}: pretraining, a {minutes:g}-minute budget-true schedule"):
        torch.manual_seed(args.seed)
        pretrain(recipe, run_dir, args, curve_overrides(minutes, args))
    return run_dir


def labelled_rows(labels, args):
    """(fit rows, validation rows): the validation split is the last ``--val-size`` training images."""
    from mimkit.eval.selection import holdout_split

    return holdout_split(len(labels), args.val_size)


def scarce_finetunes(model, train, test, labels, args, clock) -> dict:
    """Fine-tuning on N labels per class with a schedule sized to N
    (:func:`mimkit.eval.finetune.scarce_label_schedule`): early stopping on N held-out labelled images
    per class from the validation split, then the test set once."""
    from torch.utils.data import Subset

    from mimkit.eval.data import balanced_indices, eval_dataset
    from mimkit.eval.finetune import finetune, scarce_label_schedule

    fit, val = labelled_rows(labels, args)
    out = {}
    for n in args.low_labels:
        if n * 10 > min(len(fit), len(val)):
            continue
        rows = fit[balanced_indices(labels[fit], n, args.seed)]
        vrows = val[balanced_indices(labels[val], n, args.seed)]
        sched = scarce_label_schedule(len(rows))
        aug, _ = eval_dataset("fashion_mnist", "train", model, train_aug=True, limit=args.limit, crop_scale=sched["crop_scale"])
        with clock(f"fine-tune on {n} labels per class ({sched['epochs']} epochs, batch {sched['batch_size']}, "
                   f"early stopping on {len(vrows)} held-out labelled images)"):
            _, r = finetune(model, Subset(aug, rows.tolist()), test, 10, pool="mean", epochs=sched["epochs"],
                            batch_size=sched["batch_size"], blr=args.finetune_blr, layer_decay=args.layer_decay,
                            drop_path=args.drop_path, label_smoothing=args.label_smoothing,
                            warmup_epochs=sched["warmup_epochs"], seed=args.seed, progress=not args.no_progress,
                            val_dataset=Subset(train, vrows.tolist()), patience=sched["patience"])
        out[str(n)] = {"finetune": r["acc"], "val": r["val_acc"], "best_epoch": r["best_epoch"],
                       "epochs_run": len(r["val_scores"]), "schedule": {k: list(v) if isinstance(v, tuple) else v
                                                                         for k, v in sched.items()},
                       "minutes": round(r["fit_seconds"] / 60, 2)}
        print(f"   {n}/class: fine-tune {r['acc']:.4f} (validation {r['val_acc']:.4f} at epoch {r['best_epoch']} of "
              f"{len(r['val_scores'])})", flush=True)
    return out


def finetune_budgets(recipe: str, args, results, clock, work, train, test, labels) -> None:
    """Pretraining + fine-tuning in one total budget (each of ``--finetune-budgets``): every pretraining
    share of ``--pretrain-shares`` is tried, the fine-tuning (on the training images outside the
    validation split, for the rest of the total) scored on the validation split; the best share is
    tested once. The same ViT from scratch gets the whole total, with the same fine-tuning recipe."""
    from torch.utils.data import Subset

    import mimkit
    from mimkit.eval.finetune import classifier_accuracy
    from mimkit.eval.report import finetune_for_minutes, random_init_like, seconds_per_finetune_step

    _, _, train_aug = datasets(recipe_model(recipe, args), args)
    fit, val = labelled_rows(labels, args)
    fit_aug, val_set = Subset(train_aug, fit.tolist()), Subset(train, val.tolist())
    kw = dict(batch_size=args.finetune_batch_size, blr=args.finetune_blr, drop_path=args.drop_path,
              label_smoothing=args.label_smoothing, pool="mean", seed=args.seed, progress=not args.no_progress,
              keep_classifier=True)
    sps = None
    for total in args.ft_budgets:
        entry = results.setdefault("finetune_budget", {}).setdefault(recipe, {}).setdefault(f"{total:g}", {"splits": {}})
        tried = {}
        for share in args.shares:
            pre, ft = round(total * share, 2), round(total * (1 - share), 2)
            model = mimkit.load(budget_run(recipe, pre, args, work, clock) / "model")
            if sps is None:
                with clock("fine-tuning step time"):
                    sps = seconds_per_finetune_step(model, fit_aug, val_set, 10, batch_size=args.finetune_batch_size)
            with clock(f"{recipe}: {pre:g} min pretraining + {ft:g} min fine-tuning (of {total:g})"):
                r = finetune_for_minutes(model, fit_aug, val_set, 10, ft, seconds_per_step=sps, layer_decay=args.layer_decay, **kw)
            tried[share] = r
            entry["splits"][f"{share:g}"] = {"pretrain_minutes": pre, "finetune_minutes": r["minutes"], "val": r["acc"],
                                             "steps": r["steps"]}
            print(f"   validation {r['acc']:.4f}", flush=True)
        share = max(tried, key=lambda f: tried[f]["acc"])
        entry.update(chosen_share=share, test=classifier_accuracy(tried[share]["classifier"], test),
                     chosen_on="validation accuracy of the fine-tuned classifier")
        with clock(f"scratch: the same ViT, {total:g} min of fine-tuning from random init"):
            init = random_init_like(recipe_model(recipe, args), args.seed)
            r = finetune_for_minutes(init, fit_aug, val_set, 10, total, seconds_per_step=sps, layer_decay=1.0, **kw)
        entry["scratch"] = {"val": r["acc"], "test": classifier_accuracy(r["classifier"], test), "minutes": r["minutes"],
                            "steps": r["steps"], "epochs": r["epochs"]}
        print(f"   {total:g} min: pretrain+fine-tune {entry['test']:.4f} (share {share:g}) vs scratch "
              f"{entry['scratch']['test']:.4f}", flush=True)
        finish_curve(results, args, None)
        save(results, args)


def model_batch(run_dir) -> int:
    import yaml

    return int(yaml.safe_load((Path(run_dir) / "config.yaml").read_text())["data"]["batch_size"])


def finish_curve(results: dict, args, out_dir: Path) -> None:
    """Crossover minutes, the issue-14 keys from the curve (``methods``, ``best`` chosen on validation,
    ``low_label``) and ``quality_vs_time.png``."""
    raw = results["raw_pixels"]
    results["crossover"] = {r: {"knn": crossover(p, raw["knn"], "knn"), "linear": crossover(p, raw["logreg"], "linear")}
                            for r, p in results["curve"].items() if p}
    longest = {r: p[max(p, key=float)] | {"minutes": float(max(p, key=float))} for r, p in results["curve"].items() if p}
    results["methods"] = {r: {k: v for k, v in pt.items() if k != "details"} for r, pt in longest.items()}
    if longest:  # the best method: the highest validation linear-probe accuracy at its longest budget
        best = max(longest, key=lambda r: longest[r]["val"]["linear"])
        b = longest[best]
        results["best"] = {"recipe": best, "minutes": b["minutes"], "knn": b["knn"], "linear": b["linear"],
                           "chosen_on": "validation linear probe at the longest budget", "checkpoint": b["run"] + "/model"}
        scarce = (results.get("scarce_finetune") or {})
        ft = scarce.get("low_label", {}) if (scarce.get("recipe"), scarce.get("minutes")) == (best, b["minutes"]) else {}
        results["low_label"] = {n: {"raw_knn": raw["low_label"][n]["knn"], "raw_logreg": raw["low_label"][n]["logreg"],
                                    "knn": v["knn"], "linear": v["linear"],
                                    **({"finetune": ft[n]["finetune"]} if n in ft else {})}
                                for n, v in b["low_label"].items() if n in raw.get("low_label", {})}
    budgets = (results.get("finetune_budget") or {})
    for recipe, per_total in budgets.items():  # issue-14 keys: the longest total budget
        total = max(per_total, key=float)
        e = per_total[total]
        if recipe in results.get("methods", {}) and "test" in e:
            results["methods"][recipe].update(finetune=e["test"], finetune_total_minutes=float(total))
        if "scratch" in e:
            results["scratch"] = {"finetune": e["scratch"]["test"], "minutes": e["scratch"]["minutes"],
                                  "epochs": e["scratch"]["epochs"], "budget_minutes": float(total)}
    if out_dir is not None:
        results.setdefault("pictures", {})["quality_vs_time"] = str(plot_curve(results, out_dir / "quality_vs_time.png", args))


def plot_curve(results: dict, path: Path, args) -> Path:
    """Two panels (20-NN, linear probe): test accuracy against pretraining minutes (log axis), one line
    per method, raw pixels and the random-init encoder as flat lines, crossovers marked."""
    from mimkit.viz import pyplot

    plt = pyplot()
    raw, rnd = results["raw_pixels"], results.get("random_init", {})
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (key, raw_key, title) in zip(axes, [("knn", "knn", "20-NN (cosine)"),
                                               ("linear", "logreg", "linear probe (raw pixels: logistic regression)")]):
        for recipe, pts in results["curve"].items():
            if not pts:
                continue
            xs = sorted(pts, key=float)
            line, = ax.plot([float(x) for x in xs], [pts[x][key] for x in xs], marker="o", label=recipe.split("_vit")[0])
            c = results.get("crossover", {}).get(recipe, {}).get(key)
            if c is not None:
                ax.annotate(f"beats raw at {c:g} min", (c, pts[f"{c:g}"][key]), fontsize=7, color=line.get_color(),
                            xytext=(4, -12), textcoords="offset points")
        ax.axhline(raw[raw_key], linestyle="--", color="black", linewidth=1, label="raw pixels")
        if rnd.get(key) is not None:
            ax.axhline(rnd[key], linestyle=":", color="grey", linewidth=1, label="random-init encoder")
        ax.set_xscale("log")
        ticks = sorted({float(m) for p in results["curve"].values() for m in p})
        if ticks:
            ax.set_xticks(ticks)
            ax.set_xticklabels([f"{t:g}" for t in ticks])
            ax.minorticks_off()
        ax.set_xlabel("minutes of pretraining (2 CPU cores, log scale)")
        ax.set_ylabel("test accuracy")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Fashion-MNIST: quality against pretraining time ({results['settings']['train_images']} unlabelled "
                 f"training images; pooling and probe lr chosen on the last {args.val_size})", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def pictures(model, test, out_dir, results):
    """Reconstructions (pixel methods) and attention maps (class-token methods) of test images."""
    import torch

    from mimkit.data import FMNIST_MEAN, FMNIST_STD
    from mimkit.viz import save_attention_grid, save_reconstruction_grid

    imgs = torch.stack([test[i][0] for i in range(min(8, len(test)))])
    pics = results.setdefault("pictures", {})
    try:
        if hasattr(model, "reconstruct"):
            pics["reconstruction"] = str(save_reconstruction_grid(model, imgs, out_dir / "reconstructions.png",
                                                                  FMNIST_MEAN, FMNIST_STD, title="test images"))
        if getattr(model.encoder, "cls_token", None) is not None:
            pics["attention"] = str(save_attention_grid(model, imgs, out_dir / "attention.png", FMNIST_MEAN, FMNIST_STD))
    except Exception as e:  # pictures are a bonus; never lose the numbers for them
        print(f"   (pictures failed: {type(e).__name__}: {e})")


KEPT = ("curve", "scarce_finetune", "finetune_budget")  # what a later curve run keeps of an earlier one


def load_previous(out: Path, settings: dict) -> dict:
    """What an earlier curve run wrote to the same ``--out`` with the same data, seed and validation
    split: its curve points (the 60- and 120-minute points are run once and kept), scarce-label
    fine-tunes and shared budgets ({} when there is none)."""
    if not out.exists():
        return {}
    try:
        old = json.loads(out.read_text())
    except ValueError:
        return {}
    same = all(old.get("settings", {}).get(k) == settings[k] for k in ("train_images", "test_images", "seed", "val_size"))
    if not same or old.get("settings", {}).get("mode") != "curve":
        return {}
    return {k: old[k] for k in KEPT if old.get(k)}


def save(results, args):
    Path(args.out).write_text(json.dumps(results, indent=2, default=str))


def curve_table(results: dict, args) -> str:
    f = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    raw, rnd = results["raw_pixels"], results.get("random_init", {})
    lows = sorted(raw.get("low_label", {}), key=int)
    head = ("encoder", "minutes", "steps (epochs)", "20-NN", "linear", "val 20-NN / linear",
            *[f"{n}/class 20-NN / linear" for n in lows])
    rows = [("raw pixels", "-", "-", f(raw["knn"]), f(raw["logreg"]) + " (logreg)", "-",
             *[f"{f(raw['low_label'][n]['knn'])} / {f(raw['low_label'][n]['logreg'])}" for n in lows])]
    if rnd:
        rows.append(("random-init encoder", "0", "-", f(rnd["knn"]), f(rnd["linear"]),
                     f"{f(rnd['val']['knn'])} / {f(rnd['val']['linear'])}", *["-" for _ in lows]))
    for recipe, pts in results["curve"].items():
        for m in sorted(pts, key=float):
            p = pts[m]
            rows.append((recipe.split("_vit")[0], m, f"{p['steps']} ({p['epochs']:g})", f"{f(p['knn'])} ({p['knn_pool']})",
                         f"{f(p['linear'])} ({p['linear_pool']})", f"{f(p['val']['knn'])} / {f(p['val']['linear'])}",
                         *[f"{f(p['low_label'][n]['knn'])} / {f(p['low_label'][n]['linear'])}" if n in p["low_label"] else "-"
                           for n in lows]))
    longest = max((float(m) for p in results["curve"].values() for m in p), default=0)
    cross = [f"- {r.split('_vit')[0]}: 20-NN " + (f"beats raw pixels from {c['knn']:g} min" if c["knn"] is not None
                                                 else f"not within {longest:g} min")
             + "; linear " + (f"from {c['linear']:g} min" if c["linear"] is not None else f"not within {longest:g} min")
             for r, c in results.get("crossover", {}).items()]
    extra = []
    sc = results.get("scarce_finetune")
    if sc and sc.get("low_label"):
        extra += ["", f"Scarce labels, fine-tuned ({sc['recipe'].split('_vit')[0]} at {sc['minutes']:g} min; schedule sized to "
                      "the labels, early stopping on as many held-out labelled images):", "",
                  md_table(("labels per class", "fine-tune", "validation", "best epoch / run", "minutes"),
                           [(n, f(v["finetune"]), f(v["val"]), f"{v['best_epoch']} / {v['epochs_run']}", f"{v['minutes']:.1f}")
                            for n, v in sc["low_label"].items()])]
    fb = results.get("finetune_budget")
    if fb:
        rows_fb = []
        for recipe, per_total in fb.items():
            for total, e in sorted(per_total.items(), key=lambda kv: float(kv[0])):
                if "test" not in e:
                    continue
                splits = ", ".join(f"{k}: {f(v['val'])}" for k, v in e["splits"].items())
                rows_fb.append((recipe.split("_vit")[0], total, f"{e['chosen_share']:g}", splits, f(e["test"]),
                                f(e["scratch"]["val"]), f(e["scratch"]["test"])))
        extra += ["", "Pretraining + fine-tuning in one total budget (pretraining share chosen on validation) against the "
                      "same ViT from scratch for the whole total:", "",
                  md_table(("recipe", "total min", "share", "validation by share", "test", "scratch validation",
                            "scratch test"), rows_fb)]
    extra += ["", *goal_lines(results)]
    return "\n".join([md_table(head, rows), "", "Crossover (the first budget whose test accuracy beats raw pixels):", "",
                      *cross, *extra, "", f"Fashion-MNIST test set, {results['settings']['test_images']} images; pretraining on "
                      f"{results['settings']['train_images']} unlabelled training images with budget-true schedules "
                      f"(trainer.max_minutes); pooling (in brackets) and probe lr chosen on the last {args.val_size} training "
                      f"images, then fitted on all of them; the test set read once per protocol. Wall time "
                      f"{results.get('wall_minutes', 0):.1f} min on {results['settings']['threads']} threads."])


def goal_lines(results: dict) -> list[str]:
    """Where the best method stands against issue 21's goals and the moonshot (distances in points)."""
    raw, best = results["raw_pixels"], results.get("best")
    if not best:
        return []
    pts = lambda v: f"{100 * v:+.1f} points"  # noqa: E731
    lines = [f"Goals, for the best method on validation ({best['recipe'].split('_vit')[0]} at {best['minutes']:g} min):", "",
             f"- linear probe {best['linear']:.4f} vs goal {raw['logreg'] + 0.02:.4f} (raw logreg + 2 points): "
             f"{pts(best['linear'] - raw['logreg'] - 0.02)}; moonshot 0.88: {pts(best['linear'] - GOALS['linear'])}",
             f"- 20-NN {best['knn']:.4f} vs raw pixels {raw['knn']:.4f}: {pts(best['knn'] - raw['knn'])}; moonshot 0.87: "
             f"{pts(best['knn'] - GOALS['knn'])}"]
    low = results.get("low_label", {}).get("60")
    if low:
        ours = max(v for k, v in low.items() if k in ("knn", "linear", "finetune"))
        theirs = max(low["raw_knn"], low["raw_logreg"])
        lines.append(f"- 60 labels per class: best protocol {ours:.4f} vs raw pixels' best {theirs:.4f}: {pts(ours - theirs)}; "
                     f"moonshot +5 points: {pts(ours - theirs - GOALS['low_label_margin'])}")
    ft = results.get("methods", {}).get(best["recipe"], {}).get("finetune")
    if ft is not None and "scratch" in results:
        lines.append(f"- pretraining + fine-tuning in {results['scratch']['budget_minutes']:g} min {ft:.4f} vs scratch "
                     f"{results['scratch']['finetune']:.4f}: {pts(ft - results['scratch']['finetune'])}; moonshot 0.92: "
                     f"{pts(ft - GOALS['finetune'])}")
    else:
        lines.append("- pretraining + fine-tuning against scratch: not measured in this run (--finetune-budgets)")
    return lines


def table(results: dict, args) -> str:
    if results["settings"].get("mode") == "curve":
        return curve_table(results, args)
    f = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    raw, rnd = results.get("raw_pixels", {}), results.get("random_init", {})
    rows = [("raw pixels", f(raw.get("knn")), f(raw.get("logreg")) + " (logistic regression)", "-", "-"),
            ("random-init encoder", f(rnd.get("knn")), f(rnd.get("linear")), "-", "-")]
    for recipe, m in results.get("methods", {}).items():
        ft = f(m.get("finetune")) + (f" ({m['finetune_minutes']:.1f} min)" if m.get("finetune_minutes") else "")
        rows.append((recipe, f(m.get("knn")), f(m.get("linear")), ft, f"{m.get('minutes', 0):.1f}"))
    if "scratch" in results:
        s = results["scratch"]
        rows.append((f"same ViT from scratch ({s['epochs']} epochs)", "-", "-", f(s["finetune"]) + f" ({s['minutes']:.1f} min)", "-"))
    head = ("encoder", "20-NN", "linear probe", "fine-tune", "pretraining min")
    lines = [md_table(head, rows)]
    if results.get("low_label"):
        lr = [(f"{n} per class", f(v["raw_knn"]), f(v["raw_logreg"]), f(v["knn"]), f(v["linear"]), f(v.get("finetune")))
              for n, v in results["low_label"].items()]
        lines += ["", "Scarce labels (balanced subset, seed %d):" % args.seed, "",
                  md_table(("labels", "raw 20-NN", "raw logreg", "20-NN", "linear", "fine-tune"), lr)]
    lines += ["", f"Fashion-MNIST test set, {results['settings']['test_images']} images; pretraining on "
                  f"{results['settings']['train_images']} unlabelled training images; frozen features: {args.pool} pooling. "
                  f"Wall time {results.get('wall_minutes', 0):.1f} min on {results['settings']['threads']} threads."]
    return "\n".join(lines)


def md_table(head, rows) -> str:
    cells = [tuple(map(str, head))] + [tuple(map(str, r)) for r in rows]
    w = [max(len(r[i]) for r in cells) for i in range(len(head))]
    line = lambda r: "| " + " | ".join(c.ljust(x) for c, x in zip(r, w)) + " |"  # noqa: E731
    return "\n".join([line(cells[0]), "| " + " | ".join("-" * x for x in w) + " |", *map(line, cells[1:])])


def reused_checkpoint_files(args) -> list[Path]:
    """The pickled checkpoints (``.ckpt``) ``--checkpoint`` makes this run load: the file itself, a run
    directory's ``last.ckpt`` when it has no ``model/``, and the periodic checkpoints the quality-vs-time
    curve reads. (``model/`` directories are safetensors.)"""
    if not args.checkpoint:
        return []
    p = Path(args.checkpoint)
    files = []
    if p.is_file() and p.suffix != ".safetensors":
        files.append(p)
    elif p.is_dir() and not (p / "model").is_dir() and not (p / "model.safetensors").exists():
        files += [f for f in [p / "checkpoints" / "last.ckpt"] if f.exists()]
    if p.is_dir() and (p / "checkpoints").is_dir() and "curve" not in args.skip:
        files += [f for _, f in checkpoints(p)]
    return files


def check_reused_checkpoints(args) -> None:
    """Refuse an untrusted reused checkpoint now, in one line, not after an hour of baselines (tensors
    are mapped, not read; see :func:`mimkit.checkpoint.read_torch_checkpoint`)."""
    from mimkit.checkpoint import read_torch_checkpoint

    try:
        for f in reused_checkpoint_files(args):
            read_torch_checkpoint(f, mmap=True)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"fmnist_quality: error: {e}") from None


def main(argv=None) -> int:
    import torch

    from mimkit.checkpoint import is_trusted, trusted_checkpoints

    args = parse_args(argv)
    if args.trust_checkpoint and not is_trusted():  # --trust-checkpoint holds for the whole run
        with trusted_checkpoints():
            return main(argv)
    check_reused_checkpoints(args)
    out = Path(args.out)
    out_dir = out.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    work = out_dir / (out.stem + "_runs")
    clock = Clock()
    n_train = min(60000, args.limit or 60000)
    results: dict = {"settings": {
        "mode": {"all": "all_methods"}.get(args.mode, args.mode), "recipe": args.recipe, "seed": args.seed,
        "val_size": args.val_size if args.mode == "curve" else None,
        "train_images": n_train, "test_images": min(10000, args.test_limit or 10000), "pool": args.pool,
        "threads": torch.get_num_threads(), "device": "cuda" if torch.cuda.is_available() else "cpu",
        "finetune": {"epochs": args.finetune_epochs, "batch_size": args.finetune_batch_size, "blr": args.finetune_blr,
                     "layer_decay": args.layer_decay, "drop_path": args.drop_path,
                     "label_smoothing": args.label_smoothing, "crop_scale": list(args.finetune_crop_scale)},
        "minutes_per_method": args.minutes_per_method if args.mode == "all" else None, "quick": args.quick},
        "wall_seconds": clock.times}
    if args.mode == "curve":
        results.update(load_previous(out, results["settings"]))
        run_curve(args, results, clock, out_dir, work)
    elif args.mode == "all":
        run_all(args, results, clock, out_dir, work)
    else:
        run_best(args, results, clock, out_dir, work)
    results["wall_minutes"] = round((time.time() - clock.t0) / 60, 1)
    save(results, args)
    md = table(results, args)
    (out_dir / "results.md").write_text(md + "\n")
    print("\n" + md)
    print(f"\nresults: {out}; table: {out_dir / 'results.md'}; wall time {results['wall_minutes']:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
