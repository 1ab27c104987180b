"""``JetArrays``: the in-memory form every reader returns, one chunk of jets from one source."""

from __future__ import annotations

from dataclasses import dataclass, replace

import awkward as ak
import numpy as np

from jetkd import lorentz
from jetkd.errors import InputError

FIELDS = ("px", "py", "pz", "E")

# Sanity checks of constituents (JetArrays.validate), in GeV.
DEFAULT_MAX_MOMENTUM = 1e5  # bound on |px|, |py|, |pz| and E of one constituent: 100 TeV, 7x the LHC's sqrt(s)
ENERGY_RTOL = 1e-4  # E may fall below |p| by ENERGY_RTOL * |p| + ENERGY_ATOL (rounding, not physics): float32
ENERGY_ATOL = 1e-6  # keeps 24 bits (relative 6e-8 per rounding), so a massless constituent whose E and p were
                    # rounded separately (even computed in float32 from pt, eta, phi) misses |p| by < 1e-6 relative


def check_max_momentum(max_momentum, where: str = "max_momentum") -> float:
    """``max_momentum`` (GeV) as a float if it is a positive finite number, else an :class:`InputError` at
    ``where``."""
    if isinstance(max_momentum, bool) or not isinstance(max_momentum, (int, float, np.integer, np.floating)) \
            or not np.isfinite(max_momentum) or max_momentum <= 0:
        raise InputError(where, f"expected a positive number of GeV (the bound on |px|, |py|, |pz| and E of a "
                                f"constituent), got {max_momentum!r}")
    return float(max_momentum)


