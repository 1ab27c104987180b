"""The model registry: jet models and image models, built from a config's ``model:`` section.

Jet models take raw four-vectors and compute their own inputs: ``model(p4, mask) -> logits``, p4: (B, N, 4) float32
``[E, px, py, pz]`` in GeV, zero-padded; mask: (B, N) bool; logits: (B, n_class). Image models
(:mod:`jetkd.images.models`) take ``model(images) -> logits``, images (B, C, H, W) float32, normalised.
"""

from __future__ import annotations

from torch import nn

from jetkd.images.models import IMAGE_MODELS
from jetkd.models.fixed import FixedDeepSet, FixedMLP
from jetkd.models.lorentznet import LorentzNet
from jetkd.models.students import MLP, DeepSet

MODELS: dict[str, type[nn.Module]] = {"lorentznet": LorentzNet, "mlp": MLP, "deepset": DeepSet,
                                      "mlp_fixed": FixedMLP, "deepset_fixed": FixedDeepSet, **IMAGE_MODELS}


def build_model(spec: dict) -> nn.Module:
    """A model from a config section: ``{"name": "deepset", **constructor_arguments}``."""
    args = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.items() if k != "name"}
    return MODELS[spec["name"]](**args)
