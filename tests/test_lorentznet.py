"""LorentzNet teacher: parity with the published checkpoint, physics invariances, the same math as the
original edge-list formulation, and a training step."""

import importlib.util
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from jetkd import lorentz
from jetkd.models.lorentznet import BEAMS, LorentzNet, load_published

from helpers import assert_same, assert_same_training_step  # tests/helpers.py

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("JETKD_REFERENCE", ROOT / "../shared/reference"))
CHECKPOINT = REFERENCE / "lorentznet_top_pretrained.pt"
PARITY = REFERENCE / "lorentznet_top_parity.npz"
needs_reference = pytest.mark.skipif(
    not (CHECKPOINT.exists() and PARITY.exists()),
    reason=f"published LorentzNet checkpoint / parity data not found in {REFERENCE} (set JETKD_REFERENCE)")


# ----------------------------------------------------------------------------- helpers


def random_jets(n_jets=6, n_max=24, seed=0, dtype=torch.float64, p_scale=40.0):
    """Massive constituents (m in [0, 2] GeV, |p| ~ p_scale GeV), 3..n_max per jet, zero-padded."""
    g = torch.Generator().manual_seed(seed)
    n = torch.randint(3, n_max + 1, (n_jets,), generator=g)
    n[0] = n_max
    p = torch.randn(n_jets, n_max, 3, generator=g, dtype=dtype) * p_scale / 2 + torch.tensor([p_scale, 0, 0], dtype=dtype)
    m = torch.rand(n_jets, n_max, generator=g, dtype=dtype) * 2
    p4 = torch.cat([torch.sqrt((p * p).sum(-1, keepdim=True) + m[..., None] ** 2), p], -1)
    mask = torch.arange(n_max) < n[:, None]
    return p4 * mask[..., None], mask


def equivariance_model(seed=0):
    """A float64 eval-mode LorentzNet whose coordinate updates matter (larger phi_x output, c_weight) yet stay
    inside the +-100 clamp for :func:`random_jets` (the clamp, where active, breaks exact equivariance)."""
    torch.manual_seed(seed)
    model = LorentzNet(n_hidden=16, n_layers=3, c_weight=0.5).double().eval()
    for block in model.LGEBs[:-1]:  # |(x_i - x_j) phi_x| stays below ~50 here, boosted by 0.9 too
        torch.nn.init.normal_(block.phi_x[2].weight, std=0.3)
    return model


@pytest.fixture(scope="module")
def published():
    return load_published(CHECKPOINT)


@pytest.fixture(scope="module")
def parity():
    data = np.load(PARITY)
    return torch.from_numpy(data["Pmu"]), torch.from_numpy(data["Nobj"]), torch.from_numpy(data["logits_single"])


def jets(pmu, nobj, idx, pad_to=None):
    """Jets ``idx`` of the parity set, padded to their own longest (or to ``pad_to``)."""
    n = nobj[idx]
    length = int(n.max()) if pad_to is None else pad_to
    p4 = torch.zeros(len(idx), length, 4)
    keep = min(length, pmu.shape[1])
    p4[:, :keep] = pmu[idx, :keep]
    mask = torch.arange(length) < n[:, None]
    return p4 * mask[..., None], mask


# ----------------------------------------------------------------------------- parity with the published model


@needs_reference
def test_published_checkpoint_keys_map_one_to_one(published):
    state = torch.load(CHECKPOINT, map_location="cpu", weights_only=True)
    assert {k.removeprefix("module.") for k in state} == set(published.state_dict())
    assert not published.training and not hasattr(published.LGEBs[5], "phi_x")


@needs_reference
@pytest.mark.parametrize("pad_to", [200, 230])
def test_parity_all_jets_one_batch(published, parity, pad_to):
    pmu, nobj, ref = parity
    with torch.no_grad():
        logits = published(*jets(pmu, nobj, torch.arange(64), pad_to=pad_to))
    torch.testing.assert_close(logits, ref, rtol=0, atol=1e-3)


