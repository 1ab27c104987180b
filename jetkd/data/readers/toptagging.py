"""The Top Quark Tagging Reference dataset (Kasieczka et al.): a pandas ``DataFrame.to_hdf(key="table",
format="table")`` file, read with h5py alone.

Columns ``E_i, PX_i, PY_i, PZ_i`` (GeV) for constituents ``i < 200``, zero-padded, plus ``truthE, truthPX, truthPY,
truthPZ, ttv, is_signal_new``; one row per jet. The label is ``is_signal_new`` (1 = top). A constituent is real
when ``E_i != 0`` (padding is all-zero; NaN is kept so that validation reports it).

PyTables layout that pandas writes (what this reader relies on):

- group ``/table`` with attribute ``pandas_type = b"frame_table"`` (and ``non_index_axes``, the pickled column list);
- compound dataset ``/table/table``, one row per jet, fields ``index`` (int64) and ``values_block_K``
  (``(n_columns_K,)`` per row, one block per dtype), plus one scalar field per pandas data column, if any;
- attribute ``values_block_K_kind`` on ``/table/table``: the block's column names as a protocol-0 pickle of a
  list of str. It is unpickled with an unpickler that refuses every global, so no code can run.

Columns are located by name, so the column order within and across blocks does not matter.
``branch_map`` keys: ``key`` (the HDF5 group, default ``table``) and ``label`` (default ``is_signal_new``).
"""

from __future__ import annotations

import io
import pickle
import re
from collections.abc import Iterator

import h5py
import numpy as np

from jetkd.data.arrays import JetArrays
from jetkd.data.readers._common import (open_hdf5, check_step_size, chunk_ranges, class_index, name_list, no_labels, options,
                                        p4_from_padded, reading)
from jetkd.errors import InputError

DEFAULTS = {"key": None, "label": "is_signal_new"}
COMPONENTS = ("E", "PX", "PY", "PZ")
_CONSTITUENT = re.compile(r"^(E|PX|PY|PZ)_(\d+)$")
_BLOCK = re.compile(r"^values_block_\d+$")


# ----------------------------------------------------------------------------- layout


def _is_table(obj) -> bool:
    """Whether an HDF5 object is a pandas/PyTables ``format="table"`` group."""
    return (
        isinstance(obj, h5py.Group)
        and isinstance(obj.get("table", getlink=False), h5py.Dataset)
        and obj["table"].dtype.names is not None
        and (_attr_text(obj.attrs.get("pandas_type")) == "frame_table"
             or any(_BLOCK.match(name) for name in obj["table"].dtype.names))
    )


def sniff(h5: h5py.File) -> bool:
    """Whether an open HDF5 file holds a pandas table (the Top Tagging layout)."""
    return any(_is_table(h5[name]) for name in h5)


def _attr_text(value) -> str | None:
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("latin1")
    return value if isinstance(value, str) else None


