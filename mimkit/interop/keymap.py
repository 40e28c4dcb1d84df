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


def hf_layer_to_timm(sd: dict, src: str, dst: str, out: dict) -> None:
    """One ``transformers`` ViT layer at prefix ``src`` -> one timm ``Block`` at prefix ``dst``."""
    a = f"{src}.attention"
    out[f"{dst}.norm1.weight"] = sd[f"{src}.layernorm_before.weight"]
    out[f"{dst}.norm1.bias"] = sd[f"{src}.layernorm_before.bias"]
    out[f"{dst}.attn.qkv.weight"] = torch.cat([sd[f"{a}.{n}_proj.weight"] for n in "qkv"], 0)
    if f"{a}.q_proj.bias" in sd:
        out[f"{dst}.attn.qkv.bias"] = torch.cat([sd[f"{a}.{n}_proj.bias"] for n in "qkv"], 0)
    out[f"{dst}.attn.proj.weight"] = sd[f"{a}.o_proj.weight"]
    out[f"{dst}.attn.proj.bias"] = sd[f"{a}.o_proj.bias"]
    out[f"{dst}.norm2.weight"] = sd[f"{src}.layernorm_after.weight"]
    out[f"{dst}.norm2.bias"] = sd[f"{src}.layernorm_after.bias"]
    for i in (1, 2):
        out[f"{dst}.mlp.fc{i}.weight"] = sd[f"{src}.mlp.fc{i}.weight"]
        out[f"{dst}.mlp.fc{i}.bias"] = sd[f"{src}.mlp.fc{i}.bias"]


def timm_block_to_hf(sd: dict, src: str, dst: str, out: dict) -> None:
    """Inverse of :func:`hf_layer_to_timm`."""
    a = f"{dst}.attention"
    out[f"{dst}.layernorm_before.weight"] = sd[f"{src}.norm1.weight"]
    out[f"{dst}.layernorm_before.bias"] = sd[f"{src}.norm1.bias"]
    for name, t in zip("qkv", sd[f"{src}.attn.qkv.weight"].chunk(3, 0)):
        out[f"{a}.{name}_proj.weight"] = t
    if f"{src}.attn.qkv.bias" in sd:
        for name, t in zip("qkv", sd[f"{src}.attn.qkv.bias"].chunk(3, 0)):
            out[f"{a}.{name}_proj.bias"] = t
    out[f"{a}.o_proj.weight"] = sd[f"{src}.attn.proj.weight"]
    out[f"{a}.o_proj.bias"] = sd[f"{src}.attn.proj.bias"]
    out[f"{dst}.layernorm_after.weight"] = sd[f"{src}.norm2.weight"]
    out[f"{dst}.layernorm_after.bias"] = sd[f"{src}.norm2.bias"]
    for i in (1, 2):
        out[f"{dst}.mlp.fc{i}.weight"] = sd[f"{src}.mlp.fc{i}.weight"]
        out[f"{dst}.mlp.fc{i}.bias"] = sd[f"{src}.mlp.fc{i}.bias"]


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


def copy_keys(sd: dict, pairs, out: dict, to_hf: bool) -> None:
    """Copy the tensors named by ``(mimkit_key, hf_key)`` pairs: mimkit -> transformers when
    ``to_hf``, else transformers -> mimkit. One table per family serves both directions."""
    for ours, theirs in pairs:
        src, dst = (ours, theirs) if to_hf else (theirs, ours)
        out[dst] = sd[src]