@needs_reference
def test_parity_shuffled_batches_of_16(published, parity):
    pmu, nobj, ref = parity
    order = torch.randperm(64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        for idx in order.split(16):
            torch.testing.assert_close(published(*jets(pmu, nobj, idx)), ref[idx], rtol=0, atol=1e-3)


@needs_reference
def test_parity_single_jets_without_padding(published, parity):
    pmu, nobj, ref = parity
    with torch.no_grad():
        for k in [0, 21, 50, 63]:  # 103, 25, 100 and 60 constituents
            torch.testing.assert_close(published(*jets(pmu, nobj, torch.tensor([k]))), ref[k : k + 1], rtol=0, atol=1e-3)


# ----------------------------------------------------------------------------- invariances (float64, eval mode)

LORENTZ = [(0.5, (1.0, 0.0, 0.0), 0.3, (0.0, 0.0, 1.0)),
           (0.7, (0.3, -0.5, 0.8), 1.1, (1.0, 2.0, -0.5)),
           (0.9, (0.0, 0.0, 1.0), 2.5, (0.0, 1.0, 0.0)),
           (0.9, (-0.6, 0.2, -0.3), -0.8, (1.0, 1.0, 1.0))]


@pytest.mark.parametrize("beta, boost_axis, angle, rot_axis", LORENTZ)
def test_invariant_under_lorentz_transformation_of_constituents_and_beams(beta, boost_axis, angle, rot_axis):
    model = equivariance_model()
    p4, mask = random_jets()
    L = lorentz.boost_matrix(beta, boost_axis) @ lorentz.rotation_matrix(angle, rot_axis)
    beams = torch.tensor(BEAMS, dtype=torch.float64)
    with torch.no_grad():
        before = model(p4, mask)
        after = model(lorentz.transform(p4, L), mask, beams=lorentz.transform(beams, L))
        per_jet_beams = lorentz.transform(beams, L).expand(len(p4), 2, 4)
        after_batched_beams = model(lorentz.transform(p4, L), mask, beams=per_jet_beams)
    assert_same(after, before)
    assert_same(after_batched_beams, before)


def test_coordinate_updates_matter_in_the_equivariance_model():
    """Guards the test above: the coordinate updates it exercises change the output."""
    model = equivariance_model()
    p4, mask = random_jets()
    with torch.no_grad():
        before = model(p4, mask)
        for block in model.LGEBs[:-1]:
            block.c_weight = 0.0
        assert (model(p4, mask) - before).abs().max() > 3e-3 * before.abs().max()


@pytest.mark.parametrize("angle", [0.4, 2.0, -2.9])
def test_invariant_under_rotation_about_beam_axis_with_fixed_beams(angle):
    model = equivariance_model(seed=1)
    p4, mask = random_jets(seed=1)
    with torch.no_grad():
        assert_same(model(lorentz.rotate(p4, angle, (0, 0, 1)), mask), model(p4, mask))


def test_boosting_constituents_only_changes_output():
    model = equivariance_model(seed=2)
    p4, mask = random_jets(seed=2)
    with torch.no_grad():
        before = model(p4, mask)
        for beta, axis in [(0.5, (0, 0, 1)), (0.7, (1, 0, 0))]:
            after = model(lorentz.boost(p4, beta, axis), mask)
            assert (after - before).abs().max() > 1e-3 * before.abs().max()


def test_invariant_under_permutation_of_constituents_and_padding():
    model = equivariance_model(seed=3)
    p4, mask = random_jets(seed=3)
    g = torch.Generator().manual_seed(0)
    perm = torch.stack([torch.randperm(p4.shape[1], generator=g) for _ in range(len(p4))])  # padding moves too
    p4_perm = torch.take_along_dim(p4, perm[..., None], dim=1)
    mask_perm = torch.take_along_dim(mask, perm, dim=1)
    with torch.no_grad():
        assert_same(model(p4_perm, mask_perm), model(p4, mask))


def test_independent_of_padding_length_batch_and_grouping():
    model = equivariance_model(seed=4)
    p4, mask = random_jets(n_jets=8, seed=4)
    with torch.no_grad():
        ref = model(p4, mask)
        padded = model(F.pad(p4, (0, 0, 0, 37)), F.pad(mask, (0, 37)))
        alone = torch.cat([model(p4[k : k + 1, : int(mask[k].sum())], mask[k : k + 1, : int(mask[k].sum())])
                           for k in range(len(p4))])
        other = random_jets(n_jets=5, n_max=40, seed=9)[0][:, :24]
        mixed = model(torch.cat([p4, other]), torch.cat([mask, other[..., 0] > 0]))[: len(p4)]
        model.group_cost = math.inf  # one (B, M, M) grid
        one_grid = model(p4, mask)
        model.group_cost = 0.0  # one group per distinct length
        many_grids = model(p4, mask)
    for out in (padded, alone, mixed, one_grid, many_grids):
        assert_same(out, ref, rtol=1e-9)


# ----------------------------------------------------------------------------- same math as the original, training


def _bench():
    """``scripts/bench_teacher.py`` as a module."""
    spec = importlib.util.spec_from_file_location("bench_teacher", ROOT / "scripts" / "bench_teacher.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def _edge_list_forward():
    bench = _bench()
    return bench.edge_index, bench.edge_list_forward


def test_same_math_as_edge_list_formulation_in_training_mode():
    """Dense (folded BatchNorm, grouped grids) == the original's edge-list code: logits, running statistics and
    gradients, in float64 with training-mode BatchNorm (statistics over real pairs / nodes only)."""
    edge_index, edge_list_forward = _edge_list_forward()
    torch.manual_seed(0)
    dense = LorentzNet(n_hidden=24, n_layers=3, dropout=0.0).double().train()
    for block in dense.LGEBs[:-1]:
        torch.nn.init.normal_(block.phi_x[2].weight, std=0.02)
    base = LorentzNet(n_hidden=24, n_layers=3, dropout=0.0).double().train()
    base.load_state_dict(dense.state_dict())
    p4, mask = random_jets(n_jets=7, seed=5)
    label = torch.tensor([0, 1, 1, 0, 1, 0, 0])
    edges = edge_index(torch.cat([mask.new_ones(len(mask), 2), mask], 1))
    assert_same_training_step(dense, base, dense(p4, mask), edge_list_forward(base, p4, mask, edges), label)


def test_bench_matmul_floor_covers_every_pair_and_layer():
    """The benchmark's floor times three (pairs x C) x (C x C) products per C x C layer and pair of the grid the
    dense model uses (two layers per block, one in the last), and nothing else."""
    from torch.utils.flop_counter import FlopCounterMode

    from jetkd.models.lorentznet import PairGrid, default_group_cost

    model = LorentzNet(n_hidden=8, n_layers=3)
    _, mask = random_jets(n_jets=6, seed=2)
    with FlopCounterMode(display=False) as counter:
        _bench().pair_matmul_seconds(model, mask, repeats=1)
    grid = PairGrid(torch.cat([mask.new_ones(len(mask), 2), mask], 1), default_group_cost(mask.device))
    pairs = sum(b * L * L for b, L in grid.dims)
    assert counter.get_total_flops() == 3 * 2 * pairs * 8 * 8 * (2 + 2 + 1)


def test_training_step_runs_with_finite_gradients():
    torch.manual_seed(0)
    model = LorentzNet().train()
    p4, mask = random_jets(n_jets=8, n_max=40, seed=6, dtype=torch.float32, p_scale=200.0)
    label = torch.randint(0, 2, (8,))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    loss = F.cross_entropy(model(p4, mask), label)
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    opt.step()
    assert all(not torch.equal(p, q) for p, q in zip(model.parameters(), before))
    assert int(model.LGEBs[0].phi_e[1].num_batches_tracked) == 1


def test_forward_hooks_see_block_outputs_and_decoder():
    model = LorentzNet().eval()
    p4, mask = random_jets(n_jets=3, n_max=10, dtype=torch.float32)
    seen = {}
    modules = dict(model.named_modules())
    for path in ["LGEBs.0", "LGEBs.5", "graph_dec.0", "LGEBs.2.phi_e.3"]:
        modules[path].register_forward_hook(lambda mod, inp, out, path=path: seen.setdefault(path, out))
    with torch.no_grad():
        model(p4, mask)
    h, x = seen["LGEBs.5"]
    assert h.shape == (3, 12, 72) and x.shape == (3, 12, 4)  # nodes: 2 beams + 10 slots
    assert seen["graph_dec.0"].shape == (3, 72)
    assert seen["LGEBs.2.phi_e.3"].shape[-1] == 72
