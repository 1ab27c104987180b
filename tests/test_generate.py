"""Tests of the Pythia 8 + FastJet jet generator (data_prep.generate) and its ``jetkd generate`` CLI."""

from __future__ import annotations

import importlib.metadata
import math

import awkward as ak
import numpy as np
import pytest
import uproot

from data_prep import generate as gen
import jetkd
from jetkd import lorentz
from jetkd.cli import main
from jetkd.data.readers import file_metadata, iter_jets
from jetkd.errors import InputError

N_JETS = 300
JAGGED = ("part_px", "part_py", "part_pz", "part_energy")
PER_JET = ("jet_pt", "jet_eta", "jet_phi", "jet_energy", "jet_mass")
LABELS = ("label_QCD", "label_Tbqq")


def read_tree(path) -> dict[str, ak.Array | np.ndarray]:
    """All branches of ``tree``: awkward for the jagged ones, numpy for the rest."""
    tree = uproot.open(path)["tree"]
    arrays = tree.arrays(library="ak")
    return {k: (arrays[k] if k in JAGGED else ak.to_numpy(arrays[k])) for k in tree.keys()}  # noqa: SIM118 - uproot TTree


def constituent_p4(data) -> ak.Array:
    """Jagged float64 ``[E, px, py, pz]`` records of the stored constituents."""
    fields = {"E": "part_energy", "px": "part_px", "py": "part_py", "pz": "part_pz"}
    return ak.zip({k: ak.values_astype(data[b], np.float64) for k, b in fields.items()})


def summed_p4(data) -> np.ndarray:
    """(N, 4) float64 E-scheme sums of the stored constituents."""
    c = constituent_p4(data)
    return np.stack([ak.to_numpy(ak.sum(c[k], axis=1)) for k in ("E", "px", "py", "pz")], axis=-1)


@pytest.fixture(scope="module")
def sample_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("generate") / "jets.root"
    returned = gen.generate(path, n_jets=N_JETS, seed=3, workers=2, progress=False)
    assert returned == path
    return path


@pytest.fixture(scope="module")
def sample(sample_path):
    return read_tree(sample_path)


# ----------------------------------------------------------------------------- the file


def test_branches_and_types(sample):
    for name in JAGGED:
        assert ak.type(sample[name]).content.content.primitive == "float32", name
    for name in PER_JET:
        assert sample[name].dtype == np.float32, name
    for name in ("jet_nparticles", *LABELS):
        assert sample[name].dtype == np.int32, name
    assert len(sample["jet_pt"]) == N_JETS
    assert "part_E" not in sample


def test_provenance_metadata(sample_path):
    meta = file_metadata(sample_path)
    assert meta == {
        "generator": f"Pythia {importlib.metadata.version('pythia8mc')}, anti-kT R=0.8 via fjcore",
        "sqrt_s_gev": gen.ECM, "jet_r": gen.JET_R, "pt_min_gev": gen.PT_MIN, "pt_max_gev": gen.PT_MAX,
        "eta_max": gen.ETA_MAX, "pthat_window_gev": list(gen.PTHAT_WINDOW), "massless": False, "seed": 3,
        "n_jets": N_JETS, "processes": {"signal": "ttbar all-hadronic", "background": "QCD dijets"},
        "jetkd_version": jetkd.__version__,
    }
    chunks = list(iter_jets(sample_path))  # the provenance string is not taken for a second tree
    assert sum(map(len, chunks)) == N_JETS and chunks[0].class_names == ("QCD", "Tbqq")


def test_every_jet_passes_selection(sample):
    p4 = summed_p4(sample)
    pt, eta = lorentz.pt(p4), lorentz.eta(p4)
    assert np.all((pt > gen.PT_MIN) & (pt < gen.PT_MAX)), (pt.min(), pt.max())
    assert np.all(np.abs(eta) < gen.ETA_MAX), np.abs(eta).max()
    assert np.all((sample["jet_pt"] > 550) & (sample["jet_pt"] < 650) & (np.abs(sample["jet_eta"]) < 2))


def test_constituents_sum_to_jet(sample):
    p4 = summed_p4(sample)
    np.testing.assert_allclose(sample["jet_energy"], p4[:, 0], rtol=1e-6)
    np.testing.assert_allclose(sample["jet_pt"], lorentz.pt(p4), rtol=1e-6)
    np.testing.assert_allclose(sample["jet_eta"], lorentz.eta(p4), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lorentz.wrap_phi(sample["jet_phi"] - lorentz.phi(p4)), 0, atol=1e-6)
    np.testing.assert_allclose(sample["jet_mass"], lorentz.mass(p4), rtol=1e-5, atol=1e-3)


