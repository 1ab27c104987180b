"""Readers: miniature files in each real layout are read back exactly; bad input is a one-line InputError."""

from __future__ import annotations

import json
import pickle
import sys
import zipfile
from pathlib import Path

import awkward as ak
import energyflow as ef
import h5py
import numpy as np
import pytest
import uproot

from jetkd.data.arrays import JetArrays, make_p4
from jetkd.data.readers import FORMATS, count_jets, detect_format, file_metadata, iter_jets
from jetkd.errors import InputError

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "lorentznet_top_parity.npz"
N_JETS = 5


# ----------------------------------------------------------------------------- helpers


def make_jets(n=N_JETS, max_particles=7, seed=0):
    """``n`` jets as jagged float32 ``(px, py, pz, E)`` (GeV, massive, no zero constituents) and a class index."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, max_particles + 1, n)
    p = rng.normal(0, 40, (counts.sum(), 3)).astype(np.float32)
    E = np.sqrt((p.astype(np.float64) ** 2).sum(1) + 0.14**2).astype(np.float32)
    comps = [ak.unflatten(c, counts) for c in (p[:, 0], p[:, 1], p[:, 2], E)]
    return comps, np.arange(n) % 2


def read_all(path, **kwargs):
    chunks = list(iter_jets(path, **kwargs))
    return chunks, ak.concatenate([c.p4 for c in chunks]), np.concatenate([c.label for c in chunks])


def assert_jets_equal(p4, comps, exact=True):
    for name, expected in zip(("px", "py", "pz", "E"), comps, strict=True):
        assert ak.all(ak.num(p4[name]) == ak.num(expected))
        got, want = ak.to_numpy(ak.flatten(p4[name])), ak.to_numpy(ak.flatten(expected))
        assert got.dtype == np.float32
        if exact:
            np.testing.assert_array_equal(got, want)
        else:
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)


def raises_input_error(fn, path, *needles):
    """``fn()`` raises a one-line InputError naming ``path`` (its file name) and every ``needle``."""
    with pytest.raises(InputError) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg
    assert Path(path).name in msg, msg
    for needle in needles:
        assert needle in msg, msg
    return msg


def drain(path, **kwargs):
    return lambda: list(iter_jets(path, **kwargs))


def truncate(path):
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])
    return path


# ----------------------------------------------------------------------------- ROOT


def write_root(path, comps, label, layout, tree="tree", extra=None, with_labels=True):
    """A JetClass-style file: ``layout`` in ttree_zip / ttree_branches (mktree) or rntuple_zip / rntuple_branches
    (``file[name] = {...}``, which uproot >= 5.7 writes as an RNTuple); no ``label_*`` branches unless
    ``with_labels``."""
    px, py, pz, E = comps
    onehot = {"label_QCD": (label == 0).astype(np.int32), "label_Tbqq": (label == 1).astype(np.int32)}
    onehot = onehot if with_labels else {}
    jet = {"jet_pt": np.hypot(ak.to_numpy(ak.sum(px, 1)), ak.to_numpy(ak.sum(py, 1))).astype(np.float32),
           "jet_nparticles": ak.to_numpy(ak.num(px)).astype(np.int32)}
    if layout.endswith("_zip"):
        data = {"part": ak.zip({"px": px, "py": py, "pz": pz, "energy": E}), **jet, **onehot}
    else:
        data = {"part_px": px, "part_py": py, "part_pz": pz, "part_energy": E, **jet, **onehot}
    data.update(extra or {})
    with uproot.recreate(path) as f:
        if layout.startswith("ttree"):
            f.mktree(tree, {k: v.type if isinstance(v, ak.Array) else v.dtype for k, v in data.items()})
            f[tree].extend(data)
        else:
            f[tree] = data
    return path


ROOT_LAYOUTS = ["ttree_zip", "ttree_branches", "rntuple_zip", "rntuple_branches"]


@pytest.mark.parametrize("layout", ROOT_LAYOUTS)
def test_root_roundtrip(tmp_path, layout):
    comps, label = make_jets()
    path = write_root(tmp_path / "jets.root", comps, label, layout)
    assert detect_format(path) == "root"
    assert count_jets(path) == N_JETS
    chunks, p4, got_label = read_all(path, step_size=2)
    assert [c.entry_start for c in chunks] == [0, 2, 4] and [len(c) for c in chunks] == [2, 2, 1]
    assert all(c.source == str(path) for c in chunks)
    assert_jets_equal(p4, comps)
    np.testing.assert_array_equal(got_label, label)
    assert got_label.dtype == np.int64


def test_root_label_selection_and_branch_map(tmp_path):
    comps, label = make_jets()
    extra = {"is_signal": label.astype(np.int64), "label_bool": np.ones(N_JETS, bool)}
    path = write_root(tmp_path / "jets.root", comps, label, "ttree_branches", extra=extra)
    _, _, swapped = read_all(path, labels=["label_Tbqq", "label_QCD"])
    np.testing.assert_array_equal(swapped, 1 - label)
    _, _, direct = read_all(path, branch_map={"label": "is_signal"})
    np.testing.assert_array_equal(direct, label)
    raises_input_error(drain(path, labels=["label_QCD", "label_Hbb"]), path, "label_Hbb", "label_QCD, label_Tbqq")
    # every label_* branch: label_bool is set for every jet, so QCD jets have two labels set
    raises_input_error(drain(path), path, ":label_QCD,label_Tbqq,label_bool[", "2 labels set at entry 0",
                       "(label_QCD, label_bool); expected exactly one per jet")

    renamed = tmp_path / "renamed.root"
    with uproot.recreate(renamed) as f:
        data = {"px": comps[0], "py": comps[1], "pz": comps[2], "e": ak.values_astype(comps[3], np.float64),
                "is_top": label.astype(bool)}
        f.mktree("Events", {k: v.type if isinstance(v, ak.Array) else v.dtype for k, v in data.items()})
        f["Events"].extend(data)
    names = {"part_px": "px", "part_py": "py", "part_pz": "pz", "part_energy": "e", "label": "is_top"}
    _, p4, got = read_all(renamed, branch_map=names)
    assert_jets_equal(p4, comps)
    np.testing.assert_array_equal(got, label)
    raises_input_error(drain(renamed), renamed, "no branch 'part_px'", "available branches: npx, px, npy, py")


def test_root_tree_choice_and_fixed_size_padding(tmp_path):
    path = tmp_path / "two.root"
    fixed = np.array([[[1, 2, 3, 4], [0, 0, 0, 0]], [[5, 6, 7, 11], [1, 1, 1, 2]]], np.float32)  # (2 jets, 2, 4)
    with uproot.recreate(path) as f:
        for name in ("a", "b"):
            f.mktree(name, {f"part_{c}": "2 * float32" for c in ("px", "py", "pz", "energy")} | {"label_x": np.int8})
            f[name].extend({f"part_{c}": fixed[..., i] for i, c in enumerate(("px", "py", "pz", "energy"))}
                           | {"label_x": np.ones(2, np.int8)})
    raises_input_error(lambda: count_jets(path), path, "several trees", "a, b")
    assert count_jets(path, branch_map={"tree": "b"}) == 2
    _, p4, _ = read_all(path, branch_map={"tree": "b"})
    assert ak.to_list(ak.num(p4)) == [1, 2]  # the all-zero constituent is padding
    assert ak.to_list(p4.E) == [[4], [11, 2]]
    raises_input_error(drain(path, branch_map={"tree": "c"}), path, "no tree 'c'")


def test_root_bad_content(tmp_path):
    comps, label = make_jets()
    px, py, pz, E = comps
    bad_px = ak.unflatten(np.where(np.arange(ak.count(px)) == ak.count(px[:3]), np.nan, ak.flatten(px)), ak.num(px))
    nan = write_root(tmp_path / "nan.root", (bad_px, py, pz, E), label, "ttree_zip")
    raises_input_error(drain(nan, step_size=2), nan, "[entries 2-3]", "non-finite", "px", "first at entry 3")

    empty = write_root(tmp_path / "empty.root", [ak.concatenate([c[:1], c[1:1 + 1][:, :0], c[2:]]) for c in comps],
                       label, "rntuple_zip")
    raises_input_error(drain(empty), empty, "no constituents", "first at entry 1")

    nolabel = write_root(tmp_path / "nolabel.root", comps, np.array([0, 1, 2, 0, 1]), "ttree_zip")
    raises_input_error(drain(nolabel), nolabel, "missing label", "first at entry 2")

    missing = tmp_path / "missing.root"
    with uproot.recreate(missing) as f:
        f["tree"] = {"part": ak.zip({"px": px, "py": py, "energy": E}), "label_QCD": label}
    raises_input_error(drain(missing), missing, "'part_pz'", "available branches", "part.px")
    raises_input_error(lambda: count_jets(missing), missing, "'part_pz'")

    mismatch = write_root(tmp_path / "mismatch.root", (px, py, pz[:, :1], E), label, "rntuple_branches")
    raises_input_error(drain(mismatch), mismatch, "'part_px' and 'part_pz' have different numbers")

    nolabels = tmp_path / "nolabels.root"
    with uproot.recreate(nolabels) as f:
        f["tree"] = {"part": ak.zip({"px": px, "py": py, "pz": pz, "energy": E})}
    raises_input_error(drain(nolabels), nolabels, "no label_* branches")



@pytest.mark.parametrize("layout", ["ttree_zip", "rntuple_zip"])
def test_root_truncated(tmp_path, layout):
    cut = truncate(write_root(tmp_path / "cut.root", *make_jets(n=2000, seed=1), layout))
    assert detect_format(cut) == "root"  # the magic bytes survive; the metadata or the data do not
    raises_input_error(lambda: count_jets(cut), cut, "truncated")
    raises_input_error(drain(cut), cut, "truncated")


# ----------------------------------------------------------------------------- Top Tagging Reference HDF5


def toptagging_frame(n=N_JETS, n_const=200, seed=2):
    """Columns of the reference file, in its order: E_i, PX_i, PY_i, PZ_i (i < 200), truth*, ttv, is_signal_new."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, min(60, n_const) + 1, n)
    p = rng.normal(0, 30, (n, n_const, 3)).astype(np.float32)
    E = np.sqrt((p**2).sum(-1))
    real = np.arange(n_const) < counts[:, None]
    p[~real], E[~real] = 0, 0
    cols = {}
    for i in range(n_const):
        cols.update({f"E_{i}": E[:, i], f"PX_{i}": p[:, i, 0], f"PY_{i}": p[:, i, 1], f"PZ_{i}": p[:, i, 2]})
    truth = rng.normal(0, 300, (n, 4)).astype(np.float32)
    cols.update({f"truth{c}": truth[:, k] for k, c in enumerate(("E", "PX", "PY", "PZ"))})
    cols["ttv"] = np.zeros(n, np.int64)
    cols["is_signal_new"] = np.arange(n, dtype=np.int64) % 2
    expected = [ak.unflatten(c[real], counts) for c in (p[..., 0], p[..., 1], p[..., 2], E)]
    return cols, expected, cols["is_signal_new"]


