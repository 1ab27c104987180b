"""Evaluation: metrics on hand-made scores, predict, boost scans, FLOPs, and the written report."""

import json
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from jetkd import lorentz
from jetkd.data.loader import JetBatch
from jetkd.evaluate import (
    DEFAULT_BETAS,
    UnreliableMetricWarning,
    background_efficiency,
    binary_metrics,
    boost_scan,
    count_flops,
    count_parameters,
    deploy_notes,
    evaluate_model,
    flops_per_jet,
    invariance_score,
    predict,
    read_report,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- toy jets and models


def toy_jets(n_jets=200, n_max=10, seed=0):
    """Jets along +x with ~500 GeV: top-like (label 1) wide, QCD-like (label 0) narrow; massless constituents."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 2, n_jets)
    n = rng.integers(3, n_max + 1, n_jets)
    p4 = np.zeros((n_jets, n_max, 4), np.float32)
    for j in range(n_jets):
        z = rng.dirichlet(np.ones(n[j])) * rng.uniform(400, 600)
        width = 0.15 if label[j] else 0.04
        d = np.stack([np.ones(n[j]), rng.normal(0, width, n[j]), rng.normal(0, width, n[j])], -1)
        p = z[:, None] * d / np.linalg.norm(d, axis=1, keepdims=True)
        p4[j, : n[j]] = np.concatenate([np.linalg.norm(p, axis=1, keepdims=True), p], 1)
    return JetBatch.from_arrays(p4, n, label, trim=False)


def split(batch, size):
    return [JetBatch(batch.p4[i : i + size], batch.mask[i : i + size], batch.label[i : i + size])
            for i in range(0, len(batch), size)]


def jet_mass(p4, mask):
    return lorentz.mass(lorentz.jet_axis(p4.double(), mask))


class MassTagger(nn.Module):
    """Lorentz-invariant: the logit is the jet mass of the constituents (minus a cut at 40 GeV)."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(0.2))

    def forward(self, p4, mask):
        assert torch.all(p4[~mask] == 0), "padding must stay zero"
        s = self.scale * (jet_mass(p4, mask) - 40.0)
        return torch.stack([-s, s], -1).float()


class MassOverPtTagger(MassTagger):
    """Not boost invariant: m / pT (the jet gets harder along x, so signal looks QCD-like)."""

    def forward(self, p4, mask):
        jet = lorentz.jet_axis(p4.double(), mask)
        s = 50 * self.scale * (lorentz.mass(jet) / lorentz.pt(jet) - 0.08)
        return torch.stack([-s, s], -1).float()


class Recorder(nn.Module):
    """Remembers its inputs and returns constant logits."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, p4, mask):
        self.seen.append((p4.clone(), mask.clone(), torch.is_grad_enabled(), self.training))
        return torch.zeros(p4.shape[0], 2)


class PerConstituent(nn.Module):
    """Deep-Set-like: Linear(4, 8) per constituent, masked sum, Linear(8, 2). Cost grows with multiplicity."""

    def __init__(self):
        super().__init__()
        self.phi, self.rho = nn.Linear(4, 8), nn.Linear(8, 2)

    def forward(self, p4, mask):
        return self.rho((self.phi(p4 / 100) * mask[..., None]).sum(1))


# ----------------------------------------------------------------------------- metrics


def labelled(signal_scores, background_scores):
    s = np.concatenate([signal_scores, background_scores]).astype(float)
    labels = np.r_[np.ones(len(signal_scores), int), np.zeros(len(background_scores), int)]
    return np.stack([1 - s, s], 1), labels


def test_perfect_classifier():
    scores, labels = labelled(np.full(50, 0.9), np.full(50, 0.1))
    with pytest.warns(UnreliableMetricWarning, match="no background jet passes"):
        m = binary_metrics(scores, labels)
    assert (m["n_jets"], m["n_signal"], m["n_background"]) == (100, 50, 50)
    assert m["accuracy"] == 1.0 and m["auc"] == 1.0
    assert m["eps_b_30"] == 0.0 and m["rej_30"] == math.inf and m["rej_50"] == math.inf
    assert len(m["warnings"]) == 2 and all("inf" in w for w in m["warnings"])


def test_random_classifier_constant_scores_is_the_diagonal():
    scores, labels = labelled(np.full(60, 0.5), np.full(40, 0.5))
    m = binary_metrics(scores, labels)
    assert m["auc"] == 0.5
    assert m["rej_30"] == pytest.approx(1 / 0.3) and m["rej_50"] == pytest.approx(2.0)
    assert m["accuracy"] == 0.4  # argmax of [0.5, 0.5] is class 0: all called background
    assert m["warnings"] == []


def test_random_classifier_uniform_scores():
    rng = np.random.default_rng(1)
    scores, labels = labelled(rng.random(20000), rng.random(20000))
    m = binary_metrics(scores, labels)
    assert m["auc"] == pytest.approx(0.5, abs=0.01)
    assert m["accuracy"] == pytest.approx(0.5, abs=0.01)
    assert m["rej_30"] == pytest.approx(1 / 0.3, rel=0.03) and m["rej_50"] == pytest.approx(2.0, rel=0.03)


@pytest.mark.parametrize("scale", [10, 1])
def test_hand_computed_roc_point_with_interpolation(scale):
    # score 0.9: 2 signal, 0 background -> ROC point (eps_S, eps_B) = (0.2, 0)
    # score 0.5: 4 signal, 4 background -> (0.6, 0.4)   (a diagonal segment: ties)
    # score 0.1: 4 signal, 6 background -> (1, 1)
    # eps_S = 0.3 lies a quarter of the way from (0.2, 0) to (0.6, 0.4): eps_B = 0.1; eps_S = 0.5: eps_B = 0.3
    sig = np.r_[np.full(2, 0.9), np.full(4, 0.5), np.full(4, 0.1)].repeat(scale)
    bkg = np.r_[np.full(4, 0.5), np.full(6, 0.1)].repeat(scale)
    scores, labels = labelled(sig, bkg)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = binary_metrics(scores, labels)
    assert m["eps_b_30"] == pytest.approx(0.1) and m["rej_30"] == pytest.approx(10.0)
    assert m["eps_b_50"] == pytest.approx(0.3) and m["rej_50"] == pytest.approx(10 / 3)
    assert m["n_background_pass_30"] == pytest.approx(scale * 1.0)
    # AUC: P(s > b) + P(s = b) / 2 = (2*10 + 4*6 + 4*4/2 + 4*6/2) / 100
    assert m["auc"] == pytest.approx((20 + 24 + 8 + 12) / 100)
    # argmax: 0.5 ties go to class 0; signal right: 2, background right: 10 -> 12 / 20
    assert m["accuracy"] == pytest.approx(12 / 20)
    if scale == 10:  # 10 and 30 background jets pass: no warning
        assert m["warnings"] == [] and not [w for w in caught if w.category is UnreliableMetricWarning]
    else:  # 1 and 3 pass: both rejections flagged, as Python warnings and in the result
        assert len(m["warnings"]) == 2 and "only 1 background jets pass" in m["warnings"][0]
        assert [str(w.message) for w in caught if w.category is UnreliableMetricWarning] == m["warnings"]


def test_auc_matches_roc_auc_score_with_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(2)
    scores, labels = labelled(rng.integers(0, 5, 300) / 4, rng.integers(0, 4, 200) / 4)
    assert binary_metrics(scores, labels)["auc"] == pytest.approx(roc_auc_score(labels, scores[:, 1]), abs=1e-12)


def test_background_efficiency_on_plateau_takes_lowest_eps_b():
    eps_s = np.array([0.0, 0.3, 0.3, 0.6, 1.0])
    eps_b = np.array([0.0, 0.1, 0.2, 0.5, 1.0])
    assert background_efficiency(0.3, eps_s, eps_b) == pytest.approx(0.1)
    np.testing.assert_allclose(background_efficiency([0.15, 0.45, 1.0], eps_s, eps_b), [0.05, 0.35, 1.0])


def test_one_class_only_warns_and_gives_nan():
    scores, labels = labelled(np.full(5, 0.7), np.zeros(0))
    with pytest.warns(UnreliableMetricWarning, match="undefined"):
        m = binary_metrics(scores, labels)
    assert m["accuracy"] == 1.0 and math.isnan(m["auc"]) and math.isnan(m["rej_30"])


# ----------------------------------------------------------------------------- predict


def test_predict_softmax_eval_no_grad_and_transform():
    jets = toy_jets(30)
    model = Recorder().train()
    scores, labels = predict(model, split(jets, 8), transform=lambda p4: p4 * 2)
    assert scores.dtype == np.float64 and scores.shape == (30, 2) and np.allclose(scores, 0.5)
    np.testing.assert_array_equal(labels, jets.label.numpy())
    assert model.training  # restored
    assert all(not grad and not training for _, _, grad, training in model.seen)
    np.testing.assert_allclose(torch.cat([p for p, *_ in model.seen]).numpy(), (jets.p4 * 2).numpy(), rtol=1e-6)


def test_predict_keeps_padding_zero_under_any_transform():
    jets = toy_jets(10)
    model = Recorder()
    predict(model, [jets], transform=lambda p4: p4 + 1.0)
    p4, mask, *_ = model.seen[0]
    assert torch.equal(mask, jets.mask) and torch.all(p4[~mask] == 0) and torch.all(p4[mask] != 0)


# ----------------------------------------------------------------------------- boost scan


@pytest.mark.filterwarnings("ignore::jetkd.evaluate.metrics.UnreliableMetricWarning")
def test_boost_scan_boosts_constituents_only():
    jets = toy_jets(20)
    model = Recorder()
    scan = boost_scan(model, split(jets, 10), betas=[0.0, 0.5], axis=(0, 1, 0))
    assert [p["beta"] for p in scan] == [0.0, 0.5] and all(p["n_jets"] == 20 for p in scan)
    seen = torch.cat([p for p, *_ in model.seen[2:]])
    expected = lorentz.boost(jets.p4.double(), 0.5, (0, 1, 0)).float()
    np.testing.assert_allclose(seen.numpy(), expected.numpy(), rtol=1e-6)
    assert torch.all(seen[~jets.mask] == 0)


def test_default_betas():
    assert len(DEFAULT_BETAS) == 20 and DEFAULT_BETAS[0] == 0.0 and DEFAULT_BETAS[10] == 0.5
    assert DEFAULT_BETAS[-1] == 0.95


def test_invariant_model_has_flat_scan_and_score_one():
    batches = split(toy_jets(200), 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnreliableMetricWarning)
        scan = boost_scan(MassTagger(), batches, betas=np.arange(0, 1, 0.05))
    accs = [p["accuracy"] for p in scan]
    assert len(scan) == 20 and 0.8 < accs[0] < 1.0
    assert [p["beta"] for p in scan] == list(DEFAULT_BETAS) and scan[3]["beta"] == 0.15
    assert len(set(accs)) == 1
    assert invariance_score(accs) == pytest.approx(1.0) and invariance_score(scan) == pytest.approx(1.0)
    assert max(p["auc"] for p in scan) - min(p["auc"] for p in scan) < 1e-3


def test_non_invariant_model_degrades():
    batches = split(toy_jets(200), 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnreliableMetricWarning)
        scan = boost_scan(MassOverPtTagger(), batches, betas=[0.0, 0.5, 0.9])
    accs = [p["accuracy"] for p in scan]
    assert accs[0] > 0.8 and accs[2] < accs[0] - 0.2
    assert invariance_score(accs) < 0.8


def test_invariance_score_formula():
    assert invariance_score([0.9, 0.9, 0.9]) == 1.0
    assert invariance_score([0.9, 0.7]) == pytest.approx((2 * 0.8 - 1) / (2 * 0.9 - 1))
    assert math.isnan(invariance_score([0.5, 0.4]))


# ----------------------------------------------------------------------------- cost


def test_count_flops_and_parameters_of_an_mlp():
    model = nn.Sequential(nn.Flatten(), nn.Linear(40, 16), nn.ReLU(), nn.Linear(16, 2))

    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = model

        def forward(self, p4, mask):
            return self.net(p4 * mask[..., None])

    jets = toy_jets(12)
    assert count_flops(Wrapped(), jets.p4, jets.mask) == 2 * (40 * 16 + 16 * 2)
    assert count_parameters(Wrapped()) == 40 * 16 + 16 + 16 * 2 + 2
    model[1].weight.requires_grad_(False)
    assert count_parameters(Wrapped()) == 16 + 16 * 2 + 2
    assert count_parameters(Wrapped(), trainable_only=False) == 40 * 16 + 16 + 16 * 2 + 2


def test_flops_per_jet_counts_each_jet_unpadded():
    jets = toy_jets(12)
    model = PerConstituent()
    n = jets.mask.sum(1).double()
    assert flops_per_jet(model, split(jets, 5), n_jets=12) == pytest.approx(float((2 * 4 * 8 * n + 2 * 8 * 2).mean()))
    assert flops_per_jet(model, [jets], n_jets=3) == pytest.approx(float((2 * 4 * 8 * n[:3] + 32).mean()))
    # a padded batch is charged for its padding: 10 slots per jet
    assert count_flops(model, jets.p4, jets.mask) == 2 * 4 * 8 * 10 + 32


# ----------------------------------------------------------------------------- report


@pytest.fixture(scope="module")
def results():
    batches = split(toy_jets(300, seed=3), 100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnreliableMetricWarning)
        return {
            "teacher": evaluate_model(MassTagger(), batches, name="teacher", flops_jets=8),
            "mlp": evaluate_model(MassOverPtTagger(), batches, name="mlp", flops_jets=8),
            "deepset": evaluate_model(PerConstituent(), batches, betas=[0.0, 0.5, 0.9], name="deepset", flops_jets=8),
        }


def test_evaluate_model_entry(results):
    entry = results["teacher"]
    assert entry["name"] == "teacher" and entry["parameters"] == 1
    for key in ("accuracy", "auc", "rej_30", "rej_50", "n_jets", "n_signal", "n_background", "warnings"):
        assert key in entry["metrics"]
    assert entry["metrics"]["n_jets"] == 300 and len(entry["boost_scan"]) == 20
    assert entry["boost_scan"][0]["accuracy"] == entry["metrics"]["accuracy"]
    assert entry["invariance_score"] == pytest.approx(1.0)
    assert entry["_scores"].shape == (300, 2) and entry["_labels"].shape == (300,)
    assert len(entry["roc"]["eps_s"]) == len(entry["roc"]["eps_b"]) == 200
    assert results["deepset"]["flops_per_jet"] > 0


@pytest.fixture(scope="module")
def report_dir(results, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    write_report(run_dir, results)
    return run_dir


def test_write_report(results, report_dir):
    tmp_path = report_dir
    for name in ("report.json", "report.md", "scores.npz", "roc.png", "accuracy_vs_beta.png", "rejection_vs_beta.png", "score_histograms.png"):
        assert (tmp_path / name).is_file(), name

    def strict(token):
        raise AssertionError(f"non-standard JSON constant {token}")

    doc = json.loads((tmp_path / "report.json").read_text(), parse_constant=strict)
    assert set(doc["models"]) == {"teacher", "mlp", "deepset"}
    teacher = doc["models"]["teacher"]
    assert not any(k.startswith("_") for k in teacher)
    assert teacher["metrics"]["accuracy"] == results["teacher"]["metrics"]["accuracy"]
    assert len(teacher["boost_scan"]) == 20 and "invariance_score" in teacher and "flops_per_jet" in teacher

    md = (tmp_path / "report.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("|")]
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    assert header == ["Model", "Parameters", "FLOPs / jet", "Accuracy", "AUC", "1/ε_B @ ε_S = 0.3",
                      "1/ε_B @ ε_S = 0.5", "Accuracy @ β = 0.5", "Accuracy @ β = 0.9", "Invariance"]
    body = rows[2:]
    assert [r.split("|")[1].strip() for r in body] == ["teacher", "mlp", "deepset"]
    assert all(len(r.strip("|").split("|")) == len(header) for r in body)
    assert "Test set: 300 jets" in md

    for name in ("roc.png", "accuracy_vs_beta.png", "rejection_vs_beta.png", "score_histograms.png"):
        data = (tmp_path / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000, name


def test_report_warnings_and_infinite_rejection(tmp_path):
    scores, labels = labelled(np.full(20, 0.9), np.full(20, 0.1))
    with pytest.warns(UnreliableMetricWarning):
        metrics = binary_metrics(scores, labels)
    entry = {"parameters": 3, "flops_per_jet": 1.5e6, "metrics": metrics, "warnings": metrics["warnings"],
             "boost_scan": [{"beta": 0.0, **metrics}], "invariance_score": 1.0, "_scores": scores, "_labels": labels}
    paths = write_report(tmp_path, {"perfect": entry}, plots=False)
    assert set(paths) == {"json", "markdown", "scores"} and not (tmp_path / "roc.png").exists()
    md = (tmp_path / "report.md").read_text()
    # no background jet of 20 passes: the rejection is a lower limit, 20 / 1.841 (Poisson 84% CL upper limit on 0)
    assert "| perfect | 3 | 1.5 M | 1.0000 | 1.0000 | > 10.9† | > 10.9† | – | – | 1.000 |" in md
    assert "† Fewer than 10 background jets pass the cut" in md
    assert "## Warnings" in md and "no background jet passes" in md
    doc = json.loads((tmp_path / "report.json").read_text())
    assert doc["models"]["perfect"]["metrics"]["rej_30"] is None
    assert doc["models"]["perfect"]["metrics"]["rej_30_lower_bound"] is True
    assert doc["models"]["perfect"]["metrics"]["rej_30_limit"] == pytest.approx(20 / 1.841, rel=1e-3)
    assert doc["models"]["perfect"]["metrics"]["eps_b_30"] == 0.0


def test_read_report_round_trip(results, report_dir, tmp_path):
    back = read_report(report_dir)
    np.testing.assert_allclose(back["mlp"]["_scores"], results["mlp"]["_scores"], rtol=1e-6)
    np.testing.assert_array_equal(back["mlp"]["_labels"], results["mlp"]["_labels"])
    write_report(tmp_path, back, plots=False)
    assert (tmp_path / "report.md").read_text() == (report_dir / "report.md").read_text()
    assert (tmp_path / "report.json").read_text() == (report_dir / "report.json").read_text()


def test_deploy_notes_format_nested_summaries():
    results = {"plain": {}, "cdd": {"deploy": {"deployed_widths": {"blocks.0": 1024}, "budget_value": 528386.0,
                                               "parameter_reduction": 2.995545, "budget": "params"}}}
    assert deploy_notes(results) == ["- cdd: deployed_widths = {blocks.0: 1,024}, budget_value = 528,386, "
                                     "parameter_reduction = 2.996, budget = params"]


# ----------------------------------------------------------------------------- bootstrap intervals and lower limits


def test_replica_metrics_equal_metrics_of_the_resampled_jets():
    """Each weighted replica (jet i taken w_i times) gives what binary_metrics gives on the explicitly resampled
    jets: vectorised ROC, AUC (ties included), eps_B interpolation and accuracy."""
    from jetkd.evaluate.metrics import _prepare, replica_metrics

    rng = np.random.default_rng(5)
    scores, labels = labelled(rng.integers(0, 8, 400) / 8, rng.integers(0, 6, 300) / 8)  # many ties
    is_signal, correct, ends = _prepare(scores, labels, 1)
    order = np.argsort(-scores[:, 1], kind="stable")
    draws = rng.integers(0, len(labels), (4, len(labels)))
    weights = np.stack([np.bincount(d, minlength=len(labels)) for d in draws])[:, order]
    acc, area, eps_b = replica_metrics(is_signal, correct, ends, weights, np.array([0.3, 0.5]))
    for b, d in enumerate(draws):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UnreliableMetricWarning)
            m = binary_metrics(scores[d], labels[d])
        assert acc[b] == pytest.approx(m["accuracy"], abs=1e-12)
        assert area[b] == pytest.approx(m["auc"], abs=1e-12)
        np.testing.assert_allclose(eps_b[b], [m["eps_b_30"], m["eps_b_50"]], atol=1e-12)


def gaussian_scores(n, separation=2.0, seed=1):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    s = 1 / (1 + np.exp(-(rng.normal(0, 1, n) + separation * (labels - 0.5))))
    return np.stack([1 - s, s], 1), labels


def test_bootstrap_intervals_are_reproducible_and_as_wide_as_binomial():
    from jetkd.evaluate import bootstrap_intervals

    scores, labels = gaussian_scores(20_000)
    m = binary_metrics(scores, labels, n_bootstrap=300)
    again = binary_metrics(scores, labels, n_bootstrap=300)
    other = bootstrap_intervals(scores, labels, n_bootstrap=300, seed=1)
    assert m["accuracy_interval"] == again["accuracy_interval"] and m["n_bootstrap"] == 300
    assert other["accuracy_interval"] != m["accuracy_interval"]
    lo, hi = m["accuracy_interval"]
    sigma = math.sqrt(m["accuracy"] * (1 - m["accuracy"]) / 20_000)  # a binomial fraction's standard error
    assert lo < m["accuracy"] < hi and (hi - lo) / 2 == pytest.approx(sigma, rel=0.2)
    for key in ("auc", "rej_30", "rej_50"):
        lo, hi = m[f"{key}_interval"]
        assert lo < m[key] < hi, key
    lo, hi = m["eps_b_30_interval"]
    assert m["rej_30_interval"] == pytest.approx([1 / hi, 1 / lo])


def test_bootstrap_of_100k_jets_with_a_roc_band():
    """The shapes and finiteness at a realistic size (its speed: scripts/bench_bootstrap.py, docs/results.md)."""
    from jetkd.evaluate import bootstrap_intervals
    from jetkd.evaluate.metrics import eps_s_grid

    scores, labels = gaussian_scores(100_000)
    out = bootstrap_intervals(scores, labels, n_bootstrap=200, grid=eps_s_grid())
    assert out["eps_b_grid_interval"].shape == (2, 200) and np.all(np.isfinite(out["auc_interval"]))


def test_rejection_from_few_background_jets_is_a_lower_limit():
    from jetkd.evaluate import rejection_lower_limit

    # no background jet of 180 passes: 1/eps_B > 180 / 1.841 (1.841: the 84.13% CL Poisson upper limit on 0)
    assert rejection_lower_limit(0, 180) == pytest.approx(97.8, abs=0.05)
    assert rejection_lower_limit(5, 1000) < 1000 / 5 < rejection_lower_limit(500, 100_000) * 1.1
    sig = np.r_[np.full(2, 0.9), np.full(4, 0.5), np.full(4, 0.1)]  # the hand-computed ROC above: 1 and 3 of
    bkg = np.r_[np.full(4, 0.5), np.full(6, 0.1)]                       # 10 background jets pass at 0.3 and 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnreliableMetricWarning)
        few = binary_metrics(*labelled(sig, bkg))
        many = binary_metrics(*labelled(sig.repeat(10), bkg.repeat(10)))  # 10 and 30 pass
    assert few["rej_30_lower_bound"] and few["rej_50_lower_bound"]
    assert few["rej_30"] == pytest.approx(10.0) and few["rej_30_limit"] == pytest.approx(rejection_lower_limit(1, 10))
    assert few["rej_30_limit"] < few["rej_30"]
    assert not many["rej_30_lower_bound"] and not many["rej_50_lower_bound"]


# ----------------------------------------------------------------------------- non-finite scores


class Diverged(nn.Module):
    """A diverged model: NaN logits for every jet (``all``) or for every third jet."""

    def __init__(self, every=3):
        super().__init__()
        self.every = every
        self.w = nn.Parameter(torch.tensor(1.0))

    def forward(self, p4, mask):
        s = self.w * (jet_mass(p4, mask).float() - 40.0)
        s = torch.where(torch.arange(len(s)) % self.every == 0, torch.full_like(s, float("nan")), s)
        return torch.stack([-s, s], -1)


def test_binary_metrics_report_non_finite_scores_instead_of_raising():
    from jetkd.evaluate import NonFiniteScoreWarning

    scores, labels = gaussian_scores(500)
    scores[3] = np.nan
    scores[7, 1] = np.inf
    with pytest.warns(NonFiniteScoreWarning, match="2 of 500 jets have non-finite scores"):
        m = binary_metrics(scores, labels, n_bootstrap=20)
    assert m["n_nonfinite"] == 2
    assert all(math.isnan(m[k]) for k in ("accuracy", "auc", "rej_30", "rej_50", "eps_b_30"))
    assert all(math.isnan(v) for v in m["auc_interval"] + m["rej_30_interval"])
    assert not m["rej_30_lower_bound"]
    with pytest.warns(NonFiniteScoreWarning):
        assert binary_metrics(np.full((10, 2), np.nan), labels[:10])["n_nonfinite"] == 10
    from jetkd.evaluate import roc_grid

    assert roc_grid(scores, labels) == {"eps_s": [], "eps_b": []}
    clean = binary_metrics(*gaussian_scores(500, separation=1.0))
    assert clean["n_nonfinite"] == 0 and not math.isnan(clean["auc"])


def test_validation_metrics_never_raise_and_match_sklearn():
    from sklearn.metrics import roc_auc_score

    from jetkd.evaluate.metrics import validation_metrics

    scores, labels = gaussian_scores(2000)
    v = validation_metrics(scores, labels)
    assert set(v) == {"val_loss", "val_acc", "val_auc", "val_nonfinite"} and v["val_nonfinite"] == 0
    assert v["val_auc"] == pytest.approx(roc_auc_score(labels, scores[:, 1]), abs=1e-12)
    assert v["val_loss"] == pytest.approx(-np.mean(np.log(scores[np.arange(2000), labels])))
    assert v["val_acc"] == pytest.approx(np.mean(scores.argmax(1) == labels))
    scores[5, 0] = np.nan
    scores[6] = np.inf
    bad = validation_metrics(scores, labels)
    assert bad["val_nonfinite"] == 2 and all(math.isnan(bad[k]) for k in ("val_loss", "val_acc", "val_auc"))
    one_class = validation_metrics(scores[labels == 1][:50][np.isfinite(scores[labels == 1][:50]).all(1)],
                                   np.ones(50, int)[: np.isfinite(scores[labels == 1][:50]).all(1).sum()])
    assert math.isnan(one_class["val_auc"]) and not math.isnan(one_class["val_loss"])
    empty = validation_metrics(np.zeros((0, 2)), np.zeros(0, int))
    assert math.isnan(empty["val_loss"]) and empty["val_nonfinite"] == 0


def test_evaluate_and_report_a_diverged_model(tmp_path):
    batches = split(toy_jets(60, seed=4), 20)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnreliableMetricWarning)
        entry = evaluate_model(Diverged(), batches, betas=[0.0, 0.5], name="diverged", n_bootstrap=20)
        good = evaluate_model(MassTagger(), batches, betas=[0.0, 0.5], name="good", n_bootstrap=20)
    assert entry["metrics"]["n_nonfinite"] == 21 and math.isnan(entry["metrics"]["auc"])  # 7 per batch of 20
    assert entry["roc"]["eps_s"] == [] and math.isnan(entry["invariance_score"])
    assert any("non-finite" in w for w in entry["warnings"])
    write_report(tmp_path, {"diverged": entry, "good": good})
    md = (tmp_path / "report.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| diverged"))
    assert row.startswith("| diverged ‡ |") and "| – | – |" in row
    assert "‡ Non-finite (NaN or inf) scores" in md and "diverged: 21 of 60 jets" in md
    doc = json.loads((tmp_path / "report.json").read_text())
    assert doc["models"]["diverged"]["metrics"]["n_nonfinite"] == 21 and doc["models"]["diverged"]["metrics"]["auc"] is None


def test_evaluate_model_intervals_band_and_quiet_progress(capsys, monkeypatch):
    import io
    import sys

    batches = split(toy_jets(300, seed=3), 100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnreliableMetricWarning)
        entry = evaluate_model(PerConstituent(), batches, betas=[0.0, 0.5], n_bootstrap=50, progress=True)
    m, roc = entry["metrics"], entry["roc"]
    assert m["n_bootstrap"] == 50 and m["accuracy_interval"][0] <= m["accuracy"] <= m["accuracy_interval"][1]
    assert len(roc["eps_b_low"]) == len(roc["eps_b_high"]) == len(roc["eps_s"]) == 200
    low, mid, high = (np.asarray(roc[k]) for k in ("eps_b_low", "eps_b", "eps_b_high"))
    assert np.all(low <= high) and np.mean((low <= mid) & (mid <= high)) > 0.9
    assert capsys.readouterr().err == ""  # not a terminal: no progress bar

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnreliableMetricWarning)
        evaluate_model(PerConstituent(), batches, betas=[0.0, 0.5], n_bootstrap=0, name="deepset", progress=True)
    assert "deepset: boost scan" in terminal.getvalue()


def test_boost_along_each_jets_own_axis():
    """axis="jet": every jet boosted along its own momentum: its direction is kept, each jet moves by beta along
    a different axis, and the report and plots say so."""
    from jetkd.evaluate.boost_scan import jet_axes

    jets = toy_jets(20)
    model = Recorder()
    boost_scan(model, split(jets, 10), betas=[0.0, 0.6], axis="jet")
    seen = torch.cat([p for p, *_ in model.seen[2:]]).double()
    before, after = jet_axes(jets.p4.double())[:, 0], jet_axes(seen)[:, 0]
    torch.testing.assert_close(after / after.norm(dim=-1, keepdim=True), before / before.norm(dim=-1, keepdim=True))
    expected = torch.stack([lorentz.boost(jets.p4[i].double(), 0.6, before[i]) for i in range(20)]).float()
    np.testing.assert_allclose(seen.float().numpy(), expected.numpy(), rtol=1e-5, atol=1e-4)
    assert torch.all(seen[~jets.mask] == 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnreliableMetricWarning)
        entry = evaluate_model(MassTagger(), split(toy_jets(100, seed=4), 50), betas=[0.0, 0.5], axis="jet", name="m")
    assert entry["boost_axis"] == "jet" and entry["invariance_score"] == pytest.approx(1.0)  # mass is invariant


def test_cli_evaluate_axis_is_a_three_vector_or_jet(tmp_path, capsys):
    from jetkd.cli import main

    for bad in ("0,0,0", "1,0", "x,y,z"):
        assert main(["evaluate", "run", "--data", "t.h5", "--out", str(tmp_path), "--axis", bad]) == 2
        assert "expected a non-zero 3-vector axis x,y,z (or 'jet')" in capsys.readouterr().err
