"""Frozen-feature extraction shared by k-NN and the linear probe."""
from __future__ import annotations

import math

import torch
from torch.utils.data import DataLoader

from ..base import feature_encoder as _encoder_of

POOLS = ("cls", "mean")  # one token pooling (also the fine-tuned classifier's)
# frozen features may also be "both" (cls and mean, concatenated), "last4" (each of the last 4
# blocks' outputs, layer-normalised without affine, patch tokens averaged, concatenated: intermediate
# layers hold more of what a linear probe wants than a reconstruction-shaped last layer) and "tokens"
# (the map of patch tokens itself, layer-normalised without affine, average-pooled to at most
# TOKEN_GRID x TOKEN_GRID cells and TOKEN_MAX_DIMS numbers, flattened: where a thing is in the image,
# which a mean throws away; on Fashion-MNIST's 7x7 grid it is every token, 6,272 numbers for a
# 128-wide encoder; a ViT-B/16 at 224 px gives 3x3 cells of 768)
FROZEN_POOLS = (*POOLS, "both", "last4", "tokens")
LAST_BLOCKS = 4
TOKEN_GRID, TOKEN_MAX_DIMS = 7, 8192


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
    if how == "tokens" and _token_grid(model) is None:
        raise ValueError(f"pool 'tokens' needs the encoder's grid of patches; {type(_encoder_of(model)).__name__} "
                         "does not give one; use pool 'mean'")


def _token_grid(model):
    """The encoder's ``grid(images)`` when its tokens are one per patch (ViT, BEiT), else None (Swin: its
    last stage is a coarser grid)."""
    enc = _encoder_of(model)
    ok = getattr(enc, "grid_size", None) is not None and getattr(enc, "window_size", None) is None
    return enc.grid if ok and callable(getattr(enc, "grid", None)) else None


def token_map(tokens: torch.Tensor, grid, prefix: int, cells: int | None = None) -> torch.Tensor:
    """(N, prefix + h*w, D) tokens -> (N, D * min(h, cells) * min(w, cells)): the patch tokens, each
    layer-normalised without affine, average-pooled to at most ``cells`` x ``cells`` and flattened
    (default: ``TOKEN_GRID``, fewer where D * cells^2 would pass ``TOKEN_MAX_DIMS``)."""
    h, w = grid
    if cells is None:
        cells = max(1, min(TOKEN_GRID, math.isqrt(TOKEN_MAX_DIMS // tokens.shape[-1])))
    t = torch.nn.functional.layer_norm(tokens.float(), tokens.shape[-1:])[:, prefix:]
    t = t.reshape(len(t), h, w, -1).permute(0, 3, 1, 2)
    if h > cells or w > cells:
        t = torch.nn.functional.adaptive_avg_pool2d(t, (min(h, cells), min(w, cells)))
    return t.flatten(1)


def _uniform_blocks(model):
    """The encoder's blocks when they all keep the token sequence (ViT / BEiT ``blocks``), else None."""
    blocks = getattr(_encoder_of(model), "blocks", None)
    return blocks if isinstance(blocks, torch.nn.ModuleList) and len(blocks) else None


def frozen_pools(model) -> tuple[str, ...]:
    """The frozen-feature poolings ``model`` supports, cheapest first."""
    cls, blocks, grid = has_cls_token(model), _uniform_blocks(model) is not None, _token_grid(model) is not None
    return tuple(p for p in FROZEN_POOLS if (cls or p not in ("cls", "both")) and (blocks or p != "last4")
                 and (grid or p != "tokens"))


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
                    elif n == "tokens":
                        f = token_map(tok, _token_grid(model)(part), prefix)
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
