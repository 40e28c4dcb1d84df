"""Fashion-MNIST scenes: does MIM pretraining pay off for semantic segmentation, at equal total minutes?

    python benchmarks/fmnist_scenes.py --total 12 --share 0.5      # ~45 min alone on 2 cores

The scenes are built from real images: 2-4 Fashion-MNIST garments pasted at random on a 56x56 canvas, each
pixel labelled with its garment's class + 1 where the garment is (intensity > 0.1) and 0 (background)
elsewhere; training canvases come from the training images, test canvases from the test images (seeded,
written as a folder in the ADE20K layout: ``mimkit finetune --task segmentation --data DIR`` reads it).

Three arms, each given ``--total`` minutes of this machine, then transformers' ``UperNetForSemanticSegmentation``
on the same ViT (MAE tiny's encoder at 56 px, patch 4: a 14x14 grid) read on the same test canvases once:

* ``mae``: MAE pretrained on the training canvases *without labels* for ``share * total`` budget-true
  minutes, exported as a backbone (``mimkit export --format hf-backbone``), then UperNet for the rest;
* ``scratch``: the same ViT from random init, UperNet for all ``total`` minutes;
* ``fmnist``: the committed 60-minute Fashion-MNIST MAE encoder (28 px; positions resized to 56), UperNet
  for all ``total`` minutes (its 60 minutes of pretraining happened elsewhere, as a downloaded encoder's).

Every arm uses one recipe (AdamW, blr 1e-3, batch 32, random flips; layer decay 0.75 on pretrained
encoders, 1.0 from scratch); mIoU on a tenth of the training canvases (validation) is recorded during
training, and the verdicts are paired bootstrap intervals over the test canvases. With ``--tune F`` each arm
first makes its choices on that validation tenth by the same number of trials, each ``F`` of the UperNet
minutes it stands for and kept as it ends: one per base lr of ``--blrs`` (default
``mimkit.eval.segment.SEGMENTATION_BLRS``) on the arm's default pipeline, then one for its other pipeline at
the lr chosen there (:func:`mimkit.eval.segment.tune_segmentation_options`):

* ``mae``: the pretraining share, ``--share`` (default) or ``--alt-share`` of the total;
* ``fmnist``: the encoder as downloaded, or continued by MAE on the canvases (``run.init``) for ``--share``
  of the total;
* ``scratch``: layer decay 1 (default) or 0.75.

It trains the chosen setting on the arm's clock, and the test canvases are read once, by that setting
(``results/fmnist_scenes_tuned.json``):

    python benchmarks/fmnist_scenes.py --total 12 --share 0.5 --tune 0.25   # ~100 min alone

Each finished arm (and each finished trial) is kept in ``--work`` and reused, so an interrupted run resumes. Writes ``results/fmnist_scenes.json`` and ``results/fmnist_scenes.png``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ARMS = ("mae", "scratch", "fmnist")
RECIPE = "mae_vit_tiny_patch4_28"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--total", type=float, default=12.0, help="minutes per arm, pretraining included (default 12)")
    p.add_argument("--share", type=float, default=0.5, help="the MAE arm's pretraining share of --total (default 0.5)")
    p.add_argument("--alt-share", type=float, default=0.75,
                   help="with --tune, the MAE arm's other pretraining share, tried on validation (default 0.75)")
    p.add_argument("--blrs", type=lambda t: tuple(float(v) for v in t.split(",")), default=None,
                   help="with --tune, the base lrs tried (default mimkit.eval.segment.SEGMENTATION_BLRS)")
    p.add_argument("--canvas", type=int, default=56)
    p.add_argument("--train", type=int, default=6000, help="training canvases (default 6000)")
    p.add_argument("--test", type=int, default=1000, help="test canvases (default 1000)")
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--fmnist-model", default="results/curve/mae_vit_tiny_patch4_28-60min")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default="results/fmnist_scenes_runs")
    p.add_argument("--out", default="results/fmnist_scenes.json")
    p.add_argument("--tune", type=float, default=0.0, metavar="F",
                   help="choose each arm's UperNet lr on the validation canvases first: one trial per base lr of "
                        "mimkit.eval.segment.SEGMENTATION_BLRS, each F x the arm's UperNet minutes (default 0: blr 1e-3)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if not 0 <= args.tune <= 1:
        p.error(f"--tune is a fraction in [0, 1], got {args.tune}")
    if args.tune and args.out == "results/fmnist_scenes.json":
        args.out = "results/fmnist_scenes_tuned.json"
    if not (0 < args.share < 1 and 0 < args.alt_share < 1):
        p.error(f"--share and --alt-share are fractions in (0, 1), got {args.share} and {args.alt_share}")
    if args.blrs is None:
        from mimkit.eval.segment import SEGMENTATION_BLRS

        args.blrs = SEGMENTATION_BLRS
    return args


def make_scenes(images: torch.Tensor, labels: torch.Tensor, n: int, canvas: int, seed: int):
    """``n`` canvases (uint8 (n, 1, S, S)) and label maps ((n, S, S): class + 1, 0 background), each with 2-4
    garments from ``images`` (uint8 (N, 28, 28)) pasted at random; a later garment covers an earlier one."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 1, canvas, canvas, dtype=torch.uint8)
    y = torch.zeros(n, canvas, canvas, dtype=torch.long)
    size = images.shape[-1]
    for i in range(n):
        for j in torch.randint(0, len(images), (int(torch.randint(2, 5, (1,), generator=g)),), generator=g).tolist():
            r, c = torch.randint(0, canvas - size + 1, (2,), generator=g).tolist()
            garment = images[j]
            on = garment > 25  # the garment's pixels (> 0.1 of full intensity)
            x[i, 0, r:r + size, c:c + size][on] = garment[on]
            y[i, r:r + size, c:c + size][on] = int(labels[j]) + 1
    return x, y


