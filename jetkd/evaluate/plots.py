"""Evaluation plots: ROC (1/eps_B vs eps_S), accuracy vs boost beta, and signal/background score histograms.

Each function takes the ``results`` mapping of :mod:`jetkd.evaluate.report` (model name -> entry) and a PNG path.
Figures are built on matplotlib's object API with the Agg canvas: no pyplot state, no display, safe to call
from any thread or a headless job.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from jetkd.evaluate.metrics import SIGNAL_EFFICIENCIES, signal_scores

DPI = 150
SIGNAL_LABEL = "top (signal)"
BACKGROUND_LABEL = "QCD (background)"


def _figure(width: float = 6.0, height: float = 4.5, **subplots) -> tuple[Figure, object]:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(**subplots)


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    return path


def _fmt(x: float, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def plot_roc(results: Mapping[str, dict], path: str | Path) -> Path:
    """Background rejection 1/eps_B (log scale) vs signal efficiency eps_S, one curve per model, from each
    entry's ``"roc"`` grid; the working points eps_S = 0.3 and 0.5 are marked."""
    fig, ax = _figure()
    for name, entry in results.items():
        curve = entry.get("roc") or {}
        eps_s, eps_b = np.asarray(curve.get("eps_s", []), float), np.asarray(curve.get("eps_b", []), float)
        keep = eps_b > 0  # 1/eps_B is infinite where no background passes
        if keep.any():
            auc = entry.get("metrics", {}).get("auc", math.nan)
            ax.plot(eps_s[keep], 1.0 / eps_b[keep], label=f"{name} (AUC = {_fmt(auc, 4)})")
    for eff in SIGNAL_EFFICIENCIES:
        ax.axvline(eff, color="0.6", linestyle=":", linewidth=1)
    ax.plot([0.005, 1], [1 / 0.005, 1], color="0.6", linestyle="--", linewidth=1, label="random")
    ax.set_yscale("log")
    ax.set_xlim(0, 1)
    ax.set_xlabel(r"Signal efficiency $\varepsilon_S$")
    ax.set_ylabel(r"Background rejection $1/\varepsilon_B$")
    ax.set_title("ROC")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path)


def _axis_label(axis) -> str:
    axis = [float(a) for a in (axis or (1, 0, 0))]
    for i, name in enumerate("xyz"):
        if axis[i] > 0 and all(axis[j] == 0 for j in range(3) if j != i):
            return rf"$\hat{{{name}}}$"
    return "(" + ", ".join(f"{a:g}" for a in axis) + ")"


def plot_boost_scan(results: Mapping[str, dict], path: str | Path) -> Path:
    """Accuracy vs boost speed beta, one line per model (legend: invariance score)."""
    fig, ax = _figure()
    axis = None
    for name, entry in results.items():
        scan = entry.get("boost_scan") or []
        if not scan:
            continue
        axis = entry.get("boost_axis", axis)
        betas = [p["beta"] for p in scan]
        accs = [p["accuracy"] for p in scan]
        label = f"{name} (I = {_fmt(entry.get('invariance_score', math.nan))})"
        ax.plot(betas, accs, marker="o", markersize=3, label=label)
    ax.axhline(0.5, color="0.6", linestyle="--", linewidth=1, label="chance")
    ax.set_xlim(0, 1)
    ax.set_xlabel(rf"Boost $\beta = v/c$ of the constituents along {_axis_label(axis)}")
    ax.set_ylabel("Accuracy")
    ax.set_title("Robustness to Lorentz boosts")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path)


def plot_score_histograms(results: Mapping[str, dict], path: str | Path, *, bins: int = 40) -> Path:
    """One panel per model: normalised histograms of the signal score for signal and background jets
    (from the in-memory ``"_scores"`` / ``"_labels"``; a panel says so when they are missing)."""
    names = list(results)
    n_cols = min(3, max(1, len(names)))
    n_rows = max(1, math.ceil(len(names) / n_cols))
    fig, axes = _figure(4.0 * n_cols, 3.2 * n_rows, nrows=n_rows, ncols=n_cols, squeeze=False)
    edges = np.linspace(0.0, 1.0, bins + 1)
    for k, ax in enumerate(axes.flat):
        if k >= len(names):
            ax.set_visible(False)
            continue
        entry = results[names[k]]
        ax.set_title(names[k])
        ax.set_xlabel(r"Signal score $p(\mathrm{top})$")
        ax.set_ylabel("Fraction of jets / bin")
        scores, labels = entry.get("_scores"), entry.get("_labels")
        if scores is None or labels is None or len(labels) == 0:
            ax.text(0.5, 0.5, "scores not available", ha="center", va="center", transform=ax.transAxes)
            continue
        s, labels = signal_scores(scores), np.asarray(labels)
        for is_sig, label, color in ((True, SIGNAL_LABEL, "C3"), (False, BACKGROUND_LABEL, "C0")):
            sel = s[(labels == 1) == is_sig]
            if len(sel):
                ax.hist(sel, bins=edges, weights=np.full(len(sel), 1.0 / len(sel)), histtype="step",
                        linewidth=1.5, color=color, label=f"{label}, {len(sel):,} jets")
        ax.set_yscale("log")
        ax.set_xlim(0, 1)
        ax.legend(fontsize="x-small")
    return _save(fig, path)
