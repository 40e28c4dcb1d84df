"""iBOT's loss updates its centres in place during the forward (as the reference), which a compiled
backward cannot allow (it recomputes the teacher's probabilities from the centre): with
``trainer.compile=true`` the engine keeps iBOT's step eager and trains, and still compiles MAE's."""
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("recipe, compiles", [("ibot_vit_tiny_patch4_28", False), ("mae_vit_tiny_patch4_28", True)])
def test_compile_is_skipped_for_models_that_opt_out(tmp_path, monkeypatch, recipe, compiles):
    from mimkit.train.config import load_config
    from mimkit.train.module import MIMModule
    from mimkit.train.run import run_pretrain

    calls = []
    monkeypatch.setattr(MIMModule, "compile_model", lambda self, device_type=None: calls.append(device_type))
    over = ["model.embed_dim=32", "model.depth=1", "model.num_heads=2", "data.limit=32", "data.batch_size=16",
            "trainer.max_steps=2", "trainer.max_epochs=1", "trainer.accelerator=cpu", "trainer.compile=true",
            "trainer.enable_progress_bar=false", f"run.dir={tmp_path / 'run'}", "run.recon_images=0"]
    run = run_pretrain(load_config(ROOT / "configs" / f"{recipe}.yaml", over))
    assert (run / "model" / "model.safetensors").exists()
    assert bool(calls) == compiles
