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

**Recipes tuned on validation, equal trials** (``--tune MINUTES``): each side runs the same number of trials
(:data:`TRIALS`: learning rate, drop path, mixup; layer decay on the pretrained side only, none from scratch),
fitted on the training images outside a per-class validation split (1/6, :func:`mimkit.eval.splits.validation_split`)
and scored on that split; the test set is not read. Trial budgets keep the shared clock's ratio: scratch
MINUTES, pretrained MINUTES * (T - P) / T. Each finished trial is a line of ``results/finetune_tune_<T>min.jsonl``
(rerun: finished trials are kept), and the best of each side is written to ``results/finetune_tune_<T>min.json``;
``--recipes that.json`` then runs the two arms with the chosen recipes.

    python benchmarks/finetune_shared.py --total 30 --tune 4
    python benchmarks/finetune_shared.py --total 30 --recipes results/finetune_tune_30min.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# (name, recipe) per side; the same count on both sides. The first of each is the untuned recipe of the
# 30-minute point (blr 2e-3, drop path 0.1, no mixup, label smoothing 0.1; layer decay 0.75 / 1.0).
TRIALS = {
    "pretrained": [
        ("base", {}),
        ("blr4e-3", {"blr": 4e-3}),
        ("ld0.9", {"layer_decay": 0.9}),
        ("mixup", {"mixup": 0.8, "cutmix": 1.0}),
    ],
    "scratch": [
        ("base", {}),
        ("blr4e-3", {"blr": 4e-3}),
        ("dp0", {"drop_path": 0.0}),
        ("mixup", {"mixup": 0.8, "cutmix": 1.0}),
    ],
}
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
    p.add_argument(
        "--tune",
        type=float,
        metavar="MINUTES",
        help="run the equal-trial recipe search on the validation split (scratch trials MINUTES long)",
    )
    p.add_argument("--recipes", help="a --tune result: run the two arms with the recipes it chose")
    args = p.parse_args(argv)
    model_dir = ROOT / args.model
    pre = float(json.loads((model_dir / "schedule.json").read_text())["max_minutes"])
    ft_minutes = args.total - pre
    if ft_minutes <= 0:
        raise SystemExit(
            f"finetune_shared: {args.model} was pretrained for {pre} min, not less than --total {args.total}"
        )
    out = Path(args.out or ROOT / "results" / f"finetune_shared_{args.total:g}min.json")
    res = json.loads(out.read_text()) if out.exists() and not args.rerun else {}
    res.update(
        command=f"python benchmarks/finetune_shared.py --total {args.total:g}",
        model=args.model,
        total_minutes=args.total,
        pretrain_minutes=pre,
    )
    model = mimkit.load(model_dir / "model")
    data = load_report_data("fashion_mnist", model, progress=False)
    if args.tune:
        return tune(args, model, data, pre)
    chosen = json.loads(Path(args.recipes).read_text())["chosen"] if args.recipes else {}
    if chosen:
        out = Path(args.out or ROOT / "results" / f"finetune_shared_{args.total:g}min_tuned.json")
        res = json.loads(out.read_text()) if out.exists() and not args.rerun else {}
        res.update(
            command=f"python benchmarks/finetune_shared.py --total {args.total:g} --recipes {args.recipes}",
            model=args.model,
            total_minutes=args.total,
            pretrain_minutes=pre,
            recipes=chosen,
        )
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
        recipe = {"layer_decay": decay, **chosen.get(name, {}).get("recipe", {})}
        r = finetune_for_minutes(
            m,
            train_aug,
            data.test,
            data.num_classes,
            minutes,
            batch_size=args.batch_size,
            seed=args.seed,
            progress=False,
            **recipe,
        )
        correct[name] = r["correct"]
        ci = accuracy_interval(r["correct"])
        res.setdefault("arms", {})[name] = {
            "accuracy": ci["acc"],
            "ci": [ci["lo"], ci["hi"]],
            "minutes": minutes,
            "measured_minutes": r["minutes"],
            "steps": r.get("steps"),
            "layer_decay": decay,
            "wall_minutes": round((time.time() - t0) / 60, 2),
        }
        torch.save(r["correct"], cache)
        out.write_text(json.dumps(res, indent=1))
        print(
            f"finetune_shared: {name}: {ci['acc']:.4f} [{ci['lo']:.4f}, {ci['hi']:.4f}] after {minutes:g} min",
            flush=True,
        )
    res["pretrained_vs_scratch"] = paired_difference(correct["pretrained"], correct["scratch"])
    out.write_text(json.dumps(res, indent=1))
    d = res["pretrained_vs_scratch"]
    print(
        f"finetune_shared: {pre:g} min pretraining + {ft_minutes:g} min fine-tuning vs {args.total:g} min from scratch: "
        f"{d['verdict']} {100 * d['diff']:+.1f} points [{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}]"
    )
    return 0


