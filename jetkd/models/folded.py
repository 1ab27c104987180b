"""Inference forms of the students: every eval-mode BatchNorm folded into the Linear that reads its output.

A :class:`~jetkd.models.students.LinearBlock` is Linear -> LeakyReLU -> BatchNorm. In eval mode the BatchNorm is
an affine map per channel, ``y = s * z + t``, so the next Linear ``W y + b`` equals ``(W diag(s)) z + (W t + b)``:
the network becomes Linear -> LeakyReLU -> Linear -> ... with no normalisation left. The deep set's per-constituent
network then runs on the padded (B, N, F) features as one chain of matrix products, block by cache-sized block, and
its pT-weighted sum needs no mask (the weights are zero on padding).

Same logits as the plain models (``model.eval()(p4, mask)``) up to float rounding (tested to 1e-5); the plain
models stay the reference and the training form. :func:`fold` returns the folded copy of a student, or the model
itself for one without a folded form (the LorentzNet teacher).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from jetkd.models.students import MLP, DeepSet, LinearBlock, flat_inputs, pooling_weights


def _affine(bn: nn.BatchNorm1d) -> tuple[torch.Tensor, torch.Tensor]:
    """``(s, t)`` (C,) float64 with ``bn(z) == s * z + t`` in eval mode."""
    s = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    return s, bn.bias.double() - s * bn.running_mean.double()


def _fold_into(linear: nn.Linear, s: torch.Tensor, t: torch.Tensor) -> nn.Linear:
    """A copy of ``linear`` reading ``z`` where the original read ``s * z + t``."""
    w = linear.weight.double()
    out = nn.Linear(linear.in_features, linear.out_features, dtype=linear.weight.dtype, device=linear.weight.device)
    with torch.no_grad():
        out.weight.copy_(w * s)
        out.bias.copy_(linear.bias.double() + w @ t)
    return out


def _chain(blocks: list[LinearBlock], last: nn.Linear, pending: tuple | None = None) -> nn.Sequential:
    """Linear/LeakyReLU layers computing ``last(blocks[-1](...blocks[0](x)))``, BatchNorms folded forward.

    pending: ``(s, t)`` of an affine map already applied to the chain's input (folded into the first Linear).
    """
    layers = []
    for block in [*blocks, None]:
        linear = last if block is None else block.fc
        layers.append(_fold_into(linear, *pending) if pending is not None else copy.deepcopy(linear))
        if block is not None:
            layers.append(nn.LeakyReLU(block.act.negative_slope, inplace=True))
            pending = _affine(block.bn)
    return nn.Sequential(*layers)


class FoldedMLP(nn.Module):
    """:class:`~jetkd.models.students.MLP` with its BatchNorms folded: ``model(p4, mask) -> logits``."""

    def __init__(self, mlp: MLP):
        super().__init__()
        self.n_constituents, self.n_class = mlp.n_constituents, mlp.n_class
        self.features = copy.deepcopy(mlp.features)
        self.net = _chain(list(mlp.blocks), mlp.classifier)

    def forward(self, p4: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.net(flat_inputs(self.features(p4, mask), self.n_constituents))


class FoldedDeepSet(nn.Module):
    """:class:`~jetkd.models.students.DeepSet` with its BatchNorms folded: ``model(p4, mask) -> logits``.

    phi: the per-constituent chain on (b * N, F) rows, in blocks of about ``rows_per_block`` rows so that its
    activations stay in the CPU cache (1.5-2.5x faster than whole batches of thousands of jets); pooling: the
    pT-weighted sum of each block's latents; rho: the per-jet chain (the pooled BatchNorm and the last block's one
    folded) to the logits.
    """

    rows_per_block = 8192

    def __init__(self, deepset: DeepSet):
        super().__init__()
        self.n_class = deepset.n_class
        self.features = copy.deepcopy(deepset.features)
        self.phi = _chain(list(deepset.phi.blocks), deepset.phi.out)
        rho = list(deepset.rho.blocks)
        self.rho = _chain(rho, deepset.classifier, _affine(deepset.rho.norm))

    def inputs(self, p4: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """phi's inputs, the per-constituent features (B, N, F), and the pooling weights pT / pT_jet (B, N); both 0
        on padding."""
        mask = mask.bool()
        x = self.features(p4, mask)
        weight = pooling_weights(x, self.features.names, p4, mask)
        return x, weight

    def forward(self, p4: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x, weight = self.inputs(p4, mask)
        step = max(1, self.rows_per_block // x.shape[1])  # jets per block of phi rows
        pooled = torch.cat([self._pool(x[i : i + step], weight[i : i + step]) for i in range(0, len(x), step)])
        return self.rho(pooled)

    def _pool(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """``sum_i w_i phi(x_i)`` (b, C) of a block of jets x (b, N, F), weights (b, N) (0 on padding)."""
        latent = self.phi(x.reshape(-1, x.shape[-1])).view(*x.shape[:2], -1)  # (b, N, C), finite on padding
        return (latent * weight[..., None]).sum(1)


FOLDED = {MLP: FoldedMLP, DeepSet: FoldedDeepSet}


def fold(model: nn.Module) -> nn.Module:
    """The folded inference form of ``model`` (eval mode), or ``model`` itself when it has none."""
    folded = FOLDED.get(type(model))
    return model if folded is None else folded(model).eval()
