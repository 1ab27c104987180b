"""Student jet taggers: a flat MLP and an energy-flow-style DeepSet.

Both follow the jet-model contract ``model(p4, mask) -> logits``: p4 (B, N, 4) float32 ``[E, px, py, pz]``
in GeV, zero-padded and pT-ordered; mask (B, N) bool; logits (B, n_class). They compute their own inputs
(:mod:`jetkd.models.features`), so an exported student carries its preprocessing. Every BatchNorm is a
:class:`MaskedBatchNorm1d` (statistics over real entries, synchronised over DDP ranks), so in eval mode a
jet's logits depend neither on padding length nor on the rest of the batch.

Each model exposes ``n_class``, ``feature_dim`` (width of the representation feeding ``classifier``) and
named modules for forward hooks (paths in the class docstrings). Widths, depths, constituent count and
feature set are constructor arguments; e.g. ``MLP(n_constituents=16, hidden=(32,))`` or
``DeepSet(phi_hidden=(16, 16), rho_hidden=(16,))`` are trigger-sized (a few thousand parameters).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from jetkd.models.features import DEFAULT_FEATURES, ConstituentFeatures, constituent_features
from jetkd.models.layers import MaskedBatchNorm1d


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (BatchNorm affine weights count, running statistics do not)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class LinearBlock(nn.Module):
    """Linear -> LeakyReLU -> MaskedBatchNorm1d.

    x: (..., d_in); mask: (...) bool or None (all real). Returns (..., d_out).
    Submodules: ``fc``, ``act``, ``bn``.
    """

    def __init__(self, d_in: int, d_out: int, negative_slope: float = 0.01):
        super().__init__()
        self.fc = nn.Linear(d_in, d_out)
        self.act = nn.LeakyReLU(negative_slope)
        self.bn = MaskedBatchNorm1d(d_out)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.bn(self.act(self.fc(x)), mask)


class MLP(nn.Module):
    """Fully connected tagger on the flattened features of the leading constituents.

    The first ``n_constituents`` constituents (zero-padded if the jet tensor is shorter, cut if longer; the jet
    axis is always the sum of *all* real constituents) times F features, flattened constituent-major to
    ``n_constituents * F`` inputs -> one ``LinearBlock`` per entry of ``hidden`` -> Linear to ``n_class``.
    Defaults: 128 x 4 = 512 inputs, (512, 512) hidden, 2 classes: 528,386 parameters.

    Module paths (for forward hooks):
        features      ConstituentFeatures   (p4, mask) -> (B, N, F)
        blocks        nn.Sequential         (B, n_constituents * F) -> (B, feature_dim): last hidden representation
        blocks.<i>    LinearBlock           (.fc, .act, .bn)
        classifier    nn.Linear             (B, feature_dim) -> (B, n_class) logits
    """

    def __init__(
        self,
        n_constituents: int = 128,
        features: Sequence[str] = DEFAULT_FEATURES,
        hidden: Sequence[int] = (512, 512),
        n_class: int = 2,
        negative_slope: float = 0.01,
    ):
        super().__init__()
        if n_constituents < 1:
            raise ValueError(f"n_constituents must be >= 1, got {n_constituents}")
        self.n_constituents, self.n_class = n_constituents, n_class
        self.features = ConstituentFeatures(features)
        dims = (n_constituents * self.features.n_features, *hidden)
        self.blocks = nn.Sequential(*(LinearBlock(a, b, negative_slope) for a, b in zip(dims[:-1], dims[1:])))
        self.feature_dim = dims[-1]
        self.classifier = nn.Linear(self.feature_dim, n_class)

    @property
    def n_inputs(self) -> int:
        return self.n_constituents * self.features.n_features

    @property
    def input_features(self) -> tuple[str, ...]:
        return self.features.names

    def forward(self, p4: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = flat_inputs(self.features(p4, mask).to(self.classifier.weight.dtype), self.n_constituents)
        return self.classifier(self.blocks(x))  # blocks: (B, feature_dim)


def pooling_weights(x: torch.Tensor, names: Sequence[str], p4: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The deep set's pooling weights pT / pT_jet (B, N), 0 on padding: the ``rel_pt`` column of the features
    x (B, N, F) named ``names`` when there is one, else computed from ``p4`` and ``mask``."""
    if "rel_pt" in names:
        return x[..., list(names).index("rel_pt")]
    return constituent_features(p4, mask, ("rel_pt",))[..., 0].to(x.dtype)


