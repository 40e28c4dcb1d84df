"""Pretraining + fine-tuning against the same ViT from scratch, on one shared clock (Fashion-MNIST, all labels).

For a total budget T (``--total``) and a committed curve model pretrained for P budget-true minutes
(``--model``, default MAE tiny's 15-minute point in ``results/curve``, P read from its ``schedule.json``):

* ``pretrained``: that encoder fine-tuned for T - P budget-true minutes (:func:`mimkit.eval.finetune.finetune_for_minutes`:
  layer decay 0.75, drop path 0.1, label smoothing 0.1, random-resized-crop + flip);
* ``scratch``: the same recipe at random init trained for all T minutes with the same loop (no layer decay);

each on the 60k training images with their labels, each read on the 10k test images once; the difference
carries a paired bootstrap interval and a verdict. Each arm runs alone and is kept in ``--out`` as soon as it
is in (a rerun skips finished arms; ``--rerun`` repeats them).

    python benchmarks/finetune_shared.py --total 30
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


def main(argv=None) -> int:
    import torch

    import mimkit
    from mimkit.eval.finetune import finetune_augmented, finetune_for_minutes
    from mimkit.eval.folders import load_report_data
    from mimkit.eval.report import random_init_like
    from mimkit.eval.stats import accuracy_interval, paired_difference

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--total", type=float, default=30.0, help="pretraining + fine-tuning minutes (default 30)")
    p.add_argument("--model", default="results/curve/mae_vit_tiny_patch4_28-15min")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="default results/finetune_shared_<total>min.json")
    p.add_argument("--rerun", action="store_true")
    args = p.parse_args(argv)
    model_dir = ROOT / args.model
    pre = float(json.loads((model_dir / "schedule.json").read_text())["max_minutes"])
    ft_minutes = args.total - pre
    if ft_minutes <= 0:
        raise SystemExit(f"finetune_shared: {args.model} was pretrained for {pre} min, not less than --total {args.total}")
    out = Path(args.out or ROOT / "results" / f"finetune_shared_{args.total:g}min.json")
    res = json.loads(out.read_text()) if out.exists() and not args.rerun else {}
    res.update(command=f"python benchmarks/finetune_shared.py --total {args.total:g}", model=args.model,
               total_minutes=args.total, pretrain_minutes=pre)
    model = mimkit.load(model_dir / "model")
    data = load_report_data("fashion_mnist", model, progress=False)
    train_aug = finetune_augmented(data)
    arms = {"pretrained": (model, ft_minutes, 0.75), "scratch": (random_init_like(model, args.seed), args.total, 1.0)}
    correct = {}
    for name, (m, minutes, decay) in arms.items():
        cache = out.with_name(out.stem + f"_{name}.pt")
        if name in res.get("arms", {}) and cache.exists():
            correct[name] = torch.load(cache, weights_only=True)
            print(f"finetune_shared: {name} already measured ({res['arms'][name]['accuracy']:.4f}); kept", flush=True)
            continue
        t0 = time.time()
        r = finetune_for_minutes(m, train_aug, data.test, data.num_classes, minutes, batch_size=args.batch_size,
                                 layer_decay=decay, seed=args.seed, progress=False)
        correct[name] = r["correct"]
        ci = accuracy_interval(r["correct"])
        res.setdefault("arms", {})[name] = {"accuracy": ci["acc"], "ci": [ci["lo"], ci["hi"]], "minutes": minutes,
                                            "measured_minutes": r["minutes"], "steps": r.get("steps"),
                                            "layer_decay": decay, "wall_minutes": round((time.time() - t0) / 60, 2)}
        torch.save(r["correct"], cache)
        out.write_text(json.dumps(res, indent=1))
        print(f"finetune_shared: {name}: {ci['acc']:.4f} [{ci['lo']:.4f}, {ci['hi']:.4f}] after {minutes:g} min", flush=True)
    res["pretrained_vs_scratch"] = paired_difference(correct["pretrained"], correct["scratch"])
    out.write_text(json.dumps(res, indent=1))
    d = res["pretrained_vs_scratch"]
    print(f"finetune_shared: {pre:g} min pretraining + {ft_minutes:g} min fine-tuning vs {args.total:g} min from scratch: "
          f"{d['verdict']} {100 * d['diff']:+.1f} points [{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
