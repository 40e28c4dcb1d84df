"""The training engine: lr scaling, warm-up + cosine, weight-decay groups (FSDP-safe), gradient
accumulation, checkpoint files (atomic writes, last.ckpt, retention), FSDP wrapping policy, run dirs."""
import math
import os
from pathlib import Path
from types import SimpleNamespace

import lightning  # noqa: F401  (import before any capture: its log handler keeps the stream)
import pytest
import torch
from safetensors.torch import load_file

import mimkit
from mimkit.train.callbacks import AtomicCheckpointIO
from mimkit.train.config import load_config
from mimkit.train.module import MIMModule, no_decay_set, param_groups, warmup_cosine
from mimkit.train.run import block_classes, build_strategy, run_dir_for, run_pretrain, stepping_batches

TINY = ["model.embed_dim=32", "model.depth=1", "model.num_heads=2", "model.decoder_embed_dim=16",
        "model.decoder_depth=1", "model.decoder_num_heads=2", "trainer.enable_progress_bar=false",
        "trainer.accelerator=cpu", "run.recon_images=0", "trainer.log_every_n_steps=1", "data.limit=64"]
SMALL = dict(embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)


pytestmark = pytest.mark.usefixtures("one_thread")


def _module(optim=None, batch=32, accumulate=1, world=1):
    o = {"lr": None, "blr": 1.5e-4, "lr_batch_base": 256, "min_lr": 0.0, "weight_decay": 0.05,
         "betas": [0.9, 0.95], "warmup_epochs": 1.0, "fused": False, **(optim or {})}
    m = MIMModule({"recipe": "mae_vit_tiny_patch4_28", **SMALL}, o, batch)
    m._trainer = SimpleNamespace(accumulate_grad_batches=accumulate, world_size=world)
    return m


def test_lr_scales_with_the_effective_batch():
    # lr = blr * batch * accumulate * world_size / 256 (MAE)
    assert _module(batch=32, accumulate=4, world=8).effective_lr() == pytest.approx(1.5e-4 * 1024 / 256)
    assert _module(batch=64).effective_lr() == pytest.approx(1.5e-4 * 64 / 256)
    assert _module(batch=64, world=2).effective_lr() == pytest.approx(_module(batch=128).effective_lr())
    assert _module({"lr": 3e-3}, batch=64, world=4).effective_lr() == 3e-3  # absolute lr is not scaled
    assert _module({"lr_batch_base": 512}, batch=64).effective_lr() == pytest.approx(1.5e-4 * 64 / 512)


def test_warmup_then_half_cosine():
    warm, total, lo = 10, 110, 0.1
    f = [warmup_cosine(s, warm, total, lo) for s in range(total + 5)]
    assert f[:warm] == pytest.approx([(s + 1) / warm for s in range(warm)])  # linear, reaching 1
    assert f[warm] == pytest.approx(1.0)
    assert f[warm + 50] == pytest.approx(lo + (1 - lo) * 0.5)  # half-way down the cosine
    assert f[total] == pytest.approx(lo) and f[-1] == pytest.approx(lo)  # floor, held after the end
    assert all(a >= b for a, b in zip(f[warm:], f[warm + 1:]))
    assert f[warm + 25] == pytest.approx(lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi / 4)))


def test_no_weight_decay_on_norms_biases_tokens_and_positions():
    model = mimkit.create("mae_vit_tiny_patch4_28", **SMALL)
    model.encoder.pos_embed.requires_grad_(True)  # as a learned table would be
    names = {id(p): n for n, p in model.named_parameters()}
    skip, decay = param_groups(model, 0.05)
    assert skip["weight_decay"] == 0.0 and decay["weight_decay"] == 0.05
    skip_n, decay_n = {names[id(p)] for p in skip["params"]}, {names[id(p)] for p in decay["params"]}
    assert {"encoder.cls_token", "encoder.pos_embed", "decoder.mask_token"} <= skip_n
    assert all(n.endswith(".bias") or "norm" in n or n in {"encoder.cls_token", "encoder.pos_embed",
                                                              "decoder.mask_token"} for n in skip_n), skip_n
    assert all(n.endswith(".bias") for n in skip_n if "norm" not in n and "token" not in n and "pos" not in n)
    assert {n for n in names.values() if "norm" in n or n.endswith(".bias")} <= skip_n
    assert decay_n and all(n.endswith(".weight") and "norm" not in n for n in decay_n)
    assert all(p.ndim >= 2 for p in decay["params"])
    assert "decoder.decoder_pos_embed" not in skip_n | decay_n  # fixed sin-cos: not trained at all


