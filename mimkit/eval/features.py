"""Frozen-feature extraction shared by k-NN and the linear probe."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader


def pool(tokens: torch.Tensor, how: str = "mean") -> torch.Tensor:
    """(N, 1+L, D) encoder tokens -> (N, D): the cls token or the mean of the patch tokens."""
    if how == "cls":
        return tokens[:, 0]
    if how == "mean":
        return tokens[:, 1:].mean(1)
    raise ValueError(f"pool must be 'cls' or 'mean', got {how!r}")


@torch.no_grad()
def extract_features(model, dataset, pool_how: str | tuple = "mean", batch_size: int = 512, device=None, num_workers: int = 0,
                     progress: bool = True, desc: str = "features"):
    """Run ``model.encode`` (unmasked) over ``dataset``; returns (features (N, D) float32, labels (N,)).
    With a tuple of pool names, features is a dict {name: (N, D)} from one pass."""
    from tqdm.auto import tqdm

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = model.to(device).eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    names = (pool_how,) if isinstance(pool_how, str) else tuple(pool_how)
    feats, labels = {n: [] for n in names}, []
    for x, y in tqdm(loader, desc=desc, disable=not progress, leave=False):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            tok = model.encode(x.to(device, non_blocking=True))
        for n in names:
            feats[n].append(pool(tok, n).float().cpu())
        labels.append(torch.as_tensor(y))
    out = {n: torch.cat(f) for n, f in feats.items()}
    return (out[pool_how] if isinstance(pool_how, str) else out), torch.cat(labels)
