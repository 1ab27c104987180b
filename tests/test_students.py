"""Student models and their input features: parameter counts, masking, invariances, hand-computed features."""

import math
from functools import partial

import pytest
import torch

from jetkd import lorentz
from jetkd.models.features import FEATURES, ConstituentFeatures, constituent_features
from jetkd.models.students import MLP, DeepSet, count_parameters

ALL_FEATURES = tuple(FEATURES)


def make_jets(n_jets=6, n_max=12, seed=0, dtype=torch.float32, spread=0.3, min_n=1):
    """Collimated jets: (p4 (B, N, 4) zero-padded and pT-ordered, mask (B, N)). Half the constituents massless."""
    g = torch.Generator().manual_seed(seed)
    n = torch.randint(min_n, n_max + 1, (n_jets,), generator=g)
    n[0] = n_max  # one full jet, so no column is all padding
    eta0 = torch.rand(n_jets, 1, generator=g, dtype=torch.float64) * 3 - 1.5
    phi0 = torch.rand(n_jets, 1, generator=g, dtype=torch.float64) * 2 * math.pi - math.pi
    pt = -20.0 * torch.log(torch.rand(n_jets, n_max, generator=g, dtype=torch.float64)) + 1.0  # GeV
    eta = eta0 + spread * torch.randn(n_jets, n_max, generator=g, dtype=torch.float64)
    phi = phi0 + spread * torch.randn(n_jets, n_max, generator=g, dtype=torch.float64)
    m = torch.where(torch.rand(n_jets, n_max, generator=g) < 0.5, 0.0, 0.1396).double()
    pt = pt.sort(-1, descending=True).values
    pz = pt * torch.sinh(eta)
    p4 = torch.stack([torch.sqrt((pt * torch.cosh(eta)) ** 2 + m**2), pt * torch.cos(phi), pt * torch.sin(phi), pz], -1)
    mask = torch.arange(n_max) < n[:, None]
    return (p4 * mask[..., None]).to(dtype), mask


def pad(p4, mask, extra):
    """Append ``extra`` zero-padded slots."""
    b = p4.shape[0]
    return torch.cat([p4, p4.new_zeros(b, extra, 4)], 1), torch.cat([mask, mask.new_zeros(b, extra)], 1)


def trained_like(model, seed=0):
    """``model`` in eval mode after a few train-mode passes, so the BatchNorm running statistics are not trivial."""
    torch.manual_seed(seed)
    model.train()
    with torch.no_grad():
        for s in range(3):
            model(*make_jets(32, 20, seed=100 + s))
    return model.eval()


TINY = [partial(MLP, n_constituents=16, hidden=(32,)), partial(DeepSet, phi_hidden=(16, 16), rho_hidden=(16,))]
# A massless constituent's m = sqrt(E^2 - p^2) is the square root of rounding noise: ~sqrt(1e-16 * (100 GeV)^2).
MASS_ATOL = 1e-5

SMALL = [partial(MLP, n_constituents=10, hidden=(16, 16)), partial(DeepSet, phi_hidden=(16, 16, 8), rho_hidden=(8, 8))]


# ----------------------------------------------------------------------------- parameter counts and structure


def test_default_parameter_counts_are_exact():
    assert count_parameters(MLP()) == 528_386
    assert count_parameters(DeepSet()) == 68_226
    assert MLP().n_inputs == 512


@pytest.mark.parametrize("make", TINY)
def test_trigger_sized_configs_are_a_few_thousand_parameters(make):
    model = make()
    n = count_parameters(model)
    print(f"{type(model).__name__}: {n} parameters")
    assert n <= 3000
    logits = model.eval()(*make_jets(4, 30))
    assert logits.shape == (4, 2)