def write_pandas(path, cols, fmt="table", key="table"):
    """``DataFrame(cols).to_hdf(path, key=key)`` in pandas' ``fmt`` ("table", or "fixed": to_hdf's default)."""
    pd = pytest.importorskip("pandas")
    pytest.importorskip("tables")
    frame = pd.DataFrame(cols)
    if fmt == "fixed":
        frame.to_hdf(path, key=key)  # no format=: pandas' default fixed layout, as users write subsets
    else:
        frame.to_hdf(path, key=key, format=fmt)
    return path


def write_pytables_replica(path, blocks):
    """The PyTables layout pandas writes, built with h5py: ``blocks`` is ``[(names, dtype)]``, one values block
    each, in the given column order."""
    n = len(next(iter(blocks[0][2].values())))
    dtype = [("index", "<i8")] + [(f"values_block_{k}", dt, (len(names),)) for k, (names, dt, _) in enumerate(blocks)]
    rows = np.zeros(n, dtype)
    rows["index"] = np.arange(n)
    with h5py.File(path, "w") as f:
        group = f.create_group("table")
        group.attrs["pandas_type"] = np.bytes_(b"frame_table")
        group.attrs["non_index_axes"] = np.bytes_(pickle.dumps([(1, [c for names, _, _ in blocks for c in names])], 0))
        for k, (names, _, cols) in enumerate(blocks):
            rows[f"values_block_{k}"] = np.stack([cols[c] for c in names], 1)
        ds = group.create_dataset("table", data=rows)
        for k, (names, dt, _) in enumerate(blocks):
            ds.attrs[f"values_block_{k}_kind"] = np.bytes_(pickle.dumps(list(names), 0))
            ds.attrs[f"values_block_{k}_dtype"] = np.bytes_(np.dtype(dt).name.encode())
    return path


