"""Jets to score, from wherever an analysis holds them, as padded chunks in input order.

A *source* is one of
  * a file path in any format the readers support (:mod:`jetkd.data.readers`), labelled or not;
  * an awkward array of jets as uproot returns it: a record with jagged ``part_px, part_py, part_pz,
    part_energy`` fields (or a ``part`` record field with ``px, py, pz, energy``), or a jagged record of four-vectors (fields ``px, py, pz`` and ``E``/``energy``/``e``/
    ``t``, or anything with ``vector``'s ``px, py, pz, E`` properties);
  * padded arrays (numpy or torch): ``p4`` (B, N, 4) ``[E, px, py, pz]`` GeV, or a pair ``(p4, mask)`` with
    ``mask`` (B, N) bool; without a mask, all-zero rows of ``p4`` are padding;
  * a :class:`~jetkd.data.arrays.JetArrays` chunk.

:func:`iter_padded` turns any of them into :class:`PaddedChunk` s: the leading constituents by pT, zero-padded,
with the jets that cannot be scored (no constituents, a non-finite component) flagged, never dropped, so
results stay aligned one to one with the input's entries.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

import awkward as ak
import numpy as np

from jetkd.data.arrays import JetArrays, make_p4
from jetkd.errors import InputError

COMPONENT_NAMES = ("part_px", "part_py", "part_pz", "part_energy")
ENERGY_NAMES = ("E", "energy", "e", "t")


@dataclass
class PaddedChunk:
    """Consecutive jets of one source, ready for a model.

    p4:          (B, W, 4) float32 ``[E, px, py, pz]`` GeV: each jet's leading constituents by decreasing pT,
                 zero-padded; W = min(n_max, the longest jet of the chunk), at least 1
    n_particles: (B,) int64 constituents kept per jet (0 for a jet that cannot be scored)
    ok:          (B,) bool, False for a jet with no constituents or a non-finite component
    label:       (B,) int64 class index, -1 where unknown (unlabelled inputs)
    entry_start: entry of the first jet in its source
    jets:        the chunk as read (all constituents, file order), for jet-level observables
    """

    p4: np.ndarray
    n_particles: np.ndarray
    ok: np.ndarray
    label: np.ndarray
    entry_start: int
    jets: JetArrays

    def __len__(self) -> int:
        return len(self.n_particles)

    @cached_property
    def mask(self) -> np.ndarray:
        """(B, W) bool, True for the real constituents kept."""
        return np.arange(self.p4.shape[1]) < self.n_particles[:, None]

    @cached_property
    def massive(self) -> np.ndarray:
        """(B, W) bool, constituents with a mass (:func:`jetkd.contract.massive`); False on padding."""
        from jetkd.contract import massive

        return massive(self.p4) & self.mask


def pad_leading(p4: ak.Array, n_max: int) -> tuple[np.ndarray, np.ndarray]:
    """The leading ``n_max`` constituents by pT of each jet, zero-padded.

    p4: jagged ``n_jets * var * {px, py, pz, E}`` (GeV), any constituent order. Returns ``p4`` (n_jets, W, 4)
    float32 ``[E, px, py, pz]``, W = ``min(n_max, longest jet)`` (>= 1), and ``n_particles`` (n_jets,) int64.
    Array code on the flat constituent list; the sort is skipped when the constituents are already pT-ordered.
    """
    counts = ak.to_numpy(ak.num(p4, axis=1)).astype(np.int64)
    comps = [ak.to_numpy(ak.flatten(p4[f], axis=1)).astype(np.float32, copy=False) for f in ("E", "px", "py", "pz")]
    n_jets, n_total = len(counts), int(counts.sum())
    starts = np.cumsum(counts) - counts
    jet = np.repeat(np.arange(n_jets), counts)
    pos = np.arange(n_total) - starts[jet]
    pt2 = comps[1].astype(np.float64) ** 2 + comps[2].astype(np.float64) ** 2
    if n_total > 1 and np.any((jet[1:] == jet[:-1]) & (pt2[1:] > pt2[:-1])):
        order = np.lexsort((-pt2, jet))  # by jet, then decreasing pT; stable for ties
        comps = [c[order] for c in comps]
    width = max(1, min(n_max, int(counts.max(initial=0))))
    keep = pos < width
    out = np.zeros((n_jets, width, 4), np.float32)
    for k, comp in enumerate(comps):
        out[jet[keep], pos[keep], k] = comp[keep]
    return out, np.minimum(counts, width)


def padded_chunk(jets: JetArrays, n_max: int) -> PaddedChunk:
    """A :class:`PaddedChunk` of ``jets``: the jets that cannot be scored get no constituents."""
    bad = jets.bad_jets()
    p4 = jets.p4[~bad] if bad.any() else jets.p4
    good_p4, good_n = pad_leading(p4, n_max)
    if bad.any():
        full = np.zeros((len(jets), good_p4.shape[1], 4), np.float32)
        n_particles = np.zeros(len(jets), np.int64)
        full[~bad], n_particles[~bad] = good_p4, good_n
        good_p4, good_n = full, n_particles
    return PaddedChunk(good_p4, good_n, ~bad, np.asarray(jets.label, np.int64), jets.entry_start, jets)


def iter_padded(source, n_max: int, *, step_size: int = 50_000, format: str = "auto",
                branch_map: dict | None = None, label_mode: str = "optional") -> Iterator[PaddedChunk]:
    """Stream ``source`` (see the module docstring) as :class:`PaddedChunk` s of at most ``step_size`` jets,
    in input order. Files are read with :func:`jetkd.data.readers.iter_jets` (``label_mode`` and ``branch_map``
    as there); structural problems (missing branches, truncated files) raise :class:`InputError`."""
    for jets in iter_jet_arrays(source, step_size=step_size, format=format, branch_map=branch_map,
                                label_mode=label_mode):
        yield padded_chunk(jets, n_max)


def iter_jet_arrays(source, *, step_size: int = 50_000, format: str = "auto", branch_map: dict | None = None,
                    label_mode: str = "optional") -> Iterator[JetArrays]:
    """``source`` as unvalidated :class:`JetArrays` chunks of at most ``step_size`` jets, in input order."""
    from jetkd.data.readers import iter_jets

    if isinstance(source, JetArrays):
        yield source
    elif isinstance(source, (str, os.PathLike)):
        yield from iter_jets(source, format=format, step_size=step_size, branch_map=branch_map,
                             label_mode=label_mode, validate=False)
    elif isinstance(source, ak.Array):
        jets = jets_from_awkward(source)
        for start in range(0, len(jets), step_size):
            stop = min(start + step_size, len(jets))
            yield JetArrays(jets.p4[start:stop], jets.label[start:stop], jets.source, start)
    else:
        yield jets_from_padded(source)


def jets_from_awkward(array: ak.Array, where: str = "awkward array") -> JetArrays:
    """Jets from an awkward array as uproot returns it (see the module docstring); labels unknown (-1)."""
    fields = set(array.fields)
    if "part" in fields and not set(COMPONENT_NAMES) <= fields:  # RNTuple-style record field part.{px, ...}
        array, fields = array["part"], set(array["part"].fields)
        if {"px", "py", "pz", "energy"} <= fields:
            return _jets(make_p4(array["px"], array["py"], array["pz"], array["energy"]), where)
    if set(COMPONENT_NAMES) <= fields:
        return _jets(make_p4(*(array[n] for n in COMPONENT_NAMES)), where)
    energy = next((n for n in ENERGY_NAMES if n in fields), None)
    if {"px", "py", "pz"} <= fields and energy:
        return _jets(make_p4(array["px"], array["py"], array["pz"], array[energy]), where)
    try:  # vector's Momentum4D behaviours (pt/eta/phi/mass records and the like)
        return _jets(make_p4(array.px, array.py, array.pz, array.E), where)
    except (AttributeError, TypeError, ValueError):
        pass
    raise InputError(where, f"expected jets with fields part_px, part_py, part_pz, part_energy, or a jagged record "
                            f"of four-vectors (px, py, pz, E), got fields {sorted(fields) or 'none'} "
                            f"of type {array.type}")


def _jets(p4: ak.Array, where: str) -> JetArrays:
    if p4.ndim != 2:
        raise InputError(where, f"expected one list of constituents per jet, got type {p4.type}")
    return JetArrays(p4, np.full(len(p4), -1, np.int64), where, 0)


def jets_from_padded(source, where: str = "padded jets") -> JetArrays:
    """Jets from padded arrays ``p4`` or ``(p4, mask)`` (numpy or torch); see the module docstring."""
    p4, mask = (source if isinstance(source, (tuple, list)) and len(source) == 2 else (source, None))
    p4 = _numpy(p4, where)
    if p4.ndim != 3 or p4.shape[-1] != 4:
        raise InputError(where, f"expected p4 of shape (n_jets, n_constituents, 4) [E, px, py, pz], got {p4.shape}")
    mask = (p4 != 0).any(-1) if mask is None else _numpy(mask, where).astype(bool)
    if mask.shape != p4.shape[:2]:
        raise InputError(where, f"mask must have shape {p4.shape[:2]} like p4's first two axes, got {mask.shape}")
    counts = mask.sum(1)
    comps = [ak.unflatten(p4[..., k][mask], counts) for k in (1, 2, 3, 0)]
    return _jets(make_p4(*comps), where)


def _numpy(array, where: str) -> np.ndarray:
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    try:
        return np.asarray(array)
    except (TypeError, ValueError) as err:
        raise InputError(where, f"expected an array, got {type(array).__name__} ({err})") from None
