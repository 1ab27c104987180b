"""EnergyFlow quark/gluon jet files (``energyflow.qg_jets``): ``np.savez_compressed`` archives.

Members ``X.npy`` (N, M, 4) per particle ``(pt [GeV], y, phi, pdgid)``, zero-padded (``pt == 0``), and ``y.npy``
(N,) 1 = quark, 0 = gluon (class names ``("gluon", "quark")``, None for another label member; an archive without
``y.npy`` is read with ``label_mode="optional"`` or ``"none"``). Four-vectors ``[E, px, py, pz]`` get the PDG
mass of each particle from energyflow's table (an unknown PDG id is an :class:`InputError`).

The members are streamed: the ``.npy`` header is parsed with ``numpy.lib.format`` and rows are decompressed
``step_size`` jets at a time, so a 2M-jet archive is never loaded whole. ``branch_map`` keys: ``X``, ``label``
(default ``y``): member names without ``.npy``.
"""

from __future__ import annotations

import contextlib
import math
import zipfile
from collections.abc import Iterator

import awkward as ak
import energyflow as ef
import numpy as np

from jetkd.data.arrays import JetArrays, make_p4
from jetkd.data.readers._common import (check_label_mode, check_step_size, check_validate, chunk_ranges, class_index,
                                        name_list, no_label, no_labels, options, reading, wants_labels)
from jetkd.errors import InputError

DEFAULTS = {"X": "X", "label": "y"}
CLASS_NAMES = ("gluon", "quark")  # of the default label: 0 = gluon, 1 = quark


def sniff(members: list[str]) -> bool:
    """Whether a zip archive's member names are those of an EnergyFlow jets file (``X.npy``; ``y.npy`` may be
    absent from a file without labels)."""
    return "X.npy" in members


class _Member:
    """A ``.npy`` member of an open zip archive, read sequentially row by row."""

    def __init__(self, path: str, zf: zipfile.ZipFile, name: str):
        self.path, self.name = path, f"{name}.npy"
        if self.name not in zf.namelist():
            raise InputError(path, f"no array {self.name!r} in the npz; members: {name_list(zf.namelist())}")
        with reading(path, what=f"cannot read the header of {self.name}"):
            self.fp = zf.open(self.name)
            version = np.lib.format.read_magic(self.fp)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            self.shape, fortran_order, self.dtype = read_header(self.fp)
        if self.dtype.hasobject or fortran_order or not self.shape:
            raise InputError(path, f"{self.name} must be a C-ordered numeric array, got shape {self.shape}, dtype "
                                   f"{self.dtype}, fortran_order={fortran_order}")
        self.row_bytes = self.dtype.itemsize * math.prod(self.shape[1:])

    def __len__(self) -> int:
        return int(self.shape[0])

    def read(self, n: int, entries: tuple[int, int]) -> np.ndarray:
        """The next ``n`` rows, shape ``(n, *shape[1:])``."""
        want = n * self.row_bytes
        with reading(self.path, entries, what=f"cannot decompress {self.name}"):
            parts, got = [], 0
            while got < want:
                part = self.fp.read(want - got)
                if not part:
                    break
                parts.append(part)
                got += len(part)
        if got < want:
            raise InputError(self.path, f"{self.name} ends early: expected {self.shape[0]} rows", entries=entries)
        return np.frombuffer(b"".join(parts), dtype=self.dtype).reshape((n, *self.shape[1:]))


@contextlib.contextmanager
def _members(path: str, opts: dict, branch_map, label_mode: str):
    """Yield the ``(X, label)`` members of the archive, with shapes checked; ``label`` is None when
    :func:`wants_labels` says the labels are not read."""
    with reading(path, what="cannot open the npz (zip) archive"):
        zf = zipfile.ZipFile(path)
    with zf:
        x = _Member(path, zf, opts["X"])
        if len(x.shape) != 3 or x.shape[2] < 4:
            raise InputError(path, f"{x.name} must have shape (n_jets, max_particles, 4) of (pt, y, phi, pid), got {x.shape}")
        read = wants_labels(label_mode, "label" in (branch_map or {}), f"{opts['label']}.npy" in zf.namelist())
        y = _Member(path, zf, opts["label"]) if read else None
        if y is not None and y.shape != (len(x),):
            raise InputError(path, f"{y.name} must have shape ({len(x)},) like {x.name}, got {y.shape}")
        yield x, y


