"""``mimkit pretrain --init``: a new run's encoder starts from another model's (mimkit.train.init)."""
from __future__ import annotations

import pytest
import torch

import mimkit
from mimkit.train.init import init_encoder

SMALL = dict(embed_dim=32, depth=2, num_heads=2)


def _saved(tmp_path, recipe, name="src", **kw):
    model = mimkit.create(recipe, **SMALL, **kw)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # weights no fresh model has
    mimkit.save(model, tmp_path / name)
    return model, str(tmp_path / name)


def _blocks(enc):
    return {k: v for k, v in enc.state_dict().items() if k.startswith("blocks.") or k.startswith("norm.")}


def test_same_recipe_copies_every_tensor(tmp_path):
    src, spec = _saved(tmp_path, "mae_vit_tiny_patch4_28")
    dst = mimkit.create("mae_vit_tiny_patch4_28", **SMALL)
    assert not torch.equal(dst.encoder.blocks[0].attn.qkv.weight, src.encoder.blocks[0].attn.qkv.weight)
    done = init_encoder(dst, spec)
    for k, v in src.encoder.state_dict().items():
        assert torch.equal(dst.encoder.state_dict()[k], v), k
    assert done["resized"] == [] and done["kept"] == []
    x = torch.rand(2, 1, 28, 28)
    assert torch.allclose(dst.encode(x), src.encode(x))


def test_teacher_follows(tmp_path):
    """data2vec 2.0 (an EMA teacher) started from MAE: the student's and the teacher's encoders both equal
    MAE's."""
    src, spec = _saved(tmp_path, "mae_vit_tiny_patch4_28")
    dst = mimkit.create("data2vec2_vit_tiny_patch4_28", **SMALL, top_k_layers=2)
    init_encoder(dst, spec)
    for k, v in _blocks(src.encoder).items():
        assert torch.equal(dst.encoder.state_dict()[k], v), k
        assert torch.equal(dst.teacher.encoder.state_dict()[k], v), k


def test_mask_token_kept(tmp_path):
    """SimMIM (a mask token) started from MAE (none): the token keeps SimMIM's own init, the rest is MAE's."""
    src, spec = _saved(tmp_path, "mae_vit_tiny_patch4_28")
    dst = mimkit.create("simmim_vit_tiny_patch4_28", **SMALL)
    token = dst.encoder.mask_token.detach().clone()
    done = init_encoder(dst, spec)
    assert done["kept"] == ["mask_token"]
    assert torch.equal(dst.encoder.mask_token, token)
    for k, v in _blocks(src.encoder).items():
        assert torch.equal(dst.encoder.state_dict()[k], v), k


def test_patch_size_and_grid_resampled(tmp_path):
    """MAE patch 4 (7x7 grid, fixed sin-cos) into iBOT patch 7 (4x4 grid, learned positions): the patch
    embedding is resampled (FlexiViT) and the positions interpolated to the new grid; blocks copied."""
    from timm.layers import resample_abs_pos_embed, resample_patch_embed

    src, spec = _saved(tmp_path, "mae_vit_tiny_patch4_28")
    dst = mimkit.create("ibot_vit_tiny_patch7_28", **SMALL)
    done = init_encoder(dst, spec)
    assert "patch_embed.proj.weight" in done["resized"] and "pos_embed" in done["resized"]
    w = resample_patch_embed(src.encoder.patch_embed.proj.weight, [7, 7])
    assert torch.allclose(dst.encoder.patch_embed.proj.weight, w)
    pos = resample_abs_pos_embed(src.encoder.pos_embed, [4, 4], [7, 7], num_prefix_tokens=1, antialias=False)
    assert torch.allclose(dst.encoder.pos_embed, pos)
    assert torch.equal(dst.teacher.encoder.pos_embed, dst.encoder.pos_embed)
    for k, v in _blocks(src.encoder).items():
        assert torch.equal(dst.encoder.state_dict()[k], v), k
    # the copied encoder computes: a pretrained patch-4 filter still sees the same image content
    assert torch.isfinite(dst.encode(torch.rand(2, 1, 28, 28))).all()


def test_channels_adapted(tmp_path):
    """An RGB encoder into a grayscale recipe: timm's adapt_input_conv sums the colour filters."""
    src, spec = _saved(tmp_path, "mae_vit_tiny_patch4_28", in_chans=3)
    dst = mimkit.create("mae_vit_tiny_patch4_28", **SMALL)
    init_encoder(dst, spec)
    assert torch.allclose(dst.encoder.patch_embed.proj.weight, src.encoder.patch_embed.proj.weight.sum(1, keepdim=True))


def test_other_width_is_one_clear_line(tmp_path):
    _, spec = _saved(tmp_path, "mae_vit_tiny_patch4_28")
    dst = mimkit.create("mae_vit_tiny_patch4_28", embed_dim=64, depth=2, num_heads=2)
    with pytest.raises(ValueError, match="other sizes than this recipe") as e:
        init_encoder(dst, spec)
    assert "\n" not in str(e.value)


def test_other_family_and_missing_file(tmp_path):
    _, spec = _saved(tmp_path, "mae_vit_tiny_patch4_28")
    dst = mimkit.create("mae_vit_tiny_patch4_28", embed_dim=32, depth=3, num_heads=2)
    with pytest.raises(ValueError, match="not this recipe's kind"):
        init_encoder(dst, spec)
    with pytest.raises(ValueError, match="--init .*nowhere"):
        init_encoder(dst, str(tmp_path / "nowhere"))


def test_pretrain_cli_init_trains_from_the_source(tmp_path):
    """`mimkit pretrain --init`: the run records run.init, starts from the source (step-0 loss equals the
    source's loss on the same batch and mask) and trains; --init with --resume is refused."""
    from mimkit.cli import main

    src, spec = _saved(tmp_path, "mae_vit_tiny_patch4_28")
    run = tmp_path / "run"
    args = ["pretrain", "--config", "configs/mae_vit_tiny_patch4_28.yaml", "--init", spec,
            "model.embed_dim=32", "model.depth=2", "model.num_heads=2", "data.limit=64", "data.batch_size=32",
            "trainer.max_steps=2", "trainer.max_epochs=-1", "trainer.enable_progress_bar=false",
            "trainer.accelerator=cpu", "run.recon_images=0", "trainer.compile=false", f"run.dir={run}"]
    assert main(args) == 0
    assert f"init: {spec}" in (run / "config.yaml").read_text()
    trained = mimkit.load(run / "model")
    moved = [not torch.equal(a, b) for a, b in zip(trained.encoder.parameters(), src.encoder.parameters())]
    assert any(moved)  # it trained ...
    delta = max((a - b).abs().max().item() for a, b in zip(trained.encoder.parameters(), src.encoder.parameters()))
    fresh = mimkit.create("mae_vit_tiny_patch4_28", **SMALL)
    far = max((a - b).abs().max().item() for a, b in zip(fresh.encoder.parameters(), src.encoder.parameters()))
    assert delta < far / 4  # ... from the source's weights, not from a fresh init
    assert main(["pretrain", "--resume", str(run), "--init", spec]) != 0
