"""The teacher-feature family (data2vec 2.0, I-JEPA): masks, targets, the EMA teacher in training and
resume, losses that go down, and I-JEPA's encoder against ``transformers`` ``IJepaModel``."""
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import IJepaConfig, IJepaModel

import mimkit
from conftest import perturb_weights
from mimkit.interop.hf import from_hf, to_hf
from mimkit.masking import InverseBlockMasking, MultiBlockMasking
from mimkit.teacher import EMATeacher, data2vec_targets, ffn_outputs, linear_schedule

D2V = dict(embed_dim=32, depth=3, num_heads=2, decoder_dim=32, decoder_layers=2, top_k_layers=2, num_masks=3)
IJ = dict(embed_dim=32, depth=2, num_heads=2, predictor_embed_dim=16, predictor_depth=1, predictor_num_heads=2)


# ---- masks ---------------------------------------------------------------------------------------
def test_inverse_block_masking_keeps_exactly_the_visible_count_in_blocks():
    g = torch.Generator().manual_seed(0)
    m = InverseBlockMasking(ratio=0.8)(64, (14, 14), generator=g)
    assert m.dtype == torch.bool and ((~m).sum(1) == int(196 * 0.2)).all()  # 39 visible, as the reference
    # visible patches come in blocks: most visible patches have a visible 4-neighbour
    vis = (~m).reshape(64, 14, 14).float()
    nb = F.conv2d(vis[:, None], torch.tensor([[[[0, 1, 0], [1, 0, 1], [0, 1, 0]]]]).float(), padding=1)[:, 0]
    assert ((nb > 0) & (vis > 0)).sum() / vis.sum() > 0.8
    again = InverseBlockMasking(ratio=0.8)(64, (14, 14), generator=torch.Generator().manual_seed(0))
    assert torch.equal(m, again)


def test_multiblock_masking_context_excludes_targets():
    mb = MultiBlockMasking(num_targets=4, min_keep=4)
    ctx, tgt = mb.sample(16, (14, 14), generator=torch.Generator().manual_seed(0))
    assert ctx.shape[0] == 16 and tgt.shape[:2] == (16, 4) and ctx.shape[1] >= 4
    for c, ts in zip(ctx, tgt):
        assert not set(c.tolist()) & set(ts.flatten().tolist())  # no target patch is in the context
        assert len(set(c.tolist())) == len(c)
    hidden = mb(16, (14, 14), generator=torch.Generator().manual_seed(0))
    assert torch.equal((~hidden).sum(1), torch.full((16,), ctx.shape[1]))


# ---- targets and the EMA teacher ------------------------------------------------------------------
def test_ffn_outputs_rebuild_the_encoder_and_data2vec_targets_match_a_manual_computation():
    enc = perturb_weights(mimkit.create("data2vec2_vit_tiny_patch4_28", **D2V).encoder, trainable_only=True).eval()
    x = torch.randn(2, 1, 28, 28)
    outs = ffn_outputs(enc, x)
    assert len(outs) == 3 and outs[0].shape == (2, 50, 32)
    h = enc.embed(x)  # x_{i+1} = x_i + attention branch + ffn output
    for blk, t in zip(enc.blocks, outs):
        h = h + blk.attn(blk.norm1(h))
        assert torch.allclose(blk.mlp(blk.norm2(h)), t, atol=1e-5)
        h = h + t
    assert torch.allclose(enc.norm(h), enc(x).last_hidden_state, atol=1e-5)
    y = data2vec_targets(outs, top_k=2, prefix=1)
    manual = 0
    for t in outs[-2:]:
        t = t[:, 1:]
        manual = manual + (t - t.mean(1, keepdim=True)) / torch.sqrt(t.var(1, unbiased=False, keepdim=True) + 1e-5)
    manual = manual / 2
    manual = (manual - manual.mean(-1, keepdim=True)) / torch.sqrt(manual.var(-1, unbiased=False, keepdim=True) + 1e-5)
    assert torch.allclose(y, manual, atol=1e-4)


def test_ema_teacher_update_and_schedule():
    student = torch.nn.Linear(3, 2)
    teacher = EMATeacher(student)
    assert all(not p.requires_grad for p in teacher.parameters())
    before = teacher.encoder.weight.clone()
    with torch.no_grad():
        student.weight.add_(1.0)
    teacher.update(student, 0.9)
    assert torch.allclose(teacher.encoder.weight, 0.9 * before + 0.1 * student.weight)
    teacher.update(student, 1.0)  # decay 1: frozen
    assert linear_schedule(0, 0.996, 1.0, 100) == 0.996 and linear_schedule(50, 0.996, 1.0, 100) == pytest.approx(0.998)
    assert linear_schedule(500, 0.996, 1.0, 100) == 1.0
    teacher.train()
    assert not teacher.training  # always eval