def flat_inputs(x: torch.Tensor, n_constituents: int) -> torch.Tensor:
    """The MLP's input: per-constituent features x (B, N, F) cut or zero-padded to ``n_constituents`` and flattened
    constituent-major to (B, n_constituents * F). Padded first, then cut, without a branch on N, so that an export
    with a dynamic constituent axis stays right for every N."""
    return F.pad(x, (0, 0, 0, n_constituents))[:, :n_constituents].flatten(1)


class Phi(nn.Module):
    """Per-constituent network: ``LinearBlock`` for every width but the last, then a plain Linear.

    forward(x (B, N, d_in), mask (B, N) bool) -> (B, N, hidden[-1]), exactly 0 at masked entries.
    The BatchNorms normalise over real constituents only. Submodules: ``blocks.<i>`` (LinearBlock), ``out``.
    """

    def __init__(self, d_in: int, hidden: Sequence[int], negative_slope: float = 0.01):
        super().__init__()
        if len(hidden) < 1:
            raise ValueError("phi needs at least one width")
        dims = (d_in, *hidden)
        self.blocks = nn.ModuleList(LinearBlock(a, b, negative_slope) for a, b in zip(dims[:-2], dims[1:-1]))
        self.out = nn.Linear(dims[-2], dims[-1])

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, mask)
        x = self.out(x)
        return torch.where(mask[..., None], x, torch.zeros_like(x))


class WeightedSum(nn.Module):
    """Pooling over constituents: ``sum_i w_i x_i``. x (B, N, C), w (B, N) (0 at padding) -> (B, C)."""

    def forward(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return (x * weight[..., None]).sum(-2)


class Rho(nn.Module):
    """Per-jet network: MaskedBatchNorm1d, then one ``LinearBlock`` per width.

    forward(x (B, d_in)) -> (B, d_out). Submodules: ``norm``, ``blocks.<i>`` (LinearBlock).
    """

    def __init__(self, d_in: int, hidden: Sequence[int], negative_slope: float = 0.01):
        super().__init__()
        self.norm = MaskedBatchNorm1d(d_in)
        dims = (d_in, *hidden)
        self.blocks = nn.Sequential(*(LinearBlock(a, b, negative_slope) for a, b in zip(dims[:-1], dims[1:])))
        self.d_out = dims[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.norm(x))


class DeepSet(nn.Module):
    """Energy-flow-network-style permutation-invariant tagger.

    phi maps each constituent's F features to a latent vector; the latents are summed over real constituents
    weighted by pT / pT_jet (the IRC-safe energy-flow weighting); rho maps the pooled vector to the last hidden
    representation; ``classifier`` to logits. Defaults: phi (128, 128, 128), rho (128, 128), 2 classes:
    68,226 parameters.

    Module paths (for forward hooks):
        features      ConstituentFeatures  (p4, mask) -> (B, N, F)
        phi           Phi                  (x (B, N, F), mask (B, N)) -> (B, N, C), 0 at padding;
                                           a hook gets the mask as ``inputs[1]``
        phi.blocks.<i>, phi.out
        pool          WeightedSum          (latents (B, N, C), weights (B, N)) -> (B, C)
        rho           Rho                  (B, C) -> (B, feature_dim): last hidden representation
        rho.norm, rho.blocks.<i>
        classifier    nn.Linear            (B, feature_dim) -> (B, n_class) logits
    """

    def __init__(
        self,
        features: Sequence[str] = DEFAULT_FEATURES,
        phi_hidden: Sequence[int] = (128, 128, 128),
        rho_hidden: Sequence[int] = (128, 128),
        n_class: int = 2,
        negative_slope: float = 0.01,
    ):
        super().__init__()
        self.n_class = n_class
        self.features = ConstituentFeatures(features)
        self.phi = Phi(self.features.n_features, phi_hidden, negative_slope)
        self.pool = WeightedSum()
        self.rho = Rho(phi_hidden[-1], rho_hidden, negative_slope)
        self.feature_dim = self.rho.d_out
        self.classifier = nn.Linear(self.feature_dim, n_class)

    @property
    def input_features(self) -> tuple[str, ...]:
        return self.features.names

    def forward(self, p4: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        dtype, mask = self.classifier.weight.dtype, mask.bool()
        x = self.features(p4, mask).to(dtype)  # (B, N, F)
        weight = constituent_features(p4, mask, ("rel_pt",))[..., 0].to(dtype)  # (B, N), 0 at padding
        latent = self.phi(x, mask)  # (B, N, C)
        x = self.rho(self.pool(latent, weight))  # (B, feature_dim)
        return self.classifier(x)

