"""transformers ``ViTForMaskedImageModeling`` <-> mimkit SimMIM (ViT) and
``SwinForMaskedImageModeling`` <-> mimkit SimMIMSwin.

ViT: ``vit.embeddings.*`` -> ``encoder.{cls_token, mask_token, pos_embed, patch_embed.proj}``, ViT
layers -> timm blocks (q/k/v merged into ``qkv``), ``decoder.0`` (1x1 conv) -> ``head.conv``.

Swin: ``swin.embeddings.{patch_embeddings.projection, norm}`` -> ``encoder.patch_embed.{proj, norm}``;
block ``i.j`` keeps its indices, with ``layernorm_before/after`` -> ``norm1/2``, ``q/k/v_proj`` -> ``qkv``,
``o_proj`` -> ``proj``, ``relative_position_bias.relative_position_bias_table`` ->
``attn.relative_position_bias_table``; the patch merging at the *end* of transformers stage ``i`` is
timm's ``downsample`` at the *start* of stage ``i+1``; ``swin.layernorm`` -> ``encoder.norm``.
"""
from __future__ import annotations

import torch

from .keymap import copy_keys, hf_layer_to_timm, load_exact, normalize_hf_keys, timm_block_to_hf

# (mimkit key, transformers key) outside the transformer layers, for ViTForMaskedImageModeling
_E = "vit.embeddings"
_VIT_KEYS = [
    ("encoder.cls_token", f"{_E}.cls_token"),
    ("encoder.mask_token", f"{_E}.mask_token"),
    ("encoder.pos_embed", f"{_E}.position_embeddings"),
    ("encoder.patch_embed.proj.weight", f"{_E}.patch_embeddings.projection.weight"),
    ("encoder.patch_embed.proj.bias", f"{_E}.patch_embeddings.projection.bias"),
    ("encoder.norm.weight", "vit.layernorm.weight"),
    ("encoder.norm.bias", "vit.layernorm.bias"),
    ("head.conv.weight", "decoder.0.weight"),
    ("head.conv.bias", "decoder.0.bias"),
]
# the same for SwinForMaskedImageModeling
_S = "swin.embeddings"
_SWIN_KEYS = [
    ("encoder.mask_token", f"{_S}.mask_token"),
    ("encoder.patch_embed.proj.weight", f"{_S}.patch_embeddings.projection.weight"),
    ("encoder.patch_embed.proj.bias", f"{_S}.patch_embeddings.projection.bias"),
    ("encoder.patch_embed.norm.weight", f"{_S}.norm.weight"),
    ("encoder.patch_embed.norm.bias", f"{_S}.norm.bias"),
    ("encoder.norm.weight", "swin.layernorm.weight"),
    ("encoder.norm.bias", "swin.layernorm.bias"),
    ("head.conv.weight", "decoder.0.weight"),
    ("head.conv.bias", "decoder.0.bias"),
]

_SWIN_OLD_TO_NEW = [
    (".attention.self.relative_position_bias_table", ".attention.relative_position_bias.relative_position_bias_table"),
    (".attention.self.query.", ".attention.q_proj."),
    (".attention.self.key.", ".attention.k_proj."),
    (".attention.self.value.", ".attention.v_proj."),
    (".attention.output.dense.", ".attention.o_proj."),
    (".intermediate.dense.", ".mlp.fc1."),
    (".output.dense.", ".mlp.fc2."),
]


def _check_act(cfg):
    if cfg.hidden_act != "gelu":
        raise ValueError(f"only hidden_act='gelu' is supported (timm blocks use exact GELU), got {cfg.hidden_act!r}")


def _square(size, what):
    if isinstance(size, (list, tuple)):
        if len(size) != 2 or size[0] != size[1]:
            raise ValueError(f"{what} must be square, got {size}")
        return int(size[0])
    return int(size)


# ---- ViT --------------------------------------------------------------------------------------
def _simmim_kwargs(model):
    enc = model.encoder
    blk = enc.blocks[0]
    return dict(img_size=list(model.img_size), patch_size=model.patch_size, in_chans=model.in_chans,
                embed_dim=enc.embed_dim, depth=enc.depth, num_heads=enc.num_heads,
                mlp_ratio=blk.mlp.fc1.out_features / enc.embed_dim, qkv_bias=blk.attn.qkv.bias is not None,
                norm_eps=enc.norm.eps, pos_embed="learned", encoder_stride=model.encoder_stride,
                mask_ratio=model.mask_ratio)


