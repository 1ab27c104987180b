"""Model cost: trainable parameters and floating-point operations per jet.

FLOPs are counted by :class:`torch.utils.flop_counter.FlopCounterMode`, which counts the matrix products
(``mm``, ``addmm``, ``bmm``, ``einsum``/``matmul`` via those, convolutions, attention) with a multiply-add as
2 FLOPs. Element-wise operations (activations, normalisation, the Minkowski feature maps, masked sums) are not
counted; for the models here they are a small fraction of the linear layers' cost.

The cost of a per-constituent model (the LorentzNet teacher: O(N^2) edges per jet; a Deep Set: O(N)) grows
with the jet's multiplicity N, and a padded batch is charged for its padding too. :func:`count_flops` measures
the batch it is given, divided by its size, so the caller passes a representative batch (typical multiplicity,
padding trimmed to the longest jet as :class:`~jetkd.data.loader.JetBatch` does). :func:`flops_per_jet` takes
that choice away: it runs jets one at a time, each trimmed to its own multiplicity, and averages -- the cost of
single-jet inference, as a trigger would run it.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from jetkd.data.loader import JetBatch


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable, by default) parameters of ``model``; shared parameters count once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _total_flops(model: nn.Module, p4: torch.Tensor, mask: torch.Tensor) -> int:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(p4, mask)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def count_flops(model: nn.Module, p4: torch.Tensor, mask: torch.Tensor) -> float:
    """FLOPs per jet of one forward pass (eval mode, no grad) on the batch ``(p4 (B, N, 4), mask (B, N))``.

    The total of the batch divided by B. For models whose cost depends on the multiplicity, pass a
    representative batch (see the module docstring), or use :func:`flops_per_jet`.
    """
    if p4.shape[0] == 0:
        raise ValueError("count_flops needs a non-empty batch")
    return _total_flops(model, p4, mask) / p4.shape[0]


def flops_per_jet(
    model: nn.Module,
    batches: Iterable[JetBatch],
    *,
    n_jets: int = 64,
    device: str | torch.device | None = None,
) -> float:
    """Mean FLOPs of single-jet inference over the first ``n_jets`` jets of ``batches``.

    Each jet runs alone (batch size 1), its padding cut to its own multiplicity, so the number depends on
    neither batch composition nor padding length. ``device``: where to run (default: the jets' device).
    """
    if n_jets < 1:
        raise ValueError(f"n_jets must be >= 1, got {n_jets}")
    total, seen = 0, 0
    for batch in batches:
        for i in range(len(batch)):
            if seen == n_jets:
                break
            real = batch.mask[i]
            p4, mask = batch.p4[i][real][None], real[real][None]  # (1, n, 4), (1, n): this jet, no padding
            if device is not None:
                p4, mask = p4.to(device), mask.to(device)
            total += _total_flops(model, p4, mask)
            seen += 1
        if seen == n_jets:
            break
    if seen == 0:
        raise ValueError("flops_per_jet got no jets")
    return total / seen
