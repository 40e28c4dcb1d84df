"""Checkpoints in the layout of the official MAE code (facebookresearch/mae).

The official ``.pth`` files hold ``{"model": state_dict}`` (training checkpoints add ``optimizer``,
``epoch``, ``args``...) with timm key names:

* pretraining: ``cls_token``, ``pos_embed``, ``patch_embed.proj.*``, ``blocks.{i}.(norm1|attn.qkv|attn.proj|
  norm2|mlp.fc1|mlp.fc2).*``, ``norm.*``, ``mask_token``, ``decoder_embed.*``, ``decoder_pos_embed``,
  ``decoder_blocks.{i}.*``, ``decoder_norm.*``, ``decoder_pred.*``;
* encoder-only releases (``mae_pretrain_vit_*.pth``) lack the decoder keys;
* fine-tuned models (``models_vit.py`` with global pooling) have ``fc_norm.*`` instead of ``norm.*``
  and a classifier ``head.*``.

:func:`load_official_mae` infers the architecture from tensor shapes (head counts are not stored in a
state dict: standard widths use the official counts, others ``width // 64``; override with
``num_heads=`` / ``decoder_num_heads=``). :func:`official_mae_state_dict` writes the layout back.
"""
from __future__ import annotations

import warnings

import torch

from .common import count, square_side

_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}  # official encoder head counts by width
_DEC_HEADS = {512: 16}


def _read(path_or_sd, trust_checkpoint: bool = False, part: str | None = None) -> dict[str, torch.Tensor]:
    from .common import read_official, tensors

    obj = read_official(path_or_sd, "mae", trust_checkpoint)
    keys = (part,) if part else ("model", "state_dict", "model_ema")
    if part and not isinstance(obj.get(part), dict):
        raise ValueError(f"the checkpoint has no {part!r} state dict (it holds {sorted(map(str, obj))[:6]})")
    for key in keys:
        if key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    sd = tensors(obj, strip=("module.", "model."))
    if "patch_embed.proj.weight" not in sd:
        sample = sorted(sd)[:6]
        raise ValueError(
            "not an official MAE checkpoint: no 'patch_embed.proj.weight' under 'model' (keys start with "
            f"{sample}); for transformers directories use `--from hf`, for mimkit files mimkit.load()"
        )
    return sd


