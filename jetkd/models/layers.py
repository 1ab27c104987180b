"""Layers shared by the jet models."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def _all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over DDP ranks with autograd (identity when not distributed)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return torch.distributed.nn.functional.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


class MaskedBatchNorm1d(nn.BatchNorm1d):
    """Batch normalisation over the real entries of a padded set or graph tensor.

    x: (..., C) features; mask: (...) bool, True for real entries (None: all real).
    In training the statistics come from real entries only (padding never shifts them) and are summed over
    DDP ranks, so N processes normalise exactly as one process with the whole global batch. In eval mode
    the running statistics are used, as in ``nn.BatchNorm1d``, whose parameters and state-dict keys this
    shares. Outputs at masked entries are computed but meaningless.
    """

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if not self.training:
            return F.batch_norm(x.reshape(-1, x.shape[-1]), self.running_mean, self.running_var, self.weight,
                                self.bias, False, 0.0, self.eps).reshape(x.shape)
        flat = x.reshape(-1, x.shape[-1])
        w = torch.ones_like(flat[:, :1]) if mask is None else mask.reshape(-1, 1).to(flat.dtype)
        count = _all_reduce_sum(w.sum())
        mean = _all_reduce_sum((flat * w).sum(0)) / count
        var = _all_reduce_sum(((flat - mean) ** 2 * w).sum(0)) / count
        with torch.no_grad():
            self.num_batches_tracked += 1
            unbiased = var * count / (count - 1).clamp(min=1)
            self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), self.momentum)
            self.running_var.lerp_(unbiased.detach().to(self.running_var.dtype), self.momentum)
        out = (flat - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias
        return out.reshape(x.shape)
