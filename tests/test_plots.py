"""The plots follow the field's conventions; checked on the figure objects and the arrays they draw, not pixels."""

import warnings

import numpy as np
import pytest
from matplotlib.collections import PolyCollection
from matplotlib.text import Text
from test_evaluate import Diverged, MassOverPtTagger, MassTagger, split, toy_jets
from test_report import GENERATOR

from jetkd.evaluate import (
    UnreliableMetricWarning,
    boost_scan_figure,
    describe_data,
    evaluate_model,
    rejection_scan_figure,
    roc_figure,
    score_histogram_figure,
)
from jetkd.evaluate.plots import RANDOM_GID, random_rejection

DATA = describe_data({"inputs": [{"file": "/x/jets.root", "format": "root", "jets": 300, "generator": GENERATOR}]},
                     ["QCD", "Tbqq"], source="/x/cache/test.h5")


@pytest.fixture(scope="module")
def results():
    batches = split(toy_jets(300, seed=3), 100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnreliableMetricWarning)
        return {name: evaluate_model(model, batches, betas=[0.0, 0.5, 0.9], name=name, n_bootstrap=50, flops_jets=4)
                for name, model in (("seedA/mlp", MassOverPtTagger()), ("seedB/mlp", MassTagger()),
                                    ("diverged", Diverged()))}


def texts(fig):
    return [t.get_text() for t in fig.findobj(Text) if t.get_text()]


def drawn(fig):
    fig.canvas.draw()
    return fig.canvas.get_renderer()


def test_random_classifier_is_one_over_eps_s(results):
    ax = roc_figure(results, DATA).axes[0]
    [line] = [line for line in ax.get_lines() if line.get_gid() == RANDOM_GID]
    x, y = line.get_data()
    assert np.interp(0.5, x, y) == pytest.approx(2.0) and np.interp(0.25, x, y) == pytest.approx(4.0)
    np.testing.assert_allclose(y, 1 / x)
    assert ax.get_yscale() == "log"
    assert random_rejection(0.5) == 2.0


def test_roc_curves_carry_bootstrap_bands(results):
    ax = roc_figure(results, DATA).axes[0]
    bands = {c.get_gid(): c for c in ax.collections if isinstance(c, PolyCollection)}
    assert set(bands) == {"band:seedA/mlp", "band:seedB/mlp"}  # the diverged model has no curve
    curve = results["seedA/mlp"]["roc"]
    i = next(i for i, low in enumerate(curve["eps_b_low"]) if low > 0)  # a point with background jets passing
    lo, mid, hi = (1 / curve[k][i] for k in ("eps_b_high", "eps_b", "eps_b_low"))
    assert lo <= mid <= hi and lo < hi
    ys = bands["band:seedA/mlp"].get_paths()[0].vertices[:, 1]
    assert ys.min() <= lo and ys.max() >= hi


def test_legends_sit_outside_the_axes(results):
    for fig in (roc_figure(results, DATA), boost_scan_figure(results, DATA)):
        renderer = drawn(fig)
        ax = fig.axes[0]
        legend = ax.get_legend().get_window_extent(renderer)
        frame = ax.get_window_extent(renderer)
        assert legend.x0 >= frame.x1, "legend overlaps the data area"
        assert legend.x1 <= fig.bbox.x1 + 1  # and stays on the canvas
    fig = score_histogram_figure(results, DATA)
    renderer = drawn(fig)
    legend = fig.legends[0].get_window_extent(renderer)
    assert not any(legend.overlaps(ax.get_window_extent(renderer)) for ax in fig.axes if ax.get_visible())


def test_figures_name_the_data_and_its_classes(results):
    roc, scan, hist = roc_figure(results, DATA), boost_scan_figure(results, DATA), score_histogram_figure(results, DATA)
    for fig in (roc, scan, hist):
        words = " ".join(texts(fig))
        assert "Pythia 8.317" in words and "√s = 14 TeV" in words and "550 <" in words and "Simulation" in words
        assert "CMS" not in words and "ATLAS" not in words  # experiment-neutral
        assert "top" not in words.lower().split()  # class names from the data, not hard-coded
    ax = roc.axes[0]
    assert "Tbqq" in ax.get_xlabel() and "QCD" in ax.get_ylabel()
    hist_words = texts(hist)
    assert "Tbqq (signal)" in hist_words and "QCD (background)" in hist_words
    other = describe_data(None, ["gluon", "quark"], source="/c/test.h5")
    fig = score_histogram_figure(results, other)
    assert {"quark (signal)", "gluon (background)"} <= set(texts(fig)) and any("test.h5" in t for t in texts(fig))


def test_diverged_models_are_listed_not_drawn(results):
    fig = roc_figure(results)  # no data: generic labels, no crash
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "diverged: non-finite scores, not drawn" in labels
    assert any("scores" in t and "non-finite" in t for t in texts(score_histogram_figure(results)))
    assert "Signal efficiency" in fig.axes[0].get_xlabel() and "(signal)" in fig.axes[0].get_xlabel()


def test_boost_scan_bands_are_binomial(results):
    ax = boost_scan_figure(results, DATA).axes[0]
    band = next(c for c in ax.collections if c.get_gid() == "band:seedB/mlp")
    point = results["seedB/mlp"]["boost_scan"][0]
    sigma = np.sqrt(point["accuracy"] * (1 - point["accuracy"]) / point["n_jets"])
    ys = band.get_paths()[0].vertices
    at0 = ys[np.isclose(ys[:, 0], 0.0), 1]
    assert at0.min() == pytest.approx(point["accuracy"] - sigma)
    assert at0.max() == pytest.approx(point["accuracy"] + sigma)


def test_rejection_scan_draws_one_over_eps_b_and_lower_limits(results):
    """1/eps_B at eps_S = 0.3 against beta, log scale; a point resting on < 10 background jets is its lower limit,
    drawn apart (open triangle); a model with non-finite scores is not drawn."""
    scan = [dict(p) for p in results["seedB/mlp"]["boost_scan"]]
    scan[1].update(rej_30_lower_bound=True, rej_30_limit=123.0)
    entries = {**results, "seedB/mlp": {**results["seedB/mlp"], "boost_scan": scan}}
    fig = rejection_scan_figure(entries, DATA)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log" and "varepsilon_B" in ax.get_ylabel() and "0.3" in ax.get_ylabel()
    lines = {line.get_gid(): line for line in ax.get_lines() if line.get_gid()}
    assert {"rejection:seedA/mlp", "rejection:seedB/mlp", "limit:seedB/mlp"} <= set(lines)
    assert not any("diverged" in gid for gid in lines)
    x, y = lines["rejection:seedB/mlp"].get_data()
    np.testing.assert_allclose(x, [p["beta"] for p in scan])
    want = [p["rej_30_limit"] if p.get("rej_30_lower_bound") else p["rej_30"] for p in scan]
    np.testing.assert_allclose(y, np.array([np.nan if v is None else v for v in want], float))
    assert 123.0 in lines["limit:seedB/mlp"].get_data()[1]
    assert "Pythia 8.317" in " ".join(texts(fig))
