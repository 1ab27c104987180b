"""Per-constituent input features of the student models, computed on the fly from raw four-vectors.

Every student owns its preprocessing: it takes ``p4`` (B, N, 4) ``[E, px, py, pz]`` in GeV and a mask, and
turns them into a (B, N, F) feature tensor here. So a boosted ``p4`` feeds teacher and students alike and an
exported student carries its preprocessing.

The jet is the E-scheme sum of *all* real constituents (``lorentz.jet_axis``), also for a student that reads
only the first few. Available features (``FEATURES``; units in brackets):

    rel_pt      pT / pT_jet, pT_jet the transverse momentum of the jet four-vector     [1]
    deta        eta - eta_jet                                                           [1]
    dphi        phi - phi_jet, wrapped to [-pi, pi)                                     [rad]
    mass        constituent mass, 0 for (numerically) space-like massless particles     [GeV]
    delta_r     sqrt(deta^2 + dphi^2)                                                   [1]
    rel_e       E / E_jet                                                               [1]
    log_rel_pt  log(pT / pT_jet)                                                        [1]
    log_rel_e   log(E / E_jet)                                                          [1]
    pt          pT                                                                      [GeV]
    e           E                                                                       [GeV]
    log_pt      log(pT / GeV)                                                           [1]
    log_e       log(E / GeV)                                                            [1]

Padding never produces NaN, neither in the features (0 at masked entries) nor in gradients w.r.t. ``p4``:
padded entries are swapped for a harmless dummy vector before any kinematics and masked afterwards.
"""

from __future__ import annotations

from functools import cached_property
from typing import Callable, Sequence

import torch
from torch import nn

from jetkd import lorentz

DEFAULT_FEATURES = ("rel_pt", "deta", "dphi", "mass")

# A massless unit vector along x (pT = E = 1 GeV, eta = phi = 0): what padded entries, and the axis of a jet
# without real constituents, are replaced by so that no kinematic function sees a zero vector.
_DUMMY = (1.0, 1.0, 0.0, 0.0)


def _safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """``sqrt(max(x, 0))`` with a finite (zero) gradient at and below 0."""
    pos = x > 0
    return torch.where(pos, torch.sqrt(torch.where(pos, x, torch.ones_like(x))), torch.zeros_like(x))


class _Kinematics:
    """Lazily computed per-constituent and per-jet quantities shared by the feature functions.

    p4: (B, N, 4) GeV; mask: (B, N) bool. Per-constituent attributes are (B, N), per-jet ones (B, 1).
    """

    def __init__(self, p4: torch.Tensor, mask: torch.Tensor):
        dummy = p4.new_tensor(_DUMMY)
        self.mask = mask
        self.p4 = torch.where(mask[..., None], p4, dummy)
        axis = lorentz.jet_axis(self.p4, mask)
        self.axis = torch.where(mask.any(-1, keepdim=True), axis, dummy)  # (B, 4)

    @cached_property
    def pt(self) -> torch.Tensor:
        return lorentz.pt(self.p4)

    @cached_property
    def e(self) -> torch.Tensor:
        return self.p4[..., 0]

    @cached_property
    def pt_jet(self) -> torch.Tensor:
        return lorentz.pt(self.axis)[..., None]

    @cached_property
    def e_jet(self) -> torch.Tensor:
        return self.axis[..., :1]

    @cached_property
    def deta_dphi(self) -> tuple[torch.Tensor, torch.Tensor]:
        return lorentz.relative_eta_phi(self.p4, self.mask, self.axis)

    @cached_property
    def mass(self) -> torch.Tensor:
        # == lorentz.mass(p4).clamp(min=0), but with a finite gradient for massless particles (m2 == 0).
        return _safe_sqrt(lorentz.mass2(self.p4))


FEATURES: dict[str, Callable[[_Kinematics], torch.Tensor]] = {
    "rel_pt": lambda k: k.pt / k.pt_jet,
    "deta": lambda k: k.deta_dphi[0],
    "dphi": lambda k: k.deta_dphi[1],
    "mass": lambda k: k.mass,
    "delta_r": lambda k: _safe_sqrt(k.deta_dphi[0] ** 2 + k.deta_dphi[1] ** 2),
    "rel_e": lambda k: k.e / k.e_jet,
    "log_rel_pt": lambda k: torch.log(k.pt / k.pt_jet),
    "log_rel_e": lambda k: torch.log(k.e / k.e_jet),
    "pt": lambda k: k.pt,
    "e": lambda k: k.e,
    "log_pt": lambda k: torch.log(k.pt),
    "log_e": lambda k: torch.log(k.e),
}


def check_feature_names(names: Sequence[str]) -> tuple[str, ...]:
    """``names`` as a tuple; ``ValueError`` naming the valid features if one is unknown or none is given."""
    if isinstance(names, str):
        names = (names,)
    names = tuple(names)
    unknown = [n for n in names if n not in FEATURES]
    if unknown or not names:
        what = f"unknown feature(s) {unknown}" if unknown else "no features given"
        raise ValueError(f"{what}; valid names: {', '.join(FEATURES)}")
    return names


def constituent_features(
    p4: torch.Tensor, mask: torch.Tensor, names: Sequence[str] = DEFAULT_FEATURES
) -> torch.Tensor:
    """Per-constituent features relative to the (E-scheme) jet.

    p4: (B, N, 4) ``[E, px, py, pz]`` in GeV, zero-padded; mask: (B, N) bool, True for real constituents.
    names: feature names from ``FEATURES``, in output order.
    Returns (B, N, F) in ``p4``'s dtype, 0 where ``mask`` is False.
    """
    names = check_feature_names(names)
    if p4.shape[-1] != 4 or p4.shape[:-1] != mask.shape:
        raise ValueError(f"need p4 (B, N, 4) and mask (B, N), got {tuple(p4.shape)} and {tuple(mask.shape)}")
    mask = mask.bool()
    kin = _Kinematics(p4, mask)
    x = torch.stack([FEATURES[n](kin) for n in names], dim=-1)
    return torch.where(mask[..., None], x, torch.zeros_like(x))


class ConstituentFeatures(nn.Module):
    """:func:`constituent_features` as a module (no parameters), so it is part of the model and hookable.

    forward(p4 (B, N, 4) GeV, mask (B, N) bool) -> (B, N, F), F = ``n_features``.
    """

    def __init__(self, names: Sequence[str] = DEFAULT_FEATURES):
        super().__init__()
        self.names = check_feature_names(names)

    @property
    def n_features(self) -> int:
        return len(self.names)

    def forward(self, p4: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return constituent_features(p4, mask, self.names)

    def extra_repr(self) -> str:
        return f"names={self.names}"
