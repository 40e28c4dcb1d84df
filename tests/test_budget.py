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


class StepClock(lightning.Callback):
    """The budget's clock driven by the optimiser step, not real time: ``dt`` seconds per step, 20% more
    from step ``slow_at`` on (a host that slows down mid-run)."""

    def __init__(self, dt=0.05, slow_at=60):
        self.step, self.dt, self.slow_at = 0, dt, slow_at

    def seconds(self, step):
        return self.dt * (min(step, self.slow_at) + 1.2 * max(0, step - self.slow_at))

    def __call__(self):
        return self.seconds(self.step)

    def on_train_start(self, trainer, pl_module):
        self.step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.step = trainer.global_step  # before the budget callback reads the clock (added after ours)


def test_virtual_steps_are_continuous_increasing_and_end_at_the_nominal_total():
    knots = [[0, 0.0], [100, 100.0]]
    assert budget.virtual_step(knots, 37) == 37
    knots = budget.refit(knots, 40, 130)  # slower: the 60 virtual steps left now take 90 actual steps
    assert knots == [[0, 0.0], [40, 40.0], [130, 100.0]]
    assert budget.virtual_step(knots, 85) == pytest.approx(70.0)
    knots = budget.refit(knots, 85, 100)  # faster again
    vs = [budget.virtual_step(knots, s) for s in range(0, 101)]
    assert all(b > a for a, b in zip(vs, vs[1:])) and vs[40] == 40 and vs[85] == pytest.approx(70) and vs[100] == 100
    assert budget.virtual_step(knots, 120) == 100  # past the end: the schedule's end


def test_a_budget_run_ends_on_time_when_the_machine_slows_and_resumes_to_the_same_weights(tmp_path, monkeypatch):
    """A driven clock: 0.05 s per step, 20% slower from step 60 of a 7.2-second budget. The schedule is
    fixed from the first steps (too long once the machine slows), re-fitted after the warm-up, ends
    within 3% of the budget with the cosine run out, and a run resumed after a re-fit makes the same
    decisions and ends with the same weights."""
    clock = StepClock()
    monkeypatch.setattr(budget, "clock", clock)
    monkeypatch.setattr(budget, "SKIP_STEPS", 2)
    monkeypatch.setattr(budget, "WINDOW_STEPS", 4)
    monkeypatch.setattr(budget, "CHECK_EVERY", 2)
    full = tmp_path / "full"
    run_pretrain(load_config(None, [*TINY, "trainer.max_minutes=0.12", "trainer.max_epochs=1",
                                    "run.keep_periodic=-1", f"run.dir={full}"]), callbacks=[clock])
    s = read_schedule(full)
    assert s["max_minutes"] == 0.12 and s["timed_steps"] == [2, 6] and s["fixed_at_step"] == 6
    first_total = s["refits"][0]["was"]
    assert first_total == s["nominal_total"] > 16  # 7.2 s is more than the one epoch max_epochs=1 says: ignored
    assert clock.seconds(first_total) > 1.05 * 7.2  # without re-fitting, the slowdown overruns the budget
    assert all(r["step"] >= s["warmup_steps"] for r in s["refits"])  # re-timed after the warm-up, not in it
    assert abs(clock.seconds(s["finished_at_step"]) - 7.2) <= 0.03 * 7.2, s
    assert s["wall_minutes"] == pytest.approx(clock.seconds(s["finished_at_step"]) / 60, abs=1e-3)
    assert s["finished_at_step"] == s["total_steps"] and s["warmup_steps"] == 8
    last = torch.load(full / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == s["total_steps"]
    steps, lrs = read_metrics(full / "logs" / "metrics.csv")["train/lr"]
    peak = max(lrs)
    assert steps[lrs.index(peak)] in (7, 8)  # warm-up of 8 steps, as optim.warmup_epochs=0.5 says
    after = lrs[lrs.index(peak):]
    assert all(b <= a * (1 + 1e-9) for a, b in zip(after, after[1:]))  # re-fits never raise the lr
    assert lrs[-1] < 0.05 * peak  # the half-cosine ran to its end at the last step

    cut = tmp_path / "cut"  # the same run, continued from a checkpoint taken after the first re-fit
    shutil.copytree(full, cut)
    shutil.rmtree(cut / "model")
    (cut / "schedule.json").unlink()
    ckpts = sorted((cut / "checkpoints").glob("epoch*-*.ckpt"))
    after_refit = [c for c in ckpts if torch.load(c, map_location="cpu", weights_only=True)["global_step"]
                   > s["refits"][0]["step"]]
    point = after_refit[0]
    clock.step = torch.load(point, map_location="cpu", weights_only=True)["global_step"]  # the process restarts
    run_pretrain(config_from_checkpoint(point), resume=str(point), callbacks=[clock])
    r = read_schedule(cut)
    assert r["fixed_at_step"] == s["fixed_at_step"] and r["knots"] == s["knots"] and r["refits"] == s["refits"]
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


RANK_SCRIPT = """
import json, os, sys, time
import lightning
from mimkit.train import budget
from mimkit.train.config import load_config
from mimkit.train.run import run_pretrain

rank = int(os.environ["RANK"])
t0 = time.time()
budget.clock = lambda: t0 + (1 + 2 * rank) * (time.time() - t0)  # rank 1's clock runs 3x fast


class Dump(lightning.Callback):
    def on_train_end(self, trainer, pl_module):
        out = {"step": trainer.global_step, "total": pl_module.total_steps, "knots": pl_module.step_knots}
        with open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w") as f:
            json.dump(out, f)


run_pretrain(load_config(None, sys.argv[2:]), callbacks=[Dump()])
"""


def test_two_processes_take_the_same_budget_decisions_at_the_same_steps(tmp_path):
    """2 processes (gloo, torchrun) whose clocks disagree (rank 1's runs 3x fast): the decisions are
    collective at fixed steps (rank 0's clock), so neither waits in a collective the other never
    reaches, and both end with the same schedule at the same step."""
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.pop("MIMKIT_RUN_DIR", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(port), str(script), str(tmp_path), *TINY, "trainer.max_minutes=0.1",
           "trainer.strategy=ddp", "trainer.devices=2", "run.keep_periodic=-1", f"run.dir={tmp_path / 'run'}"]
    proc = subprocess.run(cmd, env=env, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0 == r1 and r0["step"] == r0["total"] > 8, (r0, r1)
    s = read_schedule(tmp_path / "run")
    assert s["total_steps"] == r0["total"] and s["knots"] == r0["knots"]
