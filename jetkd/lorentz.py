"""Four-vector algebra: Minkowski products, kinematics, jet axis, boosts and rotations.

The one place where jetkd does relativistic kinematics; everything else calls it.

Conventions
    four-vectors ``p4`` are ``(..., 4)`` arrays ``[E, px, py, pz]`` in GeV, metric (+, -, -, -);
    angles in radians; ``phi`` and phi differences in ``[-pi, pi)``.

Every function takes torch tensors or numpy arrays of that shape and returns the same kind.
The kinematic functions (``pt``, ``eta``, ``phi``, ``rapidity``, ``mass``, ...) also take awkward
record arrays with fields ``E, px, py, pz`` (the readers' jagged form). Padded constituents are
handled by a boolean ``mask`` of shape ``(..., N)``: masked entries add nothing to sums and get 0
for derived angles, so nothing downstream sees NaN from zero padding.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np

Array = Any  # torch.Tensor | np.ndarray | ak.Array

# ----------------------------------------------------------------------------- plumbing


def _xp(x: Array):
    """The array namespace for ``x``: torch for tensors, numpy otherwise (awkward dispatches numpy ufuncs).

    torch is never imported here (a tensor can only exist once it is), so numpy users such as the
    generator's worker processes start fast."""
    torch = sys.modules.get("torch")
    return torch if torch is not None and isinstance(x, torch.Tensor) else np


def components(p4: Array) -> tuple[Array, Array, Array, Array]:
    """``(E, px, py, pz)`` of ``p4``: a ``(..., 4)`` array or an awkward record with those fields."""
    if hasattr(p4, "fields") and "E" in getattr(p4, "fields", ()):
        return p4.E, p4.px, p4.py, p4.pz
    return p4[..., 0], p4[..., 1], p4[..., 2], p4[..., 3]


def _stack(xp, parts) -> Array:
    return np.stack(parts, axis=-1) if xp is np else xp.stack(parts, dim=-1)


def _like(xp, value, ref: Array) -> Array:
    """``value`` as an array of ``ref``'s kind, dtype and device."""
    if xp is np:
        return np.asarray(value, dtype=ref.dtype)
    return xp.as_tensor(value, dtype=ref.dtype, device=ref.device)


def _unit_axis(xp, axis, ref: Array) -> tuple[Array, Array, Array]:
    """Components of ``axis`` (shape ``(3,)`` or broadcastable to ``(..., 3)``), normalised to unit length."""
    n = _like(xp, axis, ref)
    norm = (n * n).sum(-1) ** 0.5
    if bool((norm == 0).any()):
        raise ValueError(f"axis must be a non-zero 3-vector, got {axis!r}")
    n = n / norm[..., None]
    return n[..., 0], n[..., 1], n[..., 2]


# ----------------------------------------------------------------------------- products and kinematics


def minkowski_dot(a: Array, b: Array) -> Array:
    """``a . b = a_E b_E - a_vec . b_vec`` for ``(..., 4)`` arrays; shape ``(...)``."""
    ea, xa, ya, za = components(a)
    eb, xb, yb, zb = components(b)
    return ea * eb - xa * xb - ya * yb - za * zb


def mass2(p4: Array) -> Array:
    """Invariant mass squared ``p . p`` in GeV^2, shape ``(...)``."""
    return minkowski_dot(p4, p4)


def mass(p4: Array) -> Array:
    """Invariant mass in GeV: ``sqrt(m2)``, negative ``-sqrt(-m2)`` for space-like vectors (as ``vector`` does)."""
    xp = _xp(p4)
    m2 = mass2(p4)
    return xp.sign(m2) * xp.sqrt(xp.abs(m2))


def pt(p4: Array) -> Array:
    """Transverse momentum ``sqrt(px^2 + py^2)`` in GeV."""
    _, px, py, _ = components(p4)
    return _xp(px).sqrt(px * px + py * py)


def p_abs(p4: Array) -> Array:
    """Magnitude of the three-momentum ``|p|`` in GeV."""
    _, px, py, pz = components(p4)
    return _xp(px).sqrt(px * px + py * py + pz * pz)


def phi(p4: Array) -> Array:
    """Azimuth ``atan2(py, px)`` in ``[-pi, pi]``."""
    _, px, py, _ = components(p4)
    return _xp(px).arctan2(py, px)


def eta(p4: Array) -> Array:
    """Pseudorapidity ``asinh(pz / pt)``; +-inf along the beam axis."""
    _, px, py, pz = components(p4)
    xp = _xp(px)
    with np.errstate(divide="ignore", invalid="ignore"):
        return xp.arcsinh(pz / xp.sqrt(px * px + py * py))


def rapidity(p4: Array) -> Array:
    """Rapidity ``0.5 * log((E + pz) / (E - pz))``."""
    e, _, _, pz = components(p4)
    xp = _xp(e)
    with np.errstate(divide="ignore", invalid="ignore"):
        return 0.5 * xp.log((e + pz) / (e - pz))


