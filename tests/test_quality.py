"""benchmarks/fmnist_quality.py end to end on a tiny budget: budget-true pretraining, each point judged by
mimkit report's protocols beside raw pixels and random init, with intervals and verdicts, its model kept,
and a second run that reuses the finished pretraining and the evaluated rows."""
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]
TINY = ["model.embed_dim=32", "model.depth=2", "model.num_heads=2", "model.decoder_embed_dim=16",
        "model.decoder_depth=1", "model.decoder_num_heads=2", "data.batch_size=64", "trainer.compile=false"]


def test_curve_end_to_end_and_resume(tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import fmnist_quality

    args = ["--curve", "0.04,0.08", "--limit", "600", "--test-limit", "300", "--labels-per-class", "5", "--draws", "2",
            "--probe-epochs", "2", "--no-progress", "--out", str(tmp_path / "res" / "q.json"), "--work",
            str(tmp_path / "work"), "--models", str(tmp_path / "res" / "curve"), "--overrides", *TINY]
    assert fmnist_quality.main(args) == 0
    q = json.loads((tmp_path / "res" / "q.json").read_text())
    pts = q["curve"]["mae_vit_tiny_patch4_28"]
    assert set(pts) == {"0.04", "0.08"}
    for m, p in pts.items():
        assert p["steps"] >= 1 and abs(p["budget_error"]) < 1 and p["model"].endswith("model")
        assert (tmp_path / "res" / "curve" / f"mae_vit_tiny_patch4_28-{m}min" / "model" / "model.safetensors").exists()
        for proto in ("knn", "linear", "logreg", "best_linear"):
            r = p[proto]
            assert r["ci"][0] <= r["accuracy"] <= r["ci"][1] and r["labels_used"] == 600
            assert r["vs_raw"]["verdict"] in ("better", "tie", "worse")
            d = p["vs_random_init"][f"all {proto}"]  # what pretraining adds to the same ViT, paired
            assert d["lo"] <= d["diff"] <= d["hi"] and d["verdict"] in ("better", "tie", "worse")
            assert "5 " + proto in p["vs_random_init"]
            s = p["scarce"]["5"][proto]
            assert len(s["draws"]) == 2 and s["labels_used"] == 50 and "vs_raw" in s
    raw = q["raw_pixels"]
    assert raw["knn"]["choice"] in ("standardised", "[0, 1]", "per-pixel z", "half", "half per-pixel z")
    assert "vs_raw" not in raw["knn"]
    assert set(q["crossover"]["mae_vit_tiny_patch4_28"]) == {"knn", "linear", "logreg", "best_linear"}
    assert set(q["splits"]["validation"]["per_class"]) and min(q["splits"]["validation"]["per_class"].values()) > 0
    assert (tmp_path / "res" / "quality_vs_time.png").exists() and (tmp_path / "res" / "fmnist_report" / "report.md").exists()
    assert str(tmp_path) not in (tmp_path / "res" / "q.json").read_text()  # no absolute path of this machine
    capsys.readouterr()

    assert fmnist_quality.main(args) == 0  # again: the finished runs and evaluated rows are reused
    text = capsys.readouterr().out
    assert text.count("reusing the finished run") == 2 and "pretraining with a" not in text
    again = json.loads((tmp_path / "res" / "q.json").read_text())
    assert again["curve"] == q["curve"] and again["raw_pixels"] == q["raw_pixels"]

    # a fresh clone has the committed copies (--models) but no work dir: they are judged, not pretrained again
    import shutil

    shutil.rmtree(tmp_path / "work")
    assert fmnist_quality.main(args) == 0
    text = capsys.readouterr().out
    assert text.count("reusing the finished run in") == 2 and "pretraining with a" not in text
    fresh = json.loads((tmp_path / "res" / "q.json").read_text())
    assert {m: p["knn"]["accuracy"] for m, p in fresh["curve"]["mae_vit_tiny_patch4_28"].items()} == \
        {m: p["knn"]["accuracy"] for m, p in pts.items()}


def test_a_method_can_have_its_own_budgets(capsys):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import fmnist_quality

    a = fmnist_quality.parse_args(["--methods", "mae,ibot", "--method-curve", "ibot=15,7.5"])
    assert a.budgets == {"mae_vit_tiny_patch4_28": [7.5, 15, 60], fmnist_quality.METHODS["ibot"]: [7.5, 15]}
    for bad in ("simmim=15", "ibot=", "ibot=-1", "ibot=a,b"):  # not among --methods, no or bad minutes
        with pytest.raises(SystemExit):
            fmnist_quality.parse_args(["--methods", "mae,ibot", "--method-curve", bad])
        assert "--method-curve takes one of --methods" in capsys.readouterr().err
