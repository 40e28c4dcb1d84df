"""Visual tokenizers for BEiT: a discrete VAE mimkit trains itself, the DALL-E dVAE encoder and BEiT's
DALLE-pytorch dVAE loaded from weights files, codebook statistics and pictures.

Every tokenizer offers ``encode_ids(images) -> (N, h*w)`` long ids and ``vocab_size``, ``grid_size``,
``img_size``, ``in_chans``. Importing this package registers the tokenizer builders and recipes
(:mod:`mimkit.tokenizer.recipes`), as importing :mod:`mimkit.methods` registers the methods."""
from __future__ import annotations

from . import recipes  # noqa: F401  (registers dvae, dalle_encoder, dalle_pytorch_dvae and their recipes)
from .dalle import DALLEEncoder, load_dalle_encoder, map_pixels, unmap_pixels
from .dalle_pytorch import DallePytorchDVAE, load_dalle_pytorch_dvae
from .dvae import DiscreteVAE, perplexity_from_counts, psnr
from .loading import is_tokenizer, load_tokenizer, tokenizer_options
from .stats import codebook_stats, format_stats

__all__ = ["DALLEEncoder", "DallePytorchDVAE", "DiscreteVAE", "codebook_stats", "format_stats", "is_tokenizer",
           "load_dalle_encoder", "load_dalle_pytorch_dvae", "load_tokenizer", "map_pixels",
           "perplexity_from_counts", "psnr", "tokenizer_options", "unmap_pixels"]
