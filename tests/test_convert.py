"""``jetkd convert``: exact splits, pT order, truncation, determinism, mixing, and bad input."""

import re

import awkward as ak
import h5py
import numpy as np
import pytest
import uproot

from data_prep.convert import convert, parse_split, split_sizes
from jetkd import lorentz
from jetkd.cli import main
from jetkd.errors import InputError

ID_OFFSET = 1000.0  # jet i's hardest constituent is (E, px, py, pz) = (1000 + i, 1000 + i, 0, 0)


def jets(n_jets, first_id=0, seed=0, max_n=20, label=None):
    """Jets as a padded (n, 200, 4) [E, px, py, pz] array, constituents in random (not pT) order."""
    rng = np.random.default_rng(seed)
    n = rng.integers(1, max_n + 1, n_jets)
    pmu = np.zeros((n_jets, 200, 4), np.float32)
    for i in range(n_jets):
        p = rng.normal(scale=30.0, size=(n[i], 3))
        p[0] = (ID_OFFSET + first_id + i, 0.0, 0.0)
        p = p[rng.permutation(n[i])]
        pmu[i, : n[i], 1:] = p
        pmu[i, : n[i], 0] = np.linalg.norm(p, axis=1)
    labels = rng.integers(0, 2, n_jets) if label is None else np.full(n_jets, label)
    return pmu, n, labels


def write_lgn(path, pmu, n, labels):
    with h5py.File(path, "w") as f:
        f["Nobj"], f["Pmu"], f["is_signal"] = n, pmu, labels
    return path


def write_root(path, pmu, n, labels):
    comps = {k: ak.Array([pmu[i, : n[i], c] for i in range(len(n))]) for c, k in enumerate(["energy", "px", "py", "pz"])}
    with uproot.recreate(path) as f:
        f["tree"] = {"part": ak.zip(comps), "label_QCD": (labels == 0).astype(np.int32), "label_Tbqq": labels.astype(np.int32)}
    return path


def read_split(path):
    with h5py.File(path) as f:
        return f["p4"][()], f["n_particles"][()], f["label"][()], dict(f.attrs)


def ids(p4):
    return (p4[:, 0, 0] - ID_OFFSET).round().astype(int)


def test_split_sizes_are_exact():
    assert split_sizes(103, {"train": 0.8, "val": 0.1, "test": 0.1}) == {"train": 83, "val": 10, "test": 10}
    assert sum(split_sizes(7, parse_split("a=0.5,b=0.25,c=0.25")).values()) == 7


@pytest.mark.parametrize("bad", ["train=0.8,val=0.1", "train=0.9,val=-0.1,test=0.2", "train"])
def test_bad_split_is_an_input_error(bad):
    with pytest.raises(InputError, match="--split"):
        parse_split(bad)


def test_convert_lgn_and_root(tmp_path):
    pmu_a, n_a, lab_a = jets(60, first_id=0, seed=1)
    pmu_b, n_b, lab_b = jets(43, first_id=60, seed=2)
    inputs = [write_lgn(tmp_path / "a.h5", pmu_a, n_a, lab_a), write_root(tmp_path / "b.root", pmu_b, n_b, lab_b)]
    paths = convert(inputs, tmp_path / "cache", max_particles=8, seed=4, progress=False)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["test.h5", "train.h5", "val.h5"]

    pmu, n, labels = np.concatenate([pmu_a, pmu_b]), np.concatenate([n_a, n_b]), np.concatenate([lab_a, lab_b])
    seen = []
    for name, size in {"train": 83, "val": 10, "test": 10}.items():
        p4, n_particles, label, attrs = read_split(paths[name])
        assert p4.shape == (size, 8, 4) and p4.dtype == np.float32
        assert attrs["split"] == name and attrs["max_particles"] == 8
        assert "a.h5" in attrs["sources"] and "lgn" in attrs["formats"] and "root" in attrs["formats"]
        for row, jet in enumerate(ids(p4)):
            k = n[jet]
            assert n_particles[row] == min(k, 8) and label[row] == labels[jet]
            pt = lorentz.pt(pmu[jet, :k])
            expected = pmu[jet, :k][np.argsort(-pt, kind="stable")][:8]
            np.testing.assert_array_equal(p4[row, : min(k, 8)], expected)
            assert not p4[row, min(k, 8) :].any()
        seen.extend(ids(p4))
    assert sorted(seen) == list(range(103))


def test_convert_is_deterministic_and_split_membership_ignores_step_size(tmp_path):
    path = write_lgn(tmp_path / "a.h5", *jets(200, seed=3))
    a = convert([path], tmp_path / "a", seed=9, progress=False)
    b = convert([path], tmp_path / "b", seed=9, progress=False)
    c = convert([path], tmp_path / "c", seed=9, step_size=7, progress=False)
    d = convert([path], tmp_path / "d", seed=10, progress=False)
    for name in a:
        np.testing.assert_array_equal(read_split(a[name])[0], read_split(b[name])[0])
        assert set(ids(read_split(a[name])[0])) == set(ids(read_split(c[name])[0]))
    assert set(ids(read_split(a["val"])[0])) != set(ids(read_split(d["val"])[0]))


