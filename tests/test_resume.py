"""Exact resume: a run killed with SIGKILL mid-epoch and resumed from its last checkpoint ends with
bit-identical weights to an uninterrupted run (CPU, same thread count, deterministic settings).

The pieces that make it exact: Lightning restores weights, optimiser, scheduler and loop counters;
mimkit's ResumableLoader state (epoch, position in the shuffled order) is saved in the checkpoint and
restored, so the resumed run continues with the next unseen batch; augmentations are seeded per sample
(seed, epoch, index) and the step's random state (mask noise) per (seed, rank, epoch, batch), so no RNG
state needs saving at all."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning  # noqa: F401  (import before any output capture)
import torch
from safetensors.torch import load_file

from conftest import sigkill_at_marker

TINY = ["model.embed_dim=32", "model.depth=1", "model.num_heads=2", "model.decoder_embed_dim=16",
        "model.decoder_depth=1", "model.decoder_num_heads=2", "data.limit=128", "data.batch_size=16",
        "trainer.max_epochs=2", "trainer.enable_progress_bar=false", "trainer.deterministic=true",
        "trainer.accelerator=cpu", "run.recon_images=0", "run.checkpoint_every_n_steps=5", "optim.blr=0.05",
        "data.crop_scale=[0.3,1.0]", "trainer.log_every_n_steps=1"]
STEPS_PER_EPOCH = 128 // 16
HANG_AT = 13  # killed after 13 optimiser steps: last checkpoint at step 10 = epoch 1, batch 2 (mid-epoch)

# Runs `mimkit pretrain` (mimkit.cli.main) in a fresh interpreter; with HANG_AT set, the process
# announces (marker file) that it finished that step and then blocks, so the test can SIGKILL it at a
# known point instead of racing a timer.
LAUNCH = r"""
import os, sys, time, pathlib
hang = os.environ.get("MIMKIT_TEST_HANG_AT")
if hang:
    import mimkit.train.module as m
    def on_train_batch_end(self, outputs, batch, batch_idx):
        if self.global_step == int(hang):
            pathlib.Path(os.environ["MIMKIT_TEST_MARKER"]).write_text(str(self.global_step))
            time.sleep(600)
    m.MIMModule.on_train_batch_end = on_train_batch_end
from mimkit.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _env(**extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore", **extra)
    env.pop("MIMKIT_RUN_DIR", None)
    return env


def _launch(args, **env):
    return subprocess.Popen([sys.executable, "-c", LAUNCH, "pretrain", *args], env=_env(**env),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=Path(__file__).resolve().parents[1])


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path):
    full_dir, cut_dir = tmp_path / "full", tmp_path / "cut"
    marker = tmp_path / "reached"
    # the run to be killed starts in a subprocess; meanwhile the uninterrupted one runs here (also on
    # one thread: the same thread count gives the same float reductions)
    cut = _launch([*TINY, f"run.dir={cut_dir}"], MIMKIT_TEST_HANG_AT=str(HANG_AT), MIMKIT_TEST_MARKER=str(marker))
    try:
        from mimkit.train.config import load_config
        from mimkit.train.run import run_pretrain

        threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
        torch.set_num_threads(1)
        try:
            run_pretrain(load_config(None, [*TINY, f"run.dir={full_dir}"]))
        finally:  # trainer.deterministic switches torch's flag on for the whole process
            torch.set_num_threads(threads)
            torch.use_deterministic_algorithms(det)
    except BaseException:
        cut.kill()
        raise
    sigkill_at_marker(cut, marker, HANG_AT)
    assert cut.returncode == -signal.SIGKILL
    assert not (cut_dir / "model").exists()  # it really died before the end

    last = cut_dir / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 10  # the step checkpoint before the kill, not the killed step
    loader_state = ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    assert loader_state["epoch"] == 1 and loader_state["position"] == 2 * 16  # mid-epoch: 2 of 8 batches
    assert 10 % STEPS_PER_EPOCH != 0
    assert not [p for p in (cut_dir / "checkpoints").iterdir() if p.name.endswith(".tmp")]

    resumed = _launch(["--resume", str(last)])
    out_r = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, out_r[-3000:]

    a = load_file(full_dir / "model" / "model.safetensors")
    b = load_file(cut_dir / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k}: max diff {(a[k] - b[k]).abs().max().item()}"
    # and training really moved the weights (the comparison is not between two untouched inits)
    init = torch.load(cut_dir / "checkpoints" / "epoch000-step0000008.ckpt", map_location="cpu", weights_only=False)
    moved = max((init["state_dict"][f"model.{k}"] - a[k]).abs().max().item() for k in a)
    assert moved > 1e-3
    end = torch.load(full_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert end["global_step"] == 2 * STEPS_PER_EPOCH

    # the loss history survives the resume: rows logged before the checkpoint are kept (the CSV
    # logger would delete them), the re-trained steps 10-12 appear once, and every value equals the
    # uninterrupted run's
    from mimkit.train.callbacks import read_metrics

    steps_f, loss_f = read_metrics(full_dir / "logs" / "metrics.csv")["train/loss"]
    steps_c, loss_c = read_metrics(cut_dir / "logs" / "metrics.csv")["train/loss"]
    assert steps_c == steps_f == [float(i) for i in range(2 * STEPS_PER_EPOCH)]
    assert loss_c == loss_f
