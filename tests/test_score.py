"""The analysis end: input contracts in checkpoints, ``jetkd.load``, ``Tagger.score`` and ``jetkd score``."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import torch
import uproot

import jetkd
from data_prep.convert import convert
from jetkd.cli import main
from jetkd.config import load_job
from jetkd.contract import ContractWarning
from jetkd.errors import InputError
from jetkd.train.checkpoint import load_checkpoint
from jetkd.train.loop import Trainer

from helpers import TINY_DEEPSET, job_dict, toy_jets

TINY_MLP = {"name": "mlp", "n_constituents": 8, "hidden": [16]}
MAX_PARTICLES = 16


def part_record(p4, n):
    """Jagged ``part`` record (px, py, pz, energy) of padded jets p4 (k, M, 4) with n (k,) constituents."""
    mask = np.arange(p4.shape[1]) < np.asarray(n)[:, None]
    return ak.zip({k: ak.unflatten(p4[..., c][mask], n) for k, c in (("px", 1), ("py", 2), ("pz", 3), ("energy", 0))})


def write_jetclass(path, p4, n, label=None, **extra):
    """A ROOT file in the ``jetkd generate`` layout (labels ``label_QCD, label_Tbqq`` unless ``label`` is None)."""
    data = {"part": part_record(p4, n), "jet_nparticles": np.asarray(n, np.int32), **extra}
    if label is not None:
        data |= {"label_QCD": (label == 0).astype(np.int32), "label_Tbqq": (label == 1).astype(np.int32)}
    with uproot.recreate(path) as f:  # a TTree with branches part_px, ... as jetkd generate writes
        f.mktree("tree", {k: v.type if isinstance(v, ak.Array) else v.dtype for k, v in data.items()},
                 counter_name=lambda _: "jet_nparticles").extend(data)
    return path


def massive(p4, n, mass=0.5):
    """The same jets with every constituent given ``mass`` GeV (E = sqrt(p^2 + m^2))."""
    out = p4.copy()
    real = np.arange(p4.shape[1]) < np.asarray(n)[:, None]
    out[..., 0] = np.where(real, np.sqrt((p4[..., 1:] ** 2).sum(-1) + mass**2), 0)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny deep set and MLP trained on a labelled JetClass-style ROOT file of massless toy jets."""
    root = tmp_path_factory.mktemp("score")
    p4, n, label = toy_jets(400, 11, MAX_PARTICLES)
    write_jetclass(root / "train.root", p4, n, label, jet_pt=np.hypot(p4[..., 1], p4[..., 2]).sum(1))
    convert([root / "train.root"], root / "cache", max_particles=MAX_PARTICLES, progress=False)
    for name, model in (("deepset", TINY_DEEPSET), ("mlp", TINY_MLP)):
        Trainer(load_job(data=job_dict(root / "cache", root / "runs" / name, model=model)), progress=False).fit()
    return root


@pytest.fixture
def test_jets():
    return toy_jets(60, 5, MAX_PARTICLES)


def padded_to(p4, width):
    return np.concatenate([p4, np.zeros((len(p4), width - p4.shape[1], 4), np.float32)], 1)


# ----------------------------------------------------------------------------- contract and load


def test_checkpoints_carry_the_input_contract(runs):
    for ckpt_name in ("best.pt", "last.pt"):
        ckpt = load_checkpoint(runs / "runs" / "mlp" / ckpt_name)
        contract = ckpt["contract"]
        assert contract["model"] == TINY_MLP
        assert contract["features"] == ["rel_pt", "deta", "dphi", "mass"]
        assert contract["max_constituents"] == MAX_PARTICLES and contract["ordering"] == "pt_descending"
        assert contract["massless"] is True and contract["massive_fraction"] < 1e-3
        assert contract["class_names"] == ["QCD", "Tbqq"]
        assert contract["jetkd_version"] == jetkd.__version__
        train = contract["provenance"]["train"]
        assert train["cache"].endswith("train.h5") and train["jets"] == 320
        assert train["inputs"] == [{"file": str((runs / "train.root").resolve()), "format": "root", "jets": 400}]
        assert contract["provenance"]["val"]["jets"] == 40


