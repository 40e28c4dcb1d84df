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

from ..registry import create
from .keymap import copy_keys, embedding_keys, load_exact, norm_keys, normalize_hf_keys, vit_layer_keys

# (mimkit key, transformers key) outside the transformer layers, for ViTForMaskedImageModeling
_VIT_KEYS = embedding_keys("vit.embeddings") + norm_keys("encoder.norm", "vit.layernorm") + norm_keys("head.conv", "decoder.0")
# the same for SwinForMaskedImageModeling
_SWIN_KEYS = (embedding_keys("swin.embeddings", ("mask_token", "patch_embed"))
              + norm_keys("encoder.patch_embed.norm", "swin.embeddings.norm") + norm_keys("encoder.norm", "swin.layernorm")
              + norm_keys("head.conv", "decoder.0"))

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


def _vit_table(depth: int) -> list:
    return _VIT_KEYS + [k for i in range(depth) for k in vit_layer_keys(f"vit.layers.{i}", f"encoder.blocks.{i}")]


def vit_simmim_from_hf(hf):
    cfg = hf.config
    _check_act(cfg)
    if int(cfg.hidden_size * (cfg.intermediate_size / cfg.hidden_size)) != cfg.intermediate_size:
        raise ValueError(f"intermediate_size {cfg.intermediate_size} is not representable as hidden_size x mlp_ratio")
    img = _square(cfg.image_size, "image_size")
    patch = _square(cfg.patch_size, "patch_size")
    # SimMIM's 32-px mask cells when they fit, else one cell per patch
    mask_patch = 32 if 32 % patch == 0 and img % 32 == 0 else patch
    model = create("simmim", img_size=[img, img], patch_size=patch, in_chans=cfg.num_channels,
                   embed_dim=cfg.hidden_size, depth=cfg.num_hidden_layers, num_heads=cfg.num_attention_heads,
                   mlp_ratio=cfg.intermediate_size / cfg.hidden_size, qkv_bias=cfg.qkv_bias,
                   norm_eps=cfg.layer_norm_eps, pos_embed="learned", encoder_stride=cfg.encoder_stride or patch,
                   mask_ratio=0.6, mask_patch_size=mask_patch)
    sd = normalize_hf_keys(hf.state_dict())
    load_exact(model, copy_keys(sd, _vit_table(cfg.num_hidden_layers), {}, to_hf=False),
               "ViTForMaskedImageModeling -> mimkit SimMIM")
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
    out = copy_keys(model.state_dict(), _vit_table(kw["depth"]), {}, to_hf=True)
    load_exact(hf, {k: v.clone() for k, v in out.items()}, "mimkit SimMIM -> ViTForMaskedImageModeling")
    return hf.eval()


# ---- Swin -------------------------------------------------------------------------------------
def stage_resolutions(img, patch, n_stages):
    res, out = img // patch, []
    for _ in range(n_stages):
        out.append(res)
        res = (res + 1) // 2
    return out


def _check_swin_windows(img, patch, n_stages, window):
    """transformers pads a stage before its cyclic shift and timm after, and transformers 5.x cannot run a
    stage smaller than the window: both agree exactly only when every stage resolution is a multiple of
    the window size."""
    res = stage_resolutions(img, patch, n_stages)
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


def _swin_table(depths: list[int]) -> list:
    """Key table of SwinForMaskedImageModeling: its blocks have the ViT layer layout plus a relative
    position table; the patch merging at the *end* of transformers stage ``i`` is timm's ``downsample``
    at the *start* of stage ``i + 1``."""
    table = list(_SWIN_KEYS) + [("encoder.absolute_pos_embed", "swin.embeddings.position_embeddings")]
    for i, depth in enumerate(depths):
        hf = f"swin.encoder.layers.{i}"
        for j in range(depth):
            s, d = f"{hf}.blocks.{j}", f"encoder.layers.{i}.blocks.{j}"
            table += vit_layer_keys(s, d) + [(f"{d}.attn.relative_position_bias_table",
                                              f"{s}.attention.relative_position_bias.relative_position_bias_table")]
        if i + 1 < len(depths):
            table += [(f"encoder.layers.{i + 1}.downsample.{k}", f"{hf}.downsample.{k}")
                      for k in ("reduction.weight", "norm.weight", "norm.bias")]
    return table


def swin_simmim_from_hf(hf):
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
    model = create("simmim_swin", img_size=[img, img], patch_size=patch, in_chans=cfg.num_channels,
                   embed_dim=cfg.embed_dim, depths=list(cfg.depths), num_heads=list(cfg.num_heads),
                   window_size=cfg.window_size, mlp_ratio=cfg.mlp_ratio, qkv_bias=cfg.qkv_bias,
                   norm_eps=cfg.layer_norm_eps, ape=cfg.use_absolute_embeddings, mask_ratio=0.6,
                   mask_patch_size=stride)
    out = copy_keys(_normalize_swin_keys(hf.state_dict()), _swin_table(list(cfg.depths)), {}, to_hf=False)
    load_exact(model, out, "SwinForMaskedImageModeling -> mimkit SimMIMSwin")
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
    out = copy_keys(model.state_dict(), _swin_table(kw["depths"]), {}, to_hf=True)
    load_exact(hf, {k: v.clone() for k, v in out.items()}, "mimkit SimMIMSwin -> SwinForMaskedImageModeling")
    return hf.eval()


FROM_HF = {"ViTForMaskedImageModeling": vit_simmim_from_hf, "SwinForMaskedImageModeling": swin_simmim_from_hf}
TO_HF = {"simmim": vit_simmim_to_hf, "simmim_swin": swin_simmim_to_hf}
