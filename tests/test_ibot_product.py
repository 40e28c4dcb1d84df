"""iBOT as the reference trains and evaluates it: the weight decay's cosine (``optim.weight_decay_end``, the
engine's), each parameter's gradient clipped on its own (``clip_grad``, against a transcription of the
reference's ``clip_gradients``), the teacher's encoder evaluated and exported (``eval_teacher``), and the
random inputs of one training step that the benchmarks feed (views included)."""
import copy
import math
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch

import mimkit
from mimkit.train.module import MIMModule, cosine_weight_decay

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(embed_dim=32, depth=2, num_heads=2, out_dim=64, hidden_dim=32, bottleneck_dim=16, local_crops_number=2)

pytestmark = pytest.mark.usefixtures("one_thread")


# ---- the weight decay's cosine ------------------------------------------------------------------------
def test_cosine_weight_decay_is_the_references_cosine_scheduler():
    """``cosine_scheduler(0.04, 0.4, epochs, niter_per_ep)`` of the reference (no warm-up), transcribed."""
    total = 12
    ref = [0.4 + 0.5 * (0.04 - 0.4) * (1 + math.cos(math.pi * i / total)) for i in range(total)]
    assert [cosine_weight_decay(i, total, 0.04, 0.4) for i in range(total)] == pytest.approx(ref, abs=1e-12)
    assert cosine_weight_decay(total + 3, total, 0.04, 0.4) == pytest.approx(0.4)  # held after the end


def test_a_runs_weight_decay_follows_the_cosine(tmp_path):
    """A 4-step run with optim.weight_decay_end: before every optimiser step the groups with weight decay
    take the cosine's value at that step; the group without keeps 0."""
    from mimkit.train.config import load_config
    from mimkit.train.run import run_pretrain

    seen = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, *a):  # after the step: the values it used
            seen.append([g["weight_decay"] for g in trainer.optimizers[0].param_groups])

    over = [f"model.{k}={v}" for k, v in TINY.items()] + [
        "optim.weight_decay=0.04", "optim.weight_decay_end=0.4", "data.limit=64", "data.batch_size=16",
        "trainer.max_steps=4", "trainer.max_epochs=1", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
        "trainer.compile=false", "trainer.log_every_n_steps=1", f"run.dir={tmp_path / 'run'}"]
    run_pretrain(load_config(ROOT / "configs" / "ibot_vit_tiny_patch4_28.yaml", over), callbacks=[Record()])
    assert len(seen) == 4
    for step, groups in enumerate(seen):
        assert groups == pytest.approx([0.0, cosine_weight_decay(step, 4, 0.04, 0.4)], abs=1e-12)


def _module(optim):
    o = {"lr": 1e-3, "blr": 1.5e-4, "lr_batch_base": 256, "min_lr": 0.0, "weight_decay": 0.04, "betas": [0.9, 0.95],
         "warmup_epochs": 0.0, "fused": False, **optim}
    m = MIMModule({"recipe": "ibot_vit_tiny_patch4_28", **TINY}, o, 8)
    m._trainer = SimpleNamespace(accumulate_grad_batches=1, world_size=1, max_epochs=1, estimated_stepping_batches=10,
                                 global_step=0)
    m.total_steps_hint = 10
    return m, m.configure_optimizers()["optimizer"]


def test_without_the_key_the_weight_decay_stays_constant():
    m, opt = _module({})
    for step in (0, 5, 9):
        m._trainer.global_step = step
        m.on_before_optimizer_step(opt)
        assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 0.04]
    m, opt = _module({"weight_decay_end": 0.4})  # with it, the same hook schedules it
    m._trainer.global_step = 5
    m.on_before_optimizer_step(opt)
    assert [g["weight_decay"] for g in opt.param_groups] == pytest.approx([0.0, 0.22])


def test_weight_decay_end_is_validated():
    from mimkit.train.config import load_config, validate

    assert load_config(None, [])["optim"]["weight_decay_end"] is None
    validate(load_config(None, ["optim.weight_decay_end=0.4"]))
    with pytest.raises(ValueError, match="optim.weight_decay_end must be a number >= 0"):
        validate(load_config(None, ["optim.weight_decay_end=-0.1"]))
    with pytest.raises(ValueError, match="needs optim.weight_decay > 0"):
        validate(load_config(None, ["optim.weight_decay_end=0.4", "optim.weight_decay=0"]))


# ---- each parameter's gradient clipped --------------------------------------------------------------
def ref_clip_gradients(model, clip):
    """bytedance/ibot ``utils.py`` ``clip_gradients``, transcribed."""
    norms = []
    for name, p in model.named_parameters():
        if p.grad is not None:
            param_norm = p.grad.data.norm(2)
            norms.append(param_norm.item())
            clip_coef = clip / (param_norm + 1e-6)
            if clip_coef < 1:
                p.grad.data.mul_(clip_coef)
    return norms


