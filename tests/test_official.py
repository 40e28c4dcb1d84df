"""Official checkpoints of every method in and out (MAE, BEiT, SimMIM ViT/Swin, I-JEPA, data2vec 2.0).

Each test writes a state dict in the official code's layout itself (key names and shapes as
microsoft/unilm beit, microsoft/SimMIM, facebookresearch/ijepa and fairseq data2vec 2.0 define them;
the reference code is not imported), imports it, checks where every tensor landed, exports it back
bit for bit, and compares features with the ``transformers`` model the weights came from."""
import argparse
import sys
import types
import warnings

import numpy as np
import pytest
import torch
import transformers

import mimkit
from mimkit.cli import main as cli
from mimkit.interop.official import guess_method, load_official, official_checkpoint
from mimkit.ops import sincos_pos_embed_2d


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def perturb(module, scale=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return module.eval()


def assert_equal_dicts(a: dict, b: dict):
    assert set(a) == set(b), sorted(set(a) ^ set(b))[:8]
    for k in a:
        if isinstance(a[k], dict):
            assert_equal_dicts(a[k], b[k])
        else:
            assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and torch.equal(a[k], b[k]), k


def rnd(*shape, seed=[0]):
    seed[0] += 1
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed[0]))


# ---- the reference's derived buffers, written out from the official code's formulas ------------
def beit_rel_index(h, w):
    """unilm/SimMIM ``RelativePositionBias.relative_position_index``."""
    coords = torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
    rel[:, :, 0] += h - 1
    rel[:, :, 1] += w - 1
    rel[:, :, 0] *= 2 * w - 1
    n = (2 * h - 1) * (2 * w - 1) + 3
    index = torch.zeros((h * w + 1,) * 2, dtype=rel.dtype)
    index[1:, 1:] = rel.sum(-1)
    index[0, 0:], index[0:, 0], index[0, 0] = n - 3, n - 2, n - 1
    return index


def swin_rel_index(ws):
    coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).contiguous()
    rel[:, :, 0] += ws - 1
    rel[:, :, 1] += ws - 1
    rel[:, :, 0] *= 2 * ws - 1
    return rel.sum(-1)


def swin_attn_mask(res, ws, shift):
    img = torch.zeros(1, res, res, 1)
    cnt = 0
    for hs in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
        for wsl in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
            img[:, hs, wsl, :] = cnt
            cnt += 1
    win = img.view(1, res // ws, ws, res // ws, ws, 1).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws)
    mask = win.unsqueeze(1) - win.unsqueeze(2)
    return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)


def fused_qkv(hf_attn_prefix, sd, part="weight"):
    return torch.cat([sd[f"{hf_attn_prefix}.{n}_proj.{part}"] for n in "qkv"], 0)


def unilm_block(h: str, o: str, s: dict) -> dict:
    """One transformer block of a transformers BEiT-style state dict ``s`` (prefix ``h``) in the unilm /
    SimMIM layout (prefix ``o``): fused qkv weight, separate q and v biases."""
    return {f"{o}.norm1.weight": s[f"{h}.layernorm_before.weight"], f"{o}.norm1.bias": s[f"{h}.layernorm_before.bias"],
            f"{o}.attn.qkv.weight": fused_qkv(f"{h}.attention", s), f"{o}.attn.q_bias": s[f"{h}.attention.q_proj.bias"],
            f"{o}.attn.v_bias": s[f"{h}.attention.v_proj.bias"],
            f"{o}.attn.proj.weight": s[f"{h}.attention.o_proj.weight"], f"{o}.attn.proj.bias": s[f"{h}.attention.o_proj.bias"],
            f"{o}.norm2.weight": s[f"{h}.layernorm_after.weight"], f"{o}.norm2.bias": s[f"{h}.layernorm_after.bias"],
            f"{o}.mlp.fc1.weight": s[f"{h}.mlp.fc1.weight"], f"{o}.mlp.fc1.bias": s[f"{h}.mlp.fc1.bias"],
            f"{o}.mlp.fc2.weight": s[f"{h}.mlp.fc2.weight"], f"{o}.mlp.fc2.bias": s[f"{h}.mlp.fc2.bias"]}


# ---------------------------------------------------------------------------- BEiT -----------------
def hf_beit(**kw):
    cfg = transformers.BeitConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                  image_size=16, patch_size=4, num_channels=3, vocab_size=24, use_mask_token=True,
                                  layer_norm_eps=1e-6, layer_scale_init_value=0.1, use_mean_pooling=True, **kw)
    return perturb(transformers.BeitForMaskedImageModeling(cfg))


