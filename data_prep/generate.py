"""Generate top-quark and QCD jets with Pythia 8 into a JetClass-style ROOT file.

The recipe follows the Top Quark Tagging Reference dataset (arXiv:1902.09914), at generator level:

* 14 TeV pp collisions with Pythia 8 (default showers, multi-parton interactions and hadronization);
  signal: ttbar (``Top:gg2ttbar``, ``Top:qqbar2ttbar``) with both W bosons decaying to quarks;
  background: QCD dijets (``HardQCD:all``). Both samples use the pTHat window :data:`PTHAT_WINDOW`.
* Jets: all visible final-state particles (everything but neutrinos and other invisible particles) are
  clustered with **FastJet anti-kT, R = 0.8, E-scheme recombination**. The clustering runs in C++ through
  Pythia's ``SlowJet`` interface to fjcore (FastJet's own core, shipped inside Pythia), so only the
  constituents of candidate jets ever cross into Python. ``tests/test_generate.py`` checks, event by
  event, that the ``fastjet`` Python package finds the same hard jets with the same constituents.
* Constituents: up to :data:`MAX_PARTICLES` per jet, ordered by decreasing pT, stored as float32
  ``(E, px, py, pz)`` in GeV; ``massless=True`` sets ``E = |p|``. The jet four-vector is the E-scheme
  sum of the *stored* constituents, and the selection is applied to that sum, so both "the constituents
  sum to the jet" and "every jet passes the selection" hold exactly in the file.
* Selection: ``550 < pT < 650 GeV`` and ``|eta| < 2``. A top jet must contain its top: the top quark and its
  three decay quarks (b and the two quarks from the W, last copies before decay / hadronization) all lie
  within Delta R < 0.8 of the jet axis, with Delta R measured in **pseudorapidity-azimuth** (eta, phi),
  the same variables as the |eta| cut. A QCD jet is any jet of the QCD sample in the window. Every accepted
  jet of an event is kept (usually one or two).
* Output: exactly ``n_jets // 2`` top jets and ``n_jets - n_jets // 2`` QCD jets (an odd ``n_jets`` gives one
  more QCD jet than top jets), shuffled with a permutation seeded by ``seed``; a TTree ``tree`` with the
  JetClass branches ``part_px, part_py, part_pz, part_energy`` (jagged float32), ``jet_pt, jet_eta, jet_phi,
  jet_energy, jet_mass`` (float32), ``jet_nparticles`` (int32, also the counter of the jagged branches)
  and ``label_QCD, label_Tbqq`` (int32 0/1); next to it a string (TObjString) ``jetkd_provenance`` holding the
  generation settings as JSON (see :func:`provenance`; read back with ``jetkd.data.readers.file_metadata``).

Work is spread over ``workers`` processes ("spawn" context); each gets a fixed share of the jets of each
class and its own Pythia seeds derived from ``(seed, worker, class)``, so the same ``seed``, ``n_jets`` and
``workers`` reproduce the file bit for bit.

Example::

    from data_prep.generate import generate
    generate("jets.root", n_jets=10_000, seed=1)
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import multiprocessing
import os
import pathlib
import queue as queue_module
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pythia8mc

from jetkd import lorentz
from jetkd.errors import InputError

# ----------------------------------------------------------------------------- configuration

ECM = 14000.0  # GeV
JET_R = 0.8
PT_MIN, PT_MAX = 550.0, 650.0  # GeV, jet selection (open interval)
ETA_MAX = 2.0  # jet |eta| < ETA_MAX
MATCH_R = 0.8  # top and decay quarks within this (eta, phi) distance of the jet axis
MAX_PARTICLES = 200

# pTHat window, measured (seed 5, 3000 ttbar + 6000 QCD events over pTHat in [350, 1000] GeV): jets that pass
# the selection (matched, for tops) come from pTHat with median ~570 GeV and a long low tail (initial-state
# recoil lifts the jet above the hard scale). Restricting the hard process to [500, 700] GeV keeps 76% (top)
# / 72% (QCD) of the jets the wide window puts into the selection while raising the yield from 0.09 / 0.13
# to 0.48 / 0.65 accepted jets per event, ~5x the jets per CPU second; [450, 750] keeps 87% / 85% at
# 0.28 / 0.40 jets per event, and [550, 650] only 54% / 49% at 0.79 / 1.07. Above 700 GeV lies < 3%.
PTHAT_WINDOW = (500.0, 700.0)  # GeV

# Candidate jets whose constituents are fetched: the full fjcore jet within these loose bounds. The stored jet
# differs from it only by the softest constituents dropped beyond MAX_PARTICLES (jets here have < 200 almost
# always: at most 178 in 3000 jets), so no jet that passes the final selection is lost to this prefilter.
_PREFILTER_PT = (PT_MIN - 10.0, PT_MAX + 10.0)
_PREFILTER_ETA = ETA_MAX + 0.1
_SLOWJET_ETA_MAX = 25.0  # SlowJet's default: no particle |eta| cut (applied only for etaMax <= 20)
_SLOWJET_SELECT_VISIBLE = 2  # final-state particles except invisible ones (neutrinos)
_SLOWJET_TRUE_MASSES = 2
_MAX_FAILED_NEXT = 100  # consecutive failed Pythia events before giving up

SIGNAL, BACKGROUND = "top", "qcd"
CLASSES = (SIGNAL, BACKGROUND)

COMMON_SETTINGS = (
    "Beams:idA = 2212",
    "Beams:idB = 2212",
    f"Beams:eCM = {ECM}",
    f"PhaseSpace:pTHatMin = {PTHAT_WINDOW[0]}",
    f"PhaseSpace:pTHatMax = {PTHAT_WINDOW[1]}",
    "Print:quiet = on",
    "Next:numberCount = 0",
    "Random:setSeed = on",
)

PROCESS_SETTINGS = {
    SIGNAL: (
        "Top:gg2ttbar = on",
        "Top:qqbar2ttbar = on",
        "24:onMode = off",
        "24:onIfAny = 1 2 3 4 5",  # W -> quarks only: all-hadronic ttbar
    ),
    BACKGROUND: ("HardQCD:all = on",),
}

_SEED_MAX = 900_000_000  # Pythia's Random:seed range is [1, 900000000]
_WRITE_CHUNK = 100_000  # jets per uproot basket


class Jet(NamedTuple):
    """One accepted jet.

    constituents: (n, 4) float32 ``[E, px, py, pz]`` in GeV, pT-descending, ``n <= MAX_PARTICLES``.
    p4: (4,) float64, the E-scheme sum of ``constituents`` (as stored) in GeV.
    """

    constituents: np.ndarray
    p4: np.ndarray


# ----------------------------------------------------------------------------- Pythia and the jet finder


def pythia_seed(seed: int, worker: int, kind: str) -> int:
    """Pythia ``Random:seed`` in ``[1, 900000000]`` for one worker and process class, derived from ``seed``."""
    state = np.random.SeedSequence([seed, worker, CLASSES.index(kind)]).generate_state(1, dtype=np.uint64)[0]
    return int(state % _SEED_MAX) + 1


def make_pythia(kind: str, seed: int):
    """An initialised, quiet Pythia 8 for ``kind`` (``"top"`` or ``"qcd"``) with ``Random:seed = seed``."""
    if not 1 <= seed <= _SEED_MAX:
        raise ValueError(f"Pythia seed must be in [1, {_SEED_MAX}], got {seed}")
    pythia = pythia8mc.Pythia("", False)
    for line in (*COMMON_SETTINGS, *PROCESS_SETTINGS[kind], f"Random:seed = {seed}"):
        if not pythia.readString(line):
            raise RuntimeError(f"Pythia rejected the setting {line!r}")
    if not pythia.init():
        raise RuntimeError(f"Pythia initialisation failed for the {kind} process")
    return pythia


def make_jet_finder():
    """Anti-kT R = 0.8 on visible final-state particles with true masses, clustered by fjcore in C++.

    Reports jets above the lower candidate pT bound; ``analyze(event)`` then ``p(j)``, ``constituents(j)``.
    """
    return pythia8mc.SlowJet(
        -1, JET_R, _PREFILTER_PT[0], _SLOWJET_ETA_MAX, _SLOWJET_SELECT_VISIBLE, _SLOWJET_TRUE_MASSES
    )


_fjcore_banner_shown = False


@contextlib.contextmanager
def _stdout_to_devnull() -> Iterator[None]:
    """Send file descriptor 1 to /dev/null (C++ output included) for the duration of the block."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no file descriptor 1: nothing to silence
        yield
        return
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def cluster(finder, event) -> None:
    """Run the jet finder on ``event``; the first call in a process swallows fjcore's banner."""
    global _fjcore_banner_shown
    if _fjcore_banner_shown:
        finder.analyze(event)
        return
    with _stdout_to_devnull():
        finder.analyze(event)
    _fjcore_banner_shown = True


