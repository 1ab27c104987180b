"""Binary tagging metrics from class scores: accuracy, ROC AUC and background rejection at fixed signal efficiency.

Conventions
    scores: (n_jets, n_class) probabilities (or any monotone score), class ``signal_class`` (default 1, top)
            is the signal; a 1-D ``(n_jets,)`` array is taken as the signal score itself (accuracy then cuts at 0.5).
    labels: (n_jets,) integer class indices; every class other than ``signal_class`` counts as background.
    eps_S (signal efficiency) is the ROC true-positive rate, eps_B (background efficiency) the false-positive
    rate; the background rejection is ``1 / eps_B``.

The ROC is sklearn's :func:`sklearn.metrics.roc_curve`; eps_B at a requested eps_S is read off it by linear
interpolation between the two ROC points that bracket eps_S (at a point exactly on the curve, the lowest eps_B
with that eps_S). Between two ROC points the interpolation is what tagging the jets tied at the threshold at
random would give.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import auc, roc_curve

#: signal efficiencies at which the background rejection is reported, as in the paper (1/eps_B @ eps_S = 30%, 50%)
SIGNAL_EFFICIENCIES = (0.3, 0.5)
#: fewer background jets than this passing the cut make 1/eps_B unreliable (a warning is raised)
MIN_BACKGROUND_PASS = 10


class UnreliableMetricWarning(UserWarning):
    """A metric was computed from too few jets (or from one class only) to be trusted."""


def efficiency_tag(eps_s: float) -> str:
    """The key suffix for a signal efficiency: ``0.3 -> "30"`` (``rej_30``, ``eps_b_30``), ``0.355 -> "35p5"``."""
    pct = 100.0 * eps_s
    return f"{pct:.0f}" if abs(pct - round(pct)) < 1e-9 else f"{pct:g}".replace(".", "p")


def signal_scores(scores: np.ndarray, signal_class: int = 1) -> np.ndarray:
    """(n_jets,) the signal score: column ``signal_class`` of 2-D scores, or 1-D scores unchanged."""
    scores = np.asarray(scores)
    return scores[:, signal_class] if scores.ndim == 2 else scores


def predicted_classes(scores: np.ndarray, signal_class: int = 1) -> np.ndarray:
    """(n_jets,) argmax class of 2-D scores; for 1-D signal scores ``signal_class`` where score >= 0.5, else 0."""
    scores = np.asarray(scores)
    if scores.ndim == 2:
        return scores.argmax(axis=1)
    return np.where(scores >= 0.5, signal_class, 0 if signal_class != 0 else 1)


def roc(scores: np.ndarray, labels: np.ndarray, signal_class: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The ROC curve ``(eps_s, eps_b)``, each (n_points,) non-decreasing from (0, 0) to (1, 1).

    Needs at least one signal and one background jet.
    """
    is_signal = np.asarray(labels) == signal_class
    eps_b, eps_s, _ = roc_curve(is_signal, signal_scores(scores, signal_class))
    return eps_s, eps_b


def background_efficiency(eps_s_target: float | np.ndarray, eps_s: np.ndarray, eps_b: np.ndarray) -> np.ndarray:
    """eps_B at the requested signal efficiencies, linearly interpolated on the ROC ``(eps_s, eps_b)``.

    eps_s_target: scalar or (k,) in [0, 1]. eps_s, eps_b: the ROC from :func:`roc` (non-decreasing).
    Returns an array shaped like ``eps_s_target``.
    """
    target = np.asarray(eps_s_target, dtype=np.float64)
    if np.any((target < 0) | (target > 1)):
        raise ValueError(f"signal efficiencies must lie in [0, 1], got {eps_s_target!r}")
    eps_s, eps_b = np.asarray(eps_s, np.float64), np.asarray(eps_b, np.float64)
    # first ROC point with eps_s >= target: on a plateau of equal eps_s that is the one with the lowest eps_b
    hi = np.clip(np.searchsorted(eps_s, target, side="left"), 0, len(eps_s) - 1)
    lo = np.maximum(hi - 1, 0)
    ds = eps_s[hi] - eps_s[lo]
    frac = np.divide(target - eps_s[lo], ds, out=np.ones_like(target), where=ds > 0)
    out = np.where(eps_s[hi] == target, eps_b[hi], eps_b[lo] + frac * (eps_b[hi] - eps_b[lo]))
    return out if out.ndim else out[()]


