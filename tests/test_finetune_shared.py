"""benchmarks/finetune_shared.py --tune --alt-model: the pretraining share is chosen on validation with one
more trial per side, so both sides keep the same number of trials, and the arms then run the choice."""
import argparse
import json
import sys
from pathlib import Path

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


def test_alt_model_is_one_more_trial_per_side_and_the_better_one_is_chosen(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import finetune_shared

    import mimkit
    from mimkit.eval import finetune as ft

    calls = []
    acc = {"base": 0.5, "blr4e-3": 0.6, "7.5min + blr4e-3": 0.65, "blr4e-3 + blr x2": 0.55}

    def fake(model, side, fit_aug, val_set, num_classes, minutes, *, done, on_trial, trials=None, **kw):
        out = []
        for name, over in (trials or ft.FINETUNE_TRIALS)[side][:2]:  # two first-stage trials are enough here
            if name not in done:
                calls.append((side, name, round(minutes, 3), getattr(model, "pretrain_tag", None), over))
                done[name] = {"side": side, "trial": name, "recipe": {"layer_decay": ft.BASE_LAYER_DECAY[side], **over},
                              "val_acc": acc[name], "measured_minutes": minutes}
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
    model = tagged(ROOT / CURVE.format(15) / "model")
    args = argparse.Namespace(total=30.0, tune=2.0, alt_model=CURVE.format(7.5), seed=0, batch_size=8, rerun=False,
                              tune_dir=str(tmp_path))
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
