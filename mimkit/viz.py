"""Pictures: reconstruction grids, attention maps and curves (PNG, matplotlib Agg)."""
from __future__ import annotations

from pathlib import Path

import torch

from .ops import pixel_mask


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.fill(line, max(30, width)) for line in str(text).splitlines())


def denormalize(images: torch.Tensor, mean, std) -> torch.Tensor:
    mean = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images * std + mean).clamp(0, 1)


@torch.no_grad()
def reconstruction_panels(model, images: torch.Tensor, noise=None, mask=None):
    """Returns (original, masked input, prediction, prediction with visible patches pasted back),
    each (N, C, H, W) in the model's input space. ``norm_pix_loss`` predictions are un-normalised
    with each true patch's own mean and variance (that is what ``model.reconstruct`` does)."""
    was_training = model.training
    model.eval()
    out = model(images, noise=noise, mask=mask)
    # reconstruct with the mask the forward actually used (MAE may hide a few extra patches when rows
    # of a block mask hide different counts; re-drawing would pick other ones)
    pred = model.reconstruct(images, mask=out.mask)
    grid = model.grid(images)
    m = pixel_mask(out.mask, grid, model.patch_size)
    masked = images * (1 - m)
    pasted = images * (1 - m) + pred * m
    model.train(was_training)
    return images, masked, pred, pasted, m


def save_reconstruction_grid(model, images, path, mean, std, noise=None, mask=None, title: str | None = None):
    """Write a PNG with one row per image: original | masked | prediction | prediction + visible."""
    plt = pyplot()
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
        fig.suptitle(_wrap(title, 11 * 4), fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def save_curve(xs, ys_by_name: dict, path, xlabel="step", ylabel="loss", title=None, logy=False, marker=None,
               hlines: dict | None = None, markers: dict | None = None):
    """Line plot of several series: ``ys_by_name`` maps a name to ``(x, y)`` or to ``y`` (then ``xs``
    is shared). ``hlines`` maps a label to a constant drawn as a dashed reference line; ``markers``
    gives some series their own marker (e.g. sparse per-epoch points beside a per-step curve)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, (x, y) in ys_by_name.items() if isinstance(next(iter(ys_by_name.values()), None), tuple) else \
            ((k, (xs, v)) for k, v in ys_by_name.items()):
        ax.plot(x, y, label=name, marker=(markers or {}).get(name, marker))
    for name, v in (hlines or {}).items():
        ax.axhline(v, linestyle="--", linewidth=1, color="grey")
        ax.annotate(name, (ax.get_xlim()[0], v), fontsize=7, color="grey", va="bottom")
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


def save_panels(series: dict, path, xlabel="step", title=None, hlines: dict | None = None):
    """One small line plot per series (``name -> (x, y)``), so metrics of different scales (an
    accuracy in [0, 1] beside images/s) each keep a readable axis. ``hlines`` maps a series name to
    ``{label: value}`` dashed reference lines drawn in that panel."""
    plt = pyplot()
    names = list(series)
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    for ax, name in zip(axes.flat, names):
        x, y = series[name]
        ax.plot(x, y)
        for label, v in ((hlines or {}).get(name) or {}).items():
            ax.axhline(v, linestyle="--", linewidth=1, color="grey")
            ax.annotate(label, (ax.get_xlim()[0], v), fontsize=7, color="grey", va="bottom")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def _show(ax, img: torch.Tensor) -> None:
    """(C, H, W) in [0, 1] -> axis image (grey for one channel)."""
    if img.shape[0] == 1:
        ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(img.permute(1, 2, 0).numpy())
    ax.set_xticks([]), ax.set_yticks([])


@torch.no_grad()
def attention_maps(model, images: torch.Tensor, block: int = -1) -> torch.Tensor:
    """Attention of the cls token to every patch in one block (default: the last), (N, heads, h, w).

    Uses ``model.encoder(images, output_attentions=True)`` on the full, unmasked image. Raises a
    clear error for encoders without a cls token or without global attention (Swin)."""
    enc = getattr(model, "encoder", model)
    if getattr(enc, "cls_token", None) is None:
        raise ValueError(f"{type(enc).__name__} has no cls token (Swin attends within local windows), so there is "
                         "no cls-to-patch attention map; attention maps need a ViT or BEiT encoder")
    was_training = enc.training
    enc.eval()
    try:
        out = enc(images, output_attentions=True)
    finally:
        enc.train(was_training)
    if not out.attentions:
        raise ValueError(f"{type(enc).__name__} returned no attention weights")
    att = out.attentions[block]  # (N, heads, 1+L, 1+L)
    gh, gw = images.shape[-2] // enc.patch_size, images.shape[-1] // enc.patch_size
    if att.shape[-1] != 1 + gh * gw:
        raise ValueError(f"attention over {att.shape[-1]} tokens does not match 1 + {gh}x{gw} patches")
    return att[:, :, 0, 1:].reshape(att.shape[0], att.shape[1], gh, gw).float()


def save_attention_grid(model, images, path, mean, std, block: int = -1, title: str | None = None,
                        alpha: float = 0.55, cmap: str = "inferno"):
    """Write a PNG with one row per image: the image, then the cls-to-patch attention of ``block``
    averaged over heads, then each head, overlaid on the image (each map scaled to its own max).
    Returns the path; the figure has ``N x (2 + heads)`` panels."""
    import torch.nn.functional as F

    plt = pyplot()
    maps = attention_maps(model, images, block).cpu()  # N, heads, h, w
    n, heads = maps.shape[:2]
    full = torch.cat([maps.mean(1, keepdim=True), maps], 1)  # N, 1+heads, h, w
    up = F.interpolate(full, size=images.shape[-2:], mode="nearest")
    up = up / up.flatten(2).amax(-1).clamp_min(1e-12)[..., None, None]
    imgs = denormalize(images.float().cpu(), mean, std)
    gray = imgs.mean(1, keepdim=True) if imgs.shape[1] > 1 else imgs
    names = ["image", "mean of heads"] + [f"head {h + 1}" for h in range(heads)]
    cols = len(names)
    fig, axes = plt.subplots(n, cols, figsize=(cols * 1.6, n * 1.6), squeeze=False)
    for r in range(n):
        for c in range(cols):
            ax = axes[r][c]
            if c == 0:
                _show(ax, imgs[r])
            else:
                ax.imshow(gray[r, 0].numpy(), cmap="gray", vmin=0, vmax=1)
                ax.imshow(up[r, c - 1].numpy(), cmap=cmap, alpha=alpha, vmin=0, vmax=1)
                ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(names[c], fontsize=8)
    depth = len(getattr(getattr(model, "encoder", model), "blocks", [])) or None
    blk = (depth + block if block < 0 else block) + 1 if depth else block
    fig.suptitle(_wrap(title or f"cls-token attention to patches, block {blk}" + (f" of {depth}" if depth else ""),
                       11 * cols), fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
