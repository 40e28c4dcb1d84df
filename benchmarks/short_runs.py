"""Short budget-true runs judged by 20-NN on the validation split only: a cheap screen of recipe levers
(e.g. why a self-distillation recipe's teacher stays near uniform) before a run worth a full evaluation
(``benchmarks/sweep.py``, ``benchmarks/fmnist_quality.py``). The test set is never read.

For each run of a sweep file (the format of ``benchmarks/sweep.py``; ``minutes: 0`` judges the recipe at
random init) it pretrains alone, then records the optimiser steps, the first, middle and last logged values
of every ``train/*`` metric (a teacher's entropy, each loss), and the validation 20-NN of the cls and mean
features of the evaluated encoder -- and of the EMA teacher's where the model has one (``eval_teacher``).
One JSON line per run is appended to ``--out``; ``--skip-done`` resumes an interrupted sweep.

    python benchmarks/short_runs.py benchmarks/sweeps/ibot_collapse.yaml --out results/sweep/ibot_collapse.jsonl --skip-done
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _metrics(rows: list[dict]) -> dict:
    out = {}
    for key in rows[0] if rows else []:
        if not key.startswith("train/") or key.endswith(("lr", "images_per_s")):
            continue
        vals = [float(r[key]) for r in rows if r.get(key)]
        if vals:
            out[key[len("train/"):]] = [round(vals[0], 3), round(vals[len(vals) // 2], 3), round(vals[-1], 3)]
    return out


def run_one(run: dict, work: Path, val_fraction: float) -> dict:
    import mimkit
    from mimkit.eval.data import eval_dataset
    from mimkit.eval.features import extract_features
    from mimkit.eval.knn import knn_predict
    from mimkit.eval.splits import validation_split
    from mimkit.train import load_config, run_pretrain
    from mimkit.train.run import model_kwargs

    run_dir = work / run["name"]
    cfg_file = ROOT / run["config"]
    minutes = float(run.get("minutes", 0))
    cfg = load_config(cfg_file, [*run.get("overrides", []), f"run.dir={run_dir}", "run.recon_images=0",
                                 "trainer.enable_progress_bar=false", "run.keep_periodic=1",
                                 *([f"trainer.max_minutes={minutes}"] if minutes else [])])
    res = {"name": run["name"], "config": run["config"], "overrides": run.get("overrides", []), "minutes": minutes}
    if minutes:
        t0 = time.time()
        run_pretrain(cfg)
        res["pretrain_min"] = round((time.time() - t0) / 60, 2)
        with open(run_dir / "logs" / "metrics.csv") as fh:
            rows = list(csv.DictReader(fh))
        res["steps"] = int(rows[-1]["step"]) if rows else 0
        res["train"] = _metrics(rows)
        model = mimkit.load(run_dir / "model")
    else:
        recipe, kw = model_kwargs(cfg)
        model = mimkit.create(recipe, **kw).eval()
        res["steps"] = 0
    train, _ = eval_dataset("fashion_mnist", "train", model)
    fit = val = None
    sides = ("encoder",) + (("teacher",) if hasattr(model, "eval_teacher") else ())
    for side in sides:
        if side == "teacher":
            model.eval_teacher = True
        feats, y = extract_features(model, train, ("cls", "mean"), 512, None, 0, False)
        if fit is None:
            fit, val = validation_split(y, val_fraction, seed=0)
        for pool, f in feats.items():
            pred = knn_predict(f[fit], y[fit], f[val], k=20, num_classes=10)
            res[f"val_knn_{side}_{pool}"] = round(float((pred == y[val]).float().mean()), 4)
    return res


def main() -> int:
    import yaml

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("sweep", help="sweep file (YAML with a list `runs`: name, config, minutes, overrides)")
    p.add_argument("--out", required=True, help="JSON lines, one per finished run")
    p.add_argument("--work", default="runs/short_runs")
    p.add_argument("--only", nargs="*")
    p.add_argument("--skip-done", action="store_true")
    p.add_argument("--val-fraction", type=float, default=1 / 6)
    args = p.parse_args()
    runs = yaml.safe_load(open(args.sweep))["runs"]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {json.loads(line)["name"] for line in open(out)} if out.exists() else set()
    for run in runs:
        if (args.only and run["name"] not in args.only) or (args.skip_done and run["name"] in done):
            continue
        print(f"short_runs: {run['name']} ({run.get('minutes', 0)} min)", flush=True)
        res = run_one(run, Path(args.work), args.val_fraction)
        print(json.dumps(res), flush=True)
        with open(out, "a") as fh:
            fh.write(json.dumps(res) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