def test_load_gives_an_eval_tagger_from_run_folder_best_and_last(runs, test_jets):
    p4, n, _ = test_jets
    mask = torch.arange(MAX_PARTICLES) < torch.from_numpy(n)[:, None]
    scores = []
    for path in (runs / "runs" / "deepset", runs / "runs" / "deepset" / "best.pt", runs / "runs" / "deepset" / "last.pt"):
        tagger = jetkd.load(path)
        assert not tagger.training and tagger.name == "deepset" and tagger.class_names == ["QCD", "Tbqq"]
        assert tagger.device == torch.device("cpu")
        with torch.no_grad():
            logits = tagger(torch.from_numpy(p4), mask)
        assert logits.shape == (60, 2)
        scores.append(tagger.score((p4, mask.numpy())))
        np.testing.assert_allclose(scores[-1], torch.softmax(logits.double(), 1).numpy(), atol=1e-6)
    np.testing.assert_array_equal(scores[0], scores[1])  # the folder means its best.pt


def test_padding_length_never_changes_a_score(runs, test_jets):
    p4, n, _ = test_jets
    for name in ("mlp", "deepset"):
        tagger = jetkd.load(runs / "runs" / name)
        by_width = {w: tagger.score(padded_to(p4, w)) for w in (64, 128, 200)}
        np.testing.assert_array_equal(by_width[64], by_width[128])
        np.testing.assert_array_equal(by_width[64], by_width[200])
        with torch.no_grad():  # tagger(p4, mask) too
            logits = [tagger(torch.from_numpy(padded_to(p4, w)), torch.arange(w) < torch.from_numpy(n)[:, None])
                      for w in (64, 200)]
        torch.testing.assert_close(logits[0], logits[1], rtol=0, atol=0)


def test_more_constituents_than_trained_are_cropped_to_the_leading_ones(runs):
    p4, n, _ = toy_jets(40, 9, 40)  # up to 40 constituents; the models read 16
    tagger = jetkd.load(runs / "runs" / "deepset")
    shuffled = p4[:, np.random.default_rng(0).permutation(40)]  # constituent order scrambled
    np.testing.assert_allclose(tagger.score(shuffled), tagger.score(p4[:, :MAX_PARTICLES]), atol=1e-6)


def test_score_sources_agree_file_awkward_padded(runs, tmp_path, test_jets):
    p4, n, _ = test_jets
    path = write_jetclass(tmp_path / "data.root", p4, n)  # unlabelled
    tagger = jetkd.load(runs / "runs" / "mlp")
    from_file = tagger.score(path)
    from_uproot = tagger.score(uproot.open(path)["tree"].arrays(filter_name="part_*"))
    record = ak.zip({"px": part_record(p4, n).px, "py": part_record(p4, n).py, "pz": part_record(p4, n).pz,
                     "E": part_record(p4, n).energy})
    from_record = tagger.score(record)
    from_padded = tagger.score(torch.from_numpy(p4))
    assert from_file.shape == (60, 2)
    for other in (from_uproot, from_record, from_padded):
        np.testing.assert_allclose(other, from_file, atol=1e-6)
    np.testing.assert_allclose(from_file.sum(1), 1.0)


def test_bad_sources_are_input_errors(runs):
    tagger = jetkd.load(runs / "runs" / "mlp")
    with pytest.raises(InputError, match="part_px"):
        tagger.score(ak.Array([{"x": [1.0]}]))
    with pytest.raises(InputError, match=r"\(n_jets, n_constituents, 4\)"):
        tagger.score(np.zeros((3, 5)))


# ----------------------------------------------------------------------------- contract checks


def test_massive_constituents_for_a_massless_model_warn_once_and_strict_refuses(runs, test_jets, tmp_path):
    p4, n, _ = test_jets
    heavy = massive(p4, n)
    tagger = jetkd.load(runs / "runs" / "deepset")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tagger.score(heavy, step_size=7)  # several chunks, one warning
    contract_warnings = [w for w in caught if issubclass(w.category, ContractWarning)]
    assert len(contract_warnings) == 1
    fraction = re.search(r"([\d.]+)% of the constituents are massive", str(contract_warnings[0].message))
    assert fraction and float(fraction[1]) > 90
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # massless input: nothing to say
        tagger.score(p4)
    with pytest.raises(InputError, match="massive"):
        tagger.score(heavy, strict=True)
    with pytest.raises(InputError, match="massive"):
        jetkd.load(runs / "runs" / "deepset", strict=True).score(heavy)

    path = write_jetclass(tmp_path / "heavy.root", heavy, n)
    out = tmp_path / "heavy.scores.root"
    args = ["score", "--model", str(runs / "runs" / "deepset"), str(path), "--out", str(out)]
    assert main(args + ["--strict"]) == 2
    assert not out.exists() and not list(tmp_path.glob(".heavy*"))
    assert main(args) == 0 and out.exists()


