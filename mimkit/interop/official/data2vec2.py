"""fairseq ``examples/data2vec`` (data2vec 2.0, image modality) checkpoints <-> mimkit Data2Vec2, as far
as the layouts meet.

A fairseq checkpoint holds ``{"model", "cfg", "args", "criterion", "optimizer_history", "task_state",
"extra_state", "last_optimizer_state"}``; ``model`` is the ``Data2VecMultiModel`` state dict
(``models/data2vec2.py``, ``modalities/images.py``, ``modalities/modules.py``):

* ``modality_encoders.IMAGE.local_encoder.proj.*`` (patch embedding), ``.extra_tokens`` (the CLS token),
  ``.fixed_positional_encoder.positions`` (1, h*w, D, fixed sin-cos, added before masking),
  ``.context_encoder.blocks.{j}.*`` (``prenet_depth`` blocks) and ``.context_encoder.norm``,
  ``.decoder.blocks.{i}.0.*`` (grouped Conv2d; LayerNorm without affine and GELU hold no tensors),
  ``.decoder.proj.*``;
* ``blocks.{i}.(norm1|attn.qkv|attn.proj|norm2|mlp.fc1|mlp.fc2).*`` (``AltBlock``, ``depth`` blocks);
* ``_ema``: the EMA teacher's fp32 tensors under the same names (no decoder; with
  ``ema_encoder_only=True`` only the main blocks, as ``{i}.norm1.weight``...).

mimkit's student encoder is the prenet blocks followed by the main blocks (timm blocks of the same
names), the teacher takes ``_ema``, the decoder maps one to one. What does **not** map: the released
image models are post-LN (``layer_norm_first=False``: ``x = norm1(x + attn(x))``...) and normalise the
embedded tokens (``context_encoder.norm``) before the first block, while mimkit's blocks are pre-LN
with a final norm; the tensors land unchanged (and export back bit for bit, the input norm carried in
``extras``), but mimkit's encoder does not compute the reference's features. Multi-modal checkpoints
(audio/text encoders, a shared decoder) keep only the image parts.
"""
from __future__ import annotations

import warnings

import torch

from ..keymap import copy_keys, load_exact, norm_keys
from .common import count, heads, is_sincos, place_pos_embed, read_official, square_side, target_size, tensors

M = "modality_encoders.IMAGE."
_BLOCK = ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
PARTS = ("model", "ema")


def _encoder_table(prenet: int, main: int, ours: str, blocks_only: bool = False) -> list:
    """(mimkit key, fairseq key) for one encoder (student or teacher); ``blocks_only``: the EMA of
    ``ema_encoder_only`` runs, whose keys are the main blocks' ``{i}.*``."""
    table = []
    if not blocks_only:
        table += norm_keys(f"{ours}.patch_embed.proj", f"{M}local_encoder.proj") + [(f"{ours}.cls_token", f"{M}extra_tokens")]
        table += [p for j in range(prenet) for n in _BLOCK
                  for p in norm_keys(f"{ours}.blocks.{j}.{n}", f"{M}context_encoder.blocks.{j}.{n}")]
    main_prefix = "" if blocks_only else "blocks."
    return table + [p for i in range(main) for n in _BLOCK
                    for p in norm_keys(f"{ours}.blocks.{prenet + i}.{n}", f"{main_prefix}{i}.{n}")]


def _decoder_table(layers: int) -> list:
    return [p for i in range(layers) for p in norm_keys(f"decoder.blocks.{i}", f"{M}decoder.blocks.{i}.0")] + \
        norm_keys("decoder.proj", f"{M}decoder.proj")


