"""The edge-list LorentzNet (jetkd.models.lorentznet_reference) against the dense model: same weights, same
logits (float32 and float64, eval and training mode), gradients and running statistics; and its own invariances."""

import pytest
import torch
import torch.nn.functional as F

from jetkd import lorentz
from jetkd.models.lorentznet import BEAMS, LorentzNet
from jetkd.models.lorentznet_reference import (
    LorentzNetReference,
    edge_index,
    edge_list_forward,
    scatter_sum,
)

from helpers import assert_same, assert_same_training_step  # tests/helpers.py


def random_jets(n_jets=6, n_max=20, seed=0, dtype=torch.float64, p_scale=40.0):
    """Massive constituents (m in [0, 2] GeV, |p| ~ p_scale GeV), 2..n_max per jet, zero-padded to n_max + 3
    (so every jet carries padding). p4 (n_jets, n_max + 3, 4) GeV, mask (n_jets, n_max + 3)."""
    g = torch.Generator().manual_seed(seed)
    N = n_max + 3
    n = torch.randint(2, n_max + 1, (n_jets,), generator=g)
    p = torch.randn(n_jets, N, 3, generator=g, dtype=dtype) * p_scale / 2 + torch.tensor([p_scale, 0, 0], dtype=dtype)
    m = torch.rand(n_jets, N, generator=g, dtype=dtype) * 2
    p4 = torch.cat([torch.sqrt((p * p).sum(-1, keepdim=True) + m[..., None] ** 2), p], -1)
    mask = torch.arange(N) < n[:, None]
    return p4 * mask[..., None], mask


def dense_model(seed=0, dtype=torch.float64, **kwargs):
    """A small dense LorentzNet whose coordinate updates matter (phi_x output ~0.02-0.3 instead of ~1e-3)."""
    torch.manual_seed(seed)
    model = LorentzNet(**{"n_hidden": 16, "n_layers": 3, "dropout": 0.0} | kwargs).to(dtype)
    for block in model.LGEBs[:-1]:
        torch.nn.init.normal_(block.phi_x[2].weight, std=0.02)
    return model


def test_edge_index_lists_every_real_pair_of_each_jet_once():
    node_mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    i, j = edge_index(node_mask)
    assert len(i) == 3 * 2 + 2 * 1 + 4 * 3  # sum M_b (M_b - 1)
    jet = torch.repeat_interleave(torch.arange(3), node_mask.sum(1))  # node numbers: 0-2, 3-4, 5-8
    assert torch.equal(jet[i], jet[j]) and not (i == j).any()
    assert len(set(zip(i.tolist(), j.tolist()))) == len(i)
    assert scatter_sum(torch.ones(len(i), 1), i, 9).squeeze(1).tolist() == [2, 2, 2, 1, 1, 3, 3, 3, 3]


def test_state_dict_names_match_the_dense_model():
    dense = LorentzNet(n_hidden=8, n_layers=3)
    ref = LorentzNetReference(n_hidden=8, n_layers=3)
    assert list(ref.state_dict()) == list(dense.state_dict())
    assert all(a.shape == b.shape for a, b in zip(ref.state_dict().values(), dense.state_dict().values()))
    dense.load_state_dict(ref.state_dict())  # and back


@pytest.mark.parametrize("train, rtol", [(False, 1e-6), (True, 1e-4)])
def test_same_logits_as_dense_model_in_float32(train, rtol):
    """Realistic scale (|p| ~ 200 GeV), default width, padded jets: float32 logits agree to float32 rounding
    (measured 1.5e-7 in eval mode; 1.6e-5 in training mode, where the dense model takes the BatchNorm moments
    of the pairs from per-node sums, with more cancellation)."""
    dense = dense_model(dtype=torch.float32, n_hidden=72, n_layers=6).train(train)
    if not train:  # non-trivial running statistics
        with torch.no_grad():
            for name, buf in dense.named_buffers():
                if name.endswith("running_var"):
                    buf.uniform_(0.5, 2.0)
                elif name.endswith("running_mean"):
                    buf.normal_(0.0, 0.3)
    ref = LorentzNetReference.from_dense(dense)
    p4, mask = random_jets(n_jets=9, n_max=30, seed=1, dtype=torch.float32, p_scale=200.0)
    with torch.no_grad():
        assert_same(dense(p4, mask), ref(p4, mask), rtol=rtol)


def test_same_logits_gradients_and_statistics_in_float64_training():
    torch.manual_seed(0)
    dense = dense_model().train()
    ref = LorentzNetReference.from_dense(dense)
    assert ref.training and next(ref.parameters()).dtype == torch.float64
    p4, mask = random_jets(n_jets=7, seed=5)
    label = torch.tensor([0, 1, 1, 0, 1, 0, 0])
    assert_same_training_step(dense, ref, dense(p4, mask), ref(p4, mask), label)


def test_edge_list_forward_runs_on_the_dense_modules_too():
    dense = dense_model(seed=2).eval()
    p4, mask = random_jets(seed=2)
    with torch.no_grad():
        assert_same(edge_list_forward(dense, p4, mask), dense(p4, mask), rtol=1e-9)


def test_independent_of_padding_and_batch():
    ref = LorentzNetReference.from_dense(dense_model(seed=3).eval())
    p4, mask = random_jets(seed=3)
    with torch.no_grad():
        full = ref(p4, mask)
        padded = ref(F.pad(p4, (0, 0, 0, 11)), F.pad(mask, (0, 11)))
        alone = torch.cat([ref(p4[k : k + 1], mask[k : k + 1]) for k in range(len(p4))])
    assert_same(padded, full, rtol=1e-12)
    assert_same(alone, full, rtol=1e-12)


def test_invariant_under_boost_of_constituents_and_beams():
    model = dense_model(seed=4, c_weight=0.5).eval()
    ref = LorentzNetReference.from_dense(model)
    p4, mask = random_jets(seed=4)
    L = lorentz.boost_matrix(0.8, (0.3, -0.5, 0.8)) @ lorentz.rotation_matrix(1.1, (1.0, 2.0, -0.5))
    beams = torch.tensor(BEAMS, dtype=torch.float64)
    with torch.no_grad():
        before = ref(p4, mask)
        after = ref(lorentz.transform(p4, L), mask, beams=lorentz.transform(beams, L))
        boosted_jets_only = ref(lorentz.transform(p4, L), mask)
    assert_same(after, before, rtol=1e-7)
    assert (boosted_jets_only - before).abs().max() > 1e-3 * before.abs().max()
