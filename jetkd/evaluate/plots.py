"""Evaluation plots: ROC (1/eps_B vs eps_S), accuracy vs boost beta, and signal/background score histograms.

Each ``plot_*`` function takes the ``results`` mapping of :mod:`jetkd.evaluate.report` (model name -> entry), a
PNG path and the report's ``data`` section (:func:`jetkd.evaluate.runs.describe_data`); the matching ``*_figure``
function returns the :class:`~matplotlib.figure.Figure` itself (what the tests inspect).

Conventions of the field: mplhep's experiment-neutral ROOT style (no CMS/ATLAS branding; the top-left tag says
"Simulation"), the data named on the figure (generator, sqrt(s), jet selection from the data's provenance, else the
file name), class names from the data, uncertainty bands on every curve (the ROC's bootstrap band, binomial errors
on accuracies and histogram fractions), and legends outside the axes so they never cover a curve.

Figures are built on matplotlib's object API with the Agg canvas (no pyplot state, no display, fine in a headless
job); the style is applied with ``matplotlib.rc_context``, which changes the process-wide rcParams while a figure
is built, so build figures from one thread at a time.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Mapping
from pathlib import Path

import matplotlib
import mplhep
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from jetkd.evaluate.metrics import SIGNAL_EFFICIENCIES, finite_rows, signal_scores
from jetkd.evaluate.runs import class_pair, data_lines

DPI = 100
STYLE = mplhep.style.ROOT  # experiment-neutral
EXPERIMENT_TAG = "Simulation"
RANDOM_GID = "random"


@contextlib.contextmanager
def style():
    """mplhep's ROOT style (experiment-neutral) for the figures built inside."""
    with matplotlib.rc_context(STYLE):
        yield


def _figure(width: float, height: float, **subplots) -> tuple[Figure, object]:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(**subplots)


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with style():
        fig.savefig(path, dpi=DPI, format="png")
    return path


def _fmt(x: float, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _wrap(line: str, width: int = 36) -> list[str]:
    """``line`` broken at its ", " separators into lines of about ``width`` characters (mathtext never split)."""
    out: list[str] = []
    for item in line.split(", "):
        if out and len(re.sub(r"\$|\\mathrm|[{}_\\]", "", out[-1] + item)) + 2 <= width:
            out[-1] += ", " + item
        else:
            out.append(item)
    return out


def _data_lines(data: Mapping | None) -> list[str]:
    source = (data or {}).get("source")
    return data_lines((data or {}).get("provenance"), tex=True, fallback=Path(str(source)).name if source else None)


def _label(ax, data: Mapping | None) -> list[str]:
    """The experiment-neutral tag ("Simulation") top left and the generator with sqrt(s) top right of ``ax``
    (mplhep.label.exp_label); returns the remaining description (jet selection), wrapped, for the legend title."""
    lines = _data_lines(data)
    mplhep.label.exp_label(exp="", llabel=EXPERIMENT_TAG, rlabel=lines[0], ax=ax, fontsize=18)
    return [part for line in lines[1:] for part in _wrap(line)]


def _classes(data: Mapping | None) -> tuple[str, str]:
    data = data or {}
    return class_pair(data.get("class_names"), data.get("signal_class", 1))


def _legend_outside(ax, title_lines: list[str], **kwargs):
    """Legend to the right of the axes (constrained layout makes room): it cannot cover a curve."""
    return ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=16,
                     title="\n".join(title_lines) or None, title_fontsize=16, alignment="left", **kwargs)


def _nonfinite(entry: Mapping) -> int:
    return int(entry.get("metrics", {}).get("n_nonfinite") or 0)


# ----------------------------------------------------------------------------- ROC


def random_rejection(eps_s: np.ndarray) -> np.ndarray:
    """1/eps_B of a random tagger at signal efficiency eps_S: it keeps the same fraction of both classes,
    eps_B = eps_S, so the rejection is 1/eps_S (2 at eps_S = 0.5). eps_s (k,) in (0, 1]."""
    return 1.0 / np.asarray(eps_s, dtype=np.float64)


def _interval_text(metrics: Mapping, key: str, digits: int) -> str:
    interval = metrics.get(f"{key}_interval")
    if not interval or any(v is None or not math.isfinite(v) for v in interval):
        return ""
    return f" [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]"


