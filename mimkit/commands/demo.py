"""``mimkit demo``: pretrain the best CPU recipe on Fashion-MNIST for a budget-true ``--minutes``, then
``mimkit report`` of its encoder on the real split (20-NN and the linear probe, all labels and 10 / 100
per class, beside raw pixels and the random init, choices on a per-class validation split, intervals
and verdicts; ``report.png``, ``neighbours.png``) and pictures: the whole job in one command."""
from __future__ import annotations

import json
import time
from pathlib import Path

DEFAULT_RECIPE = "mae_vit_tiny_patch4_28"  # when the measured curve is missing
DEFAULT_MINUTES = 10.0
MAX_MINUTES = 15.0  # the demo's budgets: with its report, 45-50 minutes (~30 with committed baseline rows)
MARGIN = 0.02  # the validation lead over raw pixels a demo budget must show, on 20-NN or the linear probe
CURVE = Path(__file__).resolve().parents[2] / "results" / "fmnist_quality.json"  # the measured quality curve
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
# raw pixels' and the random init's rows of the demo's report, committed (``python scripts/demo_rows.py``): the
# same numbers the report would compute (the key holds the data, settings, weights and evaluation code), in a
# second instead of ~18 minutes; stale rows (code or settings changed) are evaluated again
ROWS = Path(__file__).resolve().parents[2] / "results" / "demo" / "rows"


def choose_on_validation(curve_file: Path = CURVE, recipe: str | None = None, minutes: float | None = None,
                         configs: Path = CONFIGS) -> tuple[str, float, str]:
    """(recipe, minutes, why) for the demo from the measured curve (``benchmarks/fmnist_quality.py``), using
    its **validation** accuracies only (``choice_acc``; the test set chose nothing). At each curve budget up to
    :data:`MAX_MINUTES` the best recipe is the one with the highest mean of validation 20-NN and linear probe;
    the demo takes the shortest budget whose best recipe leads raw pixels by :data:`MARGIN` on validation on
    20-NN or the probe (so that a slow day, which fits fewer steps, still clears raw pixels), or the longest
    budget. Where the curve has the random init, the lead is over the better of raw pixels and the random
    init on each protocol, so that the budget chosen is one where pretraining itself pays. A ``recipe`` or ``minutes`` given by the user is kept; only recipes with a config are candidates."""
    try:
        q = json.loads(Path(curve_file).read_text())
        raw = {p: q["raw_pixels"][p]["choice_acc"] for p in ("knn", "linear")}
        base = "raw pixels and the random init" if "random_init" in q else "raw pixels"
        if "random_init" in q:  # the lead must be over both baselines: what pretraining adds, not the ViT alone
            raw = {p: max(v, q["random_init"][p]["choice_acc"]) for p, v in raw.items()}
        points = {(r, float(m)): {p: pt[p]["choice_acc"] for p in ("knn", "linear")}
                  for r, pts in q["curve"].items() for m, pt in pts.items() if (Path(configs) / f"{r}.yaml").exists()}
    except (OSError, ValueError, KeyError, TypeError):
        points, base = {}, "raw pixels"
    if recipe is not None:
        points = {k: v for k, v in points.items() if k[0] == recipe}
    budgets = sorted({m for _, m in points})
    if minutes is not None:  # recipes compared at the curve budget nearest the one given, at or below it
        budgets = [max([m for m in budgets if m <= minutes] or budgets[:1])] if budgets else []
    else:
        budgets = [m for m in budgets if m <= MAX_MINUTES]
    if not budgets:
        return (recipe or DEFAULT_RECIPE, minutes or DEFAULT_MINUTES,
                f"{'given' if recipe else 'the default'} (no validation point on the measured curve "
                f"{Path(curve_file).name} to choose with)")
    for m in budgets:
        score = {r: (v["knn"] + v["linear"]) / 2 for (r, mm), v in points.items() if mm == m}
        r = max(score, key=score.get)
        lead = max(points[(r, m)][p] - raw[p] for p in raw)
        if lead >= MARGIN:
            break
    on = (f"{Path(curve_file).name}, validation at {m:g} min: mean of 20-NN and linear probe {score[r]:.4f}, "
          f"lead over {base} on its better protocol {100 * lead:+.1f} points")
    why = ("recipe given" if recipe else f"the best of {len(score)} recipes on validation") + "; " + (
        "minutes given" if minutes else f"the shortest budget up to {MAX_MINUTES:g} min leading {base} by "
        f"{100 * MARGIN:g} points" if lead >= MARGIN else f"no budget up to {MAX_MINUTES:g} min leads {base} by "
        f"{100 * MARGIN:g} points; the longest") + f" ({on})"
    return (recipe or r, minutes or m, why)


