"""CPU pretraining speed of the tiny recipes, before/after each speed lever, from one run.

Each row is the real engine (``run_pretrain``: Lightning step, data loading and augmentation, logging,
the EMA update) for ``--steps`` optimiser steps after ``--warmup`` steps, reported as training images
per second (``train/images_per_s``; x masks per image = masked views per second) and as the share of the baseline row of the same recipe. Rows run
one after another in fresh processes; ``--repeats`` alternates the order and reports the median.

Levers measured (``--variants``):

* ``fp32``: eager float32, the baseline;
* ``compile``: ``trainer.compile=true`` (``torch.compile`` of the training forward, short-sequence
  attention written out on the CPU: ``mimkit.train.speed``);
* ``fused`` / ``compile_fused``: the same with the fused AdamW kernel (``optim.fused=true``);
* ``bf16``: ``trainer.precision=bf16-mixed`` (bf16 autocast on CPU; fast only with AVX512-BF16/AMX);
* ``masks1`` (data2vec 2.0 only): one mask per teacher pass instead of the recipe's ``num_masks``, at the
  same number of masked student views per step (the batch scaled up): what sharing one teacher pass
  between several masks saves. Rows report masked views per second (images/s x masks per image).

Usage::

    python benchmarks/cpu_speed.py --recipes data2vec2_vit_tiny_patch4_28 mae_vit_tiny_patch4_28
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from mimkit.train import load_config, run_pretrain
from mimkit.train.callbacks import Throughput
recipe, run_dir, steps, warmup, overrides = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6:]
cfg_file = f"{sys.argv[1]}/configs/{recipe}.yaml"
import os
cfg = load_config(cfg_file if os.path.exists(cfg_file) else None,
                  [f"model.name={recipe}", f"run.dir={run_dir}", "run.recon_images=0", "trainer.enable_progress_bar=false",
                   f"trainer.max_steps={steps + warmup}", "trainer.max_epochs=-1", "run.checkpoint_every_n_epochs=1000",
                   f"trainer.log_every_n_steps={steps + warmup}", *overrides])
tp = Throughput(every=10**9, warmup=warmup)
run_pretrain(cfg, callbacks=[tp])
print("RESULT", json.dumps({"images_per_s": tp.images_per_s}))
"""


def variant_overrides(name: str, recipe: str) -> list[str] | None:
    if name == "fp32":
        return ["trainer.compile=false"]
    if name == "compile":
        return ["trainer.compile=true"]
    if name == "fused":
        return ["trainer.compile=false", "optim.fused=true"]
    if name == "compile_fused":
        return ["trainer.compile=true", "optim.fused=true"]
    if name == "bf16":
        return ["trainer.precision=bf16-mixed"]
    if name == "masks1":
        if not recipe.startswith("data2vec2"):
            return None
        import yaml

        cfg = yaml.safe_load((ROOT / "configs" / f"{recipe}.yaml").read_text()) if (ROOT / "configs" / f"{recipe}.yaml").exists() else {}
        batch = int((cfg.get("data") or {}).get("batch_size", 256))
        return ["model.num_masks=1", f"data.batch_size={batch * masks_per_image(recipe, [])}"]
    raise ValueError(f"unknown variant {name!r}")


def masks_per_image(recipe: str, overrides: list[str]) -> int:
    """Masked student views per image (data2vec 2.0's ``num_masks``; 1 for the other methods)."""
    from mimkit.registry import recipe_info

    for o in overrides:
        if o.startswith("model.num_masks="):
            return int(o.split("=", 1)[1])
    return int(recipe_info(recipe)[1].get("num_masks", 1))


def run_one(recipe, overrides, args) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, PYTHONWARNINGS="ignore")
        r = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), recipe, f"{tmp}/run", str(args.steps),
                            str(args.warmup), *overrides], capture_output=True, text=True, env=env)
    line = next((x for x in r.stdout.splitlines() if x.startswith("RESULT ")), None)
    if r.returncode or line is None:
        raise SystemExit(f"{recipe} {overrides} failed:\n{r.stdout[-1500:]}\n{r.stderr[-1500:]}")
    return float(json.loads(line[7:])["images_per_s"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipes", nargs="+", default=["data2vec2_vit_tiny_patch4_28", "mae_vit_tiny_patch4_28"])
    p.add_argument("--variants", nargs="+", default=["fp32", "compile", "bf16", "masks1"])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--out", default="results/cpu_speed.json")
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    rows = []
    for recipe in args.recipes:
        todo = [(v, variant_overrides(v, recipe)) for v in args.variants]
        todo = [(v, o) for v, o in todo if o is not None]
        runs = {v: [] for v, _ in todo}
        for rep in range(args.repeats):
            for v, o in (todo if rep % 2 == 0 else todo[::-1]):
                runs[v].append(run_one(recipe, o, args) * masks_per_image(recipe, o))
                print(f"{recipe} {v}: {runs[v][-1]:.1f} masked views/s", flush=True)
        base = statistics.median(runs[todo[0][0]])
        for v, o in todo:
            med = statistics.median(runs[v])
            rows.append({"recipe": recipe, "variant": v, "overrides": o, "views_per_s": round(med, 1),
                         "masks_per_image": masks_per_image(recipe, o),
                         "runs": [round(x, 1) for x in runs[v]], "vs_baseline": round(med / base, 3)})
    print("\n| recipe | variant | masks/image | masked views/s | vs fp32 eager |\n| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['recipe']} | {r['variant']} | {r['masks_per_image']} | {r['views_per_s']:.1f} | {r['vs_baseline']:.2f}x |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"steps": args.steps, "warmup": args.warmup, "rows": rows,
                                          "cpu_flags": _cpu_flags()}, indent=2))
    return 0


def _cpu_flags() -> list[str]:
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
        return sorted(f for f in flags.split() if f.startswith(("avx512", "amx", "avx2")))
    except (OSError, StopIteration):
        return []


if __name__ == "__main__":
    sys.exit(main())
