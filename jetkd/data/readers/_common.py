"""Plumbing shared by the format readers: error wrapping, option checks, label modes, padded -> jagged conversion."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import awkward as ak
import numpy as np

from jetkd.data.arrays import make_p4
from jetkd.errors import InputError

FORMAT_HELP = (
    "root (ROOT TTree/RNTuple with part_px/part_py/part_pz/part_energy and label_* branches), "
    "toptagging (Top Quark Tagging Reference HDF5, pandas DataFrame.to_hdf in 'table' or default 'fixed' format), "
    "lgn (LorentzNet HDF5 with Pmu, Nobj, is_signal), "
    "efqg (EnergyFlow quark-gluon npz with X, y)"
)

LABEL_MODES = ("required", "optional", "none")


def one_line(text: object, limit: int = 300) -> str:
    """``text`` with all whitespace runs (newlines included) collapsed to single spaces, cut to ``limit`` chars."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def name_list(names, limit: int = 40) -> str:
    """``a, b, c`` for error messages; long lists are cut after ``limit`` names."""
    names = list(names)
    if not names:
        return "(none)"
    more = f", ... ({len(names)} in all)" if len(names) > limit else ""
    return ", ".join(map(str, names[:limit])) + more


@contextlib.contextmanager
def reading(path, entries: tuple[int, int] | None = None, what: str = "cannot read the file"):
    """Turn any library error raised inside the block (uproot, h5py, zipfile, numpy) into an :class:`InputError`
    naming ``path`` and ``entries``: a truncated or corrupt file is bad input, not a bug in jetkd.

    Keep the block to the library calls that touch the file, so that real bugs keep their traceback.
    """
    try:
        yield
    except (InputError, MemoryError):
        raise
    except Exception as err:
        raise InputError(str(path), one_line(f"{what} ({type(err).__name__}: {err}); is it truncated or corrupt?"),
                         entries=entries) from err


def open_hdf5(path: str):
    """``h5py.File(path, "r")``, a truncated or foreign file becoming an InputError naming it."""
    import h5py

    with reading(path, what="cannot open the HDF5 file"):
        return h5py.File(path, "r")


def check_step_size(step_size) -> int:
    """``step_size`` as a positive int (jets per chunk)."""
    if isinstance(step_size, bool) or not isinstance(step_size, (int, np.integer)) or step_size < 1:
        raise InputError("step_size", f"expected a positive number of jets per chunk, got {step_size!r}")
    return int(step_size)


def check_label_mode(label_mode) -> str:
    """``label_mode`` if it is one of :data:`LABEL_MODES`, else an :class:`InputError`."""
    if not isinstance(label_mode, str) or label_mode not in LABEL_MODES:
        raise InputError("label_mode", f"expected one of {', '.join(map(repr, LABEL_MODES))}, got {label_mode!r}")
    return label_mode


def check_validate(validate) -> bool:
    """``validate`` if it is a bool, else an :class:`InputError`."""
    if not isinstance(validate, (bool, np.bool_)):
        raise InputError("validate", f"expected True or False, got {validate!r}")
    return bool(validate)


def wants_labels(label_mode: str, explicit: bool, present: bool) -> bool:
    """Whether a reader looks up and reads the labels.

    label_mode "required": always (a missing label column is then the reader's InputError); "optional": when the
    user named the label column(s) (``explicit``; missing -> InputError) or the file has them (``present``);
    "none": never.
    """
    return label_mode != "none" and (label_mode == "required" or explicit or present)


def no_label(n: int) -> np.ndarray:
    """(n,) int64 of -1: the labels of jets whose label is not read."""
    return np.full(n, -1, dtype=np.int64)


def options(branch_map: Mapping[str, str] | None, defaults: Mapping[str, str | None], fmt: str) -> dict[str, str | None]:
    """``defaults`` overridden by ``branch_map``; a key the format does not know is an :class:`InputError`."""
    branch_map = dict(branch_map or {})
    unknown = sorted(set(branch_map) - set(defaults))
    if unknown:
        raise InputError("branch_map", f"unknown key(s) {name_list(unknown)} for format {fmt!r}; "
                                       f"it understands {name_list(defaults)}")
    for key, value in branch_map.items():
        if not isinstance(value, str) or not value:
            raise InputError("branch_map", f"{key!r} must map to a non-empty name, got {value!r}")
    return {**defaults, **branch_map}


def no_labels(labels, path, fmt: str, label_name: str) -> None:
    """Reject ``labels=`` for formats whose file holds a single class-index column (``label_name``)."""
    if labels is not None:
        raise InputError(str(path), f"labels= selects ROOT label_* branches, but this is a {fmt!r} file whose class "
                                    f"index is {label_name!r}; use branch_map={{'label': ...}} to pick another column")


def chunk_ranges(n: int, step: int) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` entry ranges of at most ``step`` entries covering ``range(n)``."""
    for start in range(0, n, step):
        yield start, min(start + step, n)


def p4_from_padded(E: np.ndarray, px: np.ndarray, py: np.ndarray, pz: np.ndarray, keep: np.ndarray) -> ak.Array:
    """Jagged ``n_jets * var * {px, py, pz, E}`` from zero-padded ``(n_jets, M)`` components (GeV).

    keep: ``(n_jets, M)`` bool, True for real constituents; they are kept in file order.
    """
    counts = keep.sum(axis=1)
    return make_p4(*(ak.unflatten(np.asarray(comp)[keep], counts) for comp in (px, py, pz, E)))


def class_index(values, path, entries: tuple[int, int], name: str) -> np.ndarray:
    """``(n,)`` int64 class index from a label column (bool, integer or integral float).

    NaN and negative values become -1 (missing, rejected by ``JetArrays.validate``); non-integral or infinite
    values are an :class:`InputError`.
    """
    values = np.asarray(values)
    if values.ndim != 1:
        raise InputError(str(path), f"label {name!r} must hold one value per jet, got shape {values.shape}", entries=entries)
    if values.dtype.kind == "b":
        return values.astype(np.int64)
    if values.dtype.kind in "iu":
        return np.where(values < 0, -1, values).astype(np.int64)
    if values.dtype.kind != "f":
        raise InputError(str(path), f"label {name!r} must be numeric, got dtype {values.dtype}", entries=entries)
    nan = np.isnan(values)
    bad = ~nan & ((values != np.round(values)) | ~np.isfinite(values))
    if bad.any():
        first = entries[0] + int(np.flatnonzero(bad)[0])
        raise InputError(str(path), f"label {name!r} must be an integer class index, got {values[bad][0]!r} at "
                                    f"entry {first}", entries=entries)
    return np.where(nan | (values < 0), -1, np.nan_to_num(values)).astype(np.int64)
