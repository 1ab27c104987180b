"""What the trainer trains on: jets (cache files) or images (an image dataset), behind one small interface.

    data = open_training_data(job, env)        # JetData or ImageData, by job.data
    data.loader(batch_size, seed=..., rank=..., world_size=...)   # seeded, shardable, resumable: set_epoch, iter_from
    data.val_batches(batch_size)               # validation batches, in order
    data.sample(64)                            # the first jets/images in file order, unaugmented (set-up)
    model(*data.inputs(batch))                 # jets: (p4, mask); images: (images,)

``data.validate(model, batch_size, device)`` is the validation record of an epoch. ``augmented`` says whether training inputs change from epoch to epoch (image crops and flips; jet boosts are the
trainer's, :attr:`jetkd.config.TrainConfig.boost_beta_max`): teacher outputs are cached once per training set only
when they do not. ``contract(spec, model)`` is the input contract stored in checkpoints.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from jetkd.errors import InputError

if TYPE_CHECKING:
    import torch


class JetData:
    """Jet caches (``data.train``, ``data.val``); batches are :class:`~jetkd.data.loader.JetBatch`."""

    kind = "jets"
    augmented = False

    def __init__(self, job):
        self.boost = (job.train.boost_beta_max, job.train.boost_axis, job.train.seed) if (
            job.train.boost_validation and job.train.boost_beta_max > 0) else None
        self.train = _open_cache(job.data.train, "data.train", job.data.in_memory)
        self.val = _open_cache(job.data.val, "data.val", True)
        self.slots = self.train.max_particles  # per-constituent taps are cached over this many slots
        self.bucket_window = getattr(getattr(job, "train", None), "bucket_by_length", 0)  # JetData.loader

    def __len__(self) -> int:
        return len(self.train)

    def require_classes(self, n_class: int, where: str) -> None:
        for cache in (self.train, self.val):
            cache.require_classes(n_class, where)

    def loader(self, batch_size: int, **kwargs):
        """The training loader; ``train.bucket_by_length`` (batches per sorting window, 0 = off) buckets it."""
        from jetkd.data.loader import JetLoader

        kwargs.setdefault("bucket_window", self.bucket_window)
        return JetLoader(self.train, batch_size, drop_last=True, **kwargs)

    def val_batches(self, batch_size: int):
        from jetkd.data.loader import JetLoader

        return JetLoader(self.val, batch_size, shuffle=False)

    def sample(self, n: int):
        from jetkd.data.loader import JetLoader

        return next(iter(JetLoader(self.train, min(len(self.train), n), shuffle=False)))

    def train_batches(self, batch_size: int):
        """Every training jet once, in file order, unaugmented (teacher outputs cached once)."""
        from jetkd.data.loader import JetLoader

        return JetLoader(self.train, batch_size, shuffle=False)

    @staticmethod
    def inputs(batch) -> tuple:
        return batch.p4, batch.mask

    def validate(self, model, batch_size: int, device) -> dict:
        """val_loss, val_acc, val_auc, val_nonfinite; with ``train.boost_validation`` on the boosted validation
        jets, and the same on the unboosted ones as ``val_unboosted_*``."""
        batches = list(self.val_batches(batch_size))
        if self.boost is None:
            return _classification(model, batches, self.inputs, device)
        plain = _classification(model, batches, self.inputs, device)
        return {**_classification(model, boosted(batches, *self.boost), self.inputs, device),
                **{k.replace("val_", "val_unboosted_", 1): v for k, v in plain.items()}}

    def contract(self, spec: dict, model):
        from jetkd.contract import training_contract

        return training_contract(spec, model, self.train, self.val)

    def identity(self) -> str:
        """The training file (path, size, time): keys cached teacher outputs."""
        stat = Path(self.train.path).resolve().stat()
        return f"{Path(self.train.path).resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


class ImageData:
    """An image dataset (``data.images`` and its splits); batches are :class:`~jetkd.images.loader.ImageBatch`.
    Training batches carry the benchmark's standard augmentation (:func:`jetkd.images.loader.standard_augment`);
    validation is normalised with the training set's channel statistics.

    Re-identification sets (VeRi-776: identities and cameras; training and test identities differ) train with P x K
    identity batches (``data.identities_per_batch`` = P; the model adds its triplet loss) and validate by retrieval:
    the query split against the gallery (``val_map``, ``val_rank1``; ``val_acc`` is the rank-1 rate, so
    ``train.select_by: val_acc`` selects by it)."""

    kind = "images"
    slots = 0

    def __init__(self, job):
        from jetkd.images import read_images
        from jetkd.images.loader import channel_stats, standard_augment

        d = job.data
        self.path, self.options = d.images, dict(d.image_options)
        self.splits = {"train": d.train or "train", "val": d.val or "test"}
        self.train = read_images(d.images, self.splits["train"], **self.options)
        self.reid = self.train.cameras is not None
        if self.reid:
            self.splits.update(val=d.val or "query", gallery="gallery")
            self.gallery = read_images(d.images, "gallery", **self.options)
        self.val = read_images(d.images, self.splits["val"], **self.options)
        self.identities_per_batch = d.identities_per_batch
        self.augment = standard_augment(self.train.format)
        self.augmented = self.augment.active
        self.mean, self.std = channel_stats(self.train.images)

    def __len__(self) -> int:
        return len(self.train.labels)

    def require_classes(self, n_class: int, where: str) -> None:
        for split, images in (("train", self.train),) if self.reid else (("train", self.train), ("val", self.val)):
            top = int(images.labels.max()) if len(images.labels) else -1
            if top >= n_class:
                raise InputError(f"{self.path}:{self.splits[split]}", f"labels reach class index {top} but {where} "
                                                                      f"has {n_class} classes; expected n_class >= {top + 1}")

    def loader(self, batch_size: int, **kwargs):
        from jetkd.images.loader import ImageLoader

        pk = {"identities_per_batch": self.identities_per_batch} if self.identities_per_batch else {"drop_last": True}
        return ImageLoader(self.train, batch_size, augment=self.augment, mean=self.mean, std=self.std, **pk, **kwargs)

    def val_batches(self, batch_size: int):
        from jetkd.images.loader import ImageLoader

        return ImageLoader(self.val, batch_size, shuffle=False, mean=self.mean, std=self.std)

    def train_batches(self, batch_size: int):
        from jetkd.images.loader import ImageLoader

        return ImageLoader(self.train, batch_size, shuffle=False, mean=self.mean, std=self.std)

    def sample(self, n: int):
        import numpy as np

        return self.train_batches(n).batch(np.arange(min(n, len(self))))

    @staticmethod
    def inputs(batch) -> tuple:
        return (batch.images,)

    def validate(self, model, batch_size: int, device) -> dict:
        if not self.reid:
            return _classification(model, self.val_batches(batch_size), self.inputs, device)
        from jetkd.images.retrieval import query_gallery_metrics

        r = query_gallery_metrics(model, self.val, self.gallery, self.mean, self.std, batch_size=batch_size,
                                  device=device)
        return {"val_loss": float("nan"), "val_acc": r["rank1"], "val_auc": float("nan"), "val_map": r["mAP"],
                "val_rank1": r["rank1"], "val_nonfinite": r["n_nonfinite"]}

    def contract(self, spec: dict, model):
        from jetkd.contract import ImageContract

        return ImageContract.of(spec, model, self)

    def identity(self) -> str:
        return f"{Path(self.path).resolve() if self.path != 'digits' else 'digits'}:{self.splits['train']}:{self.options}"


def boosted(batches, beta_max: float, axis, seed: int) -> list:
    """The validation ``batches`` with every jet boosted by its own beta ~ U[0, beta_max) along ``axis``, drawn
    from a generator seeded by ``seed`` alone (a stream apart from the training boosts'): the same boosted jets
    every epoch (``train.boost_validation``), so the best epoch is chosen on jets distributed like the boosted
    training jets."""
    import torch

    from jetkd import lorentz
    from jetkd.data.loader import JetBatch

    g = torch.Generator().manual_seed(int(seed) + 7919)
    out = []
    for b in batches:
        beta = torch.rand(len(b), generator=g, dtype=torch.float64) * beta_max
        p4 = lorentz.boost(b.p4.double(), beta[:, None], axis).float() * b.mask[..., None]
        out.append(JetBatch(p4, b.mask, b.label, b.index))
    return out


def boost_bank(copies: int, n_jets: int, beta_max: float) -> torch.Tensor:
    """``train.boost_bank``: the betas (copies, n_jets) float64, ~ U[0, beta_max), of the boosted copies of every
    training jet, from a generator seeded by ``copies`` alone: the same for every training seed, so that one
    teacher pass over the copies serves them all (the training seed picks which copy a jet is seen as)."""
    import torch

    g = torch.Generator().manual_seed(104729 + int(copies))
    return torch.rand(copies, n_jets, generator=g, dtype=torch.float64) * beta_max


def _classification(model, batches, inputs, device) -> dict:
    """Validation loss, accuracy and AUC (NaN, never an error, for non-finite scores)."""
    from jetkd.evaluate.metrics import validation_metrics
    from jetkd.evaluate.predict import predict

    scores, labels = predict(model, batches, device=device, inputs=inputs)
    return validation_metrics(scores, labels)


def open_training_data(job):
    """:class:`ImageData` when ``job.data.images`` is set, else :class:`JetData`."""
    return ImageData(job) if job.data.images else JetData(job)


def _open_cache(path: str, key: str, in_memory: bool):
    from jetkd.data.cache import JetCache

    if not path:
        raise InputError(key, "no cache file given (a split written by `jetkd convert`)")
    if not Path(path).is_file():
        raise InputError(key, f"{path}: no such file")
    return JetCache(path, in_memory=in_memory).require_labels()
