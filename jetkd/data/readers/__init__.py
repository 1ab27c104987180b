"""Readers for the supported jet file formats, all returning :class:`~jetkd.data.arrays.JetArrays` chunks.

Formats (detected from the file content, not its name):

- ``root``: JetClass-style ROOT TTree/RNTuple (``part_px, part_py, part_pz, part_energy``, one-hot ``label_*``);
- ``toptagging``: the Top Quark Tagging Reference HDF5 (pandas table of ``E_i, PX_i, PY_i, PZ_i``, ``is_signal_new``);
- ``lgn``: LorentzNet-converted HDF5 (``Pmu``, ``Nobj``, ``is_signal``);
- ``efqg``: EnergyFlow quark/gluon npz (``X`` of ``(pt, y, phi, pid)``, ``y``).

Every reader streams at most ``step_size`` jets at a time and yields validated chunks whose constituents are in
file order with the zero padding removed; bad input raises :class:`~jetkd.errors.InputError`.
"""

from __future__ import annotations

from collections.abc import Iterator

from jetkd.data.arrays import JetArrays
from jetkd.data.readers import efqg, lgn, root, toptagging
from jetkd.data.readers.detect import detect_format
from jetkd.errors import InputError

FORMATS = ("root", "toptagging", "lgn", "efqg")
_READERS = {"root": root, "toptagging": toptagging, "lgn": lgn, "efqg": efqg}
_COUNT_OPTIONS = frozenset({"branch_map", "labels", "step_size"})

__all__ = ["FORMATS", "count_jets", "detect_format", "iter_jets"]


def _reader(path, format: str):
    """The reader module for ``path``, detecting the format when ``format == "auto"``."""
    if format == "auto":
        format = detect_format(path)
    if format not in _READERS:
        raise InputError("format", f"unknown format {format!r}; expected 'auto' or one of {', '.join(FORMATS)}")
    return _READERS[format]


def count_jets(path, *, format: str = "auto", **options) -> int:
    """Number of jets in ``path``, from metadata (tree entries, dataset shapes, ``.npy`` headers) only.

    options: the ``branch_map`` / ``labels`` given to :func:`iter_jets` (``step_size`` is accepted and ignored),
    so that the count refers to the same tree/table/datasets that will be read.
    """
    unknown = set(options) - _COUNT_OPTIONS
    if unknown:
        raise TypeError(f"count_jets() got unexpected option(s) {sorted(unknown)}")
    return _reader(path, format).count(path, branch_map=options.get("branch_map"), labels=options.get("labels"))


def iter_jets(path, *, format: str = "auto", step_size: int = 100_000, branch_map: dict[str, str] | None = None,
              labels: list[str] | None = None) -> Iterator[JetArrays]:
    """Stream the jets of ``path`` as validated :class:`JetArrays` chunks of at most ``step_size`` jets.

    branch_map: renames the format's inputs (ROOT: ``part_px, part_py, part_pz, part_energy``, ``label`` for an
        integer class-index branch, ``tree``; toptagging: ``key``, ``label``; lgn: ``Pmu, Nobj, label``;
        efqg: ``X, label``).
    labels: ROOT only: the one-hot label branches, in class-index order (default: every ``label_*`` branch).
    """
    return _reader(path, format).iterate(path, step_size=step_size, branch_map=branch_map, labels=labels)
