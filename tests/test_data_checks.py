"""Bad caches and bad input jets stop cleanly: one InputError line naming the file, the dataset/branch and the entry,
exit status 2 from the CLI, and no output left behind; scoring keeps reading such files."""

from __future__ import annotations

import re

import awkward as ak
import h5py
import numpy as np
import pytest
import uproot
import yaml

from data_prep.convert import convert
from jetkd.cli import main
from jetkd.data import cache as cache_module
from jetkd.data.arrays import DEFAULT_MAX_MOMENTUM, JetArrays, make_p4
from jetkd.data.cache import CacheWriter, JetCache
from jetkd.data.readers import iter_jets
from jetkd.data.sources import iter_chunks
from jetkd.errors import InputError

from helpers import job_dict, toy_jets, write_toy_cache

M = 16  # max_particles of the test caches


# ----------------------------------------------------------------------------- helpers


def write_cache(path, p4, n, label, **attrs):
    """A cache split holding exactly these rows (no checks: the writer stores what it is given)."""
    with CacheWriter(path, len(label), p4.shape[1], {"split": "train", **attrs}) as w:
        w.append(p4, n, label)
        w.commit()
    return path


def write_empty_cache(path):
    """A split file in the cache layout with 0 jets (h5py directly: jetkd convert refuses to write one)."""
    with h5py.File(path, "w") as f:
        f["p4"], f["n_particles"], f["label"] = np.zeros((0, M, 4), np.float32), np.zeros(0, np.int32), np.zeros(0)
        f.attrs.update(format_version=2, max_particles=M, n_jets=0, split=path.stem)
    return path


def physical_jets(n_jets, seed=0, max_n=12):
    """Padded (n, 200, 4) [E, px, py, pz] massless jets (E = |p| in float64, stored as float32), counts, labels."""
    rng = np.random.default_rng(seed)
    n = rng.integers(2, max_n + 1, n_jets)
    pmu = np.zeros((n_jets, 200, 4), np.float32)
    real = np.arange(200) < n[:, None]
    p = rng.normal(scale=30.0, size=(int(n.sum()), 3)) + [200.0, 0, 0]
    pmu[real] = np.column_stack([np.linalg.norm(p, axis=1), p])
    return pmu, n, np.arange(n_jets) % 2


def write_lgn(path, pmu, n, labels):
    with h5py.File(path, "w") as f:
        f["Nobj"], f["Pmu"], f["is_signal"] = n, pmu, labels
    return path


def write_root(path, pmu, n, **labels):
    """A JetClass-style ROOT TTree: part_* constituents of the padded ``pmu`` plus the given per-jet branches."""
    mask = np.arange(pmu.shape[1]) < n[:, None]
    comps = {k: ak.unflatten(pmu[..., c][mask], n) for c, k in enumerate(["energy", "px", "py", "pz"])}
    with uproot.recreate(path) as f:
        f["tree"] = {"part": ak.zip(comps), **labels}
    return path


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else None


# ----------------------------------------------------------------------------- caches


@pytest.mark.parametrize("in_memory", [True, False])
@pytest.mark.parametrize("value", [0, -5, M + 1])
def test_cache_rejects_n_particles_out_of_range(tmp_path, in_memory, value):
    p4, n, label = toy_jets(40, 0, M)
    n[7] = value
    path = write_cache(tmp_path / "train.h5", p4, n, label)
    with pytest.raises(InputError, match=rf"train\.h5:n_particles: entry 7: {value} constituents; expected 1\.\.{M}"):
        JetCache(path, in_memory=in_memory)