def register(sub) -> None:
    p = sub.add_parser("demo", help="pretrain the best CPU recipe on Fashion-MNIST, then its report (20-NN and linear "
                                    "probe vs raw pixels and random init, scarce labels), pictures")
    p.add_argument("--out", default="runs/demo", help="run directory (default runs/demo)")
    p.add_argument("--recipe", default=None,
                   help="recipe (configs/<recipe>.yaml; default: the one best on validation on the measured curve)")
    p.add_argument("--minutes", type=float, default=None,
                   help="pretraining budget in minutes, a whole warm-up + cosine schedule (default: the shortest curve "
                        f"budget up to {MAX_MINUTES:g} whose best recipe leads raw pixels by {100 * MARGIN:g} points on "
                        "validation)")
    p.add_argument("--epochs", type=int, default=None, help="pretraining epochs instead of --minutes")
    p.add_argument("--limit", type=int, default=None, help="pretrain on only the first N training images")
    p.add_argument("--report-limit", type=int, default=None,
                   help="the report reads only the first N training and N test images (default: all 60k / 10k)")
    p.add_argument("--debug", action="store_true")
    p.add_argument("overrides", nargs="*", help="extra section.key=value overrides")
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    import mimkit
    from mimkit.commands.pretrain import pretrain_and_report
    from mimkit.data import FMNIST_MEAN, FMNIST_STD, build_dataset
    from mimkit.eval.features import has_cls_token
    from mimkit.eval.render import pair_lines, verdict_lines, verdict_of
    from mimkit.eval.report import accuracy, find
    from mimkit.train.config import load_config

    t0 = time.time()
    if args.epochs is None:
        args.recipe, args.minutes, why = choose_on_validation(CURVE, args.recipe, args.minutes)
    else:
        args.recipe, why = args.recipe or DEFAULT_RECIPE, "given"
    print(f"mimkit demo: {args.recipe}" + (f", {args.minutes:g} budget-true minutes" if args.epochs is None else "")
          + f": {why}", flush=True)
    cfg_file = CONFIGS / f"{args.recipe}.yaml"
    cfg = load_config(cfg_file if cfg_file.exists() else None, args.overrides)
    cfg["model"]["name"] = args.recipe
    if args.epochs is not None:
        cfg["trainer"]["max_epochs"] = int(args.epochs)
    elif args.minutes:
        cfg["trainer"]["max_minutes"] = float(args.minutes)
    cfg["run"]["dir"] = args.out
    if not cfg["run"].get("report"):
        cfg["run"]["report"] = "fashion_mnist"  # the report of the trained encoder, written into <run>/report
    if not cfg["run"].get("report_protocols"):  # the demo's report: 20-NN and the probe for every row (logistic
        cfg["run"]["report_protocols"] = ["knn", "linear"]  # regression's C path on 60k images costs ~7 min a row)
    if not cfg["run"].get("report_rows") and ROWS.is_dir():
        cfg["run"]["report_rows"] = str(ROWS)
    if args.limit:
        cfg["data"]["limit"] = args.limit
    if args.report_limit:
        cfg["run"]["report_limit"] = args.report_limit
    t_train = time.time()
    run_dir = pretrain_and_report(cfg)
    report_path = run_dir / "report" / "report.json"
    if not report_path.exists():
        raise ValueError(f"the report was not written ({report_path}); see the error above")
    report = json.loads(report_path.read_text())
    t_report = report["wall_seconds"]["total"]
    t_train = time.time() - t_train - t_report

    model = mimkit.load(run_dir / "model")
    test = build_dataset(dict(cfg["data"], limit=None), "test", train_transform=False)
    name = run_dir.name
    lin = "best_linear" if find(report, name, "best_linear") else "linear"
    results = {"knn20": accuracy(report, name, "knn"), "linear": accuracy(report, name, lin),
               "knn20_raw_pixels": accuracy(report, "raw_pixels", "knn"),
               "linear_raw_pixels": accuracy(report, "raw_pixels", lin),
               "knn20_random_init": accuracy(report, "random_init", "knn"),
               "verdicts": {p: verdict_of(report, name, p) for p in ("knn", "linear", "logreg", "best_linear")
                            if find(report, name, p)},
               # what pretraining adds to the same ViT at random init (a random ViT's wide features alone can
               # beat raw pixels under a linear probe), paired: {protocol: verdict, diff, lo, hi}
               "vs_random_init": {c["protocol"]: {k: c[k] for k in ("verdict", "diff", "lo", "hi")}
                                  for c in report.get("pairs") or () if c["a"] == name and c["b"] == "random_init"
                                  and c["labels_per_class"] is None}}
    pictures = [p for p in (run_dir / "reconstructions" / "latest.png", run_dir / "loss_curve.png") if p.exists()]
    pictures += [Path(p) for p in report.get("pictures", {}).values()]
    if has_cls_token(model):
        from mimkit.viz import save_attention_grid

        imgs = torch.stack([test[i][0] for i in range(8)])
        pictures.append(save_attention_grid(model, imgs, run_dir / "attention.png", FMNIST_MEAN, FMNIST_STD))

    from mimkit.train.callbacks import read_metrics

    metrics = read_metrics(run_dir / "logs" / "metrics.csv") if (run_dir / "logs" / "metrics.csv").exists() else {}
    losses, speed = metrics.get("train/loss"), metrics.get("train/images_per_s")
    final_loss = losses[1][-1] if losses else None
    images_per_s = speed[1][-1] if speed else None
    from mimkit.train.budget import read_schedule

    sched = read_schedule(run_dir)
    length = (f"{args.minutes:g}-minute budget, {sched['total_steps']} steps" if sched else
              f"{cfg['trainer']['max_epochs']} epochs")
    summary = {"recipe": args.recipe, "epochs": cfg["trainer"]["max_epochs"] if not sched else None,
               "budget_minutes": sched["max_minutes"] if sched else None, "steps": sched["total_steps"] if sched else None,
               "final_train_loss": final_loss,
               "pretrain_seconds": round(t_train, 1), "images_per_s": images_per_s, "report_seconds": t_report,
               "total_seconds": round(time.time() - t0, 1), **results,
               "report": str(run_dir / "report" / "report.md"), "pictures": [str(p) for p in pictures]}
    (run_dir / "demo_results.json").write_text(json.dumps(summary, indent=2))
    print("\n== mimkit demo ==")
    print(f"pretraining  : {args.recipe}, {length}, {t_train / 60:.1f} min, "
          f"final loss {final_loss if final_loss is None else round(final_loss, 4)}"
          + (f", {images_per_s:.0f} images/s" if images_per_s else ""))
    print(f"test accuracy ({report['data']['source']}, {report['data']['test_images']} test images, choices made on a "
          f"validation split; raw pixels {results['knn20_raw_pixels']:.4f} 20-NN / {results['linear_raw_pixels']:.4f} "
          f"best linear; random init {results['knn20_random_init']:.4f} 20-NN):")
    for line in verdict_lines(report, name):
        print(f"  {line}")
    for line in pair_lines(report, name, "random_init", all_labels_only=True):
        print(f"  {line}")
    for line in curve_position(args.recipe, t_train / 60, results, CURVE):
        print(line)
    print(f"report       : {run_dir / 'report' / 'report.md'} ({t_report / 60:.1f} min; all labels and "
          f"{', '.join(map(str, report['labels_per_class']))} per class), report.png, neighbours.png")
    print(f"pictures     : {', '.join(str(p) for p in pictures)}")
    print(f"results      : {run_dir}/demo_results.json; model: {run_dir}/model")
    print(f"total time   : {(time.time() - t0) / 60:.1f} min")
    return 0


