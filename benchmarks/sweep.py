"""Recipe sweep on Fashion-MNIST: pretrain each configuration of a sweep file, then judge its encoder by
20-NN and a linear probe on the full 60k/10k split (both poolings), one configuration at a time.

A sweep file (YAML) lists runs, each a name, a config (``configs/<recipe>.yaml``) and dotted overrides::

    runs:
      - {name: mae_blr1.5e-3, config: configs/mae_vit_tiny_patch4_28.yaml, overrides: [optim.blr=1.5e-3]}

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


def run_one(run: dict, work: Path, progress: bool) -> dict:
    import mimkit
    from mimkit.eval.data import eval_dataset
    from mimkit.eval.features import extract_features, has_cls_token
    from mimkit.eval.knn import knn_accuracy
    from mimkit.eval.linear import fit_linear_probe
    from mimkit.train import load_config, run_pretrain

    run_dir = work / run["name"]
    cfg_file = ROOT / run["config"] if not Path(run["config"]).is_absolute() else Path(run["config"])
    cfg = load_config(cfg_file, [*run.get("overrides", []), f"run.dir={run_dir}", "run.recon_images=0",
                                 f"trainer.enable_progress_bar={progress}", "run.keep_periodic=1"])
    t0 = time.time()
    run_pretrain(cfg)
    pretrain_s = time.time() - t0
    model = mimkit.load(run_dir / "model")
    train, _ = eval_dataset("fashion_mnist", "train", model)
    test, _ = eval_dataset("fashion_mnist", "test", model)
    pools = ("cls", "mean") if has_cls_token(model) else ("mean",)
    t1 = time.time()
    ftr, ytr = extract_features(model, train, pools, 512, None, 0, progress)
    fte, yte = extract_features(model, test, pools, 512, None, 0, progress)
    res = {"name": run["name"], "config": run["config"], "overrides": run.get("overrides", []),
           "pretrain_minutes": round(pretrain_s / 60, 2), "feature_seconds": round(time.time() - t1, 1)}
    for p in pools:
        res[f"knn_{p}"] = round(knn_accuracy(ftr[p], ytr, fte[p], yte, num_classes=10), 4)
        _, info = fit_linear_probe(ftr[p], ytr, fte[p], yte, num_classes=10, epochs=50, progress=False)
        res[f"linear_{p}"] = round(info["acc"], 4)
    return res


def table(rows: list[dict]) -> str:
    f = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    head = "| run | overrides | pretrain min | 20-NN mean | linear mean | 20-NN cls | linear cls |"
    lines = [head, "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['name']} | {' '.join(r['overrides'])} | {r['pretrain_minutes']:.1f} | {f(r.get('knn_mean'))} | "
                     f"{f(r.get('linear_mean'))} | {f(r.get('knn_cls'))} | {f(r.get('linear_cls'))} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    import yaml

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep", help="sweep file (YAML with a list `runs`)")
    p.add_argument("--out", default="results/sweep/sweep.jsonl")
    p.add_argument("--only", nargs="*", help="run only these names")
    p.add_argument("--skip-done", action="store_true", help="skip runs whose name is already in --out")
    p.add_argument("--work", default="runs/sweep", help="where the runs are written")
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
        res = run_one(run, Path(args.work), not args.no_progress)
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
