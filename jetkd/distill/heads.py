"""Training-only heads that map a student tap onto a target representation (FitNets regressors, curriculum
heads), and the squared-error loss between them. Dropped at deploy.

Feature maps (image models, (B, C, H, W)): a map guided by a map goes through a convolutional regressor, as in
FitNets (Romero et al. 2015, section 2.2): a 3x3 convolution (padding 1) when the two maps have the same size (the
CRD/RepDistiller ConvReg choice), the paper's valid convolution of kernel (H_s - H_t + 1, W_s - W_t + 1) when the
student's map is larger; a smaller student map is compared with the teacher's map average-pooled to its size.
A map against a vector is pooled over positions first.
"""

from __future__ import annotations

import torch
from torch import nn

from jetkd.distill.taps import Tap


class TapRegressor(nn.Module):
    """A Linear from a student tap (C_s channels) to C_t channels, or a convolution between feature maps.

    Per constituent (``mode="constituent"``, both taps (B, N, C)): the same Linear on every constituent, the loss
    over real constituents only. ``mode="map"`` (both (B, C, H, W)): a Conv2d ``kernel`` with ``padding`` (module
    docstring). Otherwise on pooled vectors: per-constituent taps are averaged over real constituents and maps
    over positions (:meth:`Tap.pooled`), e.g. an MLP student (no per-constituent layer) guided by a teacher's node
    features.
    """

    def __init__(self, c_student: int, c_target: int, per_constituent: bool = False, *, mode: str | None = None,
                 kernel: tuple[int, int] = (3, 3), padding: int = 1):
        super().__init__()
        self.mode = mode or ("constituent" if per_constituent else "vector")
        self.per_constituent = self.mode == "constituent"
        if self.mode == "map":
            self.conv = nn.Conv2d(c_student, c_target, kernel, padding=padding)
        else:
            self.linear = nn.Linear(c_student, c_target)

    def forward(self, tap: Tap) -> Tap:
        if self.mode == "map":
            return Tap(self.conv(tap.value))
        if self.per_constituent:
            return Tap(self.linear(tap.value), tap.mask)
        return Tap(self.linear(tap.pooled()))


def half_squared_error(pred: Tap, target: Tap) -> torch.Tensor:
    """``0.5 * ||target - pred||^2`` summed over channels, averaged over jets (per-jet taps), over the real
    constituents of the batch (per-constituent taps: pred and target (B, N, C) with the same mask) or over images
    and positions (maps). A per-constituent or spatial target against a per-jet prediction is pooled first; a
    target map larger than the predicted one is average-pooled to its size."""
    if pred.spatial and target.spatial:
        t = target.value.float()
        if t.shape[-2:] != pred.value.shape[-2:]:
            t = nn.functional.adaptive_avg_pool2d(t, pred.value.shape[-2:])
        return 0.5 * (t - pred.value.float()).pow(2).sum(1).mean()
    if pred.per_constituent != target.per_constituent or target.spatial:
        target = Tap(target.pooled())
    diff = (target.value.float() - pred.value.float()).pow(2).sum(-1)  # (B,) or (B, N)
    if pred.mask is None:
        return 0.5 * diff.mean()
    w = pred.mask.to(diff.dtype)
    return 0.5 * (diff * w).sum() / w.sum().clamp(min=1.0)


def regressor_for(student: Tap, target: Tap) -> TapRegressor:
    """The regressor that joins these two taps: per constituent when both are per-constituent, convolutional
    when both are feature maps (module docstring), else on pooled vectors."""
    if student.spatial and target.spatial:
        (hs, ws), (ht, wt) = student.value.shape[-2:], target.value.shape[-2:]
        if hs > ht and ws > wt:
            return TapRegressor(student.dim, target.dim, mode="map", kernel=(hs - ht + 1, ws - wt + 1), padding=0)
        return TapRegressor(student.dim, target.dim, mode="map")
    both = student.per_constituent and target.per_constituent
    if both and student.value.shape[1] != target.value.shape[1]:
        raise ValueError(f"per-constituent taps of different lengths: {student.value.shape[1]} vs {target.value.shape[1]}")
    return TapRegressor(student.dim, target.dim, per_constituent=both)