@pytest.mark.parametrize("in_memory", [True, False])
def test_cache_label_rules(tmp_path, in_memory):
    p4, n, label = toy_jets(40, 0, M)
    open_ = lambda path: JetCache(path, in_memory=in_memory)

    named = write_cache(tmp_path / "named.h5", p4, n, np.where(np.arange(40) == 5, 2, label), labelled=True,
                        class_names=["QCD", "top"])
    with pytest.raises(InputError, match=r"named\.h5:label: entry 5: label 2 outside the 2 declared classes "
                                         r"\(QCD, top\); expected 0\.\.1"):
        open_(named)
    for name, attrs in (("labelled.h5", {"labelled": True}), ("old.h5", {})):  # old: no `labelled` attribute
        path = write_cache(tmp_path / name, p4, n, np.where(np.arange(40) == 9, -1, label), **attrs)
        with pytest.raises(InputError, match=rf"{name}:label: entry 9: label -1 in a labelled cache; expected a "
                                             r"class index in \[0, 2\)"):
            open_(path)
    mixed = write_cache(tmp_path / "mixed.h5", p4, n, np.where(np.arange(40) == 3, 0, -1), labelled=False)
    with pytest.raises(InputError, match=r"mixed\.h5:label: entry 3: label 0 in an unlabelled cache"):
        open_(mixed)

    unlabelled = open_(write_cache(tmp_path / "unlabelled.h5", p4, n, np.full(40, -1), labelled=False))
    assert not unlabelled.labelled and unlabelled.n_class is None
    with pytest.raises(InputError, match="no label"):
        unlabelled.require_labels()
    good = open_(write_cache(tmp_path / "good.h5", p4, n, label, labelled=True, class_names=["QCD", "top"]))
    assert good.labelled and good.n_class == 2 and good.class_names == ("QCD", "top")


@pytest.mark.parametrize("in_memory", [True, False])
def test_cache_rejects_an_empty_split(tmp_path, in_memory):
    path = write_empty_cache(tmp_path / "val.h5")
    with pytest.raises(InputError, match=r"val\.h5: 0 jets; expected a split with at least one jet"):
        JetCache(path, in_memory=in_memory)


@pytest.mark.parametrize("where", ["constituent", "padding"])
def test_in_memory_cache_rejects_non_finite_p4_when_opened(tmp_path, where):
    p4, n, label = toy_jets(40, 0, M)
    particle = 2 if where == "constituent" else M - 1
    n[30] = min(n[30], M - 1)
    p4[30, particle, 1] = np.nan if where == "constituent" else np.inf
    path = write_cache(tmp_path / "train.h5", p4, n, label)
    with pytest.raises(InputError, match=rf"train\.h5:p4: entry 30, constituent {particle}: .*expected finite"):
        JetCache(path)


def test_streamed_cache_checks_each_block_once_before_its_rows_are_used(tmp_path, monkeypatch):
    p4, n, label = toy_jets(100, 0, M)
    p4[70, 0, 0] = np.nan  # block 2 of 32-jet blocks
    path = write_cache(tmp_path / "train.h5", p4, n, label)
    checked = []
    real_check = cache_module.check_p4
    monkeypatch.setattr(cache_module, "check_p4", lambda p4, start, path: (checked.append(start),
                                                                          real_check(p4, start, path)))
    cache = JetCache(path, in_memory=False, block_jets=32)  # opening reads n_particles and label only
    assert checked == []
    for _ in range(3):
        np.testing.assert_array_equal(cache.rows(np.arange(64))[0], p4[:64])
        cache.rows(np.array([99, 0]))
    assert sorted(checked) == [0, 32, 96]  # each block checked the first time it is read, never again
    with pytest.raises(InputError, match=r"train\.h5:p4: entry 70, constituent 0"):
        cache.rows(np.array([64]))
    with pytest.raises(InputError, match=r"train\.h5:p4: entry 70"):
        JetCache(path, in_memory=False, block_jets=32).check_momenta()
    p4[70, 0, 0] = 1.0
    assert JetCache(write_cache(tmp_path / "ok.h5", p4, n, label), in_memory=False).check_momenta().n_jets == 100


def test_require_classes(tmp_path):
    p4, n, label = toy_jets(40, 0, M)
    named = JetCache(write_cache(tmp_path / "named.h5", p4, n, label, labelled=True, class_names=["QCD", "top"]))
    assert named.require_classes(2) is named
    with pytest.raises(InputError, match=r"named\.h5:label: the cache declares 2 classes \(QCD, top\) but "
                                         r"model\.n_class has 3"):
        named.require_classes(3, "model.n_class")
    unnamed = JetCache(write_cache(tmp_path / "unnamed.h5", p4, n, label))
    assert unnamed.n_class == 2 and unnamed.require_classes(2) is unnamed and unnamed.require_classes(4) is unnamed
    with pytest.raises(InputError, match=r"unnamed\.h5:label: labels reach class index 1 but the model has 1 classes"):
        unnamed.require_classes(1)


