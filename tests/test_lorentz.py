"""Four-vector algebra: invariants under boosts/rotations, inverses, and agreement with ``vector``."""

import math

import awkward as ak
import numpy as np
import pytest
import torch
import vector

from jetkd import lorentz


def random_p4(shape, seed=0, dtype=torch.float64):
    """Random time-like four-vectors (m in [0, 5] GeV, |p| up to ~500 GeV), [E, px, py, pz]."""
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(*shape, 3, generator=g, dtype=dtype) * 150
    m = torch.rand(*shape, generator=g, dtype=dtype) * 5
    e = torch.sqrt((p * p).sum(-1) + m * m)
    return torch.cat([e[..., None], p], -1)


def all_pair_products(p4):
    return lorentz.minkowski_dot(p4[..., :, None, :], p4[..., None, :, :])


AXES = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (0.3, -0.5, 0.8)]


@pytest.mark.parametrize("axis", AXES)
@pytest.mark.parametrize("beta", [0.0, 0.3, 0.95, 0.999])
def test_boost_preserves_minkowski_products(beta, axis):
    p4 = random_p4((8, 16))
    boosted = lorentz.boost(p4, beta, axis)
    before, after = all_pair_products(p4), all_pair_products(boosted)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-6 * before.abs().max().item())
    if beta > 0:
        assert not torch.allclose(boosted, p4)


