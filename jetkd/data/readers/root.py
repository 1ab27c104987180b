"""ROOT files in the JetClass layout, read with uproot.

One entry per jet in a TTree (or an RNTuple, which is what ``uproot`` >= 5.7 writes for ``file[name] = {...}``):

- constituents: per-jet arrays ``part_px, part_py, part_pz, part_energy`` (GeV, any float or int dtype), jagged
  or fixed-size; in an RNTuple written from ``{"part": ak.zip({"px": ...})}`` they are the subfields
  ``part.px, ...``, which answer to the same names. Constituents whose four components are all zero are padding
  and dropped.
- labels: one-hot ``label_*`` branches (exactly 0 or 1, any numeric or bool dtype); the class index is the position
  of the single set label in file order (or in ``labels=`` order); none set -> -1 (missing). When validating, a
  value other than 0 or 1, or several set, is an InputError naming the branch and entry (else such a jet gets -1).
  Alternatively ``branch_map={"label": NAME}`` names one integer branch holding the class index directly.
  ``label_mode``: "required" (default), "optional" (labels read when the file has them, else -1) or "none"
  (never read, all -1). Class names: the one-hot branch names without ``label_`` (None for a class-index branch).
- provenance: a string (TObjString) ``jetkd_provenance`` holding JSON, written by ``data_prep.generate``, is the
  file's :func:`metadata`; other objects than TTrees/RNTuples are never taken for the jets' tree.

``branch_map`` keys: ``part_px, part_py, part_pz, part_energy, label`` (branch names) and ``tree`` (which
TTree/RNTuple; default: the only one in the file, else the one called ``tree``).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator

import awkward as ak
import numpy as np
import uproot

from jetkd.data.arrays import JetArrays, make_p4
from jetkd.data.readers._common import (check_label_mode, check_step_size, check_validate, chunk_ranges, class_index,
                                        name_list, no_label, one_line, options, reading, wants_labels)
from jetkd.errors import InputError

COMPONENTS = ("part_px", "part_py", "part_pz", "part_energy")
DEFAULTS = {**{name: name for name in COMPONENTS}, "label": None, "tree": None}
TREE_CLASSES = ("TTree", "ROOT::RNTuple")
LABEL_PREFIX = "label_"
PROVENANCE = "jetkd_provenance"


def write_compression():
    """How jetkd writes ROOT files (``jetkd generate``, ``jetkd score``): LZ4 level 1. Float constituents compress
    poorly whatever the algorithm, and LZ4 reads ~6x faster than uproot's default ZLIB(1): the constituents of
    200k generated jets in 0.14 s against 0.89 s, for 6% more bytes (``scripts/bench_score.py``, docs/results.md).
    ROOT reads it natively (since 6.12)."""
    return uproot.LZ4(1)


# ----------------------------------------------------------------------------- opening


@contextlib.contextmanager
def _open_tree(path: str, tree_name: str | None):
    """Yield the jets' TTree/RNTuple of the file at ``path``; the file is closed afterwards."""
    with reading(path, what="cannot open the ROOT file"):
        file = uproot.open(path)
    with file:
        with reading(path, what="cannot read the ROOT file's directory"):
            trees = [name for name, cls in file.classnames(cycle=False).items() if cls in TREE_CLASSES]
        if tree_name is None:
            if len(trees) == 1:
                tree_name = trees[0]
            elif "tree" in trees:
                tree_name = "tree"
            elif not trees:
                raise InputError(path, "no TTree or RNTuple in the ROOT file")
            else:
                raise InputError(path, f"several trees ({name_list(trees)}); choose one with branch_map={{'tree': NAME}}")
        elif tree_name not in trees:
            raise InputError(path, f"no tree {tree_name!r}; the file has {name_list(trees)}")
        with reading(path, what=f"cannot read the metadata of tree {tree_name!r}"):
            tree = file[tree_name]
            tree.num_entries, tree.keys()  # RNTuple metadata (footer) is read lazily: fail here, not later
            end = _basket_end(tree)
        if end > os.path.getsize(path):
            raise InputError(path, f"tree {tree_name!r} has data up to byte {end} but the file has only "
                                   f"{os.path.getsize(path)} bytes; is it truncated?")
        yield tree