def test_train_stops_at_an_empty_validation_split_before_training(tmp_path, capsys):
    (cache := tmp_path / "cache").mkdir()
    write_toy_cache(cache, max_particles=M)
    write_empty_cache(cache / "val.h5")
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(job_dict(cache, tmp_path / "run")))
    assert main(["train", str(config)]) == 2
    err = one_line_error(capsys)
    assert "val.h5: 0 jets" in err
    assert not (tmp_path / "run" / "last.pt").exists()


# ----------------------------------------------------------------------------- convert: labels


def test_convert_rejects_a_class_index_outside_the_declared_classes(tmp_path, capsys):
    pmu, n, labels = physical_jets(100)
    labels[17] = labels[40] = 5  # is_signal: classes QCD, top
    path = write_lgn(tmp_path / "bad.h5", pmu, n, labels)
    assert main(["convert", str(path), "--out", str(tmp_path / "cache")]) == 2
    err = one_line_error(capsys)
    assert "bad.h5:is_signal[entries 0-99]" in err and "2 jet(s), first at entry 17 (label 5)" in err, err
    assert "expected 0..1 (QCD, top)" in err
    assert leftovers(tmp_path / "cache") is None


def test_convert_rejects_a_gap_in_unnamed_class_indices(tmp_path, capsys):
    pmu, n, labels = physical_jets(100)
    labels[[17, 60]] = 5
    path = write_root(tmp_path / "bad.root", pmu, n, is_signal=labels.astype(np.int32))
    args = ["convert", str(path), "--out", str(tmp_path / "cache"), "--branch-map", "label=is_signal"]
    assert main(args) == 2
    err = one_line_error(capsys)
    assert "bad.root:is_signal" in err and "class index 5 at entry 17, but no jet has class index 2" in err, err
    assert leftovers(tmp_path / "cache") is None
    labels[[17, 60]] = 1
    write_root(path, pmu, n, is_signal=labels.astype(np.int32))
    assert main(args) == 0


@pytest.mark.parametrize("value, dtype", [(7, np.int32), (0.5, np.float32), (np.nan, np.float32)])
def test_convert_one_hot_labels_must_be_exactly_0_or_1(tmp_path, capsys, value, dtype):
    pmu, n, labels = physical_jets(100)
    tbqq = labels.astype(dtype)
    tbqq[3] = value
    path = write_root(tmp_path / "bad.root", pmu, n, label_QCD=(labels == 0).astype(dtype), label_Tbqq=tbqq)
    existing = tmp_path / "cache"
    existing.mkdir()
    assert main(["convert", str(path), "--out", str(existing)]) == 2
    err = one_line_error(capsys)
    assert f"bad.root:label_Tbqq[entries 0-99]: value {float(value) if dtype != np.int32 else value}" in err, err
    assert "at entry 3; expected 0 or 1 in a one-hot label branch" in err
    assert leftovers(existing) == []


def test_convert_one_hot_labels_need_exactly_one_set(tmp_path, capsys):
    pmu, n, labels = physical_jets(100)
    qcd = (labels == 0).astype(np.int32)
    qcd[11] = 1  # jet 11 is Tbqq too
    path = write_root(tmp_path / "bad.root", pmu, n, label_QCD=qcd, label_Tbqq=labels.astype(np.int32))
    assert main(["convert", str(path), "--out", str(tmp_path / "cache")]) == 2
    err = one_line_error(capsys)
    assert "bad.root:label_QCD,label_Tbqq[entries 0-99]: 2 labels set at entry 11 (label_QCD, label_Tbqq); " \
           "expected exactly one per jet" in err, err
    qcd[11] = 0
    tbqq = labels.astype(np.int32)
    qcd[12] = tbqq[12] = 0  # jet 12: no label set
    write_root(path, pmu, n, label_QCD=qcd, label_Tbqq=tbqq)
    assert main(["convert", str(path), "--out", str(tmp_path / "cache")]) == 2
    err = one_line_error(capsys)
    assert "bad.root:label_QCD,label_Tbqq[entries 0-99]: missing label in 1 jet(s), first at entry 12" in err, err
    assert leftovers(tmp_path / "cache") is None


# ----------------------------------------------------------------------------- convert: momenta


def _negative_energy(pmu):
    pmu[23, 1, 0] = -pmu[23, 1, 0]
    return "negative constituent energy in 1 jet(s), first at entry 23"


