"""Soak check: does the memory of a long CPU pretraining run stay flat?

    python benchmarks/soak.py                      # 30 minutes of the tiny MAE recipe on Fashion-MNIST
    nice -n 19 python benchmarks/soak.py --minutes 10 --out runs/soak
    python benchmarks/soak.py --minutes 5 -- data.batch_size=128 trainer.max_epochs=1000

Runs ``mimkit pretrain`` (the real CLI: data loading, Lightning loop, step and epoch checkpoints,
reconstruction pictures, CSV/TensorBoard logs) in a child process stopped by ``trainer.max_time``, and
samples the resident set size (RSS) of the child and its own children every ``--interval`` seconds
(psutil when installed, else /proc/<pid>/status). Writes ``rss.csv`` and ``rss.png`` in ``--out`` and
prints the RSS at the start of training, after the warm-up, at its peak and at the end, plus the
least-squares slope after the warm-up (MB per hour). A leak shows as a steady positive slope; a flat
run has a slope near zero and an end close to the post-warm-up value.
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = [int(c) for c in f.read().split()]
    except OSError:
        return []
    return kids + [g for k in kids for g in _children(k)]


def rss_mb(pid: int) -> float | None:
    """RSS of ``pid`` and its descendants in MiB (None once it has exited)."""
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        try:
            p = psutil.Process(pid)
            procs = [p, *p.children(recursive=True)]
            return sum(q.memory_info().rss for q in procs) / 2**20
        except psutil.Error:
            return None
    total = 0.0
    for q in [pid, *_children(pid)]:
        try:
            with open(f"/proc/{q}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) / 1024
        except OSError:
            if q == pid:
                return None
    return total


def latest_step(run_dir: Path) -> int | None:
    """Newest global step among the run's checkpoint file names (epochNNN-stepNNNNNNN.ckpt)."""
    steps = [int(p.stem.split("step")[-1]) for p in (run_dir / "checkpoints").glob("epoch*-step*.ckpt")]
    return max(steps) if steps else None


def slope_per_hour(ts: list[float], ys: list[float]) -> float:
    n = len(ts)
    if n < 2:
        return 0.0
    mt, my = sum(ts) / n, sum(ys) / n
    var = sum((t - mt) ** 2 for t in ts)
    return 0.0 if var == 0 else sum((t - mt) * (y - my) for t, y in zip(ts, ys)) / var * 3600


def plot(rows, out: Path, warm_s: float, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot([r[0] / 60 for r in rows], [r[1] for r in rows], lw=1.2)
    ax.axvline(warm_s / 60, color="gray", ls="--", lw=0.8, label="end of warm-up")
    ax.set_xlabel("minutes")
    ax.set_ylabel("RSS (MiB, process + children)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0, help="training wall time (default 30)")
    ap.add_argument("--interval", type=float, default=5.0, help="seconds between RSS samples")
    ap.add_argument("--config", default=str(ROOT / "configs" / "mae_vit_tiny_patch4_28.yaml"))
    ap.add_argument("--out", default=None, help="output folder (default runs/soak-<time>)")
    ap.add_argument("--threads", type=int, default=None, help="OMP/torch threads of the training process")
    ap.add_argument("--warmup", type=float, default=0.1, help="share of the samples treated as warm-up")
    ap.add_argument("overrides", nargs="*", help="extra `mimkit pretrain` overrides")
    args = ap.parse_args(argv)

    out = Path(args.out or ROOT / "runs" / f"soak-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    run_dir = out / "run"
    secs = int(args.minutes * 60)
    cmd = [sys.executable, "-m", "mimkit", "pretrain", "--config", args.config, "trainer.max_epochs=100000",
           f"trainer.max_time={{seconds: {secs}}}", "trainer.enable_progress_bar=false",
           "run.checkpoint_every_n_steps=200", f"run.dir={run_dir}", *args.overrides]
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    log = open(out / "train.log", "w")
    print("soak:", " ".join(cmd), flush=True)
    t0 = time.time()
    child = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    rows: list[tuple[float, float, int | None, int]] = []
    with open(out / "rss.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["seconds", "rss_mib", "last_epoch_checkpoint_step", "training"])
        while child.poll() is None:
            r = rss_mb(child.pid)
            if r is not None:  # "training": the run wrote its config.yaml, just before trainer.fit
                row = (round(time.time() - t0, 1), round(r, 1), latest_step(run_dir),
                       int((run_dir / "config.yaml").exists()))
                rows.append(row)
                w.writerow(row)
                f.flush()
            time.sleep(args.interval)
    log.close()
    if child.returncode != 0:
        print(f"soak: training exited with {child.returncode}; see {out / 'train.log'}", file=sys.stderr)
    if len(rows) < 4:
        print("soak: too few samples", file=sys.stderr)
        return 1

    started = [r for r in rows if r[3]] or rows
    k = max(1, int(len(started) * args.warmup))
    after = started[k:] or started
    ts, ys = [r[0] for r in after], [r[1] for r in after]
    peak = max(rows, key=lambda r: r[1])
    s_after = slope_per_hour(ts, ys)
    s_all = slope_per_hour([r[0] for r in started], [r[1] for r in started])
    half = started[len(started) // 2:]
    s_half = slope_per_hour([r[0] for r in half], [r[1] for r in half])
    import statistics

    windows = []  # median RSS per sixth of the run: robust to the sawtooth of allocator caches
    span = rows[-1][0] - started[0][0]
    for i in range(6):
        a, b = started[0][0] + span * i / 6, started[0][0] + span * (i + 1) / 6
        w = [r[1] for r in started if a <= r[0] < b or (i == 5 and r[0] == b)]
        if w:
            windows.append(statistics.median(w))
    plot(rows, out / "rss.png", after[0][0],
         f"mimkit pretrain soak: {args.minutes:g} min, slope after warm-up {s_after:+.1f} MiB/h")
    summary = (f"samples {len(rows)} over {rows[-1][0] / 60:.1f} min; steps reached {rows[-1][2]}\n"
               f"RSS at first sample      {rows[0][1]:8.1f} MiB (t={rows[0][0]:.0f}s)\n"
               f"RSS when training began  {started[0][1]:8.1f} MiB (t={started[0][0]:.0f}s)\n"
               f"RSS after warm-up        {after[0][1]:8.1f} MiB (t={after[0][0]:.0f}s)\n"
               f"RSS peak                 {peak[1]:8.1f} MiB (t={peak[0]:.0f}s)\n"
               f"RSS at end               {rows[-1][1]:8.1f} MiB (t={rows[-1][0]:.0f}s)\n"
               f"slope after warm-up      {s_after:+8.2f} MiB/hour\n"
               f"slope since training     {s_all:+8.2f} MiB/hour\n"
               f"slope, second half       {s_half:+8.2f} MiB/hour\n"
               f"median RSS per sixth     {' '.join(f'{m:.0f}' for m in windows)} MiB\n"
               f"end - after warm-up      {rows[-1][1] - after[0][1]:+8.1f} MiB\n"
               f"files: {out / 'rss.csv'}, {out / 'rss.png'}, {out / 'train.log'}")
    (out / "summary.txt").write_text(summary + "\n")
    print(summary)
    return 0 if child.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
