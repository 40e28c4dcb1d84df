"""Start pretraining from an encoder trained elsewhere (``mimkit pretrain --init SPEC``, ``run.init``).

``SPEC`` is anything ``mimkit eval`` loads (:func:`mimkit.interop.spec.load_model_spec`): a mimkit run, model
directory, ``.safetensors`` or ``.ckpt`` (read with ``weights_only``), ``hf:DIR`` (a ``transformers``
model), ``timm:DIR`` or ``recipe:NAME``. Its evaluated encoder (a teacher where the method evaluates
one) is copied into the new model's student encoder, adapted where the two differ only in what an image
size, a patch size or a channel count changes:

* positions, as ``mimkit.load(img_size=...)`` resizes them (:func:`mimkit.checkpoint.resize_position_tensor`):
  learned ones resampled bicubically on the 2-D grid, fixed sin-cos ones the new model's own, BEiT's relative
  tables bilinearly;
* the patch embedding: resampled to another patch size (timm's ``resample_patch_embed``, FlexiViT's
  pseudo-inverse) and adapted to another channel count (timm's ``adapt_input_conv``: RGB summed to gray,
  gray repeated to RGB);
* tensors only one side has: the new model's mask token (a method that hides patches with a token, started
  from one that drops them) keeps its init; any other missing or extra tensor, or another width or depth,
  is an error naming the first few.

Every EMA teacher that follows the encoder (data2vec 2.0, I-JEPA, iBOT) starts as the same copy, so the
teacher and the student agree at step 0 as they do from scratch. A resumed run continues from its
checkpoint and does not read ``SPEC`` again.
"""
from __future__ import annotations

import torch

# tensors a target encoder may have that a source need not: the new method's own inits stand
OPTIONAL_KEYS = ("mask_token",)


def _grid(encoder) -> tuple[int, int]:
    g = getattr(encoder, "grid_size", None)
    return (int(g[0]), int(g[1])) if g is not None else None


def adapt_encoder_state(src_sd: dict, target: torch.nn.Module, src_grid, source: str) -> dict:
    """``src_sd`` (a source encoder's state dict) made loadable into ``target`` (a mimkit encoder): see the
    module docstring. Raises ValueError with one line naming the first mismatches."""
    from timm.layers import resample_patch_embed
    from timm.models import adapt_input_conv

    from ..checkpoint import resize_position_tensor

    own = target.state_dict()
    params = dict(target.named_parameters())
    missing = [k for k in own if k not in src_sd and not k.endswith(OPTIONAL_KEYS)]
    unexpected = [k for k in src_sd if k not in own and not k.endswith(OPTIONAL_KEYS)]
    if missing or unexpected:
        raise ValueError(f"--init {source}: its encoder is not this recipe's kind (missing {missing[:4]}, "
                         f"unexpected {unexpected[:4]}); start from an encoder of the same family "
                         f"({type(target).__name__})")
    out, bad = {}, []
    new_grid = _grid(target)
    for k, want in own.items():
        v = src_sd.get(k)
        if v is None or v.shape == want.shape:
            out[k] = want if v is None else v
            continue
        if k.endswith("patch_embed.proj.weight") and v.ndim == 4 and v.shape[0] == want.shape[0]:
            w = v if v.shape[-2:] == want.shape[-2:] else resample_patch_embed(v, list(want.shape[-2:]))
            out[k] = adapt_input_conv(want.shape[1], w) if w.shape[1] != want.shape[1] else w
        elif src_grid is not None and new_grid is not None:  # positions: the loader's own resizing
            p = params.get(k)
            r = resize_position_tensor(k, v, want, None if p is None else p.requires_grad, src_grid, new_grid)
            if r is not None:
                out[k] = r
        if k not in out or out[k].shape != want.shape:
            bad.append(k)
    if bad:
        shapes = ", ".join(f"{k} {tuple(src_sd[k].shape)} vs {tuple(own[k].shape)}" for k in bad[:3])
        raise ValueError(f"--init {source}: its encoder has other sizes than this recipe's ({shapes}); "
                         "pick a recipe of the same width and depth, or override model.embed_dim / model.depth")
    return {k: v.to(own[k].dtype) for k, v in out.items()}


@torch.no_grad()
def init_encoder(model: torch.nn.Module, spec: str, trust_checkpoint: bool = False) -> dict:
    """Copy the encoder of the model at ``spec`` into ``model.encoder`` and into every EMA teacher that
    follows it; returns {"source", "resized", "kept"} (tensors resampled, tensors the source lacked)."""
    from ..interop.spec import load_model_spec
    from ..teacher import EMATeacher

    try:
        src = load_model_spec(spec, trust_checkpoint=trust_checkpoint)
    except (FileNotFoundError, ValueError) as e:
        raise ValueError(f"--init {spec}: {e}") from None
    fn = getattr(src, "feature_encoder", None)
    src_enc = fn() if callable(fn) else getattr(src, "encoder", src)
    target = model.encoder
    src_sd = src_enc.state_dict()
    sd = adapt_encoder_state(src_sd, target, _grid(src_enc), str(spec))
    target.load_state_dict(sd)
    for m in model.modules():
        if isinstance(m, EMATeacher) and type(m.encoder) is type(target):
            m.encoder.load_state_dict(target.state_dict())
    return {"source": str(spec),
            "resized": sorted(k for k in sd if k in src_sd and src_sd[k].shape != sd[k].shape),
            "kept": sorted(k for k in sd if k not in src_sd)}