def beit_official_from_hf(hf) -> dict:
    """BeitForMaskedImageModeling -> the state dict of unilm's VisionTransformerForMaskedImageModeling."""
    s = hf.state_dict()
    grid = (4, 4)
    sd = {"cls_token": s["beit.embeddings.cls_token"], "mask_token": s["beit.embeddings.mask_token"],
          "patch_embed.proj.weight": s["beit.embeddings.patch_embeddings.projection.weight"],
          "patch_embed.proj.bias": s["beit.embeddings.patch_embeddings.projection.bias"],
          "rel_pos_bias.relative_position_bias_table": s["beit.shared_position_bias.relative_position_bias_table"],
          "rel_pos_bias.relative_position_index": beit_rel_index(*grid),
          "norm.weight": s["layernorm.weight"], "norm.bias": s["layernorm.bias"],
          "lm_head.weight": s["lm_head.weight"], "lm_head.bias": s["lm_head.bias"]}
    for i in range(hf.config.num_hidden_layers):
        h, o = f"beit.layers.{i}", f"blocks.{i}"
        sd.update({f"{o}.gamma_1": s[f"{h}.lambda_1"], f"{o}.gamma_2": s[f"{h}.lambda_2"], **unilm_block(h, o, s)})
    return {k: v.clone() for k, v in sd.items()}


def test_beit_pretraining_checkpoint_in_and_out(tmp_path):
    hf = hf_beit(use_shared_relative_position_bias=True)
    sd = beit_official_from_hf(hf)
    path = tmp_path / "checkpoint-799.pth"
    torch.save({"model": sd, "epoch": 799, "args": argparse.Namespace(model="beit_base_patch16_224_8k_vocab")}, path)
    model = load_official(path)  # the method is guessed from the keys
    assert model.method == "beit" and model.encoder.num_heads == 2 and model.vocab_size == 24
    own = model.state_dict()
    for k, v in sd.items():  # every tensor lands under encoder. with its own name (lm_head at the top)
        if not k.endswith("relative_position_index"):
            assert torch.equal(own[k if k.startswith("lm_head") else f"encoder.{k}"], v), k
    x = torch.randn(2, 3, 16, 16)
    mask = torch.rand(2, 16) < 0.4
    with torch.no_grad():
        ref = hf(pixel_values=x, bool_masked_pos=mask).logits
    assert (model.token_logits(x, mask) - ref).abs().max() < 1e-4
    assert_equal_dicts(official_checkpoint(model), {"model": sd})


def test_beit_finetuned_layout_and_reference_resize(tmp_path):
    """The fine-tuned layout (per-block tables, fc_norm + head, no mask token), and the reference's
    relative position resize at another resolution."""
    d, depth, heads = 32, 2, 2
    sd = {"cls_token": rnd(1, 1, d), "patch_embed.proj.weight": rnd(d, 3, 4, 4), "patch_embed.proj.bias": rnd(d),
          "fc_norm.weight": rnd(d), "fc_norm.bias": rnd(d), "head.weight": rnd(10, d), "head.bias": rnd(10)}
    for i in range(depth):
        o = f"blocks.{i}"
        sd.update({f"{o}.gamma_1": rnd(d), f"{o}.gamma_2": rnd(d), f"{o}.norm1.weight": rnd(d), f"{o}.norm1.bias": rnd(d),
                   f"{o}.attn.qkv.weight": rnd(3 * d, d), f"{o}.attn.q_bias": rnd(d), f"{o}.attn.v_bias": rnd(d),
                   f"{o}.attn.relative_position_bias_table": rnd(7 * 7 + 3, heads),
                   f"{o}.attn.relative_position_index": beit_rel_index(4, 4),
                   f"{o}.attn.proj.weight": rnd(d, d), f"{o}.attn.proj.bias": rnd(d), f"{o}.norm2.weight": rnd(d),
                   f"{o}.norm2.bias": rnd(d), f"{o}.mlp.fc1.weight": rnd(4 * d, d), f"{o}.mlp.fc1.bias": rnd(4 * d),
                   f"{o}.mlp.fc2.weight": rnd(d, 4 * d), f"{o}.mlp.fc2.bias": rnd(d)})
    obj = {"model": sd}
    assert guess_method(obj) == "beit"
    model, extras = load_official(obj, method="beit", return_extras=True)
    assert model.encoder.use_relative_position_bias and not model.encoder.use_shared_relative_position_bias
    assert torch.equal(model.encoder.norm.weight, sd["fc_norm.weight"])
    assert torch.equal(model.encoder.blocks[1].attn.relative_position_bias_table, sd["blocks.1.attn.relative_position_bias_table"])
    assert set(extras) == {"fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"}
    assert_equal_dicts(official_checkpoint(model, extras), obj)
    # 16 px (4x4 patches) -> 24 px (6x6): 7x7 tables -> 11x11, as unilm's run_class_finetuning.py resizes them
    big = load_official(obj, method="beit", img_size=24)
    table = sd["blocks.0.attn.relative_position_bias_table"]
    got = big.encoder.blocks[0].attn.relative_position_bias_table
    assert got.shape == (11 * 11 + 3, heads) and torch.equal(got[-3:], table[-3:])
    assert torch.allclose(got[:-3], reference_rel_resize(table[:-3], 7, 11), atol=1e-4)
    assert torch.isfinite(big.encode(torch.randn(1, 3, 24, 24))).all()


