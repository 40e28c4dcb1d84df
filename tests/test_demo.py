"""`mimkit demo` end to end on a tiny model: pretraining, the report's verdicts against raw pixels on
part of the real split, where the run lies on the measured curve, pictures and a results file."""
import json

from mimkit.cli import main


def test_demo_prints_the_encoder_beside_raw_pixels(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--recipe", "mae_vit_tiny_patch4_28", "--limit", "256", "--minutes", "0.05", "--report-limit", "600",
                 "model.embed_dim=32", "model.depth=1", "model.num_heads=2", "model.decoder_embed_dim=16",
                 "model.decoder_depth=1", "model.decoder_num_heads=2", "data.batch_size=64",
                 "trainer.enable_progress_bar=false", "run.report_probe_epochs=2"]) == 0
    text = capsys.readouterr().out
    r = json.loads((out / "demo_results.json").read_text())
    assert 0.6 < r["knn20_raw_pixels"] < 0.9 and 0 < r["knn20"] <= 1  # 600 train / test images of the real split
    assert f"raw pixels {r['knn20_raw_pixels']:.4f} 20-NN" in text and "points, 95% interval" in text
    assert set(r["verdicts"].values()) <= {"better", "tie", "worse"}
    assert set(r["vs_random_init"]) == {"knn", "linear"}  # what pretraining adds to the same ViT, paired
    for v in r["vs_random_init"].values():
        assert v["verdict"] in ("better", "tie", "worse") and v["lo"] <= v["diff"] <= v["hi"]
    assert "against random init, 20-NN (all labels): " + r["vs_random_init"]["knn"]["verdict"] in text
    assert any(f"20-NN: {r['knn20']:.4f}, " in line and "raw pixels" in line for line in text.splitlines())
    assert r["budget_minutes"] == 0.05 and r["steps"] >= 1  # a budget-true schedule, not epochs
    assert "0.05-minute budget" in text and "on the curve : mae" in text  # where it lies on results/fmnist_quality.json
    assert (out / "attention.png").exists() and (out / "reconstructions" / "latest.png").exists()
    assert (out / "model" / "model.safetensors").exists()


def test_demo_chooses_recipe_and_budget_on_validation_only(tmp_path):
    """The demo's recipe is the best on validation (choice_acc) at its budget, and its budget the shortest whose
    best recipe leads raw pixels by 2 points on validation; test accuracies choose nothing; recipes without a
    config are no candidates; a missing curve falls back to the defaults."""
    from mimkit.commands.demo import DEFAULT_MINUTES, DEFAULT_RECIPE, choose_on_validation

    configs = tmp_path / "configs"
    configs.mkdir()
    for r in ("a", "b"):
        (configs / f"{r}.yaml").write_text("{}")

    def pt(knn, lin, test=0.5):  # test accuracies that would choose otherwise
        return {"knn": {"choice_acc": knn, "accuracy": test}, "linear": {"choice_acc": lin, "accuracy": test}}

    curve = {"raw_pixels": pt(0.85, 0.84, 0.99),
             "curve": {"a": {"7.5": pt(0.80, 0.85, 0.99), "15": pt(0.83, 0.87, 0.99), "60": pt(0.86, 0.90, 0.99)},
                       "b": {"7.5": pt(0.82, 0.855, 0.1), "15": pt(0.80, 0.855, 0.1)},
                       "no_config": {"7.5": pt(0.99, 0.99), "15": pt(0.99, 0.99)}}}
    f = tmp_path / "q.json"
    f.write_text(json.dumps(curve))
    # 7.5 min: b is best (0.8375 vs 0.825) but leads raw pixels by only 1.5 points; 15 min: a leads by 3
    assert choose_on_validation(f, configs=configs)[:2] == ("a", 15.0)
    assert choose_on_validation(f, minutes=10, configs=configs)[:2] == ("b", 10)  # compared at 7.5 min
    assert choose_on_validation(f, minutes=90, configs=configs)[:2] == ("a", 90)  # compared at 60 min
    recipe, minutes, why = choose_on_validation(f, recipe="b", configs=configs)
    assert (recipe, minutes) == ("b", 15.0) and "recipe given" in why and "no budget up to 15 min" in why
    curve["raw_pixels"] = pt(0.80, 0.80)  # now b's 7.5-minute lead is enough
    f.write_text(json.dumps(curve))
    assert choose_on_validation(f, configs=configs)[:2] == ("b", 7.5)
    curve["random_init"] = pt(0.70, 0.85)  # a random ViT's probe as good as b's at 7.5 min: pretraining must pay
    f.write_text(json.dumps(curve))
    assert choose_on_validation(f, configs=configs)[:2] == ("a", 15.0)
    assert choose_on_validation(tmp_path / "missing.json", configs=configs)[:2] == (DEFAULT_RECIPE, DEFAULT_MINUTES)
