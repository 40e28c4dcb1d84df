"""Prediction heads: MAE's transformer decoder, SimMIM's conv + PixelShuffle head, data2vec 2.0's
convolutional decoder, I-JEPA's predictor and iBOT's projection head."""
from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import nn

from .ops import init_trunc_normal_, init_xavier_, rescale_residual_branches_, sincos_pos_embed_2d, to_2tuple


class MAEDecoder(nn.Module):
    """MAE decoder: linear to decoder width, mask tokens re-inserted and un-shuffled with
    ``ids_restore``, fixed sin-cos decoder positions, N timm blocks, norm, linear to ``out_dim``.
    Input: encoder tokens (N, 1+kept, D) with cls first. Output: (N, L, out_dim), cls dropped.

    Args:
        grid_size: the patch grid (h, w) the decoder positions are built for (others are recomputed).
        embed_dim, out_dim: encoder width in, per-patch prediction width out (p*p*C for pixels).
        decoder_embed_dim, decoder_depth, decoder_num_heads, mlp_ratio, norm_eps, qkv_bias: the blocks.
    """

    def __init__(self, grid_size, embed_dim: int, out_dim: int, decoder_embed_dim: int = 512,
                 decoder_depth: int = 8, decoder_num_heads: int = 16, mlp_ratio: float = 4.0,
                 norm_eps: float = 1e-6, qkv_bias: bool = True):
        super().__init__()
        self.grid_size = to_2tuple(grid_size)
        self.decoder_embed_dim = decoder_embed_dim
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        pe = sincos_pos_embed_2d(decoder_embed_dim, self.grid_size, cls_token=True)
        self.decoder_pos_embed = nn.Parameter(pe, requires_grad=False)
        norm = partial(nn.LayerNorm, eps=norm_eps)
        self.decoder_blocks = nn.ModuleList(
            Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=qkv_bias, norm_layer=norm)
            for _ in range(decoder_depth)
        )
        self.decoder_norm = norm(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, out_dim)
        nn.init.normal_(self.mask_token, std=0.02)
        init_xavier_(self)

    def no_weight_decay(self) -> set[str]:
        return {"mask_token", "decoder_pos_embed"}

    def forward(self, x: torch.Tensor, ids_restore: torch.Tensor, grid=None) -> torch.Tensor:
        x = self.decoder_embed(x)
        n, L = ids_restore.shape
        mask_tokens = self.mask_token.to(x.dtype).expand(n, L + 1 - x.shape[1], -1)
        x_ = torch.cat([x[:, 1:], mask_tokens], dim=1)
        x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        x = torch.cat([x[:, :1], x_], dim=1)
        grid = tuple(grid) if grid is not None else self.grid_size
        pos = self.decoder_pos_embed if grid == self.grid_size else \
            sincos_pos_embed_2d(self.decoder_embed_dim, grid).to(self.decoder_pos_embed)
        x = x + pos
        for blk in self.decoder_blocks:
            x = blk(x)
        x = self.decoder_norm(x)
        return self.decoder_pred(x)[:, 1:]


class SimMIMHead(nn.Module):
    """SimMIM decoder: 1x1 Conv2d(width -> stride^2 * C) + PixelShuffle(stride) on the token grid.
    Input: tokens (N, h*w, D) without cls (or a map (N, D, h, w)). Output: image (N, C, h*stride, w*stride).

    Args:
        embed_dim: token width; encoder_stride: pixels per token side; out_chans: image channels.
    """

    def __init__(self, embed_dim: int, encoder_stride: int, out_chans: int = 3):
        super().__init__()
        self.encoder_stride, self.out_chans = encoder_stride, out_chans
        self.conv = nn.Conv2d(embed_dim, encoder_stride**2 * out_chans, kernel_size=1)
        self.shuffle = nn.PixelShuffle(encoder_stride)
        nn.init.trunc_normal_(self.conv.weight, std=0.02)  # the SimMIM reference's init
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor, grid=None) -> torch.Tensor:
        if x.ndim == 3:
            n, L, d = x.shape
            h, w = to_2tuple(grid) if grid is not None else (int(L**0.5), int(L**0.5))
            if h * w != L:
                raise ValueError(f"{L} tokens do not form a {h}x{w} grid; pass grid=(h, w)")
            x = x.transpose(1, 2).reshape(n, d, h, w)
        return self.shuffle(self.conv(x))


