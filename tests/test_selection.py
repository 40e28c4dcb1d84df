"""Choices on a validation split, never on the test set: frozen poolings (both, last4), the selection
of pooling and probe lr, early stopping of fine-tuning on held-out labels, scarce-label schedules,
and the quality benchmark's curve mode end to end on a tiny budget."""
import json
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

import mimkit
from mimkit.eval.features import check_pool, extract_features, frozen_pools
from mimkit.eval.selection import frozen_selected, holdout_split

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_mae():
    return mimkit.create("mae_vit_tiny_patch4_28", embed_dim=32, depth=5, num_heads=2, decoder_embed_dim=16,
                         decoder_depth=1)


def test_both_and_last4_pools_are_what_they_say():
    m = tiny_mae().eval()
    x = torch.randn(6, 1, 28, 28)
    feats, _ = extract_features(m, TensorDataset(x, torch.zeros(6)), frozen_pools(m), 4, progress=False)
    assert frozen_pools(m) == ("cls", "mean", "both", "last4")
    with torch.no_grad():
        out = m.encoder(x, output_hidden_states=True)
    tok = out.last_hidden_state
    assert torch.allclose(feats["both"], torch.cat([tok[:, 0], tok[:, 1:].mean(1)], 1), atol=1e-6)
    # hidden_states = inputs of blocks 0..4 and the normed output: the outputs of blocks 1..4 are
    # hidden_states[2:5] and the last block's output before the final norm
    with torch.no_grad():
        last = m.encoder.blocks[-1](out.hidden_states[-2])
    outs = [*out.hidden_states[2:5], last]
    want = torch.cat([torch.nn.functional.layer_norm(t, t.shape[-1:])[:, 1:].mean(1) for t in outs], 1)
    assert feats["last4"].shape == (6, 4 * 32) and torch.allclose(feats["last4"], want, atol=1e-5)
    assert not m.encoder.blocks[-1]._forward_hooks  # the taps are removed afterwards


def test_swin_has_only_mean_pooling():
    m = mimkit.create("simmim_swin_tiny_window4_32", embed_dim=16, depths=(1, 1), num_heads=(1, 2))
    assert frozen_pools(m) == ("mean",)
    for how in ("both", "last4"):
        with pytest.raises(ValueError, match="use pool 'mean'"):
            check_pool(m, how, frozen=True)
    with pytest.raises(ValueError, match="pool must be one of"):
        check_pool(m, "last4")  # a frozen-feature pooling, not a classifier's


def test_selection_uses_validation_and_reads_the_test_set_only_with_the_choice():
    """Pool 'good' separates the classes on the training and validation rows; pool 'trap' is noise there
    but perfect on the test set. The choice must be 'good', even though 'trap' would score higher on test."""
    g = torch.Generator().manual_seed(0)
    n, nt = 600, 200
    ytr, yte = torch.arange(n) % 3, torch.arange(nt) % 3
    centers = torch.eye(3) * 4
    good_tr = centers[ytr] + 0.5 * torch.randn(n, 3, generator=g)
    good_te = torch.randn(nt, 3, generator=g)  # useless on test
    trap_tr = torch.randn(n, 3, generator=g)
    trap_te = centers[yte] + 0.1 * torch.randn(nt, 3, generator=g)
    ev = frozen_selected({"good": good_tr, "trap": trap_tr}, ytr, {"good": good_te, "trap": trap_te}, yte,
                         val_size=150, num_classes=3, probe_epochs=20, labels_per_class=(20,))
    for proto in ("knn", "linear"):
        assert ev[proto]["pool"] == "good"
        assert ev[proto]["val"][next(k for k in ev[proto]["val"] if k.startswith("good"))] > 0.9
        assert ev[proto]["test"] < 0.6  # what the chosen pool gives on test, not the better trap
        assert ev["low_label"][20][proto]["pool"] == "good"
    assert set(ev["linear"]["val"]) == {"good@0.1", "good@0.4", "trap@0.1", "trap@0.4"}
    fit, val = holdout_split(600, 150)
    assert fit.tolist() == list(range(450)) and val.tolist() == list(range(450, 600))
    with pytest.raises(ValueError, match="validation split"):
        holdout_split(100, 100)