class _NoGlobals(pickle.Unpickler):
    """Unpickles plain lists/tuples/str/numbers only; any class or function reference is refused."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _names_attr(path: str, ds: h5py.Dataset, attr: str) -> list[str]:
    """The list of column names stored (pickled) in attribute ``attr`` of ``ds``."""
    value = ds.attrs.get(attr)
    if value is None:
        raise InputError(path, f"pandas table {ds.name} has no attribute {attr!r} (the column names of a block)")
    try:
        if isinstance(value, np.ndarray):
            names = [_attr_text(v) or str(v) for v in value.ravel()]
        else:
            text = value.encode("latin1") if isinstance(value, str) else bytes(value)
            names = _NoGlobals(io.BytesIO(text), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as err:
        raise InputError(path, f"cannot parse the column names in {ds.name}.attrs[{attr!r}] ({err})") from err
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, (str, bytes)) for n in names):
        raise InputError(path, f"{ds.name}.attrs[{attr!r}] is not a list of column names")
    return [n.decode("latin1") if isinstance(n, bytes) else n for n in names]


def _columns(path: str, ds: h5py.Dataset) -> dict[str, tuple[str, int | None]]:
    """Column name -> ``(field, position within the block)`` (position None for a scalar data-column field)."""
    columns: dict[str, tuple[str, int | None]] = {}
    for field in ds.dtype.names:
        if field == "index":
            continue
        if _BLOCK.match(field):
            names = _names_attr(path, ds, f"{field}_kind")
            width = int(np.prod(ds.dtype[field].shape))
            if len(names) != width:
                raise InputError(path, f"{ds.name}: block {field} has {width} columns but {len(names)} names")
            columns.update({name: (field, i) for i, name in enumerate(names)})
        else:
            columns[field] = (field, None)
    return columns


class _Table:
    """The jets' table of an open file: where each needed column lives."""

    def __init__(self, path: str, h5: h5py.File, key: str | None, label: str):
        self.path = path
        if key is None:
            tables = [name for name in h5 if _is_table(h5[name])]
            if "table" in tables or not tables:
                key = "table"
            elif len(tables) == 1:
                key = tables[0]
            else:
                raise InputError(path, f"several pandas tables ({name_list(tables)}); choose one with branch_map={{'key': NAME}}")
        if key not in h5 or not _is_table(h5[key]):
            raise InputError(path, f"no pandas table {key!r} (a group holding a compound dataset 'table'); "
                                   f"top-level keys: {name_list(h5)}")
        self.ds = h5[key]["table"]
        columns = _columns(path, self.ds)
        found = {}
        for name in columns:
            m = _CONSTITUENT.match(name)
            if m:
                found.setdefault(m[1], set()).add(int(m[2]))
        if "E" not in found:
            raise InputError(path, f"no constituent columns E_i, PX_i, PY_i, PZ_i in {self.ds.name}; "
                                   f"columns: {name_list(columns)}")
        n_max = max(found["E"]) + 1
        missing = [f"{c}_{i}" for c in COMPONENTS for i in range(n_max) if i not in found.get(c, ())]
        if missing:
            raise InputError(path, f"missing constituent column(s) {name_list(missing, 10)} in {self.ds.name}")
        if label not in columns:
            raise InputError(path, f"no label column {label!r} in {self.ds.name}; columns: "
                                   f"{name_list([c for c in columns if not _CONSTITUENT.match(c)])} and E_i/PX_i/PY_i/PZ_i")
        self.label = label
        self.where = {c: [columns[f"{c}_{i}"] for i in range(n_max)] for c in COMPONENTS}
        self.where["label"] = [columns[label]]
        self.fields = sorted({field for locs in self.where.values() for field, _ in locs})

    def __len__(self) -> int:
        return int(self.ds.shape[0])

    def read(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """``{"E", "PX", "PY", "PZ"}`` as ``(n, M)`` arrays and ``"label"`` as ``(n, 1)``, for rows ``[start, stop)``."""
        with reading(self.path, (start, stop - 1), what="cannot read the table rows"):
            rows = self.ds.fields(self.fields)[start:stop]
        return {name: _gather(rows, locs) for name, locs in self.where.items()}


def _gather(rows, locs: list[tuple[str, int | None]]) -> np.ndarray:
    """``(n, len(locs))`` array of the columns at ``locs`` from structured ``rows``, one copy per block."""
    fields = [field for field, _ in locs]
    first = rows[fields[0]]
    out = np.empty((len(first), len(locs)), dtype=np.result_type(*(rows[f].dtype for f in set(fields))))
    positions = np.arange(len(locs))
    for field in set(fields):
        at = positions[[f == field for f in fields]]
        block = rows[field]
        out[:, at] = block[:, [locs[i][1] for i in at]] if block.ndim == 2 else block[:, None]
    return out


# ----------------------------------------------------------------------------- reading


def count(path, branch_map=None, labels=None) -> int:
    """Number of jets: the table's row count (HDF5 dataset shape)."""
    path, opts = str(path), options(branch_map, DEFAULTS, "toptagging")
    no_labels(labels, path, "toptagging", opts["label"])
    with open_hdf5(path) as h5:
        return len(_Table(path, h5, opts["key"], opts["label"]))


def iterate(path, step_size: int = 100_000, branch_map=None, labels=None) -> Iterator[JetArrays]:
    """Yield validated :class:`JetArrays` chunks of at most ``step_size`` jets, in file order."""
    path, step = str(path), check_step_size(step_size)
    opts = options(branch_map, DEFAULTS, "toptagging")
    no_labels(labels, path, "toptagging", opts["label"])
    with open_hdf5(path) as h5:
        table = _Table(path, h5, opts["key"], opts["label"])
        for start, stop in chunk_ranges(len(table), step):
            cols = table.read(start, stop)
            p4 = p4_from_padded(cols["E"], cols["PX"], cols["PY"], cols["PZ"], cols["E"] != 0)
            label = class_index(cols["label"][:, 0], path, (start, stop - 1), table.label)
            yield JetArrays(p4, label, path, start).validate()