def _energy_below_p(pmu):
    pmu[23, 1, 0] *= 1 - 3e-4
    return "constituent energy below |p| in 1 jet(s), first at entry 23"


def _zero_energy(pmu):
    pmu[23, 1, 0] = 0.0
    return "zero energy of a real constituent in 1 jet(s), first at entry 23"


def _all_zero_constituent(pmu):  # Nobj counts it, but all four components are 0
    pmu[23, 1] = 0.0
    return "zero energy of a real constituent in 1 jet(s), first at entry 23"


def _huge(pmu):
    pmu[23, 0, :2] = 1e30  # px = E = 1e30 GeV: passed convert and trained to NaN before these checks
    return "constituent E above the sanity bound of 100000 GeV in 1 jet(s), first at entry 23 (E = 1e+30 GeV)"


def _nan(pmu):
    pmu[23, 1, 2] = np.nan
    return "non-finite (NaN/inf) constituent py in 1 jet(s), first at entry 23"


@pytest.mark.parametrize("corrupt", [_negative_energy, _energy_below_p, _zero_energy, _all_zero_constituent, _huge, _nan])
def test_convert_rejects_unphysical_constituents(tmp_path, capsys, corrupt):
    pmu, n, labels = physical_jets(100)
    message = corrupt(pmu)
    path = write_lgn(tmp_path / "bad.h5", pmu, n, labels)
    existing = tmp_path / "cache"
    existing.mkdir()
    (existing / "notes.txt").write_text("mine\n")
    assert main(["convert", str(path), "--out", str(existing)]) == 2
    err = one_line_error(capsys)
    assert "bad.h5:Pmu[entries 0-99]: " + message in err, err
    assert leftovers(existing) == ["notes.txt"]


def test_max_momentum_is_configurable(tmp_path, capsys):
    pmu, n, labels = physical_jets(100)
    pmu[23, 0, :2] = 2e5  # a 200 TeV constituent along x (E = px)
    path = write_root(tmp_path / "far.root", pmu, n, label_QCD=(labels == 0).astype(np.int32),
                      label_Tbqq=labels.astype(np.int32))
    assert main(["convert", str(path), "--out", str(tmp_path / "a")]) == 2
    assert "far.root:part" in (err := one_line_error(capsys)) and "above the sanity bound of 100000 GeV" in err
    assert "first at entry 23" in err and leftovers(tmp_path / "a") is None
    assert main(["convert", str(path), "--out", str(tmp_path / "b"), "--max-momentum", "1e6"]) == 0
    assert convert([path], tmp_path / "c", max_momentum=3e5, progress=False).keys() == {"train", "val", "test"}
    with pytest.raises(InputError, match="sanity bound of 150000 GeV"):
        convert([path], tmp_path / "d", max_momentum=1.5e5, progress=False)
    for bad in (0, -1.0, float("inf"), float("nan")):
        with pytest.raises(InputError, match="^--max-momentum: expected a positive number of GeV"):
            convert([path], tmp_path / "e", max_momentum=bad, progress=False)
    assert main(["convert", str(path), "--out", str(tmp_path / "e"), "--max-momentum", "-3"]) == 2
    assert "--max-momentum" in one_line_error(capsys)
    assert not (tmp_path / "d").exists() and not (tmp_path / "e").exists()
    with pytest.raises(InputError, match="^max_momentum: "):
        iter_jets(path, max_momentum=0)
    assert DEFAULT_MAX_MOMENTUM == 1e5


def test_a_check_failing_mid_way_removes_the_temporaries(tmp_path, monkeypatch):
    pmu, n, labels = physical_jets(300)
    pmu[250, 0, 0] = -1.0
    path = write_lgn(tmp_path / "bad.h5", pmu, n, labels)
    appended = []
    real_append = CacheWriter.append
    monkeypatch.setattr(CacheWriter, "append", lambda self, *a, **k: (appended.append(self.tmp),
                                                                     real_append(self, *a, **k)))
    out = tmp_path / "cache"
    out.mkdir()
    with pytest.raises(InputError, match=r"bad\.h5:Pmu\[entries 240-259\]: negative constituent energy .* entry 250"):
        convert([path], out, step_size=20, progress=False)
    assert len(appended) > 3 * 3  # several rounds were written to the temporary files before the bad jet
    assert leftovers(out) == []