class ConvDecoder(nn.Module):
    """data2vec 2.0's light decoder on the token grid: ``layers`` x [Conv2d(k, groups) -> LayerNorm over
    channels (no affine) -> GELU], each added to its input when the widths match, then a Linear back to
    the encoder width. Input: (N, h*w, D) tokens in grid order (hidden slots already filled);
    output: (N, h*w, D).

    Args:
        embed_dim: encoder width (in and out); decoder_dim: conv width; layers, kernel, groups: the convs.
    """

    def __init__(self, embed_dim: int, decoder_dim: int = 768, layers: int = 6, kernel: int = 3, groups: int = 16):
        super().__init__()
        if embed_dim % groups or decoder_dim % groups:
            raise ValueError(f"decoder_groups {groups} must divide the encoder width {embed_dim} and "
                             f"decoder_dim {decoder_dim}")
        self.blocks = nn.ModuleList(
            nn.Conv2d(embed_dim if i == 0 else decoder_dim, decoder_dim, kernel, padding=kernel // 2, groups=groups)
            for i in range(layers)
        )
        self.proj = nn.Linear(decoder_dim, embed_dim)

    def forward(self, x: torch.Tensor, grid) -> torch.Tensor:
        n, L, d = x.shape
        h, w = to_2tuple(grid)
        x = x.transpose(1, 2).reshape(n, d, h, w)
        for conv in self.blocks:
            y = conv(x)
            y = F.gelu(F.layer_norm(y.permute(0, 2, 3, 1), y.shape[1:2]).permute(0, 3, 1, 2))
            x = y + x if y.shape == x.shape else y
        return self.proj(x.flatten(2).transpose(1, 2))


class JEPAPredictor(nn.Module):
    """I-JEPA's predictor: Linear(D -> width) on the context tokens + fixed sin-cos positions of their
    patches; one learned mask token + the position of each target patch; every target block is its own
    sequence (the context repeated per block); ``depth`` timm blocks, norm, Linear back to D.

    ``forward(context (N, Kc, D), context_ids (N, Kc), target_ids (N, B, Kt))`` -> (N * B, Kt, D).

    Args:
        grid_size: the patch grid (h, w); embed_dim: encoder width (in and out).
        width, depth, num_heads, mlp_ratio, norm_eps: the predictor's transformer.
    """

    def __init__(self, grid_size, embed_dim: int, width: int = 384, depth: int = 6, num_heads: int = 12,
                 mlp_ratio: float = 4.0, norm_eps: float = 1e-6):
        super().__init__()
        self.grid_size = to_2tuple(grid_size)
        self.embed = nn.Linear(embed_dim, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(sincos_pos_embed_2d(width, self.grid_size, cls_token=False), requires_grad=False)
        norm = partial(nn.LayerNorm, eps=norm_eps)
        self.blocks = nn.ModuleList(Block(width, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm)
                                    for _ in range(depth))
        self.norm = norm(width)
        self.proj = nn.Linear(width, embed_dim)
        init_trunc_normal_(self)  # the reference's init: trunc-normal(0.02), residual branches rescaled
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        rescale_residual_branches_(self.blocks)

    def no_weight_decay(self) -> set[str]:
        return {"mask_token", "pos_embed"}

    def forward(self, context: torch.Tensor, context_ids: torch.Tensor, target_ids: torch.Tensor, grid=None):
        n, nb, kt = target_ids.shape
        grid = tuple(grid) if grid is not None else self.grid_size
        pos = self.pos_embed if grid == self.grid_size else \
            sincos_pos_embed_2d(self.pos_embed.shape[-1], grid, cls_token=False).to(self.pos_embed)
        pos = pos.expand(n, -1, -1)
        width = pos.shape[-1]
        x = self.embed(context) + torch.gather(pos, 1, context_ids.unsqueeze(-1).expand(-1, -1, width))
        tgt_pos = torch.gather(pos, 1, target_ids.reshape(n, nb * kt, 1).expand(-1, -1, width)).reshape(n * nb, kt, width)
        queries = self.mask_token.to(x.dtype) + tgt_pos
        x = torch.cat([x.repeat_interleave(nb, 0), queries], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.proj(self.norm(x)[:, -kt:])


class IBOTHead(nn.Module):
    """iBOT's projection head (bytedance/ibot ``models/head.py``, ``iBOTHead`` without norms, GELU): an MLP of
    ``nlayers`` linears (GELU between them) to a ``bottleneck_dim`` vector, L2-normalised, then a
    weight-normalised linear without bias to ``out_dim`` prototypes for the class token and, for the patch
    tokens, the same layer (``shared_head``) or a second one to ``patch_out_dim``. ``norm_last_layer`` fixes
    the weight-norm gains at 1 (not trained). Init as the reference: trunc-normal(0.02) MLP weights, zero
    biases; the last layers keep torch's default init with their gains set to 1.

    ``forward(x)``: (N, D) -> (N, K) class-token logits, or tokens (N, 1+L, D) -> ((N, K), (N, L, K2)).
    The pieces: :meth:`project` (MLP + L2 norm, per token), :meth:`cls_logits`, :meth:`patch_logits`.

    The last layers use ``torch.nn.utils.parametrizations.weight_norm``: the reference's
    ``last_layer.weight_g`` / ``weight_v`` are ``last_layer.parametrizations.weight.original0`` /
    ``original1`` here (:func:`ibot_head_state_dict` maps a reference state dict).
    """

    def __init__(self, in_dim: int, out_dim: int = 8192, patch_out_dim: int | None = None, hidden_dim: int = 2048,
                 bottleneck_dim: int = 256, nlayers: int = 3, norm_last_layer: bool = True, shared_head: bool = False):
        super().__init__()
        if nlayers < 1 or bottleneck_dim < 1:
            raise ValueError(f"iBOTHead needs nlayers >= 1 and bottleneck_dim >= 1, got {nlayers}, {bottleneck_dim}")
        dims = [in_dim] + [hidden_dim] * (nlayers - 1) + [bottleneck_dim]
        layers: list[nn.Module] = []
        for i in range(nlayers):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < nlayers - 1:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        init_trunc_normal_(self.mlp)
        self.shared_head = bool(shared_head)
        self.out_dim = int(out_dim)
        self.patch_out_dim = self.out_dim if self.shared_head or patch_out_dim is None else int(patch_out_dim)
        self.last_layer = self._prototypes(bottleneck_dim, self.out_dim, norm_last_layer)
        self.last_layer2 = None if self.shared_head else self._prototypes(bottleneck_dim, self.patch_out_dim,
                                                                            norm_last_layer)

    @staticmethod
    def _prototypes(dim: int, k: int, norm_last_layer: bool) -> nn.Module:
        layer = nn.utils.parametrizations.weight_norm(nn.Linear(dim, k, bias=False))
        gain = layer.parametrizations.weight.original0
        with torch.no_grad():
            gain.fill_(1.0)
        gain.requires_grad_(not norm_last_layer)
        return layer

    def last_layers(self) -> list[nn.Module]:
        """The prototype layers (frozen in the first part of training, see ``freeze_last_layer``)."""
        return [self.last_layer] + ([self.last_layer2] if self.last_layer2 is not None else [])

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """MLP + L2 normalisation of every token (..., D) -> (..., bottleneck_dim)."""
        return F.normalize(self.mlp(x), dim=-1, p=2)

    def cls_logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.last_layer(z)

    def patch_logits(self, z: torch.Tensor) -> torch.Tensor:
        return (self.last_layer if self.last_layer2 is None else self.last_layer2)(z)

    def forward(self, x: torch.Tensor):
        if x.ndim == 2:
            return self.cls_logits(self.project(x))
        z = self.project(x)
        return self.cls_logits(z[:, 0]), self.patch_logits(z[:, 1:])


def ibot_head_state_dict(reference: dict, shared_head: bool) -> dict:
    """A reference ``iBOTHead`` state dict (``mlp.*``, ``last_layer.weight_g`` / ``weight_v``,
    ``last_layer2.*``; no ``head.`` prefix) as :class:`IBOTHead` keys. With ``shared_head`` the reference
    holds the shared layer twice (``last_layer2`` is ``last_layer``); here it is held once."""
    names = {"weight_g": "parametrizations.weight.original0", "weight_v": "parametrizations.weight.original1"}
    out = {}
    for key, value in reference.items():
        layer, _, leaf = key.rpartition(".")
        if layer == "last_layer2" and shared_head:
            continue
        out[f"{layer}.{names.get(leaf, leaf)}" if layer in ("last_layer", "last_layer2") else key] = value
    return out