# ----------------------------------------------------------------------------- per-event work


def particles_p4(event, indices) -> np.ndarray:
    """(n, 4) float64 ``[E, px, py, pz]`` in GeV of the event-record entries ``indices``."""
    rows = [(p.e(), p.px(), p.py(), p.pz()) for p in map(event.__getitem__, indices)]
    return np.array(rows, dtype=np.float64).reshape(-1, 4)


def top_partons(pythia) -> list[np.ndarray]:
    """Per top quark, (4, 4) float64 ``[E, px, py, pz]`` (GeV) of the top, its b and the two quarks from its W.

    The tops are found in the small hard-process record (same indices in the event record), then followed to
    their last copies in the event record; likewise the decay quarks are their last copies before hadronization.
    """
    process, event = pythia.process, pythia.event
    partons = []
    for i in range(process.size()):
        if process[i].idAbs() != 6 or process[i].status() != -22:
            continue
        if event[i].id() != process[i].id():
            raise RuntimeError(f"event record entry {i} is not the hard-process top {process[i].id()}")
        top = event[event[i].iBotCopyId()]
        chain = [top.index()]
        for d in top.daughterList():
            last = event[event[d].iBotCopyId()]
            if last.idAbs() == 24:
                chain += [event[q].iBotCopyId() for q in last.daughterList() if event[q].isQuark()]
            elif last.isQuark():
                chain.insert(1, last.index())
        if len(chain) != 4:
            raise RuntimeError(f"could not follow the decay of the top at event entry {top.index()}: {chain}")
        partons.append(particles_p4(event, chain))
    return partons


