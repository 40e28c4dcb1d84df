"""Commit the demo's baseline rows: raw pixels' and the random init's evaluated rows of a finished ``make demo``
run (``<run>/report/rows/``) are copied to ``results/demo/rows/``, which ``mimkit demo`` reuses, so that a
fresh clone's demo evaluates only its own encoder (the baselines cost ~18 of the report's ~30 minutes).

A row is reused only under the same key: the data, the report's settings, the weights (the random init's
parameters) and the evaluation code (``mimkit.eval.report.EVAL_CODE``). After a change to any of them the
committed rows are stale: the demo evaluates the baselines again (and says so), and this script, run after
that demo, brings the committed rows up to date (the stale ones are removed).

    make demo && python scripts/demo_rows.py --from runs/demo
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINES = ("raw_pixels", "random_init")


def copy_rows(run: Path, dest: Path) -> list[Path]:
    src = run / "report" / "rows"
    found = sorted(p for p in src.glob("*.pt") if p.name.rsplit("-", 1)[0] in BASELINES) if src.is_dir() else []
    if sorted({p.name.rsplit("-", 1)[0] for p in found}) != sorted(BASELINES):
        raise SystemExit(f"demo_rows: error: {src} holds no rows of {' and '.join(BASELINES)}; run `make demo` "
                         "(this version of mimkit keeps them there) and give its run directory")
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.pt"):
        if old.name not in {p.name for p in found}:
            old.unlink()
    for p in found:
        shutil.copy2(p, dest / p.name)
    return [dest / p.name for p in found]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--from", dest="run", default="runs/demo", help="a finished demo's run directory (default runs/demo)")
    p.add_argument("--to", default=str(ROOT / "results" / "demo" / "rows"))
    a = p.parse_args(argv)
    for f in copy_rows(Path(a.run), Path(a.to)):
        print(f"demo_rows: {f.name} ({f.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