def test_toptagging_pandas_layout(tmp_path):
    cols, expected, label = toptagging_frame()
    path = write_pandas(tmp_path / "train.h5", cols)
    with h5py.File(path) as f:  # the layout this reader relies on
        assert f["table/table"].dtype.names == ("index", "values_block_0", "values_block_1")
        assert b"is_signal_new" in f["table/table"].attrs["values_block_1_kind"]
    assert detect_format(path) == "toptagging"
    assert count_jets(path) == N_JETS
    chunks, p4, got = read_all(path, step_size=3)
    assert [c.entries for c in chunks] == [(0, 2), (3, 4)]
    assert_jets_equal(p4, expected)
    np.testing.assert_array_equal(got, label)


def test_toptagging_column_order_does_not_matter(tmp_path):
    cols, expected, label = toptagging_frame(n=4, n_const=30)
    names = list(cols)[::-1]  # reversed: is_signal_new first, PZ_29 ... E_0 last
    floats = [c for c in names if c not in ("ttv",)]
    cols = {c: v.astype(np.float32) for c, v in cols.items()}
    path = write_pytables_replica(tmp_path / "replica.h5", [(floats, "<f4", cols), (["ttv"], "<i8", cols)])
    assert detect_format(path) == "toptagging"
    _, p4, got = read_all(path)
    assert_jets_equal(p4, expected)
    np.testing.assert_array_equal(got, label)