def build_data(args, work: Path) -> Path:
    from mimkit.data.fashion_mnist import load_fashion_mnist
    from mimkit.data.segmentation import write_segmentation_folder

    data = work / f"data_{args.canvas}px_{args.train}_{args.test}_s{args.seed}"
    if (data / "done").is_file():
        return data
    (tri, trl), (tei, tel) = load_fashion_mnist("train"), load_fashion_mnist("test")
    xtr, ytr = make_scenes(tri, trl, args.train, args.canvas, args.seed)
    xte, yte = make_scenes(tei, tel, args.test, args.canvas, args.seed + 1)
    write_segmentation_folder(data, "training", xtr, ytr)
    write_segmentation_folder(data, "validation", xte, yte)
    (data / "done").write_text("ok")
    return data


def pretrain_dir(work: Path, minutes: float, init: Path | None = None) -> Path:
    """Where MAE on the canvases for ``minutes`` (from ``init``, a model directory, when given) is kept."""
    return work / (f"mae_pretrain_{minutes:g}min" + (f"_init_{Path(init).parent.name}" if init is not None else ""))


def pretrain_mae(args, data: Path, work: Path, minutes: float, mean: float, std: float, init: Path | None = None) -> Path:
    """MAE on the training canvases without labels for ``minutes`` budget-true minutes (from ``init``'s encoder
    when given, positions resized), or the finished run of the same settings."""
    from mimkit.train import load_config, run_pretrain
    from mimkit.train.budget import read_schedule

    run_dir = pretrain_dir(work, minutes, init)
    sched = read_schedule(run_dir) if run_dir.is_dir() else None
    if sched and sched.get("finished_at_step") == sched.get("total_steps") and (run_dir / "model").is_dir():
        print(f"== reusing the finished {minutes:g}-minute MAE pretraining in {run_dir.name}")
        return run_dir
    ov = [f"run.dir={run_dir}", f"run.seed={args.seed}", "run.recon_images=0", f"trainer.max_minutes={minutes}",
          f"trainer.enable_progress_bar={not args.no_progress}", "data.name=image_folder",
          f"data.root={data / 'images' / 'training'}", f"data.img_size={args.canvas}", f"model.img_size={args.canvas}",
          f"data.mean=[{mean}]", f"data.std=[{std}]", "data.batch_size=128"]
    if init is not None:
        ov.append(f"run.init={init}")
    print(f"== MAE on the training canvases (no labels), {minutes:g} budget-true minutes"
          f"{' from the Fashion-MNIST encoder' if init is not None else ''} ==", flush=True)
    run_pretrain(load_config(ROOT / "configs" / f"{RECIPE}.yaml", ov))
    return run_dir