def curve_position(recipe: str, minutes: float, results: dict, curve_file: Path) -> list[str]:
    """Where this run lies on the measured quality curve (``benchmarks/fmnist_quality.py``'s results):
    the curve's points of the same recipe beside this run's, raw pixels, and the crossover minutes."""
    if not curve_file.exists():
        return []
    try:
        q = json.loads(curve_file.read_text())
        pts = q["curve"][recipe]
        raw = q["raw_pixels"]
        row = "   ".join(f"{m} min {pts[m]['knn']['accuracy']:.3f} / {pts[m]['best_linear']['accuracy']:.3f}"
                         for m in sorted(pts, key=float))
        raw_line = f"raw pixels {raw['knn']['accuracy']:.3f} / {raw['best_linear']['accuracy']:.3f}"
    except (ValueError, KeyError, TypeError):
        return []
    lines = [f"on the curve : {recipe.split('_vit')[0]} (20-NN / best linear, {curve_file.name}): {row}",
             f"             : this run, {minutes:.1f} min: {results['knn20']:.3f} / {results['linear']:.3f};  {raw_line}"]
    cross = q.get("crossover", {}).get(recipe, {})
    longest = max(float(m) for m in pts)
    say = lambda c: f"from {c:g} min" if c is not None else f"not within {longest:g} min"  # noqa: E731
    lines.append(f"             : better than raw pixels (paired interval above 0) on 20-NN {say(cross.get('knn'))}, "
                 f"on the best linear model {say(cross.get('best_linear'))}")
    return lines
