"""Linear probe: frozen features -> BatchNorm1d(affine=False) -> Linear, the MAE protocol.

The CPU path: features are extracted once (:func:`mimkit.eval.features.extract_features`, centre
crop, no augmentation) and the head is fitted for many epochs on the cached tensors, which costs
seconds instead of one encoder pass per epoch. The head is trained with mini-batches, so the
BatchNorm uses batch statistics while fitting and its running statistics at test time, exactly as
the head would inside the full model.

Optimisers (``optimizer=``):

* ``"lars"`` — MAE's choice: LARS (timm's :class:`~timm.optim.Lars`, trust coefficient 0.001, the
  layer-wise adaptation on the weight matrix only, as in MAE's ``util/lars.py``), momentum 0.9, no
  weight decay. MAE uses blr 0.1 at batch 16384, i.e. lr 6.4; LARS steps are relative to the weight
  norm, so the default here keeps that absolute lr at the default batch of 1024 (blr 1.6).
* ``"sgd"`` (default) — SGD with momentum 0.9, blr 0.4; with the BatchNorm in front the problem is
  well conditioned and this converges in a few tens of epochs on cached features.
* ``"adamw"`` — AdamW, for completeness.

All of them use a linear warm-up and a per-step half-cosine schedule. The reported accuracy is the
one after the last epoch (no model selection on the test set).
"""
from __future__ import annotations

import math
import time

import torch
from torch import nn

from ..schedules import warmup_cosine

OPTIMIZERS = ("sgd", "lars", "adamw")
DEFAULT_BLR = {"sgd": 0.4, "lars": 1.6, "adamw": 1e-3}


class LinearProbeHead(nn.Sequential):
    """BatchNorm1d without affine parameters (a parameter-free standardisation that the MAE
    protocol adds because MAE features are not normalised) followed by a linear classifier."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__(nn.BatchNorm1d(dim, affine=False, eps=1e-6), nn.Linear(dim, num_classes))
        nn.init.trunc_normal_(self[1].weight, std=0.01)
        nn.init.zeros_(self[1].bias)


def _optimizer(head: LinearProbeHead, name: str, lr: float, weight_decay: float):
    if name == "sgd":
        return torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    if name == "lars":
        from timm.optim import Lars

        lin = head[1]
        # MAE's LARS adapts only parameters with ndim > 1 and never decays biases
        return Lars([{"params": [lin.weight], "weight_decay": weight_decay, "always_adapt": True},
                     {"params": [lin.bias], "weight_decay": 0.0, "always_adapt": False}],
                    lr=lr, momentum=0.9, trust_coeff=0.001)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")


@torch.no_grad()
def predict(head: nn.Module, feats: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    head.eval()
    return torch.cat([head(feats[i:i + chunk].float()).argmax(1) for i in range(0, len(feats), chunk)])


def fit_linear_probe(train_feats, train_labels, test_feats=None, test_labels=None, *, num_classes=None,
                     epochs: int = 50, batch_size: int | None = None, optimizer: str = "sgd", blr: float | None = None,
                     lr: float | None = None, weight_decay: float = 0.0, warmup_epochs: float = 2.0, seed: int = 0,
                     progress: bool = True, device=None) -> tuple[LinearProbeHead, dict]:
    """Fit :class:`LinearProbeHead` on cached features. ``batch_size`` defaults to
    ``min(1024, max(32, N // 50))`` (1024 for 60k images, at least ~50 steps per epoch for small sets).
    ``lr`` is absolute; when None it is
    ``blr * batch_size / 256`` (``blr`` defaults per optimiser: sgd 0.4, lars 1.6, adamw 1e-3).
    Returns the head (in eval mode) and a dict with ``acc`` (test accuracy after the last epoch,
    when test features are given), ``train_acc``, ``final_loss`` and the settings used."""
    from tqdm.auto import tqdm

    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    if batch_size is None:
        batch_size = min(1024, max(32, len(train_feats) // 50))
    if epochs < 1 or batch_size < 2:
        raise ValueError(f"need epochs >= 1 and batch_size >= 2 (BatchNorm), got epochs={epochs}, "
                         f"batch_size={batch_size}")
    train_feats = torch.as_tensor(train_feats).float()
    train_labels = torch.as_tensor(train_labels).long()
    if train_feats.ndim != 2 or len(train_feats) != len(train_labels):
        raise ValueError(f"need features (N, D) and labels (N,), got {tuple(train_feats.shape)} and "
                         f"{tuple(train_labels.shape)}")
    n, dim = train_feats.shape
    num_classes = int(num_classes or int(train_labels.max()) + 1)
    device = torch.device(device or "cpu")
    batch_size = min(batch_size, n)
    if lr is None:
        lr = (blr if blr is not None else DEFAULT_BLR[optimizer]) * batch_size / 256
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        head = LinearProbeHead(dim, num_classes).to(device)
    opt = _optimizer(head, optimizer, lr, weight_decay)
    steps_per_epoch = n // batch_size  # drop the last partial batch (BatchNorm on a tiny batch is noisy)
    total, warmup = epochs * steps_per_epoch, int(round(warmup_epochs * steps_per_epoch))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, warmup, total, 0.0))
    x_all, y_all = train_feats.to(device), train_labels.to(device)
    loss_fn = nn.CrossEntropyLoss()
    t0 = time.time()
    bar = tqdm(range(epochs), desc="linear probe", disable=not progress, leave=False)
    loss = torch.tensor(math.nan)
    for _ in bar:
        head.train()
        perm = torch.randperm(n, generator=g).to(device)
        for i in range(steps_per_epoch):
            idx = perm[i * batch_size:(i + 1) * batch_size]
            loss = loss_fn(head(x_all[idx]), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"linear probe loss became {loss.item()}; lower the learning rate (lr={lr:g})")
    head.eval()
    info = {"optimizer": optimizer, "lr": lr, "epochs": epochs, "batch_size": batch_size,
            "weight_decay": weight_decay, "final_loss": float(loss.detach()), "fit_seconds": round(time.time() - t0, 2),
            "train_acc": float((predict(head, x_all).cpu() == train_labels).float().mean())}
    if test_feats is not None:
        pred = predict(head, torch.as_tensor(test_feats).float().to(device)).cpu()
        info["acc"] = float((pred == torch.as_tensor(test_labels).long()).float().mean())
    return head.cpu(), info


def linear_probe(model, train_dataset, test_dataset, pool: str = "cls", *, batch_size_features: int = 512,
                 progress: bool = True, device=None, num_workers: int = 0, **fit_kwargs) -> dict:
    """Extract features of ``model`` once on both datasets, fit the probe, return the results dict
    (``acc`` = test accuracy). ``fit_kwargs`` go to :func:`fit_linear_probe`."""
    from .features import extract_features

    t0 = time.time()
    ftr, ytr = extract_features(model, train_dataset, pool, batch_size_features, device, num_workers, progress,
                                "train features")
    fte, yte = extract_features(model, test_dataset, pool, batch_size_features, device, num_workers, progress,
                                "test features")
    t_feat = time.time() - t0
    _, info = fit_linear_probe(ftr, ytr, fte, yte, progress=progress, **fit_kwargs)
    return {**info, "pool": pool, "feature_seconds": round(t_feat, 2)}
