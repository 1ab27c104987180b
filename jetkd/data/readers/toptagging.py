"""The Top Quark Tagging Reference dataset (Kasieczka et al.): a pandas ``DataFrame.to_hdf`` file, in the
``format="table"`` layout of the published files or pandas' default ``format="fixed"`` (what a plain
``df.to_hdf(path, key="table")`` writes for a user's subset), read with h5py alone.

Columns ``E_i, PX_i, PY_i, PZ_i`` (GeV) for constituents ``i < 200``, zero-padded, plus ``truthE, truthPX, truthPY,
truthPZ, ttv, is_signal_new``; one row per jet. The label is ``is_signal_new`` (0 = QCD, 1 = top; class names
``("QCD", "top")``, None for another label column). A constituent is real when ``E_i != 0`` (padding is all-zero;
NaN is kept so that validation reports it).

PyTables layouts that pandas writes (what this reader relies on), in a group ``/KEY``:

- ``format="table"``: group attribute ``pandas_type = b"frame_table"`` (and ``non_index_axes``, the pickled column
  list); compound dataset ``/KEY/table``, one row per jet, fields ``index`` (int64) and ``values_block_K``
  (``(n_columns_K,)`` per row, one block per dtype), plus one scalar field per pandas data column, if any; attribute
  ``values_block_K_kind`` on ``/KEY/table``: the block's column names as a protocol-0 pickle of a list of str. It
  is unpickled with an unpickler that refuses every global, so no code can run.
- ``format="fixed"``: group attribute ``pandas_type = b"frame"``; datasets ``axis0`` (column names), ``axis1``
  (the index, ``(n_rows,)``), and per block K (one per dtype) ``blockK_items`` (its column names, fixed-length
  UTF-8 bytes) and ``blockK_values`` (``(n_rows, n_columns_K)``, attribute ``transposed = 1``). A frame without
  rows stores ``(1, 1)`` placeholders with a pickled ``shape`` attribute instead.

Columns are located by name, so the column order within and across blocks does not matter.
``branch_map`` keys: ``key`` (the HDF5 group, default ``table``, else the only pandas frame in the file) and
``label`` (default ``is_signal_new``).
"""

from __future__ import annotations

import io
import pickle
import re
from collections.abc import Iterator

import h5py
import numpy as np

from jetkd.data.arrays import JetArrays
from jetkd.data.readers._common import (check_label_mode, check_step_size, check_validate, chunk_ranges, class_index,
                                        name_list, no_label, no_labels, open_hdf5, options, p4_from_padded, reading,
                                        wants_labels)
from jetkd.errors import InputError

DEFAULTS = {"key": None, "label": "is_signal_new"}
CLASS_NAMES = ("QCD", "top")  # of the default label
COMPONENTS = ("E", "PX", "PY", "PZ")
_CONSTITUENT = re.compile(r"^(E|PX|PY|PZ)_(\d+)$")
_BLOCK = re.compile(r"^values_block_\d+$")
_FIXED_ITEMS = re.compile(r"^block(\d+)_items$")


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


def _is_fixed(obj) -> bool:
    """Whether an HDF5 object is a pandas ``format="fixed"`` DataFrame group (``pandas_type = "frame"``, or
    ``blockK_items`` / ``blockK_values`` datasets)."""
    return isinstance(obj, h5py.Group) and (
        _attr_text(obj.attrs.get("pandas_type")) == "frame"
        or any(_values_key(items) in obj for items in _block_items(obj))
    )


def _block_items(group: h5py.Group) -> list[str]:
    """The ``blockK_items`` names in a fixed-format group, by K."""
    found = {int(m[1]): name for name in group if (m := _FIXED_ITEMS.match(name))}
    return [found[k] for k in sorted(found)]


def _values_key(items: str) -> str:
    """``blockK_values`` for ``blockK_items``."""
    return items.removesuffix("_items") + "_values"


def _is_frame(obj) -> bool:
    return _is_table(obj) or _is_fixed(obj)


def sniff(h5: h5py.File) -> bool:
    """Whether an open HDF5 file holds a pandas DataFrame (table or fixed layout: the Top Tagging layout)."""
    return any(_is_frame(h5[name]) for name in h5)


def _attr_text(value) -> str | None:
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("latin1")
    return value if isinstance(value, str) else None