# ----------------------------------------------------------------------------- jetkd score


def test_score_cli_aligns_entries_and_matches_the_tagger(runs, tmp_path, capsys):
    p4, n, label = toy_jets(50, 3, MAX_PARTICLES)
    n = n.copy()
    n[[0, 7, 49]] = 0  # jets without constituents, first and last entry included
    p4[[0, 7, 49]] = 0
    p4[12, 1, 2] = np.nan  # a NaN momentum
    jet_pt = np.arange(50, dtype=np.float32) + 500
    path = write_jetclass(tmp_path / "mixed.root", p4, n, label, jet_pt=jet_pt)
    out = tmp_path / "mixed.scores.root"
    runs_ = [runs / "runs" / "mlp", runs / "runs" / "deepset"]
    assert main(["score", "--model", str(runs_[0]), "--model", str(runs_[1]), str(path), "--out", str(out),
                 "--observers", "jet_pt,jet_mass", "--step-size", "17"]) == 0
    summary = capsys.readouterr().out
    assert "Scored 50 jets" in summary and "4 jet(s) could not be scored" in summary and str(out) in summary
    with uproot.open(out) as f:
        tree = f["tree"]
        assert tree.num_entries == 50
        got = tree.arrays(library="np")
    assert set(got) == {"score_mlp_QCD", "score_mlp_Tbqq", "score_deepset_QCD", "score_deepset_Tbqq", "score_ok",
                        "label", "jet_pt", "jet_mass"}
    bad = np.zeros(50, bool)
    bad[[0, 7, 49, 12]] = True
    np.testing.assert_array_equal(got["score_ok"], ~bad)
    np.testing.assert_array_equal(got["label"], label)
    np.testing.assert_array_equal(got["jet_pt"], jet_pt)  # copied from the file, not recomputed
    assert got["score_mlp_QCD"].dtype == np.float32
    for run in runs_:
        tagger = jetkd.load(run)
        expected = tagger.score(path)
        assert np.isnan(expected[bad]).all()
        for k, cls in enumerate(tagger.class_names):
            column = got[f"score_{tagger.name}_{cls}"]
            assert np.isnan(column[bad]).all()
            np.testing.assert_allclose(column[~bad], expected[~bad, k], rtol=1e-6, atol=1e-7)
        good = np.flatnonzero(~bad)
        mask = torch.arange(MAX_PARTICLES) < torch.from_numpy(n[good])[:, None]
        with torch.no_grad():
            probs = torch.softmax(tagger(torch.from_numpy(p4[good]), mask).double(), 1).numpy()
        np.testing.assert_allclose(got[f"score_{tagger.name}_Tbqq"][good], probs[:, 1], rtol=1e-5, atol=1e-6)
    # the friend tree lines up with the input entry by entry, as a friend in uproot/awkward
    inputs = uproot.open(path)["tree"].arrays(["jet_pt"])
    friends = uproot.open(out)["tree"].arrays(["jet_pt", "score_ok"])
    assert len(inputs) == len(friends) and ak.all(inputs.jet_pt == friends.jet_pt)


def test_score_several_inputs_unlabelled_and_formats(runs, tmp_path):
    import h5py

    p4, n, _ = toy_jets(30, 8, MAX_PARTICLES)
    write_jetclass(tmp_path / "a.root", p4[:20], n[:20])  # collision data: no labels
    with h5py.File(tmp_path / "b.h5", "w") as f:  # LorentzNet HDF5, labelled
        f["Pmu"], f["Nobj"], f["is_signal"] = padded_to(p4[20:], 20), n[20:], np.ones(10, np.int64)
    out = tmp_path / "scores"
    assert main(["score", "--model", str(runs / "runs" / "deepset"), str(tmp_path / "a.root"), str(tmp_path / "b.h5"),
                 "--out", str(out), "--observers", "jet_nparticles,jet_pt"]) == 0
    a, b = (uproot.open(out / f"{stem}.scores.root")["tree"].arrays(library="np") for stem in ("a", "b"))
    assert len(a["score_ok"]) == 20 and len(b["score_ok"]) == 10
    assert "label" not in a and list(b["label"]) == [1] * 10
    np.testing.assert_array_equal(b["jet_nparticles"], n[20:])  # computed from the constituents
    np.testing.assert_allclose(b["jet_pt"], np.hypot(p4[20:, :, 1].sum(1), p4[20:, :, 2].sum(1)), rtol=1e-5)
    tagger = jetkd.load(runs / "runs" / "deepset")
    np.testing.assert_allclose(a["score_deepset_Tbqq"], tagger.score(p4[:20])[:, 1], rtol=1e-6)


