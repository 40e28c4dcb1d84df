"""microsoft/unilm ``beit/`` checkpoints <-> mimkit BEiT.

The files hold ``{"model": state_dict}`` (training checkpoints add ``optimizer``, ``epoch``, ``scaler``,
``args`` (an ``argparse.Namespace``) and possibly ``model_ema``). Key names (``modeling_pretrain.py``,
``modeling_finetune.py``), which are timm ``Beit``'s and so mimkit's ``BEiTEncoder``'s under ``encoder.``:

* ``cls_token``, ``mask_token`` (pretraining only), ``pos_embed`` (``use_abs_pos_emb``),
  ``patch_embed.proj.*``, ``rel_pos_bias.relative_position_bias_table`` + ``relative_position_index``
  (shared table, pretraining), ``blocks.{i}.`` ``norm1``, ``attn.qkv.weight`` (no bias), ``attn.q_bias``,
  ``attn.v_bias``, ``attn.relative_position_bias_table`` + ``relative_position_index`` (per-block tables,
  fine-tuning), ``attn.proj``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``, ``gamma_1``/``gamma_2`` (layer scale),
  ``norm``; pretraining adds ``lm_head``; fine-tuned models (mean pooling) have ``fc_norm`` + ``head``
  and no ``norm``.

Head counts are read from a relative position table when there is one. The image size comes from
``pos_embed`` or the tables; ``img_size`` resizes learned positions bicubically and relative position
tables as the reference's fine-tuning code does (:func:`~.common.resize_rel_pos_table_reference`).
microsoft/SimMIM's ViT has the same layout under ``encoder.`` (:mod:`.simmim`).
"""
from __future__ import annotations

import warnings

import torch

from ..keymap import copy_keys, load_exact, norm_keys
from .common import (
    count,
    fill_missing,
    heads,
    place_pos_embed,
    read_official,
    rel_table_window,
    resize_rel_pos_table_reference,
    square_side,
    target_size,
    tensors,
)

_BLOCK = ("norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.q_bias", "attn.v_bias",
          "attn.relative_position_bias_table", "attn.proj.weight", "attn.proj.bias", "norm2.weight", "norm2.bias",
          "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias", "gamma_1", "gamma_2")
_SHARED = "rel_pos_bias.relative_position_bias_table"


def encoder_table(depth: int, ours: str = "encoder", theirs: str = "") -> list:
    """(mimkit key, official key) pairs of a unilm BEiT-style ViT (the names of timm's ``Beit``, which
    mimkit's ``BEiTEncoder`` keeps); ``theirs`` prefixes the official side (``encoder.`` for SimMIM)."""
    names = ["cls_token", "mask_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", _SHARED,
             "norm.weight", "norm.bias"] + [f"blocks.{i}.{n}" for i in range(depth) for n in _BLOCK]
    return [(f"{ours}.{n}", f"{theirs}{n}") for n in names]


def vit_facts(sd: dict, overrides: dict) -> dict:
    """Encoder builder arguments of a unilm/SimMIM ViT state dict (official names, no prefix), plus
    ``grid`` (the patch grid its position tensors were saved for, or None)."""
    w = sd["patch_embed.proj.weight"]
    width, patch = w.shape[0], w.shape[-1]
    if w.shape[-1] != w.shape[-2]:
        raise ValueError(f"non-square patch {tuple(w.shape[-2:])} is not supported")
    depth = count(sd, "blocks")
    if depth == 0:
        raise ValueError("the checkpoint has no 'blocks.{i}.*' encoder blocks")
    table = sd.get(_SHARED, sd.get("blocks.0.attn.relative_position_bias_table"))
    grid = None
    if "pos_embed" in sd:
        side = square_side(sd["pos_embed"].shape[1] - 1, "pos_embed")
        grid = (side, side)
    elif table is not None:
        grid = rel_table_window(table.shape[0])
    n_heads = overrides.pop("num_heads", None) or (table.shape[1] if table is not None else heads(width, {}))
    return dict(patch_size=patch, in_chans=w.shape[1], embed_dim=width, depth=depth, num_heads=n_heads,
                mlp_ratio=sd["blocks.0.mlp.fc1.weight"].shape[0] / width, qkv_bias="blocks.0.attn.q_bias" in sd,
                layer_scale="blocks.0.gamma_1" in sd, shared=_SHARED in sd,
                per_block="blocks.0.attn.relative_position_bias_table" in sd, absolute="pos_embed" in sd, grid=grid)


def resize_positions(out: dict, own: dict, old_grid, new_grid, prefix: str = "encoder") -> None:
    """Learned absolute positions (bicubic) and relative position tables (the reference's resize) of
    ``out`` (mimkit keys) saved for ``old_grid``, for a model built for ``new_grid``."""
    if old_grid is None or tuple(old_grid) == tuple(new_grid):
        return
    key = f"{prefix}.pos_embed"
    if key in out and out[key].shape != own[key].shape:
        out[key] = place_pos_embed(out[key], own[key], old_grid, new_grid, 1, fixed=False)
    for k in [k for k in out if k.endswith("relative_position_bias_table") and k.startswith(prefix)]:
        out[k] = resize_rel_pos_table_reference(out[k], old_grid, new_grid)


