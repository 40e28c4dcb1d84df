"""The OpenAI DALL-E dVAE *encoder* (the tokenizer of the reference BEiT), loadable from a weights
file on disk.

The architecture follows the ``dall_e`` package: an input 7x7 convolution to ``n_hid`` channels,
``group_count`` groups of ``n_blk_per_group`` residual blocks with widths ``n_hid * 2**g`` and a 2x2
max-pool after every group but the last (so a downsampling factor of ``2**(group_count-1)``, 8 for
the released model: 112 px -> a 14x14 token grid), then ReLU and a 1x1 convolution to
``vocab_size`` (8192) logits. Each block computes ``id_path(x) + post_gain * res_path(x)`` with
``post_gain = 1 / (group_count * n_blk_per_group)**2``; ``res_path`` is ReLU/3x3 conv three times
(hidden width ``n_out // 4``) and ReLU/1x1 conv. Parameters are named ``w``/``b`` like ``dall_e``'s
own ``Conv2d``, so the state dict keys are the package's (``blocks.group_1.block_1.res_path.conv_1.w``).

Inputs are images in [0, 1] (or normalised images when ``pixel_mean``/``pixel_std`` are given),
mapped with :func:`map_pixels` as ``dall_e`` expects. Nothing can be downloaded here: a user who
has the released ``encoder.pkl`` converts it once to a state dict where the ``dall_e`` package is
installed (``torch.save(torch.load("encoder.pkl").state_dict(), "dalle_encoder.pt")``).
"""
from __future__ import annotations

import math
import re
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import check_image_size, to_2tuple
from .weights import read_state_dict

LOGIT_LAPLACE_EPS = 0.1


def map_pixels(x: torch.Tensor) -> torch.Tensor:
    """``dall_e.map_pixels``: squeeze [0, 1] into [eps, 1-eps] for the logit-Laplace likelihood."""
    return (1 - 2 * LOGIT_LAPLACE_EPS) * x + LOGIT_LAPLACE_EPS


def unmap_pixels(x: torch.Tensor) -> torch.Tensor:
    return ((x - LOGIT_LAPLACE_EPS) / (1 - 2 * LOGIT_LAPLACE_EPS)).clamp(0, 1)


