"""benchmarks/fmnist_quality.py end to end on a tiny budget: budget-true pretraining, each point judged by
mimkit report's protocols beside raw pixels and random init, with intervals and verdicts, its model and rows
kept; a later run from the committed copies alone (a fresh clone) that pretrains and evaluates only its new
point and adds it to the same JSON."""
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]
TINY = ["model.embed_dim=32", "model.depth=2", "model.num_heads=2", "model.decoder_embed_dim=16",
        "model.decoder_depth=1", "model.decoder_num_heads=2", "data.batch_size=64", "trainer.compile=false"]


def test_curve_end_to_end_and_resume(tmp_path, capsys, monkeypatch):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import fmnist_quality

    args = ["--curve", "0.04,0.08", "--limit", "600", "--test-limit", "300", "--labels-per-class", "5", "--draws", "2",
            "--probe-epochs", "2", "--no-progress", "--out", str(tmp_path / "res" / "q.json"), "--work",
            str(tmp_path / "work"), "--models", str(tmp_path / "res" / "curve"), "--rows", str(tmp_path / "res" / "rows"),
            "--overrides", *TINY]
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

    # a fresh clone has the committed copies (--models) and rows (--rows) but no work dir; a later run there with
    # budgets 0.04 (made before) and 0.06 (new): only 0.06 is pretrained and evaluated (a row's key is its weights'
    # SHA-256, not the path they were first read from), and 0.08 is kept from the JSON, with its report
    import shutil

    import mimkit.eval.report as report_module

    shutil.rmtree(tmp_path / "work")
    assert len(list((tmp_path / "res" / "rows").iterdir())) == 4  # raw pixels, the random init and the two points
    evaluated = []
    real = report_module.evaluate_row
    monkeypatch.setattr(report_module, "evaluate_row", lambda *a, **k: evaluated.append(1) or real(*a, **k))
    later = args[:]
    later[later.index("--curve") + 1] = "0.04,0.06"
    assert fmnist_quality.main(later) == 0
    text = capsys.readouterr().out
    assert text.count("reusing the finished run in") == 1 and text.count("pretraining with a") == 1
    assert len(evaluated) == 1 and len(list((tmp_path / "res" / "rows").iterdir())) == 5
    assert "keeping the earlier points" in text
    merged = json.loads((tmp_path / "res" / "q.json").read_text())
    mae = merged["curve"]["mae_vit_tiny_patch4_28"]
    assert list(mae) == ["0.04", "0.06", "0.08"] and merged["raw_pixels"] == q["raw_pixels"]
    assert mae["0.04"]["knn"] == pts["0.04"]["knn"] and mae["0.08"] == pts["0.08"]  # reused row; kept point
    assert pts["0.08"]["report"].endswith("fmnist_report/report.md")
    assert mae["0.06"]["report"].endswith("fmnist_report_mae/report.md") and merged["report"] == mae["0.06"]["report"]
    assert (tmp_path / "res" / "fmnist_report" / "report.md").exists()  # the earlier report is not overwritten
    assert set(merged["crossover"]["mae_vit_tiny_patch4_28"]) == {"knn", "linear", "logreg", "best_linear"}


def test_a_later_run_keeps_earlier_points_only_when_comparable(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import fmnist_quality

    args = fmnist_quality.parse_args(["--curve", "15", "--out", str(tmp_path / "q.json")])
    base = {"knn": {"accuracy": 0.86}, "linear": {"accuracy": 0.84}}
    old = {"settings": {k: getattr(args, k) for k in fmnist_quality.SAME}, "raw_pixels": base, "random_init": base,
           "report": "results/fmnist_report/report.md",
           "curve": {"mae": {"15": {"knn": {"accuracy": 0.9}}, "60": {"knn": {"accuracy": 0.91}}}}}
    out = tmp_path / "q.json"
    assert fmnist_quality.earlier_run(out, args) == ({}, None)  # nothing yet
    out.write_text(json.dumps(old))
    found, why = fmnist_quality.earlier_run(out, args)
    assert why is None
    kept, why = fmnist_quality.earlier_points(found, base, base, {("mae", "15")})
    assert why is None and kept == {"mae": {"60": {"knn": {"accuracy": 0.91}, "report": old["report"]}}}
    moved = {**base, "knn": {"accuracy": 0.87}}  # a baseline that moved: the earlier verdicts were paired with another
    kept, why = fmnist_quality.earlier_points(found, moved, base, set())
    assert kept == {} and "raw pixels' knn accuracy was 0.86, now 0.8700" in why
    other = fmnist_quality.parse_args(["--curve", "15", "--draws", "1"])
    assert fmnist_quality.earlier_run(out, other) == ({}, "its draws was 3, now 1")


def test_a_method_can_have_its_own_budgets(capsys):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import fmnist_quality

    a = fmnist_quality.parse_args(["--methods", "mae,ibot", "--method-curve", "ibot=15,7.5"])
    assert a.budgets == {"mae_vit_tiny_patch4_28": [7.5, 15, 60], fmnist_quality.METHODS["ibot"]: [7.5, 15]}
    for bad in ("simmim=15", "ibot=", "ibot=-1", "ibot=a,b"):  # not among --methods, no or bad minutes
        with pytest.raises(SystemExit):
            fmnist_quality.parse_args(["--methods", "mae,ibot", "--method-curve", bad])
        assert "--method-curve takes one of --methods" in capsys.readouterr().err
