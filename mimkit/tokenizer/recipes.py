"""Tokenizer builders and recipes: the discrete VAE BEiT learns to predict (trained by ``mimkit
tokenizer train``), the DALL-E encoder and BEiT's DALLE-pytorch dVAE (for ``mimkit.save``/``mimkit.load``
of an imported tokenizer). Registered when :mod:`mimkit.tokenizer` is imported (``import mimkit`` does)."""
from __future__ import annotations

from ..methods.beit import BEIT_TOKENIZER_OPTIONS
from ..registry import register_builder, register_options, register_recipe
from .dalle import DALLEEncoder
from .dalle_pytorch import DallePytorchDVAE
from .dvae import DiscreteVAE
from .loading import tokenizer_options

# the data pipeline's normalisation (mimkit.data's Fashion-MNIST / ImageNet statistics), so that
# PSNR is reported in pixel space and `mimkit tokenizer encode/stats` normalise files the same way
_FMNIST = dict(pixel_mean=[0.2860], pixel_std=[0.3530])
_IMAGENET = dict(pixel_mean=[0.485, 0.456, 0.406], pixel_std=[0.229, 0.224, 0.225])

# BEiT declares tokenizer_path / tokenizer_config; the tokenizer layer turns them into a built tokenizer
register_options("beit", BEIT_TOKENIZER_OPTIONS, tokenizer_options)

register_builder("dvae", DiscreteVAE)
register_builder("dalle_encoder", DALLEEncoder)
register_builder("dalle_pytorch_dvae", DallePytorchDVAE)

register_recipe(
    "dvae_tiny_28", DiscreteVAE,
    "BEiT tokenizer for 28x28 grayscale (Fashion-MNIST) on CPU: 512 codes on a 7x7 grid (patch 4)",
    img_size=28, in_chans=1, vocab_size=512, downsample=4, hidden_dim=32, num_res_blocks=1, code_dim=32,
    kl_weight=1e-3, usage_weight=0.5, temperature=1.0, temperature_min=1 / 16, anneal_fraction=0.8, **_FMNIST,
)
register_recipe(
    "dvae_base_224", DiscreteVAE,
    "BEiT tokenizer at 224 px: 8192 codes on a 14x14 grid (matches ViT-B/16)",
    img_size=224, in_chans=3, vocab_size=8192, downsample=16, hidden_dim=128, num_res_blocks=2, code_dim=256,
    kl_weight=1e-3, usage_weight=0.5, temperature=1.0, temperature_min=1 / 16, anneal_fraction=0.8, **_IMAGENET,
)
register_recipe(
    "dvae_base_112", DiscreteVAE,
    "BEiT tokenizer on the reference's 112 px second view: 8192 codes on a 14x14 grid (as DALL-E's)",
    img_size=112, in_chans=3, vocab_size=8192, downsample=8, hidden_dim=128, num_res_blocks=2, code_dim=256,
    kl_weight=1e-3, usage_weight=0.5, temperature=1.0, temperature_min=1 / 16, anneal_fraction=0.8, **_IMAGENET,
)
