"""A resumable, rank-aware training data order with per-sample seeded augmentation.

* ``ResumableSampler`` shuffles the whole dataset once per epoch with ``seed + epoch`` (the same
  permutation on every rank and for every world size) and hands rank ``r`` of ``W`` the items
  ``perm[r::W]``. So at batch ``k`` the ``W`` ranks together hold exactly ``perm[G*k : G*(k+1)]``
  (``G = batch_size * W``), the global batch a single process with batch ``G`` trains on.
* Every index travels with its own seed, derived from ``(seed, epoch, index)``; ``SeededSamples``
  applies the dataset's transform under that seed. Augmentations therefore do not depend on worker
  processes, ranks, or when the run was interrupted.
* ``ResumableLoader`` counts the batches it handed out and has ``state_dict`` / ``load_state_dict``;
  Lightning stores that state in every checkpoint (``loops.fit_loop.state_dict.combined_loader``)
  and restores it on resume, so a run resumed mid-epoch continues with the next unseen batch. The
  position is kept in global samples, so a run can even resume on another number of processes as
  long as the global batch ``batch_size * world_size`` stays the same.
"""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..data.seeds import mix_seed  # noqa: F401  (re-exported: mimkit.train.loader.mix_seed)


class SeededSamples(Dataset):
    """Wraps a map-style dataset; ``ds[(index, seed)]`` returns ``dataset[index]`` computed with the
    global torch RNG seeded by ``seed`` (then restored), so random transforms are reproducible per
    sample. A plain integer index is passed through unseeded."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        if isinstance(key, tuple):
            index, seed = key
            gen = torch.default_generator  # CPU transforms draw from it; torch.manual_seed would cost
            state = gen.get_state()        # ~100 us per call (it also seeds every accelerator)
            gen.manual_seed(seed)
            try:
                return self.dataset[index]
            finally:
                gen.set_state(state)
        return self.dataset[key]

    def __getitems__(self, keys):
        """A whole batch at once when the dataset assembles batches itself (``get_batch``, e.g. an
        in-memory ``TensorImages`` with a batch augmentation, seeded per item); else item by item."""
        get_batch = getattr(self.dataset, "get_batch", None)
        per_item = getattr(self.dataset, "transform", None) is not None  # seeded item by item, below
        if get_batch is None or per_item or not all(isinstance(k, tuple) for k in keys):
            return [self[k] for k in keys]
        return get_batch([k[0] for k in keys], torch.tensor([k[1] for k in keys], dtype=torch.int64))


class ResumableSampler(Sampler):
    """Per-epoch shuffle shared by all ranks, rank ``r`` takes every ``W``-th item; the epoch ends
    after ``num_samples // (batch_size * W)`` full global batches (the rest is dropped, as with
    ``drop_last=True``). Yields ``(index, sample_seed)``. ``order_fn(seed, epoch, num_samples)``, when
    given, replaces the uniform shuffle (e.g. ``mimkit.data.shards.ShardWindowOrder``: shuffled within
    windows of a few shards); it must be a pure function of its arguments, like the shuffle."""

    def __init__(self, num_samples: int, batch_size: int, seed: int = 0, shuffle: bool = True,
                 rank: int = 0, world_size: int = 1, order_fn=None):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.num_samples, self.batch_size, self.seed, self.shuffle = int(num_samples), int(batch_size), int(seed), shuffle
        self.rank, self.world_size = int(rank), int(world_size)
        self.order_fn = order_fn
        self.global_batch = self.batch_size * self.world_size
        self.num_batches = self.num_samples // self.global_batch
        if self.num_batches == 0:
            raise ValueError(f"the dataset has {num_samples} images, fewer than one global batch "
                             f"(data.batch_size={batch_size} x {world_size} processes = {self.global_batch}); "
                             "lower the batch size or add images")
        self.epoch = 0
        self.start = 0  # global samples of this epoch already consumed (set when resuming)

    def set_epoch(self, epoch: int) -> None:
        if int(epoch) != self.epoch:
            self.epoch, self.start = int(epoch), 0

    def order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.num_samples)
        if self.order_fn is not None:
            return self.order_fn(self.seed, epoch, self.num_samples)
        g = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
        return torch.randperm(self.num_samples, generator=g)

    def __len__(self) -> int:  # per rank, a full epoch (Lightning's batch counters include resumed batches)
        return self.num_batches * self.batch_size

    def __iter__(self):
        epoch, start = self.epoch, self.start
        used = self.num_batches * self.global_batch
        perm = self.order(epoch)[start:used].tolist()
        for i in perm[self.rank::self.world_size]:
            yield i, mix_seed(self.seed, epoch, i)


class ResumableLoader(DataLoader):
    """DataLoader over a ``ResumableSampler`` that Lightning checkpoints and restores
    (``state_dict`` / ``load_state_dict``)."""

    def __init__(self, dataset, sampler: ResumableSampler, **kwargs):
        from functools import partial

        from ..data.tensors import collate

        kwargs["collate_fn"] = partial(collate, inner=kwargs.get("collate_fn"))  # batches from get_batch pass as they are
        super().__init__(SeededSamples(dataset), batch_size=sampler.batch_size, sampler=sampler,
                         drop_last=True, **kwargs)
        self._yielded = 0

    def __iter__(self):
        inner = super().__iter__()
        self._yielded = 0

        def gen():
            for batch in inner:
                self._yielded += 1
                yield batch

        return gen()

    def state_dict(self) -> dict:
        s = self.sampler
        return {"epoch": s.epoch, "position": s.start + self._yielded * s.global_batch, "seed": s.seed,
                "num_samples": s.num_samples, "global_batch": s.global_batch}

    def load_state_dict(self, state: dict) -> None:
        s = self.sampler
        if state.get("num_samples") != s.num_samples:
            raise ValueError(f"the checkpoint was trained on {state.get('num_samples')} images but the dataset now "
                             f"has {s.num_samples}; resume with the same data (data.root / data.urls / data.path, "
                             "data.limit, data.val_fraction)")
        if state.get("global_batch") != s.global_batch:
            raise ValueError(f"the checkpoint used a global batch of {state.get('global_batch')} "
                             f"(data.batch_size x processes) but this run uses {s.global_batch}; "
                             "keep data.batch_size x devices x num_nodes unchanged to resume exactly")
        s.seed = int(state["seed"])
        epoch, position = int(state["epoch"]), int(state["position"])
        if position >= s.num_batches * s.global_batch:  # saved at the end of an epoch
            epoch, position = epoch + 1, 0
        s.epoch, s.start = epoch, position
        self._yielded = 0
