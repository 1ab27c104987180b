"""Readers for the supported jet file formats, all returning :class:`~jetkd.data.arrays.JetArrays` chunks.

Formats (detected from the file content, not its name):

- ``root``: JetClass-style ROOT TTree/RNTuple (``part_px, part_py, part_pz, part_energy``, one-hot ``label_*``);
- ``toptagging``: the Top Quark Tagging Reference HDF5 (pandas frame of ``E_i, PX_i, PY_i, PZ_i``,
  ``is_signal_new``, in ``to_hdf``'s ``format="table"`` or default ``format="fixed"`` layout);
- ``lgn``: LorentzNet-converted HDF5 (``Pmu``, ``Nobj``, ``is_signal``);
- ``efqg``: EnergyFlow quark/gluon npz (``X`` of ``(pt, y, phi, pid)``, ``y``).

Every reader streams at most ``step_size`` jets at a time and yields chunks whose constituents are in file order
with the zero padding removed; chunk ``i`` holds exactly the entries ``[entry_start, entry_start + len)`` (no jet is
dropped or reordered). Chunks are validated here, in :func:`iter_jets`, by :meth:`JetArrays.validate` (one place for
every format) unless ``validate=False``; the readers only add the checks that need their own layout (one-hot label
branches). Labels are read according to ``label_mode`` (``LABEL_MODES``). Bad input raises
:class:`~jetkd.errors.InputError`.
"""

from __future__ import annotations

from collections.abc import Iterator

from jetkd.data.arrays import DEFAULT_MAX_MOMENTUM, JetArrays, check_max_momentum
from jetkd.data.readers import efqg, lgn, root, toptagging
from jetkd.data.readers._common import LABEL_MODES, check_label_mode, check_validate
from jetkd.data.readers.detect import detect_format
from jetkd.errors import InputError

FORMATS = ("root", "toptagging", "lgn", "efqg")
_READERS = {"root": root, "toptagging": toptagging, "lgn": lgn, "efqg": efqg}
_COUNT_OPTIONS = frozenset({"branch_map", "labels", "label_mode", "step_size", "validate", "max_momentum"})

__all__ = ["FORMATS", "LABEL_MODES", "count_jets", "detect_format", "file_metadata", "iter_jets"]


def _reader(path, format: str):
    """The reader module for ``path``, detecting the format when ``format == "auto"``."""
    if format == "auto":
        format = detect_format(path)
    if format not in _READERS:
        raise InputError("format", f"unknown format {format!r}; expected 'auto' or one of {', '.join(FORMATS)}")
    return _READERS[format]


def count_jets(path, *, format: str = "auto", **options) -> int:
    """Number of jets in ``path``, from metadata (tree entries, dataset shapes, ``.npy`` headers) only.

    options: the ``branch_map`` / ``labels`` / ``label_mode`` given to :func:`iter_jets` (``step_size``,
    ``validate`` and ``max_momentum`` are accepted and ignored), so that the count refers to the same
    tree/table/datasets that will be read and a label column that would be required is required here too.
    """
    unknown = set(options) - _COUNT_OPTIONS
    if unknown:
        raise TypeError(f"count_jets() got unexpected option(s) {sorted(unknown)}")
    label_mode = check_label_mode(options.get("label_mode", "required"))
    return _reader(path, format).count(path, branch_map=options.get("branch_map"), labels=options.get("labels"),
                                       label_mode=label_mode)


def iter_jets(path, *, format: str = "auto", step_size: int = 100_000, branch_map: dict[str, str] | None = None,
              labels: list[str] | None = None, label_mode: str = "required", validate: bool = True,
              max_momentum: float = DEFAULT_MAX_MOMENTUM) -> Iterator[JetArrays]:
    """Stream the jets of ``path`` as :class:`JetArrays` chunks of at most ``step_size`` jets, in file order.

    branch_map: renames the format's inputs (ROOT: ``part_px, part_py, part_pz, part_energy``, ``label`` for an
        integer class-index branch, ``tree``; toptagging: ``key``, ``label``; lgn: ``Pmu, Nobj, label``;
        efqg: ``X, label``).
    labels: ROOT only: the one-hot label branches, in class-index order (default: every ``label_*`` branch).
    label_mode: "required" (labels must exist), "optional" (read when the file has them, else -1 for every jet;
        label columns named in ``labels`` / ``branch_map['label']`` must still exist) or "none" (never read; -1).
    validate: check every chunk (:meth:`JetArrays.validate`: finite momenta, at least one constituent, labels
        within the declared classes, |px|, |py|, |pz|, E <= ``max_momentum`` GeV, E > 0 and E >= |p| up to
        rounding; -1 labels allowed unless label_mode is "required"; ROOT one-hot ``label_*`` values exactly 0 or
        1, at most one set per jet, none set being a missing label).
        False yields chunks as read, for scoring: jets with NaN momenta or no constituents are kept
        (:meth:`JetArrays.bad_jets` flags them) and bad one-hot labels become -1. Structural problems raise
        InputError either way.
    max_momentum: the sanity bound of ``validate`` in GeV (default 1e5, 100 TeV).
    """
    check_label_mode(label_mode)
    check_validate(validate)
    max_momentum = check_max_momentum(max_momentum)
    chunks = _reader(path, format).iterate(path, step_size=step_size, branch_map=branch_map, labels=labels,
                                           label_mode=label_mode, validate=validate)
    return _validated(chunks, label_mode == "required", max_momentum) if validate else chunks


def _validated(chunks: Iterator[JetArrays], require_labels: bool, max_momentum: float) -> Iterator[JetArrays]:
    """``chunks``, each checked by :meth:`JetArrays.validate` as it is read; the reader (and its file) is closed
    when this generator is, or when a check fails."""
    try:
        for chunk in chunks:
            yield chunk.validate(require_labels=require_labels, max_momentum=max_momentum)
    finally:
        chunks.close()


def file_metadata(path, *, format: str = "auto") -> dict:
    """File-level metadata written by jetkd: for a ROOT file, the JSON object in its ``jetkd_provenance`` string
    (``{}`` if it has none); ``{}`` for the other formats."""
    reader = _reader(path, format)
    return reader.metadata(path) if reader is root else {}
