"""microsoft/SimMIM pretraining checkpoints <-> mimkit SimMIM (ViT) and SimMIMSwin.

The files hold ``{"model": state_dict}`` (training checkpoints ``ckpt_epoch_N.pth`` add ``optimizer``,
``lr_scheduler``, ``epoch``, ``max_accuracy`` and ``config``, a ``yacs`` ``CfgNode``). The encoder is
under ``encoder.``, the one-layer decoder is ``decoder.0`` (Conv2d(width -> stride^2 * 3, 1), then
PixelShuffle):

* ViT (``models/vision_transformer.py``, BEiT's layout, :mod:`.beit`): ``encoder.cls_token``,
  ``encoder.mask_token``, ``encoder.pos_embed`` (``USE_APE``), ``encoder.patch_embed.proj``,
  ``encoder.rel_pos_bias.*`` (``USE_SHARED_RPB``, the released ViT-B), ``encoder.blocks.{i}.`` with
  ``attn.qkv.weight`` + ``attn.q_bias``/``attn.v_bias``, ``gamma_1``/``gamma_2`` (``INIT_VALUES`` 0.1),
  optional per-block tables (``USE_RPB``), ``encoder.norm``. Without relative position tables it is
  mimkit's SimMIM exactly (q/v biases fused into ``qkv.bias`` with a zero key bias, layer scale as timm's
  ``ls1/ls2``, no ``pos_embed`` = learned zeros). mimkit's SimMIM ViT has no relative position bias, so a
  file with one becomes a mimkit **BEiT** (same encoder, exactly; ``lm_head`` fresh) and the decoder is
  returned in ``extras``.
* Swin (``models/swin_transformer.py``): ``encoder.patch_embed.{proj,norm}``, ``encoder.mask_token``,
  ``encoder.absolute_pos_embed`` (``APE``), ``encoder.layers.{i}.blocks.{j}.`` (``norm1``,
  ``attn.relative_position_bias_table`` + ``relative_position_index``, ``attn.qkv``, ``attn.proj``,
  ``norm2``, ``mlp.fc1/fc2``, ``attn_mask`` in shifted blocks), ``encoder.layers.{i}.downsample`` at the
  *end* of stage ``i`` (timm's at the start of stage ``i + 1``), ``encoder.norm``. Head counts and the
  window come from the relative position tables, the image size from ``absolute_pos_embed`` or the
  attention masks (else the reference's 192 px).
"""
from __future__ import annotations

import math
import warnings

import torch

from ..keymap import copy_keys, load_exact, norm_keys
from .beit import encoder_state_dict, load_encoder_into_beit, resize_positions, vit_facts
from .common import count, read_official, square_side, sub, target_size, tensors


def _model_dict(obj, part):
    obj = read_official(obj, "simmim")
    key = part or ("model" if isinstance(obj.get("model"), dict) else None)
    if key is not None and not isinstance(obj.get(key), dict):
        raise ValueError(f"the checkpoint has no {key!r} state dict (it holds {sorted(map(str, obj))[:6]})")
    sd = tensors(obj[key] if key else obj)
    if not any(k.startswith("encoder.") for k in sd) or "decoder.0.weight" not in sd:
        raise ValueError(f"not an official SimMIM checkpoint: no 'encoder.*' and 'decoder.0.*' (keys start with "
                         f"{sorted(sd)[:6]})")
    return sd