def wrap_phi(dphi: Array) -> Array:
    """Map angles to ``[-pi, pi)``."""
    return (dphi + math.pi) % (2 * math.pi) - math.pi


# ----------------------------------------------------------------------------- jets


def jet_axis(p4: Array, mask: Array | None = None) -> Array:
    """E-scheme jet four-vector: the sum of the (unmasked) constituents.

    p4: (..., N, 4); mask: (..., N) bool or None (all real). Returns (..., 4).
    """
    if mask is not None:
        p4 = p4 * mask[..., None]
    return p4.sum(-2)


def relative_eta_phi(p4: Array, mask: Array | None = None, axis: Array | None = None) -> tuple[Array, Array]:
    """Constituent pseudorapidity and azimuth relative to the jet axis.

    p4: (..., N, 4); mask: (..., N) bool; axis: (..., 4) jet four-vector (default: ``jet_axis(p4, mask)``).
    Returns ``(delta_eta, delta_phi)``, each (..., N), delta_phi in ``[-pi, pi)``; 0 where masked.
    """
    xp = _xp(p4)
    if axis is None:
        axis = jet_axis(p4, mask)
    deta = eta(p4) - eta(axis)[..., None]
    dphi = wrap_phi(phi(p4) - phi(axis)[..., None])
    if mask is None:
        return deta, dphi
    zero = _like(xp, 0.0, deta)
    return xp.where(mask, deta, zero), xp.where(mask, dphi, zero)


# ----------------------------------------------------------------------------- transformations


def boost(p4: Array, beta: float | Array, axis=(1.0, 0.0, 0.0)) -> Array:
    """Active Lorentz boost: a particle at rest ends up moving with velocity ``beta`` along ``axis``.

    p4: (..., 4). beta: float or array broadcastable to ``p4[..., 0]``, ``|beta| < 1``
    (``boost(boost(p, b), -b) == p``). axis: (3,) or broadcastable to ``p4[..., 1:]``; normalised here.
    Returns an array like ``p4``; zero padding stays zero.
    """
    xp = _xp(p4)
    beta = _like(xp, beta, p4)
    if bool((xp.abs(beta) >= 1).any()):
        raise ValueError(f"boost needs |beta| < 1, got max |beta| = {float(xp.abs(beta).max()):.6g}")
    nx, ny, nz = _unit_axis(xp, axis, p4)
    e, px, py, pz = components(p4)
    gamma = 1.0 / xp.sqrt(1.0 - beta * beta)
    n_dot_p = nx * px + ny * py + nz * pz
    shift = (gamma - 1.0) * n_dot_p + gamma * beta * e
    return _stack(xp, [gamma * (e + beta * n_dot_p), px + shift * nx, py + shift * ny, pz + shift * nz])


def rotate(p4: Array, angle: float | Array, axis=(0.0, 0.0, 1.0)) -> Array:
    """Rotate the three-momentum by ``angle`` (radians, right-handed) about ``axis``; E unchanged.

    p4: (..., 4). angle: float or array broadcastable to ``p4[..., 0]``. axis: as for :func:`boost`.
    """
    xp = _xp(p4)
    angle = _like(xp, angle, p4)
    kx, ky, kz = _unit_axis(xp, axis, p4)
    e, px, py, pz = components(p4)
    c, s = xp.cos(angle), xp.sin(angle)
    k_dot_p = (kx * px + ky * py + kz * pz) * (1.0 - c)
    # Rodrigues: p cos + (k x p) sin + k (k . p)(1 - cos)
    return _stack(
        xp,
        [
            e + 0.0 * c,
            px * c + (ky * pz - kz * py) * s + kx * k_dot_p,
            py * c + (kz * px - kx * pz) * s + ky * k_dot_p,
            pz * c + (kx * py - ky * px) * s + kz * k_dot_p,
        ],
    )


def boost_matrix(beta: float, axis=(1.0, 0.0, 0.0), dtype=None):
    """The (4, 4) float64 torch matrix ``L`` of :func:`boost`, acting as ``p4 @ L.T``."""
    import torch

    return boost(torch.eye(4, dtype=dtype or torch.float64), beta, axis).T


def rotation_matrix(angle: float, axis=(0.0, 0.0, 1.0), dtype=None):
    """The (4, 4) float64 torch matrix ``R`` of :func:`rotate`, acting as ``p4 @ R.T``."""
    import torch

    return rotate(torch.eye(4, dtype=dtype or torch.float64), angle, axis).T


def transform(p4: Array, matrix: Array) -> Array:
    """Apply a (4, 4) Lorentz matrix (e.g. a product of :func:`boost_matrix` and :func:`rotation_matrix`)."""
    return p4 @ _like(_xp(p4), matrix, p4).T
