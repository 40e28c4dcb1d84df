"""Shared model plumbing: output containers and the MIMModel base every method derives from."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .ops import patchify, to_2tuple, unpatchify


@dataclass
class EncoderOutput:
    last_hidden_state: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class MIMOutput:
    """What every method's ``forward`` returns.

    loss: scalar; pred: per-patch predictions (N, L, p*p*C for pixel targets, (N, L, K) for token
    logits / feature targets); mask: (N, L) float, 1 = hidden; extra: method-specific values that
    are worth logging (e.g. BEiT's masked-token accuracy).
    """

    loss: torch.Tensor
    pred: torch.Tensor
    mask: torch.Tensor
    extra: dict[str, Any] = field(default_factory=dict)


class MIMModel(nn.Module):
    """Base for methods. Subclasses set ``self.encoder``, ``patch_size``, ``in_chans``, ``img_size``
    and implement ``forward(images, noise=None, mask=None) -> MIMOutput``."""

    method: str = "mim"

    def __init__(self, img_size, patch_size: int, in_chans: int):
        super().__init__()
        self.img_size = to_2tuple(img_size)
        self.patch_size = patch_size
        self.in_chans = in_chans

    def grid(self, images: torch.Tensor) -> tuple[int, int]:
        return images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size

    def check_input(self, images: torch.Tensor) -> None:
        if images.ndim != 4:
            raise ValueError(f"expected images of shape (N, C, H, W), got {tuple(images.shape)}")
        if images.shape[1] != self.in_chans:
            raise ValueError(
                f"model expects {self.in_chans} channel(s) but images have {images.shape[1]}; "
                f"convert the images or create the model with in_chans={images.shape[1]}"
            )
        h, w = images.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(
                f"image size {h}x{w} is not divisible by patch size {self.patch_size}; resize or crop "
                f"to a multiple of {self.patch_size}"
            )

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        return patchify(images, self.patch_size)

    def unpatchify(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        return unpatchify(x, self.patch_size, grid, self.in_chans)

    @torch.no_grad()
    def encode(self, images: torch.Tensor, **kwargs) -> torch.Tensor:
        """Unmasked encoder tokens (N, 1+L, D) after the final norm."""
        return self.encoder(images, **kwargs).last_hidden_state

    def encoder_no_weight_decay(self) -> set[str]:
        return set()
