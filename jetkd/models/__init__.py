"""Jet models. Each takes raw four-vectors and computes its own inputs: ``model(p4, mask) -> logits``.

p4: (B, N, 4) float32 ``[E, px, py, pz]`` in GeV, zero-padded; mask: (B, N) bool; logits: (B, n_class).
"""

from __future__ import annotations

from torch import nn

from jetkd.models.fixed import FixedDeepSet, FixedMLP
from jetkd.models.lorentznet import LorentzNet
from jetkd.models.students import MLP, DeepSet

MODELS: dict[str, type[nn.Module]] = {"lorentznet": LorentzNet, "mlp": MLP, "deepset": DeepSet,
                                      "mlp_fixed": FixedMLP, "deepset_fixed": FixedDeepSet}


def build_model(spec: dict) -> nn.Module:
    """A model from a config section: ``{"name": "deepset", **constructor_arguments}``."""
    args = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.items() if k != "name"}
    return MODELS[spec["name"]](**args)
