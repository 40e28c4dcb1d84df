"""transformers ``ViTModel`` (the plain ViT, as DINO's checkpoints are published) <-> mimkit iBOT.

``to_hf`` exports the encoder that evaluation reads (:meth:`~mimkit.base.MIMModel.feature_encoder`: the
student, or the EMA teacher with ``eval_teacher``) as a ``ViTModel`` without pooler: the same class token,
position table (learned, with its class row), blocks and final norm, so ``last_hidden_state`` equals
mimkit's unmasked tokens. ``from_hf`` gives a mimkit iBOT whose student and teacher start from the
``ViTModel``'s weights, with a fresh head (continue pretraining from a DINO-style checkpoint)."""
from __future__ import annotations

from ..base import feature_encoder
from ..ops import to_2tuple
from ..registry import create
from .keymap import copy_keys, load_exact, normalize_hf_keys, vit_encoder_config, vit_encoder_keys


def _table(depth: int) -> list:
    return vit_encoder_keys(depth, cls_token=True)


def vit_from_hf(hf, method: str = "ibot", **overrides):
    cfg = hf.config
    if cfg.hidden_act != "gelu" or not cfg.qkv_bias:
        raise ValueError(f"only hidden_act='gelu' with q/k/v biases is supported, got {cfg.hidden_act!r}, "
                         f"qkv_bias={cfg.qkv_bias}")
    if cfg.intermediate_size % cfg.hidden_size:
        raise ValueError(f"intermediate_size {cfg.intermediate_size} is not a whole multiple of hidden_size {cfg.hidden_size}")
    size = to_2tuple(cfg.image_size)  # local crops at the reference's 96/224 of the image, whole patches
    overrides.setdefault("local_size", max(1, round(min(size) * 96 / 224 / cfg.patch_size)) * cfg.patch_size)
    model = create(method, img_size=list(size), patch_size=cfg.patch_size,
                   in_chans=cfg.num_channels, embed_dim=cfg.hidden_size, depth=cfg.num_hidden_layers,
                   num_heads=cfg.num_attention_heads, mlp_ratio=cfg.intermediate_size / cfg.hidden_size,
                   norm_eps=cfg.layer_norm_eps, pos_embed="learned", **overrides)
    sd = {k: v for k, v in normalize_hf_keys(hf.state_dict()).items() if not k.startswith("pooler.")}
    enc = copy_keys(sd, _table(cfg.num_hidden_layers), {}, to_hf=False)
    load_exact(model, {**model.state_dict(), **enc}, f"ViTModel -> mimkit {method}")
    model.teacher.encoder.load_state_dict(model.encoder.state_dict())  # the teacher starts as the student
    return model.eval()


def vit_to_hf(model):
    from transformers import ViTConfig, ViTModel

    enc = feature_encoder(model)
    hf = ViTModel(ViTConfig(**vit_encoder_config(enc, "ViTModel")), add_pooling_layer=False)
    sd = {f"encoder.{k}": v for k, v in enc.state_dict().items()}
    load_exact(hf, {k: v.clone() for k, v in copy_keys(sd, _table(enc.depth), {}, to_hf=True).items()},
               f"mimkit {model.method} -> ViTModel")
    return hf.eval()


FROM_HF = {"ViTModel": vit_from_hf}
TO_HF = {"ibot": vit_to_hf}
