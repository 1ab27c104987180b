"""``ImageBatch`` and the loader that cuts an :class:`ImageSet` into seeded, shardable, resumable, augmented batches.

The design mirrors :class:`jetkd.data.loader.JetLoader`: the visiting order is a pure function of ``(seed, epoch)``,
global batches of ``batch_size * world_size`` are split across ranks, and ``iter_from(step)`` resumes mid-epoch.
With ``identities_per_batch=P`` the order is instead the P x K identity sampling of triplet training
(:func:`pk_order`), under the same seeding, sharding and resume rules.
The augmentation of each image is drawn per *position* in the epoch's order (not per rank or per batch), so it too
is a pure function of ``(seed, epoch, step)`` and the same under any sharding or resume.

The augmentations are the standard ones of these benchmarks, in vectorised tensor code (one gather per batch):
random crop of the image padded with ``pad`` zero (black) pixels on each side, random horizontal flip, then
per-channel normalisation ``(x / 255 - mean) / std``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from jetkd.errors import InputError
from jetkd.images.readers import ImageSet


@dataclass(frozen=True)
class Augment:
    """Training-time augmentation.

    pad:  random crop: the image is padded with ``pad`` zero pixels on every side and an ``H x W`` window is cut at a
          uniformly drawn offset in ``[0, 2 * pad]`` along each axis (0: no crop)
    flip: mirror left-right with probability 1/2
    """

    pad: int = 0
    flip: bool = False

    def __post_init__(self):
        if isinstance(self.pad, bool) or not isinstance(self.pad, (int, np.integer)) or self.pad < 0:
            raise InputError("augment.pad", f"expected a number of pixels >= 0, got {self.pad!r}")
        if not isinstance(self.flip, (bool, np.bool_)):
            raise InputError("augment.flip", f"expected True or False, got {self.flip!r}")

    @property
    def active(self) -> bool:
        return self.pad > 0 or bool(self.flip)


def pk_order(labels: np.ndarray, p: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """One epoch of P x K identity sampling (Hermans et al. 2017; reid-strong-baseline's ``RandomIdentitySampler``).

    labels: (N,) identity of each image; p: identities per batch; k: images per identity; rng: the epoch's stream.
    Returns (n_batches * p * k,) int64 image indices: batch b is ``order[b*p*k : (b+1)*p*k]``, p blocks of k
    consecutive images, each block one identity, the p identities distinct.

    Each identity's images are shuffled and cut into ``count // k`` chunks of k (the rest is dropped this epoch);
    an identity with fewer than k images gives one chunk of k drawn from them with replacement. Every batch then
    takes the next chunk of p identities drawn uniformly without replacement among those with chunks left, until
    fewer than p are left. A pure function of ``labels``, ``p``, ``k`` and the state of ``rng``.
    """
    _, ident, counts = np.unique(labels, return_inverse=True, return_counts=True)
    ident = ident.reshape(-1)
    perm = rng.permutation(len(ident))
    perm = perm[np.argsort(ident[perm], kind="stable")]  # grouped by identity, random within each
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    small = counts < k
    within = np.arange(len(perm)) - np.repeat(starts, counts)
    kept = ~np.repeat(small, counts) & (within < np.repeat(counts // k * k, counts))
    big_chunks = perm[kept].reshape(-1, k)  # (n_big_chunks, k), identity-contiguous
    draws = rng.integers(0, counts[small][:, None], size=(int(small.sum()), k)) + starts[small][:, None]
    chunks = np.concatenate([big_chunks, perm[draws]])
    chunk_ident = np.r_[ident[big_chunks[:, 0]], np.flatnonzero(small)]
    by_ident = np.argsort(chunk_ident, kind="stable")  # chunks grouped by identity, in their random order
    chunks, n_chunks = chunks[by_ident], np.bincount(chunk_ident, minlength=len(counts))
    first, taken = np.r_[0, np.cumsum(n_chunks)[:-1]], np.zeros(len(counts), np.int64)
    picks = []
    while True:
        available = np.flatnonzero(taken < n_chunks)
        if len(available) < p:
            break
        chosen = rng.choice(available, p, replace=False)
        picks.append(first[chosen] + taken[chosen])
        taken[chosen] += 1
    return chunks[np.concatenate(picks)].reshape(-1).astype(np.int64) if picks else np.zeros(0, np.int64)


# The usual training augmentation of each benchmark (jetkd.images.readers.FORMATS names). Flips are off for
# digits (a mirrored 2, 3, 7 is not a digit); the 8x8 sklearn digits are too small to shift.
STANDARD_AUGMENT: dict[str, Augment] = {
    "cifar10": Augment(pad=4, flip=True),
    "cifar100": Augment(pad=4, flip=True),
    "cifar10-bin": Augment(pad=4, flip=True),
    "cifar100-bin": Augment(pad=4, flip=True),
    "svhn": Augment(pad=4, flip=False),
    "mnist": Augment(pad=2, flip=False),
    "fashion-mnist": Augment(pad=2, flip=False),
    "digits": Augment(pad=0, flip=False),
    "veri": Augment(pad=10, flip=True),
}


def standard_augment(format: str) -> Augment:
    """The usual training :class:`Augment` for an ImageSet ``format`` (:data:`STANDARD_AUGMENT`)."""
    if format not in STANDARD_AUGMENT:
        raise InputError("format", f"no standard augmentation for {format!r}; known: {', '.join(STANDARD_AUGMENT)}")
    return STANDARD_AUGMENT[format]


@dataclass
class ImageBatch:
    """A mini-batch of images, what every image model takes (``model(batch.images)``).

    images: (B, C, H, W) float32, normalised per channel: ``(pixel / 255 - mean[c]) / std[c]``
    label:  (B,) int64 class index (re-identification: identity)
    index:  (B,) int64 row of each image in its :class:`ImageSet` (to look up per-image data, e.g. cached teacher
            logits)
    camera: (B,) int64 camera id for re-identification, else None
    """

    images: torch.Tensor
    label: torch.Tensor
    index: torch.Tensor
    camera: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.label.shape[0]

    def to(self, device, non_blocking: bool = False) -> ImageBatch:
        return ImageBatch(*(None if t is None else t.to(device, non_blocking=non_blocking)
                            for t in (self.images, self.label, self.index, self.camera)))


def channel_stats(images: np.ndarray, chunk: int = 1024) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of ``images`` (N, H, W, C) uint8, in units of ``pixel / 255``.

    Accumulated in float64 over chunks of ``chunk`` images (no float copy of the whole set); a channel with zero
    spread gets std 1 so that normalising never divides by zero.
    """
    if images.ndim != 4 or len(images) == 0:
        raise InputError("images", f"expected a non-empty (N, H, W, C) array, got shape {images.shape}")
    n_channels = images.shape[-1]
    total, total_sq = np.zeros(n_channels), np.zeros(n_channels)
    for start in range(0, len(images), chunk):
        block = images[start : start + chunk].reshape(-1, n_channels).astype(np.float64)
        total += block.sum(0)
        total_sq += (block * block).sum(0)
    count = images.size // n_channels
    mean = total / count
    var = np.maximum(total_sq / count - mean * mean, 0.0)
    std = np.sqrt(var)
    std[std == 0] = 255.0
    return tuple((mean / 255).tolist()), tuple((std / 255).tolist())


def crop_flip(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor, pad: int) -> torch.Tensor:
    """Random-crop-with-padding and horizontal flip of a batch, in one gather.

    x:      (B, H, W, C) images (any dtype)
    dy, dx: (B,) int64 crop offsets in ``[0, 2 * pad]`` into the image padded by ``pad`` zeros on every side
            (``dy = dx = pad`` leaves the image in place)
    flip:   (B,) bool, mirror left-right after cropping
    returns (B, H, W, C), same dtype: ``padded[b, dy + i, dx + j]`` (``j -> W - 1 - j`` where flipped), zero where
            the window reaches into the padding
    """
    batch, height, width, _ = x.shape
    i, j = torch.arange(height), torch.arange(width)
    j = torch.where(flip[:, None], width - 1 - j, j)  # (B, W): crop column each output column takes
    rows = dy[:, None] - pad + i  # (B, H) source rows in the unpadded image
    cols = dx[:, None] - pad + j  # (B, W)
    inside = ((rows >= 0) & (rows < height))[:, :, None] & ((cols >= 0) & (cols < width))[:, None, :]
    out = x[torch.arange(batch)[:, None, None], rows.clamp(0, height - 1)[:, :, None], cols.clamp(0, width - 1)[:, None, :]]
    return out.masked_fill(~inside[..., None], 0)


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """(B, H, W, C) uint8 -> (B, C, H, W) float32 ``(x / 255 - mean[c]) / std[c]`` (mean, std: C floats)."""
    mean = torch.as_tensor(mean, dtype=torch.float32)[:, None, None]
    std = torch.as_tensor(std, dtype=torch.float32)[:, None, None]
    images = x.permute(0, 3, 1, 2).to(torch.float32).div_(255)
    return images.sub_(mean).div_(std).contiguous()


def _check_pk(images: ImageSet, batch_size: int, p: int, world_size: int, shuffle: bool) -> None:
    """ValueError unless P x K sampling with P = ``p`` per rank can make at least one batch of ``images``."""
    if isinstance(p, bool) or not isinstance(p, (int, np.integer)) or p < 1 or batch_size % p:
        raise ValueError(f"identities_per_batch must be a positive divisor of batch_size {batch_size}, got {p!r}")
    if not shuffle:
        raise ValueError("identities_per_batch samples identities at random; it cannot be used with shuffle=False")
    n_ids = len(np.unique(images.labels))
    if n_ids < p * world_size:
        raise ValueError(f"identities_per_batch {p} x world_size {world_size} needs {p * world_size} identities per "
                         f"global batch, but the images have only {n_ids}")


def _channel_tuple(name: str, value, n_channels: int) -> tuple[float, ...]:
    values = tuple(float(v) for v in np.atleast_1d(np.asarray(value, dtype=np.float64)))
    if len(values) != n_channels or not all(np.isfinite(values)):
        raise InputError(name, f"expected {n_channels} finite value(s), one per channel, got {value!r}")
    if name == "std" and min(values) <= 0:
        raise InputError(name, f"expected positive values, got {value!r}")
    return values


class ImageLoader:
    """Iterates an :class:`ImageSet` as :class:`ImageBatch` mini-batches.

    The order is a pure function of ``(seed, epoch)``; each position of the epoch's order gets its crop offset and
    flip from a second stream seeded by ``(seed, epoch)``, so batches are the same on every rank, every run and after
    a resume. With ``world_size`` > 1 each global batch of ``batch_size * world_size`` images is cut into per-rank
    slices (``np.array_split``), so N processes with ``batch_size`` see exactly the images, augmented alike, that one
    process sees with ``N * batch_size``.

    identities_per_batch: P for P x K identity sampling (triplet training, re-identification): every batch holds
        P distinct identities (``images.labels``) x K = ``batch_size // P`` images each (:func:`pk_order`), the
        epoch ending when fewer than P identities have images left (so ``drop_last`` does not apply and every
        batch is full). ``batch_size`` must be a multiple of P; under DDP the global batch holds
        ``P * world_size`` identities, each rank P whole ones, so the sharding rule above holds unchanged (one
        process with ``N * batch_size`` and ``N * P`` sees what N ranks see). None (default): plain shuffling.
    augment: an :class:`Augment` for training (:func:`standard_augment` gives each benchmark's usual one), None
        for evaluation.
    mean, std: per-channel normalisation in units of ``pixel / 255``; None computes them from ``images``
        (:func:`channel_stats`): right for a training loader; give evaluation loaders the training loader's
        ``mean`` and ``std``.

    Example::

        train = read_images("data/cifar-10-batches-py", "train")
        loader = ImageLoader(train, batch_size=128, seed=1, augment=standard_augment(train.format))
        test_loader = ImageLoader(read_images("data/cifar-10-batches-py", "test"), 256, shuffle=False,
                                  mean=loader.mean, std=loader.std)
        for epoch in range(n_epochs):
            loader.set_epoch(epoch)
            for batch in loader:            # ImageBatch
                logits = model(batch.images)
    """

    def __init__(
        self,
        images: ImageSet,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        augment: Augment | None = None,
        mean=None,
        std=None,
        identities_per_batch: int | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        if identities_per_batch is not None:
            _check_pk(images, batch_size, identities_per_batch, world_size, shuffle)
        if (mean is None) != (std is None):
            raise InputError("mean" if mean is None else "std", "give both mean and std, or neither (computed)")
        n_channels = images.images.shape[-1]
        if mean is None:
            mean, std = channel_stats(images.images)
        self.mean, self.std = _channel_tuple("mean", mean, n_channels), _channel_tuple("std", std, n_channels)
        self.images, self.batch_size, self.shuffle, self.seed = images, batch_size, shuffle, seed
        self.drop_last, self.rank, self.world_size = drop_last, rank, world_size
        self.identities_per_batch = identities_per_batch
        self.augment = augment if augment is not None and augment.active else None
        self.epoch = 0
        self._plan_key, self._plan = None, None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> np.ndarray:
        """The image indices of this epoch, in visiting order: (N,), or with P x K sampling
        (n_batches * batch_size * world_size,) from :func:`pk_order` (global batches of ``P * world_size``
        identities)."""
        n = len(self.images)
        rng = np.random.default_rng([self.seed, self.epoch])
        if self.identities_per_batch is not None:
            p = self.identities_per_batch
            return pk_order(self.images.labels, p * self.world_size, self.batch_size // p, rng)
        return rng.permutation(n) if self.shuffle else np.arange(n)

    def plan(self) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        """This epoch's ``(order, dy, dx, flip)``, each (N,) (P x K sampling: the length of the order) and indexed by
        position in the order (the last three None without augmentation): image ``order[k]`` is cropped at
        ``(dy[k], dx[k])`` and flipped if ``flip[k]``."""
        pk = None if self.identities_per_batch is None else (self.identities_per_batch * self.world_size,
                                                                self.batch_size // self.identities_per_batch)
        key = (self.seed, self.epoch, self.shuffle, self.augment, len(self.images), pk)
        if self._plan_key != key:
            order, dy, dx, flip = self.order(), None, None, None
            if self.augment is not None:
                n, pad = len(order), self.augment.pad
                rng = np.random.default_rng([self.seed, self.epoch, 1])
                dy, dx = rng.integers(0, 2 * pad + 1, size=(2, n))
                flip = rng.random(n) < 0.5 if self.augment.flip else np.zeros(n, bool)
            self._plan_key, self._plan = key, (order, dy, dx, flip)
        return self._plan

    def _global_batches(self) -> list[tuple[int, int]]:
        """``[start, stop)`` positions in the epoch's order of each global batch."""
        size = self.batch_size * self.world_size
        n = len(self.images) if self.identities_per_batch is None else len(self.plan()[0])
        bounds = [(start, start + size) for start in range(0, n - size + 1, size)]
        if not self.drop_last and n % size >= self.world_size:
            bounds.append((n - n % size, n))
        return bounds

    def __len__(self) -> int:
        size = self.batch_size * self.world_size
        if self.identities_per_batch is not None:
            return len(self.plan()[0]) // size
        n_full, rest = divmod(len(self.images), size)
        return n_full + int(not self.drop_last and rest >= self.world_size)

    def batch(self, positions: np.ndarray) -> ImageBatch:
        """The batch of the images at ``positions`` (int array) of this epoch's order, augmented and normalised."""
        order, dy, dx, flip = self.plan()
        index = order[positions].astype(np.int64)
        x = torch.from_numpy(self.images.images[index])
        if self.augment is not None:
            x = crop_flip(x, torch.from_numpy(dy[positions]), torch.from_numpy(dx[positions]),
                          torch.from_numpy(flip[positions]), self.augment.pad)
        cameras = self.images.cameras
        return ImageBatch(normalize(x, self.mean, self.std), torch.from_numpy(self.images.labels[index]),
                          torch.from_numpy(index), None if cameras is None else torch.from_numpy(cameras[index]))

    def iter_from(self, start_batch: int = 0) -> Iterator[ImageBatch]:
        """Batches of the current epoch, skipping the first ``start_batch`` (for resuming mid-epoch)."""
        for start, stop in self._global_batches()[start_batch:]:
            yield self.batch(np.array_split(np.arange(start, stop), self.world_size)[self.rank])

    def __iter__(self) -> Iterator[ImageBatch]:
        return self.iter_from(0)


__all__ = ["STANDARD_AUGMENT", "Augment", "ImageBatch", "ImageLoader", "channel_stats", "crop_flip", "normalize",
           "pk_order", "standard_augment"]