class _Wrapped(torch.nn.Module):
    """What FSDP(use_orig_params=True) does to a block, as seen by named_parameters(): an extra
    ``_fsdp_wrapped_module`` level and flat 1-D shards instead of the original shapes."""

    def __init__(self, block):
        super().__init__()
        self._fsdp_wrapped_module = block
        for mod in block.modules():
            for k, p in list(mod._parameters.items()):
                if p is not None:
                    mod._parameters[k] = torch.nn.Parameter(p.detach().reshape(-1)[: max(1, p.numel() // 2)].clone())


def test_weight_decay_groups_survive_fsdp_flattening():
    model = mimkit.create("mae_vit_tiny_patch4_28", **SMALL)
    keep = no_decay_set(model)  # computed on the plain model, as MIMModule does in __init__
    expected = {n for n in keep if ".blocks." in n or "decoder_blocks" in n}
    for blocks in (model.encoder.blocks, model.decoder.decoder_blocks):
        for i in range(len(blocks)):
            blocks[i] = _Wrapped(blocks[i])
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.ndim == 1 for n, p in model.named_parameters() if "_fsdp_wrapped_module" in n)
    skip, decay = param_groups(model, 0.05, keep)
    got = {names[id(p)].replace("_fsdp_wrapped_module.", "") for p in skip["params"]}
    assert expected <= got
    assert any("attn.qkv.weight" in names[id(p)] for p in decay["params"])  # still decayed though 1-D
    naive = param_groups(model, 0.05)  # shapes alone would stop decaying every block weight
    assert not any("_fsdp_wrapped_module" in names[id(p)] for p in naive[1]["params"])


def _kept(k, t):  # leave out the key bias: zero true gradient, so Adam amplifies float noise there
    if k.endswith("attn.qkv.bias"):
        d = t.shape[0] // 3
        return torch.cat([t[:d], t[2 * d:]])
    return t


def test_gradient_accumulation_equals_the_large_batch(tmp_path):
    common = [*TINY, "model.masking=center", "trainer.max_epochs=1", "optim.blr=0.05"]
    a = run_pretrain(load_config(None, [*common, "data.batch_size=16", f"run.dir={tmp_path / 'big'}"]))
    b = run_pretrain(load_config(None, [*common, "data.batch_size=8", "trainer.accumulate_grad_batches=2",
                                        f"run.dir={tmp_path / 'acc'}"]))
    wa, wb = load_file(a / "model" / "model.safetensors"), load_file(b / "model" / "model.safetensors")
    ca = torch.load(a / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    cb = torch.load(b / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ca["global_step"] == cb["global_step"] == 4
    # the same effective lr (blr * 8 * 2 / 256) and the same updates
    assert ca["lr_schedulers"][0]["base_lrs"] == cb["lr_schedulers"][0]["base_lrs"] == [0.05 * 16 / 256] * 2
    init = mimkit.create("mae_vit_tiny_patch4_28", **{**SMALL, "depth": 1, "masking": "center"}).state_dict()
    worst = max((_kept(k, wa[k]) - _kept(k, wb[k])).abs().max().item() for k in wa)
    moved = max((_kept(k, wa[k]) - _kept(k, init[k])).abs().max().item() for k in wa)
    assert worst < 2e-5 and moved > 1e-3


def test_checkpoints_are_written_atomically_and_kept(tmp_path, monkeypatch):
    written = []
    save = AtomicCheckpointIO.save_checkpoint

    def spy(self, checkpoint, path, storage_options=None):
        written.append(Path(path).name)
        return save(self, checkpoint, path, storage_options)

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", spy)
    run = run_pretrain(load_config(None, [*TINY, "data.batch_size=16", "trainer.max_epochs=3",
                                          "run.checkpoint_every_n_steps=3", "run.keep_periodic=2",
                                          f"run.dir={tmp_path / 'r'}"]))
    files = sorted(p.name for p in (run / "checkpoints").iterdir())
    # periodic files (the 2 newest kept), last.ckpt (a real file, not a link); nothing half-written
    assert files == ["epoch001-step0000008.ckpt", "epoch002-step0000012.ckpt", "last.ckpt"]
    assert not (run / "checkpoints" / "last.ckpt").is_symlink()
    assert set(files) <= set(written) and "epoch000-step0000004.ckpt" in written
    assert written.count("last.ckpt") >= 4  # step checkpoints (3, 6, 9) and epoch ends
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 12
    assert oct((run / "checkpoints" / "last.ckpt").stat().st_mode & 0o777) != oct(0o600)
    model = mimkit.load(run)  # a run directory loads (model/)
    assert torch.isfinite(model(torch.rand(2, 1, 28, 28)).loss)


def test_a_crash_during_a_checkpoint_write_leaves_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1}, path)
    before = path.read_bytes()

    def dies_half_way(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"PK\x03\x04 partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(OSError, match="No space"):
        io.save_checkpoint({"step": 2}, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temporary file left


def test_stepping_batches_matches_lightnings_formula():
    t = SimpleNamespace(max_epochs=3, max_steps=-1, world_size=2, limit_train_batches=1.0, accumulate_grad_batches=3)
    assert stepping_batches(t, 1000, 16) == math.ceil((1000 // 32) / 3) * 3
    t.limit_train_batches = 5
    assert stepping_batches(t, 1000, 16) == math.ceil(5 / 3) * 3
    t.max_steps = 4
    assert stepping_batches(t, 1000, 16) == 4
    t.max_epochs = -1
    assert stepping_batches(t, 1000, 16) == 4


def test_fsdp_wraps_every_transformer_block():
    from lightning.pytorch.strategies import FSDPStrategy
    from timm.models.swin_transformer import SwinTransformerBlock
    from timm.models.vision_transformer import Block

    cfg = load_config(None, ["trainer.strategy=fsdp", "trainer.activation_checkpointing=true",
                             "trainer.fsdp_sharding=SHARD_GRAD_OP"])
    s = build_strategy(cfg, mimkit.create("mae_vit_tiny_patch4_28", **SMALL))
    assert isinstance(s, FSDPStrategy)
    assert s.kwargs["auto_wrap_policy"]._module_classes == {Block}  # encoder and decoder blocks
    assert s._activation_checkpointing_kwargs["auto_wrap_policy"]._module_classes == {Block}
    assert s.sharding_strategy.name == "SHARD_GRAD_OP" and s.kwargs["use_orig_params"]
    assert block_classes(mimkit.create("simmim_swin_tiny_window4_32")) == {SwinTransformerBlock}
    assert build_strategy(load_config(None, ["trainer.strategy=ddp"]), None) == "ddp"


def test_run_directory_is_the_same_on_every_process(monkeypatch):
    cfg = load_config(None, [])
    for var in ("MIMKIT_RUN_DIR", "SLURM_JOB_ID", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert run_dir_for(cfg, "mae") == Path("runs/mae-slurm4242")
    monkeypatch.delenv("SLURM_JOB_ID")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "abc")
    assert run_dir_for(cfg, "mae") == Path("runs/mae-abc")
    monkeypatch.setenv("MIMKIT_RUN_DIR", "/x/y")
    assert run_dir_for(cfg, "mae") == Path("/x/y")
    cfg["run"]["dir"] = "mine"
    assert run_dir_for(cfg, "mae") == Path("mine")


def test_max_time_stops_with_a_checkpoint(tmp_path):
    run = run_pretrain(load_config(None, [*TINY, "data.batch_size=8", "trainer.max_epochs=1000",
                                          "trainer.max_time={seconds: 2}", f"run.dir={tmp_path / 't'}"]))
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert 0 < last["global_step"] < 1000 * 8
    assert (run / "model" / "model.safetensors").exists()
    assert os.environ.get("MIMKIT_RUN_DIR") is None


def test_fused_optimizer_skips_a_non_finite_step_and_reports_it_one_step_later():
    """Fused AdamW (the CUDA default) gets the finiteness flag as ``found_inf``: the bad update is skipped
    inside the kernel, with no host read that step; the error comes at the next check."""
    from mimkit.train.module import NonFiniteLossError

    m = _module()
    m._trainer = SimpleNamespace(world_size=1, global_step=3, current_epoch=1,
                                 fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(_batches_that_stepped=3)))
    params = [p for p in m.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=0.1, fused=True)

    def step(loss, grad):
        for p in params:
            p.grad = torch.full_like(p, grad)
        m._step_losses = [torch.tensor(loss)]
        m.on_before_optimizer_step(opt)
        opt.step()

    before = [p.detach().clone() for p in params]
    step(float("nan"), float("nan"))  # no error yet: the flag has not been read
    assert all(torch.equal(a, p) for a, p in zip(before, params))  # ...but the update was skipped
    assert all(int(s["step"]) == 0 for s in opt.state.values())
    with pytest.raises(NonFiniteLossError, match=r"loss became nan at step 3 \(epoch 1\)"):
        m.on_save_checkpoint({})  # before any checkpoint is written
    m.on_save_checkpoint({})  # reported once
    step(0.5, 1.0)  # a finite step updates as usual
    assert not any(torch.equal(a, p) for a, p in zip(before, params) if p.ndim > 1)
    m.raise_if_non_finite()


def test_non_finite_loss_on_another_process_stops_this_one_too():
    from mimkit.train.module import NonFiniteLossError

    m = _module()
    votes = []

    class Strategy:
        def reduce_boolean_decision(self, ok, all=True):
            votes.append((ok, all))
            return False  # another rank saw NaN

    m._trainer = SimpleNamespace(world_size=2, strategy=Strategy(), global_step=7, current_epoch=0,
                                 fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(_batches_that_stepped=7)))
    m._step_losses = [torch.tensor(0.5), torch.tensor(0.4)]  # finite here (accumulated micro-batches)
    with pytest.raises(NonFiniteLossError, match="non-finite on another process"):
        m.on_before_optimizer_step(None)
    assert votes == [(True, True)] and m._step_losses == []
    m._trainer.world_size = 1
    m._step_losses = [torch.tensor(0.5), torch.tensor(float("inf"))]
    with pytest.raises(ValueError, match="loss became inf"):  # a ValueError too: the CLI prints one line
        m.on_before_optimizer_step(None)
    m._step_losses = [torch.tensor(0.5)]
    m.on_before_optimizer_step(None)  # finite: nothing happens


@pytest.mark.parametrize("tune", [True, False])
def test_cpu_training_tunes_the_allocator_unless_told_not_to(tmp_path, monkeypatch, tune):
    import mimkit.train.allocator as allocator

    calls = []
    monkeypatch.setattr(allocator, "tune_cpu_allocator", lambda device=None: calls.append(str(device)) or True)
    run_pretrain(load_config(None, [*TINY, "data.batch_size=8", "trainer.max_steps=1", "trainer.max_epochs=1",
                                    f"trainer.tune_cpu_malloc={str(tune).lower()}", f"run.dir={tmp_path / 'r'}"]))
    assert calls == (["cpu"] if tune else [])


ALLOC_PROBE = """
import ctypes, sys
sys.path.insert(0, {root!r})
if sys.argv[1] == "tuned":
    from mimkit.train.allocator import tune_cpu_allocator
    assert tune_cpu_allocator("cpu") and not tune_cpu_allocator("cuda")
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
faults = lambda: int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[7])
n = 20 << 20  # two activation-sized blocks a step, as a training step allocates and frees them
for step in range(6):
    if step == 2:
        f0 = faults()
    a, b = libc.malloc(n), libc.malloc(n)
    libc.memset(a, 1, n); libc.memset(b, 1, n)
    libc.free(a); libc.free(b)
print(faults() - f0)
"""


def test_allocator_tuning_stops_page_faulting_freed_memory_in_again():
    """Freed 20 MiB blocks are reused after tuning; untouched glibc trims and page-faults them in every
    step (what made CPU training slow). Run in fresh processes, so the test's own heap does not matter."""
    import ctypes
    import subprocess
    import sys
    from pathlib import Path

    try:
        ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        pytest.skip("not glibc")
    if not sys.platform.startswith("linux"):
        pytest.skip("not Linux")
    code = ALLOC_PROBE.format(root=str(Path(__file__).resolve().parents[1]))
    faults = {mode: int(subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True,
                                       check=True).stdout) for mode in ("plain", "tuned")}
    pages = 4 * (2 * (20 << 20) // 4096)  # the 4 measured steps' two blocks, page by page
    assert faults["plain"] > pages // 2, faults  # the baseline really page-faults
    assert faults["tuned"] < pages // 20, faults


@pytest.mark.parametrize("flag", [1.0, 0.0])
def test_fused_adamw_skips_on_found_inf(flag):
    """The torch behaviour ``skip_step_if`` relies on: fused Adam/AdamW read ``optimizer.found_inf`` and
    leave parameters, moments and the step count untouched where it is set. If torch changes this, the
    sync-free NaN check would silently apply bad updates: this test then fails."""
    from mimkit.train.module import skip_step_if

    w = torch.nn.Parameter(torch.ones(4))
    opt = torch.optim.AdamW([w], lr=0.1, fused=True)
    for step in range(2):
        w.grad = torch.full_like(w, 0.5)
        assert skip_step_if(opt, torch.tensor(flag if step else 0.0))
        opt.step()
    after_first = 1.0 - 0.1 * (1.0 + 0.01)  # one AdamW step: lr * (m_hat / sqrt(v_hat) + wd * w)
    state = opt.state[w]
    if flag:
        assert torch.allclose(w, torch.full_like(w, after_first), atol=1e-6) and int(state["step"]) == 1
    else:
        assert w[0] < after_first - 0.05 and int(state["step"]) == 2
    assert not skip_step_if(torch.optim.AdamW([w], lr=0.1), torch.tensor(1.0))  # only fused optimisers honour it


@pytest.mark.parametrize("max_epochs,total", [(10, 1000), (-1, 1000), (50, 1000)])
def test_warmup_counts_epochs_of_optimizer_steps_even_when_max_steps_ends_the_run(max_epochs, total):
    """optim.warmup_epochs is epochs of optimiser steps (here 1 epoch = 100 steps), whether the run is
    bounded by epochs, by max_steps alone (max_epochs=-1), or by max_steps before the last epoch."""
    m = _module(optim={"lr": 1.0, "warmup_epochs": 2.0})
    m._trainer = SimpleNamespace(accumulate_grad_batches=1, world_size=1, max_epochs=max_epochs,
                                 estimated_stepping_batches=total)
    m.total_steps_hint, m.steps_per_epoch_hint = total, 100
    sched = m.configure_optimizers()["lr_scheduler"]["scheduler"]
    lrs = [sched.lr_lambdas[0](s) for s in (0, 99, 199, 200, 999)]
    assert lrs[0] == pytest.approx(1 / 200) and lrs[1] == pytest.approx(0.5) and lrs[2] == pytest.approx(1.0)
    assert lrs[3] == pytest.approx(1.0) and lrs[4] < 1e-4  # then the half-cosine to the end of the run
