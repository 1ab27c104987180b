"""``jetkd convert``: jet files of any supported format -> the constituent cache (one HDF5 file per split).

Memory stays bounded: inputs are streamed in rounds of about ``step_size`` jets, drawing from every input in
proportion to its size, so a list of per-process files (JetClass) comes out mixed. Each jet's split is fixed up
front by a seeded permutation of all jets, so splits have exact sizes and do not depend on ``step_size``.
Within a round the jets are shuffled before they are appended.

Every chunk is checked as it is read (:meth:`jetkd.data.arrays.JetArrays.validate`, through the readers: finite
momenta, at least one constituent, labels within the declared classes, |px|, |py|, |pz|, E below ``max_momentum``,
E > 0 and E >= |p| up to rounding); class indices without names must run 0..K-1 without gaps (checked over all inputs
before anything is renamed into place). A failed check raises :class:`InputError` naming the file, the branch and
the entry, and leaves no output file behind: the splits are written to temporary names and renamed at the end.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from jetkd import __version__
from jetkd.data.arrays import DEFAULT_MAX_MOMENTUM, check_max_momentum
from jetkd.data.cache import CacheWriter
from jetkd.data.readers import count_jets, detect_format, iter_jets
from jetkd.errors import InputError
from jetkd.rundir import OutputFolder

DEFAULT_SPLIT = {"train": 0.8, "val": 0.1, "test": 0.1}


def parse_split(text: str) -> dict[str, float]:
    """``"train=0.8,val=0.1,test=0.1"`` -> ``{"train": 0.8, ...}``; fractions must be positive and sum to 1."""
    split = {}
    for item in text.split(","):
        name, _, value = item.partition("=")
        try:
            split[name.strip()] = float(value)
        except ValueError:
            raise InputError("--split", f"expected NAME=FRACTION items like train=0.8,val=0.1,test=0.1, got {item!r}") from None
    if any(not name for name in split) or any(f <= 0 for f in split.values()):
        raise InputError("--split", f"every split needs a name and a positive fraction, got {text!r}")
    if not math.isclose(sum(split.values()), 1.0, abs_tol=1e-6):
        raise InputError("--split", f"fractions must sum to 1, got {sum(split.values()):.6g} from {text!r}")
    return split


def parse_branch_map(text: str | None) -> dict[str, str] | None:
    """``"part_px=px,label=is_signal"`` -> ``{"part_px": "px", "label": "is_signal"}``."""
    if not text:
        return None
    pairs = [item.partition("=") for item in text.split(",")]
    if any(not key or not value for key, _, value in pairs):
        raise InputError("--branch-map", f"expected canonical=branch items separated by commas, got {text!r}")
    return {key.strip(): value.strip() for key, _, value in pairs}


def split_sizes(n_jets: int, split: dict[str, float]) -> dict[str, int]:
    """Exact jets per split: floor of each share, the remainder to the largest fractions."""
    sizes = {name: int(n_jets * f) for name, f in split.items()}
    for name in sorted(split, key=split.get, reverse=True)[: n_jets - sum(sizes.values())]:
        sizes[name] += 1
    return sizes


def assign_splits(n_jets: int, split: dict[str, float], seed: int) -> np.ndarray:
    """(n_jets,) int8: the index (in ``split`` order) of the split each jet goes to, from a seeded permutation."""
    perm = np.random.default_rng([seed, 0]).permutation(n_jets)
    which = np.empty(n_jets, np.int8)
    start = 0
    for i, size in enumerate(split_sizes(n_jets, split).values()):
        which[perm[start : start + size]] = i
        start += size
    return which


def convert(
    inputs: list[str | Path],
    out_dir: str | Path,
    *,
    split: dict[str, float] | None = None,
    max_particles: int = 128,
    seed: int = 0,
    branch_map: dict[str, str] | None = None,
    labels: list[str] | None = None,
    label_mode: str = "required",
    step_size: int = 50_000,
    progress: bool = True,
    max_momentum: float = DEFAULT_MAX_MOMENTUM,
    force: bool = False,
) -> dict[str, Path]:
    """Convert ``inputs`` into ``out_dir/<split>.h5`` and return the written paths by split name.

    Constituents are ordered by decreasing pT and the leading ``max_particles`` kept. Each jet keeps its origin
    (datasets ``source`` and ``entry``); the class names of the labels and the inputs' provenance (file, format,
    jets, generator settings where jetkd generated them) go into the attributes. ``label_mode="none"``
    (``--no-labels``) reads unlabelled files: every label is -1. ``max_momentum`` (GeV, ``--max-momentum``) bounds
    |px|, |py|, |pz| and E of every constituent. Bad input raises :class:`InputError` (file, branch, entry, what
    was wrong) and leaves no output file behind; so does a split that would get no jets.

    ``out_dir`` holds one cache: it is locked while converting (:class:`jetkd.rundir.OutputFolder`: a second
    convert into it fails at once; a dead one's lock and temporary files are cleaned up), and split files already
    there are refused unless ``force`` (``--force``: they are replaced when the new ones are complete).
    """
    split = dict(split or DEFAULT_SPLIT)
    if max_particles < 1:
        raise InputError("--max-particles", f"must be >= 1, got {max_particles}")
    max_momentum = check_max_momentum(max_momentum, "--max-momentum")
    inputs = [str(p) for p in inputs]
    for path in inputs:
        if not Path(path).is_file():
            raise InputError(path, "no such file")
    reader_options = {"branch_map": branch_map, "labels": labels, "label_mode": label_mode}
    formats = [detect_format(p) for p in inputs]
    sizes = [count_jets(p, format=f, **reader_options) for p, f in zip(inputs, formats)]
    n_jets = sum(sizes)
    if n_jets == 0:
        raise InputError(", ".join(inputs), "no jets in the input")
    counts = split_sizes(n_jets, split)
    empty = [name for name, size in counts.items() if size == 0]
    if empty:
        raise InputError("--split", f"split {empty[0]!r} would get 0 of the {n_jets} jets; expected at least one jet "
                                    "per split (convert more jets or change --split)")
    which = assign_splits(n_jets, split, seed)
    offsets = np.cumsum([0] + sizes[:-1])
    out_dir = Path(out_dir)
    present = [f"{name}.h5" for name in split if (out_dir / f"{name}.h5").exists()]
    if present and not force:
        raise InputError(str(out_dir), f"already holds a cache ({', '.join(present)}); give another --out, or "
                                       "--force to replace it")
    attrs = {
        "sources": [str(Path(p).resolve()) for p in inputs],
        "formats": formats,
        "inputs": [{"file": str(Path(p).resolve()), "format": f, "jets": n, **_generator(p, f)}
                   for p, f, n in zip(inputs, formats, sizes)],
        "labelled": label_mode != "none",
        "seed": seed,
        "fractions": split,
        "jetkd_version": __version__,
    }
    start = time.perf_counter()
    folder = OutputFolder(out_dir, [], "cache", resume=True).acquire()  # the lock only (refusal above)
    try:
        with contextlib.ExitStack() as stack:
            writers = [
                stack.enter_context(CacheWriter(out_dir / f"{name}.h5", counts[name], max_particles, {**attrs, "split": name}))
                for name in split
            ]
            bar = stack.enter_context(tqdm(total=n_jets, unit="jet", desc="convert", disable=None if progress else True))  # None: only on a terminal
            shuffle_rng = np.random.default_rng([seed, 1])
            class_names: dict[str, tuple | None] = {}  # per input
            label_where: dict[str, str] = {}  # per input: file:label branch, for error messages
            first_of_class: dict[int, int] = {}  # class index -> global index of its first jet
            for p4, n_particles, label, global_index, names in _rounds(inputs, formats, sizes, step_size,
                                                                       max_particles, {**reader_options,
                                                                                       "max_momentum": max_momentum}):
                class_names.update({source: info[0] for source, info in names.items()})
                label_where.update({source: info[1] for source, info in names.items()})
                _first_jets(label, global_index, first_of_class)
                order = shuffle_rng.permutation(len(label))
                global_index = global_index[order]
                source = np.searchsorted(offsets, global_index, side="right") - 1
                columns = (p4[order], n_particles[order], label[order], source, global_index - offsets[source])
                dest = which[global_index]
                for i, writer in enumerate(writers):
                    sel = dest == i
                    writer.append(*(c[sel] for c in columns))
                bar.update(len(label))
            if any(names is None for names in class_names.values()):
                check_class_indices(first_of_class, [label_where.get(p, p) for p in inputs], offsets)
            for writer in writers:
                writer.set_attrs(class_names=merge_class_names(list(class_names.values())))
            paths = _commit(split, writers)
    finally:
        folder.release()  # removes out_dir too if it was created here and nothing was written
    _print_summary(paths, counts, max_particles, time.perf_counter() - start)
    return paths


def _commit(split: dict[str, float], writers: list[CacheWriter]) -> dict[str, Path]:
    """Rename every split into place: ``{split: path}``; if one fails, the splits renamed before it are removed too."""
    paths: dict[str, Path] = {}
    try:
        for name, writer in zip(split, writers):
            paths[name] = writer.commit()
    except BaseException:
        for path in paths.values():
            path.unlink(missing_ok=True)
        raise
    return paths


def _first_jets(label: np.ndarray, global_index: np.ndarray, first: dict[int, int]) -> None:
    """Record in ``first`` {class index: global index} the first jet of each class index in ``label`` (k,)
    (``global_index`` (k,) increasing within a round, as :func:`_rounds` yields it)."""
    values, at = np.unique(label, return_index=True)
    for value, index in zip(values.tolist(), global_index[at].tolist()):
        first[value] = min(first.get(value, index), index)


def check_class_indices(first: dict[int, int], where: list[str], offsets) -> None:
    """Class indices without names (a class-index branch) must run 0..K-1 without gaps: an index above a missing
    one (``{0, 1, 5}``: 5) is an :class:`InputError` naming the input (``where[i]``: file:branch), and the entry of
    its first jet. ``first``: {class index: global index of its first jet}; ``offsets``: global index of each input's
    first jet. -1 (unlabelled) is ignored."""
    seen = sorted(v for v in first if v >= 0)
    if not seen or seen[-1] == len(seen) - 1:
        return
    missing = next(k for k in range(seen[-1]) if k not in first)
    value = next(v for v in seen if v > missing)
    source = int(np.searchsorted(offsets, first[value], side="right")) - 1
    raise InputError(where[source], f"class index {value} at entry {first[value] - int(offsets[source])}, but no jet "
                                    f"has class index {missing}; expected the class indices to run 0..K-1 without "
                                    "gaps (K classes)")


def _rounds(inputs, formats, sizes, step_size, max_particles, reader_options):
    """Yield ``(p4, n_particles, label, global_index, infos)`` rounds, each drawing from every input in
    proportion; ``infos``: {input path: (its class names or None, ``file:label-branch`` for messages)}."""
    total = sum(sizes)
    offsets = np.cumsum([0] + sizes[:-1])
    streams = [
        iter_jets(p, format=f, step_size=max(1, math.ceil(step_size * n / total)), **reader_options)
        for p, f, n in zip(inputs, formats, sizes)
        if n > 0
    ]
    offsets = [o for o, n in zip(offsets, sizes) if n > 0]
    while streams:
        parts, alive = [], []
        for stream, offset in zip(streams, offsets):
            chunk = next(stream, None)
            if chunk is None:
                continue
            alive.append((stream, offset))
            p4, n_particles = chunk.pt_ordered().padded(max_particles)
            parts.append((p4, n_particles, chunk.label, offset + chunk.entry_start + np.arange(len(chunk)), chunk))
        streams, offsets = [s for s, _ in alive], [o for _, o in alive]
        if parts:
            yield (*(np.concatenate(cols) for cols in list(zip(*parts))[:4]),
                   {part[4].source: (part[4].class_names, part[4].where("label")) for part in parts})


def merge_class_names(per_input: list[tuple[str, ...] | None]) -> list[str] | None:
    """One name per class for inputs that each name their classes (None: unnamed): the common names, or per class
    the distinct names joined by ``_`` (``("QCD", "top")`` and ``("QCD", "Tbqq")`` give ``["QCD", "top_Tbqq"]``);
    None when an input has no names or the inputs have different class counts."""
    if not per_input or any(names is None for names in per_input) or len({len(n) for n in per_input}) != 1:
        return None
    return ["_".join(dict.fromkeys(names)) for names in zip(*per_input)]


def _generator(path: str, fmt: str) -> dict:
    """``{"generator": {...}}`` with the settings jetkd generated ``path`` with, or nothing."""
    from jetkd.data.readers import file_metadata

    meta = file_metadata(path, format=fmt)
    return {"generator": meta} if meta else {}


def _print_summary(paths: dict[str, Path], counts: dict[str, int], max_particles: int, seconds: float) -> None:
    from jetkd.data.summary import summarize

    total = sum(counts.values())
    print(
        f"Converted {total} jets in {seconds:.1f} s ({total / max(seconds, 1e-9):,.0f} jets/s) into "
        + ", ".join(f"{name} ({counts[name]})" for name in paths)
        + f", keeping up to {max_particles} pT-ordered constituents per jet. "
        + summarize(paths)
        + f" Output: {Path(next(iter(paths.values()))).parent}/"
    )