def test_colliding_model_names_are_made_unique(runs, tmp_path):
    import shutil

    for seed in ("seedA", "seedB"):
        shutil.copytree(runs / "runs" / "mlp", tmp_path / seed / "mlp")
    p4, n, _ = toy_jets(10, 1, MAX_PARTICLES)
    path = write_jetclass(tmp_path / "x.root", p4, n)
    out = tmp_path / "x.scores.root"
    assert main(["score", "--model", str(tmp_path / "seedA" / "mlp"), "--model", str(tmp_path / "seedB" / "mlp"),
                 str(path), "--out", str(out)]) == 0
    names = set(uproot.open(out)["tree"].keys())
    assert {"score_seedA_mlp_QCD", "score_seedB_mlp_QCD", "score_seedA_mlp_Tbqq", "score_seedB_mlp_Tbqq"} <= names


def test_score_bad_input_is_one_line_exit_2_and_no_output(runs, tmp_path, capsys):
    p4, n, _ = toy_jets(20, 2, MAX_PARTICLES)
    good = write_jetclass(tmp_path / "good.root", p4, n)
    truncated = tmp_path / "cut.root"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with uproot.recreate(tmp_path / "nobranch.root") as f:
        f["tree"] = {"px": np.zeros(3)}
    model = ["--model", str(runs / "runs" / "mlp")]
    cases = [
        (model + [str(truncated), "--out", str(tmp_path / "o1.root")], "cut.root"),
        (model + [str(tmp_path / "nobranch.root"), "--out", str(tmp_path / "o2.root")], "part_px"),
        (model + [str(good), "--out", str(tmp_path / "o3.root"), "--observers", "nonsense"], "nonsense"),
        (["--model", str(tmp_path / "nowhere")] + [str(good), "--out", str(tmp_path / "o4.root")], "nowhere"),
        (model + [str(good), "--out", str(tmp_path / "o5.txt")], ".root"),
        (model + [str(good), str(truncated), "--out", str(tmp_path / "o6")], "cut.root"),
    ]
    for args, needle in cases:
        capsys.readouterr()
        assert main(["score", *args]) == 2, args
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.root", "good.root", "nobranch.root"]


# ----------------------------------------------------------------------------- unlabelled caches


def test_no_labels_cache_scores_but_does_not_train(runs, tmp_path, capsys):
    p4, n, _ = toy_jets(60, 4, MAX_PARTICLES)
    path = write_jetclass(tmp_path / "data.root", p4, n)
    assert main(["convert", str(path), "--out", str(tmp_path / "cache")]) == 2  # labels are required by default
    assert "label" in capsys.readouterr().err
    assert main(["convert", str(path), "--out", str(tmp_path / "cache"), "--no-labels"]) == 0
    assert "train: 48 jets (unlabelled: 48)" in capsys.readouterr().out
    from jetkd.data.cache import JetCache

    cache = JetCache(tmp_path / "cache" / "train.h5")
    assert (cache.labels == -1).all() and len(cache) == 48
    import yaml

    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(job_dict(tmp_path / "cache", tmp_path / "run")))
    capsys.readouterr()
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert "train.h5" in err and "no label" in err and not (tmp_path / "run").exists()
    assert main(["evaluate", str(runs / "runs" / "mlp"), "--data", str(tmp_path / "cache" / "test.h5"),
                 "--out", str(tmp_path / "report")]) == 2
    assert "test.h5" in capsys.readouterr().err


def test_convert_keeps_each_jets_origin(tmp_path, capsys):
    import h5py

    p4, n, label = toy_jets(30, 6, MAX_PARTICLES)
    a = write_jetclass(tmp_path / "a.root", p4[:10], n[:10], label[:10])
    b = write_jetclass(tmp_path / "b.root", p4[10:], n[10:], label[10:])
    convert([a, b], tmp_path / "cache", max_particles=MAX_PARTICLES, progress=False)
    assert re.search(r"train: 24 jets \(QCD: \d+, Tbqq: \d+\)", capsys.readouterr().out)
    for split in ("train", "val", "test"):
        with h5py.File(tmp_path / "cache" / f"{split}.h5") as f:
            source, entry, stored = f["source"][()], f["entry"][()], f["p4"][()]
            assert f.attrs["class_names"] == '["QCD", "Tbqq"]'
        original = source * 10 + entry
        np.testing.assert_array_equal(stored[:, 0], p4[original, 0])  # leading constituent of that entry


