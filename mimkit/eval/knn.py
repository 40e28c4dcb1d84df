"""Weighted k-NN classification on frozen features (k=20, cosine, votes weighted by exp(sim/T)),
the protocol of InstDisc/DINO that MIM papers report."""
from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def knn_predict(train_feats, train_labels, test_feats, k: int = 20, temperature: float = 0.07,
                num_classes: int | None = None, chunk: int = 1024) -> torch.Tensor:
    """Class predictions for ``test_feats``: L2-normalised features, top-k cosine neighbours, each
    neighbour votes for its class with weight exp(sim / temperature)."""
    if len(train_feats) != len(train_labels):
        raise ValueError(f"{len(train_feats)} training features but {len(train_labels)} labels")
    if k < 1 or k > len(train_feats):
        raise ValueError(f"k must be in [1, {len(train_feats)}] (the number of training features), got {k}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    train_labels = torch.as_tensor(train_labels).long()
    num_classes = num_classes or int(train_labels.max()) + 1
    tr = F.normalize(train_feats.float(), dim=1)
    te = F.normalize(test_feats.float(), dim=1)
    preds = []
    for i in range(0, len(te), chunk):
        sim = te[i:i + chunk] @ tr.T
        top, idx = sim.topk(k, dim=1)
        votes = torch.zeros(len(top), num_classes)
        votes.scatter_add_(1, train_labels[idx], (top / temperature).exp())
        preds.append(votes.argmax(1))
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)


def knn_accuracy(train_feats, train_labels, test_feats, test_labels, k: int = 20, temperature: float = 0.07,
                 num_classes: int | None = None) -> float:
    """Top-1 accuracy in [0, 1] of :func:`knn_predict` on ``test_feats``."""
    pred = knn_predict(train_feats, train_labels, test_feats, k, temperature, num_classes)
    return float((pred == torch.as_tensor(test_labels).long()).float().mean())