def _basket_end(tree) -> int:
    """End (bytes) of the last stored basket of a TTree, from branch metadata only; 0 for an RNTuple."""
    if not isinstance(tree, uproot.behaviors.TTree.TTree):
        return 0
    end = 0
    for branch in tree.itervalues(recursive=True):
        n = branch.num_baskets
        if n:
            end = max(end, int(np.max(branch.member("fBasketSeek")[:n] + branch.member("fBasketBytes")[:n])))
    return end


class _Branches:
    """Name lookup for one tree: canonical or user names -> the tree's branch/field names.

    An RNTuple record field ``part.px`` also answers to ``part_px`` (the TTree spelling of the same data).
    """

    def __init__(self, path: str, tree):
        self.path = path
        keys = list(tree.keys())
        self.names = {}
        for key in keys:
            self.names.setdefault(key, key)
        for key in keys:
            self.names.setdefault(key.replace(".", "_"), key)
        self.available = keys

    def __getitem__(self, name: str) -> str:
        if name not in self.names:
            raise InputError(self.path, f"no branch {name!r}; available branches: {name_list(self.available)}")
        return self.names[name]

    def labels(self) -> list[str]:
        """The ``label_*`` names in the file's branch order."""
        return [name for name in self.names if name.startswith(LABEL_PREFIX)]


def _field(arrays: ak.Array, name: str) -> ak.Array:
    """Branch ``name`` from ``tree.arrays`` output (RNTuple subfields ``a.b`` come back nested)."""
    if name in arrays.fields:
        return arrays[name]
    for part in name.split("."):
        arrays = arrays[part]
    return arrays


def _leaf(arr: ak.Array) -> tuple[str | None, int]:
    """``(primitive dtype name or None, list depth)`` of an awkward array's type."""
    t, depth = arr.type.content, 0
    while not isinstance(t, ak.types.NumpyType):
        if isinstance(t, (ak.types.ListType, ak.types.RegularType)):
            depth += 1
        elif not isinstance(t, ak.types.OptionType):
            return None, depth
        t = t.content
    return t.primitive, depth


def _numeric(primitive: str | None) -> bool:
    return primitive is not None and primitive.startswith(("bool", "int", "uint", "float"))


# ----------------------------------------------------------------------------- reading


def count(path, branch_map=None, labels=None, label_mode: str = "required") -> int:
    """Number of jets (tree entries), from the tree's metadata; the branches that would be read are looked up
    (not read), so a missing one fails here already."""
    path, opts = str(path), options(branch_map, DEFAULTS, "root")
    mode = check_label_mode(label_mode)
    with _open_tree(path, opts["tree"]) as tree:
        branches = _Branches(path, tree)
        for name in COMPONENTS:
            branches[opts[name]]  # raises InputError if missing
        _label_spec(path, branches, opts["label"], labels, mode)
        return int(tree.num_entries)


def iterate(path, step_size: int = 100_000, branch_map=None, labels=None, label_mode: str = "required",
            validate: bool = True) -> Iterator[JetArrays]:
    """Yield :class:`JetArrays` chunks of at most ``step_size`` jets, in file order, as read (:func:`iter_jets`
    validates them). ``validate``: one-hot label values other than 0 or 1, or several labels set, are an
    :class:`InputError` naming the branch and entry (False: such jets get label -1)."""
    path, step = str(path), check_step_size(step_size)
    opts = options(branch_map, DEFAULTS, "root")
    mode, validate = check_label_mode(label_mode), check_validate(validate)
    with _open_tree(path, opts["tree"]) as tree:
        branches = _Branches(path, tree)
        comps = [branches[opts[name]] for name in COMPONENTS]
        label_keys, class_names = _label_spec(path, branches, opts["label"], labels, mode)
        wanted = list(dict.fromkeys(comps + label_keys))
        branches = {**dict(zip(("px", "py", "pz", "E"), comps)), "n": comps[3], "label": ",".join(label_keys)}
        for start, stop, arrays in _chunks(path, tree, wanted, step):
            entries = (start, stop - 1)
            p4 = _p4(path, entries, {name: _field(arrays, name) for name in comps})
            columns = {name: _field(arrays, name) for name in label_keys}
            label = _label(path, entries, opts["label"], columns, stop - start, strict=validate)
            yield JetArrays(p4, label, path, start, class_names, branches)