@pytest.mark.parametrize("make", [MLP, DeepSet])
def test_named_modules_and_feature_dim(make):
    model = make(n_class=3).eval()
    assert model.n_class == 3
    assert model.classifier.in_features == model.feature_dim
    assert model.classifier.out_features == 3
    last = "blocks" if isinstance(model, MLP) else "rho"
    seen = {}
    model.get_submodule(last).register_forward_hook(lambda m, i, o: seen.update(last=o))
    if isinstance(model, DeepSet):
        model.phi.register_forward_hook(lambda m, i, o: seen.update(phi=o, phi_mask=i[1]))
    p4, mask = make_jets(5, 9)
    model(p4, mask)
    assert seen["last"].shape == (5, model.feature_dim)
    if isinstance(model, DeepSet):
        assert seen["phi"].shape == (5, 9, 128)
        assert torch.equal(seen["phi_mask"], mask)
        assert (seen["phi"][~mask] == 0).all()


# ----------------------------------------------------------------------------- model behaviour


@pytest.mark.parametrize("make", SMALL)
@pytest.mark.parametrize("n_class", [2, 5])
def test_output_shape(make, n_class):
    model = make(n_class=n_class)
    assert model.eval()(*make_jets(7, 13)).shape == (7, n_class)


@pytest.mark.parametrize("make", SMALL)
def test_eval_output_independent_of_padding_length_and_batch(make):
    model = trained_like(make())
    p4, mask = make_jets(6, 12, seed=1)
    with torch.no_grad():
        ref = model(p4, mask)
        torch.testing.assert_close(model(*pad(p4, mask, 7)), ref, rtol=1e-5, atol=1e-5)
        for i in range(len(p4)):  # each jet alone, trimmed to its own length
            n = int(mask[i].sum())
            alone = model(p4[i : i + 1, :n], mask[i : i + 1, :n])
            torch.testing.assert_close(alone, ref[i : i + 1], rtol=1e-5, atol=1e-5)
        other, other_mask = make_jets(5, 12, seed=2)
        mixed = model(torch.cat([other, p4]), torch.cat([other_mask, mask]))
        torch.testing.assert_close(mixed[5:], ref, rtol=1e-5, atol=1e-5)


def test_deepset_invariant_under_permutation_of_constituents():
    model = trained_like(DeepSet(phi_hidden=(16, 16, 8), rho_hidden=(8,)))
    p4, mask = make_jets(6, 12, seed=3)
    g = torch.Generator().manual_seed(0)
    perm = torch.stack([torch.randperm(12, generator=g) for _ in range(6)])  # mixes real and padded slots too
    p4_perm = torch.gather(p4, 1, perm[..., None].expand(-1, -1, 4))
    mask_perm = torch.gather(mask, 1, perm)
    with torch.no_grad():
        torch.testing.assert_close(model(p4_perm, mask_perm), model(p4, mask), rtol=1e-5, atol=1e-5)


def test_mlp_pads_short_jets_and_truncates_long_ones():
    model = trained_like(MLP(n_constituents=16, hidden=(32,)))
    p4, mask = make_jets(4, 5, seed=4)  # N = 5 < 16
    seen = {}
    model.blocks[0].register_forward_hook(lambda m, i, o: seen.update(x=i[0]))
    with torch.no_grad():
        short = model(p4, mask)
        assert seen["x"].shape == (4, 16 * 4)
        torch.testing.assert_close(seen["x"][:, : 5 * 4], constituent_features(p4, mask).flatten(1))
        assert (seen["x"][:, 5 * 4 :] == 0).all()
        torch.testing.assert_close(model(*pad(p4, mask, 11)), short)  # explicit padding to 16
        torch.testing.assert_close(model(*pad(p4, mask, 30)), short)  # padding beyond 16
        long_p4, long_mask = make_jets(3, 40, seed=5, min_n=30)  # truncation: the first 16 features enter
        model(long_p4, long_mask)
        torch.testing.assert_close(seen["x"], constituent_features(long_p4, long_mask)[:, :16].flatten(1))


@pytest.mark.parametrize("make", SMALL)
def test_train_forward_backward(make):
    model = make().train()
    p4, mask = make_jets(16, 12, seed=6)
    p4.requires_grad_(True)
    label = torch.arange(16) % 2
    loss = torch.nn.functional.cross_entropy(model(p4, mask), label)
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert torch.isfinite(p4.grad).all()
    assert (p4.grad[~mask] == 0).all()
    bn = model.blocks[0].bn if isinstance(model, MLP) else model.phi.blocks[0].bn
    assert int(bn.num_batches_tracked) == 1 and not torch.all(bn.running_mean == 0)