def roc_figure(results: Mapping[str, dict], data: Mapping | None = None) -> Figure:
    """Background rejection 1/eps_B (log scale) vs signal efficiency eps_S, one curve per model from its
    ``"roc"`` grid with the bootstrap band (``eps_b_low``/``eps_b_high``, central 68%) shaded; the random tagger
    1/eps_S dashed; the working points eps_S = 0.3 and 0.5 dotted. Models with non-finite scores are listed in the
    legend, not drawn."""
    signal, background = _classes(data)
    with style():
        fig, ax = _figure(14, 9)
        top = 10.0
        for k, (name, entry) in enumerate(results.items()):
            color = f"C{k % 10}"
            curve = entry.get("roc") or {}
            eps_s, eps_b = np.asarray(curve.get("eps_s", []), float), np.asarray(curve.get("eps_b", []), float)
            metrics = entry.get("metrics", {})
            keep = eps_b > 0  # 1/eps_B is infinite where no background passes
            if not keep.any():
                why = "non-finite scores" if _nonfinite(entry) else "no ROC"
                ax.plot([], [], " ", label=f"{name}: {why}, not drawn")
                continue
            auc = metrics.get("auc", math.nan)
            label = f"{name} (AUC = {_fmt(auc, 4)}{_interval_text(metrics, 'auc', 4)})"
            ax.plot(eps_s[keep], 1.0 / eps_b[keep], color=color, linewidth=2, label=label, gid=f"roc:{name}")
            top = max(top, float(np.max(1.0 / eps_b[keep])))
            if "eps_b_low" in curve:
                lo, hi = np.asarray(curve["eps_b_low"], float), np.asarray(curve["eps_b_high"], float)
                with np.errstate(divide="ignore", invalid="ignore"):
                    upper, lower = 1.0 / lo, 1.0 / hi
                ok = np.isfinite(upper) & np.isfinite(lower)
                if ok.any():
                    ax.fill_between(eps_s, lower, upper, where=ok, color=color, alpha=0.25, linewidth=0,
                                    gid=f"band:{name}")
        grid = np.linspace(0.005, 1.0, 200)
        ax.plot(grid, random_rejection(grid), color="0.4", linestyle="--", linewidth=1.5,
                label=r"random ($1/\varepsilon_S$)", gid=RANDOM_GID)
        for eff in SIGNAL_EFFICIENCIES:
            ax.axvline(eff, color="0.6", linestyle=":", linewidth=1.5, gid=f"working_point:{eff:g}")
        ax.set_yscale("log")
        ax.set_xlim(0, 1)
        ax.set_ylim(1, top * 3)
        ax.set_xlabel(rf"Signal efficiency $\varepsilon_S$ ({signal})")
        ax.set_ylabel(rf"Background rejection $1/\varepsilon_B$ ({background})")
        ax.grid(True, which="major")
        rest = _label(ax, data)
        _legend_outside(ax, rest + ["band: 68% bootstrap interval"])
    return fig


def plot_roc(results: Mapping[str, dict], path: str | Path, *, data: Mapping | None = None) -> Path:
    """:func:`roc_figure` written as a PNG to ``path``."""
    return _save(roc_figure(results, data), path)


# ----------------------------------------------------------------------------- boost scan


def _axis_label(axis) -> str:
    if isinstance(axis, str):
        return "the jet axis"
    axis = [float(a) for a in (axis or (1, 0, 0))]
    for i, name in enumerate("xyz"):
        if axis[i] > 0 and all(axis[j] == 0 for j in range(3) if j != i):
            return rf"$\hat{{{name}}}$"
    return "(" + ", ".join(f"{a:g}" for a in axis) + ")"


def boost_scan_figure(results: Mapping[str, dict], data: Mapping | None = None) -> Figure:
    """Accuracy vs boost speed beta, one line per model (legend: invariance score), each with its binomial
    uncertainty band sqrt(acc (1 - acc) / n_jets)."""
    with style():
        fig, ax = _figure(14, 9)
        axis = None
        for k, (name, entry) in enumerate(results.items()):
            scan = entry.get("boost_scan") or []
            if not scan:
                continue
            color = f"C{k % 10}"
            axis = entry.get("boost_axis", axis)
            betas = np.array([p["beta"] for p in scan], float)
            accs = np.array([np.nan if p["accuracy"] is None else p["accuracy"] for p in scan], float)
            n = np.array([max(p.get("n_jets", 0), 1) for p in scan], float)
            err = np.sqrt(accs * (1 - accs) / n)
            label = f"{name} (I = {_fmt(entry.get('invariance_score', math.nan))})"
            if _nonfinite(entry):
                label += ", non-finite scores"
            ax.plot(betas, accs, marker="o", markersize=5, color=color, label=label, gid=f"scan:{name}")
            ax.fill_between(betas, accs - err, accs + err, color=color, alpha=0.25, linewidth=0, gid=f"band:{name}")
        ax.axhline(0.5, color="0.4", linestyle="--", linewidth=1.5, label="chance (balanced classes)")
        ax.set_xlim(0, 1)
        ax.set_xlabel(rf"Boost $\beta = v/c$ of the constituents along {_axis_label(axis)}")
        ax.set_ylabel("Accuracy")
        ax.grid(True)
        rest = _label(ax, data)
        _legend_outside(ax, rest + ["band: binomial 68% interval"])
    return fig


def plot_boost_scan(results: Mapping[str, dict], path: str | Path, *, data: Mapping | None = None) -> Path:
    """:func:`boost_scan_figure` written as a PNG to ``path``."""
    return _save(boost_scan_figure(results, data), path)


