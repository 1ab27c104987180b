"""Binary tagging metrics from class scores: accuracy, ROC AUC and background rejection at fixed signal efficiency,
with bootstrap intervals, lower limits where few background jets pass, and a guard against non-finite scores.

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

Uncertainties
    Intervals (``accuracy_interval``, ``auc_interval``, ``eps_b_30_interval``, ``rej_30_interval``, ...) are the
    central 68.27% (the 15.87% and 84.13% quantiles) of ``n_bootstrap`` bootstrap replicas of the test set: the
    jets resampled with replacement, with a fixed seed, every replica's metrics computed the same way as the
    nominal ones (:func:`bootstrap_intervals`, vectorised over replicas). ``rej_X_interval`` is
    ``[1 / eps_b_hi, 1 / eps_b_lo]`` of ``eps_b_X_interval`` (inf where eps_B = 0).
    Where fewer than ``MIN_BACKGROUND_PASS`` background jets pass the cut at eps_S = X, the bootstrap says
    little (a replica cannot resample jets that are not there); ``rej_X_lower_bound`` is then True and the
    rejection to quote is ``rej_X_limit``: the one-sided 84.13% CL lower limit ``n_background / mu_up``, with
    ``mu_up`` the Poisson upper limit on the number of passing background jets (1.84 when none passes).

Non-finite scores
    A diverged model (or one that cannot score some jets) gives NaN or inf scores. Metrics never raise on them:
    ``n_nonfinite`` counts the jets whose score row holds a NaN or inf, and when it is not zero, accuracy, AUC,
    eps_B and the rejections are NaN (not computed on the finite jets only: the jets a model fails on are not a
    random subset, so a figure over the others would be biased), and a :class:`NonFiniteScoreWarning` says so.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import auc, roc_curve

#: signal efficiencies at which the background rejection is reported, as in the paper (1/eps_B @ eps_S = 30%, 50%)
SIGNAL_EFFICIENCIES = (0.3, 0.5)
#: fewer background jets than this passing the cut make 1/eps_B unreliable (a warning; reported as a lower limit)
MIN_BACKGROUND_PASS = 10
#: bootstrap replicas of the test set behind the intervals of the report
N_BOOTSTRAP = 200
#: the quantiles bounding a central 68.27% interval (+-1 sigma of a Gaussian), and that one-sided confidence level
INTERVAL_QUANTILES = (0.15865525393145707, 0.8413447460685429)
LIMIT_CL = INTERVAL_QUANTILES[1]
#: points of the eps_S grid of the ROC kept for plots and the JSON report
ROC_POINTS = 200
#: bootstrap replicas x jets processed at once (peak memory about 50 bytes each: ~100 MB)
_BOOTSTRAP_BLOCK = 2_000_000


class UnreliableMetricWarning(UserWarning):
    """A metric was computed from too few jets (or from one class only) to be trusted."""


class NonFiniteScoreWarning(UnreliableMetricWarning):
    """Some scores are NaN or inf: the model diverged or cannot score those jets; its metrics are NaN."""


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


def finite_rows(scores: np.ndarray) -> np.ndarray:
    """(n_jets,) bool: the jets whose scores (a row of 2-D scores, or the 1-D score) are all finite."""
    scores = np.asarray(scores, dtype=np.float64)
    finite = np.isfinite(scores)
    return finite.all(axis=1) if scores.ndim == 2 else finite


def roc(scores: np.ndarray, labels: np.ndarray, signal_class: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The ROC curve ``(eps_s, eps_b)``, each (n_points,) non-decreasing from (0, 0) to (1, 1).

    Needs at least one signal and one background jet, and finite scores.
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
    out = _interpolate_rows(np.asarray(eps_s, np.float64)[None], np.asarray(eps_b, np.float64)[None],
                            target.reshape(-1))[0].reshape(target.shape)
    return out if out.ndim else out[()]


def _interpolate_rows(eps_s: np.ndarray, eps_b: np.ndarray, target: np.ndarray) -> np.ndarray:
    """eps_B at ``target`` (k,) on each of B ROC curves ``eps_s, eps_b`` (B, G), rows non-decreasing in [0, 1].

    Per row: the first point with eps_s >= target (on a plateau of equal eps_s the one with the lowest eps_b), and
    linear interpolation from the point before it. One ``searchsorted`` for all rows: row r is shifted by 2 r,
    which keeps the concatenated rows sorted. Returns (B, k).
    """
    n_rows, n_points = eps_s.shape
    shift = 2.0 * np.arange(n_rows)[:, None]
    hi = np.searchsorted((eps_s + shift).ravel(), (target[None, :] + shift).ravel(), side="left")
    hi = np.clip(hi.reshape(n_rows, -1) - n_points * np.arange(n_rows)[:, None], 0, n_points - 1)
    lo = np.maximum(hi - 1, 0)
    s_hi, s_lo = np.take_along_axis(eps_s, hi, 1), np.take_along_axis(eps_s, lo, 1)
    b_hi, b_lo = np.take_along_axis(eps_b, hi, 1), np.take_along_axis(eps_b, lo, 1)
    ds = s_hi - s_lo
    frac = np.divide(target - s_lo, ds, out=np.ones_like(s_hi), where=ds > 0)
    return np.where(s_hi == target, b_hi, b_lo + frac * (b_hi - b_lo))


def eps_s_grid(n_points: int = ROC_POINTS) -> np.ndarray:
    """(n_points,) the even eps_S grid in (0, 1] of :func:`roc_grid`: 1/n, 2/n, ..., 1."""
    return np.round(np.linspace(1.0 / n_points, 1.0, n_points), 9)


def roc_grid(scores: np.ndarray, labels: np.ndarray, n_points: int = ROC_POINTS, signal_class: int = 1) -> dict:
    """A compact ROC for plots and the JSON report: ``{"eps_s": [...], "eps_b": [...]}`` on the even eps_S grid
    :func:`eps_s_grid` of ``n_points``. Empty lists when the jets are all of one class or a score is not finite."""
    is_signal = np.asarray(labels) == signal_class
    if is_signal.all() or not is_signal.any() or not finite_rows(scores).all():
        return {"eps_s": [], "eps_b": []}
    grid = eps_s_grid(n_points)
    eps_b = background_efficiency(grid, *roc(scores, labels, signal_class))
    return {"eps_s": grid.tolist(), "eps_b": eps_b.tolist()}


def rejection_lower_limit(n_pass: float, n_background: int, cl: float = LIMIT_CL) -> float:
    """One-sided lower limit (confidence level ``cl``) on 1/eps_B when ``n_pass`` of ``n_background`` background
    jets pass the cut: ``n_background / mu_up``, ``mu_up`` the Poisson upper limit on the mean number passing
    (``P(N <= n_pass | mu_up) = 1 - cl``; 1.84 at n_pass = 0 and cl = 84.13%). ``n_pass`` may be fractional (read
    off the interpolated ROC). NaN when ``n_pass`` is NaN or there is no background jet."""
    from scipy.special import gammaincinv  # scipy: a dependency of scikit-learn

    if not n_background or not math.isfinite(n_pass):
        return math.nan
    return float(n_background / gammaincinv(n_pass + 1.0, cl))


# ----------------------------------------------------------------------------- bootstrap


def _prepare(scores: np.ndarray, labels: np.ndarray, signal_class: int):
    """Jets sorted by decreasing signal score: ``is_signal`` (n,) bool, ``correct`` (n,) bool (argmax = label), and
    ``ends`` (G,) the index of the last jet of each group of tied scores (a ROC threshold each)."""
    s = signal_scores(scores, signal_class).astype(np.float64)
    order = np.argsort(-s, kind="stable")
    s = s[order]
    labels = np.asarray(labels)[order]
    correct = predicted_classes(np.asarray(scores)[order], signal_class) == labels
    ends = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]
    return labels == signal_class, correct, ends


def replica_metrics(is_signal: np.ndarray, correct: np.ndarray, ends: np.ndarray, weights: np.ndarray,
                    targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Accuracy, AUC and eps_B at ``targets`` of B weighted copies of one test set, without a loop over copies.

    is_signal, correct: (n,) bool of the jets sorted by decreasing signal score; ends: (G,) last index of each
    group of tied scores (see :func:`_prepare`); weights: (B, n) non-negative integer counts (a bootstrap replica
    takes jet i ``weights[b, i]`` times); targets: (k,) signal efficiencies.
    Returns ``accuracy`` (B,), ``auc`` (B,) and ``eps_b`` (B, k); NaN in the rows without signal or background.
    With all weights 1 these are the metrics of :func:`binary_metrics`.
    """
    weights = np.asarray(weights)
    n_rows = len(weights)
    tp = np.cumsum(weights * is_signal, axis=1, dtype=np.int64)  # signal jets above each threshold, (B, n)
    fp = np.cumsum(weights, axis=1, dtype=np.int64)
    fp -= tp
    n_jets = np.maximum(fp[:, -1] + tp[:, -1], 1)
    accuracy = np.einsum("ij,j->i", weights, correct.astype(weights.dtype), dtype=np.float64) / n_jets
    if len(ends) < weights.shape[1]:  # ties: one ROC point per group of equal scores
        tp, fp = tp[:, ends], fp[:, ends]
    n_sig, n_bkg = tp[:, -1].astype(np.float64), fp[:, -1].astype(np.float64)
    ok = (n_sig > 0) & (n_bkg > 0)
    # AUC: trapezoids sum (fp_g - fp_g-1) (tp_g + tp_g-1) / (2 n_sig n_bkg), exact in integer counts
    heights = tp.copy()
    heights[:, 1:] += tp[:, :-1]
    twice = np.einsum("ij,ij->i", np.diff(fp, axis=1, prepend=0), heights, dtype=np.float64)
    area = twice / np.maximum(2 * n_sig * n_bkg, 1)
    # eps_B at the targets: the ROC (0, 0), (tp_g / n_sig, fp_g / n_bkg) of each row, rows shifted by 2 row
    shift = 2.0 * np.arange(n_rows)
    eps_s = np.empty((n_rows, tp.shape[1] + 1))
    eps_s[:, 0] = 0.0
    np.divide(tp, np.maximum(n_sig, 1)[:, None], out=eps_s[:, 1:])
    eps_s[~ok] = 0.0
    eps_s += shift[:, None]
    targets = np.asarray(targets, np.float64)
    hi = np.searchsorted(eps_s.ravel(), (targets[None, :] + shift[:, None]).ravel(), side="left")
    hi = np.clip(hi.reshape(n_rows, -1) - eps_s.shape[1] * np.arange(n_rows)[:, None], 0, eps_s.shape[1] - 1)
    lo = np.maximum(hi - 1, 0)
    s_hi = np.take_along_axis(eps_s, hi, 1) - shift[:, None]
    s_lo = np.take_along_axis(eps_s, lo, 1) - shift[:, None]
    fp0 = lambda i: np.where(i > 0, np.take_along_axis(fp, np.maximum(i - 1, 0), 1), 0)  # ROC point i - 1; (0, 0) first
    b_hi, b_lo = fp0(hi) / np.maximum(n_bkg, 1)[:, None], fp0(lo) / np.maximum(n_bkg, 1)[:, None]
    ds = s_hi - s_lo
    frac = np.divide(targets - s_lo, ds, out=np.ones_like(s_hi), where=ds > 0)
    at = np.where(s_hi == targets, b_hi, b_lo + frac * (b_hi - b_lo))
    return accuracy, np.where(ok, area, np.nan), np.where(ok[:, None], at, np.nan)


