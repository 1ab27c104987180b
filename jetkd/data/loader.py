"""``JetBatch`` and the loader that cuts the cache into seeded, shardable, resumable mini-batches."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from jetkd.data.cache import DATASETS, JetCache


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

    ``bucket_window`` = W > 0 batches jets of similar multiplicity together (length bucketing, for GPU training:
    ``JetBatch.from_arrays`` pads a batch to its longest jet, and the teacher's cost grows with N^2): the epoch's
    order is cut into windows of W global batches, each window sorted by ``n_particles`` and cut into global
    batches, and the batches shuffled (:func:`bucket_order`). Still a pure function of ``(seed, epoch)``, the same
    after :meth:`iter_from` and cut into per-rank slices as without it; the same number and sizes of batches, and
    every jet once per epoch (``drop_last`` drops another partial batch). In memory the batches are shuffled over the whole epoch; on disk only within their window, which must
    fit in a block (``W * batch_size * world_size <= block_jets``), so a window touches at most two consecutive
    blocks and reads stay contiguous.

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
        bucket_window: int = 0,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        if bucket_window < 0:
            raise ValueError(f"bucket_window must be >= 0 (batches; 0 = off), got {bucket_window}")
        window_jets = bucket_window * batch_size * world_size
        if bucket_window and not cache.in_memory and window_jets > cache.block_jets:
            raise ValueError(f"bucket_window {bucket_window} x {batch_size * world_size} jets per global batch = "
                             f"{window_jets} jets exceeds the {cache.block_jets}-jet blocks of the streamed cache "
                             f"{cache.path}; use a smaller window, larger blocks or an in-memory cache")
        self.cache, self.batch_size, self.shuffle, self.seed = cache, batch_size, shuffle, seed
        self.drop_last, self.rank, self.world_size, self.trim = drop_last, rank, world_size, trim
        self.bucket_window = bucket_window
        self.epoch = 0
        self._n_particles: np.ndarray | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> np.ndarray:
        """(n_jets,) the jet indices of this epoch, in visiting order (consecutive global batches; bucketed when
        ``bucket_window`` is set)."""
        order = self._shuffled()
        if not self.bucket_window:
            return order
        rng = np.random.default_rng([self.seed, self.epoch, 1]) if self.shuffle else None
        return bucket_order(order, self.n_particles, self.batch_size * self.world_size, self.bucket_window, rng,
                            local=not self.cache.in_memory)

    def _shuffled(self) -> np.ndarray:
        """(n_jets,) the epoch's jet order before bucketing: by jet in memory, by block on disk."""
        n = len(self.cache)
        if not self.shuffle:
            return np.arange(n)
        rng = np.random.default_rng([self.seed, self.epoch])
        if self.cache.in_memory:
            return rng.permutation(n)
        block = self.cache.block_jets
        starts = rng.permutation(np.arange(0, n, block))
        return np.concatenate([s + rng.permutation(min(block, n - s)) for s in starts])

    @property
    def n_particles(self) -> np.ndarray:
        """(n_jets,) int32 constituents of every jet of the cache (read once: 4 bytes per jet)."""
        if self._n_particles is None:
            cache = self.cache
            if cache.in_memory:
                self._n_particles = cache._data[DATASETS.index("n_particles")]
            else:
                self._n_particles = cache._file["n_particles"][()]
        return self._n_particles

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


def bucket_order(order: np.ndarray, n_particles: np.ndarray, batch_size: int, window: int,
                 rng: np.random.Generator | None = None, local: bool = False) -> np.ndarray:
    """``order`` rearranged so that consecutive runs of ``batch_size`` jets have similar multiplicities.

    order: (n,) jet indices (an epoch's shuffled order); n_particles: (n_jets,) constituents per jet, indexed by
    jet; batch_size: jets per (global) batch; window: batches per sorting window. Returns (n,) the same indices:
    ``order`` cut into windows of ``window * batch_size`` jets, each sorted by multiplicity (stable, so ties keep
    the shuffled order), so cutting the result into consecutive ``batch_size`` runs gives batches of jets from
    one window and of neighbouring multiplicities; the last run, ``n % batch_size`` jets, stays last.
    With ``rng`` the full batches are then shuffled (over the epoch, or within their window when ``local``) and
    the jets inside every batch permuted, so DDP ranks, which take consecutive slices of a global batch, get
    alike multiplicities (balanced step times) rather than the shortest or longest jets of it. Cost: one
    ``lexsort`` of n keys.
    """
    order = np.asarray(order)
    k = len(order)
    position = np.arange(k)
    window_of = position // (window * batch_size)
    sorted_order = order[np.lexsort((position, n_particles[order], window_of))]
    if rng is None:
        return sorted_order
    n_full = k // batch_size
    batches = sorted_order[: n_full * batch_size].reshape(n_full, batch_size)
    if local:  # shuffle within windows: sort by (window, random key)
        batches = batches[np.lexsort((rng.random(n_full), np.arange(n_full) // window))]
    else:
        batches = batches[rng.permutation(n_full)]
    batches = rng.permuted(batches, axis=1)
    rest = rng.permutation(sorted_order[n_full * batch_size :])
    return np.concatenate([batches.reshape(-1), rest])


def padded_slots(n_particles: np.ndarray, order: np.ndarray, batch_size: int, power: int = 1) -> int:
    """Sum over the consecutive ``batch_size`` runs of ``order`` of ``B * max(n)**power``: the node slots
    (``power=1``) or pair slots (``power=2``, what a dense pair grid costs) of batches padded to their longest jet,
    as :meth:`JetBatch.from_arrays` pads them. n_particles: (n_jets,) by jet; order: (n,) jet indices."""
    n = np.asarray(n_particles)[np.asarray(order)].astype(np.int64)
    starts = np.arange(0, len(n), batch_size)
    longest = np.maximum.reduceat(n, starts) if len(n) else n
    sizes = np.diff(np.append(starts, len(n)))
    return int((sizes * longest**power).sum())