def _beit_kwargs(facts: dict, vocab: int, size) -> dict:
    gp = (size[0] // facts["patch_size"]) * (size[1] // facts["patch_size"])
    n_mask = min(gp - 1, max(1, round(gp * 75 / 196)))  # the reference's 75 of 196
    return dict(img_size=size, patch_size=facts["patch_size"], in_chans=facts["in_chans"],
                embed_dim=facts["embed_dim"], depth=facts["depth"], num_heads=facts["num_heads"],
                mlp_ratio=facts["mlp_ratio"], vocab_size=vocab, qkv_bias=facts["qkv_bias"], norm_eps=1e-6,
                layer_scale_init_value=0.1 if facts["layer_scale"] else 0.0,
                use_shared_relative_position_bias=facts["shared"], use_relative_position_bias=facts["per_block"],
                use_absolute_position_embeddings=facts["absolute"], num_masking_patches=n_mask,
                min_num_patches=min(16, max(1, n_mask // 4)))


def load_encoder_into_beit(sd: dict, img_size, overrides: dict, what: str):
    """A mimkit BEiT holding a unilm-layout encoder ``sd`` (official names, no prefix); returns
    (model, extras) with the tensors that have no place in it (``fc_norm``/``head``, ``lm_head`` absent)."""
    from ...registry import create

    sd = {k: v for k, v in sd.items() if not k.endswith("relative_position_index")}  # derived buffers
    facts = vit_facts(sd, overrides)
    size = target_size(img_size, overrides, [g * facts["patch_size"] for g in facts["grid"] or (224 // facts["patch_size"],) * 2])
    vocab = sd["lm_head.weight"].shape[0] if "lm_head.weight" in sd else overrides.pop("vocab_size", 8192)
    kw = {**_beit_kwargs(facts, vocab, size), **overrides}
    model = create("beit", **kw)
    own = model.state_dict()
    extras = {k: v for k, v in sd.items() if k.startswith(("fc_norm.", "head."))}
    src = dict(sd)
    if "norm.weight" not in sd and "fc_norm.weight" in sd:
        warnings.warn(f"{what}: fine-tuned checkpoint (mean pooling): its fc_norm becomes the encoder's final "
                      "token norm, so per-token features differ from the fine-tuned model's pooled ones", stacklevel=3)
        src["norm.weight"], src["norm.bias"] = sd["fc_norm.weight"], sd["fc_norm.bias"]
    out = copy_keys(src, encoder_table(facts["depth"]) + norm_keys("lm_head", "lm_head"), {}, to_hf=False)
    resize_positions(out, own, facts["grid"], model.encoder.grid_size)
    fill_missing(out, own, [k for k in own if k.startswith("encoder.mask_token")],
                 f"{what}: no mask token (a fine-tuned file)")
    fill_missing(out, own, [k for k in own if k.startswith("lm_head.")], f"{what}: no lm_head")
    load_exact(model, out, f"{what} -> mimkit BEiT")
    return model.eval(), extras


def encoder_state_dict(model, theirs: str = "", fine_tuned: bool = False, fc_norm: bool = False) -> dict:
    """A mimkit BEiT encoder under the unilm names (``theirs`` prefix), with the reference's
    ``relative_position_index`` buffers; ``fine_tuned``: no mask token; ``fc_norm``: the final norm
    written as ``fc_norm`` (mean pooling)."""
    from timm.models.beit import gen_relative_position_index

    enc = model.encoder
    sd = {k: v for k, v in model.state_dict().items() if k.startswith("encoder.")}
    out = copy_keys(sd, encoder_table(enc.depth, theirs=theirs), {}, to_hf=True)
    index = gen_relative_position_index(enc.grid_size)
    if enc.use_shared_relative_position_bias:
        out[f"{theirs}rel_pos_bias.relative_position_index"] = index
    if enc.use_relative_position_bias:
        for i in range(enc.depth):
            out[f"{theirs}blocks.{i}.attn.relative_position_index"] = index
    if fine_tuned:
        out.pop(f"{theirs}mask_token", None)
    if fc_norm:
        out[f"{theirs}fc_norm.weight"], out[f"{theirs}fc_norm.bias"] = out.pop(f"{theirs}norm.weight"), out.pop(f"{theirs}norm.bias")
    return out


def load(obj, part=None, img_size=None, overrides=None):
    obj = read_official(obj, "beit")
    key = part or next((k for k in ("model", "module", "model_ema") if isinstance(obj.get(k), dict)), None)
    if key is not None and not isinstance(obj.get(key), dict):
        raise ValueError(f"the checkpoint has no {key!r} state dict (it holds {sorted(map(str, obj))[:6]})")
    sd = tensors(obj[key] if key else obj, strip=("module.", "model."))
    if "patch_embed.proj.weight" not in sd:
        raise ValueError(f"not an official BEiT checkpoint: no 'patch_embed.proj.weight' (keys start with {sorted(sd)[:6]})")
    return load_encoder_into_beit(sd, img_size, dict(overrides or {}), "official BEiT")


def export(model, extras=None) -> dict:
    """``{"model": state_dict}`` in the pretraining layout (with ``lm_head``), or the fine-tuned one
    when ``extras`` hold the fine-tuned file's ``fc_norm``/``head``."""
    if not isinstance(model.head_norm, torch.nn.Identity):
        raise ValueError("this BEiT has an extra head_norm before lm_head (transformers' use_mean_pooling=False); "
                         "the official BEiT has none, so it has no official layout")
    fine_tuned = bool(extras) and ("head.weight" in extras or "fc_norm.weight" in extras)
    sd = encoder_state_dict(model, fine_tuned=fine_tuned, fc_norm=bool(extras) and "fc_norm.weight" in extras)
    if fine_tuned:
        sd.update({k: v for k, v in extras.items() if k.startswith("head.")})
    else:
        sd.update({k: v for k, v in model.state_dict().items() if k.startswith("lm_head.")})
    return {"model": {k: v.detach().clone() for k, v in sd.items()}}
