"""Jets to score, from wherever an analysis holds them, as chunks in input order.

A *source* is one of
  * a file path in any format the readers support (:mod:`jetkd.data.readers`), labelled or not;
  * an awkward array of jets as uproot returns it: a record with jagged ``part_px, part_py, part_pz,
    part_energy`` fields (or a ``part`` record field with ``px, py, pz, energy``), or a jagged record of
    four-vectors (fields ``px, py, pz`` and ``E``/``energy``/``e``/``t``, or anything with ``vector``'s
    ``px, py, pz, E`` properties);
  * padded arrays (numpy or torch): ``p4`` (B, N, 4) ``[E, px, py, pz]`` GeV, or a pair ``(p4, mask)`` with
    ``mask`` (B, N) bool; without a mask, all-zero rows of ``p4`` are padding;
  * a :class:`~jetkd.data.arrays.JetArrays` chunk.

:func:`iter_chunks` turns any of them into :class:`JetChunk` s: each jet's leading constituents by pT, flat, with
the jets that cannot be scored (no constituents, a non-finite component) flagged, never dropped, so results stay
aligned one to one with the input's entries.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import awkward as ak
import numpy as np

from jetkd.data.arrays import JetArrays, flat_components, make_p4, pad_jagged
from jetkd.errors import InputError

COMPONENT_NAMES = ("part_px", "part_py", "part_pz", "part_energy")
ENERGY_NAMES = ("E", "energy", "e", "t")


@dataclass
class JetChunk:
    """Consecutive jets of one source, their constituents flat and ordered by decreasing pT within each jet.

    components:  ``[E, px, py, pz]``, each (n_total,) float32 in GeV: the constituents of jet 0, then of jet 1, ...
                 (none for a jet that cannot be scored)
    counts:      (B,) int64 constituents of each jet in ``components`` (0 for a jet that cannot be scored)
    ok:          (B,) bool, False for a jet with no constituents, a non-finite component or one beyond 100 TeV
    label:       (B,) int64 class index, -1 where unknown (unlabelled inputs)
    entry_start: entry of the first jet in its source
    jets:        the chunk as read (all constituents, file order), for jet-level observables
    massive:     (n_total,) bool, which constituents have a mass (:func:`jetkd.contract.massive`)
    """

    components: list[np.ndarray]
    counts: np.ndarray
    ok: np.ndarray
    label: np.ndarray
    entry_start: int
    jets: JetArrays
    massive: np.ndarray

    def __len__(self) -> int:
        return len(self.counts)

    @property
    def entries(self) -> tuple[int, int]:
        """``(first, last)`` entry of the chunk in its source, inclusive."""
        return self.entry_start, self.entry_start + len(self) - 1

    def n_massive(self, n: int) -> tuple[int, int]:
        """``(massive, all)``: numbers of constituents among each jet's leading ``n``."""
        kept = np.minimum(self.counts, n)
        cumulative = np.concatenate([[0], np.cumsum(self.massive)])
        starts = np.cumsum(self.counts) - self.counts
        return int((cumulative[starts + kept] - cumulative[starts]).sum()), int(kept.sum())

    def padded(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Zero-padded ``p4`` (B, n, 4) float32 of each jet's leading ``n`` constituents, and their counts (B,)."""
        return np.stack(pad_jagged(self.components, self.counts, n), -1), np.minimum(self.counts, n)


def jet_chunk(jets: JetArrays) -> JetChunk:
    """A :class:`JetChunk` of ``jets``: the constituents ordered by decreasing pT within each jet (array code on
    the flat list; no sort when they already come ordered, as jetkd writes them); the jets that cannot be scored
    keep none."""
    from jetkd.contract import massive

    bad = jets.bad_jets()
    p4 = jets.p4[~bad] if bad.any() else jets.p4
    counts = np.zeros(len(jets), np.int64)
    counts[~bad] = ak.to_numpy(ak.num(p4, axis=1))
    components = [c.astype(np.float32, copy=False) for c in flat_components(p4)]  # views of what was read
    pt2 = components[1] ** 2 + components[2] ** 2
    rising = pt2[1:] > pt2[:-1]
    ends = np.cumsum(counts)
    rising[ends[(ends > 0) & (ends < len(pt2))] - 1] = False  # from one jet to the next is not a rise
    if rising.any():
        order = np.lexsort((-pt2, np.repeat(np.arange(len(counts)), counts)))  # by jet, then decreasing pT; stable
        components = [c[order] for c in components]
    return JetChunk(components, counts, ~bad, np.asarray(jets.label, np.int64), jets.entry_start, jets,
                    massive(*components))


def prefetched(items: Iterator, depth: int = 1) -> Iterator:
    """``items``, produced by a background thread up to ``depth`` ahead of the consumer, so that reading and
    decompressing the next chunk (which release the GIL) overlap with scoring this one. An exception in the
    producer is raised in the consumer; leaving the loop early stops the producer."""
    import queue
    import threading

    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        buffer.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            buffer.put((done, None))
        except BaseException as err:  # handed to the consumer
            buffer.put((done, err))

    thread = threading.Thread(target=produce, name="jetkd-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, err = buffer.get()
            if err is not None:
                raise err
            if item is done:
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full buffer
            with contextlib.suppress(queue.Empty):
                buffer.get(timeout=0.1)
        thread.join()


def iter_chunks(source, *, step_size: int = 50_000, format: str = "auto",
                branch_map: dict | None = None, label_mode: str = "optional") -> Iterator[JetChunk]:
    """Stream ``source`` (see the module docstring) as :class:`JetChunk` s of at most ``step_size`` jets,
    in input order. Files are read with :func:`jetkd.data.readers.iter_jets` (``label_mode`` and ``branch_map``
    as there); structural problems (missing branches, truncated files) raise :class:`InputError`."""
    for jets in iter_jet_arrays(source, step_size=step_size, format=format, branch_map=branch_map,
                                label_mode=label_mode):
        yield jet_chunk(jets)


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
    if set(COMPONENT_NAMES) <= fields:
        return _jets(make_p4(*(array[n] for n in COMPONENT_NAMES)), where)
    if "part" in fields:  # RNTuple-style record field part.{px, py, pz, energy}
        array, fields = array["part"], set(array["part"].fields)
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