def test_per_class_inputs_come_out_mixed(tmp_path):
    qcd = write_lgn(tmp_path / "qcd.h5", *jets(300, first_id=0, seed=5, label=0))
    top = write_lgn(tmp_path / "top.h5", *jets(300, first_id=300, seed=6, label=1))
    paths = convert([qcd, top], tmp_path / "cache", step_size=50, progress=False)
    label = read_split(paths["train"])[2]
    assert 0.3 < label[:50].mean() < 0.7 and 0.3 < label[-50:].mean() < 0.7


def test_cli_convert_prints_summary(tmp_path, capsys):
    path = write_lgn(tmp_path / "a.h5", *jets(50, seed=7))
    assert main(["convert", str(path), "--out", str(tmp_path / "cache"), "--max-particles", "16", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "Converted 50 jets" in out and "train: 40 jets" in out and str(tmp_path / "cache") in out


def _nan_momentum(pmu, n, labels):
    pmu[57, 2, 1] = np.nan
    return pmu, n, labels


def _empty_jet(pmu, n, labels):
    n[57] = 0
    pmu[57] = 0
    return pmu, n, labels


@pytest.mark.parametrize(
    "corrupt, message",
    [(_nan_momentum, r"entries 0-99\]: non-finite .* first at entry 57"), (_empty_jet, r"entries 0-99\]: jet with no constituents")],
)
def test_cli_bad_jets_exit_2_with_one_line_and_no_output(tmp_path, capsys, corrupt, message):
    path = write_lgn(tmp_path / "bad.h5", *corrupt(*jets(100, seed=8)))
    out_dir = tmp_path / "cache"
    assert main(["convert", str(path), "--out", str(out_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad.h5" in err
    assert re.search(message, err), err
    assert not out_dir.exists()


def test_cli_missing_label_and_missing_branch(tmp_path, capsys):
    pmu, n, labels = jets(20, seed=9)
    labels_qcd = (labels == 0).astype(np.int32)
    labels_qcd[3] = 0
    comps = {k: ak.Array([pmu[i, : n[i], c] for i in range(20)]) for c, k in enumerate(["energy", "px", "py", "pz"])}
    with uproot.recreate(tmp_path / "nolabel.root") as f:
        f["tree"] = {"part": ak.zip(comps), "label_QCD": labels_qcd, "label_Tbqq": np.where(np.arange(20) == 3, 0, labels).astype(np.int32)}
    existing = tmp_path / "cache"
    existing.mkdir()
    assert main(["convert", str(tmp_path / "nolabel.root"), "--out", str(existing)]) == 2
    err = capsys.readouterr().err
    assert "nolabel.root" in err and "label" in err and len(err.strip().splitlines()) == 1
    assert list(existing.iterdir()) == []

    with uproot.recreate(tmp_path / "nopz.root") as f:
        f["tree"] = {"part": ak.zip({k: v for k, v in comps.items() if k != "pz"}), "label_QCD": labels_qcd}
    assert main(["convert", str(tmp_path / "nopz.root"), "--out", str(existing)]) == 2
    err = capsys.readouterr().err
    assert "nopz.root" in err and "part_pz" in err and len(err.strip().splitlines()) == 1
    assert list(existing.iterdir()) == []


def test_cli_truncated_and_unknown_files(tmp_path, capsys):
    good = write_root(tmp_path / "good.root", *jets(200, seed=10))
    data = good.read_bytes()
    (tmp_path / "cut.root").write_bytes(data[: len(data) // 2])
    (tmp_path / "notes.txt").write_text("not jets\n")
    for name in ("cut.root", "notes.txt", "absent.h5"):
        assert main(["convert", str(tmp_path / name), "--out", str(tmp_path / "cache")]) == 2
        err = capsys.readouterr().err
        assert name in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "cache").exists()


def test_convert_output_holds_one_cache_locked_and_cleaned(tmp_path, capsys):
    import json
    import os
    import socket
    import subprocess
    import sys

    path = write_lgn(tmp_path / "a.h5", *jets(50, seed=7))
    out = tmp_path / "cache"
    assert main(["convert", str(path), "--out", str(out)]) == 0
    first = (out / "train.h5").read_bytes()
    capsys.readouterr()
    assert main(["convert", str(path), "--out", str(out), "--seed", "5"]) == 2  # refuses an existing cache
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "already holds a cache (train.h5, val.h5, test.h5)" in err and "--force" in err
    assert (out / "train.h5").read_bytes() == first
    # a convert killed with kill -9 leaves its temporaries and lock: the next one cleans them up
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / f".train.h5.tmp-{dead.pid}").write_bytes(b"half a file")
    (out / ".lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "since": "earlier"}))
    assert main(["convert", str(path), "--out", str(out), "--seed", "5", "--force"]) == 0
    assert (out / "train.h5").read_bytes() != first
    assert sorted(p.name for p in out.iterdir()) == ["test.h5", "train.h5", "val.h5"]
    # a live convert holds the lock: a second one fails at once
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from jetkd.rundir import OutputFolder; "
                               "OutputFolder(sys.argv[1], [], resume=True).acquire(); print('locked', flush=True); "
                               "time.sleep(60)", str(out)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        assert holder.stdout.readline().strip() == "locked"
        capsys.readouterr()
        assert main(["convert", str(path), "--out", str(out), "--force"]) == 2
        assert f"in use by process {holder.pid}" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()