def arm_options(arm: str, args, data: Path, work: Path, mean: float, std: float) -> list[dict]:
    """An arm's pipelines, the default first: ``{"name", "share" (of --total spent pretraining on the
    canvases), "minutes" (UperNet's), "layer_decay", "backbone" (builds it; pretrains first where needed),
    "pretrain_dir"}``. With --tune each arm tries its lrs on the default, then its other option at the
    chosen lr: the same number of trials for every arm."""
    import mimkit
    from mimkit.interop.hf_backbone import to_hf_backbone

    def option(name, share, layer_decay, build, pretrain_dir=None):
        return {"name": name, "share": share, "minutes": args.total * (1 - share), "layer_decay": layer_decay,
                "backbone": build, "pretrain_dir": pretrain_dir}

    def pretrained(share, init=None):
        def build():
            return to_hf_backbone(mimkit.load(pretrain_mae(args, data, work, args.total * share, mean, std, init) / "model"))
        return build, pretrain_dir(work, args.total * share, init)

    if arm == "mae":  # the pretraining share of the clock
        return [option(f"share {s:g}", s, 0.75, *pretrained(s)) for s in dict.fromkeys((args.share, args.alt_share))]
    if arm == "scratch":  # nothing to pretrain: the other knob is layer decay
        def fresh():
            torch.manual_seed(args.seed)
            return to_hf_backbone(mimkit.create(RECIPE, img_size=args.canvas))
        return [option("layer decay 1", 0.0, 1.0, fresh), option("layer decay 0.75", 0.0, 0.75, fresh)]
    fmnist = ROOT / args.fmnist_model / "model"  # as downloaded, or continued on the canvases for share x total

    def transfer():
        return to_hf_backbone(mimkit.load(fmnist, img_size=args.canvas))
    return [option("transfer", 0.0, 0.75, transfer), option(f"continue {args.share:g}", args.share, 0.75,
                                                            *pretrained(args.share, init=fmnist))]


def _pretrain_minutes(opt: dict) -> float:
    from mimkit.train.budget import read_schedule

    return float(read_schedule(opt["pretrain_dir"])["wall_minutes"]) if opt["pretrain_dir"] is not None else 0.0


def run_arm(arm: str, args, data: Path, work: Path, splits, num_labels: int, mean: float, std: float) -> dict:
    from mimkit.eval.segment import finetune_segmentation, tune_segmentation_options

    options = arm_options(arm, args, data, work, mean, std)
    (xtr, ytr), fit, val, test = splits
    chosen, tuning = {"option": options[0]["name"], "blr": 1e-3}, None
    tag = f"{args.total:g}min_share{args.share:g}" + (f"_tune{args.tune:g}" if args.tune else "")
    if args.tune:  # the same number of trials for every arm, on the validation canvases; each kept as it ends
        log = work / f"trials_{arm}_{tag}.jsonl"
        kept = map(json.loads, log.read_text().splitlines()) if log.is_file() else []
        done = {(t.get("option", options[0]["name"]), t["blr"]): t for t in kept}

        def keep(t):
            with log.open("a") as f:
                f.write(json.dumps(t) + "\n")
            print(f"== {arm}: trial {t['option']}, blr {t['blr']:g}: validation mIoU {t['val_miou']:.4f} "
                  f"({t['steps']} steps)", flush=True)
        tuning = tune_segmentation_options(options, (xtr[fit], ytr[fit]), (xtr[val], ytr[val]), num_labels,
                                           fraction=args.tune, blrs=args.blrs, done=done, on_trial=keep,
                                           seed=args.seed, mean=mean, std=std, progress=not args.no_progress)
        chosen = tuning["chosen"]
    opt = next(o for o in options if o["name"] == chosen["option"])
    slug = opt["name"].replace(" ", "")
    cache = work / f"final_{arm}_{tag}_{slug}_blr{chosen['blr']:g}.pt"  # the test set is read once per final setting
    if cache.is_file():
        print(f"== {arm}: reusing {cache.name}")
        res = torch.load(cache, weights_only=True)
    else:
        print(f"== {arm}: {opt['name']}, UperNet for {opt['minutes']:g} budget-true minutes (blr {chosen['blr']:g}, "
              f"layer decay {opt['layer_decay']}) ==", flush=True)
        res = finetune_segmentation(opt["backbone"](), (xtr[fit], ytr[fit]), (xtr[val], ytr[val]), test, num_labels,
                                    minutes=opt["minutes"], blr=chosen["blr"], layer_decay=opt["layer_decay"],
                                    seed=args.seed, mean=mean, std=std, progress=not args.no_progress)
        res.pop("segmenter")
        tmp = cache.with_suffix(".tmp")
        torch.save(res, tmp)
        tmp.replace(cache)
    tried = {t["option"] for t in (tuning or {}).get("trials", [])} | {opt["name"]}
    pre = _pretrain_minutes(opt)
    res.update(arm=arm, option=opt["name"], share=opt["share"], pretrain_minutes=round(pre, 2),
               total_minutes=round(pre + res["minutes"], 2), blr=chosen["blr"], layer_decay=opt["layer_decay"],
               # every pretraining this arm ran, the one chosen or not (it is spent either way)
               pretrain_minutes_all=round(sum(_pretrain_minutes(o) for o in options if o["name"] in tried), 2),
               **({"tuning": tuning} if tuning else {}))
    return res