def tune(args, model, data, pre: float) -> int:
    """The equal-trial search (see the module doc): validation only, one JSON line per finished trial."""
    from mimkit.data import TensorImages
    from mimkit.eval.finetune import finetune_augmented, finetune_for_minutes
    from mimkit.eval.report import random_init_like
    from mimkit.eval.splits import validation_split

    fit, val = validation_split(data.train.labels, seed=args.seed)
    sub = type("Sub", (), {"train": TensorImages(data.train.images[fit], data.train.labels[fit])})()
    fit_aug, val_set = finetune_augmented(sub), TensorImages(data.train.images[val], data.train.labels[val])
    log = ROOT / "results" / f"finetune_tune_{args.total:g}min.jsonl"
    done = {}
    if log.exists() and not args.rerun:
        for line in log.read_text().splitlines():
            t = json.loads(line)
            done[(t["side"], t["trial"])] = t
    minutes = {"pretrained": args.tune * (args.total - pre) / args.total, "scratch": args.tune}
    base_decay = {"pretrained": 0.75, "scratch": 1.0}
    for side, trials in TRIALS.items():
        for name, over in trials:
            if (side, name) in done:
                print(f"finetune_shared --tune: {side} {name}: {done[(side, name)]['val_acc']:.4f} (kept)")
                continue
            m = model if side == "pretrained" else random_init_like(model, args.seed)
            recipe = {"layer_decay": base_decay[side], **over}
            r = finetune_for_minutes(
                m,
                fit_aug,
                val_set,
                data.num_classes,
                minutes[side],
                batch_size=args.batch_size,
                seed=args.seed,
                progress=False,
                **recipe,
            )
            t = {
                "side": side,
                "trial": name,
                "recipe": recipe,
                "minutes": round(minutes[side], 2),
                "measured_minutes": r["minutes"],
                "steps": r.get("steps"),
                "val_acc": round(float(r["acc"]), 4),
                "fit_images": len(fit),
                "val_images": len(val),
            }
            done[(side, name)] = t
            with log.open("a") as f:
                f.write(json.dumps(t) + "\n")
            print(
                f"finetune_shared --tune: {side} {name} {recipe}: validation {t['val_acc']:.4f} "
                f"({t['measured_minutes']} min)",
                flush=True,
            )
    chosen = {}
    for side, trials in TRIALS.items():
        rows = [done[(side, n)] for n, _ in trials]
        best = max(rows, key=lambda t: t["val_acc"])
        chosen[side] = {"trial": best["trial"], "recipe": best["recipe"], "val_acc": best["val_acc"]}
    out = ROOT / "results" / f"finetune_tune_{args.total:g}min.json"
    out.write_text(
        json.dumps(
            {
                "command": f"python benchmarks/finetune_shared.py --total {args.total:g} --tune {args.tune:g}",
                "trials_per_side": {s: len(t) for s, t in TRIALS.items()},
                "trial_minutes": {s: round(v, 2) for s, v in minutes.items()},
                "chosen": chosen,
                "trials": list(done.values()),
            },
            indent=1,
        )
        + "\n"
    )
    for side, c in chosen.items():
        print(f"finetune_shared --tune: {side} chooses {c['trial']} {c['recipe']} (validation {c['val_acc']:.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
