"""Multi-process training: 2-process DDP (gloo, CPU, launched by torchrun) against one process on the
same global batch; and the rank-aware, resumable data order it relies on."""
import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mimkit.train.loader import ResumableLoader, ResumableSampler, SeededSamples, mix_seed

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.embed_dim=32", "model.depth=1", "model.num_heads=2", "model.decoder_embed_dim=16",
        "model.decoder_depth=1", "model.decoder_num_heads=2",
        "model.masking=center",  # the same mask for every sample: see the test's docstring
        "data.limit=128", "data.crop_scale=[0.3,1.0]", "trainer.max_epochs=2", "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1", "run.recon_images=0",
        "optim.blr=0.05", "optim.warmup_epochs=0.5"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _metrics(run_dir):
    with open(run_dir / "logs" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss")]
    return [(int(r["step"]), float(r["train/loss"]), float(r["train/lr"])) for r in rows]


def test_two_process_ddp_matches_one_process_on_the_same_global_batch(tmp_path):
    """torchrun, 2 ranks x batch 16 vs 1 process x batch 32. Each step the two ranks hold exactly the
    32 images of the single process's batch (same shuffle, rank r takes every 2nd item), with the same
    random crops and flips (augmentation is seeded per sample, not per process), so DDP's averaged
    gradient is the single process's gradient up to float summation order. The mask is the same for
    every sample (centre masking) because random masks are drawn per rank; lr = blr * 16 * 2 / 256
    must equal blr * 32 / 256. Losses logged by DDP are the mean over ranks (sync_dist)."""
    from mimkit.train.config import load_config
    from mimkit.train.run import run_pretrain

    ddp_dir, one_dir = tmp_path / "ddp", tmp_path / "one"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.pop("MIMKIT_RUN_DIR", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), "-m", "mimkit", "pretrain", *TINY, "data.batch_size=16",
           "trainer.strategy=ddp", "trainer.devices=2", f"run.dir={ddp_dir}"]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:  # meanwhile, the single-process reference in this process
        run_pretrain(load_config(None, [*TINY, "data.batch_size=32", f"run.dir={one_dir}"]))
        out = proc.communicate(timeout=300)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-4000:]

    m_ddp, m_one = _metrics(ddp_dir), _metrics(one_dir)
    assert len(m_one) == 2 * (128 // 32) == len(m_ddp)
    for (s1, l1, lr1), (s2, l2, lr2) in zip(m_one, m_ddp):
        assert s1 == s2
        assert lr1 == pytest.approx(lr2, rel=1e-9)  # effective batch = 16 x 2 processes
        assert l1 == pytest.approx(l2, rel=1e-5, abs=1e-6)
    assert m_one[0][2] == pytest.approx(0.05 * 32 / 256 / 2)  # first of 2 warm-up steps (half an epoch)

    a = load_file(one_dir / "model" / "model.safetensors")
    b = load_file(ddp_dir / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    # The key bias (middle third of qkv.bias) has a zero true gradient (softmax ignores a shift shared
    # by all keys): its gradient is float noise, which Adam scales up to +-lr steps. Leave it out.
    def comparable(k, t):
        if k.endswith("attn.qkv.bias"):
            d = t.shape[0] // 3
            return torch.cat([t[:d], t[2 * d:]])
        return t

    worst = max((comparable(k, a[k]) - comparable(k, b[k])).abs().max().item() for k in a)
    mid = torch.load(next((one_dir / "checkpoints").glob("epoch000-*.ckpt")), map_location="cpu",
                     weights_only=False)["state_dict"]  # after the first epoch
    moved = max((mid[f"model.{k}"] - a[k]).abs().max().item() for k in a)
    loss_gap = max(abs(l1 - l2) for (_, l1, _), (_, l2, _) in zip(m_one, m_ddp))
    print(f"DDP vs 1 process: max weight diff {worst:.2e}, weights moved {moved:.2e} in the 2nd epoch, "
          f"max loss diff {loss_gap:.2e}")
    assert worst < 2e-5, worst
    assert moved > 100 * worst  # the runs moved far, and together


def _batches(loader):
    return [batch for batch in loader]


class _Index(torch.utils.data.Dataset):
    """Item i -> (i, a random number drawn under the sample's seed)."""

    def __len__(self):
        return 50

    def __getitem__(self, i):
        return torch.tensor(i), torch.rand(())


def test_ranks_together_see_the_single_process_batches():
    ds = _Index()
    one = ResumableLoader(ds, ResumableSampler(len(ds), 8, seed=3))
    ranks = [ResumableLoader(ds, ResumableSampler(len(ds), 4, seed=3, rank=r, world_size=2)) for r in range(2)]
    for epoch in range(2):
        for dl in (one, *ranks):
            dl.sampler.set_epoch(epoch)
        b1, r0, r1 = _batches(one), _batches(ranks[0]), _batches(ranks[1])
        assert len(b1) == len(r0) == len(r1) == 50 // 8 == len(one)
        for (i, x), (i0, x0), (i1, x1) in zip(b1, r0, r1):
            assert sorted(i.tolist()) == sorted(torch.cat([i0, i1]).tolist())
            got = dict(zip(torch.cat([i0, i1]).tolist(), torch.cat([x0, x1]).tolist()))
            assert got == dict(zip(i.tolist(), x.tolist()))  # same per-sample random draws
        if epoch == 0:
            first = [i.tolist() for i, _ in b1]
    assert first != [i.tolist() for i, _ in _batches(one)]  # a new order each epoch (now epoch 1)


def test_loader_state_resumes_mid_epoch_even_on_another_world_size():
    ds = _Index()
    ref = ResumableLoader(ds, ResumableSampler(len(ds), 8, seed=1))
    ref.sampler.set_epoch(4)
    full = _batches(ref)
    it = iter(ref)
    next(it), next(it)
    state = ref.state_dict()
    assert state["epoch"] == 4 and state["position"] == 16
    # resume on 2 processes with batch 4 (the same global batch of 8)
    ranks = [ResumableLoader(ds, ResumableSampler(len(ds), 4, seed=1, rank=r, world_size=2)) for r in range(2)]
    for dl in ranks:
        dl.load_state_dict(state)
        dl.sampler.set_epoch(4)  # Lightning calls this after loading: the same epoch keeps the position
    rest = list(zip(*[_batches(dl) for dl in ranks]))
    assert len(rest) == len(full) - 2
    for (i, x), ((i0, x0), (i1, x1)) in zip(full[2:], rest):
        assert sorted(i.tolist()) == sorted(torch.cat([i0, i1]).tolist())
    # a state saved at the end of an epoch resumes at the start of the next one
    end = ResumableLoader(ds, ResumableSampler(len(ds), 8, seed=1))
    end.load_state_dict({**state, "position": 48})
    assert (end.sampler.epoch, end.sampler.start) == (5, 0)
    with pytest.raises(ValueError, match="global batch"):
        ResumableLoader(ds, ResumableSampler(len(ds), 4, seed=1)).load_state_dict(state)
    with pytest.raises(ValueError, match="images"):
        ResumableLoader(_Sized(7), ResumableSampler(7, 1, seed=1)).load_state_dict({**state, "global_batch": 1})


class _Sized(_Index):
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n


def test_per_sample_seed_is_independent_of_workers_and_global_rng():
    wrapped = SeededSamples(_Index())
    torch.manual_seed(123)
    a = wrapped[(5, mix_seed(0, 2, 5))][1]
    torch.rand(100)
    b = wrapped[(5, mix_seed(0, 2, 5))][1]
    assert a == b
    assert wrapped[(5, mix_seed(0, 3, 5))][1] != a  # another epoch, another draw
    state = torch.get_rng_state()
    wrapped[(1, 7)]
    assert torch.equal(state, torch.get_rng_state())  # the global stream is left untouched
    with pytest.raises(ValueError, match="fewer than one global batch"):
        ResumableSampler(10, 8, world_size=2)