def stored_constituents(p4: np.ndarray, *, massless: bool, max_particles: int = MAX_PARTICLES) -> np.ndarray:
    """The constituents as stored: float32, ``E = |p|`` if ``massless``, pT-descending, at most ``max_particles``.

    p4: (n, 4) ``[E, px, py, pz]`` in GeV. Returns (m, 4) float32, ``m = min(n, max_particles)``.
    Ordering and ``|p|`` are computed from the float32 values, so they hold exactly for what is written.
    """
    c = p4.astype(np.float32)
    if massless:
        c[:, 0] = lorentz.p_abs(c.astype(np.float64))
    order = np.argsort(-lorentz.pt(c.astype(np.float64)), kind="stable")[:max_particles]
    return c[order]


def passes_selection(jet_p4: np.ndarray) -> bool:
    """``550 < pT < 650 GeV`` and ``|eta| < 2`` for the (4,) jet four-vector, in float64 and after float32 rounding."""
    pt, eta = lorentz.pt(jet_p4), lorentz.eta(jet_p4)
    return all(
        PT_MIN < float(dtype(pt)) < PT_MAX and abs(float(dtype(eta))) < ETA_MAX for dtype in (np.float64, np.float32)
    )


def contains_top(jet_p4: np.ndarray, partons: list[np.ndarray]) -> bool:
    """Whether all four partons of some top (``top_partons``) lie within Delta R(eta, phi) < 0.8 of the jet axis."""
    jet_eta, jet_phi = lorentz.eta(jet_p4), lorentz.phi(jet_p4)
    for quarks in partons:
        delta_r = np.hypot(lorentz.eta(quarks) - jet_eta, lorentz.wrap_phi(lorentz.phi(quarks) - jet_phi))
        if bool(np.all(delta_r < MATCH_R)):
            return True
    return False