class _NoGlobals(pickle.Unpickler):
    """Unpickles plain lists/tuples/str/numbers only; any class or function reference is refused."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _unpickle(value):
    """A protocol-0 pickle of plain values from an HDF5 attribute (bytes or str)."""
    text = value.encode("latin1") if isinstance(value, str) else bytes(value)
    return _NoGlobals(io.BytesIO(text), encoding="latin1").load()


def _names_attr(path: str, ds: h5py.Dataset, attr: str) -> list[str]:
    """The list of column names stored (pickled) in attribute ``attr`` of ``ds``."""
    value = ds.attrs.get(attr)
    if value is None:
        raise InputError(path, f"pandas table {ds.name} has no attribute {attr!r} (the column names of a block)")
    try:
        names = [_attr_text(v) or str(v) for v in value.ravel()] if isinstance(value, np.ndarray) else _unpickle(value)
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as err:
        raise InputError(path, f"cannot parse the column names in {ds.name}.attrs[{attr!r}] ({err})") from err
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, (str, bytes)) for n in names):
        raise InputError(path, f"{ds.name}.attrs[{attr!r}] is not a list of column names")
    return [n.decode("latin1") if isinstance(n, bytes) else n for n in names]


class _TableLayout:
    """``format="table"``: columns are fields (or positions within ``values_block_K`` fields) of one compound
    dataset ``/KEY/table``."""

    def __init__(self, path: str, group: h5py.Group):
        self.path, self.ds = path, group["table"]
        self.name = self.ds.name
        self.columns: dict[str, tuple[str, int | None]] = {}  # name -> (field, position in block or None)
        for field in self.ds.dtype.names:
            if field == "index":
                continue
            if _BLOCK.match(field):
                names = _names_attr(path, self.ds, f"{field}_kind")
                width = int(np.prod(self.ds.dtype[field].shape))
                if len(names) != width:
                    raise InputError(path, f"{self.name}: block {field} has {width} columns but {len(names)} names")
                self.columns.update({name: (field, i) for i, name in enumerate(names)})
            else:
                self.columns[field] = (field, None)

    def __len__(self) -> int:
        return int(self.ds.shape[0])

    def check(self, fields: list[str]) -> None:
        """The ``fields`` holding needed columns must be numeric."""
        for field in fields:
            _check_numeric(self.path, f"{self.name}[{field!r}]", self.ds.dtype[field].base)

    def read(self, fields: list[str], start: int, stop: int):
        """Structured rows ``[start, stop)`` of ``fields``: ``rows[field]`` is ``(n,)`` or ``(n, n_columns)``."""
        return self.ds.fields(fields)[start:stop]


class _FixedLayout:
    """``format="fixed"``: one 2-D dataset ``blockK_values`` (rows x columns) per block, its column names in
    ``blockK_items``."""

    def __init__(self, path: str, group: h5py.Group):
        self.path, self.group, self.name = path, group, group.name
        self.rows = self._n_rows()
        self.columns: dict[str, tuple[str, int | None]] = {}  # name -> (blockK_values, column in the block)
        self.widths: dict[str, int] = {}  # blockK_values -> number of columns
        for items in _block_items(group):
            values = _values_key(items)
            if not isinstance(group.get(values), h5py.Dataset):
                raise InputError(path, f"pandas frame {self.name} has a {items!r} but no dataset {values!r}")
            names = self._items(items)
            self.widths[values] = len(names)
            self.columns.update({name: (values, i) for i, name in enumerate(names)})

    def _n_rows(self) -> int:
        """Row count: the length of the index ``axis1`` (0 for the placeholder of an empty frame)."""
        axis1 = self.group.get("axis1")
        if not isinstance(axis1, h5py.Dataset) or axis1.ndim != 1:
            raise InputError(self.path, f"pandas frame {self.name} has no 1-D index dataset 'axis1'")
        return 0 if "shape" in axis1.attrs else int(axis1.shape[0])

    def _items(self, key: str) -> list[str]:
        """Column names in dataset ``key`` (fixed-length bytes, decoded as UTF-8; numbers as their str)."""
        ds = self.group[key]
        if not isinstance(ds, h5py.Dataset) or ds.ndim != 1:
            raise InputError(self.path, f"{ds.name} must be a 1-D dataset of column names (MultiIndex columns are "
                                        "not supported)")
        with reading(self.path, what=f"cannot read {ds.name}"):
            names = ds[()]
        return [n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in names.tolist()]

    def check(self, fields: list[str]) -> None:
        """The blocks holding needed columns: numeric, ``(n_rows, n_columns)`` stored transposed as pandas does
        (an empty frame's placeholders are never read)."""
        for key in fields:
            ds = self.group[key]
            _check_numeric(self.path, ds.name, ds.dtype)
            if self.rows and (ds.shape != (self.rows, self.widths[key]) or not ds.attrs.get("transposed", False)):
                raise InputError(self.path, f"{ds.name} must be a ({self.rows}, {self.widths[key]}) array stored "
                                            f"transposed (rows x columns), got shape {ds.shape}")

    def __len__(self) -> int:
        return self.rows

    def read(self, fields: list[str], start: int, stop: int) -> dict[str, np.ndarray]:
        """``{blockK_values: (n, n_columns_K)}`` of rows ``[start, stop)`` for the blocks in ``fields``."""
        return {key: self.group[key][start:stop] for key in fields}


class _Frame:
    """The jets' DataFrame of an open file: where each needed column lives, in either layout.

    label: the label column, or None to not read (nor require) labels.
    """

    def __init__(self, path: str, layout: _TableLayout | _FixedLayout, label: str | None):
        self.path, self.layout = path, layout
        columns, name = layout.columns, layout.name
        found = {}
        for column in columns:
            m = _CONSTITUENT.match(column)
            if m:
                found.setdefault(m[1], set()).add(int(m[2]))
        if "E" not in found:
            raise InputError(path, f"no constituent columns E_i, PX_i, PY_i, PZ_i in {name}; "
                                   f"columns: {name_list(columns)}")
        n_max = max(found["E"]) + 1
        missing = [f"{c}_{i}" for c in COMPONENTS for i in range(n_max) if i not in found.get(c, ())]
        if missing:
            raise InputError(path, f"missing constituent column(s) {name_list(missing, 10)} in {name}")
        if label is not None and label not in columns:
            raise InputError(path, f"no label column {label!r} in {name}; columns: "
                                   f"{name_list([c for c in columns if not _CONSTITUENT.match(c)])} and E_i/PX_i/PY_i/PZ_i")
        self.label = label
        self.where = {c: [columns[f"{c}_{i}"] for i in range(n_max)] for c in COMPONENTS}
        if label is not None:
            self.where["label"] = [columns[label]]
        self.fields = sorted({field for locs in self.where.values() for field, _ in locs})
        layout.check(self.fields)

    def __len__(self) -> int:
        return len(self.layout)

    def read(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """``{"E", "PX", "PY", "PZ"}`` as ``(n, M)`` arrays and ``"label"`` (if read) as ``(n, 1)``, rows
        ``[start, stop)``."""
        with reading(self.path, (start, stop - 1), what="cannot read the table rows"):
            rows = self.layout.read(self.fields, start, stop)
        return {name: _gather(rows, locs) for name, locs in self.where.items()}


def _choose_key(path: str, h5: h5py.File, key: str | None) -> str:
    """The group of the jets' frame: ``key``, else ``table``, else the only pandas frame in the file."""
    if key is None:
        frames = [name for name in h5 if _is_frame(h5[name])]
        if "table" in frames or not frames:
            key = "table"
        elif len(frames) == 1:
            key = frames[0]
        else:
            raise InputError(path, f"several pandas frames ({name_list(frames)}); choose one with branch_map={{'key': NAME}}")
    if key not in h5 or not _is_frame(h5[key]):
        raise InputError(path, f"no pandas frame {key!r} (a DataFrame.to_hdf group, format 'table' or 'fixed'); "
                               f"top-level keys: {name_list(h5)}")
    return key


def _check_numeric(path: str, what: str, dtype: np.dtype) -> None:
    if dtype.kind not in "biuf":
        raise InputError(path, f"{what} holds {dtype} values; the constituent and label columns must be numeric")


def _layout(path: str, h5: h5py.File, key: str | None) -> _TableLayout | _FixedLayout:
    """The column layout of the jets' frame (see :func:`_choose_key`)."""
    group = h5[_choose_key(path, h5, key)]
    return _TableLayout(path, group) if _is_table(group) else _FixedLayout(path, group)


def _gather(rows, locs: list[tuple[str, int | None]]) -> np.ndarray:
    """``(n, len(locs))`` array of the columns at ``locs`` from ``rows`` (``rows[field]`` is ``(n,)`` or
    ``(n, n_columns)``), one copy per block."""
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


def _open_frame(path: str, h5: h5py.File, opts: dict, label_mode: str, branch_map) -> _Frame:
    """The frame, reading the label column when :func:`wants_labels` says so."""
    layout = _layout(path, h5, opts["key"])
    read = wants_labels(label_mode, "label" in (branch_map or {}), opts["label"] in layout.columns)
    return _Frame(path, layout, opts["label"] if read else None)


def count(path, branch_map=None, labels=None, label_mode: str = "required") -> int:
    """Number of jets: the frame's row count (HDF5 dataset shape)."""
    path, opts = str(path), options(branch_map, DEFAULTS, "toptagging")
    mode = check_label_mode(label_mode)
    no_labels(labels, path, "toptagging", opts["label"])
    with open_hdf5(path) as h5:
        return len(_open_frame(path, h5, opts, mode, branch_map))


def iterate(path, step_size: int = 100_000, branch_map=None, labels=None, label_mode: str = "required",
            validate: bool = True) -> Iterator[JetArrays]:
    """Yield :class:`JetArrays` chunks of at most ``step_size`` jets, in file order, as read (:func:`iter_jets`
    validates them; ``validate`` is taken for the readers' common signature)."""
    path, step = str(path), check_step_size(step_size)
    opts = options(branch_map, DEFAULTS, "toptagging")
    mode, validate = check_label_mode(label_mode), check_validate(validate)
    no_labels(labels, path, "toptagging", opts["label"])
    with open_hdf5(path) as h5:
        frame = _open_frame(path, h5, opts, mode, branch_map)
        names = CLASS_NAMES if frame.label == DEFAULTS["label"] else None
        branches = {"px": "PX_*", "py": "PY_*", "pz": "PZ_*", "E": "E_*", "n": "E_*", "label": opts["label"]}
        for start, stop in chunk_ranges(len(frame), step):
            cols = frame.read(start, stop)
            p4 = p4_from_padded(cols["E"], cols["PX"], cols["PY"], cols["PZ"], cols["E"] != 0)
            label = (no_label(stop - start) if frame.label is None
                     else class_index(cols["label"][:, 0], path, (start, stop - 1), frame.label))
            yield JetArrays(p4, label, path, start, names, branches)
