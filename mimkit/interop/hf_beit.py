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

from ..registry import create
from .keymap import copy_keys, embedding_keys, load_exact, norm_keys, normalize_hf_keys, vit_layer_keys

_KEYS = embedding_keys("beit.embeddings") + norm_keys("lm_head", "lm_head") + [
    ("encoder.rel_pos_bias.relative_position_bias_table", "beit.shared_position_bias.relative_position_bias_table")]


def _table(depth: int, mean_pooling: bool) -> list:
    """BeitForMaskedImageModeling <-> mimkit BEiT. Layers: the ViT layer layout without a key bias (timm
    keeps ``q_bias``/``v_bias``), with layer scale (``lambda`` <-> ``gamma``) and an optional per-layer
    relative position table. The one real norm before the head is ``layernorm`` with mean pooling, else
    ``beit.layernorm`` (and ``layernorm`` becomes mimkit's ``head_norm``)."""
    norms = [("encoder.norm", "layernorm")] if mean_pooling else [("encoder.norm", "beit.layernorm"),
                                                                  ("head_norm", "layernorm")]
    table = _KEYS + [pair for a, b in norms for pair in norm_keys(a, b)]
    for i in range(depth):
        hf, timm = f"beit.layers.{i}", f"encoder.blocks.{i}"
        table += [k for k in vit_layer_keys(hf, timm) if not k[0].endswith("qkv.bias")] + [
            (f"{timm}.gamma_1", f"{hf}.lambda_1"), (f"{timm}.gamma_2", f"{hf}.lambda_2"),
            (f"{timm}.attn.q_bias", f"{hf}.attention.q_proj.bias"), (f"{timm}.attn.v_bias", f"{hf}.attention.v_proj.bias"),
            (f"{timm}.attn.relative_position_bias_table", f"{hf}.relative_position_bias.relative_position_bias_table")]
    return table


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
    sd = _normalize_beit_keys(hf.state_dict())
    for i in range(cfg.num_hidden_layers):
        k_bias = sd.get(f"beit.layers.{i}.attention.k_proj.bias")
        if k_bias is not None and k_bias.abs().max() > 0:
            raise ValueError(f"beit.layers.{i}.attention.k_proj has a nonzero bias; BEiT's key projection has none")
    kw["img_size"] = size
    kw["mlp_ratio"] = int(kw["embed_dim"] * kw["mlp_ratio"]) / kw["embed_dim"]
    model = create("beit", **kw)
    load_exact(model, copy_keys(sd, _table(cfg.num_hidden_layers, cfg.use_mean_pooling), {}, to_hf=False),
               "BeitForMaskedImageModeling -> mimkit BEiT")
    return model.eval()  # like from_pretrained (BEiT configs default to drop_path_rate=0.1)


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
    out = copy_keys(model.state_dict(), _table(kw["depth"], not kw["head_norm"]), {}, to_hf=True)
    load_exact(hf, {k: v.clone() for k, v in out.items()}, "mimkit BEiT -> BeitForMaskedImageModeling")
    return hf.eval()


FROM_HF = {"BeitForMaskedImageModeling": beit_from_hf}
TO_HF = {"beit": beit_to_hf}