def test_toptagging_bad_content(tmp_path):
    cols, _, _ = toptagging_frame()
    no_pz = write_pandas(tmp_path / "no_pz.h5", {c: v for c, v in cols.items() if c != "PZ_7"})
    raises_input_error(drain(no_pz), no_pz, "PZ_7")
    no_label = write_pandas(tmp_path / "no_label.h5", {c: v for c, v in cols.items() if c != "is_signal_new"})
    raises_input_error(lambda: count_jets(no_label), no_label, "'is_signal_new'", "truthE")
    nan = dict(cols, PX_0=np.where(np.arange(N_JETS) == 4, np.nan, cols["PX_0"]).astype(np.float32))
    nan = write_pandas(tmp_path / "nan.h5", nan)
    raises_input_error(drain(nan, step_size=2), nan, "[entries 4-4]", "non-finite")
    jet1_padding = {c: np.where(np.arange(N_JETS) == 1, 0, v).astype(v.dtype) if c[0] in "EP" else v
                    for c, v in cols.items()}  # jet 1: every E_i, PX_i, ... = 0 -> no constituents
    empty = write_pandas(tmp_path / "empty.h5", jet1_padding)
    raises_input_error(drain(empty), empty, "no constituents", "first at entry 1")
    raises_input_error(drain(no_pz, labels=["label_QCD"]), no_pz, "labels=")
    cut = truncate(write_pandas(tmp_path / "cut.h5", cols))
    raises_input_error(lambda: detect_format(cut), cut, "cannot open the HDF5 file")
    raises_input_error(drain(cut, format="toptagging"), cut, "truncated or corrupt")


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("fmt", ["table", "fixed"])
def test_toptagging_pandas_formats_read_exactly(tmp_path, monkeypatch, fmt, shuffle):
    """A subset saved with ``to_hdf`` in either pandas format, columns in any order, reads back exactly."""
    cols, expected, label = toptagging_frame(n=7, n_const=30)
    if shuffle:
        cols = {str(c): cols[c] for c in np.random.default_rng(5).permutation(list(cols))}
    path = write_pandas(tmp_path / "subset.h5", cols, fmt=fmt)
    if fmt == "fixed":
        with h5py.File(path) as f:  # the layout this reader relies on: one (rows x columns) block per dtype
            group = f["table"]
            assert group.attrs["pandas_type"] == b"frame" and "table" not in group
            blocks = {k[: -len("_items")]: [n.decode() for n in group[k][()]] for k in group if k.endswith("_items")}
            assert len(blocks) == 2 and sorted(c for names in blocks.values() for c in names) == sorted(cols)
            assert ["is_signal_new", "ttv"] in [sorted(names) for names in blocks.values()]
            for block, names in blocks.items():
                assert group[f"{block}_values"].shape == (7, len(names))
    monkeypatch.setitem(sys.modules, "pandas", None)  # read with h5py alone
    monkeypatch.setitem(sys.modules, "tables", None)
    assert detect_format(path) == "toptagging"
    assert count_jets(path) == 7
    chunks, p4, got = read_all(path, step_size=3)
    assert [c.entries for c in chunks] == [(0, 2), (3, 5), (6, 6)]
    assert all(c.class_names == ("QCD", "top") for c in chunks)
    assert_jets_equal(p4, expected)
    np.testing.assert_array_equal(got, label)


def test_toptagging_fixed_frame_choice_and_content(tmp_path):
    cols, expected, label = toptagging_frame(n=3, n_const=10)
    only = write_pandas(tmp_path / "only.h5", cols, fmt="fixed", key="jets")
    _, p4, got = read_all(only)  # no frame called "table": the only one
    assert_jets_equal(p4, expected)
    two = write_pandas(write_pandas(tmp_path / "two.h5", cols, fmt="fixed", key="jets"), cols, fmt="fixed", key="more")
    raises_input_error(drain(two), two, "several pandas frames (jets, more)", "branch_map={'key': NAME}")
    assert count_jets(two, branch_map={"key": "more"}) == 3
    mixed = write_pandas(write_pandas(tmp_path / "mixed.h5", cols, fmt="fixed", key="other"), cols, key="table")
    assert detect_format(mixed) == "toptagging" and count_jets(mixed) == 3  # "table" wins
    empty = write_pandas(tmp_path / "empty.h5", {c: v[:0] for c, v in cols.items()}, fmt="fixed")
    assert count_jets(empty) == 0 and list(iter_jets(empty)) == []
    text = write_pandas(tmp_path / "text.h5", dict(cols, is_signal_new=np.array(["top", "qcd", "top"], object)),
                        fmt="fixed")
    raises_input_error(drain(text), text, "must be numeric")
    assert len(next(iter_jets(text, label_mode="none"))) == 3