def vit_simmim_from_hf(hf):
    from ..methods.simmim import SimMIM

    cfg = hf.config
    _check_act(cfg)
    if int(cfg.hidden_size * (cfg.intermediate_size / cfg.hidden_size)) != cfg.intermediate_size:
        raise ValueError(f"intermediate_size {cfg.intermediate_size} is not representable as hidden_size x mlp_ratio")
    img = _square(cfg.image_size, "image_size")
    patch = _square(cfg.patch_size, "patch_size")
    # SimMIM's 32-px mask cells when they fit, else one cell per patch
    mask_patch = 32 if 32 % patch == 0 and img % 32 == 0 else patch
    model = SimMIM(img_size=img, patch_size=patch, in_chans=cfg.num_channels, embed_dim=cfg.hidden_size,
                   depth=cfg.num_hidden_layers, num_heads=cfg.num_attention_heads,
                   mlp_ratio=cfg.intermediate_size / cfg.hidden_size, qkv_bias=cfg.qkv_bias,
                   norm_eps=cfg.layer_norm_eps, pos_embed="learned", encoder_stride=cfg.encoder_stride,
                   mask_patch_size=mask_patch)
    sd = normalize_hf_keys(hf.state_dict())
    out: dict = {}
    copy_keys(sd, _VIT_KEYS, out, to_hf=False)
    for i in range(cfg.num_hidden_layers):
        hf_layer_to_timm(sd, f"vit.layers.{i}", f"encoder.blocks.{i}", out)
    load_exact(model, out, "ViTForMaskedImageModeling -> mimkit SimMIM")
    model.mimkit_config = {"recipe": None, "builder": "simmim", **_simmim_kwargs(model),
                           "mask_patch_size": model.masking.mask_patch_size}
    return model


def vit_simmim_to_hf(model):
    from transformers import ViTConfig, ViTForMaskedImageModeling

    if getattr(model, "target", "pixels") != "pixels":
        raise ValueError(f"ViTForMaskedImageModeling predicts pixels; this model predicts {model.target}")
    if model.encoder.pos_embed_type != "learned":
        raise ValueError("transformers ViT uses learned position embeddings; this model uses fixed sin-cos ones "
                         "(create it with pos_embed='learned' to export)")
    if any(b.ls1.__class__.__name__ != "Identity" for b in model.encoder.blocks):
        raise ValueError("transformers ViT has no layer scale; create the model with init_values=None to export")
    kw = _simmim_kwargs(model)
    if kw["img_size"][0] != kw["img_size"][1]:
        raise ValueError("transformers ViTForMaskedImageModeling needs a square image_size")
    cfg = ViTConfig(
        hidden_size=kw["embed_dim"], num_hidden_layers=kw["depth"], num_attention_heads=kw["num_heads"],
        intermediate_size=int(round(kw["embed_dim"] * kw["mlp_ratio"])), image_size=kw["img_size"][0],
        patch_size=kw["patch_size"], num_channels=kw["in_chans"], encoder_stride=kw["encoder_stride"],
        layer_norm_eps=kw["norm_eps"], qkv_bias=kw["qkv_bias"], hidden_act="gelu",
        architectures=["ViTForMaskedImageModeling"],
    )
    hf = ViTForMaskedImageModeling(cfg)
    sd = model.state_dict()
    out: dict = {}
    copy_keys(sd, _VIT_KEYS, out, to_hf=True)
    for i in range(kw["depth"]):
        timm_block_to_hf(sd, f"encoder.blocks.{i}", f"vit.layers.{i}", out)
    load_exact(hf, {k: v.clone() for k, v in out.items()}, "mimkit SimMIM -> ViTForMaskedImageModeling")
    return hf.eval()


# ---- Swin -------------------------------------------------------------------------------------
def _stage_resolutions(img, patch, n_stages):
    res, out = img // patch, []
    for _ in range(n_stages):
        out.append(res)
        res = (res + 1) // 2
    return out