class DConv2d(nn.Module):
    """``dall_e``'s convolution: parameters ``w`` (out, in, k, k) and ``b``, 'same' padding."""

    def __init__(self, n_in: int, n_out: int, kw: int):
        super().__init__()
        if kw < 1 or kw % 2 != 1:
            raise ValueError(f"kernel width must be odd, got {kw}")
        self.kw = kw
        self.w = nn.Parameter(torch.randn(n_out, n_in, kw, kw) / math.sqrt(n_in * kw * kw))
        self.b = nn.Parameter(torch.zeros(n_out))

    def forward(self, x):
        return F.conv2d(x, self.w.to(x.dtype), self.b.to(x.dtype), padding=(self.kw - 1) // 2)


class DALLEEncoderBlock(nn.Module):
    def __init__(self, n_in: int, n_out: int, n_layers: int):
        super().__init__()
        n_hid = n_out // 4
        self.post_gain = 1 / (n_layers ** 2)
        self.id_path = DConv2d(n_in, n_out, 1) if n_in != n_out else nn.Identity()
        self.res_path = nn.Sequential(OrderedDict([
            ("relu_1", nn.ReLU()), ("conv_1", DConv2d(n_in, n_hid, 3)),
            ("relu_2", nn.ReLU()), ("conv_2", DConv2d(n_hid, n_hid, 3)),
            ("relu_3", nn.ReLU()), ("conv_3", DConv2d(n_hid, n_hid, 3)),
            ("relu_4", nn.ReLU()), ("conv_4", DConv2d(n_hid, n_out, 1)),
        ]))

    def forward(self, x):
        return self.id_path(x) + self.post_gain * self.res_path(x)


class DALLEEncoder(nn.Module):
    """DALL-E dVAE encoder with the tokenizer interface BEiT uses (``encode_ids``, ``grid_size``,
    ``vocab_size``, ``img_size``, ``in_chans``)."""

    method = "dalle_encoder"

    def __init__(self, img_size=112, group_count: int = 4, n_hid: int = 256, n_blk_per_group: int = 2,
                 input_channels: int = 3, vocab_size: int = 8192, pixel_mean=None, pixel_std=None):
        super().__init__()
        if group_count < 1 or n_blk_per_group < 1 or n_hid < 4:
            raise ValueError("group_count and n_blk_per_group must be >= 1 and n_hid >= 4")
        self.img_size = to_2tuple(img_size)
        self.downsample = 2 ** (group_count - 1)
        check_image_size(self.img_size, self.downsample)
        self.group_count, self.n_hid, self.n_blk_per_group = group_count, n_hid, n_blk_per_group
        self.in_chans = self.input_channels = input_channels
        self.vocab_size = vocab_size
        self.grid_size = (self.img_size[0] // self.downsample, self.img_size[1] // self.downsample)
        if (pixel_mean is None) != (pixel_std is None):
            raise ValueError("give both pixel_mean and pixel_std (the data normalisation) or neither")
        for name, v in (("pixel_mean", pixel_mean), ("pixel_std", pixel_std)):
            t = None if v is None else torch.as_tensor(v, dtype=torch.float32).reshape(1, -1, 1, 1)
            self.register_buffer(name, t, persistent=False)
        n_layers = group_count * n_blk_per_group
        layers = [("input", DConv2d(input_channels, n_hid, 7))]
        width = n_hid
        for g in range(group_count):
            out = n_hid * 2 ** g
            group = [(f"block_{i + 1}", DALLEEncoderBlock(width if i == 0 else out, out, n_layers))
                     for i in range(n_blk_per_group)]
            width = out
            if g < group_count - 1:
                group.append(("pool", nn.MaxPool2d(kernel_size=2)))
            layers.append((f"group_{g + 1}", nn.Sequential(OrderedDict(group))))
        layers.append(("output", nn.Sequential(OrderedDict([
            ("relu", nn.ReLU()), ("conv", DConv2d(width, vocab_size, 1))]))))
        self.blocks = nn.Sequential(OrderedDict(layers))

    def config(self) -> dict:
        cfg = dict(img_size=list(self.img_size), group_count=self.group_count, n_hid=self.n_hid,
                   n_blk_per_group=self.n_blk_per_group, input_channels=self.input_channels,
                   vocab_size=self.vocab_size)
        if self.pixel_mean is not None:
            cfg.update(pixel_mean=self.pixel_mean.flatten().tolist(), pixel_std=self.pixel_std.flatten().tolist())
        return cfg

    def check_input(self, images: torch.Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != self.input_channels:
            raise ValueError(f"DALL-E encoder expects images (N, {self.input_channels}, H, W), got {tuple(images.shape)}")
        check_image_size(tuple(images.shape[-2:]), self.downsample)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, vocab, H/8, W/8) of already mapped pixels (as ``dall_e.Encoder.forward``)."""
        self.check_input(x)
        return self.blocks(x.float())

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits for images in [0, 1] (or normalised by ``pixel_mean``/``pixel_std``)."""
        if self.pixel_mean is not None:
            images = images * self.pixel_std + self.pixel_mean
        return self.forward(map_pixels(images.float().clamp(0, 1)))

    @torch.no_grad()
    def encode_ids(self, images: torch.Tensor) -> torch.Tensor:
        """Token ids (N, h*w), argmax of the logits, row-major over the token grid."""
        return self.logits(images).argmax(1).flatten(1)


def dalle_kwargs_from_state_dict(sd: dict) -> dict:
    """Architecture arguments of a DALL-E encoder state dict (keys ``blocks.*``)."""
    try:
        w_in, w_out = sd["blocks.input.w"], sd["blocks.output.conv.w"]
    except KeyError:
        raise ValueError("not a DALL-E encoder state dict: keys blocks.input.w / blocks.output.conv.w are missing; "
                         f"found e.g. {sorted(sd)[:4]}") from None
    groups = {int(m.group(1)) for k in sd if (m := re.match(r"blocks\.group_(\d+)\.", k))}
    blocks = {int(m.group(1)) for k in sd if (m := re.match(r"blocks\.group_1\.block_(\d+)\.", k))}
    return dict(group_count=max(groups), n_hid=w_in.shape[0], n_blk_per_group=max(blocks),
                input_channels=w_in.shape[1], vocab_size=w_out.shape[0])


def load_dalle_encoder(path, img_size=112, pixel_mean=None, pixel_std=None,
                       trust_checkpoint: bool = False) -> DALLEEncoder:
    """Build a :class:`DALLEEncoder` from a state dict file (``.pt``/``.pth``/``.bin``/``.safetensors``)
    or a state dict already read, with or without an ``encoder.`` prefix on the keys. Files are read
    safely; ``trust_checkpoint=True`` unpickles one that holds more than tensors."""
    if isinstance(path, dict):
        sd, path = path, "state dict"
    else:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no DALL-E encoder weights at {path}")
        sd = read_state_dict(path, trust_checkpoint)
    if not any(k.startswith("blocks.") for k in sd):
        sd = {k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")}
    from ..interop.keymap import load_exact
    from ..registry import create

    kw = dict(img_size=list(to_2tuple(img_size)), **dalle_kwargs_from_state_dict(sd))
    if pixel_mean is not None:  # recorded as DALLEEncoder.config() does
        kw.update(pixel_mean=torch.as_tensor(pixel_mean, dtype=torch.float32).flatten().tolist(),
                  pixel_std=torch.as_tensor(pixel_std, dtype=torch.float32).flatten().tolist())
    model = create("dalle_encoder", **kw)
    load_exact(model, {k: v.float() for k, v in sd.items()}, f"DALL-E encoder {path}")
    return model.eval()
