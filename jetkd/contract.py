"""The input contract of a trained model: what its inputs must look like for its scores to mean anything.

A model computes its own features from raw four-vectors, but it was trained on jets made a particular way:
the leading ``max_constituents`` constituents by pT (its jet axis is their sum), with or without constituent
masses, with classes in a given order. Every checkpoint a run writes stores this contract beside the weights
(``ckpt["contract"]``); :func:`jetkd.load` rebuilds a :class:`~jetkd.tagger.Tagger` from it, which pads or
crops to the model's constituent count and reports the breaches it cannot repair (:class:`MassCheck`).

Mass convention. A constituent counts as *massive* when ``m^2 > MASSIVE_M2_OVER_E2 * E^2`` (m/E > 0.3%). In
float32 a massless constituent (E = |p|) has ``|m^2| / E^2`` of a few 1e-7 from rounding alone, far below the
cut; a pion is massive by it up to E ~ 45 GeV, which covers most hadrons in a jet. A training set is massless
when fewer than ``MASSLESS_FRACTION`` of its constituents are massive.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from jetkd.errors import InputError

MASSIVE_M2_OVER_E2 = 1e-5
MASSLESS_FRACTION = 0.01  # a set of constituents with fewer massive ones than this is massless
MASS_SAMPLE_JETS = 20_000  # training jets looked at to decide the mass convention
ORDERING = "pt_descending"


class ContractWarning(UserWarning):
    """Inputs break a model's input contract in a way the model cannot repair (e.g. the mass convention)."""


@dataclass
class InputContract:
    """What a trained model needs of its inputs, stored in every checkpoint as a plain dict.

    model:            ``{"name": ..., **constructor arguments}``: ``build_model(model)`` + the checkpoint's weights
    features:         names of the per-constituent features the model computes from ``p4`` (in order)
    max_constituents: leading constituents (by pT) the model reads; the jet axis is their sum
    ordering:         constituent order the model expects (``pt_descending``)
    massless:         whether the training constituents were massless (E = |p|)
    massive_fraction: measured fraction of training constituents that are massive (see module docstring)
    class_names:      one name per output, in logit order, from the training data (e.g. ``["QCD", "Tbqq"]``)
    jetkd_version:    the jetkd that trained the model
    provenance:       the training data: per split the cache file, its jet count and its sources (input files,
                      formats, jet counts, generator settings where jetkd generated them)
    """

    model: dict
    features: list[str]
    max_constituents: int
    massless: bool
    massive_fraction: float
    class_names: list[str]
    jetkd_version: str
    ordering: str = ORDERING
    provenance: dict = field(default_factory=dict)

    @property
    def n_class(self) -> int:
        return len(self.class_names)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, where: str = "checkpoint") -> "InputContract":
        names = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(n for n in names - set(data) if n not in ("ordering", "provenance"))
        if missing:
            raise InputError(where, f"input contract lacks {', '.join(missing)}")
        return cls(**{k: v for k, v in data.items() if k in names})

    def describe(self) -> str:
        """One line: model, constituents, mass convention, classes."""
        mass = "massless" if self.massless else "massive"
        return (f"{self.model['name']} on the leading {self.max_constituents} constituents by pT ({mass}), "
                f"features {', '.join(self.features)}; classes {', '.join(self.class_names)}")


def massive(E: np.ndarray, px: np.ndarray, py: np.ndarray, pz: np.ndarray) -> np.ndarray:
    """Which four-vectors (components of any one shape, GeV) are massive: ``m^2 > MASSIVE_M2_OVER_E2 E^2``.
    In float32 the rounding of ``m^2`` (~1e-7 E^2) stays far below the cut; zero padding counts as massless."""
    E, px, py, pz = (np.asarray(c, dtype=np.float32) for c in (E, px, py, pz))
    e2 = E * E
    return e2 - (px * px + py * py + pz * pz) > MASSIVE_M2_OVER_E2 * e2


def class_names(cache_attrs: dict, n_class: int) -> list[str]:
    """Class names from a cache's attributes (``class_names``, from the source files' labels), else
    ``class0, class1, ...``; always ``n_class`` of them."""
    from jetkd.data.cache import decode_attrs

    names = decode_attrs(cache_attrs).get("class_names")
    if names is not None and len(names) == n_class:
        return [str(n) for n in names]
    return [f"class{i}" for i in range(n_class)]