def reference_rel_resize(table, src, dst):
    """The reference's geometric progression and bicubic spline (scipy's interp2d(kind='cubic') on a
    grid is a not-a-knot interpolating spline, RegularGridInterpolator(method='cubic') here, and takes
    the nearest boundary value outside the source range)."""
    from scipy.interpolate import RegularGridInterpolator

    lo, hi = 1.01, 1.5
    while hi - lo > 1e-6:
        q = (lo + hi) / 2
        if (1 - q ** (src // 2)) / (1 - q) > dst // 2:
            hi = q
        else:
            lo = q
    dis, cur = [], 1.0
    for i in range(src // 2):
        dis.append(cur)
        cur += q ** (i + 1)
    x = np.array([-v for v in reversed(dis)] + [0.0] + dis)
    t = dst // 2
    dx = np.arange(-t, t + 0.1, 1.0)
    dx = np.clip(dx, x[0], x[-1])  # interp2d extrapolates with the nearest boundary value
    pts = np.stack(np.meshgrid(dx, dx, indexing="ij"), -1).reshape(-1, 2)
    cols = [RegularGridInterpolator((x, x), table[:, h].reshape(src, src).double().numpy(), method="cubic", bounds_error=False, fill_value=None)(pts)
            for h in range(table.shape[1])]
    return torch.tensor(np.stack(cols, 1), dtype=torch.float32)


# ---------------------------------------------------------------------------- SimMIM ---------------
def test_simmim_vit_checkpoint_matches_transformers(tmp_path):
    cfg = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                 image_size=16, patch_size=4, encoder_stride=4, layer_norm_eps=1e-6)
    hf = perturb(transformers.ViTForMaskedImageModeling(cfg))
    with torch.no_grad():
        for layer in hf.vit.layers:
            layer.attention.k_proj.bias.zero_()  # the reference's key projection has no bias
    s = hf.state_dict()
    sd = {"encoder.cls_token": s["vit.embeddings.cls_token"], "encoder.mask_token": s["vit.embeddings.mask_token"],
          "encoder.pos_embed": s["vit.embeddings.position_embeddings"],
          "encoder.patch_embed.proj.weight": s["vit.embeddings.patch_embeddings.projection.weight"],
          "encoder.patch_embed.proj.bias": s["vit.embeddings.patch_embeddings.projection.bias"],
          "encoder.norm.weight": s["vit.layernorm.weight"], "encoder.norm.bias": s["vit.layernorm.bias"],
          "decoder.0.weight": s["decoder.0.weight"], "decoder.0.bias": s["decoder.0.bias"]}
    for i in range(2):  # USE_APE=True, USE_RPB=USE_SHARED_RPB=False, INIT_VALUES=None
        h, o = f"vit.layers.{i}", f"encoder.blocks.{i}"
        sd.update(unilm_block(h, o, s))
    sd = {k: v.clone() for k, v in sd.items()}
    model = load_official({"model": sd}, num_heads=2)  # head counts are not in the file (--set num_heads=2)
    assert model.method == "simmim" and model.encoder_stride == 4 and model.encoder.pos_embed_type == "learned"
    qkv_bias = model.encoder.blocks[0].attn.qkv.bias
    assert torch.equal(qkv_bias[:32], sd["encoder.blocks.0.attn.q_bias"]) and not qkv_bias[32:64].any()
    assert torch.equal(model.head.conv.weight, sd["decoder.0.weight"])
    x, mask = torch.randn(2, 3, 16, 16), torch.rand(2, 16) < 0.5
    with torch.no_grad():
        ref = hf(pixel_values=x, bool_masked_pos=mask).reconstruction
    assert (model.reconstruct(x, mask=mask) - ref).abs().max() < 1e-4
    assert_equal_dicts(official_checkpoint(model), {"model": sd})


def test_simmim_vit_with_relative_bias_loads_into_a_beit():
    """The released SimMIM ViT-B (shared relative position bias, layer scale, no absolute positions)."""
    d = 32
    sd = {"encoder.cls_token": rnd(1, 1, d), "encoder.mask_token": rnd(1, 1, d),
          "encoder.patch_embed.proj.weight": rnd(d, 3, 4, 4), "encoder.patch_embed.proj.bias": rnd(d),
          "encoder.rel_pos_bias.relative_position_bias_table": rnd(7 * 7 + 3, 2),
          "encoder.rel_pos_bias.relative_position_index": beit_rel_index(4, 4),
          "encoder.norm.weight": rnd(d), "encoder.norm.bias": rnd(d),
          "decoder.0.weight": rnd(4 * 4 * 3, d, 1, 1), "decoder.0.bias": rnd(48)}
    for n, shape in (("gamma_1", (d,)), ("gamma_2", (d,)), ("norm1.weight", (d,)), ("norm1.bias", (d,)),
                     ("attn.qkv.weight", (3 * d, d)), ("attn.q_bias", (d,)), ("attn.v_bias", (d,)),
                     ("attn.proj.weight", (d, d)), ("attn.proj.bias", (d,)), ("norm2.weight", (d,)), ("norm2.bias", (d,)),
                     ("mlp.fc1.weight", (4 * d, d)), ("mlp.fc1.bias", (4 * d,)), ("mlp.fc2.weight", (d, 4 * d)),
                     ("mlp.fc2.bias", (d,))):
        sd[f"encoder.blocks.0.{n}"] = rnd(*shape)
    with pytest.warns(UserWarning, match="mimkit BEiT"):
        model, extras = load_official({"model": sd}, method="simmim", return_extras=True)
    assert model.method == "beit" and model.encoder.use_shared_relative_position_bias
    assert set(extras) == {"decoder.0.weight", "decoder.0.bias"}
    assert torch.equal(model.encoder.blocks[0].gamma_2, sd["encoder.blocks.0.gamma_2"])
    assert_equal_dicts(official_checkpoint(model, extras, method="simmim"), {"model": sd})


def test_simmim_swin_checkpoint_matches_transformers(tmp_path):
    cfg = transformers.SwinConfig(image_size=32, patch_size=4, num_channels=3, embed_dim=16, depths=[2, 2],
                                  num_heads=[1, 2], window_size=4, encoder_stride=8)
    hf = perturb(transformers.SwinForMaskedImageModeling(cfg))
    s = hf.state_dict()
    sd = {"encoder.mask_token": s["swin.embeddings.mask_token"],
          "encoder.patch_embed.proj.weight": s["swin.embeddings.patch_embeddings.projection.weight"],
          "encoder.patch_embed.proj.bias": s["swin.embeddings.patch_embeddings.projection.bias"],
          "encoder.patch_embed.norm.weight": s["swin.embeddings.norm.weight"],
          "encoder.patch_embed.norm.bias": s["swin.embeddings.norm.bias"],
          "encoder.norm.weight": s["swin.layernorm.weight"], "encoder.norm.bias": s["swin.layernorm.bias"],
          "decoder.0.weight": s["decoder.0.weight"], "decoder.0.bias": s["decoder.0.bias"]}
    for i, res in enumerate((8, 4)):
        for j in range(2):
            h, o = f"swin.encoder.layers.{i}.blocks.{j}", f"encoder.layers.{i}.blocks.{j}"
            a = f"{h}.attention"
            sd.update({f"{o}.norm1.weight": s[f"{h}.layernorm_before.weight"], f"{o}.norm1.bias": s[f"{h}.layernorm_before.bias"],
                       f"{o}.attn.relative_position_bias_table": s[f"{a}.relative_position_bias.relative_position_bias_table"],
                       f"{o}.attn.relative_position_index": swin_rel_index(4),
                       f"{o}.attn.qkv.weight": fused_qkv(a, s), f"{o}.attn.qkv.bias": fused_qkv(a, s, "bias"),
                       f"{o}.attn.proj.weight": s[f"{a}.o_proj.weight"], f"{o}.attn.proj.bias": s[f"{a}.o_proj.bias"],
                       f"{o}.norm2.weight": s[f"{h}.layernorm_after.weight"], f"{o}.norm2.bias": s[f"{h}.layernorm_after.bias"],
                       f"{o}.mlp.fc1.weight": s[f"{h}.mlp.fc1.weight"], f"{o}.mlp.fc1.bias": s[f"{h}.mlp.fc1.bias"],
                       f"{o}.mlp.fc2.weight": s[f"{h}.mlp.fc2.weight"], f"{o}.mlp.fc2.bias": s[f"{h}.mlp.fc2.bias"]})
            if j % 2 and res > 4:  # shifted windows (a stage no larger than its window is not shifted)
                sd[f"{o}.attn_mask"] = swin_attn_mask(res, 4, 2)
        if i == 0:  # the patch merging at the end of stage 0
            for n in ("reduction.weight", "norm.weight", "norm.bias"):
                sd[f"encoder.layers.0.downsample.{n}"] = s[f"swin.encoder.layers.0.downsample.{n}"]
    sd = {k: v.clone() for k, v in sd.items()}
    path = tmp_path / "simmim_swin.pth"
    torch.save({"model": sd, "epoch": 99}, path)
    model = load_official(path)
    assert model.method == "simmim_swin" and list(model.img_size) == [32, 32]  # the size from the attention masks
    assert model.encoder.window_size == 4 and list(model.encoder.num_heads) == [1, 2]
    assert torch.equal(model.encoder.layers[1].downsample.reduction.weight, sd["encoder.layers.0.downsample.reduction.weight"])
    x, mask = torch.randn(2, 3, 32, 32), torch.rand(2, 64) < 0.5
    with torch.no_grad():
        ref = hf(pixel_values=x, bool_masked_pos=mask).reconstruction
    assert (model.reconstruct(x, mask=mask) - ref).abs().max() < 1e-4
    assert_equal_dicts(official_checkpoint(model), {"model": sd})


def test_simmim_training_checkpoint_with_yacs_config(tmp_path, monkeypatch):
    """ckpt_epoch_N.pth keeps the run's yacs CfgNode: read weights-only without yacs installed."""
    yacs, config = types.ModuleType("yacs"), types.ModuleType("yacs.config")

    class CfgNode(dict):  # what yacs' class pickles as: a dict subclass with bookkeeping attributes
        def __init__(self, d=None):
            super().__init__({k: CfgNode(v) if isinstance(v, dict) else v for k, v in (d or {}).items()})
            self.__dict__["__immutable__"] = True
            self.__dict__["__deprecated_keys__"] = set()

    CfgNode.__module__, CfgNode.__qualname__ = "yacs.config", "CfgNode"
    config.CfgNode, yacs.config = CfgNode, config
    monkeypatch.setitem(sys.modules, "yacs", yacs)
    monkeypatch.setitem(sys.modules, "yacs.config", config)
    m = mimkit.create("simmim_vit_tiny_patch4_28", embed_dim=32, depth=1, num_heads=2)
    with torch.no_grad():
        m.encoder.blocks[0].attn.qkv.bias[32:64] = 0
    obj = official_checkpoint(m)
    obj["config"] = CfgNode({"MODEL": {"TYPE": "vit", "VIT": {"EMBED_DIM": 32}}, "TRAIN": {"BETAS": (0.9, 0.999)}})
    torch.save(obj, tmp_path / "ckpt_epoch_4.pth")
    monkeypatch.delitem(sys.modules, "yacs.config")
    monkeypatch.delitem(sys.modules, "yacs")
    from mimkit.files import UntrustedCheckpointError, read_torch_checkpoint

    with pytest.raises(UntrustedCheckpointError, match="yacs.config.CfgNode"):
        read_torch_checkpoint(tmp_path / "ckpt_epoch_4.pth")  # not on the general allowlist
    back = load_official(tmp_path / "ckpt_epoch_4.pth", method="simmim", num_heads=2)
    assert torch.equal(back.encoder.blocks[0].attn.qkv.weight, m.encoder.blocks[0].attn.qkv.weight)


# ---------------------------------------------------------------------------- I-JEPA ---------------
def ijepa_file(hf, width=16, depth=2, seed=0):
    """facebookresearch/ijepa's save_dict: DDP-wrapped encoder / predictor / target_encoder."""
    s = hf.state_dict()
    d, n = hf.config.hidden_size, hf.config.num_hidden_layers

    def block(prefix, dim, hf_prefix=None):
        if hf_prefix is None:
            return {f"{prefix}.{k}": rnd(*shape) for k, shape in (
                ("norm1.weight", (dim,)), ("norm1.bias", (dim,)), ("attn.qkv.weight", (3 * dim, dim)), ("attn.qkv.bias", (3 * dim,)),
                ("attn.proj.weight", (dim, dim)), ("attn.proj.bias", (dim,)), ("norm2.weight", (dim,)), ("norm2.bias", (dim,)),
                ("mlp.fc1.weight", (4 * dim, dim)), ("mlp.fc1.bias", (4 * dim,)), ("mlp.fc2.weight", (dim, 4 * dim)),
                ("mlp.fc2.bias", (dim,)))}
        a = f"{hf_prefix}.attention"
        return {f"{prefix}.norm1.weight": s[f"{hf_prefix}.layernorm_before.weight"], f"{prefix}.norm1.bias": s[f"{hf_prefix}.layernorm_before.bias"],
                f"{prefix}.attn.qkv.weight": fused_qkv(a, s), f"{prefix}.attn.qkv.bias": fused_qkv(a, s, "bias"),
                f"{prefix}.attn.proj.weight": s[f"{a}.o_proj.weight"], f"{prefix}.attn.proj.bias": s[f"{a}.o_proj.bias"],
                f"{prefix}.norm2.weight": s[f"{hf_prefix}.layernorm_after.weight"], f"{prefix}.norm2.bias": s[f"{hf_prefix}.layernorm_after.bias"],
                f"{prefix}.mlp.fc1.weight": s[f"{hf_prefix}.mlp.fc1.weight"], f"{prefix}.mlp.fc1.bias": s[f"{hf_prefix}.mlp.fc1.bias"],
                f"{prefix}.mlp.fc2.weight": s[f"{hf_prefix}.mlp.fc2.weight"], f"{prefix}.mlp.fc2.bias": s[f"{hf_prefix}.mlp.fc2.bias"]}

    enc = {"patch_embed.proj.weight": s["embeddings.patch_embeddings.projection.weight"],
           "patch_embed.proj.bias": s["embeddings.patch_embeddings.projection.bias"],
           "pos_embed": s["embeddings.position_embeddings"], "norm.weight": s["layernorm.weight"], "norm.bias": s["layernorm.bias"]}
    for i in range(n):
        enc.update(block(f"blocks.{i}", d, f"layers.{i}"))
    target = {k: v + 0.01 * rnd(*v.shape) if k != "pos_embed" else v for k, v in enc.items()}
    pos = sincos_pos_embed_2d(width, (4, 4), cls_token=False)
    pred = {"predictor_embed.weight": rnd(width, d), "predictor_embed.bias": rnd(width), "mask_token": rnd(1, 1, width),
            "predictor_pos_embed": pos, "predictor_norm.weight": rnd(width), "predictor_norm.bias": rnd(width),
            "predictor_proj.weight": rnd(d, width), "predictor_proj.bias": rnd(d)}
    for i in range(depth):
        pred.update(block(f"predictor_blocks.{i}", width))
    wrap = lambda sd: {f"module.{k}": v.clone() for k, v in sd.items()}  # noqa: E731
    return {"encoder": wrap(enc), "predictor": wrap(pred), "target_encoder": wrap(target), "opt": {"state": {}},
            "scaler": None, "epoch": 300, "loss": 0.25, "batch_size": 128, "world_size": 16, "lr": 1e-3}


def test_ijepa_checkpoint_matches_transformers(tmp_path):
    cfg = transformers.IJepaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                                   image_size=16, patch_size=4, num_channels=3, layer_norm_eps=1e-6)
    hf = perturb(transformers.IJepaModel(cfg))
    with torch.no_grad():  # the official encoder's fixed sin-cos positions
        hf.embeddings.position_embeddings.copy_(sincos_pos_embed_2d(32, (4, 4), cls_token=False))
    obj = ijepa_file(hf)
    path = tmp_path / "IN1K-vit.h.14-300e.pth.tar"
    torch.save(obj, path)
    model = load_official(path, num_heads=2)
    assert model.method == "ijepa" and model.encoder.pos_embed_type == "sincos"
    assert len(model.predictor.blocks) == 2 and model.predictor.embed.out_features == 16  # read from the shapes
    assert torch.equal(model.teacher.encoder.blocks[1].mlp.fc2.weight, obj["target_encoder"]["module.blocks.1.mlp.fc2.weight"])
    assert torch.equal(model.predictor.blocks[1].attn.qkv.bias, obj["predictor"]["module.predictor_blocks.1.attn.qkv.bias"])
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref = hf(pixel_values=x).last_hidden_state
    assert (model.encoder(x).last_hidden_state - ref).abs().max() < 1e-4
    assert torch.isfinite(model(x).loss)
    assert_equal_dicts(official_checkpoint(model), {k: obj[k] for k in ("encoder", "predictor", "target_encoder")})
    # the EMA encoder, the one the paper evaluates
    ema = load_official(path, part="target_encoder", num_heads=2)
    assert torch.equal(ema.encoder.blocks[0].attn.qkv.weight, obj["target_encoder"]["module.blocks.0.attn.qkv.weight"])
    # at another resolution the sin-cos tables are recomputed
    big = load_official(path, num_heads=2, img_size=24)
    assert torch.allclose(big.encoder.pos_embed, sincos_pos_embed_2d(32, (6, 6), cls_token=False))
    assert torch.allclose(big.predictor.pos_embed, sincos_pos_embed_2d(16, (6, 6), cls_token=False))


# ---------------------------------------------------------------------------- data2vec 2.0 ---------
M = "modality_encoders.IMAGE."


def d2v_block(prefix, d):
    return {f"{prefix}.{k}": rnd(*shape) for k, shape in (
        ("norm1.weight", (d,)), ("norm1.bias", (d,)), ("attn.qkv.weight", (3 * d, d)), ("attn.qkv.bias", (3 * d,)),
        ("attn.proj.weight", (d, d)), ("attn.proj.bias", (d,)), ("norm2.weight", (d,)), ("norm2.bias", (d,)),
        ("mlp.fc1.weight", (4 * d, d)), ("mlp.fc1.bias", (4 * d,)), ("mlp.fc2.weight", (d, 4 * d)), ("mlp.fc2.bias", (d,)))}


def d2v_model_dict(d=32, prenet=1, main=2, dec_dim=32, dec_layers=2, groups=16):
    """Data2VecMultiModel.state_dict() of an image-only run (ema_encoder_only=False)."""
    enc = {f"{M}local_encoder.proj.weight": rnd(d, 3, 4, 4), f"{M}local_encoder.proj.bias": rnd(d),
           f"{M}fixed_positional_encoder.positions": sincos_pos_embed_2d(d, (4, 4), cls_token=False),
           f"{M}extra_tokens": rnd(1, 1, d), f"{M}context_encoder.norm.weight": rnd(d),
           f"{M}context_encoder.norm.bias": rnd(d)}
    for j in range(prenet):
        enc.update(d2v_block(f"{M}context_encoder.blocks.{j}", d))
    for i in range(main):
        enc.update(d2v_block(f"blocks.{i}", d))
    sd = dict(enc)
    for i in range(dec_layers):
        sd[f"{M}decoder.blocks.{i}.0.weight"] = rnd(dec_dim, (d if i == 0 else dec_dim) // groups, 3, 3)
        sd[f"{M}decoder.blocks.{i}.0.bias"] = rnd(dec_dim)
    sd[f"{M}decoder.proj.weight"], sd[f"{M}decoder.proj.bias"] = rnd(d, dec_dim), rnd(d)
    sd["_ema"] = {k: (v if "positions" in k else v + 0.01 * rnd(*v.shape)).float() for k, v in enc.items()}
    return sd


def reference_decoder(sd, x, layers):
    """fairseq's Decoder2d on (N, L, D) tokens in grid order."""
    n, L, d = x.shape
    h = w = int(L ** 0.5)
    x = x.transpose(1, 2).reshape(n, d, h, w)
    residual = x
    for i in range(layers):
        wgt, b = sd[f"{M}decoder.blocks.{i}.0.weight"], sd[f"{M}decoder.blocks.{i}.0.bias"]
        y = torch.nn.functional.conv2d(x, wgt, b, padding=1, groups=x.shape[1] // wgt.shape[1])
        y = torch.nn.functional.gelu(torch.nn.functional.layer_norm(y.transpose(-3, -1), y.shape[1:2]).transpose(-3, -1))
        x = y + residual if residual.shape[1] == y.shape[1] else y
        residual = x
    x = x.reshape(n, -1, L).transpose(1, 2)
    return torch.nn.functional.linear(x, sd[f"{M}decoder.proj.weight"], sd[f"{M}decoder.proj.bias"])


def test_data2vec2_checkpoint_in_and_out(tmp_path):
    sd = d2v_model_dict()
    obj = {"args": None, "cfg": {"model": {"_name": "data2vec_multi", "depth": 2, "average_top_k_layers": 2}},
           "model": sd, "criterion": {}, "optimizer_history": [{"num_updates": 10}], "task_state": {},
           "extra_state": {"metrics": {"default": {"loss": np.float64(0.5), "nsentences": np.int64(16)}},
                           "previous_training_time": 12.5}}
    path = tmp_path / "base_imagenet.pt"
    torch.save(obj, path)
    from mimkit.files import UntrustedCheckpointError, read_torch_checkpoint

    with pytest.raises(UntrustedCheckpointError, match="numpy"):
        read_torch_checkpoint(path)  # numpy scalars are allowed for fairseq files only
    with pytest.warns(UserWarning, match="post-LN"):
        model, extras = load_official(path, num_heads=2, return_extras=True)
    assert model.method == "data2vec2" and model.encoder.depth == 3 and model.top_k_layers == 2
    own = model.state_dict()
    # student: the prenet block first, then the main blocks; the teacher from _ema
    assert torch.equal(own["encoder.blocks.0.attn.qkv.weight"], sd[f"{M}context_encoder.blocks.0.attn.qkv.weight"])
    assert torch.equal(own["encoder.blocks.2.mlp.fc2.bias"], sd["blocks.1.mlp.fc2.bias"])
    assert torch.equal(own["teacher.encoder.blocks.1.norm1.weight"], sd["_ema"]["blocks.0.norm1.weight"])
    assert torch.equal(own["encoder.cls_token"], sd[f"{M}extra_tokens"])
    assert torch.equal(own["encoder.pos_embed"][:, 1:], sd[f"{M}fixed_positional_encoder.positions"])
    assert not own["encoder.pos_embed"][:, 0].any()
    assert set(extras) == {f"{M}context_encoder.norm.weight", f"{M}context_encoder.norm.bias",
                           f"_ema.{M}context_encoder.norm.weight", f"_ema.{M}context_encoder.norm.bias"}
    tokens = torch.randn(2, 16, 32)
    assert (model.decoder(tokens, (4, 4)) - reference_decoder(sd, tokens, 2)).abs().max() < 1e-5
    from mimkit.interop.official import data2vec2

    assert_equal_dicts(data2vec2.export(model, extras, prenet_depth=1)["model"], sd)
    out = official_checkpoint(model, extras)["model"]  # the reference's 2 prenet blocks by default
    assert f"{M}context_encoder.blocks.1.norm1.weight" in out and "blocks.0.norm1.weight" in out
    ema = load_official(path, num_heads=2, part="ema")
    assert torch.equal(ema.encoder.blocks[2].attn.proj.weight, sd["_ema"]["blocks.1.attn.proj.weight"])


# ---------------------------------------------------------------------------- CLI ------------------
def test_cli_official_import_export(tmp_path, capsys):
    hf = hf_beit(use_shared_relative_position_bias=True)
    sd = beit_official_from_hf(hf)
    torch.save({"model": sd, "args": argparse.Namespace(lr=1.5e-3)}, tmp_path / "beit.pth")
    assert cli(["import", "--from", "official", str(tmp_path / "beit.pth"), "--out", str(tmp_path / "m")]) == 0
    assert cli(["export", "--checkpoint", str(tmp_path / "m"), "--format", "official", "--out", str(tmp_path / "o.pth")]) == 0
    assert_equal_dicts(torch.load(tmp_path / "o.pth", weights_only=True), {"model": sd})
    # a fine-tuned file: its head is kept beside the model and comes back on export
    ft = {k: v for k, v in sd.items() if not k.startswith(("mask_token", "lm_head"))}
    ft["head.weight"], ft["head.bias"] = rnd(5, 32), rnd(5)
    torch.save({"model": ft}, tmp_path / "ft.pth")
    assert cli(["import", "--from", "official", str(tmp_path / "ft.pth"), "--out", str(tmp_path / "ftm"),
                "--method", "beit", "--set", "vocab_size=24"]) == 0
    assert (tmp_path / "ftm" / "official_extras.safetensors").exists()
    assert cli(["export", "--checkpoint", str(tmp_path / "ftm"), "--format", "official", "--out", str(tmp_path / "ftd")]) == 0
    assert_equal_dicts(torch.load(tmp_path / "ftd" / "checkpoint.pth", weights_only=True), {"model": ft})
    # MAE: today's import, now exported back too
    mae = mimkit.create("mae_vit_tiny_patch4_28", embed_dim=64, depth=1, num_heads=1, decoder_embed_dim=32,
                        decoder_depth=1, decoder_num_heads=1)
    mimkit.save(mae, tmp_path / "mae")
    assert cli(["export", "--checkpoint", str(tmp_path / "mae"), "--format", "official", "--out", str(tmp_path / "mae.pth")]) == 0
    assert cli(["import", "--from", "official", str(tmp_path / "mae.pth"), "--out", str(tmp_path / "mae2")]) == 0
    back = mimkit.load(tmp_path / "mae2")
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in mae.state_dict().items())
    capsys.readouterr()


def test_cli_official_errors_are_one_line(tmp_path, capsys):
    torch.save({"model": {"patch_embed.proj.weight": torch.zeros(8, 3, 4, 4)}}, tmp_path / "unclear.pth")
    assert cli(["import", "--from", "official", str(tmp_path / "unclear.pth"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "cannot tell which official code wrote" in err and "pass --method" in err and len(err.strip().splitlines()) == 1
    assert cli(["import", "--from", "official", str(tmp_path / "unclear.pth"), "--out", str(tmp_path / "o"),
                "--method", "dino"]) == 2
    assert "--method is one of mae, beit, simmim, ijepa, data2vec2" in capsys.readouterr().err
    torch.save({"encoder": {"module.patch_embed.proj.weight": torch.zeros(8, 3, 4, 4)}}, tmp_path / "ij.pth.tar")
    assert cli(["import", "--from", "official", str(tmp_path / "ij.pth.tar"), "--out", str(tmp_path / "o"),
                "--method", "ijepa", "--part", "student"]) == 2
    assert "--part for I-JEPA is one of encoder, target_encoder" in capsys.readouterr().err
    assert cli(["import", "--from", "timm", str(tmp_path), "--out", str(tmp_path / "o"), "--part", "ema"]) == 2
    assert "--part is only used with --from official" in capsys.readouterr().err
    m = mimkit.create("maskfeat_vit_tiny_patch4_28", embed_dim=32, depth=1, num_heads=2)
    mimkit.save(m, tmp_path / "mf")
    assert cli(["export", "--checkpoint", str(tmp_path / "mf"), "--format", "official", "--out", str(tmp_path / "x.pth")]) == 2
    assert "no official layout for method 'maskfeat'" in capsys.readouterr().err
