"""Weights files of the tokenizers mimkit reads but does not train (the DALL-E encoder, BEiT's
DALLE-pytorch dVAE): a state dict from safetensors or from a PyTorch pickle read safely."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..files import UntrustedCheckpointError, read_safetensors, read_torch_checkpoint

__all__ = ["read_state_dict"]


def read_state_dict(path: Path, trust_checkpoint: bool = False) -> dict:
    """The tensors of a weights file: safetensors, or a PyTorch pickle read safely (an untrusted file
    is refused, see :func:`mimkit.files.read_torch_checkpoint`) holding a state dict, possibly
    under ``"state_dict"`` or ``"weights"`` (BEiT's ``pytorch_model.bin``)."""
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    try:
        obj = read_torch_checkpoint(path, trust_checkpoint=trust_checkpoint)
    except UntrustedCheckpointError:
        raise
    except ValueError as e:  # truncated or foreign files
        raise ValueError(
            f"{path} is not a plain state dict ({getattr(e, 'reason', e)}). If it is the released "
            "dall_e encoder.pkl (a pickled module), convert it once where the dall_e package is installed: "
            "torch.save(torch.load('encoder.pkl').state_dict(), 'dalle_encoder.pt')"
        ) from None
    if isinstance(obj, nn.Module):  # a trusted pickled module (e.g. dall_e's encoder.pkl)
        obj = obj.state_dict()
    for key in ("state_dict", "weights"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return obj