def load(obj, part=None, img_size=None, overrides=None):
    from ...registry import create

    obj = read_official(obj, "data2vec2")
    part = part or "model"
    if part not in PARTS:
        raise ValueError(f"--part for data2vec 2.0 is one of {', '.join(PARTS)} (ema: the teacher), got {part!r}")
    raw = obj.get("model", obj)
    if not isinstance(raw, dict) or f"{M}local_encoder.proj.weight" not in raw:
        raise ValueError("not an official data2vec 2.0 image checkpoint: no 'modality_encoders.IMAGE.local_encoder' "
                         f"under 'model' (keys start with {sorted(map(str, raw))[:6]})")
    ema = tensors(raw["_ema"]) if isinstance(raw.get("_ema"), dict) else None
    if part == "ema" and ema is None:
        raise ValueError("--part ema: the checkpoint has no '_ema' teacher")
    sd = tensors(raw)
    overrides = dict(overrides or {})
    w = sd[f"{M}local_encoder.proj.weight"]
    width, patch = w.shape[0], w.shape[-1]
    prenet, main = count(sd, f"{M}context_encoder.blocks"), count(sd, "blocks")
    pos = sd[f"{M}fixed_positional_encoder.positions"]
    side = square_side(pos.shape[1], "fixed_positional_encoder.positions")
    size = target_size(img_size, overrides, [side * patch] * 2)
    if sd[f"{M}extra_tokens"].shape[1] != 1:
        raise ValueError(f"num_extra_tokens={sd[f'{M}extra_tokens'].shape[1]}: mimkit's encoder has exactly one CLS token")
    layers = count(sd, f"{M}decoder.blocks")
    kw = dict(img_size=size, patch_size=patch, in_chans=w.shape[1], embed_dim=width, depth=prenet + main,
              num_heads=heads(width, overrides), mlp_ratio=sd["blocks.0.mlp.fc1.weight"].shape[0] / width,
              norm_eps=1e-6, pos_embed="sincos" if is_sincos(pos, (side, side), cls_token=False) else "learned",
              top_k_layers=main)  # the reference averages all its main blocks (average_top_k_layers = depth)
    if layers:
        conv = sd[f"{M}decoder.blocks.0.0.weight"]
        kw.update(decoder_dim=conv.shape[0], decoder_layers=layers, decoder_kernel=conv.shape[-1],
                  decoder_groups=width // conv.shape[1])
    kw.update(overrides)
    model = create("data2vec2", **kw)
    own = model.state_dict()
    student = ema if part == "ema" else sd
    blocks_only = ema is not None and not any(k.startswith(M) for k in ema)
    out = copy_keys(student if part != "ema" or not blocks_only else {**sd, **{f"blocks.{k}": v for k, v in ema.items()}},
                    _encoder_table(prenet, main, "encoder"), {}, to_hf=False)
    if ema is not None:
        teacher = copy_keys(ema, _encoder_table(prenet, main, "teacher.encoder", blocks_only), {}, to_hf=False)
        out.update({k.replace("encoder.", "teacher.encoder.", 1): v for k, v in out.items() if k.startswith("encoder.")})
        out.update(teacher)
    else:
        warnings.warn("the checkpoint has no '_ema' teacher; the teacher starts as a copy of the student", stacklevel=2)
        out.update({k.replace("encoder.", "teacher.encoder.", 1): v for k, v in out.items() if k.startswith("encoder.")})
    grid = (side, side)
    for key, table in (("encoder.pos_embed", pos), ("teacher.encoder.pos_embed", (ema or {}).get(f"{M}fixed_positional_encoder.positions", pos))):
        full = torch.cat([torch.zeros_like(table[:, :1]), table], dim=1)  # fairseq's CLS gets no position
        out[key] = place_pos_embed(full, own[key], grid, model.encoder.grid_size, 1, fixed=kw["pos_embed"] == "sincos")
    if layers:
        out.update(copy_keys(sd, _decoder_table(layers), {}, to_hf=False))
    else:
        out.update({k: v for k, v in own.items() if k.startswith("decoder.")})
        warnings.warn("the checkpoint has no image decoder; it is freshly initialised", stacklevel=2)
    for k in ("encoder.norm.weight", "encoder.norm.bias", "teacher.encoder.norm.weight", "teacher.encoder.norm.bias"):
        out[k] = own[k]  # pre-LN's final norm: none in the post-LN reference (identity at init)
    extras = {k: v for k, v in sd.items() if k.startswith(f"{M}context_encoder.norm.")}
    extras.update({f"_ema.{k}": v for k, v in (ema or {}).items() if k.startswith(f"{M}context_encoder.norm.")})
    warnings.warn("fairseq's data2vec 2.0 blocks are post-LN and normalise the embedded tokens first "
                  "(context_encoder.norm, kept in extras); mimkit's are pre-LN, so the weights land in place but the "
                  "encoder's features are not the reference's", stacklevel=2)
    load_exact(model, out, "official data2vec 2.0 -> mimkit Data2Vec2")
    return model.eval(), extras


def export(model, extras=None, prenet_depth: int = 2) -> dict:
    """``{"model": state_dict}`` in fairseq's layout (``prenet_depth`` of the blocks as the image
    encoder's ``context_encoder``, the reference's 2; the rest as the main ``blocks``), with the teacher
    as ``_ema`` (``ema_encoder_only=False`` layout) and ``extras``' input norms put back."""
    extras = dict(extras or {})
    depth = model.encoder.depth
    if not 0 <= prenet_depth <= depth:
        raise ValueError(f"prenet_depth must be between 0 and the depth {depth}")
    sd = model.state_dict()
    main = depth - prenet_depth
    out = copy_keys(sd, _encoder_table(prenet_depth, main, "encoder") + _decoder_table(len(model.decoder.blocks)), {},
                    to_hf=True)
    out[f"{M}fixed_positional_encoder.positions"] = sd["encoder.pos_embed"][:, 1:]
    ema = copy_keys(sd, _encoder_table(prenet_depth, main, "teacher.encoder"), {}, to_hf=True)
    ema[f"{M}fixed_positional_encoder.positions"] = sd["teacher.encoder.pos_embed"][:, 1:]
    width = model.encoder.embed_dim
    ones, zeros = torch.ones(width), torch.zeros(width)
    for target, prefix in ((out, ""), (ema, "_ema.")):
        for name, default in (("weight", ones), ("bias", zeros)):
            target[f"{M}context_encoder.norm.{name}"] = extras.get(f"{prefix}{M}context_encoder.norm.{name}", default)
    out = {k: v.detach().clone() for k, v in out.items()}
    out["_ema"] = {k: v.detach().clone().float() for k, v in ema.items()}
    return {"model": out}
