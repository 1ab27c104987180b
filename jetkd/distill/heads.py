"""Training-only heads that map a student tap onto a target representation (FitNets regressors, curriculum
heads), and the squared-error loss between them. Dropped at deploy."""

from __future__ import annotations

import torch
from torch import nn

from jetkd.distill.taps import Tap


class TapRegressor(nn.Module):
    """A Linear from a student tap (C_s channels) to C_t channels.

    Per constituent (``per_constituent=True``, both taps (B, N, C)): the same Linear on every constituent,
    the loss over real constituents only. Otherwise on pooled vectors: per-constituent taps are first
    averaged over real constituents (:meth:`Tap.pooled`), e.g. an MLP student (no per-constituent layer)
    guided by a teacher's node features.
    """

    def __init__(self, c_student: int, c_target: int, per_constituent: bool):
        super().__init__()
        self.per_constituent = per_constituent
        self.linear = nn.Linear(c_student, c_target)

    def forward(self, tap: Tap) -> Tap:
        if self.per_constituent:
            return Tap(self.linear(tap.value), tap.mask)
        return Tap(self.linear(tap.pooled()))


def half_squared_error(pred: Tap, target: Tap) -> torch.Tensor:
    """``0.5 * ||target - pred||^2`` summed over channels, averaged over jets (per-jet taps) or over the real
    constituents of the batch (per-constituent taps: pred and target (B, N, C) with the same mask).
    A per-constituent target against a per-jet prediction is pooled first."""
    if pred.per_constituent != target.per_constituent:
        target = Tap(target.pooled())
    diff = (target.value.float() - pred.value.float()).pow(2).sum(-1)  # (B,) or (B, N)
    if pred.mask is None:
        return 0.5 * diff.mean()
    w = pred.mask.to(diff.dtype)
    return 0.5 * (diff * w).sum() / w.sum().clamp(min=1.0)


def regressor_for(student: Tap, target: Tap) -> TapRegressor:
    """The regressor that joins these two taps: per constituent when both are per-constituent."""
    both = student.per_constituent and target.per_constituent
    if both and student.value.shape[1] != target.value.shape[1]:
        raise ValueError(f"per-constituent taps of different lengths: {student.value.shape[1]} vs {target.value.shape[1]}")
    return TapRegressor(student.dim, target.dim, per_constituent=both)
