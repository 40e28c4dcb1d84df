"""mimkit's data layer: every dataset a ``data:`` config names, and the helpers they share.

Modules, each depending only on the ones listed before it (``tests/test_architecture.py`` and the
``import-linter`` contracts in ``pyproject.toml`` keep it so):

* helpers: :mod:`~mimkit.data.seeds` (``mix_seed``), :mod:`~mimkit.data.images` (``load_image``,
  ``SafeImageFolder``, ``bytes_tensor``), :mod:`~mimkit.data.tensors` (``TensorImages``, pre-collated
  batches), :mod:`~mimkit.data.transforms` (the MAE augmentation, per image and per batch);
* readers: :mod:`~mimkit.data.fashion_mnist`, :mod:`~mimkit.data.shards` (WebDataset tar shards),
  :mod:`~mimkit.data.hf_dataset` (Hugging Face datasets), :mod:`~mimkit.data.device` (decoding and
  augmentation on the training device);
* :mod:`~mimkit.data.build`: the one place that turns a ``data:`` config into a dataset.

Every name below is importable as ``from mimkit.data import ...``, as before the package existed."""

from __future__ import annotations

from .build import (
    DATASET_NAMES,
    build_dataset,
    build_val_dataset,
    default_stats,
    held_out_rows,
    limit_rows,
    source_dataset,
    take_rows,
)
from .device import DeviceAugment, EncodedImageFolder, collate_encoded
from .fashion_mnist import (
    FMNIST_CLASSES,
    FMNIST_DIRS,
    FMNIST_FILES,
    FMNIST_MEAN,
    FMNIST_STD,
    HOW_TO_GET_FMNIST,
    load_fashion_mnist,
    locate_fashion_mnist,
)
from .hf_dataset import HFImages
from .images import SafeImageFolder, bytes_tensor, error_text, load_image
from .seeds import mix_seed
from .shards import ShardImages, ShardWindowOrder, reindex, write_shards
from .tensors import BatchedSamples, PreCollated, TensorImages, collate
from .transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    BatchAugment,
    eval_transform,
    pretrain_transform,
    random_resized_crop_boxes,
    seeded_uniforms,
)

__all__ = [
    "DATASET_NAMES",
    "FMNIST_CLASSES",
    "FMNIST_DIRS",
    "FMNIST_FILES",
    "FMNIST_MEAN",
    "FMNIST_STD",
    "HOW_TO_GET_FMNIST",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BatchAugment",
    "BatchedSamples",
    "DeviceAugment",
    "EncodedImageFolder",
    "HFImages",
    "PreCollated",
    "SafeImageFolder",
    "ShardImages",
    "ShardWindowOrder",
    "TensorImages",
    "build_dataset",
    "build_val_dataset",
    "bytes_tensor",
    "collate",
    "collate_encoded",
    "default_stats",
    "error_text",
    "eval_transform",
    "held_out_rows",
    "limit_rows",
    "load_fashion_mnist",
    "load_image",
    "locate_fashion_mnist",
    "mix_seed",
    "pretrain_transform",
    "random_resized_crop_boxes",
    "reindex",
    "seeded_uniforms",
    "source_dataset",
    "take_rows",
    "write_shards",
]