@pytest.mark.parametrize("recipe,kw", [("data2vec2_vit_tiny_patch4_28", D2V), ("ijepa_vit_tiny_patch4_28", IJ)])
def test_loss_goes_down_and_only_the_student_trains(recipe, kw):
    torch.manual_seed(0)
    model = mimkit.create(recipe, **kw).train()
    assert not model.teacher.training
    x = torch.randn(8, 1, 28, 28)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    teacher_before = [p.clone() for p in model.teacher.parameters()]
    losses = []
    for step in range(30):
        torch.manual_seed(step % 3)  # a few fixed masks, so the loss can fall
        loss = model(x).loss
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is None for p in model.teacher.parameters())
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) < 0.85 * sum(losses[:3])
    # the teacher moved only through the EMA hook
    assert all(torch.equal(a, b) for a, b in zip(teacher_before, model.teacher.parameters()))
    model.after_optimizer_step(1, 10)
    assert not all(torch.equal(a, b) for a, b in zip(teacher_before, model.teacher.parameters()))


def test_data2vec2_shapes_and_per_image_masks():
    model = mimkit.create("data2vec2_vit_tiny_patch4_28", **D2V).eval()
    x = torch.randn(2, 1, 28, 28)
    out = model(x)
    assert out.mask.shape == (6, 49) and (out.mask.sum(1) == 49 - int(49 * 0.35)).all()
    assert out.pred.shape == (int(out.mask.sum()), 32)
    mask = torch.zeros(2, 49, dtype=torch.bool)
    mask[:, 20:] = True
    out = model(x, mask=mask)  # one (N, L) mask serves every copy
    assert torch.equal(out.mask, mask.repeat_interleave(3, 0).float())
    assert math.isfinite(out.loss.item()) and set(out.extra) == {"token_loss", "cls_loss"}


# ---- I-JEPA <-> transformers ------------------------------------------------------------------------
@pytest.mark.parametrize("sincos", [False, True])
def test_ijepa_encoder_matches_transformers_both_ways(sincos):
    cfg = IJepaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=28,
                      patch_size=4, num_channels=1, layer_norm_eps=1e-6)
    hf = perturb_weights(IJepaModel(cfg)).eval()
    if sincos:  # the official checkpoints hold the fixed table
        from mimkit.ops import sincos_pos_embed_2d

        hf.embeddings.position_embeddings.data = sincos_pos_embed_2d(32, (7, 7), cls_token=False)
    model = from_hf(hf)
    assert model.encoder.pos_embed_type == ("sincos" if sincos else "learned")
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        ref = hf(pixel_values=x).last_hidden_state
        assert (model.encoder(x).last_hidden_state - ref).abs().max() < 1e-5
        assert (model.encode(x) - ref).abs().max() < 1e-5  # patch tokens only: no class token in front
        back = to_hf(model)
        assert (back(pixel_values=x).last_hidden_state - ref).abs().max() < 1e-6
    for (k, a), b in zip(hf.state_dict().items(), back.state_dict().values()):
        assert torch.equal(a, b), k


# ---- the engine: EMA after every optimiser step, saved and resumed exactly ----------------------------
TINY_RUN = ["model.name=data2vec2_vit_tiny_patch4_28", "model.embed_dim=32", "model.depth=2", "model.num_heads=2",
            "model.decoder_dim=32", "model.decoder_layers=1", "model.top_k_layers=2", "model.num_masks=2",
            "data.limit=64", "data.batch_size=16", "trainer.enable_progress_bar=false", "trainer.accelerator=cpu",
            "run.recon_images=0", "trainer.log_every_n_steps=1"]


def _pretrain(args, cwd):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.pop("MIMKIT_RUN_DIR", None)
    r = subprocess.run([sys.executable, "-m", "mimkit.cli", "pretrain", *args], env=env, capture_output=True,
                       text=True, timeout=300, cwd=cwd)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]


def test_teacher_follows_the_student_and_resumes_exactly(tmp_path):
    import shutil

    full = tmp_path / "full"
    _pretrain([*TINY_RUN, "trainer.max_epochs=2", "run.keep_periodic=-1", f"run.dir={full}"], tmp_path)
    cut = tmp_path / "cut"  # the same run, continued from its checkpoint after epoch 1 (step 4 of 8)
    shutil.copytree(full, cut)
    shutil.rmtree(cut / "model")
    first = sorted((cut / "checkpoints").glob("epoch000-*.ckpt"))[0]
    _pretrain(["--resume", str(first)], tmp_path)
    a, b = load_file(str(full / "model" / "model.safetensors")), load_file(str(cut / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and any(k.startswith("teacher.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    init = mimkit.create("data2vec2_vit_tiny_patch4_28", embed_dim=32, depth=2, num_heads=2, decoder_dim=32,
                         decoder_layers=1, top_k_layers=2, num_masks=2)
    w = "encoder.blocks.0.attn.qkv.weight"
    assert not torch.equal(a[f"teacher.{w}"], a[w])  # an average, not a copy of the student
    assert not torch.equal(a[f"teacher.{w}"], init.state_dict()[f"teacher.{w}"])  # and it moved
