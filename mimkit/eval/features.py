"""Frozen-feature extraction shared by k-NN and the linear probe."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from ..base import feature_encoder as _encoder_of

POOLS = ("cls", "mean")  # one token pooling (also the fine-tuned classifier's)
# frozen features may also be "both" (cls and mean, concatenated) and "last4" (each of the last 4
# blocks' outputs, layer-normalised without affine, patch tokens averaged, concatenated: intermediate
# layers hold more of what a linear probe wants than a reconstruction-shaped last layer)
FROZEN_POOLS = (*POOLS, "both", "last4")
LAST_BLOCKS = 4


def has_cls_token(model) -> bool:
    """Whether the encoder's token sequence starts with a class token (ViT, BEiT: yes; Swin: no)."""
    return getattr(_encoder_of(model), "cls_token", None) is not None


def check_pool(model, how: str, frozen: bool = False) -> None:
    """Clear error for a pooling the model cannot do (e.g. ``cls`` on a Swin encoder); ``frozen``
    admits the frozen-feature poolings (``both``, ``last4``) too."""
    allowed = FROZEN_POOLS if frozen else POOLS
    if how not in allowed:
        raise ValueError(f"pool must be one of {allowed}, got {how!r}")
    if how in ("cls", "both") and not has_cls_token(model):
        raise ValueError(f"{type(_encoder_of(model)).__name__} has no cls token (Swin attends within windows and "
                         f"outputs only patch tokens); use pool 'mean' (--pool mean), not {how!r}")
    if how == "last4" and not _uniform_blocks(model):
        raise ValueError(f"pool 'last4' needs a plain stack of transformer blocks (ViT, BEiT); "
                         f"{type(_encoder_of(model)).__name__} has none; use pool 'mean'")


def _uniform_blocks(model):
    """The encoder's blocks when they all keep the token sequence (ViT / BEiT ``blocks``), else None."""
    blocks = getattr(_encoder_of(model), "blocks", None)
    return blocks if isinstance(blocks, torch.nn.ModuleList) and len(blocks) else None


def frozen_pools(model) -> tuple[str, ...]:
    """The frozen-feature poolings ``model`` supports, cheapest first."""
    cls, blocks = has_cls_token(model), _uniform_blocks(model) is not None
    return tuple(p for p in FROZEN_POOLS if (cls or p not in ("cls", "both")) and (blocks or p != "last4"))


def pool(tokens: torch.Tensor, how: str = "mean", cls_token: bool = True) -> torch.Tensor:
    """(N, T, D) encoder tokens -> (N, D): the cls token or the mean of the patch tokens.
    ``cls_token`` says whether ``tokens[:, 0]`` is a class token (False for Swin: every token is a
    patch token, and 'cls' is an error)."""
    if how == "cls":
        if not cls_token:
            raise ValueError("this encoder has no cls token (e.g. Swin); use pool 'mean'")
        return tokens[:, 0]
    if how == "mean":
        return tokens[:, 1:].mean(1) if cls_token else tokens.mean(1)
    raise ValueError(f"pool must be 'cls' or 'mean', got {how!r}")


CPU_CHUNK = 128  # CPU: images per encoder call; activations stay in cache (measured in docs/speed.md)


def batches(dataset, batch_size: int, num_workers: int = 0):
    """(images, labels) batches of ``dataset`` in order: in-memory ``TensorImages`` without a per-item
    transform are sliced directly (one gather per batch, no per-image Python); anything else goes
    through a ``DataLoader``."""
    from ..data import TensorImages

    if isinstance(dataset, TensorImages) and dataset.transform is None and num_workers == 0:
        for i in range(0, len(dataset), batch_size):
            yield dataset.get_batch(range(i, min(i + batch_size, len(dataset))))
        return
    yield from DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)


@torch.no_grad()
def extract_features(model, dataset, pool_how: str | tuple = "mean", batch_size: int = 512, device=None, num_workers: int = 0,
                     progress: bool = True, desc: str = "features"):
    """Run ``model.encode`` (unmasked) over ``dataset``; returns (features (N, D) float32, labels (N,)).
    With a tuple of pool names, features is a dict {name: (N, D)} from one pass. On the CPU each batch
    is encoded ``CPU_CHUNK`` images at a time (the same features, faster)."""
    import math

    from tqdm.auto import tqdm

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    names = (pool_how,) if isinstance(pool_how, str) else tuple(pool_how)
    for n in names:
        check_pool(model, n, frozen=True)
    cls = has_cls_token(model)
    was_training = model.training
    model = model.to(device).eval()
    chunk = CPU_CHUNK if device.type == "cpu" else batch_size
    feats, labels = {n: [] for n in names}, []
    taps: list[torch.Tensor] = []  # the last blocks' outputs of the current chunk ("last4")
    hooks = []
    if "last4" in names:
        for blk in list(_uniform_blocks(model))[-LAST_BLOCKS:]:
            hooks.append(blk.register_forward_hook(lambda _m, _i, out: taps.append(out)))
    prefix = int(getattr(_encoder_of(model), "num_prefix_tokens", 1 if cls else 0))
    bar = tqdm(batches(dataset, batch_size, num_workers), desc=desc, disable=not progress, leave=False,
               total=math.ceil(len(dataset) / batch_size))
    try:
        for x, y in bar:
            for part in torch.split(x, chunk):
                taps.clear()
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                    tok = model.encode(part.to(device, non_blocking=True))
                for n in names:
                    if n == "both":
                        f = torch.cat([pool(tok, "cls", cls), pool(tok, "mean", cls)], dim=1)
                    elif n == "last4":
                        f = torch.cat([torch.nn.functional.layer_norm(t.float(), t.shape[-1:])[:, prefix:].mean(1)
                                       for t in taps], dim=1)
                    else:
                        f = pool(tok, n, cls)
                    feats[n].append(f.float().cpu())
            labels.append(torch.as_tensor(y))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    out = {n: torch.cat(f) for n, f in feats.items()}
    return (out[pool_how] if isinstance(pool_how, str) else out), torch.cat(labels)