def metadata(path) -> dict:
    """The JSON object in the file's ``jetkd_provenance`` string (TObjString), or ``{}`` if there is none."""
    path = str(path)
    with reading(path, what="cannot open the ROOT file"):
        file = uproot.open(path)
    with file:
        with reading(path, what="cannot read the ROOT file's directory"):
            if file.classnames(cycle=False).get(PROVENANCE) != "TObjString":
                return {}
            text = str(file[PROVENANCE])
    try:
        info = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(path, one_line(f"{PROVENANCE!r} is not valid JSON ({err})")) from None
    if not isinstance(info, dict):
        raise InputError(path, f"{PROVENANCE!r} must hold a JSON object, got {type(info).__name__}")
    return info


def per_entry_branches(path, tree_name: str | None = None) -> list[str]:
    """Names of the branches (fields) of the jets' tree that hold one number per entry (jet-level observables)."""
    path = str(path)
    with _open_tree(path, tree_name) as tree:
        keys = _Branches(path, tree).available
        with reading(path, what="cannot read the branch types"):
            arrays = tree.arrays(keys, entry_stop=0, library="ak")
        leaves = {key: _leaf(_field(arrays, key)) for key in keys}
    return [key for key, (primitive, depth) in leaves.items() if depth == 0 and _numeric(primitive)]


def iterate_branches(path, names: list[str], step_size: int = 100_000,
                     tree_name: str | None = None) -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
    """``(start, stop, {name: (stop - start,) array})`` for the per-entry branches ``names``, in the same entry
    ranges of ``step_size`` entries as :func:`iterate` (values as stored; None becomes 0)."""
    path, step = str(path), check_step_size(step_size)
    with _open_tree(path, tree_name) as tree:
        keys = [_Branches(path, tree)[name] for name in names]
        for start, stop, arrays in _chunks(path, tree, keys, step):
            yield start, stop, {name: ak.to_numpy(ak.fill_none(_field(arrays, key), 0)) for name, key in zip(names, keys)}


def _chunks(path: str, tree, names: list[str], step: int) -> Iterator[tuple[int, int, ak.Array]]:
    """``(start, stop, arrays)`` for consecutive entry ranges of ``step`` entries.

    ``tree.iterate`` keeps a basket that straddles two ranges instead of decompressing it again for each.
    """
    chunks = tree.iterate(filter_name=names, step_size=step, library="ak", report=True)
    for start, stop in chunk_ranges(int(tree.num_entries), step):
        with reading(path, (start, stop - 1), what="cannot read the branches"):
            arrays, report = next(chunks)
        if (report.tree_entry_start, report.tree_entry_stop) != (start, stop):  # not expected from uproot
            raise RuntimeError(f"uproot returned entries {report.tree_entry_start}-{report.tree_entry_stop}, "
                               f"expected {start}-{stop}")
        yield start, stop, arrays


def _label_spec(path: str, branches: _Branches, label: str | None, labels, mode: str) -> tuple[list[str], tuple | None]:
    """``(branches, class_names)``: the tree branches the class index is read from (``[label]``, the one-hot
    ``label_*`` branches, or none) and the class names (one-hot names without ``label_``; None if unknown)."""
    if label is not None and labels is not None:
        raise InputError("labels", "give either labels= (one-hot branches) or branch_map['label'] (class index), not both")
    found = branches.labels()
    explicit = label is not None or labels is not None
    if not wants_labels(mode, explicit, bool(found)):
        return [], None
    if label is not None:
        return [branches[label]], None
    if labels is None:
        if not found:
            raise InputError(path, "no label_* branches; name the class-index branch with branch_map={'label': NAME} "
                                   f"(available branches: {name_list(branches.available)})")
        labels = found
    elif isinstance(labels, str) or not labels or not all(isinstance(n, str) for n in labels):
        raise InputError("labels", f"expected a non-empty list of label branch names, got {labels!r}")
    elif len(set(labels)) != len(labels):
        raise InputError("labels", f"label branches must be distinct, got {list(labels)}")
    missing = [name for name in labels if name not in branches.names]
    if missing:
        raise InputError(path, f"no label branch {name_list(missing)}; available label branches: {name_list(found)}")
    return [branches[name] for name in labels], tuple(name.removeprefix(LABEL_PREFIX) for name in labels)