def test_convert_refuses_a_split_that_would_be_empty(tmp_path):
    path = write_lgn(tmp_path / "few.h5", *physical_jets(9))
    with pytest.raises(InputError, match=r"^--split: split 'test' would get 0 of the 9 jets"):
        convert([path], tmp_path / "cache", progress=False)
    assert not (tmp_path / "cache").exists()
    assert convert([path], tmp_path / "cache", split={"train": 0.5, "test": 0.5}, progress=False)


# ----------------------------------------------------------------------------- tolerance and scoring


def test_energy_tolerance_ignores_float32_rounding_of_massless_constituents():
    rng = np.random.default_rng(0)
    k = 200_000
    pt, eta = 10 ** rng.uniform(-3, 4.5, k), rng.uniform(-6, 6, k)
    phi = rng.uniform(-np.pi, np.pi, k)
    p = np.stack([pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)])
    counts = np.full(k // 4, 4)

    def jets(E, px, py, pz):
        comps = (ak.unflatten(np.asarray(c, np.float32), counts) for c in (px, py, pz, E))
        return JetArrays(make_p4(*comps), np.zeros(len(counts), np.int64), "t.h5")

    rounded = [np.linalg.norm(p, axis=0), *p]  # E = |p| in float64, each component rounded to float32
    f32 = [c.astype(np.float32) for c in (pt, eta, phi)]  # everything in float32 from (pt, eta, phi)
    in_float32 = [f32[0] * np.cosh(f32[1]), f32[0] * np.cos(f32[2]), f32[0] * np.sin(f32[2]), f32[0] * np.sinh(f32[1])]
    p32 = [c.astype(np.float32) for c in p]
    norm32 = [np.sqrt(p32[0] ** 2 + p32[1] ** 2 + p32[2] ** 2), *p32]  # E = |p| computed in float32
    for comps in (rounded, in_float32, norm32):
        jets(*comps).validate(max_momentum=1e9)
    E = np.linalg.norm(p, axis=0) * (1 - 2e-4)  # 2e-4 below the light cone: not rounding
    with pytest.raises(InputError, match=r"t\.h5\[entries 0-49999\]: constituent energy below \|p\|"):
        jets(E, *p).validate(max_momentum=1e9)


def test_scoring_still_reads_files_that_convert_rejects(tmp_path):
    pmu, n, labels = physical_jets(40)
    _negative_energy(pmu)
    pmu[5, 0, :2] = 1e6  # above the bound: read, but marked as not scoreable (score_ok false), not an error
    lgn = write_lgn(tmp_path / "unphysical.h5", pmu, n, labels)
    tbqq = labels.astype(np.int32)
    tbqq[3] = 7
    root = write_root(tmp_path / "onehot.root", pmu, n, label_QCD=(labels == 0).astype(np.int32), label_Tbqq=tbqq)
    for path in (lgn, root):
        with pytest.raises(InputError):
            list(iter_jets(path))
        chunks = list(iter_chunks(path, step_size=8))  # what jetkd score and tagger.score read
        ok = np.concatenate([c.ok for c in chunks])
        assert len(ok) == 40 and ok.tolist() == [i != 5 for i in range(40)]
    got = np.concatenate([c.label for c in iter_chunks(root)])
    np.testing.assert_array_equal(got, np.where(np.arange(40) == 3, -1, labels))  # a bad one-hot label: unknown


def test_validate_names_the_branch_and_checks_declared_classes():
    comps = [ak.Array([[3.0], [4.0, 1.0]]), ak.Array([[0.0], [0.0, 0.0]]), ak.Array([[0.0], [0.0, 0.0]])]
    E = ak.Array([[5.0], [4.0, 1.0]])
    branches = {"px": "part_px", "py": "part_py", "pz": "part_pz", "E": "part_energy", "n": "part_energy",
                "label": "is_top"}
    jets = JetArrays(make_p4(*comps, E), np.array([0, 3]), "x.root", 10, ("QCD", "top"), branches)
    with pytest.raises(InputError, match=re.escape("x.root:is_top[entries 10-11]: class index outside the declared "
                                                   "classes in 1 jet(s), first at entry 11 (label 3); expected 0..1")):
        jets.validate()
    jets.class_names = None  # without names, any class index passes here (convert checks gaps)
    assert jets.validate() is jets
    assert jets.where("E") == "x.root:part_energy" and jets.where("tree") == "x.root"