# ----------------------------------------------------------------------------- features


def test_unknown_feature_name_lists_valid_names():
    with pytest.raises(ValueError, match="valid names:.*rel_pt.*delta_r"):
        constituent_features(*make_jets(2, 3), names=("rel_pt", "pT_rel"))
    with pytest.raises(ValueError, match="pT_rel"):
        DeepSet(features=("pT_rel",))


def test_features_by_hand_on_a_two_constituent_jet():
    # c1 massless, c2 with m = 1 GeV, mirror images in (py, pz): the jet points along +x (eta = phi = 0).
    e1, e2 = math.sqrt(105.0), math.sqrt(106.0)
    p4 = torch.tensor([[[e1, 10.0, 1.0, 2.0], [e2, 10.0, -1.0, -2.0], [0, 0, 0, 0]]], dtype=torch.float64)
    mask = torch.tensor([[True, True, False]])
    x = constituent_features(p4, mask, ALL_FEATURES)
    f = {name: x[0, :, i] for i, name in enumerate(ALL_FEATURES)}
    pt, pt_jet, e_jet = math.sqrt(101.0), 20.0, e1 + e2
    deta, dphi = math.asinh(2 / pt), math.atan(0.1)
    expect = {
        "rel_pt": [pt / pt_jet, pt / pt_jet, 0],
        "deta": [deta, -deta, 0],
        "dphi": [dphi, -dphi, 0],
        "mass": [0.0, 1.0, 0],
        "delta_r": [math.hypot(deta, dphi)] * 2 + [0],
        "rel_e": [e1 / e_jet, e2 / e_jet, 0],
        "log_rel_pt": [math.log(pt / pt_jet)] * 2 + [0],
        "log_rel_e": [math.log(e1 / e_jet), math.log(e2 / e_jet), 0],
        "pt": [pt, pt, 0],
        "e": [e1, e2, 0],
        "log_pt": [math.log(pt)] * 2 + [0],
        "log_e": [math.log(e1), math.log(e2), 0],
    }
    assert set(expect) == set(ALL_FEATURES)
    for name, values in expect.items():
        torch.testing.assert_close(f[name], torch.tensor(values, dtype=torch.float64), msg=name)


def test_dphi_wraps_across_pi():
    # Constituents at phi = pi - 0.1 and -pi + 0.1 (approximately): the jet is at phi = pi.
    e = math.sqrt(101.0)
    p4 = torch.tensor([[[e, -10.0, 1.0, 0.0], [e, -10.0, -1.0, 0.0]]], dtype=torch.float64)
    dphi = constituent_features(p4, torch.ones(1, 2, dtype=torch.bool), ("dphi",))[0, :, 0]
    torch.testing.assert_close(dphi, torch.tensor([-math.atan(0.1), math.atan(0.1)], dtype=torch.float64))


def test_mass_is_clamped_at_zero_for_space_like_massless_particles():
    p4 = torch.tensor([[[10.0 - 1e-6, 6.0, 0.0, 8.0], [10.0, 6.0, 0.0, 8.0]]], dtype=torch.float64, requires_grad=True)
    assert lorentz.mass(p4)[0, 0] < 0
    m = constituent_features(p4, torch.ones(1, 2, dtype=torch.bool), ("mass",))
    assert (m == 0).all()
    m.sum().backward()
    assert torch.isfinite(p4.grad).all()


@pytest.mark.parametrize("angle", [0.7, -2.9])
def test_features_invariant_under_rotation_about_beam_axis(angle):
    p4, mask = make_jets(8, 15, seed=7, dtype=torch.float64)
    rotated = lorentz.rotate(p4, angle, (0, 0, 1))
    before, after = constituent_features(p4, mask, ALL_FEATURES), constituent_features(rotated, mask, ALL_FEATURES)
    for i, name in enumerate(ALL_FEATURES):
        atol = MASS_ATOL if name == "mass" else 1e-9
        torch.testing.assert_close(after[..., i], before[..., i], rtol=1e-9, atol=atol, msg=name)