# ----------------------------------------------------------------------------- LorentzNet HDF5


def lgn_arrays(n=6):
    """``(Pmu, Nobj, is_signal)``: the first ``n`` jets of the reference parity file (or synthetic ones)."""
    if REFERENCE.exists():
        with np.load(REFERENCE) as ref:
            return ref["Pmu"][:n], ref["Nobj"][:n], ref["is_signal"][:n]
    comps, label = make_jets(n, max_particles=20)
    nobj = ak.to_numpy(ak.num(comps[0]))
    pmu = np.zeros((n, 200, 4), np.float32)
    for k, c in enumerate((comps[3], comps[0], comps[1], comps[2])):
        pmu[..., k] = ak.to_numpy(ak.fill_none(ak.pad_none(c, 200, clip=True), 0))
    return pmu, nobj, label


def write_lgn(path, pmu, nobj, is_signal, drop=()):
    data = {"Nobj": nobj, "Pmu": pmu, "is_signal": is_signal, "truth_Pmu": pmu[:, 0] * 2,
            "jet_pt": np.hypot(pmu[..., 1].sum(1), pmu[..., 2].sum(1))}
    with h5py.File(path, "w") as f:
        for key, value in data.items():
            if key not in drop:
                f.create_dataset(key, data=value, compression="gzip")
    return path


def test_lgn_roundtrip(tmp_path):
    pmu, nobj, is_signal = lgn_arrays()
    path = write_lgn(tmp_path / "test.h5", pmu, nobj, is_signal)
    assert detect_format(path) == "lgn"
    assert count_jets(path) == len(nobj)
    chunks, p4, got = read_all(path, step_size=4)
    assert [len(c) for c in chunks] == [4, 2]
    keep = np.arange(pmu.shape[1]) < nobj[:, None]
    expected = [ak.unflatten(pmu[..., k][keep], nobj) for k in (1, 2, 3, 0)]
    assert_jets_equal(p4, expected)
    np.testing.assert_array_equal(got, is_signal)


def test_lgn_bad_content(tmp_path):
    pmu, nobj, is_signal = lgn_arrays()
    path = write_lgn(tmp_path / "nolabel.h5", pmu, nobj, is_signal, drop=("is_signal",))
    raises_input_error(drain(path), path, "no dataset 'is_signal'", "Nobj, Pmu")
    empty = write_lgn(tmp_path / "empty.h5", pmu, np.where(np.arange(len(nobj)) == 3, 0, nobj), is_signal)
    raises_input_error(drain(empty), empty, "no constituents", "first at entry 3")
    inf = pmu.copy()
    inf[5, 0, 3] = np.inf
    inf = write_lgn(tmp_path / "inf.h5", inf, nobj, is_signal)
    raises_input_error(drain(inf, step_size=4), inf, "[entries 4-5]", "non-finite", "pz", "first at entry 5")
    too_many = write_lgn(tmp_path / "too_many.h5", pmu, np.full_like(nobj, 201), is_signal)
    raises_input_error(drain(too_many), too_many, "Nobj must be in [0, 200]")


# ----------------------------------------------------------------------------- EnergyFlow quark/gluon npz


PIDS = np.array([22, 211, -211, 321, -321, 130, 2112, -2112, 2212, -2212, 11, -11, 13, -13])


def efqg_arrays(n=N_JETS, max_particles=12, seed=3):
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, max_particles + 1, n)
    X = np.zeros((n, max_particles, 4))
    real = np.arange(max_particles) < counts[:, None]
    X[real] = np.column_stack([rng.exponential(20, counts.sum()), rng.normal(0, 2, counts.sum()),
                               rng.uniform(0, 2 * np.pi, counts.sum()), rng.choice(PIDS, counts.sum())])
    return X, (np.arange(n) % 2).astype(np.float64)


def test_efqg_roundtrip(tmp_path):
    X, y = efqg_arrays()
    X[0, 0, 3] = 9940003  # a known id too large for the bincount lookup
    path = tmp_path / "QG_jets.npz"
    np.savez_compressed(path, X=X, y=y)
    assert detect_format(path) == "efqg"
    assert count_jets(path) == N_JETS
    chunks, p4, got = read_all(path, step_size=2)
    assert [c.entry_start for c in chunks] == [0, 2, 4]
    expected = [ef.p4s_from_ptyphipids(x[x[:, 0] > 0], error_on_unknown=True) for x in X]
    counts = [len(e) for e in expected]
    flat = np.concatenate(expected).astype(np.float32)
    assert_jets_equal(p4, [ak.unflatten(flat[:, k], counts) for k in (1, 2, 3, 0)], exact=False)
    np.testing.assert_array_equal(got, y.astype(np.int64))


