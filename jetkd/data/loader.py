"""``JetBatch`` and the loader that cuts the cache into seeded, shardable, resumable mini-batches."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from jetkd.data.cache import JetCache


@dataclass
class JetBatch:
    """A padded mini-batch of jets, what every model takes (``model(batch.p4, batch.mask)``).

    p4:    (B, N, 4) float32 ``[E, px, py, pz]`` in GeV, pT-ordered, zero where ``mask`` is False
    mask:  (B, N) bool, True for real constituents
    label: (B,) int64 class index
    index: (B,) int64 row of each jet in its cache file (to look up per-jet data such as cached teacher logits)
    """

    p4: torch.Tensor
    mask: torch.Tensor
    label: torch.Tensor
    index: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.label.shape[0]

    def to(self, device, non_blocking: bool = False) -> "JetBatch":
        return JetBatch(*(None if t is None else t.to(device, non_blocking=non_blocking)
                          for t in (self.p4, self.mask, self.label, self.index)))

    @classmethod
    def from_arrays(cls, p4: np.ndarray, n_particles: np.ndarray, label: np.ndarray, trim: bool = True,
                    index: np.ndarray | None = None) -> "JetBatch":
        """Build from cache rows. ``trim`` cuts the padding to the longest jet in the batch (scores never depend
        on padding length, and the teacher's cost grows with N^2)."""
        n = torch.from_numpy(np.asarray(n_particles, dtype=np.int64))
        if trim and len(n):
            p4 = p4[:, : int(n.max())]
        p4 = torch.from_numpy(np.ascontiguousarray(p4, dtype=np.float32))
        mask = torch.arange(p4.shape[1]) < n[:, None]
        label = torch.from_numpy(np.asarray(label, dtype=np.int64))
        return cls(p4, mask, label, None if index is None else torch.from_numpy(np.asarray(index, dtype=np.int64)))


class JetLoader:
    """Iterates a :class:`JetCache` as :class:`JetBatch` mini-batches.

    The order is a pure function of ``(seed, epoch)``: the same on every rank, every run and after a resume.
    With ``world_size`` > 1 each global batch of ``batch_size * world_size`` jets is cut into per-rank slices, so
    N processes with ``batch_size`` see exactly the jets that one process sees with ``N * batch_size``.
    An in-memory cache is shuffled jet by jet; an on-disk one by blocks (block order, then jets within a block),
    so reads stay contiguous.

    Example::

        loader = JetLoader(JetCache("cache/train.h5"), batch_size=256, seed=1)
        for epoch in range(n_epochs):
            loader.set_epoch(epoch)
            for batch in loader:            # JetBatch
                logits = model(batch.p4, batch.mask)
    """

    def __init__(
        self,
        cache: JetCache,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        trim: bool = True,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        self.cache, self.batch_size, self.shuffle, self.seed = cache, batch_size, shuffle, seed
        self.drop_last, self.rank, self.world_size, self.trim = drop_last, rank, world_size, trim
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> np.ndarray:
        """(n_jets,) the jet indices of this epoch, in visiting order."""
        n = len(self.cache)
        if not self.shuffle:
            return np.arange(n)
        rng = np.random.default_rng([self.seed, self.epoch])
        if self.cache.in_memory:
            return rng.permutation(n)
        block = self.cache.block_jets
        starts = rng.permutation(np.arange(0, n, block))
        return np.concatenate([s + rng.permutation(min(block, n - s)) for s in starts])

    def _global_batches(self) -> list[np.ndarray]:
        size = self.batch_size * self.world_size
        order = self.order()
        n_full = len(order) // size
        batches = [order[i * size : (i + 1) * size] for i in range(n_full)]
        if not self.drop_last and len(order) % size >= self.world_size:
            batches.append(order[n_full * size :])
        return batches

    def __len__(self) -> int:
        size = self.batch_size * self.world_size
        n_full, rest = divmod(len(self.cache), size)
        return n_full + int(not self.drop_last and rest >= self.world_size)

    def iter_from(self, start_batch: int = 0) -> Iterator[JetBatch]:
        """Batches of the current epoch, skipping the first ``start_batch`` (for resuming mid-epoch)."""
        for global_batch in self._global_batches()[start_batch:]:
            mine = np.array_split(global_batch, self.world_size)[self.rank]
            yield JetBatch.from_arrays(*self.cache.rows(mine), trim=self.trim, index=mine)

    def __iter__(self) -> Iterator[JetBatch]:
        return self.iter_from(0)