def test_constituents_pt_ordered_and_capped(sample):
    n = sample["jet_nparticles"]
    assert np.array_equal(n, ak.to_numpy(ak.num(sample["part_px"])))
    assert n.min() >= 1 and n.max() <= gen.MAX_PARTICLES
    pt = lorentz.pt(constituent_p4(sample))
    assert ak.all(pt[:, 1:] <= pt[:, :-1])


def test_half_signal_half_background_shuffled(sample):
    top, qcd = sample["label_Tbqq"], sample["label_QCD"]
    assert np.all(top + qcd == 1)
    assert top.sum() == N_JETS // 2 and qcd.sum() == N_JETS - N_JETS // 2
    assert 0 < top[: N_JETS // 2].sum() < N_JETS // 2  # shuffled, not top-then-QCD


def test_jet_mass_top_peak_and_light_qcd(sample):
    top = sample["label_Tbqq"] == 1
    counts, edges = np.histogram(sample["jet_mass"][top], bins=30, range=(0, 300))
    mode = edges[np.argmax(counts)]
    assert 150 <= mode < 200, (mode, counts)
    assert np.median(sample["jet_mass"][~top]) < 120


def test_same_seed_same_arrays(tmp_path):
    a, b = tmp_path / "a.root", tmp_path / "b.root"
    gen.generate(a, n_jets=20, seed=5, workers=2, progress=False)
    gen.generate(b, n_jets=20, seed=5, workers=2, progress=False)
    first, second = read_tree(a), read_tree(b)
    assert first.keys() == second.keys()
    for name in first:
        assert ak.array_equal(ak.Array(first[name]), ak.Array(second[name])), name


def test_massless_in_process(tmp_path):
    path = gen.generate(tmp_path / "massless.root", n_jets=6, seed=2, workers=1, massless=True, progress=False)
    assert file_metadata(path)["massless"] is True and file_metadata(path)["seed"] == 2
    data = read_tree(path)
    c = constituent_p4(data)
    np.testing.assert_allclose(ak.to_numpy(ak.flatten(c.E)), ak.to_numpy(ak.flatten(lorentz.p_abs(c))), rtol=2e-7)
    p4 = summed_p4(data)
    np.testing.assert_allclose(data["jet_mass"], lorentz.mass(p4), rtol=1e-5, atol=1e-3)
    assert np.all((lorentz.pt(p4) > 550) & (lorentz.pt(p4) < 650) & (np.abs(lorentz.eta(p4)) < 2))


# ----------------------------------------------------------------------------- FastJet cross-check


def fastjet_jets(event, pt_min: float) -> list[tuple[np.ndarray, frozenset[int]]]:
    """Anti-kT R=0.8 jets of the ``fastjet`` package on the visible final state: (p4 (4,), event indices)."""
    import fastjet

    particles = []
    for i in range(event.size()):
        p = event[i]
        if p.isFinal() and p.isVisible():
            pj = fastjet.PseudoJet(p.px(), p.py(), p.pz(), p.e())
            pj.set_user_index(i)
            particles.append(pj)
    sequence = fastjet.ClusterSequence(particles, fastjet.JetDefinition(fastjet.antikt_algorithm, gen.JET_R))
    return [
        (np.array([j.E(), j.px(), j.py(), j.pz()]), frozenset(c.user_index() for c in j.constituents()))
        for j in sequence.inclusive_jets(pt_min)
    ]


@pytest.mark.parametrize("kind", gen.CLASSES)
def test_fjcore_jets_are_fastjet_jets(kind):
    pythia, finder = gen.make_pythia(kind, 4321), gen.make_jet_finder()
    n_hard = n_accepted = 0
    for _ in range(60):  # stops after ~10 events
        if n_hard >= 6 and n_accepted >= 3:
            break
        assert pythia.next()
        event = pythia.event
        accepted = gen.process_event(pythia, finder, kind)  # clusters with fjcore as the generator does
        reference = fastjet_jets(event, pt_min=545.0)  # finder reports jets above 540 GeV
        ours = {frozenset(finder.constituents(j)) for j in range(finder.sizeJet()) if finder.p(j).pT() > 545.0}
        assert ours == {indices for _, indices in reference}
        n_hard += len(ours)
        for jet in accepted:  # stored jets (<= 200 constituents here) are the FastJet jets
            assert len(jet.constituents) < gen.MAX_PARTICLES
            assert any(np.allclose(jet.p4, p4, rtol=1e-6, atol=1e-3) for p4, _ in reference)
            n_accepted += 1
    assert n_hard >= 6 and n_accepted >= 3


def test_top_partons_are_top_and_three_quarks():
    pythia = gen.make_pythia("top", 99)
    for _ in range(3):
        assert pythia.next()
        partons = gen.top_partons(pythia)
        assert len(partons) == 2
        for quarks in partons:
            assert quarks.shape == (4, 4)
            assert 150 < lorentz.mass(quarks[0]) < 200  # the top
            assert np.all(lorentz.mass(quarks[1:]) < 10)  # b and light quarks


# ----------------------------------------------------------------------------- pieces


def test_stored_constituents_order_truncation_massless():
    rng = np.random.default_rng(0)
    p3 = rng.normal(size=(250, 3)) * 10
    p4 = np.concatenate([np.sqrt((p3**2).sum(1) + 0.14**2)[:, None], p3], axis=1)
    c = gen.stored_constituents(p4, massless=False)
    assert c.dtype == np.float32 and c.shape == (gen.MAX_PARTICLES, 4)
    pt = lorentz.pt(c.astype(np.float64))
    assert np.all(np.diff(pt) <= 0)
    assert pt[-1] >= np.sort(lorentz.pt(p4))[-gen.MAX_PARTICLES] * (1 - 1e-6)  # kept the hardest
    m = gen.stored_constituents(p4[:10], massless=True)
    np.testing.assert_allclose(m[:, 0], lorentz.p_abs(m.astype(np.float64)), rtol=1e-7)


def test_selection_window_is_open():
    def jet(pt, eta):
        return np.array([pt * math.cosh(eta) + 1.0, pt, 0.0, pt * math.sinh(eta)])

    assert gen.passes_selection(jet(600, 1.9))
    assert not gen.passes_selection(jet(549.9, 0.0)) and not gen.passes_selection(jet(650.1, 0.0))
    assert not gen.passes_selection(jet(600, 2.01)) and not gen.passes_selection(jet(600, -2.01))


def test_contains_top_uses_eta_phi_distance_across_phi_wrap():
    def massless(eta, phi, pt=100.0):
        return np.array([pt * math.cosh(eta), pt * math.cos(phi), pt * math.sin(phi), pt * math.sinh(eta)])

    jet = massless(0.5, math.pi - 0.1, 600)
    inside = np.stack(
        [massless(0.5, -math.pi + 0.2), massless(0.9, math.pi - 0.3), massless(0.1, 3.0), massless(0.5, 3.1)]
    )
    assert gen.contains_top(jet, [inside])
    outside = inside.copy()
    outside[2] = massless(-0.35, math.pi - 0.1)  # Delta eta = 0.85
    assert not gen.contains_top(jet, [outside])
    assert gen.contains_top(jet, [outside, inside])


@pytest.mark.parametrize(("n_jets", "workers"), [(2, 1), (7, 2), (300, 2), (11, 16)])
def test_tasks_split_jets_exactly(n_jets, workers):
    tasks = gen.make_tasks(n_jets, seed=1, workers=workers, massless=False)
    assert sum(t.n_jets["top"] for t in tasks) == n_jets // 2  # odd n_jets: one more QCD than top jet
    assert sum(t.n_jets["qcd"] for t in tasks) == n_jets - n_jets // 2
    seeds = [s for t in tasks for s in t.seeds.values()]
    assert len(set(seeds)) == len(seeds) and all(1 <= s <= 900_000_000 for s in seeds)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        ({"n_jets": 1}, "n_jets"),
        ({"n_jets": 0}, "n_jets"),
        ({"workers": 0}, "workers"),
        ({"seed": -1}, "seed"),
        ({"out": "jets.txt"}, "jets.txt"),
        ({"out": "missing/jets.root"}, "missing"),
    ],
)
def test_bad_arguments_raise_input_error(tmp_path, kwargs, names):
    args = {"n_jets": 10, "workers": 1, "seed": 1, "progress": False, **kwargs}
    out = tmp_path / args.pop("out", "jets.root")
    with pytest.raises(InputError, match=names):
        gen.generate(out, **args)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    def write_then_interrupt(path, jets, *, seed, massless):
        path.write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(gen, "write_root", write_then_interrupt)
    jets = {"constituents": np.zeros((0, 4), np.float32), "counts": np.zeros(0, np.int32)}
    with pytest.raises(KeyboardInterrupt):
        gen._write_atomic(tmp_path / "jets.root", jets, seed=1, massless=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("name", "argv"),
    [("jets.root", ["--jets", "1"]), ("jets.root", ["--jets", "10", "--workers", "0"]), ("jets.csv", ["--jets", "10"])],
)
def test_cli_bad_arguments_exit_2_with_one_line(tmp_path, capsys, name, argv):
    assert main(["generate", "--out", str(tmp_path / name), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("jetkd generate: error: ") and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []


def test_worker_failure_is_reported_with_its_traceback():
    bad = gen.Task(worker=0, n_jets={"top": 1, "qcd": 0}, seeds={"top": 0, "qcd": 1}, massless=False)
    with (
        gen._progress_bar(1, enabled=False) as bar,
        pytest.raises(RuntimeError, match=r"(?s)worker 0 failed.*Pythia seed"),
    ):
        gen._run_in_workers([bad], bar)