def roc_grid(scores: np.ndarray, labels: np.ndarray, n_points: int = 200, signal_class: int = 1) -> dict:
    """A compact ROC for plots and the JSON report: ``{"eps_s": [...], "eps_b": [...]}`` on an even eps_S grid
    of ``n_points`` in (0, 1]. Empty lists when the jets are all of one class."""
    is_signal = np.asarray(labels) == signal_class
    if is_signal.all() or not is_signal.any():
        return {"eps_s": [], "eps_b": []}
    grid = np.round(np.linspace(1.0 / n_points, 1.0, n_points), 9)
    eps_b = background_efficiency(grid, *roc(scores, labels, signal_class))
    return {"eps_s": grid.tolist(), "eps_b": eps_b.tolist()}


def _warn(messages: list[str], message: str, stacklevel: int) -> None:
    messages.append(message)
    warnings.warn(message, UnreliableMetricWarning, stacklevel=stacklevel + 1)


def binary_metrics(
    scores: np.ndarray,
    labels: np.ndarray,
    *,
    signal_efficiencies: Sequence[float] = SIGNAL_EFFICIENCIES,
    min_background: int = MIN_BACKGROUND_PASS,
    signal_class: int = 1,
) -> dict:
    """Accuracy, AUC and background rejections of one set of scores.

    scores: (n_jets, n_class) or (n_jets,) signal scores; labels: (n_jets,) class indices.
    Returns a flat dict (JSON-ready Python scalars)::

        n_jets, n_signal, n_background      int    test-set size
        accuracy                            float  fraction of jets whose argmax class is the label
        auc                                 float  ROC AUC of the signal score (nan with one class only)
        eps_b_30, rej_30, n_background_pass_30   eps_B at eps_S = 0.3, 1/eps_B (inf if eps_B = 0), and
                                            eps_B * n_background, the (interpolated) background jets passing
        ... the same for every entry of ``signal_efficiencies`` (suffix from :func:`efficiency_tag`)
        warnings                            list[str]  also raised as :class:`UnreliableMetricWarning`

    A warning is raised for each eps_S at which fewer than ``min_background`` background jets pass the cut,
    and when the jets are all signal or all background (AUC and rejections are then nan).
    """
    scores, labels = np.asarray(scores), np.asarray(labels)
    if len(scores) != len(labels):
        raise ValueError(f"scores ({len(scores)} jets) and labels ({len(labels)} jets) differ in length")
    is_signal = labels == signal_class
    n_jets, n_signal = len(labels), int(is_signal.sum())
    n_background = n_jets - n_signal
    out: dict = {
        "n_jets": n_jets,
        "n_signal": n_signal,
        "n_background": n_background,
        "accuracy": float(np.mean(predicted_classes(scores, signal_class) == labels)) if n_jets else math.nan,
    }
    messages: list[str] = []
    one_class = n_signal == 0 or n_background == 0
    if one_class:
        _warn(messages, f"{n_signal} signal and {n_background} background jets: AUC and 1/eps_B are undefined", 2)
        out["auc"] = math.nan
    else:
        eps_s, eps_b = roc(scores, labels, signal_class)
        out["auc"] = float(auc(eps_b, eps_s))  # trapezoids on the ROC: what roc_auc_score computes, ties included
    for target in signal_efficiencies:
        tag = efficiency_tag(target)
        if one_class:
            eb = math.nan
        else:
            eb = float(background_efficiency(target, eps_s, eps_b))
        n_pass = eb * n_background
        out[f"eps_b_{tag}"] = eb
        out[f"rej_{tag}"] = math.nan if one_class else (math.inf if eb == 0 else 1.0 / eb)
        out[f"n_background_pass_{tag}"] = n_pass
        if not one_class and n_pass < min_background:
            what = "no background jet passes" if eb == 0 else f"only {n_pass:.3g} background jets pass"
            _warn(
                messages,
                f"1/eps_B at eps_S = {target:g}: {what} the cut (of {n_background}; fewer than {min_background}"
                f" make the rejection unreliable" + (", reported as inf)" if eb == 0 else ")"),
                2,
            )
    out["warnings"] = messages
    return out
