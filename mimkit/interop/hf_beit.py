"""transformers ``BeitForMaskedImageModeling`` <-> mimkit BEiT.

Layout: ``beit.embeddings`` (cls/mask token, optional absolute positions, patch projection),
``beit.shared_position_bias`` (shared relative position table), ``beit.layers.{i}`` with
``lambda_1/2`` (layer scale), ``attention.{q,k,v,o}_proj`` (no key bias) and an optional per-layer
``relative_position_bias``; then ``beit.layernorm`` (Identity when ``use_mean_pooling``, the default),
``layernorm`` and ``lm_head``. With ``use_mean_pooling=True`` the one real norm before the head is
mimkit's encoder final norm; with ``use_mean_pooling=False`` ``beit.layernorm`` is the encoder norm and
``layernorm`` becomes the model's extra ``head_norm``. 4.x key names (``beit.encoder.layer.{i}.attention
.attention.query``...) are read too.
"""
from __future__ import annotations

import torch

from .keymap import load_exact, normalize_hf_keys


def _normalize_beit_keys(sd: dict) -> dict:
    sd = normalize_hf_keys(sd)
    out = {}
    for k, v in sd.items():
        if k.endswith("relative_position_index"):
            continue  # a derived buffer in old checkpoints
        k = k.replace("beit.encoder.layers.", "beit.layers.")
        k = k.replace("beit.encoder.relative_position_bias.", "beit.shared_position_bias.")
        k = k.replace(".attention.attention.relative_position_bias.", ".relative_position_bias.")
        k = k.replace(".attention.relative_position_bias.", ".relative_position_bias.")
        out[k] = v
    return out


