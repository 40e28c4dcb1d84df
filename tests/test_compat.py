"""Files written by mimkit 0.1 (before the core refactor) keep loading and training: saved model
directories of every method give the outputs they gave then, a Lightning checkpoint loads as a model,
and ``--resume`` continues the old run to the same weights the old code reached.

The fixtures in ``tests/fixtures/v0_1`` were written by the 0.1 code itself (tiny models, perturbed
weights; the outputs on fixed images and masks were recorded beside them)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import mimkit

FIX = Path(__file__).parent / "fixtures" / "v0_1"
EXPECTED = load_file(str(FIX / "expected.safetensors"))


@pytest.mark.parametrize("method", ["mae", "simmim", "maskfeat", "simmim_swin", "beit"])
def test_saved_models_from_0_1_give_the_same_outputs(method):
    model = mimkit.load(FIX / method)
    x, mask = EXPECTED[f"{method}.images"], EXPECTED[f"{method}.mask"].bool()
    with torch.no_grad():
        out = model(x, mask=mask)
        assert torch.allclose(out.loss.reshape(1), EXPECTED[f"{method}.loss"], atol=1e-6)
        assert torch.allclose(out.pred, EXPECTED[f"{method}.pred"], atol=1e-5)
        assert torch.allclose(model.encode(x), EXPECTED[f"{method}.encode"], atol=1e-5)


def test_a_0_1_training_checkpoint_loads_and_resumes_to_the_same_weights(tmp_path):
    ckpt = FIX / "run" / "checkpoints" / "last.ckpt"
    model = mimkit.load(ckpt)
    saved = mimkit.load(FIX / "run" / "model")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), saved.state_dict().values()))
    run = tmp_path / "run"
    shutil.copytree(FIX / "run", run)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.pop("MIMKIT_RUN_DIR", None)
    r = subprocess.run([sys.executable, "-m", "mimkit.cli", "pretrain", "--resume", str(run / "checkpoints" / "last.ckpt"),
                        "trainer.max_epochs=2"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 8  # 4 steps of the old run + 4 more
    # the same weights as the 0.1 code reached resuming this very checkpoint (recorded beside it)
    ref = load_file(str(FIX / "run_resumed_to_epoch2.safetensors"))
    new = load_file(str(run / "model" / "model.safetensors"))
    assert ref.keys() == new.keys()
    for k in ref:
        assert torch.allclose(ref[k], new[k], atol=1e-6), k
