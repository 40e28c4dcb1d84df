"""BEiT's "customized" tokenizer: a discrete VAE in the DALLE-pytorch layout, loadable from its weights.

BEiT's pretraining code builds its tokenizer from DALL-E or from this dVAE (``modeling_discrete_vae.py``
of microsoft/unilm ``beit/``, after lucidrains' DALLE-pytorch ``DiscreteVAE``):

* encoder: ``num_layers`` times [4x4 convolution, stride 2, padding 1, then ReLU] followed by a
  residual block, then a 1x1 convolution to ``num_tokens`` logits; ids are their argmax
  (``get_codebook_indices``), so the token grid is the image size / ``2**num_layers``;
* residual block: ``x + conv1x1(relu(conv3x3(relu(conv3x3(x)))))``, all at ``hidden_dim`` channels;
* codebook ``nn.Embedding(num_tokens, codebook_dim)``;
* decoder, mirrored: ``num_layers`` times [4x4 transposed convolution, stride 2, then ReLU] + a
  residual block (the first from ``codebook_dim`` channels), then a 1x1 convolution to the image.

Module names follow that code, so its state dict loads as it is: ``encoder.0.0.weight`` (first
convolution), ``encoder.1.net.{0,2,4}.*`` (first residual block), ``encoder.{2L}.weight`` (logits),
``codebook.weight``, ``decoder.*`` likewise. The released file is ``pytorch_model.bin`` holding
``{"weights": state_dict}``; BEiT builds it with 8192 tokens, 3 layers, codebook 512, hidden 256 and
feeds it images normalised with mean 0.5 / std 0.5 (``input_mean``/``input_std`` here).

Inputs are images in [0, 1], or normalised by the data pipeline when ``pixel_mean``/``pixel_std``
are given (undone first, as :class:`~mimkit.tokenizer.dalle.DALLEEncoder` does); ``decode_ids``
returns images in that same space, so ``mimkit tokenizer stats`` measures PSNR in pixels.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from ..ops import check_image_size, to_2tuple, token_grid
from .weights import read_state_dict

# BEiT's customized dVAE (NUM_TOKENS, NUM_LAYERS, EMB_DIM, HID_DIM in its utils) and its input view
BEIT_DVAE = dict(num_tokens=8192, num_layers=3, codebook_dim=512, hidden_dim=256)
BEIT_IMG_SIZE = 112  # the reference's second_input_size: a 14x14 token grid


class ConvResBlock(nn.Module):
    """``x + net(x)`` with ``net`` = 3x3 conv, ReLU, 3x3 conv, ReLU, 1x1 conv (``net.{0,2,4}``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
            nn.Conv2d(channels, channels, 1),
        )

    def forward(self, x):
        return x + self.net(x)


def _buffer(module: nn.Module, name: str, value, channels: int) -> None:
    t = None if value is None else torch.as_tensor(value, dtype=torch.float32).reshape(1, -1, 1, 1)
    if t is not None and t.shape[1] not in (1, channels):
        raise ValueError(f"{name} has {t.shape[1]} values; give 1 or {channels} (one per channel)")
    module.register_buffer(name, t, persistent=False)


