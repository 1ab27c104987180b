"""``jetkd score``: trained taggers over jet files, into ROOT friend trees aligned entry by entry with the input.

Every input is read once, in streaming chunks, and every tagger scores each chunk in the same pass. The output
holds a TTree ``tree`` with one entry per input entry, in the same order (jets that cannot be scored keep NaN
scores and ``score_ok = false``), so it attaches to the input as a friend (``TTree::AddFriend``) or by entry
number in uproot/awkward. Branches:

    score_<model>_<class>   float32   class probability of each tagger, per class (names from its contract, any
                                      character but letters, digits and _ replaced by _)
    score_ok                bool      False for a jet without constituents or with a non-finite momentum
    label                   int32     the input's class index (-1 where missing), when the input is labelled
    <observer>              as read   copied from the input (ROOT branches), or computed from the constituents
                                      (jet_pt, jet_eta, jet_phi, jet_mass, jet_energy, jet_nparticles: E-scheme sum
                                      of all constituents) where the input has no such branch

Outputs are written to temporary files and renamed into place only when every input has been scored: a bad
input or a kill leaves no partial output.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from jetkd import lorentz
from jetkd.data.arrays import JetArrays
from jetkd.data.sources import JetChunk, jet_chunk, prefetched
from jetkd.errors import InputError
from jetkd.tagger import BATCH_SIZE, Tagger, branch_name

SUFFIX = ".scores.root"

OBSERVABLES: dict[str, Callable[[JetArrays], np.ndarray]] = {
    "jet_pt": lambda jets: lorentz.pt(jets.jet_p4).astype(np.float32),
    "jet_eta": lambda jets: lorentz.eta(jets.jet_p4).astype(np.float32),
    "jet_phi": lambda jets: lorentz.phi(jets.jet_p4).astype(np.float32),
    "jet_mass": lambda jets: lorentz.mass(jets.jet_p4).astype(np.float32),
    "jet_energy": lambda jets: jets.jet_p4[:, 0].astype(np.float32),
    "jet_nparticles": lambda jets: jets.n_particles.astype(np.int32),
}


def unique_names(taggers: list[Tagger]) -> list[Tagger]:
    """Make tagger names unique: names shared by several taggers get their run's parent folder as a prefix
    (``seedA/mlp``, ``seedB/mlp`` -> ``seedA_mlp``, ``seedB_mlp``), and a counter if that is not enough."""
    names = [t.name for t in taggers]
    for tagger in taggers:
        if names.count(tagger.name) > 1 and tagger.source:
            tagger.name = branch_name(f"{Path(tagger.source).parent.parent.name}_{tagger.name}")
    seen: set[str] = set()
    for tagger in taggers:
        base, k = tagger.name, 2
        while tagger.name in seen:
            tagger.name, k = f"{base}_{k}", k + 1
        seen.add(tagger.name)
    return taggers


def output_paths(inputs: list[Path], out: Path) -> list[Path]:
    """Where each input's scores go: ``out`` itself for one input (unless ``out`` is a folder), else
    ``out/<input stem>.scores.root``."""
    if len(inputs) == 1 and not out.is_dir():
        if out.suffix != ".root":
            raise InputError(str(out), "expected an output file name ending in .root for one input (or a folder)")
        return [out]
    if out.exists() and not out.is_dir():
        raise InputError(str(out), f"{len(inputs)} inputs need an output folder, and this is a file")
    paths = [out / f"{p.name.split('.')[0] or p.name}{SUFFIX}" for p in inputs]
    clash = sorted({str(p) for p in paths if paths.count(p) > 1})
    if clash:
        raise InputError(str(out), f"several inputs would write {', '.join(clash)}; score them into separate folders")
    return paths


@dataclass
class _Plan:
    """One input: its format, jet count and where each observer comes from."""

    path: Path
    out: Path
    format: str
    n_jets: int
    branch_map: dict | None
    copied: list[str] = field(default_factory=list)  # observers read from the file
    computed: list[str] = field(default_factory=list)  # observers computed from the constituents


def score_files(taggers: list[Tagger], inputs: list[str | Path], out: str | Path, *, observers: list[str] = (),
                tree: str | None = None, branch_map: dict | None = None, step_size: int = 50_000,
                batch_size: int = BATCH_SIZE, progress: bool = True) -> list[Path]:
    """Score every input with every tagger (see the module docstring); returns the output files.

    tree / branch_map: which tree and branches hold the jets (ROOT), as for ``jetkd convert``.
    Bad input raises :class:`InputError` before anything is renamed into place.
    """
    if not taggers:
        raise InputError("--model", "give at least one trained model")
    inputs, out = [Path(p) for p in inputs], Path(out)
    unique_names(taggers)
    plans = [_plan(path, dest, observers, tree, branch_map) for path, dest in zip(inputs, output_paths(inputs, out))]
    made_dir = len(inputs) > 1 and not out.exists()
    if made_dir:
        out.mkdir(parents=True)
    temps: list[Path] = []
    start, n_bad = time.perf_counter(), 0
    try:
        with tqdm(total=sum(p.n_jets for p in plans), unit="jet", desc="score", disable=None if progress else True) as bar:
            for plan in plans:
                temps.append(plan.out.with_name(f".{plan.out.name}.tmp-{os.getpid()}"))
                n_bad += _score_one(plan, temps[-1], taggers, step_size, batch_size, bar)
        for plan, tmp in zip(plans, temps):
            os.replace(tmp, plan.out)
    except BaseException:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
        if made_dir and not any(out.iterdir()):
            out.rmdir()
        raise
    seconds = time.perf_counter() - start
    n_jets = sum(p.n_jets for p in plans)
    print(f"Scored {n_jets:,} jets from {len(plans)} file(s) with {len(taggers)} model(s) "
          f"({', '.join(t.name for t in taggers)}) in {seconds:.1f} s ({n_jets / max(seconds, 1e-9):,.0f} jets/s); "
          f"{n_bad:,} jet(s) could not be scored (no constituents or non-finite momenta) and have score_ok = false. "
          f"Every output has one entry per input entry (tree 'tree'): " + ", ".join(str(p.out) for p in plans))
    return [p.out for p in plans]


def _plan(path: Path, dest: Path, observers, tree, branch_map) -> _Plan:
    from jetkd.data.readers import count_jets, detect_format

    fmt = detect_format(path)
    branch_map = dict(branch_map or {})
    if tree is not None:
        if fmt != "root":
            raise InputError(str(path), f"--tree names a ROOT tree, but this is a {fmt!r} file")
        branch_map["tree"] = tree
    branch_map = branch_map or None
    plan = _Plan(path, dest, fmt, count_jets(path, format=fmt, branch_map=branch_map, label_mode="optional"), branch_map)
    available = _file_columns(plan) if fmt == "root" else []
    for name in observers:
        if name in available:
            plan.copied.append(name)
        elif name in OBSERVABLES:
            plan.computed.append(name)
        else:
            raise InputError(str(path), f"no observer {name!r}: not a per-jet branch of the file "
                                        f"({', '.join(available) or 'none'}) nor one of {', '.join(OBSERVABLES)}")
    return plan


def _file_columns(plan: _Plan) -> list[str]:
    from jetkd.data.readers.root import per_entry_branches

    return per_entry_branches(plan.path, (plan.branch_map or {}).get("tree"))


def _score_one(plan: _Plan, tmp: Path, taggers: list[Tagger], step_size: int, batch_size: int,
               bar) -> int:
    """Write ``plan``'s scores to ``tmp``; returns the number of jets that could not be scored."""
    import uproot

    from jetkd.data.readers import iter_jets
    from jetkd.data.readers.root import write_compression

    checks = [t.mass_check() for t in taggers]
    copied = _iter_copied(plan, step_size)
    n_bad, tree = 0, None
    with uproot.recreate(tmp, compression=write_compression()) as f:
        chunks = iter_jets(plan.path, format=plan.format, step_size=step_size, branch_map=plan.branch_map,
                           label_mode="optional", validate=False)
        for chunk in prefetched(jet_chunk(jets) for jets in chunks):  # reads ahead while scoring
            branches = _branches(plan, chunk, taggers, checks, batch_size)
            branches.update(next(copied, {}) if plan.copied else {})
            if tree is None:
                tree = f.mktree("tree", {k: v.dtype for k, v in branches.items()}, title="jetkd scores")
            tree.extend(branches)
            n_bad += int((~chunk.ok).sum())
            bar.update(len(chunk))
        if tree is None:  # an input without jets: an empty tree with the score branches
            f.mktree("tree", {f"score_{t.name}_{branch_name(c)}": np.float32 for t in taggers for c in t.class_names}
                     | {"score_ok": np.bool_}, title="jetkd scores")
    for check in checks:
        check.finish(str(plan.path))
    return n_bad


def _branches(plan: _Plan, chunk: JetChunk, taggers: list[Tagger], checks, batch_size: int) -> dict:
    where = str(plan.path)
    branches, ok = {}, chunk.ok.copy()
    for tagger, check in zip(taggers, checks):
        probs = tagger.score_chunk(chunk, check, where, batch_size)
        ok &= np.isfinite(probs).all(1)
        for k, name in enumerate(tagger.class_names):
            branches[f"score_{tagger.name}_{branch_name(name)}"] = probs[:, k].astype(np.float32)
    branches["score_ok"] = ok
    if chunk.jets.class_names is not None:
        branches["label"] = chunk.label.astype(np.int32)
    branches.update({name: OBSERVABLES[name](chunk.jets) for name in plan.computed})
    return branches


def _iter_copied(plan: _Plan, step_size: int):
    if not plan.copied:
        return iter(())
    from jetkd.data.readers.root import iterate_branches

    return (arrays for _, _, arrays in iterate_branches(plan.path, plan.copied, step_size,
                                                        (plan.branch_map or {}).get("tree")))
