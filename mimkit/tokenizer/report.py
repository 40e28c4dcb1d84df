"""Pictures of what a tokenizer keeps: originals, reconstructions from the hard codes, token maps."""
from __future__ import annotations

from pathlib import Path

import torch


@torch.no_grad()
def save_reconstructions(tokenizer, images: torch.Tensor, path, max_images: int = 8, title: str | None = None) -> Path:
    """Write a PNG with one column per image: original, reconstruction from the hard codes, and the
    token-id map (coloured by id). Returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..files import atomic_write
    from .dvae import psnr

    tokenizer.eval()
    images = images[:max_images].to(next(tokenizer.parameters()).device)
    ids = tokenizer.encode_ids(images)
    grid = (images.shape[-2] // tokenizer.downsample, images.shape[-1] // tokenizer.downsample)
    has_decoder = hasattr(tokenizer, "decode_ids")
    to_pix = tokenizer.to_pixels if hasattr(tokenizer, "to_pixels") else (lambda x: x.clamp(0, 1))
    orig = to_pix(images.float()).cpu()
    rec = to_pix(tokenizer.decode_ids(ids, grid).float()).cpu() if has_decoder else None
    rows = 3 if has_decoder else 2
    n = images.shape[0]
    fig, axes = plt.subplots(rows, n, figsize=(1.6 * n, 1.7 * rows), squeeze=False)

    def show(ax, img):
        img = img.permute(1, 2, 0).numpy()
        ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None,
                  vmin=0, vmax=1)

    for j in range(n):
        show(axes[0, j], orig[j])
        if has_decoder:
            show(axes[1, j], rec[j])
            axes[1, j].set_title(f"{float(psnr(rec[j:j + 1], orig[j:j + 1])):.1f} dB", fontsize=7)
        axes[rows - 1, j].imshow(ids[j].reshape(grid).cpu().numpy(), cmap="tab20", interpolation="nearest")
    labels = ["original", "reconstruction", "token ids"] if has_decoder else ["original", "token ids"]
    for i, lab in enumerate(labels):
        axes[i, 0].set_ylabel(lab, fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title or f"tokenizer: {tokenizer.vocab_size} codes, {grid[0]}x{grid[1]} tokens", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    atomic_write(path, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)
    return path
