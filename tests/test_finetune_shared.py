"""benchmarks/finetune_shared.py --tune --alt-model: the pretraining share is chosen on validation with one
more trial per side, so both sides keep the same number of trials, and the arms then run the choice."""
import argparse
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CURVE = "results/curve/mae_vit_tiny_patch4_28-{}min"


def _data():
    from mimkit.data import TensorImages
    from mimkit.eval.folders import ReportData

    g = torch.Generator().manual_seed(0)
    lab = torch.arange(3).repeat(12)
    return ReportData(train=TensorImages(torch.randn(36, 1, 28, 28, generator=g), lab),
                      test=TensorImages(torch.randn(9, 1, 28, 28, generator=g), torch.arange(3).repeat(3)),
                      classes=["a", "b", "c"])


def _faked(monkeypatch, by_flip=None, more=None):
    """finetune_shared with trials faked (validation accuracy by trial name) and models tagged by their curve
    point: (module, calls made, the 15-minute model)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import finetune_shared

    import mimkit
    from mimkit.eval import finetune as ft

    calls = []
    acc = {"base": 0.5, "blr4e-3": 0.6, "7.5min + blr4e-3": 0.65, "blr4e-3 + blr x2": 0.55,
           "7.5min + blr4e-3 + ema 0.999": 0.62, "blr4e-3 + ema 0.999": 0.7, **(more or {})}

    def fake(model, side, fit_aug, val_set, num_classes, minutes, *, done, on_trial, trials=None, **kw):
        out = []
        for name, over in (trials or ft.FINETUNE_TRIALS)[side][:2]:  # two first-stage trials are enough here
            if name not in done:
                calls.append((side, name, round(minutes, 3), getattr(model, "pretrain_tag", None), over))
                done[name] = {"side": side, "trial": name, "recipe": {"layer_decay": ft.BASE_LAYER_DECAY[side], **over},
                              "val_acc": acc.get(name, 0.4), "measured_minutes": minutes}
                if kw.get("score_flips"):  # the same weights scored without and with flip averaging
                    done[name].update(val_acc=by_flip[name]["plain"], val_acc_by_flip=by_flip[name])
                on_trial(done[name])
            out.append(done[name])
        best = max(out, key=lambda t: t["val_acc"])
        return {"chosen": {k: best[k] for k in ("trial", "recipe", "val_acc")}, "trials": out}

    real_load = mimkit.load

    def tagged(path, **kw):  # which curve model a trial got
        m = real_load(path, **kw)
        m.pretrain_tag = Path(path).parent.name
        return m

    monkeypatch.setattr(ft, "tune_finetune", fake)
    monkeypatch.setattr(mimkit, "load", tagged)
    return finetune_shared, calls, tagged(ROOT / CURVE.format(15) / "model")


def test_alt_model_is_one_more_trial_per_side_and_the_better_one_is_chosen(tmp_path, monkeypatch):
    finetune_shared, calls, model = _faked(monkeypatch)
    args = argparse.Namespace(total=30.0, tune=2.0, alt_model=CURVE.format(7.5), seed=0, batch_size=8, rerun=False,
                              tune_dir=str(tmp_path), ema=None)
    assert finetune_shared.tune(args, model, _data(), 15.0) == 0
    got = json.loads((tmp_path / "finetune_tune_30min.json").read_text())
    second = [c for c in calls if "+" in c[1]]
    assert [(c[0], c[1]) for c in second] == [("pretrained", "7.5min + blr4e-3"), ("scratch", "blr4e-3 + blr x2")]
    assert second[0][2:4] == (1.5, CURVE.format(7.5).rsplit("/", 1)[1])  # 2 min x (30 - 7.5) / 30, the other model
    assert second[0][4]["blr"] == 4e-3 and second[1][4]["blr"] == 8e-3 and second[1][2] == 2.0
    assert got["trials_per_side"] == {"pretrained": 3, "scratch": 3}  # equal counts
    assert got["chosen"]["pretrained"]["model"] == CURVE.format(7.5) and got["chosen"]["pretrained"]["val_acc"] == 0.65
    assert got["chosen"]["scratch"]["trial"] == "blr4e-3"  # its extra trial was worse: the first choice stays
    calls.clear()  # a rerun keeps every finished trial
    assert finetune_shared.tune(args, model, _data(), 15.0) == 0 and calls == []


def test_ema_is_one_more_trial_per_side_at_the_recipe_chosen_so_far(tmp_path, monkeypatch):
    finetune_shared, calls, model = _faked(monkeypatch)
    args = argparse.Namespace(total=30.0, tune=2.0, alt_model=CURVE.format(7.5), seed=0, batch_size=8, rerun=False,
                              tune_dir=str(tmp_path), ema=0.999)
    assert finetune_shared.tune(args, model, _data(), 15.0) == 0
    got = json.loads((tmp_path / "finetune_tune_30min.json").read_text())
    last = [c for c in calls if "ema" in c[1]]
    assert [(c[0], c[1]) for c in last] == [("pretrained", "7.5min + blr4e-3 + ema 0.999"),
                                            ("scratch", "blr4e-3 + ema 0.999")]
    # the pretrained side's EMA trial runs on the model it chose (7.5 min: 2 x 22.5 / 30 minutes)
    assert last[0][2:4] == (1.5, CURVE.format(7.5).rsplit("/", 1)[1]) and last[1][2] == 2.0
    assert all(c[4]["ema"] == 0.999 and c[4]["blr"] == 4e-3 for c in last)
    assert got["trials_per_side"] == {"pretrained": 4, "scratch": 4}  # still equal counts
    assert got["chosen"]["pretrained"]["trial"] == "7.5min + blr4e-3"  # its EMA trial was worse on validation
    assert got["chosen"]["scratch"]["recipe"]["ema"] == 0.999  # better on validation: chosen
    assert got["command"].endswith("--ema 0.999")


def test_an_arm_is_kept_only_when_it_ran_the_same_recipe_on_the_same_model(tmp_path, monkeypatch):
    """A finished arm is reused by a rerun, but a changed recipe (e.g. an EMA chosen later) measures that arm
    again instead of passing the old number off as the new recipe's; another --model has its own file."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import finetune_shared

    from mimkit.eval import finetune as ft
    from mimkit.eval import folders

    runs = []

    def fake(model, train_aug, test, num_classes, minutes, **kw):
        runs.append((round(minutes, 2), kw.get("blr"), kw.get("ema")))
        return {"correct": torch.arange(9) % (2 if kw.get("ema") else 3) > 0, "minutes": minutes, "steps": 1}

    monkeypatch.setattr(ft, "finetune_for_minutes", fake)
    monkeypatch.setattr(folders, "load_report_data", lambda *a, **k: _data())

    def recipes(model=None, **pre):
        f = tmp_path / f"r{len(list(tmp_path.glob('r*.json')))}.json"
        share = {"model": model} if model else {}
        f.write_text(json.dumps({"chosen": {"pretrained": {"recipe": {"layer_decay": 0.75, "blr": 4e-3, **pre}, **share},
                                            "scratch": {"recipe": {"layer_decay": 1.0, "blr": 4e-3}}}}))
        return str(f)

    out = tmp_path / "arms.json"
    base = ["--total", "30", "--out", str(out)]
    assert finetune_shared.main(base + ["--recipes", recipes()]) == 0
    assert runs == [(15.0, 4e-3, None), (30.0, 4e-3, None)]
    assert finetune_shared.main(base + ["--recipes", recipes()]) == 0 and len(runs) == 2  # same: both kept
    for f in tmp_path.glob("arms*"):  # the result before the lever, kept to set beside the next one
        f.with_name(f.name.replace("arms", "before")).write_bytes(f.read_bytes())
    assert finetune_shared.main(base + ["--recipes", recipes(ema=0.999)]) == 0
    assert runs[2:] == [(15.0, 4e-3, 0.999)]  # only the changed arm ran again
    # what the lever gave on test, arm by arm, against the earlier result (nothing is trained again)
    assert finetune_shared.main(base + ["--recipes", recipes(ema=0.999), "--against", str(tmp_path / "before.json")]) == 0
    assert len(runs) == 3
    vs = json.loads(out.read_text())["against"]
    assert vs["pretrained"]["diff"] == pytest.approx((4 - 6) / 9) and vs["scratch"]["diff"] == pytest.approx(0.0)
    assert vs["pretrained"]["changed"]["recipe"][1]["ema"] == 0.999 and "ema" not in vs["pretrained"]["changed"]["recipe"][0]
    assert vs["scratch"]["changed"] == {} and vs["file"] == "before.json"
    assert json.loads(out.read_text())["command"].endswith("--against " + str(tmp_path / "before.json"))
    with pytest.raises(SystemExit, match="does not exist"):  # refused before anything trains
        finetune_shared.main(base + ["--recipes", recipes(lr=1e-3), "--against", str(tmp_path / "nope.json")])
    assert len(runs) == 3
    got = json.loads(out.read_text())
    assert got["arms"]["pretrained"]["recipe"]["ema"] == 0.999 and got["arms"]["scratch"]["source"] == "random init"
    assert got["pretrained_vs_scratch"]["diff"] == pytest.approx((4 - 6) / 9)  # the new pretrained arm's images
    # another method's curve model: a file of its own, so MAE's arms are never overwritten; the share a search
    # chose for MAE is not forced on it; its scratch arm (the same random init, recipe, minutes) is MAE's
    root = tmp_path / "repo"
    (root / "results").mkdir(parents=True)
    (root / "results" / "curve").symlink_to(ROOT / "results" / "curve")
    monkeypatch.setattr(finetune_shared, "ROOT", root)
    r = recipes(model=CURVE.format(7.5))
    runs.clear()
    assert finetune_shared.main(["--total", "30", "--recipes", r]) == 0
    assert runs == [(22.5, 4e-3, None), (30.0, 4e-3, None)]  # MAE: the share chosen, 7.5 + 22.5 minutes
    d2v2 = "results/curve/data2vec2_vit_tiny_patch4_28-15min"
    assert finetune_shared.main(["--total", "30", "--model", d2v2, "--recipes", r]) == 0
    assert runs[2:] == [(15.0, 4e-3, None)]  # its own 15 minutes of pretraining; scratch not run again
    assert sorted(p.name for p in (root / "results").glob("finetune_shared_*.json")) == [
        "finetune_shared_30min_tuned.json", "finetune_shared_30min_tuned_data2vec2_vit_tiny_patch4_28-15min.json"]
    got = json.loads((root / "results" / "finetune_shared_30min_tuned_data2vec2_vit_tiny_patch4_28-15min.json").read_text())
    assert got["model"] == d2v2 and got["arms"]["scratch"]["measured_in"] == "finetune_shared_30min_tuned.json"
    mae = json.loads((root / "results" / "finetune_shared_30min_tuned.json").read_text())
    assert got["arms"]["scratch"]["init"] == mae["arms"]["scratch"]["init"]
    assert got["pretrained_vs_scratch"]["diff"] == pytest.approx(0.0)  # both fakes get the same images right
    assert finetune_shared.main(["--total", "30", "--model", d2v2, "--recipes", r, "--rerun"]) == 0
    assert runs[3:] == [(15.0, 4e-3, None), (30.0, 4e-3, None)]  # --rerun: both measured again, scratch too
    got = json.loads((root / "results" / "finetune_shared_30min_tuned_data2vec2_vit_tiny_patch4_28-15min.json").read_text())
    assert "measured_in" not in got["arms"]["scratch"] and got["command"].endswith(" --rerun")  # as it was run