def _quantiles(values: np.ndarray) -> np.ndarray:
    """(2, ...) the central-68% bounds of ``values`` (B, ...) over its first axis, ignoring NaN replicas."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns give NaN
        return np.nanquantile(values, INTERVAL_QUANTILES, axis=0)


def rejection_interval(eps_b_interval) -> list[float]:
    """``[1 / hi, 1 / lo]`` of an eps_B interval ``[lo, hi]``: the rejection interval (inf where eps_B = 0; NaN
    or None stays NaN)."""
    lo, hi = (math.nan if x is None else float(x) for x in eps_b_interval)
    return [math.inf if x == 0 else 1.0 / x for x in (hi, lo)]


def bootstrap_intervals(
    scores: np.ndarray,
    labels: np.ndarray,
    *,
    n_bootstrap: int = N_BOOTSTRAP,
    seed: int = 0,
    signal_efficiencies: Sequence[float] = SIGNAL_EFFICIENCIES,
    grid: np.ndarray | None = None,
    signal_class: int = 1,
) -> dict:
    """Central 68% intervals of accuracy, AUC, eps_B and 1/eps_B from ``n_bootstrap`` resamples of the jets.

    scores (n_jets, n_class) or (n_jets,), labels (n_jets,). Each replica draws n_jets jets with replacement
    (``numpy.random.default_rng(seed)``: the same inputs give the same intervals); all replicas are evaluated
    together from the jets sorted once by score (:func:`replica_metrics`), in blocks of about 2M jet-replicas,
    so 200 replicas of 100k jets take about a second.

    Returns ``accuracy_interval``, ``auc_interval`` and per eps_S in ``signal_efficiencies``
    ``eps_b_<tag>_interval``, ``rej_<tag>_interval``: each ``[low, high]`` floats (NaN with non-finite scores,
    one class only or ``n_bootstrap = 0``), and ``n_bootstrap``. With ``grid`` (G,) eps_S values, also
    ``eps_b_grid_interval``: (2, G) array, the eps_B band of the ROC.
    """
    scores, labels = np.asarray(scores), np.asarray(labels)
    tags = [efficiency_tag(e) for e in signal_efficiencies]
    targets = np.r_[np.asarray(signal_efficiencies, np.float64), [] if grid is None else np.asarray(grid, np.float64)]
    n = len(labels)
    is_signal = labels == signal_class
    usable = n_bootstrap > 0 and n > 0 and is_signal.any() and not is_signal.all() and finite_rows(scores).all()
    if usable:
        is_signal, correct, ends = _prepare(scores, labels, signal_class)
        rng = np.random.default_rng(seed)
        block = max(1, min(n_bootstrap, _BOOTSTRAP_BLOCK // max(n, 1)))
        acc, area, eps_b = [], [], []
        for start in range(0, n_bootstrap, block):  # blocks of replicas, not jets
            size = min(block, n_bootstrap - start)
            draws = rng.integers(0, n, size=(size, n)) + n * np.arange(size)[:, None]
            weights = np.bincount(draws.ravel(), minlength=size * n).reshape(size, n).astype(np.int32)
            a, u, b = replica_metrics(is_signal, correct, ends, weights, targets)
            acc.append(a), area.append(u), eps_b.append(b)
        acc_q, auc_q = _quantiles(np.concatenate(acc)), _quantiles(np.concatenate(area))
        eps_b_q = _quantiles(np.concatenate(eps_b))  # (2, k + G)
    else:
        acc_q = auc_q = np.full(2, np.nan)
        eps_b_q = np.full((2, len(targets)), np.nan)
    out: dict = {"accuracy_interval": acc_q.tolist(), "auc_interval": auc_q.tolist()}
    for i, tag in enumerate(tags):
        out[f"eps_b_{tag}_interval"] = eps_b_q[:, i].tolist()
        out[f"rej_{tag}_interval"] = rejection_interval(eps_b_q[:, i])
    out["n_bootstrap"] = int(n_bootstrap)
    if grid is not None:
        out["eps_b_grid_interval"] = eps_b_q[:, len(tags):]
    return out


# ----------------------------------------------------------------------------- metrics


def _warn(messages: list[str], message: str, stacklevel: int, category=UnreliableMetricWarning) -> None:
    messages.append(message)
    warnings.warn(message, category, stacklevel=stacklevel + 1)


def binary_metrics(
    scores: np.ndarray,
    labels: np.ndarray,
    *,
    signal_efficiencies: Sequence[float] = SIGNAL_EFFICIENCIES,
    min_background: int = MIN_BACKGROUND_PASS,
    signal_class: int = 1,
    n_bootstrap: int = 0,
    seed: int = 0,
) -> dict:
    """Accuracy, AUC and background rejections of one set of scores; never raises on NaN or inf scores.

    scores: (n_jets, n_class) or (n_jets,) signal scores; labels: (n_jets,) class indices.
    Returns a flat dict (JSON-ready Python scalars)::

        n_jets, n_signal, n_background      int    test-set size
        n_nonfinite                         int    jets with a NaN or inf score (if > 0, the metrics below are NaN)
        accuracy                            float  fraction of jets whose argmax class is the label
        auc                                 float  ROC AUC of the signal score (nan with one class only)
        eps_b_30, rej_30, n_background_pass_30   eps_B at eps_S = 0.3, 1/eps_B (inf if eps_B = 0), and
                                            eps_B * n_background, the (interpolated) background jets passing
        rej_30_lower_bound                  bool   fewer than ``min_background`` background jets pass: quote
        rej_30_limit                        float  this 84.13% CL lower limit on 1/eps_B instead of rej_30
        ... the same for every entry of ``signal_efficiencies`` (suffix from :func:`efficiency_tag`)
        warnings                            list[str]  also raised as :class:`UnreliableMetricWarning`
        with ``n_bootstrap > 0`` also the intervals of :func:`bootstrap_intervals` (accuracy_interval,
        auc_interval, eps_b_30_interval, rej_30_interval, ..., n_bootstrap)

    A warning is raised for each eps_S at which fewer than ``min_background`` background jets pass the cut,
    when the jets are all signal or all background (AUC and rejections are then nan), and when scores are not
    finite (:class:`NonFiniteScoreWarning`).
    """
    scores, labels = np.asarray(scores), np.asarray(labels)
    if len(scores) != len(labels):
        raise ValueError(f"scores ({len(scores)} jets) and labels ({len(labels)} jets) differ in length")
    is_signal = labels == signal_class
    n_jets, n_signal = len(labels), int(is_signal.sum())
    n_background = n_jets - n_signal
    n_nonfinite = int(n_jets - finite_rows(scores).sum()) if n_jets else 0
    out: dict = {
        "n_jets": n_jets,
        "n_signal": n_signal,
        "n_background": n_background,
        "n_nonfinite": n_nonfinite,
        "accuracy": float(np.mean(predicted_classes(scores, signal_class) == labels)) if n_jets else math.nan,
    }
    messages: list[str] = []
    one_class = n_signal == 0 or n_background == 0
    undefined = one_class or n_nonfinite > 0
    if n_nonfinite:
        _warn(messages, f"{n_nonfinite} of {n_jets} jets have non-finite scores (NaN or inf): the model diverged or "
                        "cannot score them; accuracy, AUC and 1/eps_B are undefined (NaN)", 2, NonFiniteScoreWarning)
        out["accuracy"] = math.nan
    elif one_class:
        _warn(messages, f"{n_signal} signal and {n_background} background jets: AUC and 1/eps_B are undefined", 2)
    if undefined:
        out["auc"] = math.nan
    else:
        eps_s, eps_b = roc(scores, labels, signal_class)
        out["auc"] = float(auc(eps_b, eps_s))  # trapezoids on the ROC: what roc_auc_score computes, ties included
    for target in signal_efficiencies:
        tag = efficiency_tag(target)
        eb = math.nan if undefined else float(background_efficiency(target, eps_s, eps_b))
        n_pass = eb * n_background
        out[f"eps_b_{tag}"] = eb
        out[f"rej_{tag}"] = math.nan if undefined else (math.inf if eb == 0 else 1.0 / eb)
        out[f"n_background_pass_{tag}"] = n_pass
        out[f"rej_{tag}_lower_bound"] = bool(not undefined and n_pass < min_background)
        out[f"rej_{tag}_limit"] = math.nan if undefined else rejection_lower_limit(n_pass, n_background)
        if out[f"rej_{tag}_lower_bound"]:
            what = "no background jet passes" if eb == 0 else f"only {n_pass:.3g} background jets pass"
            _warn(
                messages,
                f"1/eps_B at eps_S = {target:g}: {what} the cut (of {n_background}; fewer than {min_background}"
                f" make the rejection unreliable; 84% CL lower limit {out[f'rej_{tag}_limit']:.3g}"
                + (", point estimate inf)" if eb == 0 else ")"),
                2,
            )
    if n_bootstrap > 0:
        out |= bootstrap_intervals(scores, labels, n_bootstrap=n_bootstrap, seed=seed,
                                   signal_efficiencies=signal_efficiencies, signal_class=signal_class)
    out["warnings"] = messages
    return out


def validation_metrics(scores: np.ndarray, labels: np.ndarray, *, signal_class: int = 1) -> dict:
    """What a trainer logs after each epoch; never raises on NaN/inf scores, one class only or no jets.

    scores: (n, n_class) class probabilities (softmax); labels: (n,) class indices.
    Returns ``{"val_loss": float, "val_acc": float, "val_auc": float, "val_nonfinite": int}``:
    the mean cross entropy ``-log p(label)`` (p clipped at 1e-12), the argmax accuracy, the ROC AUC of class
    ``signal_class`` against the rest, and the number of jets whose scores are NaN or inf. Any non-finite score
    makes loss, accuracy and AUC NaN (a diverged model is never selected as best); the AUC is NaN too when the
    jets are all of one class.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    n_nonfinite = int(n - finite_rows(scores).sum()) if n else 0
    out = {"val_loss": math.nan, "val_acc": math.nan, "val_auc": math.nan, "val_nonfinite": n_nonfinite}
    if n == 0 or n_nonfinite:
        return out
    p_true = scores[np.arange(n), labels]
    out["val_loss"] = float(-np.mean(np.log(np.clip(p_true, 1e-12, None))))
    out["val_acc"] = float(np.mean(scores.argmax(1) == labels))
    is_signal = labels == signal_class
    if is_signal.any() and not is_signal.all():
        sig, _, ends = _prepare(scores, labels, signal_class)
        out["val_auc"] = float(replica_metrics(sig, np.zeros(n, bool), ends, np.ones((1, n), np.int32),
                                               np.zeros(0))[1][0])
    return out
