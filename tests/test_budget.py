"""trainer.max_minutes: the run times its first steps, fixes the whole warm-up + cosine schedule to end
at the budget, records it, and a resumed run follows the same schedule to the same weights."""
import json
import shutil

import lightning  # noqa: F401  (import before any capture: its log handler keeps the stream)
import pytest
import torch
from safetensors.torch import load_file

from mimkit.train import budget
from mimkit.train.budget import budget_total_steps, read_schedule
from mimkit.train.callbacks import read_metrics
from mimkit.train.config import load_config
from mimkit.train.run import config_from_checkpoint, run_pretrain

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["model.embed_dim=32", "model.depth=1", "model.num_heads=2", "model.decoder_embed_dim=16",
        "model.decoder_depth=1", "model.decoder_num_heads=2", "trainer.enable_progress_bar=false",
        "trainer.accelerator=cpu", "run.recon_images=0", "trainer.log_every_n_steps=1", "data.limit=256",
        "data.batch_size=16", "optim.warmup_epochs=0.5", "trainer.compile=false"]


def test_total_steps_fill_what_is_left_of_the_budget():
    # 10 min, 1 min gone at step 100, 0.5 s per step: 540 s left -> 1080 more steps
    assert budget_total_steps(10, 60, 100, 0.5) == 1180
    assert budget_total_steps(10, 60, 100, 0.5, reserve_s=6) == 1168
    assert budget_total_steps(1, 70, 100, 0.5) == 101  # over budget: one more step, never fewer than done


def test_a_budget_run_fixes_its_schedule_ends_the_cosine_and_resumes_to_the_same_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(budget, "SKIP_STEPS", 2)
    monkeypatch.setattr(budget, "WINDOW_STEPS", 4)
    full = tmp_path / "full"
    run_pretrain(load_config(None, [*TINY, "trainer.max_minutes=0.12", "trainer.max_epochs=1",
                                    "run.keep_periodic=-1", f"run.dir={full}"]))
    s = read_schedule(full)
    assert s["max_minutes"] == 0.12 and s["timed_steps"] == [2, 6] and s["fixed_at_step"] == 6
    assert s["total_steps"] > 16, s  # 7 s of a tiny model is more than the one epoch max_epochs=1 says: ignored
    assert s["finished_at_step"] == s["total_steps"] and s["warmup_steps"] == 8
    last = torch.load(full / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == s["total_steps"]
    steps, lrs = read_metrics(full / "logs" / "metrics.csv")["train/lr"]
    peak = max(lrs)
    assert lrs[-1] < 0.05 * peak  # the half-cosine ran to its end at the last step
    assert steps[lrs.index(peak)] in (7, 8)  # warm-up of 8 steps, as optim.warmup_epochs=0.5 says

    cut = tmp_path / "cut"  # the same run, continued from its checkpoint after epoch 1 (schedule already fixed)
    shutil.copytree(full, cut)
    shutil.rmtree(cut / "model")
    (cut / "schedule.json").unlink()
    first = sorted((cut / "checkpoints").glob("epoch000-*.ckpt"))[0]
    run_pretrain(config_from_checkpoint(first), resume=str(first))
    assert read_schedule(cut)["total_steps"] == s["total_steps"]  # from the checkpoint, not measured again
    a, b = load_file(str(full / "model" / "model.safetensors")), load_file(str(cut / "model" / "model.safetensors"))
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_cli_minutes_flag_and_bad_budget(tmp_path, capsys):
    from mimkit.cli import main

    assert main(["pretrain", *TINY, "trainer.max_minutes=-1", f"run.dir={tmp_path / 'bad'}"]) != 0
    err = capsys.readouterr().err
    assert "trainer.max_minutes must be a number > 0" in err and "Traceback" not in err
    assert main(["pretrain", "--minutes", "0.02", *TINY, f"run.dir={tmp_path / 'ok'}"]) == 0
    s = json.loads((tmp_path / "ok" / "schedule.json").read_text())
    assert s["max_minutes"] == 0.02 and s["finished_at_step"] == s["total_steps"] >= 1