def count(path, branch_map=None, labels=None, label_mode: str = "required") -> int:
    """Number of jets, from the ``.npy`` header of the ``X`` member (nothing is decompressed beyond it)."""
    path, opts = str(path), options(branch_map, DEFAULTS, "efqg")
    mode = check_label_mode(label_mode)
    no_labels(labels, path, "efqg", opts["label"])
    with _members(path, opts, branch_map, mode) as (x, _):
        return len(x)


def iterate(path, step_size: int = 100_000, branch_map=None, labels=None, label_mode: str = "required",
            validate: bool = True) -> Iterator[JetArrays]:
    """Yield :class:`JetArrays` chunks of at most ``step_size`` jets, in file order, as read (:func:`iter_jets`
    validates them; ``validate`` is taken for the readers' common signature)."""
    path, step = str(path), check_step_size(step_size)
    opts = options(branch_map, DEFAULTS, "efqg")
    mode, validate = check_label_mode(label_mode), check_validate(validate)
    no_labels(labels, path, "efqg", opts["label"])
    with _members(path, opts, branch_map, mode) as (x, y):
        names = CLASS_NAMES if y is not None and opts["label"] == DEFAULTS["label"] else None
        branches = {**dict.fromkeys(("px", "py", "pz", "E", "n"), opts["X"]), "label": opts["label"]}
        for start, stop in chunk_ranges(len(x), step):
            entries = (start, stop - 1)
            ptyphipid = x.read(stop - start, entries)[..., :4]
            label = no_label(stop - start) if y is None else y.read(stop - start, entries)
            label = class_index(label, path, entries, opts["label"])
            yield JetArrays(_p4(path, entries, ptyphipid), label, path, start, names, branches)


def _p4(path: str, entries, ptyphipid: np.ndarray) -> ak.Array:
    """Jagged four-vectors from ``(n, M, 4)`` ``(pt, y, phi, pid)``, dropping padding (``pt == 0``)."""
    keep = ptyphipid[..., 0] != 0
    real = ptyphipid[keep].astype(np.float64)
    masses = _masses(path, entries, real[:, 3])
    p4 = ef.p4s_from_ptyphims(np.column_stack([real[:, 0], real[:, 1], real[:, 2], masses]))
    counts = keep.sum(axis=1)
    E, px, py, pz = (ak.unflatten(p4[:, k], counts) for k in range(4))
    return make_p4(px, py, pz, E)


def _masses(path: str, entries, pids: np.ndarray) -> np.ndarray:
    """PDG masses (GeV) of ``pids`` from energyflow's table, looked up once per distinct ``|id|``.

    Distinct ids come from a ``bincount`` when they are small (hadrons, leptons, photons), else from ``np.unique``.
    """
    bad = ~np.isfinite(pids) | (pids != np.round(pids))
    if bad.any():
        raise InputError(path, f"PDG id must be an integer, got {pids[bad][0]!r}", entries=entries)
    ids = np.abs(pids).astype(np.int64)
    if ids.size and ids.max() < 1 << 16:
        distinct = np.flatnonzero(np.bincount(ids))
        table = np.zeros(int(ids.max()) + 1)
        table[distinct] = _lookup(path, entries, distinct)
        return table[ids]
    distinct, inverse = np.unique(ids, return_inverse=True)
    return _lookup(path, entries, distinct)[inverse]


def _lookup(path: str, entries, ids: np.ndarray) -> np.ndarray:
    """``energyflow.pids2ms`` of a few distinct ids; an id missing from its table is an :class:`InputError`."""
    try:
        return np.asarray(ef.pids2ms(ids, error_on_unknown=True), dtype=np.float64)
    except KeyError:
        unknown = [int(i) for i in ids if _unknown(i)]
        raise InputError(path, f"unknown PDG id(s) {name_list(unknown)}: no mass in energyflow's particle table",
                         entries=entries) from None


def _unknown(pid: int) -> bool:
    try:
        ef.pids2ms([pid], error_on_unknown=True)
    except KeyError:
        return True
    return False