def _check_swin_windows(img, patch, n_stages, window):
    """transformers pads a stage before its cyclic shift and timm after, and transformers 5.x cannot run a
    stage smaller than the window: both agree exactly only when every stage resolution is a multiple of
    the window size."""
    res = _stage_resolutions(img, patch, n_stages)
    bad = [(i, r) for i, r in enumerate(res) if r % window]
    if bad:
        raise ValueError(
            f"Swin stage resolutions {res} must all be multiples of window_size {window} for an exact "
            f"transformers <-> timm conversion (stage {bad[0][0]} has {bad[0][1]}): transformers pads before the "
            f"cyclic shift and timm after, and transformers cannot run a stage smaller than its window; pick "
            f"an image size / window that divide evenly (e.g. 192 px with window 6)"
        )


def _swin_kwargs(model):
    enc = model.encoder
    blk = enc.layers[0].blocks[0]
    return dict(img_size=list(model.img_size), patch_size=model.patch_size, in_chans=model.in_chans,
                embed_dim=enc.embed_dim, depths=list(enc.depths), num_heads=list(enc.num_heads),
                window_size=enc.window_size, mlp_ratio=blk.mlp.fc1.out_features / enc.embed_dim,
                qkv_bias=blk.attn.qkv.bias is not None, norm_eps=enc.norm.eps,
                ape=enc.absolute_pos_embed is not None, mask_ratio=model.mask_ratio)


def _normalize_swin_keys(sd):
    out = {}
    for k, v in sd.items():
        for a, b in _SWIN_OLD_TO_NEW:
            k = k.replace(a, b)
        out[k] = v
    return out


def swin_simmim_from_hf(hf):
    from ..methods.simmim import SimMIMSwin

    cfg = hf.config
    _check_act(cfg)
    img = _square(cfg.image_size, "image_size")
    patch = _square(cfg.patch_size, "patch_size")
    n = len(cfg.depths)
    _check_swin_windows(img, patch, n, cfg.window_size)
    stride = patch * 2 ** (n - 1)
    if cfg.encoder_stride != stride:
        raise ValueError(f"encoder_stride {cfg.encoder_stride} does not match the Swin output stride {stride} "
                         f"(patch {patch} x 2^{n - 1}); the reconstruction would not have the input size")
    model = SimMIMSwin(img_size=img, patch_size=patch, in_chans=cfg.num_channels, embed_dim=cfg.embed_dim,
                       depths=tuple(cfg.depths), num_heads=tuple(cfg.num_heads), window_size=cfg.window_size,
                       mlp_ratio=cfg.mlp_ratio, qkv_bias=cfg.qkv_bias, norm_eps=cfg.layer_norm_eps,
                       ape=cfg.use_absolute_embeddings, mask_patch_size=stride)
    sd = _normalize_swin_keys(hf.state_dict())
    e = "swin.embeddings"
    out: dict = {}
    copy_keys(sd, _SWIN_KEYS, out, to_hf=False)
    if cfg.use_absolute_embeddings:
        out["encoder.absolute_pos_embed"] = sd[f"{e}.position_embeddings"]
    for i, depth in enumerate(cfg.depths):
        src = f"swin.encoder.layers.{i}"
        for j in range(depth):
            s, d = f"{src}.blocks.{j}", f"encoder.layers.{i}.blocks.{j}"
            a = f"{s}.attention"
            for hn, tn in (("layernorm_before", "norm1"), ("layernorm_after", "norm2"), ("mlp.fc1", "mlp.fc1"),
                           ("mlp.fc2", "mlp.fc2"), ("attention.o_proj", "attn.proj")):
                out[f"{d}.{tn}.weight"] = sd[f"{s}.{hn}.weight"]
                out[f"{d}.{tn}.bias"] = sd[f"{s}.{hn}.bias"]
            out[f"{d}.attn.qkv.weight"] = torch.cat([sd[f"{a}.{q}_proj.weight"] for q in "qkv"], 0)
            if f"{a}.q_proj.bias" in sd:
                out[f"{d}.attn.qkv.bias"] = torch.cat([sd[f"{a}.{q}_proj.bias"] for q in "qkv"], 0)
            out[f"{d}.attn.relative_position_bias_table"] = \
                sd[f"{a}.relative_position_bias.relative_position_bias_table"]
        if i + 1 < n:
            ds, dd = f"{src}.downsample", f"encoder.layers.{i + 1}.downsample"
            out[f"{dd}.reduction.weight"] = sd[f"{ds}.reduction.weight"]
            out[f"{dd}.norm.weight"] = sd[f"{ds}.norm.weight"]
            out[f"{dd}.norm.bias"] = sd[f"{ds}.norm.bias"]
    load_exact(model, out, "SwinForMaskedImageModeling -> mimkit SimMIMSwin")
    model.mimkit_config = {"recipe": None, "builder": "simmim_swin", **_swin_kwargs(model),
                           "mask_patch_size": model.masking.mask_patch_size}
    return model