def test_efqg_bad_content(tmp_path):
    X, y = efqg_arrays()
    X[3, 0, 3] = 999
    path = tmp_path / "unknown_pid.npz"
    np.savez_compressed(path, X=X, y=y)
    raises_input_error(drain(path, step_size=2), path, "[entries 2-3]", "unknown PDG id(s) 999")
    short = tmp_path / "short.npz"
    np.savez_compressed(short, X=X, y=y[:3])
    raises_input_error(lambda: count_jets(short), short, "y.npy must have shape (5,)")
    np.savez_compressed(tmp_path / "cut.npz", X=X, y=y)
    cut = truncate(tmp_path / "cut.npz")
    raises_input_error(lambda: detect_format(cut), cut, "cannot open the zip")
    other = tmp_path / "other.npz"
    np.savez(other, a=X)
    raises_input_error(lambda: detect_format(other), other, "a.npy", "supported formats")


# ----------------------------------------------------------------------------- detection and options


def test_detect_uses_content_not_extension(tmp_path):
    pmu, nobj, is_signal = lgn_arrays()
    path = write_lgn(tmp_path / "looks_like.root", pmu, nobj, is_signal)
    assert detect_format(path) == "lgn"
    comps, label = make_jets()
    root = write_root(tmp_path / "jets.h5", comps, label, "ttree_zip")
    assert detect_format(root) == "root"


@pytest.mark.parametrize("content", [np.random.default_rng(4).bytes(4096), b"", b"PK\x03\x04 not a zip"])
def test_unknown_or_unreadable_content(tmp_path, content):
    path = tmp_path / "junk.dat"
    path.write_bytes(content)
    msg = raises_input_error(lambda: detect_format(path), path)
    if not content.startswith(b"PK"):
        assert all(fmt in msg for fmt in FORMATS)
    raises_input_error(lambda: count_jets(path), path)


