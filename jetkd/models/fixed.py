"""Trigger students trained quantization-aware: the MLP and the deep set in the fixed-point arithmetic of the FPGA.

``FixedMLP`` and ``FixedDeepSet`` are the students without BatchNorm (folding a BatchNorm after training would move
the weights off the grid they were trained on) whose networks are :class:`jetkd.quant.FixedPointChain` s: inputs,
weights, biases and every layer's output rounded and saturated to ``precision`` (``ap_fixed<W,I>``, AP_RND, AP_SAT)
in the forward pass, gradients straight through. In eval mode they compute exactly what hls4ml's C simulation of
their export computes (float64 emulation, tested bit for bit), so ``jetkd export --format hls4ml`` agrees with the
trained model on every jet.

Same contract as the float students: ``model(p4, mask) -> logits`` from raw four-vectors, features computed on the
fly; ``classifier`` is the last Linear (for KD and taps). The deep set's pooling weights pT / pT_jet are rounded to
the input type, as the firmware receives them; its weighted sum is exact (float64), then rounded by rho's input.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from jetkd.models.features import DEFAULT_FEATURES, ConstituentFeatures
from jetkd.models.students import flat_inputs, pooling_weights
from jetkd.quant import FixedPoint, FixedPointChain


def _plain(dims: Sequence[int], negative_slope: float) -> nn.Sequential:
    """Linear -> LeakyReLU -> ... -> Linear through ``dims``."""
    layers = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(nn.LeakyReLU(negative_slope))
    return nn.Sequential(*layers)


def uniform_chain(net: nn.Sequential, precision: FixedPoint) -> FixedPointChain:
    """``net`` computed with every value in ``precision``."""
    types = {"input": precision}
    for i, layer in enumerate(net):
        keys = ("weight", "bias", "result") if isinstance(layer, nn.Linear) else ("result",)
        types[f"_{i}"] = dict.fromkeys(keys, precision)
    return FixedPointChain(net, types)


class FixedMLP(nn.Module):
    """MLP on the leading ``n_constituents`` constituents' features, in ``precision`` (see the module docstring).

    Module paths: ``features``, ``chain.net`` (Linear/LeakyReLU), ``classifier`` (= the last Linear).
    """

    def __init__(self, n_constituents: int = 16, features: Sequence[str] = DEFAULT_FEATURES,
                 hidden: Sequence[int] = (32, 32), n_class: int = 2, negative_slope: float = 0.01,
                 precision: str = "ap_fixed<16,6>"):
        super().__init__()
        self.n_constituents, self.n_class = n_constituents, n_class
        self.features = ConstituentFeatures(features)
        self.precision = FixedPoint.parse(precision, "model.precision")
        self.chain = uniform_chain(_plain((n_constituents * self.features.n_features, *hidden, n_class), negative_slope),
                                   self.precision)
        self.feature_dim = hidden[-1] if hidden else n_constituents * self.features.n_features

    @property
    def classifier(self) -> nn.Linear:
        return self.chain.net[-1]

    @property
    def input_features(self) -> tuple[str, ...]:
        return self.features.names

    def chains(self) -> dict[str, FixedPointChain]:
        return {"net": self.chain}

    def forward(self, p4: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.chain(flat_inputs(self.features(p4, mask), self.n_constituents))


class FixedDeepSet(nn.Module):
    """Deep set in ``precision``: phi per constituent, pT-weighted sum, rho to the logits (module docstring).

    Module paths: ``features``, ``phi.net``, ``rho.net`` (Linear/LeakyReLU), ``classifier`` (rho's last Linear).
    """

    def __init__(self, features: Sequence[str] = DEFAULT_FEATURES, phi_hidden: Sequence[int] = (16, 16, 16),
                 rho_hidden: Sequence[int] = (16, 16), n_class: int = 2, negative_slope: float = 0.01,
                 precision: str = "ap_fixed<16,6>"):
        super().__init__()
        self.n_class = n_class
        self.features = ConstituentFeatures(features)
        self.precision = FixedPoint.parse(precision, "model.precision")
        self.phi = uniform_chain(_plain((self.features.n_features, *phi_hidden), negative_slope), self.precision)
        self.rho = uniform_chain(_plain((phi_hidden[-1], *rho_hidden, n_class), negative_slope), self.precision)
        self.feature_dim = rho_hidden[-1] if rho_hidden else phi_hidden[-1]

    @property
    def classifier(self) -> nn.Linear:
        return self.rho.net[-1]

    @property
    def input_features(self) -> tuple[str, ...]:
        return self.features.names

    def chains(self) -> dict[str, FixedPointChain]:
        return {"phi": self.phi, "rho": self.rho}

    def inputs(self, p4: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """phi's inputs (B, N, F) and the pooling weights pT / pT_jet rounded to the input type (B, N); 0 on padding."""
        mask = mask.bool()
        x = self.features(p4, mask)
        weight = pooling_weights(x, self.features.names, p4, mask)
        return x, self.precision.quantize(weight.double() if not self.training else weight)

    def forward(self, p4: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x, weight = self.inputs(p4, mask)
        latent = self.phi(x)  # (B, N, C) on the grid
        pooled = (latent * weight[..., None].to(latent.dtype)).sum(1)  # exact in float64 (eval)
        return self.rho(pooled.float() if not self.training else pooled)