def swin_simmim_to_hf(model):
    from transformers import SwinConfig, SwinForMaskedImageModeling

    kw = _swin_kwargs(model)
    if kw["img_size"][0] != kw["img_size"][1]:
        raise ValueError("transformers SwinForMaskedImageModeling needs a square image_size")
    img = kw["img_size"][0]
    _check_swin_windows(img, kw["patch_size"], len(kw["depths"]), kw["window_size"])
    fixed = [model.encoder.patch_embed.norm] + [s.downsample.norm for s in model.encoder.layers
                                                 if hasattr(s.downsample, "norm")]
    if any(m.eps != 1e-5 for m in fixed):
        raise ValueError("transformers Swin fixes the patch-embedding and patch-merging LayerNorm eps at 1e-5")
    cfg = SwinConfig(
        image_size=img, patch_size=kw["patch_size"], num_channels=kw["in_chans"], embed_dim=kw["embed_dim"],
        depths=kw["depths"], num_heads=kw["num_heads"], window_size=kw["window_size"], mlp_ratio=kw["mlp_ratio"],
        qkv_bias=kw["qkv_bias"], hidden_act="gelu", use_absolute_embeddings=kw["ape"],
        layer_norm_eps=kw["norm_eps"], encoder_stride=model.encoder_stride, drop_path_rate=0.0,
        architectures=["SwinForMaskedImageModeling"],
    )
    hf = SwinForMaskedImageModeling(cfg)
    sd = model.state_dict()
    e = "swin.embeddings"
    out: dict = {}
    copy_keys(sd, _SWIN_KEYS, out, to_hf=True)
    if kw["ape"]:
        out[f"{e}.position_embeddings"] = sd["encoder.absolute_pos_embed"]
    n = len(kw["depths"])
    for i, depth in enumerate(kw["depths"]):
        dst = f"swin.encoder.layers.{i}"
        for j in range(depth):
            s, d = f"encoder.layers.{i}.blocks.{j}", f"{dst}.blocks.{j}"
            a = f"{d}.attention"
            for hn, tn in (("layernorm_before", "norm1"), ("layernorm_after", "norm2"), ("mlp.fc1", "mlp.fc1"),
                           ("mlp.fc2", "mlp.fc2"), ("attention.o_proj", "attn.proj")):
                out[f"{d}.{hn}.weight"] = sd[f"{s}.{tn}.weight"]
                out[f"{d}.{hn}.bias"] = sd[f"{s}.{tn}.bias"]
            for q, t in zip("qkv", sd[f"{s}.attn.qkv.weight"].chunk(3, 0)):
                out[f"{a}.{q}_proj.weight"] = t
            if f"{s}.attn.qkv.bias" in sd:
                for q, t in zip("qkv", sd[f"{s}.attn.qkv.bias"].chunk(3, 0)):
                    out[f"{a}.{q}_proj.bias"] = t
            out[f"{a}.relative_position_bias.relative_position_bias_table"] = \
                sd[f"{s}.attn.relative_position_bias_table"]
        if i + 1 < n:
            ds, dd = f"encoder.layers.{i + 1}.downsample", f"{dst}.downsample"
            out[f"{dd}.reduction.weight"] = sd[f"{ds}.reduction.weight"]
            out[f"{dd}.norm.weight"] = sd[f"{ds}.norm.weight"]
            out[f"{dd}.norm.bias"] = sd[f"{ds}.norm.bias"]
    load_exact(hf, {k: v.clone() for k, v in out.items()}, "mimkit SimMIMSwin -> SwinForMaskedImageModeling")
    return hf.eval()


FROM_HF = {"ViTForMaskedImageModeling": vit_simmim_from_hf, "SwinForMaskedImageModeling": swin_simmim_from_hf}
TO_HF = {"simmim": vit_simmim_to_hf, "simmim_swin": swin_simmim_to_hf}