def test_per_parameter_clip_equals_the_reference():
    torch.manual_seed(0)
    model = mimkit.create("ibot_vit_tiny_patch4_28", **TINY, clip_grad=0.5, freeze_last_layer_fraction=0.5)
    g = torch.Generator().manual_seed(1)
    for p in model.parameters():
        if p.requires_grad:  # norms from well below to well above the clip
            p.grad = torch.randn(p.shape, generator=g) * 10 ** torch.empty(()).uniform_(-3, 1, generator=g)
    ref = copy.deepcopy(model)  # (a deep copy leaves the gradients behind)
    for p, q in zip(model.parameters(), ref.parameters()):
        q.grad = None if p.grad is None else p.grad.clone()
    for layer in ref.head.last_layers():  # the freeze comes first: step 2 of 10 is inside it
        for p in layer.parameters():
            p.grad = None
    norms = ref_clip_gradients(ref, 0.5)
    assert min(norms) < 0.5 < max(norms)
    model.before_optimizer_step(2, 10)
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            assert torch.allclose(p.grad, q.grad, rtol=1e-6, atol=0), name
    assert all(p.grad.norm() <= 0.5 + 1e-5 for p in model.parameters() if p.grad is not None)
    unclipped = mimkit.create("ibot_vit_tiny_patch4_28", **TINY)  # clip_grad=None: gradients untouched
    for p in unclipped.parameters():
        p.grad = torch.full_like(p, 7.0) if p.requires_grad else None
    unclipped.before_optimizer_step(9, 10)
    assert all(torch.equal(p.grad, torch.full_like(p, 7.0)) for p in unclipped.parameters() if p.grad is not None)
    with pytest.raises(ValueError, match="clip_grad"):
        mimkit.create("ibot_vit_tiny_patch4_28", **TINY, clip_grad=0)


# ---- the teacher evaluated --------------------------------------------------------------------------
def test_eval_teacher_features_and_export_read_the_teachers_encoder(tmp_path):
    from mimkit.data.tensors import TensorImages
    from mimkit.eval.features import extract_features, pool
    from mimkit.interop.timm import timm_state_dict

    torch.manual_seed(0)
    model = mimkit.create("ibot_vit_tiny_patch4_28", **TINY, eval_teacher=True, momentum_teacher=0.5).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.on_train_step(0, 10)
    model(**model.example_inputs(4)).loss.backward()
    opt.step()
    model.after_optimizer_step(1, 10)
    model.eval()
    assert model.feature_encoder() is model.teacher.encoder
    x = torch.randn(6, 1, 28, 28)
    feats, _ = extract_features(model, TensorImages(x, torch.zeros(6, dtype=torch.long)), ("cls", "mean"), 4, "cpu",
                                progress=False)
    with torch.no_grad():
        teacher, student = model.teacher.encoder(x).last_hidden_state, model.encoder(x).last_hidden_state
    for how in ("cls", "mean"):
        assert torch.allclose(feats[how], pool(teacher, how), atol=1e-6)
        assert not torch.allclose(feats[how], pool(student, how), atol=1e-3)
    _, _, sd = timm_state_dict(model)  # export: the teacher's weights
    assert torch.equal(sd["blocks.0.attn.qkv.weight"], model.teacher.encoder.blocks[0].attn.qkv.weight)
    loaded = mimkit.load(mimkit.save(model, tmp_path / "m"))  # the choice is part of the model's config
    assert loaded.feature_encoder() is loaded.teacher.encoder and torch.allclose(loaded.encode(x), teacher, atol=1e-6)
    assert mimkit.create("ibot_vit_tiny_patch4_28", **TINY).feature_encoder().__class__.__name__ == "ViTEncoder"


# ---- one training step's inputs, as the data layer shapes them -------------------------------------------
def test_example_inputs_have_the_views_of_a_training_step():
    model = mimkit.create("ibot_vit_tiny_patch4_28", **TINY)
    inputs = model.example_inputs(3, torch.Generator().manual_seed(0))
    assert inputs["images"].shape == (3, 1, 28, 28)
    assert [tuple(v.shape) for v in inputs["views"]] == [(3, 1, 28, 28), (3, 1, 12, 12), (3, 1, 12, 12)]
    assert set(mimkit.create("mae_vit_tiny_patch4_28").example_inputs(2)) == {"images"}
    out = model.train()(**inputs)
    assert math.isfinite(float(out.loss.detach()))
