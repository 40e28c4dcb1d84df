"""Codebook usage and reconstruction quality of a tokenizer over a whole data set."""
from __future__ import annotations

from typing import Iterable

import torch

from .dvae import perplexity_from_counts


def _images(batch):
    if isinstance(batch, (tuple, list)):
        batch = batch[0]
    if isinstance(batch, dict):
        batch = batch.get("images", batch.get("pixel_values"))
    if not isinstance(batch, torch.Tensor) or batch.ndim != 4:
        raise ValueError("batches must be image tensors (N, C, H, W) or (images, labels) pairs")
    return batch


@torch.no_grad()
def codebook_stats(tokenizer, batches: Iterable, max_batches: int | None = None, device=None) -> dict:
    """Run ``tokenizer`` over ``batches`` (tensors or ``(images, labels)``) and report:

    * ``perplexity``: exp(entropy) of the code distribution pooled over every token of the data set
      (equals the vocabulary size for perfectly even use);
    * ``code_usage``: share of the vocabulary used at least once; ``codes_used``: how many;
    * ``psnr``: mean per-image PSNR (dB, pixel space) of the reconstruction from the hard codes, for
      tokenizers with a decoder (None otherwise); ``counts``: the per-code counts (a tensor).
    """
    was_training = tokenizer.training
    tokenizer.eval()
    device = device or next(tokenizer.parameters()).device
    counts = torch.zeros(tokenizer.vocab_size, dtype=torch.long)
    psnr_sum, n_images, n_tokens = 0.0, 0, 0
    has_decoder = hasattr(tokenizer, "decode_ids")
    try:
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            images = _images(batch).to(device)
            ids = tokenizer.encode_ids(images)
            counts += torch.bincount(ids.flatten().cpu(), minlength=tokenizer.vocab_size)
            n_tokens += ids.numel()
            if has_decoder:
                from .dvae import psnr

                rec = tokenizer.decode_ids(ids, (images.shape[-2] // tokenizer.downsample,
                                                 images.shape[-1] // tokenizer.downsample))
                psnr_sum += float(psnr(tokenizer.to_pixels(rec), tokenizer.to_pixels(images))) * images.shape[0]
            n_images += images.shape[0]
    finally:
        tokenizer.train(was_training)
    if n_images == 0:
        raise ValueError("no images to measure; the data set or the batch limit is empty")
    used = int((counts > 0).sum())
    return {
        "num_images": n_images,
        "num_tokens": n_tokens,
        "vocab_size": int(tokenizer.vocab_size),
        "perplexity": float(perplexity_from_counts(counts)),
        "codes_used": used,
        "code_usage": used / tokenizer.vocab_size,
        "psnr": psnr_sum / n_images if has_decoder else None,
        "counts": counts,
    }


def format_stats(stats: dict) -> str:
    lines = [f"images            {stats['num_images']} ({stats['num_tokens']} tokens)"]
    if stats.get("psnr") is not None:
        lines.append(f"PSNR              {stats['psnr']:.2f} dB")
    lines.append(f"perplexity        {stats['perplexity']:.1f} of {stats['vocab_size']}")
    lines.append(f"codebook usage    {stats['code_usage']:.1%} ({stats['codes_used']} of {stats['vocab_size']} codes used)")
    return "\n".join(lines)
