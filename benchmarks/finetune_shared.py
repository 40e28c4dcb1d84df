"""Pretraining + fine-tuning against the same ViT from scratch, on one shared clock (Fashion-MNIST, all labels).

For a total budget T (``--total``) and a committed curve model pretrained for P budget-true minutes
(``--model``, default MAE tiny's 15-minute point in ``results/curve``, P read from its ``schedule.json``):

* ``pretrained``: that encoder fine-tuned for T - P budget-true minutes (:func:`mimkit.eval.finetune.finetune_for_minutes`:
  layer decay 0.75, drop path 0.1, label smoothing 0.1, random-resized-crop + flip);
* ``scratch``: the same recipe at random init trained for all T minutes with the same loop (no layer decay);

each on the 60k training images with their labels, each read on the 10k test images once; the difference
carries a paired bootstrap interval and a verdict. Each arm runs alone and is kept in ``--out`` as soon as it
is in (a rerun skips finished arms; ``--rerun`` measures both again, a scratch arm of another file included).

    python benchmarks/finetune_shared.py --total 30

**Recipes tuned on validation, equal trials** (``--tune MINUTES``): each side runs the same number of trials
(:data:`mimkit.eval.finetune.FINETUNE_TRIALS`: learning rate, drop path, mixup; layer decay on the pretrained side
only; :func:`mimkit.eval.finetune.tune_finetune`, as ``mimkit report --finetune-minutes`` does),
fitted on the training images outside a per-class validation split (1/6, :func:`mimkit.eval.splits.validation_split`)
and scored on that split; the test set is not read. Trial budgets keep the shared clock's ratio: scratch
MINUTES, pretrained MINUTES * (T - P) / T. Each finished trial is a line of ``results/finetune_tune_<T>min.jsonl``
(rerun: finished trials are kept), and the best of each side is written to ``results/finetune_tune_<T>min.json``;
``--recipes that.json`` then runs the two arms with the chosen recipes. Another method's curve model (``--model``)
keeps its own trials and results (its directory's name is added to each file's name) and its own pretraining
share; with ``--recipes`` it runs the recipes chosen there (tuned for MAE: if anything a handicap for it, never
for scratch). Its scratch arm is the default model's when that one ran the same recipe for the same minutes from
the same random init (``init``, a fingerprint of the encoder's weights: the ViT-Tiny/4 of MAE and data2vec 2.0 at
seed 0 is one and the same), so one scratch measurement serves every method.

    python benchmarks/finetune_shared.py --total 60 --model results/curve/data2vec2_vit_tiny_patch4_28-15min \
        --recipes results/finetune_tune_30min.json

    python benchmarks/finetune_shared.py --total 30 --tune 4

**The pretraining share** (``--alt-model``, another curve model, e.g. the 7.5-minute point beside the default
15): after the search above, each side runs one more trial at the recipe it chose, so the counts stay equal:
the pretrained side with the other model (fine-tuned for T minus *its* pretraining, trial minutes scaled
alike), scratch with its learning rate doubled. A trial better on validation than the side's first choice
replaces it; ``--recipes`` then runs the pretrained arm from the model chosen.

    python benchmarks/finetune_shared.py --total 30 --tune 3 --alt-model results/curve/mae_vit_tiny_patch4_28-7.5min
    python benchmarks/finetune_shared.py --total 30 --recipes results/finetune_tune_30min.json

``--alt-model`` repeats: one more trial per side per model (a 0.25 and a 0.75 share beside the 0.5 of ``--model``),
each at the recipes the search chose; beside the k-th, scratch's learning rate is scaled by the k-th of
:data:`SCRATCH_LR_SCALES` (x2, x0.5, ...), so both sides keep the same number of trials.

    python benchmarks/finetune_shared.py --total 60 --tune 6 --model results/curve/mae_vit_tiny_patch4_28-30min \
        --alt-model results/curve/mae_vit_tiny_patch4_28-15min --alt-model results/curve/mae_vit_tiny_patch4_28-45min

**The share at another total**: ``--recipes`` of a search at T minutes run at another ``--total`` keep the share it
chose as a fraction: 15 of 30 chosen, 30 of 60 run (the same method's curve point for that many minutes; refused with
the command that makes it while it is missing). ``--model`` runs another share beside it, in a file of its own
against the same scratch arm.

    python benchmarks/finetune_shared.py --total 60 --recipes results/finetune_tune_30min.json

**An EMA of the weights** (``--ema DECAY``, with ``--tune``): likewise one more trial per side, each at the recipe
it has chosen so far plus a moving average of its weights (timm ``ModelEmaV3``, warm-up, decay capped at DECAY),
kept only where it is better on validation.

    python benchmarks/finetune_shared.py --total 30 --tune 3 --ema 0.999

**More levers** (``--also KEY=VALUE[,KEY=VALUE]``, repeatable, with ``--tune``): likewise, one more trial per side
per lever, at the recipe chosen so far plus those settings; ``--tune-dir`` keeps such a search apart from the one
whose recipes are already run (copy its ``.jsonl`` there first: its finished trials are not run again).

    python benchmarks/finetune_shared.py --total 60 --tune 6 --model results/curve/mae_vit_tiny_patch4_28-30min \
        --alt-model results/curve/mae_vit_tiny_patch4_28-15min --ema 0.999 --also mixup=0.2 \
        --also drop_path=0,label_smoothing=0 --tune-dir results/finetune_tune_60min_levers

**Flip averaging chosen on the same weights** (``--flip-choice``, with ``--tune``, after every other lever): one more
trial per side, its choice so far trained again (without ``flip_tta``: flip averaging changes scoring, not training)
and its validation scored both ways on the same weights (``finetune(score_flips=True)``); the recipe keeps flip
averaging only where it scores higher. Unlike ``--also flip_tta=1``, whose trial trains a second model for its own
budget-true number of steps, the two scores differ by the scoring alone.

    python benchmarks/finetune_shared.py --total 60 --tune 6 --model results/curve/mae_vit_tiny_patch4_28-30min \
        --alt-model results/curve/mae_vit_tiny_patch4_28-15min --alt-model results/curve/mae_vit_tiny_patch4_28-45min \
        --ema 0.999 --also mixup=0.2 --also drop_path=0,label_smoothing=0 --also blr=0.008 --flip-choice \
        --tune-dir results/finetune_tune_60min_flipchoice

**What a lever gave on test** (``--against EARLIER.json``): each arm's paired difference to the same arm of an
earlier result, with what changed between them, under ``against`` (a reading beside a reading: both were chosen on
validation and each read the test set once).

    python benchmarks/finetune_shared.py --total 60 --recipes results/finetune_tune_30min.json \
        --against results/finetune_shared_60min_tuned_noema.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = "results/curve/mae_vit_tiny_patch4_28-15min"
# scratch's extra trial beside each --alt-model in turn (equal counts): its chosen learning rate times these
SCRATCH_LR_SCALES = (2.0, 0.5, 4.0, 0.25)
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
    p.add_argument("--model", default=None, help=f"a curve model to fine-tune (default {DEFAULT_MODEL}, or with "
                                                   "--recipes the pretraining share they chose)")
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
    p.add_argument("--alt-model", action="append", help="with --tune, another curve model (another pretraining share "
                   "of --total): one more trial on each side, chosen on validation (repeatable; see the module doc)")
    p.add_argument("--ema", type=float, metavar="DECAY", help="with --tune, one more trial on each side: its chosen "
                                                              "recipe with an EMA of the weights (see the module doc)")
    p.add_argument("--against", metavar="EARLIER.json", help="an earlier result of this script (e.g. before a lever "
                                                             "was chosen): each arm's paired test difference to it")
    p.add_argument("--also", action="append", metavar="KEY=VALUE[,KEY=VALUE]",
                   help="with --tune, one more trial on each side per --also: its chosen recipe with these settings "
                        "(e.g. mixup=0.2 or drop_path=0,label_smoothing=0), kept only where better on validation")
    p.add_argument("--flip-choice", action="store_true", help="with --tune, last, one more trial on each side: its "
                   "choice trained again and scored with and without flip averaging on the same weights (module doc)")
    p.add_argument("--tune-dir", default=str(ROOT / "results"), help="where --tune keeps its trials and choice")
    args = p.parse_args(argv)
    for lever in args.also or []:  # a typo is refused before any trial runs
        _lever(lever)
    if args.against and not Path(args.against).exists():  # before any arm trains, not after hours of it
        raise SystemExit(f"finetune_shared: --against {args.against} does not exist; give an earlier finetune_shared_*.json")
    rec = json.loads(Path(args.recipes).read_text()) if args.recipes else {}
    chosen = rec.get("chosen", {})
    # the model the rule gives: MAE's 15-minute point, or with --recipes the pretraining share chosen on validation
    # (at another --total than the search's, the same share of this total: _share_model)
    rule = _share_model(rec, args.total) if rec else DEFAULT_MODEL
    if args.model is None:
        args.model = rule
        if not (ROOT / rule / "schedule.json").exists():
            raise SystemExit(
                f"finetune_shared: the pretraining share chosen on validation needs {rule} at --total {args.total:g}, "
                f"and it does not exist: make it with `python benchmarks/fmnist_quality.py --methods {_method(rule)} "
                f"--curve {Path(rule).name.rsplit('-', 1)[1].removesuffix('min')}`, or give --model")
    # another model than the rule's, or another method's (e.g. its own search's): its own trials and results
    other = args.model != rule or _method(args.model) != _method(DEFAULT_MODEL)
    args.model_tag = f"_{Path(args.model).name}" if other else ""
    if args.model != rule and chosen.get("pretrained", {}).get("model"):
        print(f"finetune_shared: {args.recipes} chose the share of {rule}; --model {args.model} keeps its own, "
              "with the recipes chosen", flush=True)
    model_dir = ROOT / args.model
    pre = _pretrain_minutes(model_dir)
    ft_minutes = args.total - pre
    if ft_minutes <= 0:
        raise SystemExit(
            f"finetune_shared: {args.model} was pretrained for {pre} min, not less than --total {args.total}"
        )
    model = mimkit.load(model_dir / "model")
    data = load_report_data("fashion_mnist", model, progress=False)
    if args.tune:
        return tune(args, model, data, pre)
    tag = ("_tuned" if chosen else "") + args.model_tag
    out = Path(args.out or ROOT / "results" / f"finetune_shared_{args.total:g}min{tag}.json")
    res = json.loads(out.read_text()) if out.exists() and not args.rerun else {}
    earlier = {"model": res.get("model"), "recipes": res.get("recipes", {})}  # what finished arms ran with
    res.update(
        command=f"python benchmarks/finetune_shared.py --total {args.total:g}"
        + (f" --model {args.model}" if other else "")
        + (f" --recipes {args.recipes}" if args.recipes else "")
        + (f" --out {_repo_path(out)}" if args.out else "")
        + (f" --against {args.against}" if args.against else "")
        + (" --rerun" if args.rerun else ""),
        model=args.model,
        total_minutes=args.total,
        pretrain_minutes=pre,
        **({"recipes": chosen} if chosen else {}),
    )
    train_aug = finetune_augmented(data)
    scratch = random_init_like(model, args.seed)
    init = _init_id(scratch)
    arms = {"pretrained": (model, ft_minutes, 0.75), "scratch": (scratch, args.total, 1.0)}
    correct = {}
    for name, (m, minutes, decay) in arms.items():
        cache = out.with_name(out.stem + f"_{name}.pt")
        recipe = {"layer_decay": decay, **chosen.get(name, {}).get("recipe", {})}
        source = args.model if name == "pretrained" else "random init"
        want = {"recipe": recipe, "source": source, "minutes": minutes, "init": init if name == "scratch" else None}
        arm = res.get("arms", {}).get(name)
        if arm and cache.exists():  # an arm finished earlier is kept only if it ran this recipe on this model
            ran = _ran(arm, name, earlier, init)
            if ran == want:
                correct[name] = torch.load(cache, weights_only=True)
                print(f"finetune_shared: {name} already measured ({arm['accuracy']:.4f}); kept", flush=True)
                continue
            print(f"finetune_shared: {name} ran {ran} before; now {want}: measuring it again", flush=True)
        if name == "scratch" and not args.rerun:  # the same random init, recipe and minutes, measured for another model
            base = _same_scratch(out, want, args.seed)
            if base:
                b_arm = json.loads(base.read_text())["arms"]["scratch"]
                correct[name] = torch.load(base.with_name(base.stem + "_scratch.pt"), weights_only=True)
                res.setdefault("arms", {})[name] = {**b_arm, "recipe": recipe, "source": source, "init": init,
                                                    "measured_in": b_arm.get("measured_in", base.name)}
                torch.save(correct[name], cache)
                out.write_text(json.dumps(res, indent=1))
                print(f"finetune_shared: scratch is the same random init and recipe as in {base.name} "
                      f"({b_arm['accuracy']:.4f}); kept", flush=True)
                continue
        t0 = time.time()
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
            "recipe": recipe,
            "source": source,
            **({"init": init} if name == "scratch" else {}),
            "wall_minutes": round((time.time() - t0) / 60, 2),
        }
        torch.save(r["correct"], cache)
        out.write_text(json.dumps(res, indent=1))
        print(
            f"finetune_shared: {name}: {ci['acc']:.4f} [{ci['lo']:.4f}, {ci['hi']:.4f}] after {minutes:g} min",
            flush=True,
        )
    res["pretrained_vs_scratch"] = paired_difference(correct["pretrained"], correct["scratch"])
    if args.against:
        res["against"] = _against(Path(args.against), res, correct)
    out.write_text(json.dumps(res, indent=1))
    d = res["pretrained_vs_scratch"]
    print(
        f"finetune_shared: {pre:g} min pretraining + {ft_minutes:g} min fine-tuning vs {args.total:g} min from scratch: "
        f"{d['verdict']} {100 * d['diff']:+.1f} points [{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}]"
    )
    return 0


def _against(earlier: Path, res: dict, correct: dict) -> dict:
    """What a lever gave on test: each arm minus the same arm of an earlier result (same test images, paired
    bootstrap), with what changed between the two (recipe, source model, minutes). Both configurations were
    chosen on validation and read once each; this only sets the two readings side by side."""
    import torch

    from mimkit.eval.stats import paired_difference

    old = json.loads(earlier.read_text())
    got = {"file": earlier.name}
    for name, arm in res["arms"].items():
        cache = earlier.with_name(earlier.stem + f"_{name}.pt")
        before = old.get("arms", {}).get(name)
        if not before or not cache.exists():
            continue
        now_ran = {"recipe": arm.get("recipe"), "source": arm.get("source"), "minutes": arm["minutes"]}
        was = _ran(before, name, {"model": old.get("model"), "recipes": old.get("recipes", {})}, None)
        changed = {k: [was.get(k), v] for k, v in now_ran.items() if was.get(k) != v}
        d = paired_difference(correct[name], torch.load(cache, weights_only=True))
        got[name] = {"before": before["accuracy"], "now": arm["accuracy"], "changed": changed, **d}
        print(f"finetune_shared: {name} against {earlier.name} ({changed}): {d['verdict']} "
              f"{100 * d['diff']:+.1f} points [{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}]", flush=True)
    return got


def _init_id(model) -> str:
    """A fingerprint of an encoder's weights: two methods whose random inits are the same ViT share a scratch arm."""
    import hashlib

    h = hashlib.sha256()
    for k, v in sorted(getattr(model, "encoder", model).state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _lever(text: str) -> dict:
    """``mixup=0.2,drop_path=0`` -> {"mixup": 0.2, "drop_path": 0.0}: numeric settings of the fine-tuning
    (``finetune_for_minutes`` and the ``finetune`` it calls)."""
    import inspect

    from mimkit.eval.finetune import finetune, finetune_for_minutes

    known = {k for f in (finetune_for_minutes, finetune) for k, v in inspect.signature(f).parameters.items()
             if v.default is not inspect.Parameter.empty and isinstance(v.default, (int, float))}
    out = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        if key not in known or not value:
            raise SystemExit(f"finetune_shared: --also {text}: give KEY=VALUE with KEY a setting of finetune_for_minutes "
                             f"(e.g. mixup=0.2, drop_path=0, label_smoothing=0)")
        out[key] = float(value)
    return out


def _repo_path(p: Path) -> str:
    """``p`` as a committed command names it: relative to the repository, or its bare name outside it (never a
    machine's absolute path)."""
    p, root = Path(p).resolve(), ROOT.resolve()
    return str(p.relative_to(root)) if p.is_relative_to(root) else p.name


def _ran(arm: dict, name: str, earlier: dict, init: str) -> dict:
    """What a finished arm ran: recipe, source model, minutes and (scratch) random init. Arms written before these
    were recorded read them from their file's ``recipes`` and ``model``; a scratch arm without ``init`` ran that
    file's own model's random init, passed as ``init``."""
    return {
        "recipe": arm.get("recipe", {"layer_decay": arm["layer_decay"], **earlier["recipes"].get(name, {}).get("recipe", {})}),
        "source": arm.get("source", earlier["model"] if name == "pretrained" else "random init"),
        "minutes": arm["minutes"],
        "init": arm.get("init", init) if name == "scratch" else None,
    }


def _same_scratch(out: Path, want: dict, seed: int) -> Path | None:
    """Another result of this total whose scratch arm ran ``want`` (recipe, minutes, random init): one scratch
    measurement serves every model fine-tuned against it."""
    import mimkit
    from mimkit.eval.report import random_init_like

    for f in sorted(out.parent.glob(out.name.split("min", 1)[0] + "min*.json")):
        if f == out or not f.with_name(f.stem + "_scratch.pt").exists():
            continue
        b = json.loads(f.read_text())
        arm = b.get("arms", {}).get("scratch") if isinstance(b.get("arms"), dict) else None
        if not arm or "minutes" not in arm:
            continue
        if "init" not in arm and not (ROOT / str(b.get("model")) / "model").exists():
            continue
        b_init = arm.get("init") or _init_id(random_init_like(mimkit.load(ROOT / b["model"] / "model"), seed))
        if _ran(arm, "scratch", {"model": b.get("model"), "recipes": b.get("recipes", {})}, b_init) == want:
            return f
    return None


def _method(model: str) -> str:
    """A curve model's recipe: ``results/curve/<recipe>-<M>min`` -> ``<recipe>``."""
    return Path(model).name.rsplit("-", 1)[0]


def _share_model(rec: dict, total: float) -> str:
    """The curve model a recipe search chose (its ``chosen.pretrained.model``, else the model it tuned), or at
    another total than the search's the same method's point pretrained for the same share of ``total`` (15 of 30
    chosen: 30 of 60). A search that does not say its total is taken at this one."""
    chosen = rec.get("chosen", {}).get("pretrained", {}).get("model") or rec.get("model") or DEFAULT_MODEL
    tuned = rec.get("total_minutes")
    if tuned is None and "--total " in rec.get("command", ""):  # written before the total was recorded
        tuned = float(rec["command"].split("--total ", 1)[1].split()[0])
    if tuned is None or float(tuned) == float(total):
        return chosen
    minutes = _pretrain_minutes(ROOT / chosen) * float(total) / float(tuned)
    return f"{Path(chosen).parent.as_posix()}/{_method(chosen)}-{minutes:g}min"


def _pretrain_minutes(model_dir: Path) -> float:
    """A curve model's pretraining budget (its ``schedule.json``), the share of the clock it used."""
    return float(json.loads((model_dir / "schedule.json").read_text())["max_minutes"])


def tune(args, model, data, pre: float) -> int:
    """The equal-trial search (see the module doc): validation only, one JSON line per finished trial."""
    import inspect

    import mimkit
    from mimkit.eval.finetune import FINETUNE_TRIALS, choice_sets, finetune_for_minutes, flip_chosen, tune_finetune
    from mimkit.eval.report import random_init_like
    from mimkit.eval.splits import validation_split

    fit_aug, val_set = choice_sets(data, *validation_split(data.train.labels, seed=args.seed))
    tag = getattr(args, "model_tag", "")  # another --model keeps its own trials
    log = Path(args.tune_dir) / f"finetune_tune_{args.total:g}min{tag}.jsonl"
    done = {side: {} for side in FINETUNE_TRIALS}
    if log.exists() and not args.rerun:
        for line in log.read_text().splitlines():
            t = json.loads(line)
            done[t["side"]][t["trial"]] = t
    minutes = {"pretrained": args.tune * (args.total - pre) / args.total, "scratch": args.tune}

    def keep(t):
        with log.open("a") as f:
            f.write(json.dumps(t) + "\n")
        print(
            f"finetune_shared --tune: {t['side']} {t['trial']} {t['recipe']}: validation {t['val_acc']:.4f} "
            f"({t['measured_minutes']} min)",
            flush=True,
        )

    def one_more(side, m, mins, trial, model_path=None):
        """One trial beyond the search for ``side``; it replaces the choice only when better on validation."""
        got = tune_finetune(m, side, fit_aug, val_set, data.num_classes, mins, done=done[side], on_trial=keep,
                            batch_size=args.batch_size, seed=args.seed, trials={side: (trial,)})
        if model_path:
            got["chosen"]["model"] = model_path
            for t in got["trials"]:
                t["model"] = model_path
        if got["chosen"]["val_acc"] > found[side]["chosen"]["val_acc"]:  # a tie keeps the earlier choice
            found[side]["chosen"] = got["chosen"]
        found[side]["trials"] = found[side]["trials"] + got["trials"]

    def flip_choice(side: str):
        """One more trial: the side's choice trained once more, its validation scored with and without flip
        averaging on the same weights (no second training, no step-count confound); the better way is kept in
        its recipe (a tie: without)."""
        c = found[side]["chosen"]
        recipe = {k: v for k, v in c["recipe"].items() if k != "flip_tta"}  # flip averaging never changes training
        name = f"{c['trial']} + flip choice"
        m, mins = chosen_model(side, c)
        got = tune_finetune(m, side, fit_aug, val_set, data.num_classes, mins, done=done[side], on_trial=keep,
                            batch_size=args.batch_size, seed=args.seed, trials={side: ((name, recipe),)},
                            score_flips=True)
        t = got["trials"][0]
        if c.get("model"):
            t["model"] = c["model"]
        found[side]["chosen"] = flip_chosen({**c, "trial": name, "recipe": recipe}, t)
        found[side]["trials"] = found[side]["trials"] + got["trials"]

    found = {}
    for side in FINETUNE_TRIALS:
        m = model if side == "pretrained" else random_init_like(model, args.seed)
        found[side] = tune_finetune(
            m,
            side,
            fit_aug,
            val_set,
            data.num_classes,
            minutes[side],
            done=done[side],
            on_trial=keep,
            batch_size=args.batch_size,
            seed=args.seed,
        )
    alts = [args.alt_model] if isinstance(args.alt_model, str) else list(args.alt_model or [])
    base = {s: found[s]["chosen"] for s in found}  # every share is tried at the recipes the search chose
    blr = base["scratch"]["recipe"].get("blr", inspect.signature(finetune_for_minutes).parameters["blr"].default)
    for k, alt_model in enumerate(alts):  # one more trial per side each: the other share / scratch's lr scaled
        alt_pre = _pretrain_minutes(ROOT / alt_model)
        if alt_pre >= args.total:
            raise SystemExit(f"finetune_shared: --alt-model {alt_model} was pretrained for {alt_pre} min, "
                             f"not less than --total {args.total}")
        alt = mimkit.load(ROOT / alt_model / "model")
        scale = SCRATCH_LR_SCALES[k % len(SCRATCH_LR_SCALES)]
        second = {"pretrained": (alt, args.tune * (args.total - alt_pre) / args.total,
                                 (f"{alt_pre:g}min + {base['pretrained']['trial']}", base["pretrained"]["recipe"])),
                  "scratch": (random_init_like(model, args.seed), minutes["scratch"],
                              (f"{base['scratch']['trial']} + blr x{scale:g}",
                               {**base["scratch"]["recipe"], "blr": scale * blr}))}
        for side, (m, mins, trial) in second.items():
            one_more(side, m, mins, trial, alt_model if side == "pretrained" else None)

    def chosen_model(side: str, c: dict):
        """The model and trial minutes of a side's choice so far (a pretrained choice may be another share)."""
        if side == "scratch":
            return random_init_like(model, args.seed), minutes[side]
        if c.get("model"):
            return (mimkit.load(ROOT / c["model"] / "model"),
                    args.tune * (args.total - _pretrain_minutes(ROOT / c["model"])) / args.total)
        return model, minutes[side]

    def at_choice(label: str, over: dict):
        """One more trial per side: the recipe it has chosen so far (with its model) plus ``over``."""
        for side in found:
            c = found[side]["chosen"]
            one_more(side, *chosen_model(side, c), (f"{c['trial']} + {label}", {**c["recipe"], **over}), c.get("model"))

    if args.ema:  # the recipe chosen so far plus an EMA of the weights
        at_choice(f"ema {args.ema:g}", {"ema": args.ema})
    for lever in getattr(args, "also", None) or []:  # likewise, each --also in turn
        at_choice(lever.replace("=", " ").replace(",", " "), _lever(lever))
    if getattr(args, "flip_choice", False):  # last: flip averaging chosen on the same weights
        for side in found:
            flip_choice(side)
    chosen = {side: f["chosen"] for side, f in found.items()}
    out = Path(args.tune_dir) / f"finetune_tune_{args.total:g}min{tag}.json"
    out.write_text(
        json.dumps(
            {
                "command": f"python benchmarks/finetune_shared.py --total {args.total:g} --tune {args.tune:g}"
                + (f" --model {args.model}" if tag else "")
                + "".join(f" --alt-model {a}" for a in alts)
                + (f" --tune-dir {_repo_path(Path(args.tune_dir))}"
                   if Path(args.tune_dir).resolve() != (ROOT / "results").resolve() else "")
                + (f" --ema {args.ema:g}" if args.ema else "")
                + "".join(f" --also {lever}" for lever in getattr(args, "also", None) or [])
                + (" --flip-choice" if getattr(args, "flip_choice", False) else ""),
                "model": getattr(args, "model", None) or DEFAULT_MODEL,
                "total_minutes": args.total,
                "trials_per_side": {side: len(f["trials"]) for side, f in found.items()},
                "trial_minutes": {s: round(v, 2) for s, v in minutes.items()},
                "chosen": chosen,
                "trials": [t for f in found.values() for t in f["trials"]],
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