@pytest.mark.parametrize("axis", AXES)
def test_rotation_preserves_minkowski_products_and_energy(axis):
    p4 = random_p4((8, 16), seed=1)
    rotated = lorentz.rotate(p4, 1.234, axis)
    torch.testing.assert_close(all_pair_products(rotated), all_pair_products(p4), rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(rotated[..., 0], p4[..., 0])
    torch.testing.assert_close(lorentz.p_abs(rotated), lorentz.p_abs(p4))


@pytest.mark.parametrize("axis", AXES)
def test_boost_then_inverse_is_identity(axis):
    p4 = random_p4((4, 10), seed=2)
    back = lorentz.boost(lorentz.boost(p4, 0.9, axis), -0.9, axis)
    torch.testing.assert_close(back, p4, rtol=1e-9, atol=1e-9)


def test_boost_moves_rest_mass_with_velocity_beta_along_axis():
    at_rest = torch.tensor([[2.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    moving = lorentz.boost(at_rest, 0.6, (0, 0, 1))
    e, pz = moving[0, 0].item(), moving[0, 3].item()
    assert pz / e == pytest.approx(0.6)
    assert e == pytest.approx(2.0 / math.sqrt(1 - 0.36))


def test_boost_per_sample_beta_and_padding():
    p4 = random_p4((3, 5), seed=3)
    p4[:, 3:] = 0.0  # padding
    beta = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    out = lorentz.boost(p4, beta[:, None], (1, 0, 0))
    for i in range(3):
        torch.testing.assert_close(out[i], lorentz.boost(p4[i], beta[i].item(), (1, 0, 0)))
    assert torch.all(out[:, 3:] == 0)


@pytest.mark.parametrize("beta", [1.0, 1.5, -1.0])
def test_boost_rejects_superluminal_beta(beta):
    with pytest.raises(ValueError, match="beta"):
        lorentz.boost(random_p4((2,)), beta)


def test_zero_axis_is_an_error():
    with pytest.raises(ValueError, match="axis"):
        lorentz.boost(random_p4((2,)), 0.5, (0, 0, 0))


def test_matrices_compose_and_match_functions():
    p4 = random_p4((6,), seed=4)
    L = lorentz.boost_matrix(0.7, (1, 1, 0)) @ lorentz.rotation_matrix(0.4, (0, 0, 1))
    expected = lorentz.boost(lorentz.rotate(p4, 0.4, (0, 0, 1)), 0.7, (1, 1, 0))
    torch.testing.assert_close(lorentz.transform(p4, L), expected)
    g = torch.diag(torch.tensor([1.0, -1.0, -1.0, -1.0], dtype=torch.float64))
    torch.testing.assert_close(L.T @ g @ L, g)  # L preserves the metric


def test_kinematics_agree_with_vector():
    p4 = random_p4((200,), seed=5).numpy()
    v = vector.array({"E": p4[:, 0], "px": p4[:, 1], "py": p4[:, 2], "pz": p4[:, 3]})
    np.testing.assert_allclose(lorentz.pt(p4), v.pt, rtol=1e-12)
    np.testing.assert_allclose(lorentz.eta(p4), v.eta, rtol=1e-10)
    np.testing.assert_allclose(lorentz.phi(p4), v.phi, rtol=1e-12)
    np.testing.assert_allclose(lorentz.rapidity(p4), v.rapidity, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(lorentz.mass(p4), v.mass, rtol=1e-6, atol=1e-9)
    t = torch.from_numpy(p4)
    for fn in (lorentz.pt, lorentz.eta, lorentz.phi, lorentz.rapidity, lorentz.mass):
        np.testing.assert_allclose(fn(t).numpy(), fn(p4), rtol=1e-12, atol=1e-12)


def test_spacelike_mass_is_negative_like_vector():
    p4 = np.array([[1.0, 2.0, 0.0, 0.0]])
    v = vector.array({"E": p4[:, 0], "px": p4[:, 1], "py": p4[:, 2], "pz": p4[:, 3]})
    np.testing.assert_allclose(lorentz.mass(p4), v.mass)


def test_kinematics_on_awkward_records():
    jagged = ak.zip(
        {"px": [[1.0, 2.0], [3.0]], "py": [[0.5, -1.0], [0.0]], "pz": [[4.0, 0.0], [-2.0]], "E": [[5.0, 3.0], [4.0]]}
    )
    flat = np.array([[5.0, 1.0, 0.5, 4.0], [3.0, 2.0, -1.0, 0.0], [4.0, 3.0, 0.0, -2.0]])
    for fn in (lorentz.pt, lorentz.eta, lorentz.phi, lorentz.mass):
        np.testing.assert_allclose(ak.to_numpy(ak.flatten(fn(jagged))), fn(flat))


def test_wrap_phi_range():
    x = torch.linspace(-20, 20, 1001, dtype=torch.float64)
    w = lorentz.wrap_phi(x)
    assert torch.all(w >= -math.pi) and torch.all(w < math.pi)
    torch.testing.assert_close(torch.cos(w), torch.cos(x))
    assert lorentz.wrap_phi(torch.tensor(math.pi)).item() == pytest.approx(-math.pi)


def test_jet_axis_and_relative_coordinates_with_mask():
    p4 = random_p4((4, 12), seed=6)
    mask = torch.arange(12)[None, :] < torch.tensor([12, 7, 3, 1])[:, None]
    p4 = p4 * mask[..., None]
    axis = lorentz.jet_axis(p4, mask)
    for i, n in enumerate([12, 7, 3, 1]):
        torch.testing.assert_close(axis[i], p4[i, :n].sum(0))
    deta, dphi = lorentz.relative_eta_phi(p4, mask)
    assert torch.isfinite(deta).all() and torch.isfinite(dphi).all()
    assert torch.all(deta[~mask] == 0) and torch.all(dphi[~mask] == 0)
    assert torch.all(dphi >= -math.pi) and torch.all(dphi < math.pi)
    expected_dphi = lorentz.wrap_phi(lorentz.phi(p4[1, :7]) - lorentz.phi(axis[1]))
    torch.testing.assert_close(dphi[1, :7], expected_dphi)
    torch.testing.assert_close(deta[1, :7], lorentz.eta(p4[1, :7]) - lorentz.eta(axis[1]))


def test_relative_coordinates_invariant_under_rotation_about_jet_axis():
    p4 = random_p4((1, 30), seed=7)
    p4[..., 1] += 600.0  # a collimated jet along +x
    axis = lorentz.jet_axis(p4)[0, 1:]
    rotated = lorentz.rotate(p4, 0.8, axis)
    torch.testing.assert_close(lorentz.jet_axis(rotated), lorentz.jet_axis(p4))
    # dR^2 to the axis is invariant to first order in the small angles; sum of pT-weighted dR^2 to <1%
    d1 = torch.stack(lorentz.relative_eta_phi(p4)).pow(2).sum(0)
    d2 = torch.stack(lorentz.relative_eta_phi(rotated)).pow(2).sum(0)
    torch.testing.assert_close(d2.sum(), d1.sum(), rtol=2e-2, atol=0)
