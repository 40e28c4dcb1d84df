"""In-memory images (:class:`TensorImages`) and whole batches assembled by the dataset
(:class:`PreCollated`, :func:`collate`, :class:`BatchedSamples`)."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset


class TensorImages(Dataset):
    """In-memory images (N, H, W) or (N, C, H, W) (uint8, or float already transformed) with labels.

    ``transform`` is applied item by item; ``batch_transform`` (e.g. :class:`BatchAugment`) instead
    transforms whole batches as tensor ops, ``batch_transform(images[idx], seeds)``, with one seed per
    item. :meth:`get_batch` returns a whole batch at once (one gather, no Python call per image);
    mimkit's loaders use it (:class:`~mimkit.train.loader.SeededSamples`, :class:`BatchedSamples`)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform=None, batch_transform=None):
        if images.ndim == 3:
            images = images.unsqueeze(1)
        if transform is not None and batch_transform is not None:
            raise ValueError("give TensorImages a transform or a batch_transform, not both")
        self.images, self.labels = images, labels
        self.transform, self.batch_transform = transform, batch_transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        if self.batch_transform is not None:
            x, y = self.get_batch([i])
            return x[0], y[0]
        x = self.images[i]
        if self.transform is not None:
            x = self.transform(x)
        return x, self.labels[i]

    def get_batch(self, indices, seeds=None) -> "PreCollated":
        """(images, labels) of ``indices`` as two batched tensors. ``seeds`` (one per item) drive the
        random transform; when None they are drawn from torch's global generator."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        x, y = self.images[idx], self.labels[idx]
        if self.batch_transform is not None:
            if seeds is None:
                seeds = torch.randint(0, 2**62, (len(idx),))
            x = self.batch_transform(x, seeds)
        elif self.transform is not None:
            x = torch.stack([self.transform(xi) for xi in x])
        return PreCollated((x, y))

    def subset(self, rows) -> "TensorImages":
        """The same dataset restricted to ``rows`` (a view-free gather, keeps the batch path)."""
        idx = torch.as_tensor(list(rows), dtype=torch.long)
        return TensorImages(self.images[idx], self.labels[idx], self.transform, self.batch_transform)


class PreCollated(tuple):
    """A batch that a dataset's ``get_batch`` already assembled; :func:`collate` passes it through."""


def collate(batch, inner=None):
    """``collate_fn`` of mimkit's loaders: a :class:`PreCollated` batch as it is, else ``inner``
    (default: torch's ``default_collate``) on the list of items."""
    if isinstance(batch, PreCollated):
        return tuple(batch)
    from torch.utils.data import default_collate

    return (inner or default_collate)(batch)


class BatchedSamples(Dataset):
    """Wraps a dataset with ``get_batch`` so that a plain ``DataLoader(..., collate_fn=collate)``
    fetches each batch with one call (torch's ``__getitems__`` protocol); item access passes through."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        return self.dataset[i]

    def __getitems__(self, indices):
        return self.dataset.get_batch(indices)
