"""Attention weights on request, reconstruction / attention pictures, and ``mimkit visualize``."""
import numpy as np
import pytest
import torch
from PIL import Image

import mimkit
from conftest import perturb_weights
from mimkit.viz import attention_maps, reconstruction_panels, save_attention_grid, save_reconstruction_grid

MEAN, STD = (0.5,), (0.25,)


def tiny(recipe="mae_vit_tiny_patch4_28", **kw):
    size = dict(embed_dim=32, num_heads=2)
    if recipe.startswith("mae"):
        size.update(depth=2, decoder_embed_dim=16, decoder_depth=1)
    elif recipe.startswith("simmim_swin"):
        size = dict(embed_dim=16, depths=(1, 1), num_heads=(1, 2))
    else:
        size.update(depth=2)
    return mimkit.create(recipe, **size, **kw).eval()


@pytest.mark.parametrize("recipe", ["mae_vit_tiny_patch4_28", "beit_vit_tiny_patch4_28"])
def test_output_attentions_rows_sum_to_one_and_match_manual(recipe):
    kw = {"vocab_size": 16} if recipe.startswith("beit") else {}
    model = tiny(recipe, **kw)
    perturb_weights(model)
    enc = model.encoder
    x = torch.randn(2, 1, 28, 28)
    out = enc(x, output_attentions=True, output_hidden_states=True)
    assert len(out.attentions) == len(enc.blocks)
    T = 1 + enc.num_patches
    for a in out.attentions:
        assert a.shape == (2, enc.num_heads, T, T)
        assert torch.allclose(a.sum(-1), torch.ones(2, enc.num_heads, T), atol=1e-5)
        assert (a >= 0).all()
    # manual softmax(q k^T / sqrt(d)) for the last block, from its input (the previous hidden state)
    blk = enc.blocks[-1]
    h = blk.norm1(out.hidden_states[-2])
    heads, dh = enc.num_heads, enc.embed_dim // enc.num_heads
    if recipe.startswith("mae"):
        qkv = h @ blk.attn.qkv.weight.T + blk.attn.qkv.bias
        bias = 0
    else:  # BEiT: no key bias, shared relative position bias added to the logits
        b = torch.cat([blk.attn.q_bias, torch.zeros_like(blk.attn.v_bias), blk.attn.v_bias])
        qkv = h @ blk.attn.qkv.weight.T + b
        bias = enc.shared_bias(enc.grid_size)
    q, k, v = qkv.reshape(2, T, 3, heads, dh).permute(2, 0, 3, 1, 4)
    manual = ((q @ k.transpose(-2, -1)) / dh ** 0.5 + bias).softmax(-1)
    assert torch.allclose(out.attentions[-1], manual, atol=1e-5)
    if recipe.startswith("mae"):
        # the weights are the ones the block uses: weights @ v -> proj equals the block's attention output
        ctx = (manual @ v).transpose(1, 2).reshape(2, T, -1)
        assert torch.allclose(blk.attn.proj(ctx), blk.attn(h), atol=1e-5)
    # asking for nothing returns None and the same tokens
    plain = enc(x)
    assert plain.attentions is None and plain.hidden_states is None
    assert torch.allclose(plain.last_hidden_state, out.last_hidden_state, atol=1e-5)


def test_attention_maps_are_cls_rows():
    model = tiny()
    x = torch.randn(3, 1, 28, 28)
    maps = attention_maps(model, x)
    att = model.encoder(x, output_attentions=True).attentions[-1]
    assert maps.shape == (3, 2, 7, 7)
    assert torch.allclose(maps.flatten(2), att[:, :, 0, 1:], atol=1e-6)
    assert torch.allclose(attention_maps(model, x, block=0).flatten(2),
                          model.encoder(x, output_attentions=True).attentions[0][:, :, 0, 1:], atol=1e-6)
    swin = tiny("simmim_swin_tiny_window4_32")
    with pytest.raises(ValueError, match="no cls token"):
        attention_maps(swin, torch.randn(1, 1, 32, 32))


@pytest.mark.parametrize("recipe", ["mae_vit_tiny_patch4_28", "simmim_vit_tiny_patch4_28"])
def test_reconstruction_panels_and_mask(recipe):
    model = tiny(recipe)
    x = torch.randn(2, 1, 28, 28)
    mask = torch.zeros(2, 49, dtype=torch.bool)
    mask[0, :20] = True
    mask[1, 10:40] = True  # rows hide different counts: MAE hides a few more in row 0, as its forward says
    orig, masked, pred, pasted, m = reconstruction_panels(model, x, mask=mask)
    assert m.shape == (2, 1, 28, 28)
    per_patch = m[:, 0, ::4, ::4].reshape(2, 49).bool()
    assert torch.equal(m, per_patch.reshape(2, 7, 7).repeat_interleave(4, 1).repeat_interleave(4, 2)[:, None].float())
    if recipe.startswith("mae"):  # every row keeps the smallest visible count: 30 hidden in both rows
        assert (per_patch | ~mask).all() and per_patch.sum(1).tolist() == [30, 30]
    else:
        assert torch.equal(per_patch, mask)
    assert torch.equal(orig, x)
    assert torch.equal(masked[m.bool()], torch.zeros_like(masked[m.bool()]))
    assert torch.equal(pasted[~m.bool()], x[~m.bool()])  # visible pixels are the original ones
    assert torch.allclose(pasted[m.bool()], pred[m.bool()])  # hidden pixels are the prediction