class MassCheck:
    """Accumulates the mass convention of the constituents a model is fed and reports a breach once.

    ``update(n_massive, n_constituents, where)`` per chunk; with ``strict`` a breach raises :class:`InputError` at
    the first chunk that shows it; otherwise ``finish(where)`` issues one :class:`ContractWarning` naming the
    fraction of affected constituents over everything seen.
    """

    def __init__(self, contract: InputContract, model_name: str, strict: bool = False):
        self.contract, self.model_name, self.strict = contract, model_name, strict
        self.n_massive = self.n_total = 0

    def update(self, n_massive: int, n_total: int, where: str) -> None:
        self.n_massive += n_massive
        self.n_total += n_total
        if self.strict and (message := self._breach(n_massive, n_total)):
            raise InputError(where, message + " (strict)")

    def finish(self, where: str) -> str | None:
        """Warn (once) if everything seen breaks the mass convention; returns the message or None."""
        message = self._breach(self.n_massive, self.n_total)
        if message:
            warnings.warn(f"{where}: {message}; use strict mode (--strict) to make this an error", ContractWarning,
                          stacklevel=2)
        return message

    def _breach(self, n_massive: int, n_total: int) -> str | None:
        if n_total == 0:
            return None
        fraction = n_massive / n_total
        trained = (f"model {self.model_name!r} was trained on {'massless' if self.contract.massless else 'massive'} "
                   f"constituents ({100 * self.contract.massive_fraction:.1f}% massive)")
        if self.contract.massless and fraction >= MASSLESS_FRACTION:
            return f"{100 * fraction:.1f}% of the constituents are massive (m > 0.3% of E) but {trained}"
        if not self.contract.massless and fraction < MASSLESS_FRACTION:
            return f"{100 * (1 - fraction):.1f}% of the constituents are massless (E = |p|) but {trained}"
        return None


def cache_provenance(cache) -> dict:
    """Where a :class:`~jetkd.data.cache.JetCache` came from: its file, jet count and the attributes ``jetkd
    convert`` stored (sources, formats, split, seed, per-input jet counts and generator settings)."""
    from jetkd.data.cache import decode_attrs

    return {"cache": str(Path(cache.path).resolve()), "jets": len(cache), **decode_attrs(cache.attrs)}


@dataclass
class ImageContract:
    """What a trained image model needs of its inputs (stored in its checkpoints like :class:`InputContract`).

    model: ``{"name": ..., **constructor arguments}``; image_shape: (H, W, C) of the training images;
    mean, std: per-channel normalisation of ``pixel / 255`` the model was trained with (apply it to new images);
    class_names: one per output (or indices); format: the dataset format (``cifar10``, ``digits``, ...);
    provenance: the dataset path and splits.
    """

    model: dict
    image_shape: list[int]
    mean: list[float]
    std: list[float]
    class_names: list[str]
    format: str
    jetkd_version: str
    kind: str = "images"
    provenance: dict = field(default_factory=dict)

    @property
    def n_class(self) -> int:
        return len(self.class_names)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def of(cls, spec: dict, model, data) -> "ImageContract":
        """The contract of ``model`` (built from ``spec``) trained on ``data`` (:class:`jetkd.train.data.ImageData`)."""
        from jetkd import __version__

        names = data.train.class_names or [str(i) for i in range(model.n_class)]
        return cls(model=dict(spec), image_shape=list(data.train.images.shape[1:]), mean=list(data.mean),
                   std=list(data.std), class_names=[str(n) for n in names][: model.n_class], format=data.train.format,
                   jetkd_version=__version__,
                   provenance={"images": str(data.path), "splits": data.splits, "options": data.options,
                               "n_train": len(data.train.labels), "n_val": len(data.val.labels)})


def training_contract(spec: dict, model, train_cache, val_cache=None) -> InputContract:
    """The contract of a model trained on ``train_cache``: ``spec`` rebuilds it (deploy form), ``model`` tells its
    features and class count, the cache its constituent count, mass convention, class names and provenance."""
    from jetkd import __version__

    p4, n_particles, _ = train_cache.rows(np.arange(min(len(train_cache), MASS_SAMPLE_JETS)))
    mask = np.arange(p4.shape[1]) < np.asarray(n_particles)[:, None]
    fraction = float((massive(*np.moveaxis(p4, -1, 0)) & mask).sum() / max(1, mask.sum()))
    provenance = {"train": cache_provenance(train_cache)}
    if val_cache is not None:
        provenance["val"] = cache_provenance(val_cache)
    return InputContract(
        model=dict(spec),
        features=list(model.input_features),
        max_constituents=int(train_cache.max_particles),
        massless=fraction < MASSLESS_FRACTION,
        massive_fraction=fraction,
        class_names=class_names(train_cache.attrs, model.n_class),
        jetkd_version=__version__,
        provenance=provenance,
    )
