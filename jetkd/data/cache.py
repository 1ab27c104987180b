"""The constituent cache: one HDF5 file per split, laid out for fast reading by the trainer.

Layout of ``<split>.h5``
    p4           (n_jets, max_particles, 4) float32  ``[E, px, py, pz]`` in GeV, pT-ordered, zero-padded
    n_particles  (n_jets,) int32                     real constituents per jet (<= max_particles)
    label        (n_jets,) int64                     class index (-1: unlabelled, ``jetkd convert --no-labels``)
    source       (n_jets,) int32                     index of the jet's input file in ``sources`` (optional)
    entry        (n_jets,) int64                     the jet's entry in that file (optional)
    attrs        format_version, split, max_particles, n_jets, seed, sources (JSON list), formats (JSON list),
                 inputs (JSON: file, format, jets, generator settings per input), labelled, class_names (JSON list
                 or absent when the labels have no names)

Datasets are chunked by rows and uncompressed: decompression would cap read speed well below what a
GPU consumes, and the files are a cache, not an archive.

:class:`JetCache` checks a file when it opens it (a bad cache is an :class:`InputError` naming the file, the dataset
and the entry, never NaN in training or a wrong AUC): at least one jet; ``n_particles`` in ``[1, max_particles]``;
labels in ``[0, n_class)`` in a labelled cache and all -1 in an unlabelled one; finite ``p4``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np

from jetkd.errors import InputError

FORMAT_VERSION = 2  # 2: datasets source and entry, attrs inputs, labelled, class_names (1 is read as well)
DATASETS = ("p4", "n_particles", "label")
CHUNK_JETS = 1024


class CacheWriter:
    """Writes one split file of known size, row block by row block, to a temporary name.

    ``commit()`` renames it into place; ``abort()`` (or leaving a ``with`` block by an exception) removes it,
    so a failed conversion leaves no partial file behind.
    """

    def __init__(self, path: str | Path, n_jets: int, max_particles: int, attrs: dict):
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        self.n_jets, self.filled = n_jets, 0
        self.file = h5py.File(self.tmp, "w")
        chunk = max(1, min(CHUNK_JETS, n_jets))
        self.file.create_dataset("p4", (n_jets, max_particles, 4), np.float32, chunks=(chunk, max_particles, 4))
        self.file.create_dataset("n_particles", (n_jets,), np.int32, chunks=(chunk,))
        self.file.create_dataset("label", (n_jets,), np.int64, chunks=(chunk,))
        self.file.create_dataset("source", (n_jets,), np.int32, chunks=(chunk,))
        self.file.create_dataset("entry", (n_jets,), np.int64, chunks=(chunk,))
        self.file.attrs.update(format_version=FORMAT_VERSION, max_particles=max_particles, n_jets=n_jets)
        self.set_attrs(**attrs)

    def set_attrs(self, **attrs) -> None:
        """Store attributes (lists and dicts as JSON; None values are left out)."""
        self.file.attrs.update({k: json.dumps(v) if isinstance(v, (list, dict)) else v
                                for k, v in attrs.items() if v is not None})

    def append(self, p4: np.ndarray, n_particles: np.ndarray, label: np.ndarray, source: np.ndarray | None = None,
               entry: np.ndarray | None = None) -> None:
        """Append jets: p4 (k, max_particles, 4) float32, n_particles (k,), label (k,); source (k,) and entry (k,)
        say where each came from (default: -1, unknown)."""
        lo, hi = self.filled, self.filled + len(label)
        if hi > self.n_jets:
            raise RuntimeError(f"{self.path}: more jets appended than the {self.n_jets} announced")
        self.file["p4"][lo:hi] = p4
        self.file["n_particles"][lo:hi] = n_particles
        self.file["label"][lo:hi] = label
        self.file["source"][lo:hi] = -1 if source is None else source
        self.file["entry"][lo:hi] = -1 if entry is None else entry
        self.filled = hi

    def commit(self) -> Path:
        if self.filled != self.n_jets:
            raise RuntimeError(f"{self.path}: {self.filled} jets written, {self.n_jets} announced")
        self.file.close()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> "CacheWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


def decode_attrs(attrs) -> dict:
    """A cache file's attributes as plain Python values: the JSON that :meth:`CacheWriter.set_attrs` wrote for lists
    and dicts decoded, numpy scalars and arrays as Python numbers and lists."""
    out = {}
    for key, value in dict(attrs).items():
        if isinstance(value, bytes):
            value = value.decode()
        if isinstance(value, str) and value[:1] in "[{":
            try:
                value = json.loads(value)
            except ValueError:
                pass
        out[key] = value.item() if isinstance(value, np.generic) else value.tolist() if isinstance(value, np.ndarray) else value
    return out


P4_CHECK_ROWS = 16384  # jets per np.isfinite pass over p4 (bounds the temporary to 32 MB at 128 constituents)
SCAN_ROWS = 1 << 22  # jets per read of n_particles / label when a streamed cache is checked


class JetCache:
    """One split file of the cache, read either whole into memory or block by block from disk.

    ``rows(index)`` returns ``(p4, n_particles, label)`` numpy arrays for the given jet indices, in that order.
    With ``in_memory=False`` only the (at most two) most recent blocks of ``block_jets`` consecutive jets are
    held, which is what :class:`jetkd.data.loader.JetLoader`'s block shuffle reads.

    Opening checks the file (see the module docstring) and raises :class:`InputError` for a bad one. Cost: in memory,
    one pass over the arrays already read (``np.isfinite`` over p4: ~0.1 s per million jets of 128 constituents).
    Streamed, opening reads ``n_particles`` and ``label`` only (12 bytes per jet); each block of ``p4`` is checked
    the first time it is read, so nothing is read twice and a non-finite momentum stops the first pass at its block,
    before any of its rows is returned. :meth:`check_momenta` checks all of p4 up front (one extra read of it).

    class_names: the class names the file declares (None without); labelled: whether it holds labels (attribute
    ``labelled``; caches without it: whether any label is >= 0); n_class: see :attr:`n_class`.
    """

    def __init__(self, path: str | Path, *, in_memory: bool = True, block_jets: int = 65536):
        self.path = Path(path)
        try:
            self._file = h5py.File(self.path, "r")
        except (OSError, ValueError) as err:
            raise InputError(str(self.path), f"not a readable HDF5 cache file ({err.__class__.__name__}: {err})") from None
        self.in_memory = in_memory
        try:
            self._open(block_jets)
        except BaseException:
            self._file.close()
            raise
        if in_memory:
            self._file.close()

    def _open(self, block_jets: int) -> None:
        """Check the layout, read (in memory) or index (streamed) the datasets, and check their values."""
        missing = [name for name in DATASETS if name not in self._file]
        if missing:
            raise InputError(str(self.path), f"missing dataset(s) {missing}; a jetkd cache has {list(DATASETS)}")
        p4 = self._file["p4"]
        if p4.ndim != 3 or p4.shape[2] != 4:
            raise InputError(str(self.path), f"dataset p4 has shape {p4.shape}, expected (n_jets, max_particles, 4)")
        if not self._file["n_particles"].shape == self._file["label"].shape == (p4.shape[0],):
            raise InputError(str(self.path), "datasets p4, n_particles and label differ in length")
        self.n_jets, self.max_particles = p4.shape[0], p4.shape[1]
        if self.n_jets == 0:
            raise InputError(str(self.path), "0 jets; expected a split with at least one jet (convert more jets or "
                                             "give this split a larger --split fraction)")
        self.attrs = dict(self._file.attrs)
        info = decode_attrs(self.attrs)
        names = info.get("class_names")
        self.class_names: tuple[str, ...] | None = tuple(map(str, names)) if isinstance(names, list) else None
        self.block_jets = block_jets
        self._blocks: dict[int, tuple[np.ndarray, ...]] = {}
        self._checked: set[int] = set()  # streamed blocks whose p4 has been checked
        if self.in_memory:
            self._data = tuple(self._file[name][()] for name in DATASETS)
        self._check_counts_and_labels(info.get("labelled"))
        if self.in_memory:
            check_p4(self._data[0], 0, self.path)

    def _columns(self, name: str):
        """``(start, values)`` slices of the 1-D dataset ``name`` (the whole array in memory)."""
        if self.in_memory:
            yield 0, self._data[DATASETS.index(name)]
            return
        for start in range(0, self.n_jets, SCAN_ROWS):
            yield start, self._file[name][start : start + SCAN_ROWS]

    def _first(self, name: str, bad) -> tuple[int, int]:
        """``(entry, value)`` of the first row of dataset ``name`` where ``bad(values)`` is True."""
        for start, values in self._columns(name):
            hit = np.flatnonzero(bad(values))
            if hit.size:
                return start + int(hit[0]), int(values[hit[0]])
        raise AssertionError(f"no row of {name} is bad")  # only called after a range check found one

    def _check_counts_and_labels(self, labelled: bool | None) -> None:
        """``n_particles`` in [1, max_particles]; labels in [0, n_class) if labelled, -1 if not (one pass over the
        two 1-D datasets; a second one only to name the first bad entry)."""
        lo_n = lo_label = np.iinfo(np.int64).max
        hi_n = hi_label = np.iinfo(np.int64).min
        for (_, n), (_, label) in zip(self._columns("n_particles"), self._columns("label")):
            lo_n, hi_n = min(lo_n, int(n.min())), max(hi_n, int(n.max()))
            lo_label, hi_label = min(lo_label, int(label.min())), max(hi_label, int(label.max()))
        if lo_n < 1 or hi_n > self.max_particles:
            entry, value = self._first("n_particles", lambda n: (n < 1) | (n > self.max_particles))
            raise InputError(f"{self.path}:n_particles", f"entry {entry}: {value} constituents; expected "
                                                         f"1..{self.max_particles} (the file's max_particles)")
        self.labelled = bool(hi_label >= 0) if labelled is None else bool(labelled)
        self._label_max = hi_label
        if not self.labelled:
            if lo_label != -1 or hi_label != -1:
                entry, value = self._first("label", lambda label: label != -1)
                raise InputError(f"{self.path}:label", f"entry {entry}: label {value} in an unlabelled cache "
                                                       "(labelled = false); expected -1 for every jet")
            return
        if lo_label < 0:
            entry, value = self._first("label", lambda label: label < 0)
            raise InputError(f"{self.path}:label", f"entry {entry}: label {value} in a labelled cache; expected a "
                                                   f"class index in [0, {self.n_class}) (-1, no label, only in a "
                                                   "cache written by `jetkd convert --no-labels`)")
        if self.class_names is not None and hi_label >= len(self.class_names):
            k = len(self.class_names)
            entry, value = self._first("label", lambda label: label >= k)
            raise InputError(f"{self.path}:label", f"entry {entry}: label {value} outside the {k} declared classes "
                                                   f"({', '.join(self.class_names)}); expected 0..{k - 1}")

    def __len__(self) -> int:
        return self.n_jets

    @property
    def n_class(self) -> int | None:
        """Number of classes: that of the declared ``class_names``, else the largest label + 1; None for an
        unlabelled cache without class names."""
        if self.class_names is not None:
            return len(self.class_names)
        return self._label_max + 1 if self.labelled else None

    @property
    def labels(self) -> np.ndarray:
        """(n_jets,) int64 class indices."""
        return self._data[2] if self.in_memory else self._file["label"][()]

    def require_labels(self) -> "JetCache":
        """``self``, or an :class:`InputError` naming the file if it holds unlabelled jets (label -1, from
        ``jetkd convert --no-labels``): training and evaluation need labels."""
        unlabelled = int((self.labels < 0).sum())
        if unlabelled:
            raise InputError(str(self.path), f"{unlabelled} of {self.n_jets} jets have no label (-1, converted with "
                                             "--no-labels); training and evaluation need a labelled cache")
        return self

    def require_classes(self, n_class: int, where: str = "the model") -> "JetCache":
        """``self``, or an :class:`InputError` naming the file if its labels do not fit ``n_class`` classes (the
        model's outputs; ``where`` names what sets them, e.g. ``"model.n_class"``): a label >= ``n_class``, or
        declared ``class_names`` of another count. Call after :meth:`require_labels`."""
        if self.labelled and self._label_max >= n_class:
            raise InputError(f"{self.path}:label", f"labels reach class index {self._label_max} but {where} has "
                                                   f"{n_class} classes; expected labels in [0, {n_class})")
        if self.class_names is not None and len(self.class_names) != n_class:
            raise InputError(f"{self.path}:label", f"the cache declares {len(self.class_names)} classes "
                                                   f"({', '.join(self.class_names)}) but {where} has {n_class}; "
                                                   "expected the same classes")
        return self

    def check_momenta(self) -> "JetCache":
        """``self`` after checking every block of a streamed cache's p4 now (one extra read of p4; an in-memory
        cache was checked when opened)."""
        if self.in_memory:
            return self
        for b in range(-(-self.n_jets // self.block_jets)):
            if b not in self._checked:
                lo, hi = b * self.block_jets, min((b + 1) * self.block_jets, self.n_jets)
                check_p4(self._file["p4"][lo:hi], lo, self.path)
                self._checked.add(b)
        return self

    def rows(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``p4`` (k, max_particles, 4) float32, ``n_particles`` (k,) int32, ``label`` (k,) int64 for jets ``index``."""
        index = np.asarray(index, dtype=np.int64)
        if self.in_memory:
            return tuple(a[index] for a in self._data)
        block_of = index // self.block_jets
        if block_of.size and block_of.min() == block_of.max():  # common case: the batch sits in one block
            data = self._block(int(block_of[0]))
            local = index - block_of[0] * self.block_jets
            return tuple(a[local] for a in data)
        out = [np.empty((len(index),) + a.shape[1:], a.dtype) for a in self._block(int(block_of[0]))]
        for b in np.unique(block_of):
            sel = block_of == b
            for dst, src in zip(out, self._block(int(b))):
                dst[sel] = src[index[sel] - b * self.block_jets]
        return tuple(out)

    def _block(self, b: int) -> tuple[np.ndarray, ...]:
        if b not in self._blocks:
            if len(self._blocks) >= 2:
                self._blocks.pop(next(iter(self._blocks)))
            lo, hi = b * self.block_jets, min((b + 1) * self.block_jets, self.n_jets)
            block = tuple(self._file[name][lo:hi] for name in DATASETS)
            if b not in self._checked:
                check_p4(block[0], lo, self.path)
                self._checked.add(b)
            self._blocks[b] = block
        return self._blocks[b]

    def close(self) -> None:
        if not self.in_memory:
            self._file.close()


def check_p4(p4: np.ndarray, start: int, path) -> None:
    """Raise :class:`InputError` naming ``path``, dataset p4 and the entry if ``p4`` (k, max_particles, 4) float32
    (GeV; rows ``start ..`` of the file) holds a NaN or inf, padding included; ``P4_CHECK_ROWS`` rows per pass."""
    for lo in range(0, len(p4), P4_CHECK_ROWS):
        finite = np.isfinite(p4[lo : lo + P4_CHECK_ROWS]).all(axis=(1, 2))
        if not finite.all():
            row = lo + int(np.flatnonzero(~finite)[0])
            particle = int(np.flatnonzero(~np.isfinite(p4[row]).all(axis=1))[0])
            raise InputError(f"{path}:p4", f"entry {start + row}, constituent {particle}: {p4[row, particle].tolist()}; "
                                           "expected finite [E, px, py, pz]")