def test_pictures_have_expected_panels(tmp_path):
    model = tiny()
    x = torch.randn(3, 1, 28, 28)
    p = save_reconstruction_grid(model, x, tmp_path / "rec.png", MEAN, STD, title="a " * 80)
    assert Image.open(p).size == (4 * 160, 3 * 160)  # 4 columns x 3 rows of 1.6-inch panels at 100 dpi
    p = save_attention_grid(model, x, tmp_path / "att.png", MEAN, STD)
    assert Image.open(p).size == ((2 + 2) * 160, 3 * 160)  # image, mean of heads, 2 heads


@pytest.fixture()
def files(tmp_path):
    rng = np.random.default_rng(0)
    out = []
    for i, mode in enumerate(("L", "RGB", "RGBA")):
        a = rng.integers(0, 255, (40, 36, 3)).astype(np.uint8)
        img = Image.fromarray(a, "RGB").convert(mode)
        out.append(tmp_path / f"img{i}.png")
        img.save(out[-1])
    return out


def test_cli_visualize(tmp_path, files, capsys):
    from mimkit.cli import main

    mimkit.save(tiny(norm_pix_loss=True), tmp_path / "mae")
    out = tmp_path / "vis"
    assert main(["visualize", "--checkpoint", str(tmp_path / "mae"), "--images", *map(str, files),
                 "--masking", "block", "--mask-ratio", "0.5", "--seed", "3", "--out", str(out)]) == 0
    assert Image.open(out / "reconstructions.png").size == (4 * 160, 3 * 160)
    assert Image.open(out / "attention.png").size == (4 * 160, 3 * 160)
    # the same seed gives the same picture
    first = (out / "reconstructions.png").read_bytes()
    assert main(["visualize", "--checkpoint", str(tmp_path / "mae"), "--images", *map(str, files),
                 "--masking", "block", "--mask-ratio", "0.5", "--seed", "3", "--out", str(out)]) == 0
    assert (out / "reconstructions.png").read_bytes() == first
    # SimMIM with its own masking, center masking; MaskFeat has no pixels; Swin has no cls attention
    mimkit.save(tiny("simmim_vit_tiny_patch4_28"), tmp_path / "simmim")
    assert main(["visualize", "--checkpoint", str(tmp_path / "simmim"), "--images", str(files[0]),
                 "--masking", "center", "--out", str(tmp_path / "v2"), "--what", "reconstruction"]) == 0
    assert (tmp_path / "v2" / "reconstructions.png").exists() and not (tmp_path / "v2" / "attention.png").exists()
    mimkit.save(tiny("maskfeat_vit_tiny_patch4_28"), tmp_path / "maskfeat")
    capsys.readouterr()
    assert main(["visualize", "--checkpoint", str(tmp_path / "maskfeat"), "--images", str(files[0]),
                 "--out", str(tmp_path / "v3")]) == 0
    assert "no pixel reconstruction" in capsys.readouterr().out
    assert (tmp_path / "v3" / "attention.png").exists() and not (tmp_path / "v3" / "reconstructions.png").exists()
    mimkit.save(tiny("simmim_swin_tiny_window4_32"), tmp_path / "swin")
    assert main(["visualize", "--checkpoint", str(tmp_path / "swin"), "--images", str(files[0]),
                 "--what", "attention", "--out", str(tmp_path / "v4")]) == 2
    assert "no cls token" in capsys.readouterr().err
    assert main(["visualize", "--checkpoint", str(tmp_path / "mae"), "--images", str(tmp_path / "missing.png")]) == 2


def test_metrics_panels_one_per_metric(tmp_path):
    """An accuracy in [0, 1] and images/s get separate panels (3 per row), each with its own axis."""
    from mimkit.viz import save_panels

    steps = [0.0, 10.0, 20.0]
    series = {"mask_acc": (steps, [0.01, 0.2, 0.3]), "images_per_s": (steps, [400.0, 480.0, 470.0])}
    p = save_panels(series, tmp_path / "m.png", hlines={"mask_acc": {"chance": 1 / 512}})
    assert Image.open(p).size == (2 * 400, 300)
    series["perplexity"] = (steps, [5.0, 50.0, 90.0])
    series["psnr"] = (steps, [8.0, 12.0, 14.0])
    assert Image.open(save_panels(series, tmp_path / "m4.png")).size == (3 * 400, 2 * 300)