@pytest.mark.parametrize("angle", [0.4, 2.0])
def test_rotation_about_jet_axis(angle):
    p4, mask = make_jets(8, 15, seed=8, dtype=torch.float64, spread=0.02)  # collimated: Delta R ~ 0.03
    axis = lorentz.jet_axis(p4, mask)[:, None, 1:]  # (B, 1, 3), one rotation axis per jet
    rotated = lorentz.rotate(p4, angle, axis)
    names = ("mass", "rel_e", "delta_r", "rel_pt")
    before, after = constituent_features(p4, mask, names), constituent_features(rotated, mask, names)
    torch.testing.assert_close(after[..., 0], before[..., 0], rtol=1e-9, atol=MASS_ATOL)  # mass: exact
    torch.testing.assert_close(after[..., 1], before[..., 1], rtol=1e-9, atol=1e-12)  # rel_e: exact
    dr, dr_rot = before[..., 2][mask], after[..., 2][mask]
    assert ((dr_rot - dr).abs() <= 0.05 * dr + 1e-6).all()  # delta_r: up to the curvature of (eta, phi)
    assert not torch.allclose(after[..., 3], before[..., 3], atol=1e-4)  # rel_pt is not invariant


def test_zero_padding_gives_zero_features_and_finite_gradients():
    p4, mask = make_jets(5, 10, seed=9, dtype=torch.float64)
    p4, mask = pad(p4, mask, 3)
    p4[1], mask[1] = 0.0, False  # jet without real constituents
    mask[2, 1:] = False
    p4[2, 1:] = 0.0  # single-constituent jet: deta = dphi = delta_r = 0
    p4[3, 0, 0] = lorentz.p_abs(p4[3, 0])  # an exactly massless constituent (m2 == 0)
    p4.requires_grad_(True)
    x = constituent_features(p4, mask, ALL_FEATURES)
    assert (x[~mask] == 0).all()
    assert torch.isfinite(x).all()
    torch.testing.assert_close(x[2, 0, [1, 2, 4]], torch.zeros(3, dtype=torch.float64))  # deta, dphi, delta_r alone
    (x * torch.randn_like(x)).sum().backward()
    assert torch.isfinite(p4.grad).all()
    assert (p4.grad[~mask] == 0).all()
    for model in (MLP(n_constituents=8, hidden=(8,)), DeepSet(phi_hidden=(8, 8), rho_hidden=(8,))):
        assert torch.isfinite(model.eval().double()(p4, mask)).all()


def test_feature_module_matches_function():
    p4, mask = make_jets(3, 6, seed=10)
    module = ConstituentFeatures(("log_pt", "delta_r"))
    assert module.n_features == 2
    torch.testing.assert_close(module(p4, mask), constituent_features(p4, mask, ("log_pt", "delta_r")))


@pytest.mark.parametrize("spec", [{"name": "mlp", "n_constituents": 12, "hidden": [32, 16]},
                                  {"name": "deepset", "phi_hidden": [16, 16, 8], "rho_hidden": [16, 8]},
                                  {"name": "deepset", "features": ["deta", "dphi", "log_pt"], "phi_hidden": [8],
                                   "rho_hidden": [8]}])
def test_folded_inference_form_equals_the_plain_model(spec):
    """BatchNorms folded into the Linears (jetkd.models.folded): the same logits as the eval-mode plain model."""
    from jetkd.models import build_model
    from jetkd.models.folded import fold

    model = trained_like(build_model(spec))
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)):
        torch.nn.init.uniform_(bn.weight, 0.5, 2.0)
        torch.nn.init.uniform_(bn.bias, -0.5, 0.5)
    p4, mask = make_jets(64, 20, seed=3)
    folded = fold(model)
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in folded.modules())
    with torch.no_grad():
        torch.testing.assert_close(folded(p4, mask), model(p4, mask), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(folded(p4[:, :15], mask[:, :15]), model(p4[:, :15], mask[:, :15]), rtol=1e-5, atol=1e-5)
