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


class JetCache:
    """One split file of the cache, read either whole into memory or block by block from disk.

    ``rows(index)`` returns ``(p4, n_particles, label)`` numpy arrays for the given jet indices, in that order.
    With ``in_memory=False`` only the (at most two) most recent blocks of ``block_jets`` consecutive jets are
    held, which is what :class:`jetkd.data.loader.JetLoader`'s block shuffle reads.
    """

    def __init__(self, path: str | Path, *, in_memory: bool = True, block_jets: int = 65536):
        self.path = Path(path)
        try:
            self._file = h5py.File(self.path, "r")
        except (OSError, ValueError) as err:
            raise InputError(str(self.path), f"not a readable HDF5 cache file ({err.__class__.__name__}: {err})") from None
        missing = [name for name in DATASETS if name not in self._file]
        if missing:
            raise InputError(str(self.path), f"missing dataset(s) {missing}; a jetkd cache has {list(DATASETS)}")
        p4 = self._file["p4"]
        if p4.ndim != 3 or p4.shape[2] != 4:
            raise InputError(str(self.path), f"dataset p4 has shape {p4.shape}, expected (n_jets, max_particles, 4)")
        if not self._file["n_particles"].shape == self._file["label"].shape == (p4.shape[0],):
            raise InputError(str(self.path), "datasets p4, n_particles and label differ in length")
        self.n_jets, self.max_particles = p4.shape[0], p4.shape[1]
        self.attrs = dict(self._file.attrs)
        self.block_jets = block_jets
        self.in_memory = in_memory
        self._blocks: dict[int, tuple[np.ndarray, ...]] = {}
        if in_memory:
            self._data = tuple(self._file[name][()] for name in DATASETS)
            self._file.close()

    def __len__(self) -> int:
        return self.n_jets

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
            self._blocks[b] = tuple(self._file[name][lo:hi] for name in DATASETS)
        return self._blocks[b]

    def close(self) -> None:
        if not self.in_memory:
            self._file.close()