class DallePytorchDVAE(nn.Module):
    """The DALLE-pytorch / BEiT discrete VAE with mimkit's tokenizer interface (``encode_ids``,
    ``decode_ids``, ``vocab_size``, ``grid_size``, ``img_size``, ``in_chans``, ``downsample``)."""

    method = "dalle_pytorch_dvae"

    def __init__(self, img_size=BEIT_IMG_SIZE, num_tokens: int = 8192, codebook_dim: int = 512, num_layers: int = 3,
                 hidden_dim: int = 256, channels: int = 3, input_mean=0.5, input_std=0.5, pixel_mean=None,
                 pixel_std=None):
        super().__init__()
        if num_layers < 1 or num_tokens < 2 or hidden_dim < 1 or codebook_dim < 1:
            raise ValueError("need num_layers >= 1, num_tokens >= 2, hidden_dim >= 1 and codebook_dim >= 1")
        if (pixel_mean is None) != (pixel_std is None):
            raise ValueError("give both pixel_mean and pixel_std (the data normalisation) or neither")
        self.img_size = to_2tuple(img_size)
        self.downsample = 2 ** num_layers
        check_image_size(self.img_size, self.downsample)
        self.num_layers, self.hidden_dim, self.codebook_dim = num_layers, hidden_dim, codebook_dim
        self.in_chans = self.channels = channels
        self.vocab_size = self.num_tokens = num_tokens
        self.grid_size = (self.img_size[0] // self.downsample, self.img_size[1] // self.downsample)
        for name, value in (("input_mean", input_mean), ("input_std", input_std), ("pixel_mean", pixel_mean),
                            ("pixel_std", pixel_std)):
            _buffer(self, name, value, channels)
        self.codebook = nn.Embedding(num_tokens, codebook_dim)
        self.encoder = nn.Sequential(*self._stages(nn.Conv2d, channels), nn.Conv2d(hidden_dim, num_tokens, 1))
        self.decoder = nn.Sequential(*self._stages(nn.ConvTranspose2d, codebook_dim),
                                     nn.Conv2d(hidden_dim, channels, 1))

    def _stages(self, conv, first_in: int) -> list[nn.Module]:
        """``num_layers`` x [strided 4x4 (transposed) convolution + ReLU, residual block]."""
        layers: list[nn.Module] = []
        for i in range(self.num_layers):
            c_in = first_in if i == 0 else self.hidden_dim
            layers += [nn.Sequential(conv(c_in, self.hidden_dim, 4, stride=2, padding=1), nn.ReLU()),
                       ConvResBlock(self.hidden_dim)]
        return layers

    def check_input(self, images: torch.Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != self.channels:
            raise ValueError(f"the dVAE expects images (N, {self.channels}, H, W), got {tuple(images.shape)}")
        check_image_size(tuple(images.shape[-2:]), self.downsample)

    def to_pixels(self, images: torch.Tensor) -> torch.Tensor:
        """Undo the data normalisation (if known) and clamp to [0, 1]."""
        if self.pixel_mean is not None:
            images = images * self.pixel_std + self.pixel_mean
        return images.clamp(0, 1)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Encoder logits (N, num_tokens, H / 2**num_layers, W / 2**num_layers) of images in [0, 1] (or
        normalised by ``pixel_mean``/``pixel_std``), fed in the dVAE's own normalisation."""
        self.check_input(images)
        x = (self.to_pixels(images.float()) - self.input_mean) / self.input_std
        return self.encoder(x)

    @torch.no_grad()
    def encode_ids(self, images: torch.Tensor) -> torch.Tensor:
        """Token ids (N, h*w): argmax of the logits, row-major over the token grid."""
        return self.logits(images).argmax(1).flatten(1)

    def decode_ids(self, ids: torch.Tensor, grid=None) -> torch.Tensor:
        """Images (N, C, H, W) from ids (N, h*w) or (N, h, w), in the space the inputs came in."""
        ids = token_grid(ids, grid or self.grid_size)
        out = self.decoder(self.codebook(ids).permute(0, 3, 1, 2)) * self.input_std + self.input_mean
        if self.pixel_mean is not None:
            out = (out - self.pixel_mean) / self.pixel_std
        return out

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """Reconstruction from the hard codes, in the inputs' space."""
        grid = (images.shape[-2] // self.downsample, images.shape[-1] // self.downsample)
        return self.decode_ids(self.encode_ids(images), grid)


def is_dalle_pytorch_state_dict(sd: dict) -> bool:
    return "codebook.weight" in sd and "encoder.0.0.weight" in sd and "decoder.0.0.weight" in sd


def dalle_pytorch_kwargs_from_state_dict(sd: dict) -> dict:
    """Architecture arguments implied by a DALLE-pytorch ``DiscreteVAE`` state dict's shapes."""
    if not is_dalle_pytorch_state_dict(sd):
        raise ValueError("not a DALLE-pytorch DiscreteVAE state dict: codebook.weight, encoder.0.0.weight and "
                         f"decoder.0.0.weight are needed; found e.g. {sorted(sd)[:4]}")
    stages = sorted(int(m.group(1)) for k in sd if (m := re.fullmatch(r"encoder\.(\d+)\.0\.weight", k)))
    num_layers = len(stages)
    if stages != list(range(0, 2 * num_layers, 2)) or f"encoder.{2 * num_layers}.weight" not in sd:
        raise ValueError(f"unexpected DALLE-pytorch encoder layout: strided convolutions at {stages}, expected "
                         f"0, 2, ... and the logits convolution at encoder.{2 * num_layers}")
    first, codebook = sd["encoder.0.0.weight"], sd["codebook.weight"]
    return dict(num_tokens=codebook.shape[0], codebook_dim=codebook.shape[1], num_layers=num_layers,
                hidden_dim=first.shape[0], channels=first.shape[1])


def load_dalle_pytorch_dvae(path_or_state_dict, img_size=BEIT_IMG_SIZE, num_layers: int | None = None,
                            num_tokens: int | None = None, codebook_dim: int | None = None,
                            hidden_dim: int | None = None, input_mean=0.5, input_std=0.5, pixel_mean=None,
                            pixel_std=None, trust_checkpoint: bool = False) -> DallePytorchDVAE:
    """Build a :class:`DallePytorchDVAE` from BEiT's ``pytorch_model.bin`` (``{"weights": state_dict}``),
    a plain state dict file (``.pt``/``.pth``/``.bin``/``.safetensors``) or a state dict. Shapes are
    read from the weights; the given ``num_layers``/``num_tokens``/``codebook_dim``/``hidden_dim``
    must agree with them. Files are read safely (``trust_checkpoint=True`` to unpickle one holding
    more than tensors)."""
    from ..interop.keymap import load_exact
    from ..registry import create

    if isinstance(path_or_state_dict, dict):
        sd, source = path_or_state_dict, "state dict"
    else:
        source = Path(path_or_state_dict)
        if not source.exists():
            raise FileNotFoundError(f"no dVAE weights at {source}")
        sd = read_state_dict(source, trust_checkpoint)
    if "weights" in sd and isinstance(sd["weights"], dict):
        sd = sd["weights"]
    kw = dalle_pytorch_kwargs_from_state_dict(sd)
    given = dict(num_layers=num_layers, num_tokens=num_tokens, codebook_dim=codebook_dim, hidden_dim=hidden_dim)
    for key, value in given.items():
        if value is not None and int(value) != kw[key]:
            raise ValueError(f"{key}={value} was given but the weights in {source} have {key}={kw[key]}")
    kw.update(img_size=list(to_2tuple(img_size)), input_mean=_floats(input_mean), input_std=_floats(input_std))
    if pixel_mean is not None or pixel_std is not None:
        kw.update(pixel_mean=_floats(pixel_mean), pixel_std=_floats(pixel_std))
    model = create("dalle_pytorch_dvae", **kw)
    load_exact(model, {k: v.float() for k, v in sd.items()}, f"DALLE-pytorch dVAE {source}")
    return model.eval()


def _floats(value):
    """A number or a per-channel list, as JSON records it (None stays None)."""
    if value is None:
        return None
    flat = torch.as_tensor(value, dtype=torch.float32).flatten().tolist()
    return flat[0] if len(flat) == 1 else flat
