"""``JetArrays``: the in-memory form every reader returns, one chunk of jets from one source."""

from __future__ import annotations

from dataclasses import dataclass, replace

import awkward as ak
import numpy as np

from jetkd import lorentz
from jetkd.errors import InputError

FIELDS = ("px", "py", "pz", "E")


def make_p4(px, py, pz, E) -> ak.Array:
    """Zip jagged components (GeV) into the readers' record form ``n_jets * var * {px, py, pz, E}``.

    The record is named ``Momentum4D`` so that ``vector.register_awkward()`` gives it ``.pt``, ``.eta``, ...
    Components are stored as float32.
    """
    comps = {name: ak.values_astype(arr, np.float32) for name, arr in zip(FIELDS, (px, py, pz, E))}
    return ak.zip(comps, with_name="Momentum4D")


def pad_jagged(columns: list[np.ndarray], counts: np.ndarray, width: int) -> list[np.ndarray]:
    """Flat per-constituent ``columns`` (n_total,) of consecutive jets (``counts`` (n_jets,) constituents each) as
    zero-padded (n_jets, width) arrays holding each jet's first ``width`` values (array code, no loop over jets)."""
    counts = np.asarray(counts, np.int64)
    if (counts > width).any():
        position = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
        columns = [c[position < width] for c in columns]
    real = np.arange(width) < np.minimum(counts, width)[:, None]
    out = []
    for column in columns:
        padded = np.zeros((len(counts), width), column.dtype)
        padded[real] = column
        out.append(padded)
    return out


def flat_components(p4: ak.Array) -> list[np.ndarray]:
    """``[E, px, py, pz]`` of jagged constituents as flat (n_total,) numpy arrays, jets one after the other."""
    return [ak.to_numpy(ak.flatten(p4[f], axis=1)) for f in ("E", "px", "py", "pz")]


@dataclass
class JetArrays:
    """A chunk of jets as read from one file.

    p4:          awkward ``n_jets * var * {px, py, pz, E}`` float32 in GeV, constituents in file order.
    label:       (n_jets,) int64 class index; -1 marks a jet whose label is missing or was not read
                 (rejected by ``validate()`` unless ``require_labels=False``).
    source:      path of the file the jets came from.
    entry_start: index of the first jet in that file: the chunk holds entries ``[entry_start, entry_start + n_jets)``.
    class_names: name of each class index (``class_names[label]``), when the file says; None when unknown or when
                 no labels were read.
    """

    p4: ak.Array
    label: np.ndarray
    source: str
    entry_start: int = 0
    class_names: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return len(self.label)

    @property
    def entries(self) -> tuple[int, int]:
        """``(first, last)`` entry of this chunk in its file, inclusive."""
        return self.entry_start, self.entry_start + len(self) - 1

    @property
    def n_particles(self) -> np.ndarray:
        """(n_jets,) int64 number of constituents per jet."""
        return ak.to_numpy(ak.num(self.p4, axis=1)).astype(np.int64)

    @property
    def jet_p4(self) -> np.ndarray:
        """(n_jets, 4) float64 ``[E, px, py, pz]``: E-scheme sum of the constituents."""
        return np.stack([ak.to_numpy(ak.sum(self.p4[f], axis=1)).astype(np.float64) for f in ("E", "px", "py", "pz")], -1)

    def _nonfinite(self) -> dict[str, np.ndarray]:
        """``{component: (n_jets,) bool}``: True for a jet with a NaN/inf value of that component."""
        return {name: ~ak.to_numpy(ak.all(np.isfinite(self.p4[name]), axis=1)) for name in FIELDS}

    def bad_jets(self) -> np.ndarray:
        """(n_jets,) bool: True for a jet with no constituents or any non-finite (NaN/inf) component."""
        return np.logical_or.reduce([self.n_particles == 0, *self._nonfinite().values()])

    def validate(self, require_labels: bool = True) -> "JetArrays":
        """Raise :class:`InputError` naming the source and entry range for NaN/inf momenta, jets without
        constituents, or (if ``require_labels``) missing labels (-1). Returns ``self`` so readers can
        ``return chunk.validate()``."""
        for name, bad in self._nonfinite().items():
            if bad.any():
                self._fail(bad, f"non-finite (NaN/inf) constituent {name}")
        empty = self.n_particles == 0
        if empty.any():
            self._fail(empty, "jet with no constituents")
        if require_labels and (self.label < 0).any():
            self._fail(self.label < 0, "missing label")
        return self

    def _fail(self, bad: np.ndarray, what: str):
        idx = np.flatnonzero(bad) + self.entry_start
        raise InputError(self.source, f"{what} in {len(idx)} jet(s), first at entry {idx[0]}", entries=self.entries)

    def pt_ordered(self) -> "JetArrays":
        """The same jets (same labels, source, entries, class names) with constituents sorted by decreasing pT."""
        order = ak.argsort(lorentz.pt(self.p4), axis=1, ascending=False, stable=True)
        return replace(self, p4=self.p4[order])

    def padded(self, max_particles: int) -> tuple[np.ndarray, np.ndarray]:
        """Zero-padded constituent tensor of the first ``max_particles`` constituents (in current order).

        Returns ``p4`` (n_jets, max_particles, 4) float32 ``[E, px, py, pz]`` and ``n_particles`` (n_jets,) int64
        (clipped to ``max_particles``).
        """
        cols = pad_jagged(flat_components(self.p4), self.n_particles, max_particles)
        return np.stack(cols, -1).astype(np.float32, copy=False), np.minimum(self.n_particles, max_particles)