def main(argv=None) -> int:
    from mimkit.data.segmentation import read_segmentation_folder
    from mimkit.eval.segment import plot_segmentation
    from mimkit.eval.stats import miou_interval, paired_miou_difference

    args = parse_args(argv)
    t_start = time.time()
    work = ROOT / args.work
    work.mkdir(parents=True, exist_ok=True)
    data = build_data(args, work)
    xtr, ytr = read_segmentation_folder(data, "training", in_chans=1)
    xte, yte = read_segmentation_folder(data, "validation", in_chans=1)
    num_labels = 11
    perm = torch.randperm(len(xtr), generator=torch.Generator().manual_seed(args.seed))
    val, fit = perm[: len(xtr) // 10], perm[len(xtr) // 10:]
    mean, std = float(xtr[fit].float().mean() / 255), float(xtr[fit].float().std() / 255)
    splits = ((xtr, ytr), fit, val, (xte, yte))
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    results = {a: run_arm(a, args, data, work, splits, num_labels, mean, std) for a in arms}
    rows = {}
    for a, r in results.items():
        ci = miou_interval(r["inter"], r["union"])
        trials = sum(t["minutes"] for t in r.get("tuning", {}).get("trials", []))
        rows[a] = {**{k: v for k, v in r.items() if k not in ("inter", "union", "pred")},
                   "test_miou": round(ci["miou"], 4), "ci": [round(ci["lo"], 4), round(ci["hi"], 4)],
                   "trial_minutes": round(trials, 2),  # the lr search on validation, outside the arm's clock
                   "measured_minutes": round(r["pretrain_minutes_all"] + trials + r["minutes"], 2)}
    pairs = {}
    for a in ("mae", "fmnist"):
        if a in results and "scratch" in results:
            d = paired_miou_difference(results[a]["inter"], results[a]["union"], results["scratch"]["inter"],
                                       results["scratch"]["union"])
            pairs[f"{a}_vs_scratch"] = {k: round(v, 4) if isinstance(v, float) else v for k, v in d.items()}
    pic = plot_segmentation(xte[:6], yte[:6], {a: r["pred"][:6] for a, r in results.items()},
                            ROOT / Path(args.out).with_suffix(".png"), num_labels)
    out = {"command": "python benchmarks/fmnist_scenes.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "canvas": args.canvas, "train_canvases": len(fit), "val_canvases": len(val), "test_canvases": len(xte),
           "classes": num_labels, "total_minutes_per_arm": args.total, "share": args.share,
           **({"blrs": list(args.blrs), "alt_share": args.alt_share} if args.tune else {}), "arms": rows,
           "pairs": pairs, "measured_minutes": round(sum(r["measured_minutes"] for r in rows.values()), 1),
           "wall_minutes": round((time.time() - t_start) / 60, 1),  # this invocation (kept arms are not re-run)
           "picture": str(pic.relative_to(ROOT))}
    path = ROOT / args.out
    path.write_text(json.dumps(out, indent=2) + "\n")
    print("\n| arm | chosen | minutes (pretrain + UperNet) | blr | steps | val mIoU | test mIoU [95%] |\n"
          "| --- | --- | --- | --- | --- | --- | --- |")
    for a, r in rows.items():
        print(f"| {a} | {r['option']} | {r['pretrain_minutes']} + {r['minutes']} | {r.get('blr', 1e-3):g} | {r['steps']} | "
              f"{r['val_miou']:.4f} | "
              f"{r['test_miou']:.4f} [{r['ci'][0]:.4f}, {r['ci'][1]:.4f}] |")
    for k, d in pairs.items():
        print(f"{k}: {d['diff'] * 100:+.1f} mIoU points [{d['lo'] * 100:+.1f}, {d['hi'] * 100:+.1f}] -> {d['verdict']}")
    print(f"wrote {path.relative_to(ROOT)}, {out['picture']} ({out['wall_minutes']} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