def test_unknown_hdf5_layout_and_missing_file(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f["features"] = np.zeros(3)
    raises_input_error(lambda: detect_format(path), path, "features", "supported formats")
    raises_input_error(lambda: detect_format(tmp_path / "nope.root"), tmp_path / "nope.root", "no such file")


def test_options_are_checked(tmp_path):
    pmu, nobj, is_signal = lgn_arrays()
    path = write_lgn(tmp_path / "test.h5", pmu, nobj, is_signal)
    with pytest.raises(InputError, match="step_size"):
        list(iter_jets(path, step_size=0))
    with pytest.raises(InputError, match="unknown key.*part_px"):
        count_jets(path, branch_map={"part_px": "x"})
    with pytest.raises(InputError, match="format"):
        count_jets(path, format="csv")
    with pytest.raises(TypeError):
        count_jets(path, tree="x")
    assert count_jets(path, format="lgn", branch_map={"label": "is_signal"}, step_size=10) == len(nobj)


def test_npz_is_streamed(tmp_path, monkeypatch):
    """Reading a chunk decompresses only that chunk's rows of X.npy, never the whole member."""
    X, y = efqg_arrays(n=40)
    path = tmp_path / "QG_jets.npz"
    np.savez_compressed(path, X=X, y=y)
    sizes = []
    original = zipfile.ZipExtFile.read

    def spy(self, n=-1):
        sizes.append(n)
        return original(self, n)

    monkeypatch.setattr(zipfile.ZipExtFile, "read", spy)
    stream = iter_jets(path, step_size=10)
    next(stream)
    assert -1 not in sizes and max(sizes) <= 10 * X[0].nbytes
    assert count_jets(path) == 40


# ----------------------------------------------------------------------------- label modes, validation, class names


def small_file(fmt, tmp_path, name, with_labels=True):
    """A tiny ``fmt`` file, with or without its default label column: ``(path, labels, class names)``."""
    if fmt == "root":
        comps, label = make_jets()
        return write_root(tmp_path / f"{name}.root", comps, label, "rntuple_zip", with_labels=with_labels), label, (
            "QCD", "Tbqq")
    if fmt == "toptagging":
        cols, _, label = toptagging_frame(n_const=20)
        cols = {c: v for c, v in cols.items() if with_labels or c != "is_signal_new"}
        return write_pandas(tmp_path / f"{name}.h5", cols, fmt="fixed"), label, ("QCD", "top")
    if fmt == "lgn":
        pmu, nobj, label = lgn_arrays()
        drop = () if with_labels else ("is_signal",)
        return write_lgn(tmp_path / f"{name}.h5", pmu, nobj, label, drop=drop), label, ("QCD", "top")
    X, y = efqg_arrays()
    path = tmp_path / f"{name}.npz"
    np.savez_compressed(path, X=X, **({"y": y} if with_labels else {}))
    return path, y, ("gluon", "quark")


@pytest.mark.parametrize("fmt", FORMATS)
def test_label_modes(tmp_path, fmt):
    labelled, label, names = small_file(fmt, tmp_path, "labelled")
    unlabelled, _, _ = small_file(fmt, tmp_path, "unlabelled", with_labels=False)
    _, reference, _ = read_all(labelled)
    for mode in ("required", "optional"):
        chunks, _, got = read_all(labelled, label_mode=mode, step_size=4)
        np.testing.assert_array_equal(got, label)
        assert all(c.class_names == names for c in chunks)
    for path, mode in ((labelled, "none"), (unlabelled, "optional"), (unlabelled, "none")):
        assert count_jets(path, label_mode=mode) == len(label)
        chunks, p4, got = read_all(path, label_mode=mode, step_size=4)
        assert ak.to_list(p4) == ak.to_list(reference)  # the same jets, in the same order
        assert got.dtype == np.int64 and np.all(got == -1)
        assert all(c.class_names is None for c in chunks)
    raises_input_error(drain(unlabelled), unlabelled, "label" if fmt != "efqg" else "y.npy")
    raises_input_error(lambda: count_jets(unlabelled, label_mode="required"), unlabelled)
    # a label column named explicitly must exist, unless labels are not read at all
    raises_input_error(drain(labelled, label_mode="optional", branch_map={"label": "nope"}), labelled, "nope")
    raises_input_error(lambda: count_jets(labelled, label_mode="optional", branch_map={"label": "nope"}), labelled,
                       "nope")
    assert count_jets(labelled, label_mode="none", branch_map={"label": "nope"}) == len(label)


def test_label_mode_none_never_touches_labels(tmp_path):
    pmu, nobj, is_signal = lgn_arrays()
    path = write_lgn(tmp_path / "short_label.h5", pmu, nobj, is_signal[:2])
    raises_input_error(drain(path), path, "'/is_signal' must have shape")
    assert len(read_all(path, label_mode="none")[1]) == len(nobj)
    comps, label = make_jets()
    root = write_root(tmp_path / "jagged_label.root", comps, label, "ttree_branches", with_labels=False,
                      extra={"label_x": comps[0]})
    raises_input_error(drain(root, label_mode="optional"), root, "label branch 'label_x' must hold one number per jet")
    np.testing.assert_array_equal(read_all(root, label_mode="none")[2], -np.ones(N_JETS))


def test_root_optional_labels_allow_missing_ones(tmp_path):
    comps, _ = make_jets()
    path = write_root(tmp_path / "partly.root", comps, np.array([0, 1, 2, 0, 1]), "ttree_zip")  # jet 2: no label set
    raises_input_error(drain(path), path, "missing label", "first at entry 2")
    chunks, _, got = read_all(path, label_mode="optional")
    np.testing.assert_array_equal(got, [0, 1, -1, 0, 1])
    assert chunks[0].class_names == ("QCD", "Tbqq")


def test_label_mode_and_validate_are_checked(tmp_path):
    path, _, _ = small_file("lgn", tmp_path, "jets")
    for call in (lambda: iter_jets(path, label_mode="maybe"), lambda: count_jets(path, label_mode="maybe")):
        with pytest.raises(InputError) as info:
            call()
        assert str(info.value) == "label_mode: expected one of 'required', 'optional', 'none', got 'maybe'"
    with pytest.raises(InputError, match="^validate: "):
        iter_jets(path, validate="no")
    assert count_jets(path, label_mode="none", validate=False, step_size=3) == 6


def bad_jets_file(fmt, tmp_path):
    """A 5-jet ``fmt`` file (labelled) whose jet 1 has no constituents and jet 3 a NaN px (first constituent)."""
    if fmt == "root":
        comps, label = make_jets()
        comps = [ak.concatenate([c[:1], c[1:2, :0], c[2:]]) for c in comps]
        px = ak.flatten(comps[0]).to_numpy().copy()
        px[ak.count(comps[0][:3])] = np.nan
        comps[0] = ak.unflatten(px, ak.num(comps[0]))
        return write_root(tmp_path / "bad.root", comps, label, "ttree_zip")
    if fmt == "toptagging":
        cols, _, _ = toptagging_frame(n_const=20)
        jet1 = np.arange(N_JETS) == 1  # every E_i, PX_i, ... = 0: no constituents
        cols = {c: np.where(jet1, 0, v).astype(v.dtype) if c[0] in "EP" else v for c, v in cols.items()}
        cols["PX_0"] = np.where(np.arange(N_JETS) == 3, np.nan, cols["PX_0"]).astype(np.float32)
        return write_pandas(tmp_path / "bad.h5", cols)
    if fmt == "lgn":
        pmu, nobj, is_signal = (a[:N_JETS].copy() for a in lgn_arrays())
        nobj[1], pmu[3, 0, 1] = 0, np.nan
        return write_lgn(tmp_path / "bad.h5", pmu, nobj, is_signal)
    X, y = efqg_arrays()
    X[1, :, 0], X[3, 0, 0] = 0, np.nan
    np.savez_compressed(tmp_path / "bad.npz", X=X, y=y)
    return tmp_path / "bad.npz"


@pytest.mark.parametrize("fmt", FORMATS)
def test_validate_false_keeps_bad_jets_in_place(tmp_path, fmt):
    path = bad_jets_file(fmt, tmp_path)
    raises_input_error(drain(path, step_size=2), path, "no constituents", "first at entry 1")
    chunks = list(iter_jets(path, step_size=2, validate=False))
    assert [(c.entry_start, len(c)) for c in chunks] == [(0, 2), (2, 2), (4, 1)]
    bad = np.concatenate([c.bad_jets() for c in chunks])
    assert bad.dtype == bool and bad.shape == (N_JETS,)
    np.testing.assert_array_equal(np.flatnonzero(bad), [1, 3])
    n_particles = np.concatenate([c.n_particles for c in chunks])
    assert n_particles[1] == 0 and np.all(np.delete(n_particles, 1) > 0)
    assert np.isnan(chunks[1].p4.px[1, 0])
    assert np.all(np.concatenate([c.label for c in chunks]) >= 0)


def test_class_names_of_other_label_columns(tmp_path):
    comps, label = make_jets()
    root = write_root(tmp_path / "jets.root", comps, label, "ttree_branches", extra={"is_top": label.astype(np.int64)})
    assert next(iter_jets(root, labels=["label_Tbqq", "label_QCD"])).class_names == ("Tbqq", "QCD")
    assert next(iter_jets(root, branch_map={"label": "is_top"})).class_names is None
    cols, _, _ = toptagging_frame(n_const=10)
    top = write_pandas(tmp_path / "top.h5", cols, fmt="fixed")
    assert next(iter_jets(top, branch_map={"label": "ttv"})).class_names is None
    pmu, nobj, is_signal = lgn_arrays()
    with h5py.File(lgn := write_lgn(tmp_path / "lgn.h5", pmu, nobj, is_signal), "a") as f:
        f["other"] = is_signal
    assert next(iter_jets(lgn, branch_map={"label": "other"})).class_names is None
    X, y = efqg_arrays()
    np.savez_compressed(qg := tmp_path / "qg.npz", X=X, y=y, z=y)
    assert next(iter_jets(qg, branch_map={"label": "z"})).class_names is None


def test_jet_arrays_bad_jets_and_pt_ordered_keep_metadata():
    comps, label = make_jets()
    px = ak.to_list(comps[0])
    px[2][0] = np.inf
    chunk = JetArrays(make_p4(ak.Array(px), *comps[1:]), label, "x.root", 7, ("QCD", "Tbqq"))
    np.testing.assert_array_equal(chunk.bad_jets(), np.arange(N_JETS) == 2)
    with pytest.raises(InputError, match=r"x.root\[entries 7-11\]: non-finite .* px in 1 jet\(s\), first at entry 9"):
        chunk.validate()
    ordered = chunk.pt_ordered()
    assert (ordered.source, ordered.entry_start, ordered.class_names) == ("x.root", 7, ("QCD", "Tbqq"))
    unlabelled = JetArrays(make_p4(*comps), np.full(N_JETS, -1), "y.h5")
    assert unlabelled.validate(require_labels=False) is unlabelled and unlabelled.class_names is None
    with pytest.raises(InputError, match="missing label"):
        unlabelled.validate()


# ----------------------------------------------------------------------------- file metadata


def test_file_metadata(tmp_path):
    comps, label = make_jets()
    plain = write_root(tmp_path / "plain.root", comps, label, "ttree_zip")
    assert file_metadata(plain) == {}
    info = {"seed": 4, "massless": False, "processes": {"signal": "ttbar all-hadronic"}}
    for layout in ("ttree_zip", "rntuple_zip"):
        tagged = write_root(tmp_path / f"{layout}.root", comps, label, layout)
        with uproot.update(tagged) as f:
            f["jetkd_provenance"] = json.dumps(info)
        assert file_metadata(tagged) == info and file_metadata(tagged, format="root") == info
        assert count_jets(tagged) == N_JETS  # the string is not a second tree
        _, p4, got = read_all(tagged)
        assert_jets_equal(p4, comps)
        np.testing.assert_array_equal(got, label)
    with uproot.update(plain) as f:
        f["jetkd_provenance"] = "not json"
    raises_input_error(lambda: file_metadata(plain), plain, "'jetkd_provenance' is not valid JSON")
    lgn, _, _ = small_file("lgn", tmp_path, "lgn")
    assert file_metadata(lgn) == {}
    with pytest.raises(InputError, match="format"):
        file_metadata(lgn, format="csv")
