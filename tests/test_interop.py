"""Checkpoints in and out: transformers, timm, official MAE .pth, mimkit files, other resolutions.

Every MIM method registered in mimkit is covered (the list is checked against the registry, so a new
method without a tiny configuration here fails loudly instead of being skipped)."""
import argparse
import json

import pytest
import timm
import torch
import transformers

import mimkit
from conftest import perturb_weights
from mimkit.base import MIMModel
from mimkit.cli import main as cli
from mimkit.interop import hf as hf_interop
from mimkit.interop.hf import from_hf, to_hf
from mimkit.interop.official import load_official_mae, official_mae_state_dict
from mimkit.interop.timm import _ENCODER_ARGS, from_timm, load_timm, timm_state_dict, to_timm
from mimkit.ops import resize_pos_embed, sincos_pos_embed_2d
from mimkit.registry import get_builder, list_builders

# method -> (recipe, tiny overrides, another (H, W) to run at)
TINY = {
    "mae": ("mae_vit_tiny_patch4_28", dict(embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=16, decoder_depth=1,
                                           decoder_num_heads=2)),
    "simmim": ("simmim_vit_tiny_patch4_28", dict(embed_dim=32, depth=2, num_heads=2)),
    "maskfeat": ("maskfeat_vit_tiny_patch4_28", dict(embed_dim=32, depth=2, num_heads=2)),
    "beit": ("beit_vit_tiny_patch4_28", dict(embed_dim=32, depth=2, num_heads=2, vocab_size=16)),
    "simmim_swin": ("simmim_swin_tiny_window4_32", dict(embed_dim=16, depths=(1, 1), num_heads=(1, 2))),
    "data2vec2": ("data2vec2_vit_tiny_patch4_28", dict(embed_dim=32, depth=2, num_heads=2, decoder_dim=32,
                                                       decoder_layers=1, top_k_layers=2, num_masks=2)),
    "ijepa": ("ijepa_vit_tiny_patch4_28", dict(embed_dim=32, depth=2, num_heads=2, predictor_embed_dim=16,
                                               predictor_depth=1, predictor_num_heads=2)),
    "ibot": ("ibot_vit_tiny_patch4_28", dict(embed_dim=32, depth=2, num_heads=2, out_dim=64, hidden_dim=32,
                                             bottleneck_dim=16)),
}
OTHER_SIZE = {"simmim_swin": (32, 48)}  # Swin: multiples of its stride (8); ViTs: any multiple of the patch
METHODS = [m for m in TINY if m in list_builders()]
# whole-model transformers classes (IJepaModel holds I-JEPA's encoder only: tests/test_teacher_methods.py)
# I-JEPA and iBOT leave as their encoder only (IJepaModel, ViTModel): tests/test_teacher_methods.py,
# tests/test_ibot_export.py
HF_METHODS = [m for m in METHODS if m in hf_interop._tables()[1] and m not in ("ijepa", "ibot")]


def tiny(method):
    recipe, kw = TINY[method]
    return perturb_weights(mimkit.create(recipe, **kw).eval(), trainable_only=True)  # sin-cos stays sin-cos


def images(model, size=None, n=2):
    return torch.randn(n, model.in_chans, *(size or model.img_size))


