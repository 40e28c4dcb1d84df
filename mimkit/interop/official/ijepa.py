"""facebookresearch/ijepa checkpoints (``.pth.tar``) <-> mimkit I-JEPA.

``src/train.py`` saves ``{"encoder", "predictor", "target_encoder", "opt", "scaler", "epoch", "loss",
"batch_size", "world_size", "lr"}``; the three models are DDP-wrapped, so every key starts with
``module.``. Key names (``src/models/vision_transformer.py``):

* encoder / target_encoder: ``patch_embed.proj.*``, ``pos_embed`` (1, h*w, D, fixed 2-D sin-cos, no
  class token), ``blocks.{i}.(norm1|attn.qkv|attn.proj|norm2|mlp.fc1|mlp.fc2).*``, ``norm.*``;
* predictor: ``predictor_embed`` (D -> width), ``mask_token``, ``predictor_pos_embed``,
  ``predictor_blocks.{i}.*``, ``predictor_norm``, ``predictor_proj`` (width -> D).

The predictor's width and depth are read from the shapes; its head count is the encoder's (the
reference builds it with ``num_heads=encoder.num_heads``). ``part="target_encoder"`` puts the EMA
encoder (what the paper evaluates) into the encoder as well as the teacher.
"""
from __future__ import annotations

import warnings

from ..keymap import copy_keys, load_exact, norm_keys
from .common import count, heads, is_sincos, place_pos_embed, read_official, square_side, target_size, tensors

_BLOCK = ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
PARTS = ("encoder", "target_encoder")


def _encoder_table(depth: int, ours: str) -> list:
    table = [(f"{ours}.pos_embed", "pos_embed")] + norm_keys(f"{ours}.patch_embed.proj", "patch_embed.proj")
    table += norm_keys(f"{ours}.norm", "norm")
    return table + [p for i in range(depth) for n in _BLOCK for p in norm_keys(f"{ours}.blocks.{i}.{n}", f"blocks.{i}.{n}")]


def _predictor_table(depth: int) -> list:
    table = [("predictor.mask_token", "mask_token"), ("predictor.pos_embed", "predictor_pos_embed")]
    for ours, theirs in (("embed", "predictor_embed"), ("norm", "predictor_norm"), ("proj", "predictor_proj")):
        table += norm_keys(f"predictor.{ours}", theirs)
    return table + [p for i in range(depth) for n in _BLOCK
                    for p in norm_keys(f"predictor.blocks.{i}.{n}", f"predictor_blocks.{i}.{n}")]


def load(obj, part=None, img_size=None, overrides=None):
    from ...registry import create

    obj = read_official(obj, "ijepa")
    part = part or "encoder"
    if part not in PARTS:
        raise ValueError(f"--part for I-JEPA is one of {', '.join(PARTS)} (target_encoder: the EMA encoder), got {part!r}")
    if not isinstance(obj.get(part), dict):
        raise ValueError(f"not an official I-JEPA checkpoint: no {part!r} state dict (it holds {sorted(map(str, obj))[:6]})")
    overrides = dict(overrides or {})
    enc = tensors(obj[part])
    target = tensors(obj["target_encoder"]) if isinstance(obj.get("target_encoder"), dict) else None
    pred = tensors(obj["predictor"]) if isinstance(obj.get("predictor"), dict) else None
    w = enc["patch_embed.proj.weight"]
    width, patch, depth = w.shape[0], w.shape[-1], count(enc, "blocks")
    side = square_side(enc["pos_embed"].shape[1], "pos_embed")
    grid = (side, side)
    size = target_size(img_size, overrides, [side * patch] * 2)
    n_heads = heads(width, overrides)
    kw = dict(img_size=size, patch_size=patch, in_chans=w.shape[1], embed_dim=width, depth=depth, num_heads=n_heads,
              mlp_ratio=enc["blocks.0.mlp.fc1.weight"].shape[0] / width, norm_eps=1e-6,
              pos_embed="sincos" if is_sincos(enc["pos_embed"], grid, cls_token=False) else "learned")
    if pred is not None:
        kw.update(predictor_embed_dim=pred["predictor_embed.weight"].shape[0], predictor_depth=count(pred, "predictor_blocks"),
                  predictor_num_heads=n_heads)
    kw.update(overrides)
    model = create("ijepa", **kw)
    own = model.state_dict()
    out = copy_keys(enc, _encoder_table(depth, "encoder"), {}, to_hf=False)
    teacher = enc if part == "target_encoder" or target is None else target
    out.update(copy_keys(teacher, _encoder_table(depth, "teacher.encoder"), {}, to_hf=False))
    if target is None:
        warnings.warn("the checkpoint has no target_encoder; the teacher starts as a copy of the encoder", stacklevel=2)
    if pred is not None:
        out.update(copy_keys(pred, _predictor_table(kw["predictor_depth"]), {}, to_hf=False))
    else:
        warnings.warn("the checkpoint has no predictor; it is freshly initialised", stacklevel=2)
        out.update({k: v for k, v in own.items() if k.startswith("predictor.")})
    fixed = kw["pos_embed"] == "sincos"
    for key, old in (("encoder.pos_embed", grid), ("teacher.encoder.pos_embed", grid), ("predictor.pos_embed", grid)):
        if out[key].shape != own[key].shape:
            out[key] = place_pos_embed(out[key], own[key], old, model.encoder.grid_size, 0,
                                       fixed=fixed or key.startswith("predictor."))
    load_exact(model, out, "official I-JEPA -> mimkit I-JEPA")
    return model.eval(), {}


def export(model, extras=None) -> dict:
    """``{"encoder", "predictor", "target_encoder"}`` with DDP's ``module.`` prefix, as ``src/train.py`` saves."""
    sd = model.state_dict()
    depth = model.encoder.depth

    def part(table):
        return {f"module.{k}": v.detach().clone() for k, v in copy_keys(sd, table, {}, to_hf=True).items()}

    return {"encoder": part(_encoder_table(depth, "encoder")),
            "predictor": part(_predictor_table(len(model.predictor.blocks))),
            "target_encoder": part(_encoder_table(depth, "teacher.encoder"))}
