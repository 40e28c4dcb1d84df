"""Pictures: reconstruction grids and loss curves (PNG, matplotlib Agg)."""
from __future__ import annotations

from pathlib import Path

import torch


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def denormalize(images: torch.Tensor, mean, std) -> torch.Tensor:
    mean = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images * std + mean).clamp(0, 1)


def pixel_mask(mask: torch.Tensor, grid, patch: int) -> torch.Tensor:
    """(N, L) patch mask -> (N, 1, H, W) pixel mask."""
    m = mask.reshape(-1, grid[0], grid[1]).float()
    return m.repeat_interleave(patch, 1).repeat_interleave(patch, 2).unsqueeze(1)


@torch.no_grad()
def reconstruction_panels(model, images: torch.Tensor, noise=None, mask=None):
    """Returns (original, masked input, prediction, prediction with visible patches pasted back),
    each (N, C, H, W) in the model's input space. ``norm_pix_loss`` predictions are un-normalised
    with each true patch's own mean and variance (that is what ``model.reconstruct`` does)."""
    was_training = model.training
    model.eval()
    out = model(images, noise=noise, mask=mask)
    pred = model.reconstruct(images, noise=noise, mask=out.mask if noise is None and mask is None else mask)
    grid = model.grid(images)
    m = pixel_mask(out.mask, grid, model.patch_size)
    masked = images * (1 - m)
    pasted = images * (1 - m) + pred * m
    model.train(was_training)
    return images, masked, pred, pasted, m


def save_reconstruction_grid(model, images, path, mean, std, noise=None, mask=None, title: str | None = None):
    """Write a PNG with one row per image: original | masked | prediction | prediction + visible."""
    plt = _plt()
    orig, masked, pred, pasted, m = reconstruction_panels(model, images, noise, mask)
    cols = [denormalize(t.float().cpu(), mean, std) for t in (orig, masked, pred, pasted)]
    # hidden patches shown grey in the masked input
    cols[1] = cols[1] * (1 - m.cpu()) + 0.5 * m.cpu()
    names = ["original", "masked input", "prediction", "prediction + visible"]
    if getattr(model, "norm_pix_loss", False):
        names[2] = "prediction (un-normalised\nwith each patch's stats)"
    n = images.shape[0]
    fig, axes = plt.subplots(n, 4, figsize=(4 * 1.6, n * 1.6), squeeze=False)
    for r in range(n):
        for c in range(4):
            img = cols[c][r]
            ax = axes[r][c]
            if img.shape[0] == 1:
                ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(img.permute(1, 2, 0).numpy())
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(names[c], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def save_curve(xs, ys_by_name: dict, path, xlabel="step", ylabel="loss", title=None, logy=False):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, (x, y) in ys_by_name.items() if isinstance(next(iter(ys_by_name.values()), None), tuple) else \
            ((k, (xs, v)) for k, v in ys_by_name.items()):
        ax.plot(x, y, label=name)
    ax.set_xlabel(xlabel), ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
