"""Recipe sweep on Fashion-MNIST: pretrain each configuration of a sweep file, then judge its encoder by
20-NN and a linear probe, one configuration at a time. Every choice is made on a validation split drawn
per class from the 60k training images (``--val-fraction``, a sixth: 10k): the pooling of each run (cls,
mean, both, last 4 blocks) and probe lr, and the winning run. The test set is read once per run with the
settings chosen (:func:`mimkit.eval.protocols.evaluate_row`, the protocols of ``mimkit report``), and
the table shows validation and test side by side.

A sweep file (YAML) lists runs, each a name, a config (``configs/<recipe>.yaml``), dotted overrides and
optionally ``minutes`` (a budget-true schedule, ``trainer.max_minutes``)::

    runs:
      - {name: mae_blr1.5e-3, config: configs/mae_vit_tiny_patch4_28.yaml, minutes: 10, overrides: [optim.blr=1.5e-3]}

Results are appended to ``--out`` (JSON lines: one per run, so an interrupted sweep keeps what it
finished and ``--skip-done`` resumes it) and the table of all finished runs is printed and written beside
it as Markdown. Pretraining time is wall time on this machine: compare runs made alone.

Usage::

    python benchmarks/sweep.py benchmarks/sweeps/fmnist_cpu.yaml --out results/sweep/fmnist_cpu.jsonl --skip-done
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def run_one(run: dict, work: Path, progress: bool, val_fraction: float) -> dict:
    import mimkit
    from mimkit.eval.data import eval_dataset
    from mimkit.eval.features import extract_features, frozen_pools
    from mimkit.eval.protocols import Settings, evaluate_row
    from mimkit.eval.splits import validation_split
    from mimkit.train import load_config, run_pretrain
    from mimkit.train.budget import read_schedule

    run_dir = work / run["name"]
    cfg_file = ROOT / run["config"] if not Path(run["config"]).is_absolute() else Path(run["config"])
    budget = [f"trainer.max_minutes={float(run['minutes'])}"] if run.get("minutes") else []
    cfg = load_config(cfg_file, [*run.get("overrides", []), *budget, f"run.dir={run_dir}", "run.recon_images=0",
                                 f"trainer.enable_progress_bar={progress}", "run.keep_periodic=1"])
    t0 = time.time()
    run_pretrain(cfg)
    pretrain_s = time.time() - t0
    model = mimkit.load(run_dir / "model")
    train, _ = eval_dataset("fashion_mnist", "train", model)
    test, _ = eval_dataset("fashion_mnist", "test", model)
    pools = frozen_pools(model)
    t1 = time.time()
    ftr, ytr = extract_features(model, train, pools, 512, None, 0, progress)
    fte, yte = extract_features(model, test, pools, 512, None, 0, progress)
    fit, val = validation_split(ytr, val_fraction, seed=0)
    ev = evaluate_row(ftr, ytr, fte, yte, fit_rows=fit, val_rows=val, num_classes=10,
                      s=Settings(protocols=("knn", "linear")))
    sched = read_schedule(run_dir) or {}  # a budget run's steps and wall time; else the trainer's steps
    steps = sched.get("total_steps") or cfg["trainer"].get("max_steps")
    res = {"name": run["name"], "config": run["config"], "overrides": run.get("overrides", []),
           "minutes": run.get("minutes"), "pretrain_minutes": round(pretrain_s / 60, 2), "steps": steps,
           "images_per_s": round(steps * int(cfg["data"]["batch_size"]) / pretrain_s, 1) if steps and steps > 0 else None,
           "feature_seconds": round(time.time() - t1, 1), "val_images": len(val)}
    for proto in ("knn", "linear"):  # chosen on validation; the test set read once with that choice
        r = ev["all"][proto]
        res[f"val_{proto}"] = round(r["choice_acc"], 4)
        res[f"test_{proto}"] = round(r["acc"], 4)
        res[f"{proto}_pool"] = r["choice"]
    return res


def best_on_validation(rows: list[dict], proto: str) -> dict | None:
    """The run with the highest validation accuracy on ``proto`` (rows that recorded one)."""
    scored = [r for r in rows if r.get(f"val_{proto}") is not None]
    return max(scored, key=lambda r: r[f"val_{proto}"]) if scored else None


def table(rows: list[dict]) -> str:
    f = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    head = "| run | overrides | pretrain min | val 20-NN | val linear | test 20-NN | test linear | pools (20-NN / linear) |"
    lines = [head, "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if "val_knn" not in r:  # a row of an earlier sweep that judged on the test set only
            lines.append(f"| {r['name']} | {' '.join(r['overrides'])} | {r['pretrain_minutes']:.1f} | - | - | "
                         f"{f(r.get('knn_mean'))} | {f(r.get('linear_mean'))} | mean (no validation split) |")
            continue
        lines.append(f"| {r['name']} | {' '.join(r['overrides'])} | {r['pretrain_minutes']:.1f} | {f(r['val_knn'])} | "
                     f"{f(r['val_linear'])} | {f(r['test_knn'])} | {f(r['test_linear'])} | {r['knn_pool']} / {r['linear_pool']} |")
    for proto, name in (("knn", "20-NN"), ("linear", "linear probe")):
        b = best_on_validation(rows, proto)
        if b:
            lines.append(f"\nBest on validation, {name}: **{b['name']}** (validation {b[f'val_{proto}']:.4f}, "
                         f"test {b[f'test_{proto}']:.4f}).")
    return "\n".join(lines)


def main(argv=None) -> int:
    import yaml

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep", help="sweep file (YAML with a list `runs`)")
    p.add_argument("--out", default="results/sweep/sweep.jsonl")
    p.add_argument("--only", nargs="*", help="run only these names")
    p.add_argument("--skip-done", action="store_true", help="skip runs whose name is already in --out")
    p.add_argument("--work", default="runs/sweep", help="where the runs are written")
    p.add_argument("--val-fraction", type=float, default=1 / 6,
                   help="validation split: this fraction of every class of the 60k training images (default a sixth); "
                        "pooling and the winner are chosen on it")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    runs = yaml.safe_load(Path(args.sweep).read_text())["runs"]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = [json.loads(line) for line in out.read_text().splitlines() if line.strip()] if out.exists() else []
    for run in runs:
        if args.only and run["name"] not in args.only:
            continue
        if args.skip_done and any(d["name"] == run["name"] for d in done):
            continue
        print(f"\n== {run['name']}: {run['config']} {' '.join(run.get('overrides', []))}", flush=True)
        res = run_one(run, Path(args.work), not args.no_progress, args.val_fraction)
        print(json.dumps(res), flush=True)
        with open(out, "a") as f:
            f.write(json.dumps(res) + "\n")
        done.append(res)
    md = table(done)
    out.with_suffix(".md").write_text(md + "\n")
    print("\n" + md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