def test_a_scratch_arm_is_shared_only_by_the_same_random_init():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import finetune_shared

    import mimkit
    from mimkit.eval.report import random_init_like

    mae = mimkit.load(ROOT / CURVE.format(15) / "model")
    d2v2 = mimkit.load(ROOT / "results/curve/data2vec2_vit_tiny_patch4_28-15min/model")
    same = finetune_shared._init_id(random_init_like(mae, 0))
    assert finetune_shared._init_id(random_init_like(d2v2, 0)) == same  # the same ViT at seed 0
    assert finetune_shared._init_id(random_init_like(mae, 1)) != same
    assert finetune_shared._init_id(mae) != same  # the pretrained weights are not the random init
    arm = {"accuracy": 0.8, "minutes": 30.0, "layer_decay": 1.0}  # written before recipe/source/init were kept
    ran = finetune_shared._ran(arm, "scratch", {"model": CURVE.format(15), "recipes": {}}, same)
    assert ran == {"recipe": {"layer_decay": 1.0}, "source": "random init", "minutes": 30.0, "init": same}
    assert finetune_shared._ran({**arm, "init": "other"}, "scratch", {"model": None, "recipes": {}}, same)["init"] == "other"


def test_the_share_chosen_on_validation_carries_to_another_total(tmp_path, monkeypatch):
    """A search at 30 minutes that chose 15 of them for pretraining runs 30 + 30 at --total 60 (refused with the
    command that makes the 30-minute point while it is missing); another share given with --model keeps a file of
    its own, and the scratch arm, the same random init and recipe for as long, is measured once for both."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import finetune_shared

    from mimkit.eval import finetune as ft
    from mimkit.eval import folders

    runs = []

    def fake(model, train_aug, test, num_classes, minutes, **kw):
        runs.append(round(minutes, 2))
        return {"correct": torch.arange(9) % 3 > 0, "minutes": minutes, "steps": 1}

    monkeypatch.setattr(ft, "finetune_for_minutes", fake)
    monkeypatch.setattr(folders, "load_report_data", lambda *a, **k: _data())
    root = tmp_path / "repo"
    curve = root / "results" / "curve"
    curve.mkdir(parents=True)
    for m in (7.5, 15):
        (curve / Path(CURVE.format(m)).name).symlink_to(ROOT / CURVE.format(m))
    monkeypatch.setattr(finetune_shared, "ROOT", root)
    rec = root / "results" / "finetune_tune_30min.json"  # as --tune wrote it before it recorded its total
    rec.write_text(json.dumps({"command": "python benchmarks/finetune_shared.py --total 30 --tune 3",
                               "chosen": {"pretrained": {"recipe": {"layer_decay": 0.75, "blr": 4e-3}},
                                          "scratch": {"recipe": {"layer_decay": 1.0, "blr": 4e-3}}}}))
    with pytest.raises(SystemExit, match=r"mae_vit_tiny_patch4_28-30min .*fmnist_quality.py --methods "
                                         r"mae_vit_tiny_patch4_28 --curve 30`"):
        finetune_shared.main(["--total", "60", "--recipes", str(rec)])
    assert runs == []
    thirty = curve / "mae_vit_tiny_patch4_28-30min"  # a 30-minute point (its schedule says so)
    thirty.mkdir()
    (thirty / "model").symlink_to(ROOT / CURVE.format(15) / "model")
    (thirty / "schedule.json").write_text(json.dumps({"max_minutes": 30}))
    assert finetune_shared.main(["--total", "60", "--recipes", str(rec)]) == 0
    assert runs == [30.0, 60.0]  # 30 + 30 against 60 from scratch
    got = json.loads((root / "results" / "finetune_shared_60min_tuned.json").read_text())
    assert got["model"] == "results/curve/mae_vit_tiny_patch4_28-30min" and got["pretrain_minutes"] == 30.0
    assert "--model" not in got["command"]  # the rule's model: the command reproduces it
    assert finetune_shared.main(["--total", "60", "--model", CURVE.format(15), "--recipes", str(rec)]) == 0
    assert runs[2:] == [45.0]  # the other share; scratch not run again
    other = json.loads((root / "results" / "finetune_shared_60min_tuned_mae_vit_tiny_patch4_28-15min.json").read_text())
    assert other["arms"]["scratch"]["measured_in"] == "finetune_shared_60min_tuned.json"
    assert other["command"].startswith(f"python benchmarks/finetune_shared.py --total 60 --model {CURVE.format(15)}")
    assert finetune_shared.main(["--total", "30", "--recipes", str(rec)]) == 0  # at its own total: 15 + 15
    assert runs[3:] == [15.0, 30.0]
    # recipes searched at another total go to a file of their own (--out, which the command records, relative)
    at60 = root / "results" / "finetune_shared_60min_tuned_at60.json"
    assert finetune_shared.main(["--total", "60", "--recipes", str(rec), "--out", str(at60)]) == 0
    assert runs[5:] == [30.0]  # the pretrained arm; scratch is the shared arm of this total
    assert " --out results/finetune_shared_60min_tuned_at60.json" in json.loads(at60.read_text())["command"]
    assert json.loads((root / "results" / "finetune_shared_60min_tuned.json").read_text())["model"].endswith("30min")
    assert finetune_shared._share_model({"total_minutes": 30, "chosen": {"pretrained": {"model": CURVE.format(7.5)}}},
                                        120) == CURVE.format(30)  # 7.5 of 30: 30 of 120
    # another method's own search (it records its model): its arms never land in MAE's file
    d2v2 = "results/curve/data2vec2_vit_tiny_patch4_28-15min"
    (curve / Path(d2v2).name).symlink_to(ROOT / d2v2)
    own = root / "results" / "finetune_tune_30min_data2vec2_vit_tiny_patch4_28-15min.json"
    own.write_text(json.dumps({**json.loads(rec.read_text()), "model": d2v2, "total_minutes": 30}))
    mae = (root / "results" / "finetune_shared_30min_tuned.json").read_text()
    assert finetune_shared.main(["--total", "30", "--recipes", str(own)]) == 0
    assert runs[6:] == [15.0]  # its 15 minutes; the same scratch arm as MAE's
    assert (root / "results" / "finetune_shared_30min_tuned.json").read_text() == mae
    got = json.loads((root / "results" / "finetune_shared_30min_tuned_data2vec2_vit_tiny_patch4_28-15min.json").read_text())
    assert got["model"] == d2v2 and got["arms"]["scratch"]["measured_in"] == "finetune_shared_30min_tuned.json"


def test_also_is_one_more_trial_per_side_per_lever(tmp_path, monkeypatch):
    """--also KEY=VALUE: one more trial per side at the recipe each has chosen so far, with the lever; a lever
    that is no setting of the fine-tuning is refused before anything runs."""
    finetune_shared, calls, model = _faked(monkeypatch)
    args = argparse.Namespace(total=30.0, tune=2.0, alt_model=None, seed=0, batch_size=8, rerun=False,
                              tune_dir=str(tmp_path), ema=None, also=["mixup=0.2", "drop_path=0,label_smoothing=0"])
    assert finetune_shared.tune(args, model, _data(), 15.0) == 0
    got = json.loads((tmp_path / "finetune_tune_30min.json").read_text())
    levers = [c for c in calls if "+" in c[1]]
    assert [(c[0], c[1]) for c in levers] == [
        ("pretrained", "blr4e-3 + mixup 0.2"), ("scratch", "blr4e-3 + mixup 0.2"),
        ("pretrained", "blr4e-3 + drop_path 0 label_smoothing 0"), ("scratch", "blr4e-3 + drop_path 0 label_smoothing 0")]
    assert levers[0][4] == {"layer_decay": 0.75, "blr": 4e-3, "mixup": 0.2}
    assert levers[3][4] == {"layer_decay": 1.0, "blr": 4e-3, "drop_path": 0.0, "label_smoothing": 0.0}
    assert got["trials_per_side"] == {"pretrained": 4, "scratch": 4}  # equal counts
    assert got["command"].endswith("--tune-dir " + tmp_path.name + " --also mixup=0.2 --also drop_path=0,label_smoothing=0")
    with pytest.raises(SystemExit, match="--also mixup0.2: give KEY=VALUE"):
        finetune_shared.main(["--total", "30", "--tune", "2", "--also", "mixup0.2"])


def test_alt_model_repeats_one_more_trial_per_side_per_share(tmp_path, monkeypatch):
    """Two --alt-model (a 0.25 and a 0.75 share beside the 0.5 of the model searched): one more trial per side
    each, both at the recipe the search chose; scratch's extra trials scale its learning rate x2 then x0.5, so
    the counts stay equal, and the best on validation is chosen on each side."""
    finetune_shared, calls, _ = _faked(monkeypatch)
    import mimkit

    model = mimkit.load(ROOT / CURVE.format(30) / "model")
    extra = {"15min + blr4e-3": 0.62, "7.5min + blr4e-3": 0.66, "blr4e-3 + blr x2": 0.55, "blr4e-3 + blr x0.5": 0.63}
    monkeypatch.setattr(finetune_shared, "SCRATCH_LR_SCALES", (2.0, 0.5))
    args = argparse.Namespace(total=60.0, tune=2.0, alt_model=[CURVE.format(15), CURVE.format(7.5)], seed=0,
                              batch_size=8, rerun=False, tune_dir=str(tmp_path), ema=None)
    log = tmp_path / "finetune_tune_60min.jsonl"
    for name, acc in extra.items():  # their validation readings, as finished trials of an earlier run
        side = "scratch" if "blr x" in name else "pretrained"
        ld = 1.0 if side == "scratch" else 0.75
        blr = {"blr4e-3 + blr x2": 8e-3, "blr4e-3 + blr x0.5": 2e-3}.get(name, 4e-3)
        with log.open("a") as f:
            f.write(json.dumps({"side": side, "trial": name, "recipe": {"layer_decay": ld, "blr": blr}, "val_acc": acc,
                                "measured_minutes": 1.0}) + "\n")
    assert finetune_shared.tune(args, model, _data(), 30.0) == 0
    assert [c[1] for c in calls if "+" in c[1]] == []  # the four extra trials were finished: none runs again
    got = json.loads((tmp_path / "finetune_tune_60min.json").read_text())
    names = [t["trial"] for t in got["trials"]]
    assert names.count("15min + blr4e-3") == names.count("7.5min + blr4e-3") == 1
    assert got["trials_per_side"] == {"pretrained": 4, "scratch": 4}  # equal counts
    assert got["chosen"]["pretrained"]["model"] == CURVE.format(7.5) and got["chosen"]["pretrained"]["val_acc"] == 0.66
    assert got["chosen"]["scratch"]["trial"] == "blr4e-3 + blr x0.5"
    assert f"--alt-model {CURVE.format(15)} --alt-model {CURVE.format(7.5)} --tune-dir" in got["command"]
    log.unlink()  # from nothing: the trials run, the pretrained one on its own model and minutes
    (tmp_path / "finetune_tune_60min.json").unlink()
    assert finetune_shared.tune(args, model, _data(), 30.0) == 0
    second = [c for c in calls if "+" in c[1]]
    assert [(c[0], c[1], c[2]) for c in second] == [
        ("pretrained", "15min + blr4e-3", 1.5), ("scratch", "blr4e-3 + blr x2", 2.0),  # 2 x (60 - 15) / 60
        ("pretrained", "7.5min + blr4e-3", 1.75), ("scratch", "blr4e-3 + blr x0.5", 2.0)]
    assert second[2][3] == CURVE.format(7.5).rsplit("/", 1)[1] and second[3][4]["blr"] == 2e-3


def test_flip_choice_scores_the_choice_both_ways_on_the_same_weights(tmp_path, monkeypatch):
    """--flip-choice, last: one more trial per side, its choice so far (another share's model included) trained
    again without flip_tta and scored both ways; flip averaging stays in the recipe only where it scores higher
    (a tie: without), and a rerun runs nothing again."""
    by_flip = {"7.5min + blr4e-3 + flip choice": {"plain": 0.66, "flip": 0.67},
               "blr4e-3 + flip_tta 1 + flip choice": {"plain": 0.6, "flip": 0.6}}
    finetune_shared, calls, model = _faked(monkeypatch, by_flip, {"blr4e-3 + flip_tta 1": 0.61})
    args = argparse.Namespace(total=30.0, tune=2.0, alt_model=CURVE.format(7.5), seed=0, batch_size=8, rerun=False,
                              tune_dir=str(tmp_path), ema=None, also=["flip_tta=1"], flip_choice=True)
    assert finetune_shared.tune(args, model, _data(), 15.0) == 0
    flips = [c for c in calls if c[1].endswith("flip choice")]
    assert [c[:4] for c in flips] == [
        ("pretrained", "7.5min + blr4e-3 + flip choice", 1.5, CURVE.format(7.5).rsplit("/", 1)[1]),  # 2 x 22.5 / 30
        ("scratch", "blr4e-3 + flip_tta 1 + flip choice", 2.0, None)]
    assert flips[1][4] == {"layer_decay": 1.0, "blr": 4e-3}  # flip averaging never changes the training
    got = json.loads((tmp_path / "finetune_tune_30min.json").read_text())
    pre, scr = got["chosen"]["pretrained"], got["chosen"]["scratch"]
    assert pre["recipe"] == {"layer_decay": 0.75, "blr": 4e-3, "flip_tta": 1.0} and pre["val_acc"] == 0.67
    assert pre["model"] == CURVE.format(7.5) and pre["val_acc_by_flip"] == by_flip[pre["trial"]]
    assert scr["recipe"] == {"layer_decay": 1.0, "blr": 4e-3} and scr["val_acc"] == 0.6  # a tie: without
    assert got["trials_per_side"] == {"pretrained": 5, "scratch": 5}  # equal counts
    assert got["command"].endswith("--also flip_tta=1 --flip-choice")
    n = len(calls)
    assert finetune_shared.tune(args, model, _data(), 15.0) == 0 and len(calls) == n  # kept: nothing runs again
    assert json.loads((tmp_path / "finetune_tune_30min.json").read_text())["chosen"] == got["chosen"]