# ----------------------------------------------------------------------------- README


def test_readme_three_lines_run_as_written(runs, tmp_path, monkeypatch):
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("## Scoring jets in an analysis", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)[1]
    assert len(code.strip().splitlines()) == 3
    run = re.search(r'jetkd\.load\("([^"]+)"\)', code)[1]
    source = re.search(r'tagger\.score\("([^"]+)"\)', code)[1]
    monkeypatch.chdir(tmp_path)
    import shutil

    shutil.copytree(runs / "runs" / "deepset", tmp_path / run)
    p4, n, _ = toy_jets(25, 12, MAX_PARTICLES)
    write_jetclass(tmp_path / source, p4, n)
    namespace: dict = {}
    exec(code, namespace)
    scores = namespace["scores"]
    assert scores.shape == (25, 2)
    np.testing.assert_allclose(scores, jetkd.load(tmp_path / run).score(p4), atol=1e-6)


# ----------------------------------------------------------------------------- more inputs and models


def test_other_tree_names_and_branch_maps(runs, tmp_path):
    p4, n, _ = toy_jets(12, 13, MAX_PARTICLES)
    part = part_record(p4, n)
    renamed = {"pf_px": part.px, "pf_py": part.py, "pf_pz": part.pz, "pf_e": part.energy}
    with uproot.recreate(tmp_path / "events.root") as f:
        f["Events"] = renamed
        f["Runs"] = {"run": np.arange(3)}
    with uproot.recreate(tmp_path / "single.root") as f:
        f["jets"] = {"part_px": part.px, "part_py": part.py, "part_pz": part.pz, "part_energy": part.energy}
    model = ["--model", str(runs / "runs" / "mlp")]
    expected = jetkd.load(runs / "runs" / "mlp").score(p4)[:, 1]
    assert main(["score", *model, str(tmp_path / "single.root"), "--out", str(tmp_path / "s.root")]) == 0
    branch_map = "part_px=pf_px,part_py=pf_py,part_pz=pf_pz,part_energy=pf_e"
    assert main(["score", *model, str(tmp_path / "events.root"), "--out", str(tmp_path / "e.root"), "--tree", "Events",
                 "--branch-map", branch_map]) == 0
    for out in ("s.root", "e.root"):
        np.testing.assert_allclose(uproot.open(tmp_path / out)["tree"]["score_mlp_Tbqq"].array(library="np"), expected,
                                   rtol=1e-6)
    assert main(["score", *model, str(tmp_path / "events.root"), "--out", str(tmp_path / "x.root")]) == 2  # two trees


def test_the_teacher_scores_too(lorentznet_teacher, test_jets):
    p4, n, _ = test_jets
    tagger = jetkd.load(lorentznet_teacher)
    assert tagger.contract.features == ["minkowski_invariants", "mass", "beams"]
    mask = torch.arange(MAX_PARTICLES) < torch.from_numpy(n)[:, None]
    with torch.no_grad():
        probs = torch.softmax(tagger(torch.from_numpy(p4), mask).double(), 1).numpy()
    np.testing.assert_allclose(tagger.score(p4), probs, atol=1e-5)


def test_mass_check_the_reverse_way():
    from jetkd.contract import InputContract, MassCheck

    contract = InputContract(model={"name": "mlp"}, features=["rel_pt"], max_constituents=16, massless=False,
                             massive_fraction=0.6, class_names=["QCD", "top"], jetkd_version=jetkd.__version__)
    with pytest.warns(ContractWarning, match=r"100\.0% of the constituents are massless"):
        check = MassCheck(contract, "m")
        check.update(0, 500, "a.root")
        assert check.finish("a.root")
    check = MassCheck(contract, "m")
    check.update(300, 500, "a.root")  # massive like its training data: nothing to say
    assert check.finish("a.root") is None
    with pytest.raises(InputError, match="a.root.*massless.*strict"):
        MassCheck(contract, "m", strict=True).update(0, 500, "a.root")