def _check_config(cfg):
    if cfg.hidden_act != "gelu":
        raise ValueError(f"only hidden_act='gelu' is supported, got {cfg.hidden_act!r}")
    if not cfg.use_mask_token:
        raise ValueError("BeitForMaskedImageModeling needs use_mask_token=True")
    head_dim = getattr(cfg, "head_dim", None)
    if head_dim not in (None, cfg.hidden_size // cfg.num_attention_heads):
        raise ValueError(f"head_dim={head_dim} other than hidden_size/num_attention_heads is not supported")


def beit_from_hf(hf):
    from ..methods.beit import BEiT

    cfg = hf.config
    _check_config(cfg)
    kw = dict(
        img_size=list(cfg.image_size) if isinstance(cfg.image_size, (list, tuple)) else cfg.image_size,
        patch_size=cfg.patch_size, in_chans=cfg.num_channels, embed_dim=cfg.hidden_size,
        depth=cfg.num_hidden_layers, num_heads=cfg.num_attention_heads,
        mlp_ratio=cfg.intermediate_size / cfg.hidden_size, vocab_size=cfg.vocab_size, qkv_bias=True,
        norm_eps=cfg.layer_norm_eps, layer_scale_init_value=float(cfg.layer_scale_init_value or 0.0),
        use_shared_relative_position_bias=bool(cfg.use_shared_relative_position_bias),
        use_relative_position_bias=bool(cfg.use_relative_position_bias),
        use_absolute_position_embeddings=bool(cfg.use_absolute_position_embeddings),
        drop_path_rate=float(cfg.drop_path_rate), head_norm=not cfg.use_mean_pooling,
    )
    # the reference masks 75 of 196 patches with blocks of >= 16; keep that share on other grids
    size = kw["img_size"] if isinstance(kw["img_size"], list) else [kw["img_size"]] * 2
    num_patches = (size[0] // cfg.patch_size) * (size[1] // cfg.patch_size)
    kw["num_masking_patches"] = min(num_patches - 1, max(1, round(num_patches * 75 / 196)))
    kw["min_num_patches"] = min(16, max(1, kw["num_masking_patches"] // 4))
    if int(kw["embed_dim"] * kw["mlp_ratio"]) != cfg.intermediate_size:
        raise ValueError(f"intermediate_size {cfg.intermediate_size} is not a whole multiple of hidden_size")
    model = BEiT(**kw)
    sd = _normalize_beit_keys(hf.state_dict())
    e = "beit.embeddings"
    out = {
        "encoder.cls_token": sd[f"{e}.cls_token"],
        "encoder.mask_token": sd[f"{e}.mask_token"],
        "encoder.patch_embed.proj.weight": sd[f"{e}.patch_embeddings.projection.weight"],
        "encoder.patch_embed.proj.bias": sd[f"{e}.patch_embeddings.projection.bias"],
        "lm_head.weight": sd["lm_head.weight"],
        "lm_head.bias": sd["lm_head.bias"],
    }
    if cfg.use_absolute_position_embeddings:
        out["encoder.pos_embed"] = sd[f"{e}.position_embeddings"]
    if cfg.use_shared_relative_position_bias:
        out["encoder.rel_pos_bias.relative_position_bias_table"] = \
            sd["beit.shared_position_bias.relative_position_bias_table"]
    final = "beit.layernorm" if not cfg.use_mean_pooling else "layernorm"
    out["encoder.norm.weight"], out["encoder.norm.bias"] = sd[f"{final}.weight"], sd[f"{final}.bias"]
    if not cfg.use_mean_pooling:
        out["head_norm.weight"], out["head_norm.bias"] = sd["layernorm.weight"], sd["layernorm.bias"]
    for i in range(cfg.num_hidden_layers):
        _layer_to_block(sd, f"beit.layers.{i}", f"encoder.blocks.{i}", out)
    load_exact(model, out, "BeitForMaskedImageModeling -> mimkit BEiT")
    model.mimkit_config = {"recipe": None, "builder": "beit", **beit_kwargs(model)}
    return model.eval()  # like from_pretrained (BEiT configs default to drop_path_rate=0.1)


def _layer_to_block(sd, src, dst, out):
    a = f"{src}.attention"
    if f"{src}.lambda_1" in sd:
        out[f"{dst}.gamma_1"], out[f"{dst}.gamma_2"] = sd[f"{src}.lambda_1"], sd[f"{src}.lambda_2"]
    out[f"{dst}.norm1.weight"], out[f"{dst}.norm1.bias"] = sd[f"{src}.layernorm_before.weight"], sd[f"{src}.layernorm_before.bias"]
    out[f"{dst}.norm2.weight"], out[f"{dst}.norm2.bias"] = sd[f"{src}.layernorm_after.weight"], sd[f"{src}.layernorm_after.bias"]
    out[f"{dst}.attn.qkv.weight"] = torch.cat([sd[f"{a}.{n}_proj.weight"] for n in "qkv"], 0)
    if f"{a}.k_proj.bias" in sd and sd[f"{a}.k_proj.bias"].abs().max() > 0:
        raise ValueError(f"{a}.k_proj has a nonzero bias; BEiT's key projection has none")
    out[f"{dst}.attn.q_bias"], out[f"{dst}.attn.v_bias"] = sd[f"{a}.q_proj.bias"], sd[f"{a}.v_proj.bias"]
    out[f"{dst}.attn.proj.weight"], out[f"{dst}.attn.proj.bias"] = sd[f"{a}.o_proj.weight"], sd[f"{a}.o_proj.bias"]
    for j in (1, 2):
        out[f"{dst}.mlp.fc{j}.weight"], out[f"{dst}.mlp.fc{j}.bias"] = sd[f"{src}.mlp.fc{j}.weight"], sd[f"{src}.mlp.fc{j}.bias"]
    if f"{src}.relative_position_bias.relative_position_bias_table" in sd:
        out[f"{dst}.attn.relative_position_bias_table"] = sd[f"{src}.relative_position_bias.relative_position_bias_table"]


def beit_kwargs(model) -> dict:
    enc = model.encoder
    blk = enc.blocks[0]
    return dict(img_size=list(model.img_size), patch_size=model.patch_size, in_chans=model.in_chans,
                embed_dim=enc.embed_dim, depth=enc.depth, num_heads=enc.num_heads,
                mlp_ratio=blk.mlp.fc1.out_features / enc.embed_dim, vocab_size=model.vocab_size,
                qkv_bias=blk.attn.q_bias is not None, norm_eps=enc.norm.eps,
                layer_scale_init_value=enc.layer_scale_init_value,
                use_shared_relative_position_bias=enc.use_shared_relative_position_bias,
                use_relative_position_bias=enc.use_relative_position_bias,
                use_absolute_position_embeddings=enc.use_absolute_position_embeddings,
                drop_path_rate=float(getattr(enc.blocks[-1].drop_path1, "drop_prob", 0.0)),
                head_norm=not isinstance(model.head_norm, torch.nn.Identity),
                num_masking_patches=int(round(model.mask_fraction * enc.num_patches)),
                min_num_patches=int(getattr(model.masking, "min_num_patches", 16)))


def beit_to_hf(model):
    from transformers import BeitConfig, BeitForMaskedImageModeling

    kw = beit_kwargs(model)
    if not kw["qkv_bias"]:
        raise ValueError("transformers BEiT always has query/value biases; this model was built with qkv_bias=False")
    img = kw["img_size"]
    cfg = BeitConfig(
        hidden_size=kw["embed_dim"], num_hidden_layers=kw["depth"], num_attention_heads=kw["num_heads"],
        intermediate_size=int(kw["embed_dim"] * kw["mlp_ratio"]), hidden_act="gelu",
        image_size=img[0] if img[0] == img[1] else list(img), patch_size=kw["patch_size"],
        num_channels=kw["in_chans"], vocab_size=kw["vocab_size"], layer_norm_eps=kw["norm_eps"],
        use_mask_token=True, use_absolute_position_embeddings=kw["use_absolute_position_embeddings"],
        use_relative_position_bias=kw["use_relative_position_bias"],
        use_shared_relative_position_bias=kw["use_shared_relative_position_bias"],
        layer_scale_init_value=kw["layer_scale_init_value"], use_mean_pooling=not kw["head_norm"],
        drop_path_rate=kw["drop_path_rate"], architectures=["BeitForMaskedImageModeling"],
    )
    hf = BeitForMaskedImageModeling(cfg)
    sd = model.state_dict()
    e = "beit.embeddings"
    out = {
        f"{e}.cls_token": sd["encoder.cls_token"],
        f"{e}.mask_token": sd["encoder.mask_token"],
        f"{e}.patch_embeddings.projection.weight": sd["encoder.patch_embed.proj.weight"],
        f"{e}.patch_embeddings.projection.bias": sd["encoder.patch_embed.proj.bias"],
        "lm_head.weight": sd["lm_head.weight"],
        "lm_head.bias": sd["lm_head.bias"],
    }
    if kw["use_absolute_position_embeddings"]:
        out[f"{e}.position_embeddings"] = sd["encoder.pos_embed"]
    if kw["use_shared_relative_position_bias"]:
        out["beit.shared_position_bias.relative_position_bias_table"] = \
            sd["encoder.rel_pos_bias.relative_position_bias_table"]
    if kw["head_norm"]:
        out["beit.layernorm.weight"], out["beit.layernorm.bias"] = sd["encoder.norm.weight"], sd["encoder.norm.bias"]
        out["layernorm.weight"], out["layernorm.bias"] = sd["head_norm.weight"], sd["head_norm.bias"]
    else:
        out["layernorm.weight"], out["layernorm.bias"] = sd["encoder.norm.weight"], sd["encoder.norm.bias"]
    for i in range(kw["depth"]):
        src, dst = f"encoder.blocks.{i}", f"beit.layers.{i}"
        a = f"{dst}.attention"
        if f"{src}.gamma_1" in sd:
            out[f"{dst}.lambda_1"], out[f"{dst}.lambda_2"] = sd[f"{src}.gamma_1"], sd[f"{src}.gamma_2"]
        out[f"{dst}.layernorm_before.weight"], out[f"{dst}.layernorm_before.bias"] = sd[f"{src}.norm1.weight"], sd[f"{src}.norm1.bias"]
        out[f"{dst}.layernorm_after.weight"], out[f"{dst}.layernorm_after.bias"] = sd[f"{src}.norm2.weight"], sd[f"{src}.norm2.bias"]
        for name, t in zip("qkv", sd[f"{src}.attn.qkv.weight"].chunk(3, 0)):
            out[f"{a}.{name}_proj.weight"] = t
        out[f"{a}.q_proj.bias"], out[f"{a}.v_proj.bias"] = sd[f"{src}.attn.q_bias"], sd[f"{src}.attn.v_bias"]
        out[f"{a}.o_proj.weight"], out[f"{a}.o_proj.bias"] = sd[f"{src}.attn.proj.weight"], sd[f"{src}.attn.proj.bias"]
        for j in (1, 2):
            out[f"{dst}.mlp.fc{j}.weight"], out[f"{dst}.mlp.fc{j}.bias"] = sd[f"{src}.mlp.fc{j}.weight"], sd[f"{src}.mlp.fc{j}.bias"]
        if f"{src}.attn.relative_position_bias_table" in sd:
            out[f"{dst}.relative_position_bias.relative_position_bias_table"] = sd[f"{src}.attn.relative_position_bias_table"]
    load_exact(hf, {k: v.clone() for k, v in out.items()}, "mimkit BEiT -> BeitForMaskedImageModeling")
    return hf.eval()


FROM_HF = {"BeitForMaskedImageModeling": beit_from_hf}
TO_HF = {"beit": beit_to_hf}