def energy_below_momentum(E: np.ndarray, px: np.ndarray, py: np.ndarray, pz: np.ndarray) -> np.ndarray:
    """Bool, same shape as the components (GeV): True where ``E < |p| - (ENERGY_RTOL * |p| + ENERGY_ATOL)``,
    i.e. below the light cone by more than rounding (|p| computed in float64)."""
    p = np.sqrt(sum(np.square(np.asarray(c, np.float64)) for c in (px, py, pz)))
    return E < p * (1.0 - ENERGY_RTOL) - ENERGY_ATOL


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
                 no labels were read. When known, ``validate()`` requires labels below ``len(class_names)``.
    branches:    where the quantities were read from, for error messages: ``{"px", "py", "pz", "E", "n", "label"}``
                 -> the file's branch / dataset / column names (``n``: what sets the constituent count); None or a
                 missing key: the error names the file only.
    """

    p4: ak.Array
    label: np.ndarray
    source: str
    entry_start: int = 0
    class_names: tuple[str, ...] | None = None
    branches: dict[str, str] | None = None

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
        """(n_jets,) bool: True for a jet that cannot be scored: no constituents, a non-finite (NaN/inf) component,
        or a component beyond :data:`DEFAULT_MAX_MOMENTUM` (unphysical; it would overflow float32 features)."""
        beyond = [ak.to_numpy(ak.any(abs(self.p4[name]) > DEFAULT_MAX_MOMENTUM, axis=1)) for name in FIELDS]
        return np.logical_or.reduce([self.n_particles == 0, *self._nonfinite().values(), *beyond])

    def validate(self, require_labels: bool = True, max_momentum: float = DEFAULT_MAX_MOMENTUM) -> "JetArrays":
        """Raise :class:`InputError` naming the source, the branch and the entry for the first problem found:

        - a NaN/inf momentum component; a jet with no constituents;
        - a missing label (-1) if ``require_labels``; a label outside the declared classes (``class_names``);
        - a constituent with ``|px|``, ``|py|``, ``|pz|`` or ``E`` above ``max_momentum`` GeV, a negative or zero
          energy, or ``E < |p|`` beyond rounding (:func:`energy_below_momentum`).

        Returns ``self`` so readers can ``return chunk.validate()``. Array code on the flat constituents.
        """
        max_momentum = check_max_momentum(max_momentum)
        for name, bad in self._nonfinite().items():
            if bad.any():
                self._fail(bad, f"non-finite (NaN/inf) constituent {name}", name, "expected finite momenta")
        empty = self.n_particles == 0
        if empty.any():
            self._fail(empty, "jet with no constituents", "n", "expected at least one constituent per jet")
        if require_labels and (self.label < 0).any():
            self._fail(self.label < 0, "missing label", "label", "expected a class index for every jet "
                                                                 "(or no labels at all: --no-labels)")
        if self.class_names is not None and (self.label >= len(self.class_names)).any():
            outside = self.label >= len(self.class_names)
            self._fail(outside, "class index outside the declared classes", "label",
                       f"expected 0..{len(self.class_names) - 1} ({', '.join(self.class_names)})",
                       f"label {self.label[outside][0]}")
        self._check_constituents(max_momentum)
        return self

    def _check_constituents(self, max_momentum: float) -> None:
        """The per-constituent checks of :meth:`validate` (after the finiteness checks)."""
        E, px, py, pz = flat_components(self.p4)
        jet = np.repeat(np.arange(len(self)), self.n_particles)
        for name, comp in zip(("E", "px", "py", "pz"), (E, px, py, pz)):
            size = name if name == "E" else f"|{name}|"
            self._fail_constituents(np.abs(comp) > max_momentum, jet, comp, name,
                                    f"constituent {size} above the sanity bound of {max_momentum:g} GeV",
                                    f"expected at most {max_momentum:g} GeV (raise the bound with max_momentum / "
                                    "--max-momentum if such momenta are real)")
        positive = "expected E >= |p| > 0"
        self._fail_constituents(E < 0, jet, E, "E", "negative constituent energy", positive)
        self._fail_constituents(E == 0, jet, E, "E", "zero energy of a real constituent", positive)
        below = energy_below_momentum(E, px, py, pz)
        if below.any():
            i = np.flatnonzero(below)[0]
            p = float(np.sqrt(sum(np.float64(c[i]) ** 2 for c in (px, py, pz))))
            self._fail(self._jets_of(below, jet), "constituent energy below |p|", "E",
                       f"expected E >= |p| up to rounding ({ENERGY_RTOL:g} |p| + {ENERGY_ATOL:g} GeV)",
                       f"E = {E[i]:.7g} GeV, |p| = {p:.7g} GeV")

    def _jets_of(self, bad: np.ndarray, jet: np.ndarray) -> np.ndarray:
        """(n_jets,) bool: the jets holding a constituent flagged in ``bad`` (n_total,); ``jet`` (n_total,) is each
        constituent's jet."""
        per_jet = np.zeros(len(self), bool)
        per_jet[jet[bad]] = True
        return per_jet

    def _fail_constituents(self, bad: np.ndarray, jet: np.ndarray, values: np.ndarray, name: str, what: str,
                           expected: str) -> None:
        """Raise for the jets holding a constituent flagged in ``bad`` (n_total,), quoting the first offending
        ``values`` (n_total,) in GeV as ``name``; nothing if none is flagged."""
        if bad.any():
            self._fail(self._jets_of(bad, jet), what, name, expected, f"{name} = {values[bad][0]:.7g} GeV")

    def where(self, branch: str | None = None) -> str:
        """``source:BRANCH`` for error messages (``source`` when the branch is unknown); ``branch`` is a key of
        :attr:`branches` (``px``, ``E``, ``n``, ``label``, ...)."""
        name = (self.branches or {}).get(branch) if branch else None
        return f"{self.source}:{name}" if name else str(self.source)

    def _fail(self, bad: np.ndarray, what: str, branch: str | None = None, expected: str | None = None,
              quote: str | None = None):
        """Raise an :class:`InputError` at :meth:`where` ``(branch)`` for the jets flagged in ``bad`` (n_jets,): how
        many, the first entry, ``quote`` (the first offending value) and what was ``expected``."""
        idx = np.flatnonzero(bad) + self.entry_start
        quote = f" ({quote})" if quote else ""
        expected = f"; {expected}" if expected else ""
        raise InputError(self.where(branch), f"{what} in {len(idx)} jet(s), first at entry {idx[0]}{quote}{expected}",
                         entries=self.entries)

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