def _is_candidate(finder, j: int) -> bool:
    """Loose pT / |eta| bounds on the full fjcore jet ``j``, before any constituent is fetched."""
    v = finder.p(j)
    return _PREFILTER_PT[0] < v.pT() < _PREFILTER_PT[1] and abs(v.eta()) < _PREFILTER_ETA


def process_event(pythia, finder, kind: str, *, massless: bool = False) -> list[Jet]:
    """Cluster the current ``pythia.event`` and return its accepted jets (the generator's per-event work).

    kind: ``"top"`` (jets must contain a top, see :func:`contains_top`) or ``"qcd"``.
    """
    event = pythia.event
    cluster(finder, event)
    jets, partons = [], None
    for j in range(finder.sizeJet()):
        if not _is_candidate(finder, j):
            continue
        constituents = stored_constituents(particles_p4(event, finder.constituents(j)), massless=massless)
        p4 = lorentz.jet_axis(constituents.astype(np.float64))
        if not passes_selection(p4):
            continue
        if kind == SIGNAL:
            partons = top_partons(pythia) if partons is None else partons
            if not contains_top(p4, partons):
                continue
        jets.append(Jet(constituents, p4))
    return jets


# ----------------------------------------------------------------------------- one worker


@dataclass(frozen=True)
class Task:
    """What one worker process generates: ``n_jets[kind]`` jets of each class with seed ``seeds[kind]``."""

    worker: int
    n_jets: dict[str, int]
    seeds: dict[str, int]
    massless: bool


def pack_jets(jets: list[Jet]) -> dict[str, np.ndarray]:
    """Flat arrays of a list of jets: ``constituents`` (sum n, 4) float32, ``counts`` (N,) int32, ``p4`` (N, 4) float64."""
    return {
        "constituents": np.concatenate([j.constituents for j in jets]) if jets else np.zeros((0, 4), np.float32),
        "counts": np.array([len(j.constituents) for j in jets], dtype=np.int32),
        "p4": np.array([j.p4 for j in jets], dtype=np.float64).reshape(-1, 4),
    }


def generate_class(kind: str, n_jets: int, seed: int, *, massless: bool, report: Callable[[int], None]) -> dict:
    """Generate exactly ``n_jets`` accepted jets of ``kind`` with one Pythia; calls ``report(k)`` for new jets.

    Returns :func:`pack_jets` arrays plus ``n_events`` (events generated).
    """
    pythia, finder = make_pythia(kind, seed), make_jet_finder()
    jets: list[Jet] = []
    n_events = failed = 0
    while len(jets) < n_jets:
        if not pythia.next():
            failed += 1
            if failed >= _MAX_FAILED_NEXT:
                raise RuntimeError(f"Pythia failed to generate {failed} {kind} events in a row")
            continue
        failed = 0
        n_events += 1
        new = process_event(pythia, finder, kind, massless=massless)[: n_jets - len(jets)]
        if new:
            jets += new
            report(len(new))
    return {**pack_jets(jets), "n_events": n_events}


def run_task(task: Task, report: Callable[[int], None]) -> dict[str, dict]:
    """Both classes of one worker: ``{kind: generate_class(...)}`` for the classes with jets to make."""
    return {
        kind: generate_class(kind, n, task.seeds[kind], massless=task.massless, report=report)
        for kind, n in task.n_jets.items()
        if n > 0
    }


