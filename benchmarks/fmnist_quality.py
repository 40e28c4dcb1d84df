"""Fashion-MNIST quality against pretraining time: does pretraining pay off, and from how many minutes?

    python benchmarks/fmnist_quality.py                                  # MAE at 7.5, 15 and 60 minutes
    python benchmarks/fmnist_quality.py --methods mae,data2vec2 --curve 15,60
    python benchmarks/fmnist_quality.py --methods mae,ibot --method-curve ibot=7.5,15   # MAE at 7.5, 15, 60

Each method's tiny CPU recipe is pretrained on the 60,000 training images *without labels* for each
budget of ``--curve``, with a budget-true schedule (``trainer.max_minutes``: warm-up, then a cosine
timed to end at the budget and re-fitted when the machine's speed drifts). Every point is then
judged by ``mimkit report`` (:func:`mimkit.eval.report.build_report`) beside raw pixels and the random
init, all through the same protocols and choices (:mod:`mimkit.eval.protocols`: 20-NN, linear probe,
logistic regression, chosen on a per-class validation split; with ``--labels-per-class`` N, chosen
inside the N labels, over ``--draws`` subset draws), with 95% intervals and verdicts against raw pixels.

This script only drives: it pretrains (or reuses a finished run of the same settings), copies each
point's ``model/`` to ``results/curve/`` (safetensors + config, about 2 MB, committed so anyone can
re-evaluate it), and writes ``results/fmnist_quality.json``, the report of every point
(``results/fmnist_report/``) and ``results/quality_vs_time.png``. Finished pretraining runs are kept
(``--work``) and every evaluated row is committed (``--rows``, keyed by its weights' SHA-256 and the
settings), so an interrupted run resumes where it stopped, in a later session or a fresh clone too.

A later run adds its points to the same ``--out``: the points already there (other methods or budgets)
are kept when its settings match and its baselines, evaluated again (or read from ``--rows``), agree within
:data:`BASELINE_TOLERANCE`; its own report then goes beside the earlier one (``fmnist_report_<methods>/``).

    python benchmarks/fmnist_quality.py --methods data2vec2,ijepa --curve 15   # beside MAE's and iBOT's points
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = {"mae": "mae_vit_tiny_patch4_28", "data2vec2": "data2vec2_vit_tiny_patch4_28",
           "ijepa": "ijepa_vit_tiny_patch4_28", "simmim": "simmim_vit_tiny_patch4_28",
           "maskfeat": "maskfeat_vit_tiny_patch4_28", "ibot": "ibot_vit_tiny_patch7_28"}
PROTOCOLS = ("knn", "linear", "logreg", "best_linear")


def _numbers(text: str, kind=float) -> list:
    try:
        return [kind(t) for t in str(text).replace(" ", "").split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, e.g. 7.5,15,60; got {text!r}") from None


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default="mae", help="methods or recipes, comma-separated (mae, data2vec2, ijepa, "
                                                     "simmim, maskfeat, ibot, or a recipe of configs/; default mae)")
    p.add_argument("--curve", type=_numbers, default=[7.5, 15, 60], help="pretraining budgets in minutes (default 7.5,15,60)")
    p.add_argument("--method-curve", action="append", default=[], metavar="METHOD=M1,M2",
                   help="other budgets for one method, e.g. ibot=7.5,15 (repeatable; the others take --curve)")
    p.add_argument("--labels-per-class", type=lambda t: _numbers(t, int), default=[60],
                   help="scarce-label budgets, comma-separated (default 60: 1%% of the labels)")
    p.add_argument("--draws", type=int, default=3, help="scarce subsets drawn per N (default 3)")
    p.add_argument("--finetune-minutes", type=float, help="also fine-tune every point for M budget-true minutes beside "
                                                          "the same ViT from scratch for M + its pretraining minutes")
    p.add_argument("--overrides", nargs="*", default=[], help="extra section.key=value overrides for pretraining")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, help="only the first N training images (tests)")
    p.add_argument("--test-limit", type=int, help="only the first N test images (tests)")
    p.add_argument("--probe-epochs", type=int, default=50, help="linear-probe epochs with all labels (default 50)")
    p.add_argument("--rerun", action="store_true", help="pretrain again even where a finished run of these settings exists")
    p.add_argument("--out", default=str(ROOT / "results" / "fmnist_quality.json"))
    p.add_argument("--work", default=str(ROOT / "results" / "fmnist_quality_runs"),
                   help="pretraining runs, kept between runs (not committed: each point's model is, in --models)")
    p.add_argument("--rows", default=str(ROOT / "results" / "fmnist_quality_rows"),
                   help="every evaluated row (committed, keyed by the weights' SHA-256 and the settings), so that a "
                        "run resumes where it stopped, in a later session too")
    p.add_argument("--models", default=str(ROOT / "results" / "curve"), help="where each point's model/ is copied")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--table", action="store_true", help="print the table of an existing --out and stop")
    p.add_argument("--replace", action="store_true",
                   help="write over an --out whose points this run cannot keep (other settings or baselines)")
    args = p.parse_args(argv)
    if not args.curve or min(args.curve) <= 0:
        p.error("--curve takes positive minutes, e.g. 7.5,15,60")
    args.recipes = [recipe_of(m) for m in args.methods.split(",") if m.strip()]
    args.budgets = {r: sorted(args.curve) for r in args.recipes}
    for item in args.method_curve:
        name, _, minutes = item.partition("=")
        try:
            minutes = _numbers(minutes)
        except argparse.ArgumentTypeError:
            minutes = []
        if recipe_of(name) not in args.budgets or not minutes or min(minutes) <= 0:
            p.error(f"--method-curve takes one of --methods and positive minutes, e.g. ibot=7.5,15; got {item!r}")
        args.budgets[recipe_of(name)] = sorted(minutes)
    return args


def recipe_of(name: str) -> str:
    name = name.strip()
    if name in METHODS:
        return METHODS[name]
    if (ROOT / "configs" / f"{name}.yaml").exists():
        return name
    raise SystemExit(f"fmnist_quality: error: unknown method {name!r}; use one of {', '.join(METHODS)} or a recipe "
                     "in configs/")


def rel(path) -> str:
    """A path as committed files may hold it: relative to the repository when it lies inside it."""
    p = Path(path).resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else p.name


# ---- pretraining: budget-true runs, reused when finished with the same settings ------------------------
def overrides(recipe: str, minutes: float, run_dir: Path, args) -> list[str]:
    ov = [f"run.dir={run_dir}", f"run.seed={args.seed}", "run.recon_images=0",
          f"trainer.enable_progress_bar={not args.no_progress}", f"trainer.max_minutes={float(minutes)}",
          "run.keep_periodic=1", *args.overrides]
    return ov + ([f"data.limit={args.limit}"] if args.limit else [])


def why_not_reused(run_dir: Path, recipe: str, minutes: float, args) -> str | None:
    """None when ``run_dir`` holds a finished budget run of ``recipe`` at ``minutes`` with these settings."""
    import yaml

    from mimkit.train import load_config
    from mimkit.train.budget import read_schedule

    sched = read_schedule(run_dir) if run_dir.is_dir() else None
    if not sched or sched.get("finished_at_step") != sched.get("total_steps") or not (run_dir / "model").is_dir():
        return "no finished run there"
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    want = load_config(ROOT / "configs" / f"{recipe}.yaml", overrides(recipe, minutes, run_dir, args))
    for section in ("model", "data", "optim", "trainer"):
        for key in sorted(set(saved.get(section, {})) | set(want[section])):
            if key != "enable_progress_bar" and saved.get(section, {}).get(key) != want[section].get(key):
                return f"{section}.{key} was {saved.get(section, {}).get(key)!r}, now {want[section].get(key)!r}"
    return None if saved["run"]["seed"] == want["run"]["seed"] else f"run.seed was {saved['run']['seed']}"


def budget_run(recipe: str, minutes: float, args) -> Path:
    import torch

    from mimkit.train import load_config, run_pretrain

    run_dir = Path(args.work) / "curve" / f"{recipe}-{minutes:g}min"
    why = why_not_reused(run_dir, recipe, minutes, args)
    kept = Path(args.models) / run_dir.name  # the committed copy: a fresh clone judges it without pretraining
    for found, reason in ((run_dir, why), (kept, why_not_reused(kept, recipe, minutes, args))):
        if reason is None and not args.rerun:
            print(f"== {recipe}, {minutes:g} min: reusing the finished run in {rel(found)} (--rerun to pretrain again)")
            return found
    if run_dir.is_dir():
        print(f"   ({rel(run_dir)} is not reused: {'--rerun' if why is None else why})")
    shutil.rmtree(run_dir, ignore_errors=True)
    print(f"== {recipe}: pretraining with a {minutes:g}-minute budget-true schedule ==", flush=True)
    torch.manual_seed(args.seed)
    run_pretrain(load_config(ROOT / "configs" / f"{recipe}.yaml", overrides(recipe, minutes, run_dir, args)))
    return run_dir


def keep_model(run_dir: Path, name: str, args) -> str:
    """Copy the point's model/ (with its schedule and config) to ``--models``/<name>/, the committed copy."""
    dest = Path(args.models) / name
    if dest.resolve() != run_dir.resolve():
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(run_dir / "model", dest / "model")
        shutil.copy2(run_dir / "schedule.json", dest / "schedule.json")
        import yaml  # config.yaml: what why_not_reused compares; its run.dir as committed files hold paths

        cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
        cfg["run"]["dir"] = rel(run_dir)
        (dest / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return rel(dest / "model")


# ---- the summary ------------------------------------------------------------------------------------
def row_summary(report: dict, name: str) -> dict:
    from mimkit.eval.render import find

    out: dict = {}
    for p in PROTOCOLS:
        r = find(report, name, p)
        if r is not None:
            out[p] = {k: r[k] for k in ("accuracy", "ci", "choice", "choice_acc", "labels_used", "vs_raw") if k in r}
        for n in report["labels_per_class"]:
            r = find(report, name, p, n)
            if r is not None:
                out.setdefault("scarce", {}).setdefault(str(n), {})[p] = {
                    k: r[k] for k in ("accuracy", "std", "draws", "choice", "labels_used", "vs_raw") if k in r}
    return out


def vs_random_init(report: dict, name: str) -> dict:
    """The point against the same recipe at random init, per protocol ("all" labels, or N per class): the
    difference with its paired interval and verdict (``pairs`` of the report)."""
    keep = ("diff", "lo", "hi", "verdict")
    return {("all" if c["labels_per_class"] is None else str(c["labels_per_class"])) + f" {c['protocol']}":
            {k: round(c[k], 4) if isinstance(c[k], float) else c[k] for k in keep if k in c}
            for c in report.get("pairs", []) if c["a"] == name and c["b"] == "random_init"}


# ---- earlier points: a later run (another method, another budget) adds its points to the same --out -------
SAME = ("labels_per_class", "draws", "finetune_minutes", "overrides", "seed", "limit", "test_limit", "probe_epochs")
# the baselines' accuracies an earlier run may differ by (its verdicts were paired with them): the same rows evaluated
# in two sessions differed by up to 0.22 points (the random init's logistic regression; thread-order float sums in
# the probes' and lbfgs' reductions), a tenth of a verdict interval's half-width
BASELINE_TOLERANCE = 0.005


def earlier_run(out: Path, args) -> tuple[dict, str | None]:
    """The earlier result in ``out`` when its settings match this run's ({} and why not otherwise)."""
    if not out.exists():
        return {}, None
    old = json.loads(out.read_text())
    s = old.get("settings", {})
    for k in SAME:
        if s.get(k) != getattr(args, k):
            return {}, f"its {k} was {s.get(k)!r}, now {getattr(args, k)!r}"
    return old, None


def earlier_points(old: dict, raw: dict, rand: dict, new_points: set) -> tuple[dict, str | None]:
    """The earlier run's points that this run did not make, each with the report it came from, when its
    baselines match this run's within :data:`BASELINE_TOLERANCE` (else {} and why)."""
    if not old:
        return {}, None
    for label, key, row in (("raw pixels", "raw_pixels", raw), ("the random init", "random_init", rand)):
        for p, r in row.items():
            a = old.get(key, {}).get(p, {}).get("accuracy")
            if p in PROTOCOLS and (a is None or abs(a - r["accuracy"]) > BASELINE_TOLERANCE):
                return {}, f"{label}' {p} accuracy was {a}, now {r['accuracy']:.4f}"
    return {recipe: {m: {**v, "report": v.get("report", old.get("report"))} for m, v in pts.items()
                     if (recipe, m) not in new_points} for recipe, pts in old.get("curve", {}).items()}, None


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.table:
        print_summary(json.loads(Path(args.out).read_text()))
        return 0
    from mimkit.eval.protocols import crossover
    from mimkit.eval.render import plot_curve
    from mimkit.eval.report import build_report, probe_settings
    from mimkit.train.budget import read_schedule

    t0, out = time.time(), Path(args.out)
    old, why_not = earlier_run(out, args)
    if why_not and not args.replace:
        raise SystemExit(f"fmnist_quality: error: {rel(out)} holds points of other settings ({why_not}); give another "
                         "--out, or --replace to write over it")
    points = {}  # name -> (recipe, minutes, run_dir)
    for recipe in args.recipes:
        for minutes in args.budgets[recipe]:
            run_dir = budget_run(recipe, minutes, args)
            points[f"{recipe}-{minutes:g}min"] = (recipe, minutes, run_dir)
    names = list(points)
    models = {n: keep_model(d, n, args) for n, (_, _, d) in points.items()}
    pre = [read_schedule(d).get("wall_minutes") for _, _, d in points.values()]
    made = {(r, f"{m:g}") for r, m, _ in points.values()}
    others = {(r, m) for r, pts in old.get("curve", {}).items() for m in pts} - made
    # a run that adds points to an earlier one writes its own report beside the earlier report
    report_dir = out.parent / ("fmnist_report" if not others else
                               "fmnist_report_" + "_".join(m.strip() for m in args.methods.split(",") if m.strip()))
    # the report a point came from (beside --out, named with its folder when --out lies outside the repository)
    report_md = rel(report_dir / "report.md") if report_dir.resolve().is_relative_to(ROOT) else f"{report_dir.name}/report.md"
    print("== every point, raw pixels and the random init: mimkit report's protocols ==", flush=True)
    report = build_report([d for _, _, d in points.values()], "fashion_mnist", report_dir,
                          names=names, labels_per_class=args.labels_per_class, draws=args.draws, seed=args.seed,
                          settings=probe_settings(args.probe_epochs), limit=args.limit, test_limit=args.test_limit,
                          finetune_minutes=args.finetune_minutes, pretrain_minutes=pre,
                          pairs=[(n, "random_init") for n in names],  # what pretraining adds to the same ViT
                          cache_dir=Path(args.rows), progress=not args.no_progress)
    curve: dict = {}
    for name, (recipe, minutes, run_dir) in points.items():
        s = read_schedule(run_dir)
        curve.setdefault(recipe, {})[f"{minutes:g}"] = {
            **row_summary(report, name), "steps": s["total_steps"], "wall_minutes": s.get("wall_minutes"),
            "budget_error": round(s.get("wall_minutes", minutes) / minutes - 1, 4), "refits": len(s.get("refits", [])),
            "seconds_per_step_first": s["seconds_per_step"], "model": models[name],
            "vs_random_init": vs_random_init(report, name), "report": report_md}
    raw, rand = row_summary(report, "raw_pixels"), row_summary(report, "random_init")
    kept, why = earlier_points(old, raw, rand, made)
    if why and others and not args.replace:  # never lose the earlier points: this run's result goes beside them
        out = out.with_name(f"{out.stem}_{report_dir.name.removeprefix('fmnist_report_')}{out.suffix}")
        print(f"   (the points already in {rel(args.out)} cannot be kept: {why}; this run goes to {rel(out)})")
    elif why and others:
        print(f"   (the points already in {rel(out)} are not kept: {why}; --replace)")
    elif any(kept.values()):
        drift = max(abs(old[k][p]["accuracy"] - row[p]["accuracy"]) for k, row in (("raw_pixels", raw), ("random_init", rand))
                    for p in row if p in PROTOCOLS)
        report["notes"].append(f"the points of an earlier run ({', '.join(f'{r} {m} min' for r, pts in kept.items() for m in pts)}) "
                               f"were judged against baselines evaluated then, which differ from this run's by at most "
                               f"{100 * drift:.2f} points; the table shows this run's")
        print(f"   keeping the earlier points of {rel(out)}: " + ", ".join(
            f"{r} {m} min" for r, pts in kept.items() for m in pts))
    merged = {r: dict(sorted({**pts, **curve.get(r, {})}.items(), key=lambda kv: float(kv[0])))
              for r, pts in kept.items() if pts}
    curve = {**merged, **{r: pts for r, pts in curve.items() if r not in merged}}
    cross = {recipe: {p: crossover({m: {"acc": v[p]["accuracy"], "verdict": v[p]["vs_raw"]["verdict"]}
                                    for m, v in pts.items() if p in v}, raw[p]["accuracy"]) for p in PROTOCOLS if p in raw}
             for recipe, pts in curve.items()}
    result = {"settings": {k: v for k, v in vars(args).items() if k not in ("out", "work", "models", "rows")},
              "raw_pixels": raw, "random_init": rand, "curve": curve,
              "crossover": cross, "report": report_md,
              "splits": report["splits"], "notes": report["notes"], "wall_minutes": round((time.time() - t0) / 60, 1),
              "report_wall_seconds": report["wall_seconds"]}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    pic = plot_curve(result, out.parent / ("quality_vs_time.png" if out == Path(args.out) else f"{out.stem}.png"))
    print_summary(result, out, pic)
    return 0


def markdown_table(result: dict) -> str:
    """The README's table: every row's accuracy (95% interval) and, for the points, the verdict against
    raw pixels with the paired interval of the difference (points); scarce labels as mean +- std."""
    from mimkit.eval.protocols import PROTOCOL_NAMES
    from mimkit.eval.render import method_label

    ns = sorted({n for pts in result["curve"].values() for v in pts.values() for n in v.get("scarce", {})}, key=int)
    cols = [(p, None) for p in PROTOCOLS] + [(p, n) for n in ns for p in ("knn", "best_linear")]

    def cell(v, p, n):
        r = v.get(p) if n is None else v.get("scarce", {}).get(n, {}).get(p)
        if r is None:
            return "-"
        acc = (f"{r['accuracy']:.4f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]" if n is None
               else f"{r['accuracy']:.4f} +- {r['std']:.3f}")
        d = r.get("vs_raw")
        return acc + (f" **{d['verdict']}** {100 * d['diff']:+.1f} [{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}]" if d else "")

    head = ["row", "pretraining"] + [f"{PROTOCOL_NAMES[p]}" + ("" if n is None else f", {n}/class") for p, n in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name, v, pre in [("raw pixels", result["raw_pixels"], "-"), ("random init", result["random_init"], "0")]:
        lines.append(f"| {name} | {pre} | " + " | ".join(cell(v, p, n) for p, n in cols) + " |")
    for recipe, pts in result["curve"].items():
        for m, v in sorted(pts.items(), key=lambda kv: float(kv[0])):
            pre = f"{m} min: {v['steps']} steps, {v['wall_minutes']} min"
            lines.append(f"| {method_label(recipe)} | {pre} | " + " | ".join(cell(v, p, n) for p, n in cols) + " |")
    return "\n".join(lines)


def print_summary(result: dict, out: Path | None = None, pic: Path | None = None) -> None:
    """The table, the crossovers, the validation scores and every point against random init (and what was
    written, after a run)."""
    from mimkit.eval.protocols import PROTOCOL_NAMES

    print("\n" + markdown_table(result))
    for recipe, c in result["crossover"].items():
        print(f"crossover ({recipe}): " + ", ".join(f"{PROTOCOL_NAMES[p]} {'from %g min' % m if m else 'none'}"
                                                   for p, m in c.items()))
    def val(row):  # the validation accuracies every choice was made on (20-NN, probe, their mean)
        k, lin = row["knn"]["choice_acc"], row["linear"]["choice_acc"]
        return f"20-NN {k:.4f}, linear probe {lin:.4f}, mean {(k + lin) / 2:.4f}"

    print("validation (the choices' scores; no test image): " + "; ".join(
        f"{n.replace('_', ' ')} {val(result[n])}" for n in ("raw_pixels", "random_init") if "knn" in result.get(n, {})))
    for recipe, pts in result["curve"].items():
        for m, pt in pts.items():
            if "knn" in pt and "linear" in pt:
                print(f"validation ({recipe} {m} min): {val(pt)}")
    for recipe, pts in result["curve"].items():
        for m, pt in pts.items():
            v = pt.get("vs_random_init", {})
            print(f"{recipe} {m} min vs random init: " + ", ".join(
                f"{k} {100 * d['diff']:+.1f} [{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}] {d['verdict']}"
                for k, d in v.items() if k.startswith("all ")))
    if out is not None:
        print(f"wrote {rel(out)}, {rel(pic)}, {result['report']} ({result['wall_minutes']} min)")


if __name__ == "__main__":
    sys.exit(main())
