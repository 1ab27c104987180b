"""The fused per-pair chain of a LorentzNet block: its hand-written backward against autograd (gradcheck, float64),
and the model with it against the model without it (the plain per-module path), in training and eval mode."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from jetkd.models import pair_chain
from jetkd.models.lorentznet import LorentzNet
from jetkd.models.pair_chain import PairChain

from helpers import in_autograd_graph  # tests/helpers.py


def chain_inputs(b=3, L=5, C=4, coords=True, seed=0):
    """Float64 inputs of :class:`PairChain` (all but the mask requiring grad), padded jets, clamp partly active."""
    g = torch.Generator().manual_seed(seed)
    real = torch.rand(b, L, generator=g) < 0.75
    real[:, :2] = True
    w = (real[:, :, None] & real[:, None] & ~torch.eye(L, dtype=torch.bool)).double()

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).requires_grad_()

    x_diff = r(b, L, L, 4, scale=30.0) if coords else None
    phi_x = [r(C, C), r(C), r(1, C, scale=3.0)] if coords else [None, None, None]
    return [r(b, L, C), r(b, L, C), r(b, L, L, 2), x_diff, w, r(C, 2), r(C, C), r(C), r(1, C), r(1), *phi_x]


def reference(A, B, e, x_diff, w, w_e, w_3, b_3, w_m, b_m, w_x0, b_x0, w_x2):
    """The chain with plain autograd ops, unchunked."""
    m = torch.relu(torch.relu(A[:, :, None] + B[:, None] + e @ w_e.T) @ w_3.T + b_3)
    m = m * torch.sigmoid(m @ w_m.T + b_m)
    agg = (w[..., None] * m).sum(2)
    if x_diff is None:
        return agg, None
    phi_x = torch.relu(m @ w_x0.T + b_x0) @ w_x2.T
    return agg, (w[..., None] * (x_diff * phi_x).clamp(-100.0, 100.0)).sum(2)


def outputs(*inputs):
    return tuple(o for o in PairChain.apply(*inputs) if o is not None)


@pytest.mark.parametrize("coords", [True, False])
@pytest.mark.parametrize("chunk_pairs", [4096, 30, 3])  # one chunk; whole jets per chunk; rows of one jet
def test_chain_matches_autograd_and_passes_gradcheck(monkeypatch, coords, chunk_pairs):
    monkeypatch.setattr(pair_chain, "CHUNK_PAIRS", chunk_pairs)
    inputs = chain_inputs(coords=coords)
    got, want = outputs(*inputs), tuple(o for o in reference(*inputs) if o is not None)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    differentiable = [t for t in inputs if t is not None and t.requires_grad]
    grad_out = [torch.randn_like(o) for o in want]
    for a, b in zip(torch.autograd.grad(got, differentiable, grad_out),
                    torch.autograd.grad(want, differentiable, grad_out)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    assert torch.autograd.gradcheck(outputs, inputs)


def test_chain_clamp_is_exercised():
    """Guards the test above: with its inputs the coordinate step is clamped on some real pairs, not on all."""
    A, B, e, x_diff, w, w_e, w_3, b_3, w_m, b_m, w_x0, b_x0, w_x2 = chain_inputs()
    with torch.no_grad():
        m = torch.relu(torch.relu(A[:, :, None] + B[:, None] + e @ w_e.T) @ w_3.T + b_3)
        m = m * torch.sigmoid(m @ w_m.T + b_m)
        step = (x_diff * (torch.relu(m @ w_x0.T + b_x0) @ w_x2.T)).abs()[w > 0]
    assert (step > 100).any() and (step < 100).any()


def uses_pair_chain(t: torch.Tensor) -> bool:
    """Whether PairChain is in the autograd graph of ``t``."""
    return in_autograd_graph(t, "PairChainBackward")


def plain(model: LorentzNet) -> LorentzNet:
    """A copy of ``model`` that runs the per-module path: a hook on phi_e.3 of every block turns the fusion off."""
    model = copy.deepcopy(model)
    for block in model.LGEBs:
        block.phi_e[3].register_forward_hook(lambda mod, inp, out: None)
    return model


def jets(n_jets=9, n_max=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = torch.randint(3, n_max + 1, (n_jets,), generator=g)
    p = torch.randn(n_jets, n_max, 3, generator=g, dtype=torch.float64) * 40
    p[..., 0] += 60.0
    p4 = torch.cat([p.norm(dim=-1, keepdim=True) * 1.001, p], -1)
    mask = torch.arange(n_max) < n[:, None]
    return p4 * mask[..., None], mask, torch.randint(0, 2, (n_jets,), generator=g)


@pytest.mark.parametrize("chunk_pairs", [4096, 200])
def test_model_with_chain_equals_plain_path_in_training(monkeypatch, chunk_pairs):
    """Logits, BatchNorm running statistics and all parameter gradients, float64, training mode, several length
    groups; the coordinate steps matter (larger phi_x) and are partly clamped."""
    monkeypatch.setattr(pair_chain, "CHUNK_PAIRS", chunk_pairs)
    torch.manual_seed(0)
    fused = LorentzNet(n_hidden=16, n_layers=3, dropout=0.0).double().train()
    for block in fused.LGEBs[:-1]:
        torch.nn.init.normal_(block.phi_x[2].weight, std=0.5)
    fused.group_cost = 64.0
    ref = plain(fused)
    p4, mask, label = jets()
    a, b = fused(p4, mask), ref(p4, mask)
    assert uses_pair_chain(a) and not uses_pair_chain(b)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    F.cross_entropy(a, label).backward()
    F.cross_entropy(b, label).backward()
    for (name, p), q in zip(fused.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-8, atol=1e-10, msg=name)
    for (name, s), t in zip(fused.named_buffers(), ref.buffers()):
        torch.testing.assert_close(s, t, rtol=1e-12, atol=1e-12, msg=name)
    fused.eval(), ref.eval()
    with torch.no_grad():
        torch.testing.assert_close(fused(p4, mask), ref(p4, mask), rtol=1e-10, atol=1e-10)


def test_hooks_on_bypassed_modules_fire():
    model = LorentzNet(n_hidden=8, n_layers=2).eval()
    p4, mask, _ = jets(n_jets=3, n_max=6)
    seen = []
    model.LGEBs[0].phi_x[0].register_forward_hook(lambda mod, inp, out: seen.append(out.shape))
    with torch.no_grad():
        model(p4.float(), mask)
    assert seen and seen[0][-1] == 8


def test_flop_count_sees_the_chain():
    """The report's FLOPs per jet do not drop when the chain is fused: FlopCounterMode sees every matrix product
    of the fused path, the same total as the plain path's (whose einsum over j is a masked sum, not counted)."""
    model = LorentzNet(n_hidden=8, n_layers=3).eval()
    p4, mask, _ = jets(n_jets=4, n_max=12)

    def matmul_flops(m):
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            m(p4.float(), mask)
        counts = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
        return counts.get("aten.mm", 0) + counts.get("aten.addmm", 0)

    assert matmul_flops(model) == matmul_flops(plain(model)) > 0