def _worker_main(task: Task, messages) -> None:
    """Entry point of a worker process: results and progress go to the ``messages`` queue.

    SIGINT is ignored here; the parent decides (and terminates the workers) on Ctrl-C.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        result = run_task(task, lambda k: messages.put(("progress", task.worker, k)))
        messages.put(("done", task.worker, result))
    except BaseException:  # noqa: BLE001 - everything goes back to the parent, with its traceback
        messages.put(("error", task.worker, traceback.format_exc()))


# ----------------------------------------------------------------------------- the parent


def make_tasks(n_jets: int, seed: int, workers: int, massless: bool) -> list[Task]:
    """Split ``n_jets // 2`` top and ``n_jets - n_jets // 2`` QCD jets over ``workers``; drops idle workers."""
    totals = {SIGNAL: n_jets // 2, BACKGROUND: n_jets - n_jets // 2}
    tasks = []
    for w in range(workers):
        share = {kind: total // workers + (w < total % workers) for kind, total in totals.items()}
        if any(share.values()):
            seeds = {kind: pythia_seed(seed, w, kind) for kind in CLASSES}
            tasks.append(Task(worker=w, n_jets=share, seeds=seeds, massless=massless))
    return tasks


# tqdm, awkward and uproot are imported where used: the worker processes never need them.


def _progress_bar(total: int, enabled: bool):
    """A tqdm bar over ``total`` jets showing jets/s; inert if not ``enabled``."""
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="jet", desc="generate", disable=not enabled, smoothing=0.1, dynamic_ncols=True)


def _run_in_process(tasks: list[Task], bar) -> list[dict]:
    """Run the tasks one after the other in this process (``workers=1``)."""
    return [run_task(task, bar.update) for task in tasks]


def _run_in_workers(tasks: list[Task], bar) -> list[dict]:
    """Run each task in its own "spawn" process; returns the results in task order.

    Raises RuntimeError if a worker fails (with its traceback) or dies; workers still running are terminated.
    """
    ctx = multiprocessing.get_context("spawn")
    messages = ctx.Queue()
    procs = {t.worker: ctx.Process(target=_worker_main, args=(t, messages), daemon=True) for t in tasks}
    results: dict[int, dict] = {}
    try:
        for proc in procs.values():
            proc.start()
        while len(results) < len(procs):
            try:
                what, worker, payload = messages.get(timeout=1.0)
            except queue_module.Empty:
                _check_alive(procs, results)
                continue
            if what == "progress":
                bar.update(payload)
            elif what == "done":
                results[worker] = payload
            else:
                raise RuntimeError(f"generator worker {worker} failed:\n{payload}")
    finally:
        _stop_workers(procs.values())
        messages.close()
    return [results[t.worker] for t in tasks]


def _stop_workers(procs) -> None:
    """Terminate the workers that are still running (after an error or Ctrl-C) and reap them all."""
    for proc in procs:
        if proc.pid is not None and proc.is_alive() and proc.exitcode is None:
            proc.join(timeout=0.5)  # a worker that delivered its result is about to exit by itself
            if proc.is_alive():
                proc.terminate()
    for proc in procs:
        if proc.pid is not None:
            proc.join(timeout=10)


def _check_alive(procs: dict, results: dict) -> None:
    """Raise if a worker that has not delivered its result is no longer running."""
    for worker, proc in procs.items():
        if worker not in results and not proc.is_alive():
            raise RuntimeError(f"generator worker {worker} died (exit code {proc.exitcode})")


def _merge_class(results: list[dict], kind: str) -> dict[str, np.ndarray]:
    """Concatenate one class over workers (in worker order)."""
    parts = [r[kind] for r in results if kind in r]
    return {
        "constituents": np.concatenate([p["constituents"] for p in parts]),
        "counts": np.concatenate([p["counts"] for p in parts]),
        "p4": np.concatenate([p["p4"] for p in parts]),
        "n_events": sum(p["n_events"] for p in parts),
    }


def _offsets(counts: np.ndarray) -> np.ndarray:
    """(N + 1,) int64 start offsets of jagged rows with lengths ``counts``."""
    return np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])