def fixed_mask(model, n=2, size=None):
    h, w = size or model.img_size
    L = (h // model.patch_size) * (w // model.patch_size)
    noise = torch.rand(n, L)
    mask = torch.zeros(n, L, dtype=torch.bool)
    mask.scatter_(1, noise.argsort(1)[:, : L // 2], True)  # same count per row (MAE needs it)
    return mask


def forward(model, x, mask):
    kw = {"labels": torch.randint(0, model.vocab_size, mask.shape)} if model.method == "beit" else {}
    return model(x, mask=mask, **kw)


def assert_same_tensors(a: dict, b: dict, skip=()):
    keys_a = {k for k in a if k not in skip}
    keys_b = {k for k in b if k not in skip}
    assert keys_a == keys_b, (sorted(keys_a ^ keys_b))[:8]
    for k in keys_a:
        assert a[k].shape == b[k].shape and torch.equal(a[k], b[k]), k


def timm_encode(tm, x):
    """timm features in ``model.encode``'s layout. Swin gives the last stage NHWC; mimkit's Swin
    ``encode`` puts the mean token (timm's pooled feature) in front of the flattened tokens. A ViT gives
    its tokens as they are: the class token first, or (I-JEPA) the patch tokens alone."""
    f = tm.forward_features(x)
    if f.ndim == 4:
        f = f.flatten(1, 2)
        return torch.cat([f.mean(1, keepdim=True), f], dim=1)
    return f


def non_encoder_args(model):
    cfg = model.mimkit_config
    return {k: v for k, v in cfg.items() if k not in _ENCODER_ARGS}


TOKENIZERS = {"dvae", "dalle_encoder"}  # BEiT's visual tokenizers: convolutional, no ViT/Swin encoder to export


def test_every_registered_method_is_covered():
    mim_builders = {n for n in list_builders() if isinstance(get_builder(n), type)
                    and issubclass(get_builder(n), MIMModel)} - TOKENIZERS
    assert mim_builders <= set(TINY), f"add a tiny configuration for {sorted(mim_builders - set(TINY))}"
    assert "mae" in METHODS


# ---------------------------------------------------------------------------- transformers ----
@pytest.mark.parametrize("method", HF_METHODS)
def test_transformers_round_trip_is_exact(method):
    model = tiny(method)
    hf = to_hf(model)
    back = from_hf(hf).eval()
    assert_same_tensors(model.state_dict(), back.state_dict())
    assert type(back) is type(model)
    x, mask = images(model), fixed_mask(model)
    torch.manual_seed(1)
    a = forward(model, x, mask)
    torch.manual_seed(1)
    b = forward(back, x, mask)
    assert torch.equal(a.loss, b.loss) and torch.equal(a.pred, b.pred) and torch.equal(a.mask, b.mask)
    assert torch.equal(model.encode(x), back.encode(x))


# ---------------------------------------------------------------------------- timm -------------
@pytest.mark.parametrize("method", METHODS)
def test_timm_features_equal_encode(method):
    model = tiny(method)
    x = images(model)
    tm = to_timm(model)
    assert tm.num_classes == 0
    ours = model.encode(x)
    assert (timm_encode(tm, x) - ours).abs().max() < 1e-5
    pooled = ours.mean(1) if method == "ijepa" else ours[:, 0]  # timm's pooled feature: cls (ViT, BEiT) / mean
    assert (tm(x) - pooled).abs().max() < 1e-5
    # and back: a timm encoder evaluated through mimkit
    back = from_timm(tm, method=method, **non_encoder_args(model))
    assert_same_tensors(model.encoder.state_dict(), back.encoder.state_dict(), skip={"mask_token"})
    assert (back.encode(x) - ours).abs().max() < 1e-5


@pytest.mark.parametrize("method", METHODS)
def test_timm_export_at_another_resolution(method, tmp_path):
    model = tiny(method)
    mimkit.save(model, tmp_path / "m")
    size = OTHER_SIZE.get(method, (28, 36))
    resized = mimkit.load(tmp_path / "m", img_size=size)
    arch, kwargs, sd = timm_state_dict(model, img_size=size)
    assert tuple(kwargs["img_size"]) == size
    tm = timm.create_model(arch, num_classes=0, **kwargs).eval()
    tm.load_state_dict(sd, strict=True)
    x = images(model, size)
    ours = resized.encode(x)
    assert (timm_encode(tm, x) - ours).abs().max() < 1e-5


def test_from_timm_plain_vit_with_learned_positions():
    tm = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0, img_size=32, patch_size=8,
                           embed_dim=32, depth=2, num_heads=2, in_chans=3).eval()
    model = from_timm(tm, method="simmim", mask_patch_size=8)
    assert model.encoder.pos_embed_type == "learned"
    x = torch.randn(2, 3, 32, 32)
    assert (tm.forward_features(x) - model.encode(x)).abs().max() < 1e-5
    # timm's class-token pooled feature is mimkit's cls token
    assert (tm(x) - model.encode(x)[:, 0]).abs().max() < 1e-5
    reg = timm.create_model("vit_base_patch16_224", num_classes=0, img_size=32, patch_size=8, embed_dim=32,
                            depth=1, num_heads=2, reg_tokens=2)
    with pytest.raises(ValueError, match="register tokens"):
        from_timm(reg)
    with pytest.raises(ValueError, match="unknown method"):
        from_timm(tm, method="nope")


# ---------------------------------------------------------------------------- CLI --------------
@pytest.mark.parametrize("method", METHODS)
def test_cli_export_import_round_trips(method, tmp_path, capsys):
    model = tiny(method)
    ck = tmp_path / "ck"
    mimkit.save(model, ck)
    x = images(model)
    enc = model.encode(x)

    # mimkit safetensors
    assert cli(["export", "--checkpoint", str(ck / "model.safetensors"), "--format", "safetensors",
                "--out", str(tmp_path / "st")]) == 0
    assert_same_tensors(model.state_dict(), mimkit.load(tmp_path / "st").state_dict())

    # timm: strict load into timm.create_model(arch, num_classes=0, **kwargs)
    assert cli(["export", "--checkpoint", str(ck), "--format", "timm", "--out", str(tmp_path / "timm")]) == 0
    cfg = json.loads((tmp_path / "timm" / "config.json").read_text())
    tm = timm.create_model(cfg["architecture"], num_classes=0, **cfg["kwargs"]).eval()
    from safetensors.torch import load_file

    tm.load_state_dict(load_file(tmp_path / "timm" / "model.safetensors"), strict=True)
    assert (timm_encode(tm, x) - enc).abs().max() < 1e-5
    assert (timm_encode(load_timm(tmp_path / "timm"), x) - enc).abs().max() < 1e-5
    assert cli(["import", "--from", "timm", str(tmp_path / "timm"), "--out", str(tmp_path / "from_timm")]) == 0
    back = mimkit.load(tmp_path / "from_timm")
    assert type(back) is type(model)
    assert_same_tensors(model.encoder.state_dict(), back.encoder.state_dict(), skip={"mask_token"})

    # transformers: from_pretrained(DIR) of the class, and mimkit import back, exact
    if method in HF_METHODS:
        assert cli(["export", "--checkpoint", str(ck), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
        arch = json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"][0]
        hf = getattr(transformers, arch).from_pretrained(tmp_path / "hf")
        assert_same_tensors(to_hf(model).state_dict(), hf.state_dict())
        assert cli(["import", "--from", "hf", str(tmp_path / "hf"), "--out", str(tmp_path / "from_hf")]) == 0
        assert_same_tensors(model.state_dict(), mimkit.load(tmp_path / "from_hf").state_dict())
    capsys.readouterr()


def test_timm_pretrained_cfg_overlay_loads_the_export(tmp_path):
    model = tiny("mae")
    mimkit.save(model, tmp_path / "ck")
    assert cli(["export", "--checkpoint", str(tmp_path / "ck"), "--format", "timm", "--out", str(tmp_path / "t"),
                "--img-size", "28", "36"]) == 0
    cfg = json.loads((tmp_path / "t" / "config.json").read_text())
    file = str(tmp_path / "t" / "model.safetensors")
    tm = timm.create_model(cfg["architecture"], pretrained=True, num_classes=0,
                           pretrained_cfg_overlay=dict(file=file, **cfg["pretrained_cfg"]), **cfg["kwargs"]).eval()
    x = images(model, (28, 36))
    assert (tm.forward_features(x) - model.encode(x)).abs().max() < 1e-5


def test_cli_errors_are_one_line(tmp_path, capsys):
    model = tiny("maskfeat") if "maskfeat" in METHODS else None
    if model is not None:  # no transformers class for MaskFeat
        mimkit.save(model, tmp_path / "mf")
        assert cli(["export", "--checkpoint", str(tmp_path / "mf"), "--format", "hf", "--out", str(tmp_path / "o")]) == 2
        assert "no transformers export for method 'maskfeat'" in capsys.readouterr().err
    assert cli(["import", "--from", "timm", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "no timm checkpoint at" in capsys.readouterr().err
    assert cli(["import", "--from", "onnx", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "must be one of hf, official, timm" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli(["export", "--checkpoint", "x", "--format", "onnx", "--out", "y"])
    capsys.readouterr()


# ---------------------------------------------------------------------------- official .pth ----
def _official_sized_mae():
    # widths whose official head counts are inferable (width // 64 and decoder width // 32)
    model = mimkit.create("mae_vit_tiny_patch4_28", embed_dim=64, depth=1, num_heads=1, decoder_embed_dim=32,
                          decoder_depth=1, decoder_num_heads=1).eval()
    return perturb_weights(model, skip=("pos_embed",))  # sin-cos tables as the official code stores them


def test_official_mae_pth_round_trip(tmp_path):
    model = _official_sized_mae()
    sd = official_mae_state_dict(model)
    assert "blocks.0.attn.qkv.weight" in sd and "decoder_blocks.0.mlp.fc1.weight" in sd and "decoder_pred.bias" in sd
    assert not any(k.startswith(("encoder.", "decoder.decoder")) for k in sd)
    path = tmp_path / "mae_visualize.pth"
    torch.save({"model": sd, "epoch": 3, "args": argparse.Namespace(model="mae_vit_tiny")}, path)
    back = load_official_mae(path)
    assert_same_tensors(model.state_dict(), back.state_dict())
    x, noise = torch.randn(2, 1, 28, 28), torch.rand(2, 49)
    assert torch.equal(model(x, noise=noise).loss, back(x, noise=noise).loss)
    # the CLI writes mimkit's format
    assert cli(["import", "--from", "official", str(path), "--out", str(tmp_path / "m")]) == 0
    assert_same_tensors(model.state_dict(), mimkit.load(tmp_path / "m").state_dict())
    # recipe overrides; at another resolution the sin-cos tables are recomputed
    at36 = load_official_mae(path, img_size=36, norm_pix_loss=True, num_heads=4)
    assert at36.norm_pix_loss and at36.encoder.num_heads == 4
    assert torch.allclose(at36.encoder.pos_embed, sincos_pos_embed_2d(64, (9, 9)))
    assert torch.allclose(at36.decoder.decoder_pos_embed, sincos_pos_embed_2d(32, (9, 9)))


def test_official_encoder_only_and_finetuned(tmp_path):
    model = _official_sized_mae()
    enc_only = official_mae_state_dict(model, encoder_only=True)
    assert not any(k.startswith(("decoder", "mask_token")) for k in enc_only)
    with pytest.warns(UserWarning, match="encoder only"):
        back = load_official_mae({"model": enc_only})
    assert_same_tensors(model.encoder.state_dict(), back.encoder.state_dict())
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(model.encode(x), back.encode(x))
    # fine-tuned (global pool): norm -> fc_norm, learned position embedding, classifier head
    ft = dict(enc_only)
    ft["fc_norm.weight"], ft["fc_norm.bias"] = ft.pop("norm.weight"), ft.pop("norm.bias")
    ft["pos_embed"] = ft["pos_embed"] + 0.01 * torch.randn_like(ft["pos_embed"])
    ft["head.weight"], ft["head.bias"] = torch.randn(10, 64), torch.randn(10)
    torch.save({"model": ft}, tmp_path / "ft.pth")
    with pytest.warns(UserWarning, match="fc_norm"), pytest.warns(UserWarning, match="encoder only"):
        m2, extras = load_official_mae(tmp_path / "ft.pth", return_extras=True)
    assert torch.equal(m2.encoder.norm.weight, ft["fc_norm.weight"])
    assert torch.equal(m2.encoder.pos_embed, ft["pos_embed"])
    assert set(extras) == {"fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"}
    with pytest.raises(ValueError, match="not an official MAE checkpoint"):
        load_official_mae({"model": {"foo": torch.zeros(1)}})


# ---------------------------------------------------------------------------- resolution -------
def test_mae_pretraining_at_a_new_resolution(tmp_path):
    model = mimkit.create("mae_vit_tiny_patch4_28", img_size=32, embed_dim=32, depth=1, num_heads=2,
                          decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)
    mimkit.save(model, tmp_path / "m32")
    m40 = mimkit.load(tmp_path / "m32", img_size=40).train()
    assert m40.img_size == (40, 40) and m40.mimkit_config["img_size"] == 40
    assert torch.allclose(m40.encoder.pos_embed, sincos_pos_embed_2d(32, (10, 10)))
    assert torch.allclose(m40.decoder.decoder_pos_embed, sincos_pos_embed_2d(16, (10, 10)))
    assert_same_tensors(model.state_dict(), m40.state_dict(), skip={"encoder.pos_embed", "decoder.decoder_pos_embed"})
    x, noise = torch.rand(4, 1, 40, 40), torch.rand(4, 100)
    out = m40(x, noise=noise)
    assert out.pred.shape == (4, 100, 16) and out.mask.sum(1).eq(75).all()
    # same as the 32-px model run directly on 40-px images (positions recomputed on the fly)
    assert torch.allclose(out.loss, model(x, noise=noise).loss, atol=1e-6)
    opt = torch.optim.AdamW(m40.parameters(), lr=1e-3)
    first = m40(x, noise=noise).loss.item()
    for _ in range(5):
        loss = m40(x, noise=noise).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first
    mimkit.save(m40, tmp_path / "m40")
    assert mimkit.load(tmp_path / "m40").img_size == (40, 40)


@pytest.mark.parametrize("method", METHODS)
def test_non_square_and_other_resolution(method, tmp_path):
    model = tiny(method)
    mimkit.save(model, tmp_path / "m")
    size = OTHER_SIZE.get(method, (28, 36))
    resized = mimkit.load(tmp_path / "m", img_size=size)
    x = images(model, size)
    feats = resized.encode(x)
    prefix = 0 if method == "ijepa" else 1  # a class token (Swin: the mean token) in front; I-JEPA has none
    n_out = prefix + ((size[0] // 8) * (size[1] // 8) if method == "simmim_swin" else (size[0] // 4) * (size[1] // 4))
    assert feats.shape[:2] == (2, n_out) and torch.isfinite(feats).all()
    assert torch.isfinite(forward(resized, x, fixed_mask(resized, size=size)).loss)
    if method != "simmim_swin":  # ViT-style encoders also adapt on the fly, identically
        assert torch.equal(model.encode(x), feats)
    pe = getattr(model.encoder, "pos_embed", None)
    if isinstance(pe, torch.nn.Parameter) and pe.requires_grad:  # learned: bicubic 2-D resize
        assert torch.allclose(resized.encoder.pos_embed, resize_pos_embed(pe, (7, 7), (size[0] // 4, size[1] // 4)))


def test_lightning_checkpoint_at_another_resolution(tmp_path):
    model = tiny("simmim") if "simmim" in METHODS else tiny("mae")
    ckpt = {"hyper_parameters": {"model_config": model.mimkit_config},
            "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}
    torch.save(ckpt, tmp_path / "last.ckpt")
    back = mimkit.load(tmp_path / "last.ckpt")
    assert_same_tensors(model.state_dict(), back.state_dict())
    big = mimkit.load(tmp_path / "last.ckpt", img_size=32)
    assert big.encoder.pos_embed.shape[1] == 1 + 64
    x = torch.randn(2, model.in_chans, 32, 32)
    assert torch.equal(big.encode(x), model.encode(x))


def test_transformers_eps_survives_timm_export(tmp_path):
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    cfg = ViTMAEConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                       image_size=16, patch_size=4, num_channels=1, decoder_hidden_size=16,
                       decoder_num_hidden_layers=1, decoder_num_attention_heads=2, decoder_intermediate_size=32)
    assert cfg.layer_norm_eps == 1e-12  # transformers' default, not timm's 1e-6
    model = perturb_weights(from_hf(ViTMAEForPreTraining(cfg)), trainable_only=True)
    x = torch.randn(2, 1, 16, 16)
    assert (to_timm(model).forward_features(x) - model.encode(x)).abs().max() < 1e-6
    with pytest.warns(UserWarning, match="eps"):
        from mimkit.interop.timm import save_timm

        save_timm(model, tmp_path / "t")
    assert json.loads((tmp_path / "t" / "config.json").read_text())["layer_norm_eps"]["norm"] == 1e-12
    assert (load_timm(tmp_path / "t").forward_features(x) - model.encode(x)).abs().max() < 1e-6
