"""A classifier on top of any mimkit encoder, with the layer ids that layer-wise lr decay needs.

Plain ``torch.nn`` (no training framework): :class:`Classifier` = encoder -> pool (cls token or
mean of patch tokens) -> [LayerNorm for mean pooling, as MAE's ``fc_norm``] -> Linear.

Layer ids (BEiT/MAE convention): the embeddings (patch embedding, cls/mask tokens, position
embeddings, shared relative position bias) are layer 0, block ``i`` is layer ``i + 1``, and
everything after the blocks (final norm, ``fc_norm``, head) is layer ``depth + 1``. With timm's
:func:`~timm.optim.param_groups_layer_decay` the learning-rate scale of layer ``l`` is then
``decay ** (depth + 1 - l)``: the head trains at the full rate, the embeddings at ``decay**(depth+1)``.
Swin blocks are numbered across stages; a stage's patch merging shares the id of its first block.
"""
from __future__ import annotations

import copy
import re

import torch
from torch import nn

from .features import POOLS, check_pool, has_cls_token, pool

_BLOCK = re.compile(r"^encoder\.blocks\.(\d+)\.")
_SWIN = re.compile(r"^encoder\.layers\.(\d+)\.(blocks\.(\d+)|downsample)\.")


def encoder_blocks(encoder: nn.Module) -> list[nn.Module]:
    """Transformer blocks of an encoder in forward order (ViT / BEiT ``blocks``, Swin ``layers[*].blocks``)."""
    if hasattr(encoder, "blocks"):
        return list(encoder.blocks)
    if hasattr(encoder, "layers"):
        return [blk for stage in encoder.layers for blk in stage.blocks]
    raise TypeError(f"{type(encoder).__name__} has neither .blocks (ViT, BEiT) nor .layers (Swin)")


def encoder_width(encoder: nn.Module) -> int:
    return int(getattr(encoder, "num_features", None) or encoder.embed_dim)


def set_drop_path(encoder: nn.Module, rate: float) -> list[float]:
    """Stochastic depth on an existing encoder: block ``i`` of ``n`` drops its residual branches with
    probability ``rate * i / (n - 1)`` (timm's linear rule). Replaces each block's ``drop_path1`` /
    ``drop_path2`` with timm ``DropPath`` (or ``Identity`` at 0), so weights are untouched. Returns
    the per-block rates."""
    from timm.layers import DropPath

    if not 0 <= rate < 1:
        raise ValueError(f"drop path rate must be in [0, 1), got {rate}")
    blocks = encoder_blocks(encoder)
    rates = [float(x) for x in torch.linspace(0, rate, len(blocks))] if blocks else []
    for blk, p in zip(blocks, rates):
        for attr in ("drop_path1", "drop_path2"):
            if not hasattr(blk, attr):
                raise TypeError(f"{type(blk).__name__} has no {attr}; cannot set drop path on this encoder")
            setattr(blk, attr, DropPath(p) if p > 0 else nn.Identity())
    return rates


class Classifier(nn.Module):
    """``encoder`` -> pooled feature -> linear head (logits). ``pool='cls'`` uses the cls token,
    ``'mean'`` the mean of the patch tokens followed by a fresh LayerNorm (MAE's ``fc_norm``)."""

    def __init__(self, encoder: nn.Module, num_classes: int, pool: str = "mean", head_init_std: float = 2e-5,
                 copy_encoder: bool = True):
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        check_pool(encoder, pool)
        self.encoder = copy.deepcopy(encoder) if copy_encoder else encoder
        self.pool, self.cls_token = pool, has_cls_token(encoder)
        self.num_classes = int(num_classes)
        dim = encoder_width(encoder)
        self.fc_norm = nn.LayerNorm(dim, eps=1e-6) if pool == "mean" else nn.Identity()
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=head_init_std)  # MAE fine-tuning init
        nn.init.zeros_(self.head.bias)
        self.depth = len(encoder_blocks(self.encoder))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc_norm(pool(self.encoder(images).last_hidden_state, self.pool, self.cls_token))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))

    # ---- layer-wise lr decay -----------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        """Layer ids run from 0 (embeddings) to ``depth + 1`` (final norm and head)."""
        return self.depth + 2

    def layer_id(self, name: str) -> int:
        m = _BLOCK.match(name)
        if m:
            return int(m.group(1)) + 1
        m = _SWIN.match(name)
        if m:
            stage = int(m.group(1))
            first = sum(len(s.blocks) for s in list(self.encoder.layers)[:stage])
            return first + (int(m.group(3)) if m.group(3) is not None else 0) + 1
        if name.startswith("encoder.") and not name.startswith("encoder.norm."):
            return 0  # patch embedding, tokens, position embeddings, shared relative position bias
        return self.depth + 1  # final norm, fc_norm, head

    def group_matcher(self, coarse: bool = False):
        """timm's hook for :func:`~timm.optim.param_groups_layer_decay`: a callable name -> layer id."""
        return self.layer_id

    def no_weight_decay(self) -> set[str]:
        fn = getattr(self.encoder, "no_weight_decay", None)
        return {f"encoder.{n}" for n in (fn() if callable(fn) else ())}


def layer_decay_param_groups(model: Classifier, weight_decay: float = 0.05, layer_decay: float = 0.75):
    """AdamW parameter groups with ``lr_scale = layer_decay ** (depth + 1 - layer_id)`` (timm's
    ``param_groups_layer_decay`` on :meth:`Classifier.group_matcher`); no weight decay on biases,
    norms, tokens and position embeddings."""
    from timm.optim import param_groups_layer_decay

    if not 0 < layer_decay <= 1:
        raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
    ids = {model.layer_id(n) for n, _ in model.named_parameters()}
    missing = set(range(model.num_layers)) - ids
    if missing:  # timm renumbers ids densely; a layer without parameters would shift the scales
        raise ValueError(f"layers {sorted(missing)} of {type(model.encoder).__name__} hold no parameters")
    return param_groups_layer_decay(model, weight_decay=weight_decay, no_weight_decay_list=sorted(model.no_weight_decay()),
                                    layer_decay=layer_decay)
