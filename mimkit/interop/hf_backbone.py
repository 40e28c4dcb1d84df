"""A mimkit encoder as a ``transformers`` *backbone* (``AutoBackbone``), the input of ``transformers``' dense
heads (``UperNetForSemanticSegmentation``, ``DPTForSemanticSegmentation``, ``DPTForDepthEstimation``).

Which ``transformers`` class reproduces each family exactly:

* a plain ViT **with** a class token (MAE, SimMIM, MaskFeat, data2vec 2.0, iBOT): ``Dinov2Backbone``. Its layer
  is timm's pre-norm block with a layer scale, which is set to ones (or to the encoder's own layer scale);
  ``apply_layernorm=False`` so a feature map is the raw block output.
* a plain ViT **without** a class token (I-JEPA): ``VitDetBackbone`` with global attention, no relative
  positions and no residual blocks; its position table carries an unused class row, written as zeros.
* BEiT: ``BeitBackbone`` (``add_fpn=True`` adds its 4x / 2x / 1x / 0.5x pyramid, freshly initialised).
* SimMIM's Swin: ``SwinBackbone``. It normalises every stage it returns with a LayerNorm of its own: the last
  stage's is the encoder's final norm, the others start as unit weight and zero bias (they train with the
  head). It always partitions windows, so every stage must be larger than the window (``--img-size``).

**Parity:** ``feature_maps`` computes the same maps with mimkit's own modules (the outputs of the chosen
blocks or stages, prefix tokens dropped, reshaped to the grid; Swin's through the same norms), and the
backbone's ``feature_maps`` equal them (``tests/test_hf_backbone.py``). ``out_indices`` count blocks from 1
(stage ``i`` is the output of block ``i``); by default 4 evenly spaced blocks, or every Swin stage.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..base import feature_encoder
from ..encoders.beit import BEiTEncoder
from ..encoders.swin import SwinEncoder
from ..encoders.vit import ViTEncoder
from .keymap import copy_keys, embedding_keys, load_exact, norm_keys


def default_out_indices(encoder) -> list[int]:
    """4 evenly spaced blocks of a ViT (depth 12 -> 3, 6, 9, 12), or every stage of a Swin."""
    if isinstance(encoder, SwinEncoder):
        return list(range(1, len(encoder.layers) + 1))
    d = encoder.depth
    return sorted({max(1, round(d * k / 4)) for k in (1, 2, 3, 4)})


def _units(encoder) -> torch.nn.ModuleList:
    return encoder.layers if isinstance(encoder, SwinEncoder) else encoder.blocks


def _check_indices(encoder, out_indices) -> list[int]:
    out = default_out_indices(encoder) if not out_indices else sorted({int(i) for i in out_indices})
    n = len(_units(encoder))
    what = "stages" if isinstance(encoder, SwinEncoder) else "blocks"
    if out[0] < 1 or out[-1] > n:
        raise ValueError(f"out_indices {out} must lie in 1..{n} (this encoder has {n} {what}; 1 is the first)")
    return out


@torch.no_grad()
def feature_maps(model, images: torch.Tensor, out_indices=None) -> tuple[torch.Tensor, ...]:
    """mimkit's own dense features of ``images``: the output of each block (ViT, BEiT) or stage (Swin) in
    ``out_indices``, prefix tokens dropped, as (N, D, h, w) maps; Swin's through the backbone's stage norms
    (unit weight, zero bias; the last one the encoder's final norm). What the exported backbone returns."""
    enc = feature_encoder(model)
    idx = _check_indices(enc, out_indices)
    units, caught = _units(enc), {}
    hooks = [units[i - 1].register_forward_hook(lambda m, a, out, i=i: caught.__setitem__(i, out)) for i in idx]
    try:
        enc(images)
    finally:
        for h in hooks:
            h.remove()
    maps = []
    for i in idx:
        x = caught[i]
        if isinstance(enc, SwinEncoder):  # N, h, w, C
            norm = enc.norm if i == len(units) else None
            x = norm(x) if norm is not None else F.layer_norm(x, x.shape[-1:], eps=1e-5)
            maps.append(x.permute(0, 3, 1, 2).contiguous())
            continue
        h, w = enc.grid(images)
        x = x[:, enc.num_prefix_tokens:]
        maps.append(x.transpose(1, 2).reshape(x.shape[0], -1, h, w))
    return tuple(maps)


# ---- plain ViTs ---------------------------------------------------------------------------------------------
def _dinov2_keys(depth: int, layer_scale: bool) -> list:
    table = embedding_keys("embeddings") + norm_keys("encoder.norm", "layernorm")
    for i in range(depth):
        hf, ours = f"encoder.layer.{i}", f"encoder.blocks.{i}"
        table += [(f"{ours}.attn.qkv.{w}", tuple(f"{hf}.attention.{n}_proj.{w}" for n in "qkv")) for w in ("weight", "bias")]
        for a, b in (("norm1", "norm1"), ("norm2", "norm2"), ("attn.proj", "attention.o_proj"), ("mlp.fc1", "mlp.fc1"),
                     ("mlp.fc2", "mlp.fc2")):
            table += norm_keys(f"{ours}.{a}", f"{hf}.{b}")
        if layer_scale:
            table += [(f"{ours}.ls1.gamma", f"{hf}.layer_scale1.lambda1"), (f"{ours}.ls2.gamma", f"{hf}.layer_scale2.lambda1")]
    return table


def _vitdet_keys(depth: int) -> list:
    table = [(f"encoder.patch_embed.proj.{w}", f"embeddings.projection.{w}") for w in ("weight", "bias")]
    for i in range(depth):
        hf, ours = f"encoder.layer.{i}", f"encoder.blocks.{i}"
        for a, b in (("norm1", "norm1"), ("norm2", "norm2"), ("attn.qkv", "attention.qkv"), ("attn.proj", "attention.proj"),
                     ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")):
            table += norm_keys(f"{ours}.{a}", f"{hf}.{b}")
    return table


def _vit_common(enc: ViTEncoder) -> dict:
    if enc.img_size[0] != enc.img_size[1]:
        raise ValueError(f"transformers backbones need square images; this encoder is built for {enc.img_size} "
                         "(export with --img-size S)")
    blk = enc.blocks[0]
    if blk.attn.qkv.bias is None:
        raise ValueError("the transformers ViT backbones need q/k/v biases; this encoder has qkv_bias=False")
    if blk.mlp.fc1.out_features % enc.embed_dim:
        raise ValueError(f"the transformers ViT backbones take a whole mlp_ratio; this encoder's MLP is "
                         f"{blk.mlp.fc1.out_features} wide for width {enc.embed_dim}")
    return dict(hidden_size=enc.embed_dim, num_hidden_layers=enc.depth, num_attention_heads=enc.num_heads,
                mlp_ratio=blk.mlp.fc1.out_features // enc.embed_dim, image_size=enc.img_size[0],
                patch_size=enc.patch_size, num_channels=enc.in_chans, layer_norm_eps=enc.norm.eps, qkv_bias=True,
                hidden_act="gelu", drop_path_rate=0.0)


def _has_layer_scale(enc) -> bool:
    return hasattr(enc.blocks[0].ls1, "gamma")


def _vit_to_dinov2(enc: ViTEncoder, out_indices):
    from transformers import Dinov2Backbone, Dinov2Config

    cfg = Dinov2Config(**_vit_common(enc), layerscale_value=1.0, use_swiglu_ffn=False, apply_layernorm=False,
                       reshape_hidden_states=True, out_indices=out_indices, architectures=["Dinov2Backbone"])
    hf = Dinov2Backbone(cfg)
    sd = {f"encoder.{k}": v for k, v in enc.state_dict().items()}
    out = copy_keys(sd, _dinov2_keys(enc.depth, _has_layer_scale(enc)), {}, to_hf=True)
    own = hf.state_dict()
    mt = own["embeddings.mask_token"]  # unused by a backbone; transformers keeps it (1, D)
    out["embeddings.mask_token"] = out["embeddings.mask_token"].reshape(mt.shape) if "embeddings.mask_token" in out \
        else torch.zeros_like(mt)
    for k in own:  # no layer scale in mimkit: the identity
        if k.endswith(".lambda1") and k not in out:
            out[k] = torch.ones_like(own[k])
    load_exact(hf, {k: v.detach().clone() for k, v in out.items()}, "mimkit ViT -> Dinov2Backbone")
    return hf


def _vit_to_vitdet(enc: ViTEncoder, out_indices):
    from transformers import VitDetBackbone, VitDetConfig

    if _has_layer_scale(enc):
        raise ValueError("transformers VitDet has no layer scale; this encoder without a class token has one")
    common = _vit_common(enc)
    cfg = VitDetConfig(**common, pretrain_image_size=common["image_size"], use_absolute_position_embeddings=True,
                       use_relative_position_embeddings=False, window_size=0, window_block_indices=[],
                       residual_block_indices=[], out_indices=out_indices, architectures=["VitDetBackbone"])
    hf = VitDetBackbone(cfg)
    sd = {f"encoder.{k}": v for k, v in enc.state_dict().items()}
    out = copy_keys(sd, _vitdet_keys(enc.depth), {}, to_hf=True)
    pe = enc.pos_embed_for(enc.grid_size).detach()
    out["embeddings.position_embeddings"] = torch.cat([torch.zeros_like(pe[:, :1]), pe], 1)  # the unused class row
    load_exact(hf, {k: v.detach().clone() for k, v in out.items()}, "mimkit ViT -> VitDetBackbone")
    return hf


# ---- BEiT and Swin: the classes' own exports, re-housed ---------------------------------------------------
def _rehouse(cls, config, sd: dict, prefix: str, what: str, extra: dict | None = None):
    hf = cls(config)
    own = hf.state_dict()
    out = {k: v for k, v in sd.items() if k.startswith(prefix) and k in own}
    out.update(extra or {})
    for k, v in own.items():  # parts a backbone adds (BEiT's pyramid, Swin's stage norms) keep their init
        if not k.startswith(prefix) and k not in out:
            out[k] = v
    load_exact(hf, {k: v.detach().clone() for k, v in out.items()}, what)
    return hf


def _beit_backbone(model, out_indices, add_fpn: bool):
    from transformers import BeitBackbone

    from .hf_beit import beit_to_hf

    mim = beit_to_hf(model)
    cfg = mim.config.to_dict()
    cfg.update(out_indices=out_indices, add_fpn=add_fpn, reshape_hidden_states=True, architectures=["BeitBackbone"])
    cfg.pop("out_features", None)
    if add_fpn and len(out_indices) != 4:
        raise ValueError(f"BEiT's pyramid (add_fpn) takes 4 out_indices, got {out_indices}")
    return _rehouse(BeitBackbone, type(mim.config)(**cfg), mim.state_dict(), "beit.", "mimkit BEiT -> BeitBackbone")


def _swin_backbone(model, out_indices):
    from transformers import SwinBackbone

    from .hf_simmim import stage_resolutions, swin_simmim_to_hf

    enc = model.encoder
    res = stage_resolutions(enc.img_size[0], enc.patch_embed.patch_size[0], len(enc.layers))
    if min(res) <= model.encoder.layers[-1].blocks[0].window_size[0]:
        win = enc.layers[-1].blocks[0].window_size[0]
        need = enc.img_size[0] * (2 * win) // min(res)
        raise ValueError(f"SwinBackbone always partitions windows (it shifts a stage as large as its window, mimkit "
                         f"does not): stage resolutions {res} must all exceed the window {win}; export with "
                         f"--img-size {need}")
    mim = swin_simmim_to_hf(model)
    cfg = mim.config.to_dict()
    cfg.update(out_indices=out_indices, use_mask_token=False, architectures=["SwinBackbone"])
    cfg.pop("out_features", None)
    cfg = type(mim.config)(**cfg)
    extra = {}
    last = f"stage{len(enc.layers)}"
    if last in cfg.out_features:
        extra = {f"hidden_states_norms.{last}.{w}": getattr(enc.norm, w) for w in ("weight", "bias")}
        if enc.norm.eps != 1e-5:
            raise ValueError("SwinBackbone's stage norms have eps 1e-5; this encoder's final norm has "
                             f"{enc.norm.eps}")
    hf = _rehouse(SwinBackbone, cfg, mim.state_dict(), "swin.", "mimkit SimMIMSwin -> SwinBackbone", extra)
    return hf


def to_hf_backbone(model, out_indices=None, add_fpn: bool = False):
    """The ``transformers`` backbone of ``model``'s feature encoder (see the module doc for the class of each
    family); ``out_indices`` count blocks (or Swin stages) from 1."""
    enc = feature_encoder(model)
    idx = _check_indices(enc, out_indices)
    if add_fpn and not isinstance(enc, BEiTEncoder):
        raise ValueError("add_fpn is BeitBackbone's option; UperNet builds its own pyramid over any backbone")
    if isinstance(enc, SwinEncoder):
        hf = _swin_backbone(model, idx)
    elif isinstance(enc, BEiTEncoder):
        hf = _beit_backbone(model, idx, add_fpn)
    elif isinstance(enc, ViTEncoder):
        hf = (_vit_to_dinov2 if enc.cls_token is not None else _vit_to_vitdet)(enc, idx)
    else:
        raise TypeError(f"no transformers backbone for the encoder {type(enc).__name__}")
    return hf.eval()


def load_hf_backbone(path):
    """The backbone ``save_hf_backbone`` wrote, through the class its ``config.json`` names.

    ``transformers.AutoBackbone.from_pretrained(DIR)`` is the same call where the Hub can be reached, but
    transformers 5.x asks the Hub whether ``DIR`` names a repository before it looks at the disk
    (``_BaseAutoBackboneClass.from_pretrained``), so offline, and for absolute paths, it fails; the
    concrete class (``Dinov2Backbone.from_pretrained(DIR)``...) reads the directory directly."""
    from .hf import load_hf_dir

    return load_hf_dir(path).eval()


def save_hf_backbone(model, out, out_indices=None, add_fpn: bool = False):
    """Write ``to_hf_backbone(model)`` with ``save_pretrained``: ``AutoBackbone.from_pretrained(out)`` loads it."""
    hf = to_hf_backbone(model, out_indices, add_fpn)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(out)
    return hf