def _stride(sd, in_chans):
    out = sd["decoder.0.weight"].shape[0]
    stride = math.isqrt(out // in_chans)
    if stride * stride * in_chans != out:
        raise ValueError(f"decoder.0 predicts {out} channels, not stride^2 x {in_chans}")
    return stride


# ---- ViT -----------------------------------------------------------------------------------------
def _vit_table(depth: int) -> list:
    table = [("encoder.cls_token", "encoder.cls_token"), ("encoder.mask_token", "encoder.mask_token"),
             ("encoder.pos_embed", "encoder.pos_embed")] + norm_keys("encoder.patch_embed.proj", "encoder.patch_embed.proj")
    table += norm_keys("encoder.norm", "encoder.norm") + norm_keys("head.conv", "decoder.0")
    for i in range(depth):
        m, o = f"encoder.blocks.{i}", f"encoder.blocks.{i}"
        table += [(f"{m}.attn.qkv.weight", f"{o}.attn.qkv.weight"),
                  (f"{m}.attn.qkv.bias", (f"{o}.attn.q_bias", f"{o}.attn.k_bias", f"{o}.attn.v_bias")),
                  (f"{m}.ls1.gamma", f"{o}.gamma_1"), (f"{m}.ls2.gamma", f"{o}.gamma_2")]
        for n in ("norm1", "norm2", "attn.proj", "mlp.fc1", "mlp.fc2"):
            table += norm_keys(f"{m}.{n}", f"{o}.{n}")
    return table


def _load_vit(sd, img_size, overrides):
    from ...registry import create

    enc = {k: v for k, v in sub(sd, "encoder.").items() if not k.endswith("relative_position_index")}
    facts = vit_facts(enc, overrides)
    if facts["shared"] or facts["per_block"]:
        warnings.warn("official SimMIM ViT with relative position bias: mimkit's SimMIM ViT has none, so the encoder "
                      "is loaded (exactly) into a mimkit BEiT; its decoder.0 is returned in extras", stacklevel=3)
        model, extras = load_encoder_into_beit(enc, img_size, overrides, "official SimMIM ViT")
        return model, {**extras, **{k: v for k, v in sd.items() if k.startswith("decoder.")}}
    if not facts["qkv_bias"]:
        raise ValueError("official SimMIM ViT without q/v biases (QKV_BIAS=False): mimkit's ViT blocks have a qkv bias")
    patch = facts["patch_size"]
    size = target_size(img_size, overrides, [g * patch for g in facts["grid"] or (224 // patch,) * 2])
    stride = _stride(sd, facts["in_chans"])
    mask_patch = overrides.pop("mask_patch_size", 32 if all(s % 32 == 0 for s in size) and 32 % patch == 0 else patch)
    kw = dict(img_size=size, patch_size=patch, in_chans=facts["in_chans"], embed_dim=facts["embed_dim"],
              depth=facts["depth"], num_heads=facts["num_heads"], mlp_ratio=facts["mlp_ratio"], qkv_bias=True,
              norm_eps=1e-6, pos_embed="learned", init_values=0.1 if facts["layer_scale"] else None,
              encoder_stride=stride, mask_ratio=0.6, mask_patch_size=mask_patch, **overrides)
    model = create("simmim", **kw)
    own = model.state_dict()
    src = dict(sd)
    for i in range(facts["depth"]):  # the reference's key projection has no bias
        src[f"encoder.blocks.{i}.attn.k_bias"] = torch.zeros_like(sd[f"encoder.blocks.{i}.attn.q_bias"])
    out = copy_keys(src, _vit_table(facts["depth"]), {}, to_hf=False)
    if "encoder.pos_embed" not in out:  # USE_APE=False and no relative bias: no positions at all
        out["encoder.pos_embed"] = torch.zeros_like(own["encoder.pos_embed"])
    resize_positions(out, own, facts["grid"], model.encoder.grid_size)
    load_exact(model, out, "official SimMIM ViT -> mimkit SimMIM")
    return model.eval(), {}


def _export_vit(model) -> dict:
    if model.encoder.pos_embed_type != "learned":
        raise ValueError("the official SimMIM ViT has learned (or no) absolute positions; this model uses fixed "
                         "sin-cos ones")
    sd = copy_keys(model.state_dict(), _vit_table(model.encoder.depth), {}, to_hf=True)
    for i in range(model.encoder.depth):
        k_bias = sd.pop(f"encoder.blocks.{i}.attn.k_bias")
        if k_bias.abs().max() > 0:
            raise ValueError(f"block {i} has a nonzero key bias; the official SimMIM ViT's key projection has none")
    return sd


# ---- Swin ----------------------------------------------------------------------------------------
_SWIN_BLOCK = ("norm1.weight", "norm1.bias", "attn.relative_position_bias_table", "attn.qkv.weight", "attn.qkv.bias",
               "attn.proj.weight", "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias",
               "mlp.fc2.weight", "mlp.fc2.bias")
_DERIVED = ("relative_position_index", "attn_mask")


def _swin_table(depths) -> list:
    """(mimkit key, official key): same names, except that the official patch merging at the end of stage
    ``i`` is timm's ``downsample`` at the start of stage ``i + 1``."""
    names = ["mask_token", "absolute_pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias",
             "patch_embed.norm.weight", "patch_embed.norm.bias", "norm.weight", "norm.bias"]
    table = [(f"encoder.{n}", f"encoder.{n}") for n in names] + norm_keys("head.conv", "decoder.0")
    for i, d in enumerate(depths):
        table += [(f"encoder.layers.{i}.blocks.{j}.{n}",) * 2 for j in range(d) for n in _SWIN_BLOCK]
        if i + 1 < len(depths):
            table += [(f"encoder.layers.{i + 1}.downsample.{n}", f"encoder.layers.{i}.downsample.{n}")
                      for n in ("reduction.weight", "norm.weight", "norm.bias")]
    return table


def _load_swin(sd, img_size, overrides):
    from ...registry import create

    w = sd["encoder.patch_embed.proj.weight"]
    embed_dim, in_chans, patch = w.shape[0], w.shape[1], w.shape[-1]
    n_stages = count(sd, "encoder.layers")
    depths = [count(sd, f"encoder.layers.{i}.blocks") for i in range(n_stages)]
    tables = [sd[f"encoder.layers.{i}.blocks.0.attn.relative_position_bias_table"] for i in range(n_stages)]
    side = math.isqrt(tables[0].shape[0])
    window = overrides.pop("window_size", (side + 1) // 2)
    file_size = None
    if "encoder.absolute_pos_embed" in sd:
        file_size = [square_side(sd["encoder.absolute_pos_embed"].shape[1], "absolute_pos_embed") * patch] * 2
    elif "encoder.layers.0.blocks.1.attn_mask" in sd:  # (windows, w*w, w*w) of the first stage
        file_size = [square_side(sd["encoder.layers.0.blocks.1.attn_mask"].shape[0], "attn_mask") * window * patch] * 2
    size = target_size(img_size, overrides, file_size or [192, 192])
    if file_size is not None and list(size) != list(file_size) and "encoder.absolute_pos_embed" in sd:
        raise ValueError("resizing a Swin with absolute positions (APE) is not supported; keep the file's size")
    kw = dict(img_size=size, patch_size=patch, in_chans=in_chans, embed_dim=embed_dim, depths=depths,
              num_heads=[t.shape[1] for t in tables], window_size=window,
              mlp_ratio=sd["encoder.layers.0.blocks.0.mlp.fc1.weight"].shape[0] / embed_dim, qkv_bias=True,
              norm_eps=1e-5, ape="encoder.absolute_pos_embed" in sd, mask_ratio=0.6, **overrides)
    kw.setdefault("mask_patch_size", patch * 2 ** (n_stages - 1))
    model = create("simmim_swin", **kw)
    if _stride(sd, in_chans) != model.encoder_stride:
        raise ValueError(f"decoder.0 is for stride {_stride(sd, in_chans)}, the Swin's output stride is {model.encoder_stride}")
    out = copy_keys({k: v for k, v in sd.items() if not k.endswith(_DERIVED)}, _swin_table(depths), {}, to_hf=False)
    if file_size is not None and list(size) != list(file_size):
        raise ValueError("Swin windows are fixed at construction; import at the file's size, then use mimkit.load(..., img_size=)")
    load_exact(model, out, "official SimMIM Swin -> mimkit SimMIMSwin")
    return model.eval(), {}


def _export_swin(model) -> dict:
    enc = model.encoder
    out = copy_keys(model.state_dict(), _swin_table(enc.depths), {}, to_hf=True)
    for i, stage in enumerate(enc.layers):  # the reference's derived buffers, from timm's identical ones
        for j, blk in enumerate(stage.blocks):
            out[f"encoder.layers.{i}.blocks.{j}.attn.relative_position_index"] = blk.attn.relative_position_index.clone()
            if getattr(blk, "attn_mask", None) is not None:
                out[f"encoder.layers.{i}.blocks.{j}.attn_mask"] = blk.attn_mask.clone()
    return out


def load(obj, part=None, img_size=None, overrides=None):
    sd = _model_dict(obj, part)
    overrides = dict(overrides or {})
    if any(k.startswith("encoder.layers.") for k in sd):
        return _load_swin(sd, img_size, overrides)
    return _load_vit(sd, img_size, overrides)


def export(model, extras=None) -> dict:
    """``{"model": state_dict}`` as the official code saves it. A mimkit BEiT made from a SimMIM ViT with
    relative position bias goes back with the decoder from ``extras``."""
    if model.method == "simmim_swin":
        sd = _export_swin(model)
    elif model.method == "simmim":
        sd = _export_vit(model)
    elif model.method == "beit":
        if not extras or "decoder.0.weight" not in extras:
            raise ValueError("a BEiT exports to the SimMIM layout only with the SimMIM decoder (extras from the import)")
        sd = encoder_state_dict(model, theirs="encoder.")
        sd.update({k: v for k, v in extras.items() if k.startswith("decoder.")})
    else:
        raise ValueError(f"no official SimMIM layout for method {model.method!r}")
    return {"model": {k: v.detach().clone() for k, v in sd.items()}}
