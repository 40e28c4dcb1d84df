"""transformers ``IJepaModel`` (the I-JEPA *context* encoder: no class token, mean pooling) <-> mimkit
I-JEPA. ``from_hf`` gives a mimkit I-JEPA whose encoder holds the weights (the predictor is fresh and the
teacher starts as a copy of the encoder); ``to_hf`` exports the encoder. Position embeddings equal to the
fixed 2-D sin-cos table (what the official checkpoints hold) stay fixed; any other table is kept as a
learned one (``pos_embed="learned"``)."""
from __future__ import annotations

import torch

from ..ops import sincos_pos_embed_2d, to_2tuple
from ..registry import create
from .keymap import copy_keys, load_exact, normalize_hf_keys, vit_encoder_config, vit_encoder_keys


def _table(depth: int) -> list:
    return vit_encoder_keys(depth, cls_token=False)


def ijepa_from_hf(hf):
    cfg = hf.config
    if cfg.hidden_act != "gelu":
        raise ValueError(f"only hidden_act='gelu' is supported, got {cfg.hidden_act!r}")
    if not cfg.qkv_bias:
        raise ValueError("mimkit's I-JEPA encoder has q/k/v biases (qkv_bias=True)")
    size = list(to_2tuple(cfg.image_size))
    sd = normalize_hf_keys(hf.state_dict())
    grid = (size[0] // cfg.patch_size, size[1] // cfg.patch_size)
    pe = sd["embeddings.position_embeddings"]
    fixed = pe.shape[-1] % 4 == 0 and torch.allclose(pe, sincos_pos_embed_2d(pe.shape[-1], grid, cls_token=False).to(pe),
                                                      atol=1e-5)
    model = create("ijepa", img_size=size, patch_size=cfg.patch_size, in_chans=cfg.num_channels,
                   embed_dim=cfg.hidden_size, depth=cfg.num_hidden_layers, num_heads=cfg.num_attention_heads,
                   mlp_ratio=int(cfg.hidden_size * (cfg.intermediate_size / cfg.hidden_size)) / cfg.hidden_size,
                   norm_eps=cfg.layer_norm_eps, pos_embed="sincos" if fixed else "learned")
    if int(cfg.hidden_size * model.encoder.blocks[0].mlp.fc1.out_features / cfg.hidden_size) != cfg.intermediate_size:
        raise ValueError(f"intermediate_size {cfg.intermediate_size} is not representable as hidden_size x mlp_ratio")
    enc = {k: v for k, v in copy_keys(sd, _table(cfg.num_hidden_layers), {}, to_hf=False).items()}
    load_exact(model, {**model.state_dict(), **enc}, "IJepaModel -> mimkit I-JEPA")
    model.teacher.encoder.load_state_dict(model.encoder.state_dict())  # the teacher starts as the encoder
    return model.eval()


def ijepa_to_hf(model):
    from transformers import IJepaConfig, IJepaModel

    enc = model.encoder
    hf = IJepaModel(IJepaConfig(**vit_encoder_config(enc, "IJepaModel")))
    sd = {k: v for k, v in model.state_dict().items() if k.startswith("encoder.")}
    load_exact(hf, {k: v.clone() for k, v in copy_keys(sd, _table(enc.depth), {}, to_hf=True).items()},
               "mimkit I-JEPA -> IJepaModel")
    return hf.eval()


FROM_HF = {"IJepaModel": ijepa_from_hf}
TO_HF = {"ijepa": ijepa_to_hf}
