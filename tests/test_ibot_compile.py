"""With ``trainer.compile=true`` the engine compiles what a model allows: MAE's whole step, iBOT's
encoders' token passes only (its loss updates its centres in place, its masks change size), and nothing
for a model with ``compile_training = False``."""
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("recipe, compiles", [("ibot_vit_tiny_patch4_28", True), ("mae_vit_tiny_patch4_28", True),
                                              ("opt_out", False)])
def test_compile_is_skipped_for_models_that_opt_out(tmp_path, monkeypatch, recipe, compiles):
    from mimkit.train.config import load_config
    from mimkit.train.module import MIMModule
    from mimkit.train.run import run_pretrain

    calls = []
    monkeypatch.setattr(MIMModule, "compile_model", lambda self, device_type=None: calls.append(device_type))
    if recipe == "opt_out":
        from mimkit.methods.ibot import IBOT

        monkeypatch.setattr(IBOT, "compile_training", False)
        recipe = "ibot_vit_tiny_patch4_28"
    over = ["model.embed_dim=32", "model.depth=1", "model.num_heads=2", "data.limit=32", "data.batch_size=16",
            "trainer.max_steps=2", "trainer.max_epochs=1", "trainer.accelerator=cpu", "trainer.compile=true",
            "trainer.enable_progress_bar=false", f"run.dir={tmp_path / 'run'}", "run.recon_images=0"]
    run = run_pretrain(load_config(ROOT / "configs" / f"{recipe}.yaml", over))
    assert (run / "model" / "model.safetensors").exists()
    assert bool(calls) == compiles