def test_generator_settings_reach_the_contract(tmp_path):
    import json

    p4, n, label = toy_jets(80, 14, MAX_PARTICLES)
    path = write_jetclass(tmp_path / "gen.root", p4, n, label)
    settings = {"generator": "Pythia 8.317", "sqrt_s_gev": 14000.0, "massless": True, "seed": 4}
    with uproot.update(path) as f:
        f["jetkd_provenance"] = json.dumps(settings)
    convert([path], tmp_path / "cache", max_particles=MAX_PARTICLES, progress=False)
    Trainer(load_job(data=job_dict(tmp_path / "cache", tmp_path / "run", train={"epochs": 1})), progress=False).fit()
    provenance = jetkd.load(tmp_path / "run").contract.provenance
    assert provenance["train"]["inputs"][0]["generator"] == settings
    assert provenance["train"]["inputs"][0]["jets"] == 80 and provenance["train"]["labelled"] is True


def test_jet_chunk_orders_constituents_by_pt_within_each_jet():
    from jetkd.data.arrays import JetArrays, make_p4
    from jetkd.data.sources import jet_chunk

    pt = [[1.0, 5.0, 3.0], [], [9.0], [2.0, 4.0]]  # jet 1 empty: cannot be scored, keeps no constituents
    px = ak.Array(pt)
    zeros = px * 0
    chunk = jet_chunk(JetArrays(make_p4(px, zeros, zeros, px), np.full(4, -1), "t", 10))
    np.testing.assert_array_equal(chunk.components[1], [5.0, 3.0, 1.0, 9.0, 4.0, 2.0])
    np.testing.assert_array_equal(chunk.counts, [3, 0, 1, 2])
    np.testing.assert_array_equal(chunk.ok, [True, False, True, True])
    assert chunk.entries == (10, 13) and chunk.n_massive(2) == (0, 5)
    p4, n = chunk.padded(2)
    np.testing.assert_array_equal(p4[..., 1], [[5, 3], [0, 0], [9, 0], [4, 2]])
    ordered = jet_chunk(JetArrays(make_p4(ak.Array([[3.0, 2.0], [7.0, 1.0]]), ak.Array([[0.0, 0], [0, 0]]),
                                          ak.Array([[0.0, 0], [0, 0]]), ak.Array([[3.0, 2.0], [7.0, 1.0]])),
                                  np.zeros(2), "t"))
    np.testing.assert_array_equal(ordered.components[0], [3.0, 2.0, 7.0, 1.0])  # already ordered: kept as read


def test_branch_names_are_root_identifiers():
    from jetkd.tagger import branch_name

    assert branch_name("b-jet (hadronic)") == "b_jet_hadronic" and branch_name("top_Tbqq") == "top_Tbqq"
    assert branch_name("---") == "model"


def test_a_killed_score_leaves_no_output(runs, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    p4, n, _ = toy_jets(4000, 31, MAX_PARTICLES)
    reps = 50  # 200k jets: long enough to be killed mid-way
    path = write_jetclass(tmp_path / "big.root", np.tile(p4, (reps, 1, 1)), np.tile(n, reps))
    out = tmp_path / "big.scores.root"
    cmd = [sys.executable, "-m", "jetkd", "score", "--model", str(runs / "runs" / "deepset"), str(path), "--out",
           str(out), "--step-size", "5000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".big.scores.root.tmp-*")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "scoring ended before it could be killed"
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()  # the final name appears only once everything is written


def test_vector_momentum4d_records_score_like_their_components(tmp_path):
    """A ``vector`` Momentum4D record in any coordinates (here pt, eta, phi, mass) is read through its px, py, pz, E
    (jetkd does not import vector; jetkd.lorentz owns the maths)."""
    import awkward as ak
    import vector

    from jetkd.data.sources import jets_from_awkward

    vector.register_awkward()
    pt, eta, phi = [[50.0, 20.0, 5.0], [30.0, 12.0]], [[0.1, -0.2, 0.3], [0.0, 0.5]], [[0.0, 0.1, -0.2], [1.0, 1.2]]
    mass = [[0.0, 0.1396, 0.0], [0.0, 0.0]]
    rec = ak.zip({"pt": pt, "eta": eta, "phi": phi, "mass": mass}, with_name="Momentum4D")
    jets = jets_from_awkward(rec)
    expected = ak.zip({"px": rec.px, "py": rec.py, "pz": rec.pz, "E": rec.E})
    for field, ref in (("px", expected.px), ("py", expected.py), ("pz", expected.pz), ("E", expected.E)):
        np.testing.assert_allclose(ak.flatten(jets.p4[field]).to_numpy(), ak.flatten(ref).to_numpy(), rtol=1e-6)
