"""Shared model plumbing: output containers and the MIMModel base every method derives from."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .masking import Masks, make_masks
from .ops import patch_grid, patchify, to_2tuple, unpatchify


@dataclass
class EncoderOutput:
    """``last_hidden_state``: (N, T, D) tokens after the final norm; ``hidden_states``: the input of
    every block and the final output, when asked for; ``attentions``: (N, heads, T, T) per block."""

    last_hidden_state: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class MIMOutput:
    """What every method's ``forward`` returns.

    * ``loss``: scalar, computed on hidden positions only (the method's docstring says how).
    * ``pred``: the method's predictions -- (N, L, p*p*C) pixels of every patch (MAE, SimMIM; MAE's in
      normalised-patch space with ``norm_pix_loss``), (N, L, F) HOG features of every patch (MaskFeat),
      (M, vocab) token logits of the M hidden patches in ``mask`` order (BEiT), (M, D) teacher-feature
      predictions of the hidden tokens (data2vec 2.0, I-JEPA).
    * ``mask``: (N, L) float, 1 = hidden (data2vec 2.0: one row per mask, N = images x masks).
    * ``extra``: method-specific values worth logging (BEiT's masked-token accuracy, ...).
    """

    loss: torch.Tensor
    pred: torch.Tensor
    mask: torch.Tensor
    extra: dict[str, Any] = field(default_factory=dict)


class MIMModel(nn.Module):
    """Base for methods. A subclass sets ``self.encoder`` and ``self.masking`` (a
    :class:`~mimkit.masking.MaskGenerator`) and implements ``forward(images, noise=None, mask=None)
    -> MIMOutput``.

    Capabilities the engine and the tools ask for (instead of method names):

    * ``visible_only``: the encoder sees visible tokens only (MAE-style ``ids_keep``);
    * ``noise_masking``: how a caller's ``noise`` is read (default: ``self.masking``);
      :attr:`accepts_noise` says whether ``forward(images, noise=...)`` fixes the mask;
    * ``reconstruct(images, noise=None, mask=None) -> (N, C, H, W)``: defined by pixel-target methods;
    * ``after_optimizer_step(step, total_steps)``: defined by methods with an EMA teacher, called by the
      engine after every optimiser step;
    * ``before_optimizer_step(step, total_steps)``: called with the gradients, before clipping and the
      optimiser step (iBOT drops its prototypes' gradients early in the run);
    * ``multi_crop``: the views a multi-view method wants from the data layer (:mod:`mimkit.data.views`),
      which then passes ``forward(images=first global view, views=[the others])``;
    * ``frozen_parts``: submodules that never train (a tokenizer, a teacher): kept in eval mode;
    * ``feature_encoder()``: the encoder that evaluation, export and the tools read (default ``self.encoder``;
      iBOT's EMA teacher with ``eval_teacher``).
    """

    method: str = "mim"
    visible_only: bool = False
    noise_masking = None
    frozen_parts: tuple[str, ...] = ()

    def __init__(self, img_size, patch_size: int, in_chans: int):
        super().__init__()
        self.img_size = to_2tuple(img_size)
        self.patch_size = patch_size
        self.in_chans = in_chans

    def train(self, mode: bool = True):
        super().train(mode)
        for name in self.frozen_parts:
            part = getattr(self, name, None)
            if part is not None:
                part.eval()
        return self

    def grid(self, images: torch.Tensor) -> tuple[int, int]:
        """Patch grid (h, w) of ``images``."""
        return patch_grid(images, self.patch_size)

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

    @property
    def accepts_noise(self) -> bool:
        """Whether ``forward(images, noise=(N, L))`` fixes the mask (MAE's convention: the patches with
        the smallest noise stay visible)."""
        return hasattr(self.noise_masking or getattr(self, "masking", None), "from_noise")

    def masks(self, images: torch.Tensor, noise: torch.Tensor | None = None, mask: torch.Tensor | None = None,
              generator: torch.Generator | None = None) -> Masks:
        """The masks of one forward: the caller's ``mask`` (N, L) or ``noise``, else this model's masking
        (see :func:`mimkit.masking.make_masks`)."""
        return make_masks(self.masking, images.shape[0], self.grid(images), noise=noise, mask=mask,
                          generator=generator, device=images.device, visible_only=self.visible_only,
                          noise_masking=self.noise_masking)

    def make_mask(self, images: torch.Tensor, noise=None, mask=None) -> torch.Tensor:
        """(N, L) bool mask, True = hidden (see :meth:`masks`)."""
        return self.masks(images, noise, mask).mask

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        return patchify(images, self.patch_size)

    def unpatchify(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        return unpatchify(x, self.patch_size, grid, self.in_chans)

    def example_inputs(self, batch: int, generator: torch.Generator | None = None) -> dict:
        """Random ``forward`` inputs of one training step's shapes (benchmarks, FLOP counts): ``images``
        (N, C, H, W), and for a multi-view method the ``views`` its :attr:`multi_crop` asks the data layer for
        (the second global view, then the local ones)."""
        size, crops = tuple(self.img_size), getattr(self, "multi_crop", None)
        rand = lambda hw: torch.randn(batch, self.in_chans, *hw, generator=generator)  # noqa: E731
        out = {"images": rand(size)}
        if crops:
            local = (crops["local_size"],) * 2
            out["views"] = [rand(size)] + [rand(local) for _ in range(crops["local_crops_number"])]
        return out

    def feature_encoder(self) -> nn.Module:
        """The encoder whose features are evaluated and exported (see :func:`feature_encoder`)."""
        return self.encoder

    @torch.no_grad()
    def encode(self, images: torch.Tensor, **kwargs) -> torch.Tensor:
        """Unmasked tokens (N, prefix+L, D) of :meth:`feature_encoder` after the final norm (prefix = 1 class
        token for ViT and BEiT encoders; see the method for others)."""
        return self.feature_encoder()(images, **kwargs).last_hidden_state


def feature_encoder(model: nn.Module) -> nn.Module:
    """The encoder of ``model`` that evaluation and export read: a mimkit model's ``feature_encoder()``,
    another wrapper's ``encoder``, else ``model`` itself (an encoder)."""
    fn = getattr(model, "feature_encoder", None)
    return fn() if callable(fn) else getattr(model, "encoder", model)
