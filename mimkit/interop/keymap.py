"""State-dict key maps between ``transformers`` ViT-style layers and timm blocks (qkv split/merge).

``transformers`` 5.x names a layer ``layers.{i}.attention.{q,k,v,o}_proj`` and ``mlp.fc{1,2}``;
4.x used ``layer.{i}.attention.attention.{query,key,value}``, ``attention.output.dense``,
``intermediate.dense`` and ``output.dense``. Both are read; the installed naming is written.
"""
from __future__ import annotations

import torch

_OLD_TO_NEW = [
    (".attention.attention.query.", ".attention.q_proj."),
    (".attention.attention.key.", ".attention.k_proj."),
    (".attention.attention.value.", ".attention.v_proj."),
    (".attention.output.dense.", ".attention.o_proj."),
    (".intermediate.dense.", ".mlp.fc1."),
    (".output.dense.", ".mlp.fc2."),
]


def normalize_hf_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rewrite 4.x-style layer keys into 5.x style (``layer.i`` -> ``layers.i``)."""
    out = {}
    for k, v in sd.items():
        nk = k.replace(".layer.", ".layers.") if ".encoder.layer." in k or k.startswith("encoder.layer.") else k
        nk = nk.replace("encoder.layers.", "layers.") if "vit.encoder.layers." in nk else nk
        for a, b in _OLD_TO_NEW:
            nk = nk.replace(a, b)
        out[nk] = v
    return out


# A key table is a list of (mimkit key, transformers key) pairs read in both directions by
# :func:`copy_keys`. A transformers side may be a tuple of keys: their tensors are concatenated along
# dim 0 into the one mimkit tensor (q/k/v projections into timm's fused ``qkv``), and split back.
def embedding_keys(hf: str, names=("cls_token", "mask_token", "pos_embed", "patch_embed")) -> list:
    """The ``transformers`` ViT-family embeddings at prefix ``hf`` (ViT, ViTMAE, BEiT, I-JEPA share the
    names) <-> mimkit's encoder front end (:mod:`mimkit.encoders.base`)."""
    table = {"cls_token": [("encoder.cls_token", f"{hf}.cls_token")],
             "mask_token": [("encoder.mask_token", f"{hf}.mask_token")],
             "pos_embed": [("encoder.pos_embed", f"{hf}.position_embeddings")],
             "patch_embed": [(f"encoder.patch_embed.proj.{w}", f"{hf}.patch_embeddings.projection.{w}")
                             for w in ("weight", "bias")]}
    return [pair for n in names for pair in table[n]]


def norm_keys(ours: str, theirs: str) -> list:
    """A LayerNorm's weight and bias."""
    return [(f"{ours}.{w}", f"{theirs}.{w}") for w in ("weight", "bias")]


def vit_layer_keys(hf: str, timm: str) -> list:
    """A ``transformers`` ViT layer at prefix ``hf`` <-> a timm ``Block`` at prefix ``timm``."""
    a = f"{hf}.attention"
    table = [(f"{timm}.attn.qkv.{w}", tuple(f"{a}.{n}_proj.{w}" for n in "qkv")) for w in ("weight", "bias")]
    for ours, theirs in (("norm1", "layernorm_before"), ("norm2", "layernorm_after"), ("attn.proj", "attention.o_proj"),
                         ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")):
        table += norm_keys(f"{timm}.{ours}", f"{hf}.{theirs}")  # weight + bias, as a norm's
    return table


def vit_encoder_keys(depth: int, cls_token: bool = True) -> list:
    """A bare ``transformers`` ViT-family encoder (``ViTModel``, ``IJepaModel``: embeddings, layers, final
    ``layernorm``) <-> a mimkit ViT encoder's keys."""
    names = ("cls_token",) * bool(cls_token) + ("pos_embed", "patch_embed")
    return (embedding_keys("embeddings", names) + norm_keys("encoder.norm", "layernorm")
            + [k for i in range(depth) for k in vit_layer_keys(f"layers.{i}", f"encoder.blocks.{i}")])


def vit_encoder_config(enc, architecture: str) -> dict:
    """The ``transformers`` ViT-family config arguments (``ViTConfig``, ``IJepaConfig``) of a mimkit ViT
    encoder: square images, GELU, q/k/v biases."""
    if enc.img_size[0] != enc.img_size[1]:
        raise ValueError(f"transformers {architecture} needs a square image_size")
    return dict(hidden_size=enc.embed_dim, num_hidden_layers=enc.depth, num_attention_heads=enc.num_heads,
                intermediate_size=enc.blocks[0].mlp.fc1.out_features, image_size=enc.img_size[0],
                patch_size=enc.patch_size, num_channels=enc.in_chans, layer_norm_eps=enc.norm.eps,
                qkv_bias=True, hidden_act="gelu", architectures=[architecture])


def copy_keys(sd: dict, table, out: dict, to_hf: bool) -> dict:
    """Copy the tensors named by a key table: mimkit -> transformers when ``to_hf``, else transformers
    -> mimkit. Entries whose source is absent (optional parts: a qkv bias, layer scale, a per-block
    table) are skipped; :func:`load_exact` then reports anything really missing."""
    for ours, theirs in table:
        fused = isinstance(theirs, tuple)
        if to_hf:
            if ours in sd:
                if fused:
                    out.update(zip(theirs, sd[ours].chunk(len(theirs), 0)))
                else:
                    out[theirs] = sd[ours]
        elif fused:
            if all(k in sd for k in theirs):
                out[ours] = torch.cat([sd[k] for k in theirs], 0)
        elif theirs in sd:
            out[ours] = sd[theirs]
    return out


def load_exact(module: torch.nn.Module, sd: dict, what: str) -> None:
    """``load_state_dict(strict=True)`` with a readable error listing missing/unexpected keys."""
    own = module.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    if missing or unexpected:
        raise ValueError(f"{what}: state dict does not match; missing {missing[:8]}, unexpected {unexpected[:8]}")
    for k, v in sd.items():
        if own[k].shape != v.shape:
            raise ValueError(f"{what}: {k} has shape {tuple(v.shape)}, model expects {tuple(own[k].shape)}")
    module.load_state_dict(sd, strict=True)
