"""mimkit encoders <-> ``timm`` models.

* :func:`timm_state_dict` ``(model, img_size=None) -> (arch, kwargs, state_dict)``: what
  ``timm.create_model(arch, num_classes=0, **kwargs)`` needs to load the encoder strictly.
* :func:`to_timm`: that timm model, built and loaded (features equal ``model.encode``).
* :func:`save_timm` / :func:`load_timm`: a directory with ``model.safetensors`` + ``config.json``
  (``architecture``, ``kwargs``, ``pretrained_cfg``) that also loads with ``timm.create_model(arch,
  pretrained=True, num_classes=0, pretrained_cfg_overlay=dict(file=..., **pretrained_cfg), **kwargs)``.
* :func:`from_timm`: a timm ``VisionTransformer``, ``Beit`` or ``SwinTransformer`` -> a mimkit model
  (method of your choice), to evaluate or continue pretraining a timm encoder;
  :func:`import_timm_dir` does the same from a :func:`save_timm` directory.

ViT encoders (MAE, SimMIM-ViT, MaskFeat) map to ``timm.models.vision_transformer.VisionTransformer``
with ``class_token=True, global_pool="token", fc_norm=False, pos_embed="learn"``: mimkit's
cls-first layout with the position added to cls as well is timm's default, and a fixed sin-cos
embedding is simply stored as the (learned-type) ``pos_embed`` tensor. The mask token is dropped.
BEiT maps to ``timm.models.beit.Beit`` and Swin to ``timm.models.swin_transformer.SwinTransformer``.
Each encoder family is one entry of ``_EXPORTERS`` keyed by encoder class name.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

from ..base import feature_encoder
from ..ops import check_image_size, to_2tuple

TIMM_CONFIG = "config.json"
TIMM_WEIGHTS = "model.safetensors"
_VIT_SIZES = {192: "tiny", 384: "small", 768: "base", 1024: "large", 1280: "huge"}


def _encoder(model) -> nn.Module:
    """The encoder to export: a mimkit model's ``feature_encoder()`` (iBOT's teacher with ``eval_teacher``)
    or an encoder itself."""
    if getattr(model, "encoder", None) is None and not hasattr(model, "patch_embed"):
        raise TypeError(f"{type(model).__name__} has no .encoder; pass a mimkit model or encoder")
    return feature_encoder(model)


def _layernorm_eps(module: nn.Module) -> dict[str, float]:
    return {n: m.eps for n, m in module.named_modules() if isinstance(m, nn.LayerNorm)}


def _copy_eps(src: nn.Module, dst: nn.Module) -> list[str]:
    """Give every LayerNorm of ``dst`` the eps of the same-named LayerNorm in ``src`` (timm builds its
    norms with one fixed eps; mimkit keeps the eps of the checkpoint it came from). Returns the names
    whose eps differed."""
    own = _layernorm_eps(src)
    changed = []
    for name, m in dst.named_modules():
        if isinstance(m, nn.LayerNorm) and name in own and m.eps != own[name]:
            m.eps = own[name]
            changed.append(name)
    return changed


# ----------------------------------------------------------------------------- ViT --------
def _vit_export(enc, img_size):
    size = to_2tuple(img_size) if img_size is not None else tuple(enc.img_size)
    check_image_size(size, enc.patch_size)
    grid = (size[0] // enc.patch_size, size[1] // enc.patch_size)
    blk = enc.blocks[0] if len(enc.blocks) else None
    kwargs = dict(
        img_size=list(size), patch_size=enc.patch_size, in_chans=enc.in_chans, embed_dim=enc.embed_dim,
        depth=len(enc.blocks), num_heads=enc.num_heads,
        mlp_ratio=(blk.mlp.fc1.out_features / enc.embed_dim) if blk is not None else 4.0,
        qkv_bias=bool(blk is not None and blk.attn.qkv.bias is not None),
        class_token=enc.cls_token is not None, global_pool="token" if enc.cls_token is not None else "avg",
        fc_norm=False, pos_embed="learn", no_embed_class=False,
    )
    if blk is not None and not isinstance(blk.attn.q_norm, nn.Identity):
        kwargs["qk_norm"] = True
    if blk is not None and not isinstance(blk.ls1, nn.Identity):
        kwargs["init_values"] = 0.1  # only makes timm create ls1/ls2 (gamma); the values are loaded
    sd = {k: v for k, v in enc.state_dict().items() if k != "mask_token"}
    with torch.no_grad():
        sd["pos_embed"] = enc.pos_embed_for(grid).detach().clone()
    arch = f"vit_{_VIT_SIZES.get(enc.embed_dim, 'base')}_patch{enc.patch_size}_{size[0]}"
    import timm

    if not timm.is_model(arch):
        arch = "vit_base_patch16_224"  # every architectural argument is overridden by kwargs
    return arch, kwargs, sd


# ----------------------------------------------------------------------------- BEiT -------
def _beit_export(enc, img_size):
    """mimkit ``BEiTEncoder`` (timm ``Beit`` module names inside) -> timm ``Beit``. At another
    ``img_size`` the absolute embedding and the relative position tables are resized exactly as the
    mimkit encoder resizes them on the fly, so features still agree."""
    from ..ops import resize_rel_pos_table

    size = to_2tuple(img_size) if img_size is not None else tuple(enc.img_size)
    check_image_size(size, enc.patch_size)
    grid = (size[0] // enc.patch_size, size[1] // enc.patch_size)
    blk = enc.blocks[0]
    kwargs = dict(
        img_size=list(size), patch_size=enc.patch_size, in_chans=enc.in_chans, embed_dim=enc.embed_dim,
        depth=len(enc.blocks), num_heads=enc.num_heads, mlp_ratio=blk.mlp.fc1.out_features / enc.embed_dim,
        qkv_bias=blk.attn.q_bias is not None, use_abs_pos_emb=enc.pos_embed is not None,
        use_rel_pos_bias=blk.attn.relative_position_bias_table is not None,
        use_shared_rel_pos_bias=enc.rel_pos_bias is not None,
        init_values=enc.layer_scale_init_value or 0.0, global_pool="token", use_fc_norm=False,
    )
    sd = {k: v for k, v in enc.state_dict().items() if k != "mask_token"}
    with torch.no_grad():
        if enc.pos_embed is not None:
            sd["pos_embed"] = enc.pos_embed_for(grid).detach().clone()
        for k in [k for k in sd if k.endswith("relative_position_bias_table")]:
            sd[k] = resize_rel_pos_table(sd[k], enc.grid_size, grid).detach().clone()
    return "beit_base_patch16_224", kwargs, sd


# ----------------------------------------------------------------------------- Swin -------
def _swin_export(enc, img_size):
    """mimkit ``SwinEncoder`` (timm ``SwinTransformer`` modules under timm's names) -> timm
    ``SwinTransformer``; only the mask token is dropped. Windows and relative position tables do not
    depend on the image size, so another ``img_size`` (a multiple of the output stride) just changes
    the timm constructor argument."""
    if getattr(enc, "absolute_pos_embed", None) is not None:
        raise ValueError("timm's SwinTransformer has no absolute position embedding; a Swin encoder built with "
                         "ape=True cannot be exported to timm")
    size = to_2tuple(img_size) if img_size is not None else tuple(enc.img_size)
    if size[0] % enc.stride or size[1] % enc.stride:
        raise ValueError(f"img_size {size[0]}x{size[1]} must be a multiple of the Swin output stride {enc.stride}")
    blk = enc.layers[0].blocks[0]
    kwargs = dict(
        img_size=list(size), patch_size=enc.patch_size, in_chans=enc.in_chans, embed_dim=enc.embed_dim,
        depths=list(enc.depths), num_heads=list(enc.num_heads), window_size=enc.window_size,
        mlp_ratio=blk.mlp.fc1.out_features / blk.mlp.fc1.in_features, qkv_bias=blk.attn.qkv.bias is not None,
        global_pool="avg",
    )
    sd = {k: v for k, v in enc.state_dict().items() if k != "mask_token"}
    return "swin_base_patch4_window7_224", kwargs, sd


_EXPORTERS = {"ViTEncoder": _vit_export, "BEiTEncoder": _beit_export, "BeitEncoder": _beit_export,
              "SwinEncoder": _swin_export}


def _exporter(enc):
    name = type(enc).__name__
    if name in _EXPORTERS:
        return _EXPORTERS[name]
    for cls in type(enc).__mro__:
        if cls.__name__ in _EXPORTERS:
            return _EXPORTERS[cls.__name__]
    raise TypeError(f"no timm export for encoder {name}; supported: {sorted(_EXPORTERS)}")


def timm_state_dict(model, img_size=None) -> tuple[str, dict, dict[str, torch.Tensor]]:
    """``(arch, kwargs, state_dict)`` such that ``timm.create_model(arch, num_classes=0, **kwargs)``
    loads ``state_dict`` with ``strict=True``. ``img_size`` exports for another input resolution
    (sin-cos position embeddings recomputed, learned ones interpolated 2-D, grid aware)."""
    enc = _encoder(model)
    arch, kwargs, sd = _exporter(enc)(enc, img_size)
    return arch, kwargs, {k: v.detach().clone().contiguous() for k, v in sd.items()}


def to_timm(model, img_size=None) -> nn.Module:
    """The encoder of ``model`` as a timm model (``num_classes=0``) holding the same weights, in
    eval mode. ``forward_features(x)`` equals ``model.encode(x)``."""
    import timm

    enc = _encoder(model)
    arch, kwargs, sd = _exporter(enc)(enc, img_size)
    out = timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)
    _load_strict(out, sd, f"mimkit {type(enc).__name__} -> timm {type(out).__name__}")
    _copy_eps(enc, out)
    return out.eval()


def _load_strict(module, sd, what):
    from .keymap import load_exact

    # timm keeps a few derived buffers (e.g. Swin's relative_position_index) in the state dict
    own = module.state_dict()
    for k, v in own.items():
        if k not in sd and k.endswith(("relative_position_index", "attn_mask")):
            sd = {**sd, k: v}
    load_exact(module, sd, what)


# ----------------------------------------------------------------------------- files ------
def save_timm(model, directory, img_size=None) -> Path:
    """Write ``model.safetensors`` + ``config.json`` (``architecture``, ``kwargs``, ``num_classes=0``)
    in ``directory`` for ``timm.create_model(architecture, num_classes=0, **kwargs)``."""
    import timm
    from safetensors.torch import save_file

    from ..files import atomic_write

    arch, kwargs, sd = timm_state_dict(model, img_size)
    # build the timm model once: proves the strict load before anything is written
    probe = timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)
    _load_strict(probe, dict(sd), f"mimkit -> timm {arch}")
    enc = _encoder(model)
    own, theirs = _layernorm_eps(enc), _layernorm_eps(probe)
    eps = {n: own[n] for n in theirs if n in own and own[n] != theirs[n]}
    if eps:
        warnings.warn(f"{len(eps)} LayerNorm(s) use an eps timm does not build from kwargs (e.g. {next(iter(eps))}: "
                      f"{next(iter(eps.values())):g} vs {theirs[next(iter(eps))]:g}); features from a plain "
                      "timm.create_model differ very slightly; load_timm() applies config['layer_norm_eps']",
                      stacklevel=2)
    del probe
    directory = Path(directory)
    size = kwargs.get("img_size", [224, 224])
    cfg = {
        "architecture": arch,
        "num_classes": 0,
        "kwargs": kwargs,
        "layer_norm_eps": eps,
        "pretrained_cfg": {"input_size": [kwargs.get("in_chans", 3), *size], "num_classes": 0},
        "mimkit": getattr(model, "mimkit_config", None),
        "usage": f"timm.create_model({arch!r}, num_classes=0, **kwargs) then load_state_dict(strict=True); or "
                 f"timm.create_model({arch!r}, pretrained=True, num_classes=0, "
                 f"pretrained_cfg_overlay=dict(file='{TIMM_WEIGHTS}', **pretrained_cfg), **kwargs) (strict: the "
                 "pretrained_cfg's num_classes=0 matches the model)",
    }
    atomic_write(directory / TIMM_WEIGHTS, lambda p: save_file(sd, p, metadata={"format": "pt"}))
    atomic_write(directory / TIMM_CONFIG, lambda p: Path(p).write_text(json.dumps(cfg, indent=2, default=str)))
    return directory


def read_timm_dir(directory) -> tuple[str, dict, dict[str, torch.Tensor]]:
    from ..files import read_safetensors

    directory = Path(directory)
    cfg_path, weights = directory / TIMM_CONFIG, directory / TIMM_WEIGHTS
    for p in (cfg_path, weights):
        if not p.exists():
            raise FileNotFoundError(f"{p} is missing; a timm export directory holds {TIMM_CONFIG} and {TIMM_WEIGHTS} "
                                    "(write one with `mimkit export --format timm`)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_path} is not valid JSON: {e}") from None
    if "architecture" not in cfg:
        raise ValueError(f"{cfg_path} has no 'architecture'; it was not written by `mimkit export --format timm`")
    return cfg["architecture"], dict(cfg.get("kwargs", {})), read_safetensors(weights)


def load_timm(directory) -> nn.Module:
    """Build the timm model described by ``directory/config.json`` and load its weights strictly."""
    import timm

    arch, kwargs, sd = read_timm_dir(directory)
    kwargs.pop("num_classes", None)
    model = timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)
    _load_strict(model, sd, f"{directory} -> timm {arch}")
    eps = json.loads((Path(directory) / TIMM_CONFIG).read_text()).get("layer_norm_eps") or {}
    for name, value in eps.items():
        model.get_submodule(name).eps = float(value)
    return model.eval()


# ----------------------------------------------------------------------------- from timm --
def _options(method) -> set[str]:
    from ..registry import list_builders, option_names

    if method not in list_builders():
        raise ValueError(f"unknown method {method!r}; registered: {list_builders()}")
    return option_names(method) or set()


def from_timm(timm_model: nn.Module, method: str = "mae", **overrides):
    """Build a mimkit model of ``method`` whose encoder holds the weights of ``timm_model``.

    Supports timm ``VisionTransformer`` (one cls token, absolute position embedding; a sin-cos table
    is recognised as such, any other is kept as ``pos_embed="learned"`` where the method offers it)
    for the ViT methods (mae, simmim, maskfeat), ``Beit`` for beit and ``SwinTransformer`` for
    simmim_swin. Method parts that timm lacks (decoder, mask token, heads) keep their fresh
    initialisation. ``overrides`` go to the method's builder (e.g. ``decoder_depth=2``,
    ``mask_patch_size=8``)."""
    name = type(timm_model).__name__
    fn = _FROM_TIMM.get(name)
    if fn is None:
        raise TypeError(f"cannot convert timm {name}; supported: {sorted(_FROM_TIMM)}")
    return fn(timm_model, method, overrides)


def _final_norm(tm, sd):
    """timm models pooling with ``fc_norm`` have no final token norm; mimkit encoders always end with
    one, so fc_norm takes its place (with a warning)."""
    if isinstance(tm.norm, nn.LayerNorm):
        return tm.norm
    fc = getattr(tm, "fc_norm", None)
    if isinstance(fc, nn.LayerNorm):
        warnings.warn("this timm model pools with fc_norm (global average pooling) and has no final norm; "
                      "fc_norm becomes mimkit's final token norm, so per-token features differ from timm's",
                      stacklevel=4)
        sd["norm.weight"], sd["norm.bias"] = sd.pop("fc_norm.weight"), sd.pop("fc_norm.bias")
        return fc
    raise ValueError("timm model has no final LayerNorm (final_norm=False); mimkit encoders end with one")


def _is_sincos(pe, grid, cls_token: bool = True) -> bool:
    from ..ops import sincos_pos_embed_2d

    return pe.shape[-1] % 4 == 0 and pe.shape[1] == grid[0] * grid[1] + int(cls_token) and \
        torch.allclose(pe, sincos_pos_embed_2d(pe.shape[-1], grid, cls_token=cls_token).to(pe), atol=1e-5)


def _build_and_fill(tm, method, kw, sd, overrides, mimkit_only=("mask_token",)):
    from ..registry import create

    accepted = _options(method)
    unknown = sorted(k for k in kw if k not in accepted)
    if unknown:
        raise ValueError(f"timm {type(tm).__name__} needs {unknown} but method {method!r} does not take them; "
                         f"pick a method whose encoder matches (e.g. {_DEFAULT_METHOD.get(type(tm).__name__)!r})")
    model = create(method, **{**kw, **overrides})
    own = model.encoder.state_dict()
    load = {k: v for k, v in sd.items() if k in own}
    missing = sorted(set(own) - set(load) - set(mimkit_only))
    if missing:
        raise ValueError(f"timm {type(tm).__name__} -> mimkit {method}: encoder weights missing {missing[:8]}")
    for k, v in load.items():
        if own[k].shape != v.shape:
            raise ValueError(f"timm -> mimkit {method}: {k} has shape {tuple(v.shape)}, the {method} encoder "
                             f"expects {tuple(own[k].shape)}")
    model.encoder.load_state_dict(load, strict=False)
    _copy_eps(tm, model.encoder)
    return model.eval()


def _vit_from_timm(tm, method, overrides):
    if getattr(tm, "num_reg_tokens", 0):
        raise ValueError("mimkit ViT encoders have no register tokens (timm reg_tokens=0)")
    has_cls = getattr(tm, "cls_token", None) is not None
    if not has_cls and method != "ijepa":
        raise ValueError(f"this timm ViT has no class token, which method {method!r} needs; use method='ijepa' "
                         "(the I-JEPA encoder has none)")
    if has_cls and method == "ijepa":
        raise ValueError("the I-JEPA encoder has no class token but this timm ViT has one; pick another method")
    if getattr(tm, "no_embed_class", False) or tm.pos_embed is None:
        raise ValueError("mimkit ViT encoders add a position embedding to cls and patches (timm "
                         "no_embed_class=False, pos_embed='learn')")
    if not isinstance(tm.norm_pre, nn.Identity) or not isinstance(getattr(tm.patch_embed, "norm", nn.Identity()), nn.Identity):
        raise ValueError("timm models with a pre-norm (pre_norm=True) or patch-embed norm are not supported")
    blk = tm.blocks[0]
    if type(blk).__name__ != "Block" or not isinstance(blk.mlp.act, nn.GELU):
        raise ValueError(f"only plain timm ViT blocks with GELU are supported, got {type(blk).__name__}")
    if not isinstance(blk.attn.q_norm, nn.Identity):
        raise ValueError("timm ViT with qk_norm is not supported by mimkit's ViT encoder")
    grid = tuple(tm.patch_embed.grid_size)
    patch = to_2tuple(tm.patch_embed.patch_size)
    if patch[0] != patch[1]:
        raise ValueError(f"mimkit needs square patches, got {patch}")
    sd = dict(tm.state_dict())
    norm = _final_norm(tm, sd)
    accepted = _options(method)
    kw = dict(img_size=[grid[0] * patch[0], grid[1] * patch[0]], patch_size=patch[0],
              in_chans=tm.patch_embed.proj.in_channels, embed_dim=tm.embed_dim, depth=len(tm.blocks),
              num_heads=blk.attn.num_heads, mlp_ratio=blk.mlp.fc1.out_features / tm.embed_dim,
              norm_eps=norm.eps)
    sincos = _is_sincos(tm.pos_embed.detach(), grid, has_cls)
    if "pos_embed" in accepted:
        kw["pos_embed"] = "sincos" if sincos else "learned"
    elif not sincos:
        warnings.warn(f"method {method!r} has no pos_embed option; the learned timm position embedding is "
                      "used as stored at the native resolution but other resolutions recompute sin-cos",
                      stacklevel=3)
    if not isinstance(blk.ls1, nn.Identity):
        kw["init_values"] = float(blk.ls1.gamma.detach().abs().mean())
    if blk.attn.qkv.bias is None:
        kw["qkv_bias"] = False
    return _build_and_fill(tm, method, kw, sd, overrides)


def _beit_from_timm(tm, method, overrides):
    blk = tm.blocks[0]
    patch = to_2tuple(tm.patch_embed.patch_size)
    grid = tuple(tm.patch_embed.grid_size)
    if patch[0] != patch[1]:
        raise ValueError(f"mimkit needs square patches, got {patch}")
    sd = dict(tm.state_dict())
    norm = _final_norm(tm, sd)
    kw = dict(img_size=[grid[0] * patch[0], grid[1] * patch[0]], patch_size=patch[0],
              in_chans=tm.patch_embed.proj.in_channels, embed_dim=tm.embed_dim, depth=len(tm.blocks),
              num_heads=blk.attn.num_heads, mlp_ratio=blk.mlp.fc1.out_features / tm.embed_dim,
              qkv_bias=blk.attn.q_bias is not None, norm_eps=norm.eps,
              layer_scale_init_value=float(blk.gamma_1.detach().abs().mean()) if blk.gamma_1 is not None else 0.0,
              use_shared_relative_position_bias=tm.rel_pos_bias is not None,
              use_relative_position_bias=blk.attn.relative_position_bias_table is not None,
              use_absolute_position_embeddings=tm.pos_embed is not None)
    return _build_and_fill(tm, method, kw, sd, overrides)


def _swin_from_timm(tm, method, overrides):
    layers = tm.layers
    blk = layers[0].blocks[0]
    sd = dict(tm.state_dict())
    norm = _final_norm(tm, sd)
    ws = to_2tuple(blk.window_size)
    if ws[0] != ws[1]:
        raise ValueError(f"mimkit's Swin needs square windows, got {ws}")
    patch = to_2tuple(tm.patch_embed.patch_size)
    kw = dict(img_size=list(tm.patch_embed.img_size), patch_size=patch[0], in_chans=tm.patch_embed.proj.in_channels,
              embed_dim=tm.patch_embed.proj.out_channels, depths=[len(layer.blocks) for layer in layers],
              num_heads=[layer.blocks[0].attn.num_heads for layer in layers], window_size=ws[0],
              mlp_ratio=blk.mlp.fc1.out_features / blk.mlp.fc1.in_features, qkv_bias=blk.attn.qkv.bias is not None,
              norm_eps=norm.eps)
    return _build_and_fill(tm, method, kw, sd, overrides)


_FROM_TIMM = {"VisionTransformer": _vit_from_timm, "Beit": _beit_from_timm, "SwinTransformer": _swin_from_timm}


_ENCODER_ARGS = {"recipe", "builder", "img_size", "patch_size", "in_chans", "embed_dim", "depth", "depths",
                 "num_heads", "mlp_ratio", "norm_eps", "pos_embed", "init_values", "qkv_bias", "window_size",
                 "layer_scale_init_value", "use_shared_relative_position_bias", "use_relative_position_bias",
                 "use_absolute_position_embeddings"}
_DEFAULT_METHOD = {"VisionTransformer": "mae", "Beit": "beit", "SwinTransformer": "simmim_swin"}


def import_timm_dir(directory, method: str | None = None, **overrides):
    """A directory written by :func:`save_timm` (or any ``config.json`` with ``architecture`` and
    ``kwargs`` beside ``model.safetensors``) -> mimkit model. The method defaults to the one recorded
    at export (its non-encoder settings, e.g. decoder sizes, are reused), else by timm class."""
    tm = load_timm(directory)
    cfg = json.loads((Path(directory) / TIMM_CONFIG).read_text())
    saved = cfg.get("mimkit") or {}
    if method is None and saved:
        from ..registry import builder_name

        method = saved.get("builder") or (builder_name(saved["recipe"]) if saved.get("recipe") else None)
    if saved and method is not None:
        accepted = _options(method)
        # a tokenizer's weights are not in a timm export; a config-only rebuild would be random
        extra = {k: v for k, v in saved.items()
                 if k not in _ENCODER_ARGS and k in accepted and k != "tokenizer_config"}
        overrides = {**extra, **overrides}
    if method is None:
        method = _DEFAULT_METHOD.get(type(tm).__name__, "mae")
        if method == "mae" and getattr(tm, "cls_token", 1) is None:
            method = "ijepa"  # a ViT without class token
    return from_timm(tm, method=method, **overrides)