def _label(path: str, entries, label: str | None, columns: dict[str, ak.Array], n: int,
           strict: bool = True) -> np.ndarray:
    """(n,) int64 class index of one chunk: from the class-index branch ``label``, the one-hot ``columns``, or
    -1 for every jet when no label branch is read. ``strict``: see :func:`_one_hot_index`."""
    if not columns:
        return no_label(n)
    if label is not None:
        arr = next(iter(columns.values()))
        return class_index(_column(path, entries, label, arr, missing=-1), path, entries, label)
    values = np.stack([_column(path, entries, name, arr, missing=0) for name, arr in columns.items()], axis=1)
    return _one_hot_index(values, list(columns), path, entries, strict)


def _p4(path: str, entries, comps: dict[str, ak.Array]) -> ak.Array:
    """Constituent four-vectors from the four per-jet component arrays, all-zero padding dropped."""
    for name, arr in comps.items():
        primitive, depth = _leaf(arr)
        if depth != 1 or not _numeric(primitive):
            raise InputError(path, f"branch {name!r} must hold one number per constituent (a jagged or fixed-size "
                                   f"array per jet), got type {arr.type.content}", entries=entries)
    px, py, pz, E = (ak.from_regular(arr, axis=1) for arr in comps.values())  # fixed-size -> jagged
    names, counts = list(comps), [ak.num(c, axis=1) for c in (px, py, pz, E)]
    for name, n in zip(names[1:], counts[1:], strict=True):
        if not ak.all(n == counts[0]):
            raise InputError(path, f"branches {names[0]!r} and {name!r} have different numbers of constituents "
                                   "per jet", entries=entries)
    keep = (px != 0) | (py != 0) | (pz != 0) | (E != 0)
    if not ak.all(keep):
        px, py, pz, E = px[keep], py[keep], pz[keep], E[keep]
    return make_p4(px, py, pz, E)


def _column(path: str, entries, name: str, arr: ak.Array, missing: int) -> np.ndarray:
    """A one-value-per-jet branch as a numpy array, ``missing`` where the value is null."""
    primitive, depth = _leaf(arr)
    if depth != 0 or not _numeric(primitive):
        raise InputError(path, f"label branch {name!r} must hold one number per jet, got type {arr.type.content}",
                         entries=entries)
    return ak.to_numpy(ak.fill_none(arr, missing))


def _one_hot_index(values: np.ndarray, names: list[str], path: str, entries: tuple[int, int],
                   strict: bool) -> np.ndarray:
    """(n,) int64 position of the single 1 in each row of the one-hot ``values`` (n, k) (branches ``names``).

    -1 where none is set (a missing label). A value other than 0 or 1 (NaN, 7, 0.5), or several set in one row,
    is an :class:`InputError` naming the branch(es) and the entry if ``strict``, else -1 too (array code).
    """
    invalid = (values != 0) & (values != 1)
    flags = values == 1
    several = flags.sum(axis=1) > 1
    if strict and invalid.any():
        row, col = (int(i[0]) for i in np.nonzero(invalid))
        raise InputError(f"{path}:{names[col]}", f"value {values[row, col].item()!r} at entry {entries[0] + row}; expected "
                                                 "0 or 1 in a one-hot label branch", entries=entries)
    if strict and several.any():
        row = int(np.flatnonzero(several)[0])
        set_ = [name for name, on in zip(names, flags[row]) if on]
        raise InputError(f"{path}:{','.join(names)}", f"{len(set_)} labels set at entry {entries[0] + row} "
                                                      f"({', '.join(set_)}); expected exactly one per jet",
                         entries=entries)
    one = (flags.sum(axis=1) == 1) & ~invalid.any(axis=1)
    return np.where(one, flags.argmax(axis=1), -1).astype(np.int64)