def infer_mae_kwargs(sd: dict[str, torch.Tensor]) -> dict:
    """MAE builder arguments implied by an official state dict's shapes."""
    w = sd["patch_embed.proj.weight"]
    embed_dim, in_chans, patch = w.shape[0], w.shape[1], w.shape[-1]
    if w.shape[-1] != w.shape[-2]:
        raise ValueError(f"non-square patch {tuple(w.shape[-2:])} is not supported")
    depth = count(sd, "blocks")
    if depth == 0:
        raise ValueError("checkpoint has no 'blocks.{i}.*' encoder blocks")
    kw = dict(patch_size=patch, in_chans=in_chans, embed_dim=embed_dim, depth=depth,
              num_heads=_HEADS.get(embed_dim, max(1, embed_dim // 64)),
              mlp_ratio=sd["blocks.0.mlp.fc1.weight"].shape[0] / embed_dim)
    if "pos_embed" in sd:
        side = square_side(sd["pos_embed"].shape[1] - 1, "pos_embed")
        kw["img_size"] = side * patch
    if "decoder_embed.weight" in sd:
        dd = sd["decoder_embed.weight"].shape[0]
        kw.update(decoder_embed_dim=dd, decoder_depth=count(sd, "decoder_blocks"),
                  decoder_num_heads=_DEC_HEADS.get(dd, max(1, dd // 32)))
        dr = sd["decoder_blocks.0.mlp.fc1.weight"].shape[0] / dd if kw["decoder_depth"] else kw["mlp_ratio"]
        if abs(dr - kw["mlp_ratio"]) > 1e-9:
            raise ValueError(f"encoder mlp ratio {kw['mlp_ratio']} differs from decoder's {dr}; mimkit MAE shares one")
        out = sd["decoder_pred.weight"].shape[0]
        if out != patch * patch * in_chans:
            raise ValueError(f"decoder_pred predicts {out} values per patch, expected {patch}*{patch}*{in_chans}")
    return kw


def load_official_mae(path_or_state_dict, return_extras: bool = False, trust_checkpoint: bool = False,
                      part: str | None = None, **recipe_overrides):
    """Load an official MAE checkpoint (path to ``.pth``/``.safetensors`` or a state dict) as a mimkit
    ``MAE``. ``recipe_overrides`` set or replace builder arguments (``num_heads``, ``norm_pix_loss``,
    ``mask_ratio``, ``img_size`` (learned/sin-cos position embeddings are resized), ...).

    Encoder-only files keep a freshly initialised decoder (fine for ``encode``/evaluation, not for
    reconstructions). Fine-tuned files (``fc_norm`` instead of ``norm``) load ``fc_norm`` as the final
    norm; with ``return_extras=True`` the unused ``fc_norm``/``head`` tensors are returned too:
    ``(model, extras)``.

    A file is read safely (``weights_only``); one holding other Python objects is refused unless
    ``trust_checkpoint=True``."""
    from ...ops import resize_pos_embed, sincos_pos_embed_2d, to_2tuple
    from ...registry import create
    from ..keymap import load_exact

    sd = _read(path_or_state_dict, trust_checkpoint, part)
    kw = infer_mae_kwargs(sd)
    has_decoder = "decoder_embed.weight" in sd
    kw.update(recipe_overrides)
    if "img_size" not in kw:
        raise ValueError("checkpoint has no pos_embed to infer the image size from; pass img_size=")
    kw["img_size"] = list(to_2tuple(kw["img_size"]))
    model = create("mae", **kw)
    own = model.state_dict()
    extras = {k: v for k, v in sd.items() if k.startswith(("fc_norm.", "head."))}
    enc_sd = dict(sd)
    if "norm.weight" not in sd:
        if "fc_norm.weight" not in sd:
            raise ValueError("checkpoint has neither 'norm' nor 'fc_norm' (final encoder norm)")
        warnings.warn("fine-tuned checkpoint (global pooling): its fc_norm becomes the final token norm of the "
                      "encoder, so per-token features differ from the fine-tuned model's pooled ones", stacklevel=2)
        enc_sd["norm.weight"], enc_sd["norm.bias"] = sd["fc_norm.weight"], sd["fc_norm.bias"]
    out = {}
    for k, v in enc_sd.items():
        if k.startswith(("decoder", "mask_token", "fc_norm.", "head.")):
            if k == "mask_token" or k.startswith("decoder"):
                out[f"decoder.{k}"] = v
            continue
        out[f"encoder.{k}"] = v
    if not has_decoder:
        warnings.warn("checkpoint holds the encoder only; the MAE decoder is freshly initialised", stacklevel=2)
        out.update({k: v for k, v in own.items() if k.startswith("decoder.")})
    # position embeddings saved for another grid: sin-cos ones are recomputed, learned ones resized
    for key, grid_of in (("encoder.pos_embed", model.encoder.grid_size), ("decoder.decoder_pos_embed", model.decoder.grid_size)):
        if key in out and out[key].shape != own[key].shape:
            v = out[key]
            old = square_side(v.shape[1] - 1, key)
            is_sincos = v.shape[-1] % 4 == 0 and torch.allclose(v, sincos_pos_embed_2d(v.shape[-1], (old, old)), atol=1e-5)
            out[key] = own[key] if is_sincos else resize_pos_embed(v, (old, old), grid_of)
    load_exact(model, out, "official MAE -> mimkit MAE")
    model.eval()
    return (model, extras) if return_extras else model


def official_mae_state_dict(model, encoder_only: bool = False) -> dict[str, torch.Tensor]:
    """A mimkit MAE's weights under the official key names (``torch.save({"model": sd}, path)``)."""
    sd = model.state_dict()
    out = {}
    for k, v in sd.items():
        if k.startswith("encoder."):
            nk = k[len("encoder."):]
            if nk == "mask_token":
                continue
            out[nk] = v
        elif k.startswith("decoder.") and not encoder_only:
            out[k[len("decoder."):]] = v
    return {k: v.detach().clone() for k, v in out.items()}


def load(obj, part=None, img_size=None, overrides=None):
    """:func:`load_official_mae` for :func:`mimkit.interop.official.load_official`: (model, extras)."""
    kw = dict(overrides or {})
    if img_size is not None:
        kw["img_size"] = img_size
    return load_official_mae(obj, return_extras=True, part=part, **kw)


def export(model, extras=None) -> dict:
    """``{"model": state_dict}`` as the official code saves it; a fine-tuned file's ``fc_norm``/``head``
    (``extras``) come back in place of ``norm``."""
    sd = official_mae_state_dict(model, encoder_only=bool(extras and "fc_norm.weight" in extras))
    if extras and "fc_norm.weight" in extras:
        sd.pop("norm.weight"), sd.pop("norm.bias")
    sd.update({k: v.clone() for k, v in (extras or {}).items()})
    return {"model": sd}