def assemble(results: list[dict], seed: int) -> dict[str, np.ndarray]:
    """Merge worker results into per-jet arrays in shuffled order.

    Returns ``constituents`` (sum n, 4) float32 ``[E, px, py, pz]``, ``counts`` (N,) int32, ``p4`` (N, 4) float64
    and ``is_top`` (N,) bool, all in the order of a permutation seeded by ``seed``.
    """
    merged = [_merge_class(results, kind) for kind in CLASSES]
    counts = np.concatenate([m["counts"] for m in merged])
    constituents = np.concatenate([m["constituents"] for m in merged])
    p4 = np.concatenate([m["p4"] for m in merged])
    is_top = np.repeat([True, False], [len(m["counts"]) for m in merged])

    order = np.random.default_rng(seed).permutation(len(counts))
    starts = _offsets(counts)[:-1]
    new_starts = _offsets(counts[order])[:-1]
    rows = np.repeat(starts[order] - new_starts, counts[order]) + np.arange(len(constituents))
    return {"constituents": constituents[rows], "counts": counts[order], "p4": p4[order], "is_top": is_top[order]}


def jet_branches(jets: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The per-jet branches (float32 kinematics in GeV, int32 multiplicity and labels) of :func:`assemble` output."""
    p4 = jets["p4"]
    return {
        "jet_pt": lorentz.pt(p4).astype(np.float32),
        "jet_eta": lorentz.eta(p4).astype(np.float32),
        "jet_phi": lorentz.phi(p4).astype(np.float32),
        "jet_energy": p4[:, 0].astype(np.float32),
        "jet_mass": lorentz.mass(p4).astype(np.float32),
        "jet_nparticles": jets["counts"].astype(np.int32),
        "label_QCD": (~jets["is_top"]).astype(np.int32),
        "label_Tbqq": jets["is_top"].astype(np.int32),
    }


def _chunk_data(jets: dict[str, np.ndarray], branches: dict[str, np.ndarray], start: int, stop: int) -> dict:
    """uproot data for jets ``start:stop``: the jagged ``part`` record and the per-jet branches."""
    import awkward as ak

    offsets = _offsets(jets["counts"])
    c = jets["constituents"][offsets[start] : offsets[stop]]
    counts = jets["counts"][start:stop]
    fields = {"px": c[:, 1], "py": c[:, 2], "pz": c[:, 3], "energy": c[:, 0]}
    part = ak.zip({k: ak.unflatten(np.ascontiguousarray(v), counts) for k, v in fields.items()})
    return {"part": part, **{k: v[start:stop] for k, v in branches.items()}}


def provenance(n_jets: int, seed: int, massless: bool) -> dict:
    """The generation settings stored as JSON in the file's ``jetkd_provenance`` string (energies in GeV)."""
    import jetkd

    return {
        "generator": f"Pythia {importlib.metadata.version('pythia8mc')}, anti-kT R={JET_R} via fjcore",
        "sqrt_s_gev": ECM,
        "jet_r": JET_R,
        "pt_min_gev": PT_MIN,
        "pt_max_gev": PT_MAX,
        "eta_max": ETA_MAX,
        "pthat_window_gev": list(PTHAT_WINDOW),
        "massless": bool(massless),
        "seed": int(seed),
        "n_jets": int(n_jets),
        "processes": {"signal": "ttbar all-hadronic", "background": "QCD dijets"},
        "jetkd_version": jetkd.__version__,
    }


def write_root(path: pathlib.Path, jets: dict[str, np.ndarray], *, seed: int, massless: bool) -> None:
    """Write the TTree ``tree`` (JetClass-style branches, see the module docstring) and the ``jetkd_provenance``
    string (:func:`provenance`) to ``path`` with uproot."""
    import uproot

    branches = jet_branches(jets)
    n = len(jets["counts"])
    from jetkd.data.readers.root import write_compression

    with uproot.recreate(path, compression=write_compression()) as f:
        f["jetkd_provenance"] = json.dumps(provenance(n, seed, massless), sort_keys=True)
        tree = None
        for start in range(0, n, _WRITE_CHUNK):
            data = _chunk_data(jets, branches, start, min(n, start + _WRITE_CHUNK))
            if tree is None:
                # part_* get the counter jet_nparticles (uproot turns it into their int32 counter branch)
                tree = f.mktree("tree", data, counter_name=lambda _: "jet_nparticles")
            else:
                tree.extend(data)


def _write_atomic(out: pathlib.Path, jets: dict[str, np.ndarray], *, seed: int, massless: bool) -> None:
    """:func:`write_root` to a temporary file next to ``out`` and rename it; nothing is left behind on any error."""
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        write_root(tmp, jets, seed=seed, massless=massless)
        tmp.replace(out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _summary(out: pathlib.Path, jets: dict, results: list[dict], wall: float, workers: int) -> str:
    """One paragraph: jets per class, multiplicity, median mass per class, events, time and rate."""
    masses = lorentz.mass(jets["p4"])
    parts = []
    for kind, mask in ((SIGNAL, jets["is_top"]), (BACKGROUND, ~jets["is_top"])):
        n_events = sum(r[kind]["n_events"] for r in results if kind in r)
        parts.append(
            f"{kind}: {int(mask.sum())} jets from {n_events} events, "
            f"{jets['counts'][mask].mean():.1f} constituents per jet, median jet mass {np.median(masses[mask]):.1f} GeV"
        )
    n = len(jets["counts"])
    return (
        f"Generated {n} jets ({int(jets['is_top'].sum())} signal top, {int((~jets['is_top']).sum())} background QCD; "
        f"mean constituent multiplicity {jets['counts'].mean():.1f}). {'; '.join(parts)}. "
        f"Wall time {wall:.1f} s with {workers} worker(s), {n / wall:.1f} jets/s. Written to {out}."
    )


def _check_arguments(out, n_jets: int, seed: int, workers: int) -> pathlib.Path:
    """Validate the user arguments; returns ``out`` as a Path. Raises InputError naming the bad one."""
    if isinstance(n_jets, bool) or not isinstance(n_jets, int | np.integer) or n_jets < 2:
        raise InputError("n_jets", f"expected an integer >= 2 (one top and one QCD jet at least), got {n_jets!r}")
    if isinstance(workers, bool) or not isinstance(workers, int | np.integer) or workers < 1:
        raise InputError("workers", f"expected an integer >= 1, got {workers!r}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise InputError("seed", f"expected an integer >= 0, got {seed!r}")
    out = pathlib.Path(out)
    if out.suffix != ".root":
        raise InputError(str(out), "expected an output file name ending in .root")
    if not out.parent.is_dir():
        raise InputError(str(out.parent), "output directory does not exist")
    if out.is_dir():
        raise InputError(str(out), "is a directory, expected an output file name")
    return out


def generate(
    out,
    *,
    n_jets: int,
    seed: int = 1,
    workers: int | None = None,
    massless: bool = False,
    progress: bool = True,
) -> pathlib.Path:
    """Generate ``n_jets`` jets (half top, half QCD) with Pythia 8 + FastJet into the ROOT file ``out``.

    out: path ending in ``.root`` in an existing directory; written atomically.
    n_jets: >= 2; ``n_jets // 2`` top jets and ``n_jets - n_jets // 2`` QCD jets.
    seed: >= 0; with ``n_jets`` and ``workers`` it fixes the output exactly.
    workers: processes (default ``os.cpu_count()``); 1 runs in this process.
    massless: set ``E = |p|`` for every constituent.
    progress: show a tqdm bar (jets/s over all workers).

    Prints a one-paragraph summary and returns ``out`` as a Path. Raises InputError for bad arguments.
    """
    workers = (os.cpu_count() or 1) if workers is None else workers
    out = _check_arguments(out, n_jets, seed, workers)
    start = time.perf_counter()
    tasks = make_tasks(int(n_jets), int(seed), int(workers), bool(massless))
    with _progress_bar(int(n_jets), progress) as bar:
        results = _run_in_process(tasks, bar) if workers == 1 else _run_in_workers(tasks, bar)
    jets = assemble(results, int(seed))
    _write_atomic(out, jets, seed=int(seed), massless=bool(massless))
    wall = time.perf_counter() - start
    print(_summary(out, jets, results, wall, len(tasks)))
    return out
