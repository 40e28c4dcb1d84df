"""Does starting from an encoder pretrained elsewhere pay off on a small folder? (``mimkit pretrain --init``)

scikit-learn's 1,797 handwritten digits (8x8, upscaled to 28x28 PNGs) are written as a labelled folder,
``train/`` and ``test/`` split per class (``--test-fraction``). Then, each alone and with the same recipe,
data and budget (``--minutes`` budget-true minutes on ``train/`` without labels):

* ``scratch``: MAE tiny from its random init, as a new user would run it on this folder;
* ``init``: the same, started from the Fashion-MNIST MAE encoder (``--init``, default the 60-minute curve
  model in ``results/curve``);

and one ``mimkit report`` judges both, the Fashion-MNIST encoder as it is (0 minutes on digits), raw pixels
and random init under the same protocols (choices on a validation split of ``train/``, the test set read
once per row, paired intervals). JSON to ``--out``; the report's files beside it.

    python benchmarks/digits_init.py --minutes 3
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def write_digits(root: Path, test_fraction: float, seed: int) -> dict:
    """The digits as ``root/{train,test}/<digit>/<i>.png`` (28x28 grayscale); returns the counts."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    rng = np.random.default_rng(seed)
    counts = {"train": 0, "test": 0}
    if root.exists():
        shutil.rmtree(root)
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(d.target == c))
        n_test = int(round(len(idx) * test_fraction))
        for split, rows in (("test", idx[:n_test]), ("train", idx[n_test:])):
            out = root / split / str(c)
            out.mkdir(parents=True, exist_ok=True)
            for i in rows:
                img = Image.fromarray((d.images[i] * 255 / 16).astype(np.uint8), mode="L")
                img.resize((28, 28), Image.BILINEAR).save(out / f"{i:04d}.png")
            counts[split] += len(rows)
    return counts


def pretrain(name: str, folder: Path, minutes: float, work: Path, init: str | None) -> Path:
    from mimkit.train import load_config, run_pretrain

    run_dir = work / name
    if (run_dir / "model" / "model.safetensors").exists():
        print(f"digits_init: {name} already trained ({run_dir}); reused", flush=True)
        return run_dir
    if run_dir.exists():
        shutil.rmtree(run_dir)
    over = ["data.name=image_folder", f"data.root={folder}", "data.in_chans=1", f"trainer.max_minutes={minutes}",
            f"run.dir={run_dir}", "run.recon_images=0", "trainer.enable_progress_bar=false"]
    if init:
        over.append(f"run.init={init}")
    t0 = time.time()
    run_pretrain(load_config(ROOT / "configs" / "mae_vit_tiny_patch4_28.yaml", over))
    print(f"digits_init: {name} pretrained in {(time.time() - t0) / 60:.2f} min", flush=True)
    return run_dir


def main(argv=None) -> int:
    from mimkit.eval.report import build_report

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=3.0, help="pretraining budget of both arms (default 3)")
    p.add_argument("--init", default=str(ROOT / "results" / "curve" / "mae_vit_tiny_patch4_28-60min" / "model"),
                   help="the encoder the `init` arm starts from (default: the 60-minute Fashion-MNIST MAE)")
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default="runs/digits_init")
    p.add_argument("--out", default=str(ROOT / "results" / "digits_init.json"))
    args = p.parse_args(argv)
    work = Path(args.work)
    folder = work / "digits"
    t0 = time.time()
    counts = write_digits(folder, args.test_fraction, args.seed)
    print(f"digits_init: {counts['train']} training and {counts['test']} test digits in {folder}", flush=True)
    runs = {"scratch": pretrain("scratch", folder, args.minutes, work, None),
            "init": pretrain("init", folder, args.minutes, work, args.init)}
    out = Path(args.out)
    rep = build_report([runs["scratch"] / "model", runs["init"] / "model", args.init], data=str(folder),
                       out_dir=out.with_suffix(""), names=[f"MAE {args.minutes:g} min, scratch",
                                                           f"MAE {args.minutes:g} min, --init Fashion-MNIST",
                                                           "Fashion-MNIST MAE as is"],
                       pretrain_minutes=[args.minutes, args.minutes, 0.0], progress=True,
                       pairs=[(f"MAE {args.minutes:g} min, --init Fashion-MNIST", f"MAE {args.minutes:g} min, scratch")])
    summary = {"command": f"python benchmarks/digits_init.py --minutes {args.minutes:g}", "counts": counts,
               "minutes": args.minutes, "init": Path(args.init).relative_to(ROOT).as_posix()
               if Path(args.init).resolve().is_relative_to(ROOT) else args.init,
               "schedules": {k: json.loads((v / "schedule.json").read_text()) if (v / "schedule.json").exists() else None
                             for k, v in runs.items()},
               "rows": rep["rows"], "init_vs_scratch": rep["pairs"],
               "wall_minutes": round((time.time() - t0) / 60, 1)}
    out.write_text(json.dumps(summary, indent=1, default=str))
    print(f"digits_init: {out} ({summary['wall_minutes']} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