def rejection_scan_figure(results: Mapping[str, dict], data: Mapping | None = None, eps_s: float = 0.3) -> Figure:
    """Background rejection 1/eps_B at signal efficiency ``eps_s`` vs boost speed beta, one line per model (log
    scale). Where fewer than 10 background jets pass, the point is the 84% CL lower limit, drawn as an open
    upward triangle; where none passes and no limit is known, no point."""
    key = f"rej_{round(eps_s * 100)}"
    with style():
        fig, ax = _figure(14, 9)
        axis = None
        for k, (name, entry) in enumerate(results.items()):
            scan = entry.get("boost_scan") or []
            if not scan or _nonfinite(entry):
                continue
            color = f"C{k % 10}"
            axis = entry.get("boost_axis", axis)
            betas = np.array([p["beta"] for p in scan], float)
            limit = np.array([bool(p.get(f"{key}_lower_bound")) for p in scan])
            rej = np.array([np.nan if (p.get(f"{key}_limit") if lim else p.get(key)) is None
                            else (p[f"{key}_limit"] if lim else p[key]) for p, lim in zip(scan, limit)], float)
            ax.plot(betas, rej, color=color, label=name, gid=f"rejection:{name}")
            ax.plot(betas[~limit], rej[~limit], "o", markersize=5, color=color)
            if limit.any():
                ax.plot(betas[limit], rej[limit], "^", markersize=7, markerfacecolor="none", color=color,
                        gid=f"limit:{name}")
        ax.set_yscale("log")
        ax.set_xlim(0, 1)
        ax.set_xlabel(rf"Boost $\beta = v/c$ of the constituents along {_axis_label(axis)}")
        ax.set_ylabel(rf"Background rejection $1/\varepsilon_B$ at $\varepsilon_S = {eps_s:g}$")
        ax.grid(True, which="both", alpha=0.5)
        rest = _label(ax, data)
        _legend_outside(ax, rest + ["open triangles: 84% CL lower limits (< 10 background jets pass)"])
    return fig


def plot_rejection_scan(results: Mapping[str, dict], path: str | Path, *, data: Mapping | None = None,
                        eps_s: float = 0.3) -> Path:
    """:func:`rejection_scan_figure` written as a PNG to ``path``."""
    return _save(rejection_scan_figure(results, data, eps_s), path)


# ----------------------------------------------------------------------------- score histograms


def _fractions(values: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fraction of ``values`` (n,) per bin of ``edges`` (b + 1,) and its Poisson error sqrt(count) / n."""
    counts, _ = np.histogram(values, bins=edges)
    n = max(len(values), 1)
    return counts / n, np.sqrt(counts) / n


def score_histogram_figure(results: Mapping[str, dict], data: Mapping | None = None, *, bins: int = 40) -> Figure:
    """One panel per model: normalised histograms (with Poisson errors) of the signal score for signal and
    background jets (from the in-memory ``"_scores"`` / ``"_labels"``; a panel says so when they are missing,
    and counts the jets with non-finite scores it leaves out); one legend for all panels above them."""
    signal, background = _classes(data)
    signal_class = (data or {}).get("signal_class", 1)
    names = list(results)
    n_cols = min(3, max(1, len(names)))
    n_rows = max(1, math.ceil(len(names) / n_cols))
    edges = np.linspace(0.0, 1.0, bins + 1)
    with style():
        fig, axes = _figure(8.0 * n_cols, 6.5 * n_rows + 1.5, nrows=n_rows, ncols=n_cols, squeeze=False)
        handles = {}
        for k, ax in enumerate(axes.flat):
            if k >= len(names):
                ax.set_visible(False)
                continue
            entry = results[names[k]]
            ax.set_title(names[k], fontsize=18)
            ax.set_xlabel(rf"Signal score $p$({signal})", fontsize=18)
            ax.set_ylabel("Fraction of jets / bin", fontsize=18)
            scores, labels = entry.get("_scores"), entry.get("_labels")
            if scores is None or labels is None or len(labels) == 0:
                ax.text(0.5, 0.5, "scores not available", ha="center", va="center", transform=ax.transAxes)
                continue
            finite = finite_rows(scores)
            s, labels = signal_scores(scores, signal_class)[finite], np.asarray(labels)[finite]
            if not finite.all():
                ax.text(0.5, 0.5, f"{(~finite).sum():,} jets with\nnon-finite scores\nleft out", ha="center",
                        va="center", transform=ax.transAxes, color="C3", fontsize=16)
            classes = ((True, f"{signal} (signal)", "C2"), (False, f"{background} (background)", "C0"))
            for is_sig, name, color in classes:
                sel = s[(labels == signal_class) == is_sig]
                if len(sel):
                    frac, err = _fractions(sel, edges)
                    art = mplhep.histplot(frac, edges, yerr=err, histtype="step", linewidth=2, color=color,
                                          label=name, ax=ax)
                    handles.setdefault(name, art[0].stairs)
            ax.set_yscale("log")
            ax.set_xlim(0, 1)
        fig.suptitle(f"{EXPERIMENT_TAG}: " + ", ".join(_data_lines(data)), fontsize=18, style="italic")
        if handles:
            fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=len(handles),
                       fontsize=18)
    return fig


def plot_score_histograms(results: Mapping[str, dict], path: str | Path, *, bins: int = 40,
                          data: Mapping | None = None) -> Path:
    """:func:`score_histogram_figure` written as a PNG to ``path``."""
    return _save(score_histogram_figure(results, data, bins=bins), path)
