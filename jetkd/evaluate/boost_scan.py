"""Robustness to Lorentz boosts: evaluate a tagger on its test jets boosted by beta = 0, 0.05, ..., 0.95.

The boost (:func:`jetkd.lorentz.boost`) acts on the constituents only. The beam four-vectors that models such as
LorentzNet add themselves stay fixed, so the scan measures how much a model's output depends on the jet's frame
relative to the beams -- a Lorentz-invariant function of the constituents alone would not change at all.
The summary number is the paper's invariance score

    I = (2 * mean_beta acc(beta) - 1) / (2 * max_beta acc(beta) - 1),

1 when the accuracy is the same at every beta, and lower the more it degrades (0 for random guessing on
average; accuracy 0.5 is the chance level of a balanced binary test set).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from jetkd import lorentz
from jetkd.data.loader import JetBatch
from jetkd.evaluate.metrics import SIGNAL_EFFICIENCIES, binary_metrics
from jetkd.evaluate.predict import Transform, predict, stage_batches

#: the paper's scan: beta = 0, 0.05, ..., 0.95 (20 points)
DEFAULT_BETAS = tuple(np.round(np.arange(0.0, 1.0, 0.05), 10).tolist())
#: boost along x, transverse to the beam (z)
DEFAULT_AXIS = (1.0, 0.0, 0.0)
#: ``axis="jet"``: boost every jet along its own momentum (the sum of its constituents' three-momenta)
JET_AXIS = "jet"


def jet_axes(p4: torch.Tensor) -> torch.Tensor:
    """(B, 1, 3): each jet's momentum direction (unnormalised), from its zero-padded constituents p4 (B, N, 4)."""
    return p4[..., 1:].sum(-2, keepdim=True)


def boost_transform(beta: float, axis: Sequence[float] | str = DEFAULT_AXIS) -> Transform | None:
    """``p4 -> boost(p4, beta, axis)`` for :func:`~jetkd.evaluate.predict.predict`; ``None`` for beta = 0.
    ``axis="jet"`` boosts each jet along its own momentum (:func:`jet_axes`): the jet's constituents move
    together and the features relative to the jet axis change least.

    The boost is computed in float64 and cast back to the input dtype, so float32 jets lose no precision
    to the large gamma factors near beta = 1.
    """
    if beta == 0:
        return None
    fixed = None if axis == JET_AXIS else tuple(float(a) for a in axis)

    def transform(p4: torch.Tensor) -> torch.Tensor:
        p4d = p4.double()
        return lorentz.boost(p4d, beta, jet_axes(p4d) if fixed is None else fixed).to(p4.dtype)

    return transform


def boosted_predictions(
    model: nn.Module,
    batches: Sequence[JetBatch],
    betas: Iterable[float] = DEFAULT_BETAS,
    axis: Sequence[float] = DEFAULT_AXIS,
    *,
    device: str | torch.device = "cpu",
    amp: bool = False,
) -> Iterator[tuple[float, np.ndarray, np.ndarray]]:
    """Yield ``(beta, scores (n_jets, n_class), labels (n_jets,))`` for each beta, reading the batches once."""
    batches = stage_batches(batches, device)
    for beta in betas:
        beta = round(float(beta), 12)  # np.arange(0, 1, 0.05) gives 0.15000000000000002: report 0.15
        scores, labels = predict(model, batches, device=device, transform=boost_transform(beta, axis), amp=amp)
        yield beta, scores, labels


def boost_scan(
    model: nn.Module,
    batches: Iterable[JetBatch],
    betas: Iterable[float] = DEFAULT_BETAS,
    axis: Sequence[float] = DEFAULT_AXIS,
    *,
    device: str | torch.device = "cpu",
    amp: bool = False,
    signal_efficiencies: Sequence[float] = SIGNAL_EFFICIENCIES,
) -> list[dict]:
    """Tagging metrics of ``model`` on the test jets boosted by each ``beta`` along ``axis``.

    model:   ``model(p4, mask) -> logits``, already on ``device``.
    batches: iterable of :class:`~jetkd.data.loader.JetBatch`; read once and kept on ``device`` for all betas
             (pass a list to reuse it elsewhere).
    betas:   speeds in units of c, each ``|beta| < 1``. axis: boost direction (3,), normalised, or ``"jet"``
             (each jet along its own momentum).

    Returns one dict per beta, ``{"beta": float, **binary_metrics(...)}`` (accuracy, auc, rej_30, rej_50,
    n_jets, ..., warnings): see :func:`jetkd.evaluate.metrics.binary_metrics`.
    """
    return [
        {"beta": beta, **binary_metrics(scores, labels, signal_efficiencies=signal_efficiencies)}
        for beta, scores, labels in boosted_predictions(model, list(batches), betas, axis, device=device, amp=amp)
    ]


def invariance_score(accuracies: Sequence[float]) -> float:
    """``(2 * mean(acc) - 1) / (2 * max(acc) - 1)`` over the accuracies of a boost scan.

    accuracies: (n_betas,) floats, or the dicts returned by :func:`boost_scan`. Returns 1.0 when all are equal,
    nan when the best accuracy is at or below chance (0.5), where the score is undefined.
    """
    acc = np.array([a["accuracy"] if isinstance(a, dict) else a for a in accuracies], dtype=np.float64)
    if acc.size == 0:
        raise ValueError("invariance_score needs at least one accuracy")
    best = acc.max()
    if not best > 0.5:
        return float("nan")
    mean = min(acc.mean(), best)  # guard against rounding putting the mean of equal values above their max
    return float((2 * mean - 1) / (2 * best - 1))