def _stripes(n, seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = 0.3 * torch.randn(n, 1, 28, 28, generator=g)
    x[y == 1, :, :, :14] += 1.5
    return TensorDataset(x, y)


def test_early_stopping_keeps_the_best_validation_epoch():
    from mimkit.eval.finetune import classifier_accuracy, finetune

    m = tiny_mae()
    train, val, test = _stripes(96, 0), _stripes(64, 1), _stripes(64, 2)
    clf, res = finetune(m, train, test, 2, epochs=4, batch_size=32, blr=3e-2, warmup_epochs=0.5, progress=False,
                        val_dataset=val)
    assert len(res["val_scores"]) == 4 and res["val_acc"] == pytest.approx(max(res["val_scores"]), abs=1e-5)
    assert res["best_epoch"] == res["val_scores"].index(max(res["val_scores"])) + 1
    assert classifier_accuracy(clf, val) == pytest.approx(res["val_acc"], abs=1e-6)  # the kept weights are the best
    assert classifier_accuracy(clf, test) == pytest.approx(res["acc"], abs=1e-6)


def test_scarce_label_schedules_fit_their_size():
    from mimkit.eval.finetune import scarce_label_schedule

    small, large = scarce_label_schedule(600), scarce_label_schedule(6000)
    assert small["epochs"] == 50 and large["epochs"] == 10 and small["batch_size"] < large["batch_size"]
    assert small["crop_scale"][0] < large["crop_scale"][0] and small["patience"] >= 3
    assert 10 <= scarce_label_schedule(60000)["epochs"] and scarce_label_schedule(10)["epochs"] == 100


@pytest.mark.slow
def test_curve_mode_end_to_end_reuses_finished_points(tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import fmnist_quality

    out = tmp_path / "q.json"
    common = ["--limit", "1200", "--test-limit", "300", "--val-size", "300", "--probe-epochs", "3", "--low-labels", "10",
              "--no-progress", "--out", str(out), "--methods", "mae", "--overrides", "model.depth=2", "model.embed_dim=32",
              "model.num_heads=2", "model.decoder_depth=1", "model.decoder_embed_dim=16", "data.batch_size=64",
              "trainer.compile=false"]
    assert fmnist_quality.main(["--curve", "0.05", *common, "--skip", "finetune"]) == 0
    q = json.loads(out.read_text())
    pt = q["curve"]["mae_vit_tiny_patch4_28"]["0.05"]
    assert pt["steps"] >= 1 and 0 <= pt["knn"] <= 1 and pt["knn_pool"] in ("cls", "mean", "both", "last4")
    assert q["crossover"]["mae_vit_tiny_patch4_28"].keys() == {"knn", "linear"}
    assert q["best"]["recipe"] == "mae_vit_tiny_patch4_28" and "10" in q["low_label"]
    assert Path(q["pictures"]["quality_vs_time"]).stat().st_size > 10_000
    capsys.readouterr()
    # a second budget: the finished 0.05-minute point is kept and its run reused, not pretrained again; then
    # scarce-label fine-tuning of the best and a 0.2-minute total shared by pretraining (0.1, reused) and fine-tuning
    assert fmnist_quality.main(["--curve", "0.05,0.1", *common, "--finetune", "--finetune-budgets", "0.2", "--pretrain-shares", "0.5",
                                "--finetune-batch-size", "64"]) == 0
    text = capsys.readouterr().out
    assert "0.05 min: a finished run of these settings" in text
    assert text.count("== mae_vit_tiny_patch4_28: pretraining, a ") == 1  # only the new 0.1-minute point
    q2 = json.loads(out.read_text())
    assert set(q2["curve"]["mae_vit_tiny_patch4_28"]) == {"0.05", "0.1"}
    assert q2["curve"]["mae_vit_tiny_patch4_28"]["0.05"]["steps"] == pt["steps"]
    low = q2["scarce_finetune"]["low_label"]["10"]
    assert low["schedule"]["epochs"] == 100 and 1 <= low["best_epoch"] <= low["epochs_run"] <= 100
    assert q2["low_label"]["10"]["finetune"] == low["finetune"]
    fb = q2["finetune_budget"]["mae_vit_tiny_patch4_28"]["0.2"]
    assert fb["chosen_share"] == 0.5 and 0 <= fb["test"] <= 1 and fb["splits"]["0.5"]["pretrain_minutes"] == 0.1
    assert q2["scratch"]["budget_minutes"] == 0.2 and q2["methods"]["mae_vit_tiny_patch4_28"]["finetune"] == fb["test"]
    md = (tmp_path / "results.md").read_text()
    assert "Crossover" in md and "from scratch" in md and "Goals" in md


def test_demo_says_where_its_run_lies_on_the_curve(tmp_path):
    from mimkit.commands.demo import curve_position

    f = tmp_path / "q.json"
    r = "mae_vit_tiny_patch4_28"
    f.write_text(json.dumps({"raw_pixels": {"knn": 0.857, "logreg": 0.844},
                             "curve": {r: {"15": {"knn": 0.82, "linear": 0.85}, "60": {"knn": 0.84, "linear": 0.87}}},
                             "crossover": {r: {"knn": None, "linear": 15.0}}}))
    lines = curve_position(r, 8.1, {"knn20_mean": 0.81, "linear_mean": 0.836}, f)
    text = "\n".join(lines)
    assert "15 min 0.820 / 0.850" in text and "60 min 0.840 / 0.870" in text
    assert "this run, 8.1 min: 0.810 / 0.836" in text and "raw pixels 0.857 / 0.844" in text
    assert "20-NN not within 60 min" in text and "linear probe from 15 min" in text
    assert curve_position("ijepa_vit_tiny_patch4_28", 8, {}, f) == [] and curve_position(r, 8, {}, tmp_path / "no") == []
