"""Teacher-feature targets (data2vec 2.0, I-JEPA): an exponential moving average of the student
encoder, and the features it gives on the whole, unmasked image.

* :class:`EMATeacher` holds a frozen copy of the student's encoder; ``update(student, decay)`` moves
  each of its tensors towards the student's (``t <- decay * t + (1 - decay) * s``, float32), which the
  engine triggers after every optimiser step through the method's ``after_optimizer_step``. The
  teacher is an ordinary submodule, so it is saved in every checkpoint and resumed exactly.
* :func:`linear_schedule` is the decay (momentum) schedule both references use: linear from ``start``
  to ``end`` over ``steps`` updates, then constant.
* :func:`ffn_outputs` runs timm ViT blocks and keeps each block's feed-forward output before the
  residual add (data2vec 2.0's targets; fairseq's blocks are post-LN, on timm's pre-LN blocks this is
  ``mlp(norm2(x))``).
* :func:`data2vec_targets` / :func:`ijepa_targets` turn teacher outputs into the two references' targets.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


def linear_schedule(step: int, start: float, end: float, steps: int) -> float:
    """``start`` -> ``end`` linearly over ``steps`` updates, then ``end``."""
    if steps <= 0 or step >= steps:
        return float(end)
    return float(start + (end - start) * step / steps)


class EMATeacher(nn.Module):
    """A frozen exponential moving average of ``encoder`` (a deep copy at construction).

    Args:
        encoder: the student encoder whose weights the teacher follows.
    """

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = copy.deepcopy(encoder)
        self.encoder.requires_grad_(False)
        self.encoder.eval()

    def train(self, mode: bool = True):
        return super().train(False)  # always in eval mode (no dropout, no drop path)

    @torch.no_grad()
    def update(self, student: nn.Module, decay: float) -> None:
        """``teacher <- decay * teacher + (1 - decay) * student`` for every parameter; buffers are copied."""
        if decay >= 1.0:
            return
        t_params = [p for p in self.encoder.parameters()]
        s_params = [p.detach() for p in student.parameters()]
        if len(t_params) != len(s_params):
            raise ValueError("the teacher and the student encoder have different parameters")
        torch._foreach_lerp_(t_params, [s.to(t.dtype) for s, t in zip(s_params, t_params)], 1.0 - decay)
        for tb, sb in zip(self.encoder.buffers(), student.buffers()):
            tb.copy_(sb)

    def forward(self, *args, **kwargs):
        return self.encoder(*args, **kwargs)


def ffn_outputs(encoder: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """Per block of a ViT encoder (timm blocks) on the unmasked ``images``: the feed-forward output
    before the residual add, (N, T, D) each, T including the class token when there is one."""
    x = encoder.embed(images)
    out = []
    for blk in encoder.blocks:
        x = x + blk.drop_path1(blk.ls1(blk.attn(blk.norm1(x))))
        t = blk.ls2(blk.mlp(blk.norm2(x)))
        out.append(t)
        x = x + blk.drop_path2(t)
    return out


def data2vec_targets(layers: list[torch.Tensor], top_k: int, prefix: int = 1) -> torch.Tensor:
    """data2vec 2.0's target: the top ``top_k`` blocks' outputs without the ``prefix`` (class) tokens, each
    instance-normalised over tokens per channel, averaged, then layer-normalised over channels (no
    affine): (N, L, D) in float32."""
    if not 1 <= top_k <= len(layers):
        raise ValueError(f"top_k_layers must be between 1 and the encoder depth {len(layers)}, got {top_k}")
    y = None
    for t in layers[-top_k:]:
        t = F.instance_norm(t[:, prefix:].float().transpose(1, 2)).transpose(1, 2)
        y = t if y is None else y + t
    y = y / top_k
    return F.layer_norm(y, y.shape[-1:])


def ijepa_targets(teacher_tokens: torch.Tensor) -> torch.Tensor:
    """I-JEPA's target: the teacher's final (layer-normed) tokens normalised once more, without affine."""
    return F.layer_norm(teacher_tokens.float(), teacher_tokens.shape[-1:])
