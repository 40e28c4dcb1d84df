"""`mimkit demo` end to end on a tiny model: pretraining, the report's verdicts against raw pixels on
part of the real split, where the run lies on the measured curve, pictures and a results file."""
import json

from mimkit.cli import main


def test_demo_prints_the_encoder_beside_raw_pixels(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--recipe", "mae_vit_tiny_patch4_28", "--limit", "256", "--minutes", "0.05", "--report-limit", "600",
                 "model.embed_dim=32", "model.depth=1", "model.num_heads=2", "model.decoder_embed_dim=16",
                 "model.decoder_depth=1", "model.decoder_num_heads=2", "data.batch_size=64",
                 "trainer.enable_progress_bar=false"]) == 0
    text = capsys.readouterr().out
    r = json.loads((out / "demo_results.json").read_text())
    assert 0.6 < r["knn20_raw_pixels"] < 0.9 and 0 < r["knn20"] <= 1  # 600 train / test images of the real split
    assert f"raw pixels {r['knn20_raw_pixels']:.4f} 20-NN" in text and "points, 95% interval" in text
    assert set(r["verdicts"].values()) <= {"better", "tie", "worse"}
    assert any(f"20-NN: {r['knn20']:.4f}, " in line and "raw pixels" in line for line in text.splitlines())
    assert r["budget_minutes"] == 0.05 and r["steps"] >= 1  # a budget-true schedule, not epochs
    assert "0.05-minute budget" in text and "on the curve : mae" in text  # where it lies on results/fmnist_quality.json
    assert (out / "attention.png").exists() and (out / "reconstructions" / "latest.png").exists()
    assert (out / "model" / "model.safetensors").exists()
