"""The fused Triton pair chain (jetkd.models.pair_triton), run on the CPU through Triton's interpreter, against
the plain autograd chain, the CPU PairChain and the plain per-module LorentzNet path.

Tolerances. float64 (the interpreter runs numpy in float64): the same maths to rounding, 1e-10 relative. float32
with "ieee" products (what the interpreter computes): 1e-5 relative to the largest entry at the chain level; at
the model level the Triton path is as close to float64 as the existing float32 path is. On a GPU the products
take tf32 (default) or bf16 (autocast) inputs with float32 accumulation: expected ~1e-3 (tf32) / ~1e-2 (bf16)
relative on outputs and logits, gradients ~1e-2 / ~1e-1 relative to the largest gradient on tiny batches (ReLU
and clamp thresholds switch on a few pairs); checked here on emulated operand rounding, not on a GPU.
"""

import copy
import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton (and jetkd.models.pair_triton) is imported

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

try:
    import triton
except ImportError:  # pragma: no cover
    pytest.skip("triton is not installed (pip install 'triton>=3.4,<4', or the test extra)", allow_module_level=True)

from jetkd.models import build_model, pair_triton
from jetkd.models.lorentznet import LorentzNet, psi
from jetkd.models.pair_chain import PairChain
from jetkd.models.pair_triton import pair_chain

from helpers import in_autograd_graph  # tests/helpers.py

pytestmark = pytest.mark.skipif(not pair_triton.interpreted(),
                                reason="jetkd.models.pair_triton was imported before TRITON_INTERPRET=1 was set")


# ----------------------------------------------------------------------------- the chain alone


def chain_inputs(L=9, C=16, coords=True, seed=0, dtype=torch.float64):
    """The Triton chain's inputs (all but the node mask requiring grad): A, B, the nodes' four-vectors x and
    mask, the weights. One jet of each length 1..L (1: no pairs) padded to L, and two with padding between real
    nodes; invariants of either sign, coordinate steps partly clamped."""
    g = torch.Generator().manual_seed(seed)
    real = torch.arange(L) < torch.arange(1, L + 1)[:, None]
    holes = torch.rand(2, L, generator=g) < 0.6
    holes[:, 0] = True
    real = torch.cat([real, holes])
    b = len(real)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype).requires_grad_()

    x = (torch.randn(b, L, 4, generator=g, dtype=torch.float64) * 20.0 * real[..., None]).to(dtype).requires_grad_()
    phi_x = [r(C, C, scale=C ** -0.5), r(C), r(1, C, scale=3.0)] if coords else [None, None, None]
    return [r(b, L, C), r(b, L, C), x, real, r(C, 2), r(C, C, scale=C ** -0.5), r(C), r(1, C), r(1), *phi_x]


def edges(x, node_mask):
    """The pairs' e (b, L, L, 2), x_diff (b, L, L, 4) and mask w (b, L, L), with plain autograd ops, rounded as
    LGEB rounds them."""
    L = x.shape[1]
    xi, xj, ei, ej = x[:, :, None, :], x[:, None, :, :], x[:, :, None, 0], x[:, None, :, 0]
    x_diff = xi - xj
    norms = 2 * ((ei - ej) * (ei - ej)) - (x_diff * x_diff).sum(-1)
    dots = 2 * (ei * ej) - (xi * xj).sum(-1)
    w = (node_mask[:, :, None] & node_mask[:, None, :] & ~torch.eye(L, dtype=torch.bool)).to(x.dtype)
    return psi(torch.stack([norms, dots], dim=-1)), x_diff, w


def pair_inputs(A, B, x, node_mask, w_e, w_3, b_3, w_m, b_m, w_x0, b_x0, w_x2):
    """PairChain's inputs from the Triton chain's (x_diff None without phi_x)."""
    e, x_diff, w = edges(x, node_mask)
    return [A, B, e, x_diff if w_x0 is not None else None, w, w_e, w_3, b_3, w_m, b_m, w_x0, b_x0, w_x2]


def reference(A, B, e, x_diff, w, w_e, w_3, b_3, w_m, b_m, w_x0, b_x0, w_x2):
    """The chain with plain autograd ops, unfused."""
    m = torch.relu(torch.relu(A[:, :, None] + B[:, None] + e @ w_e.T) @ w_3.T + b_3)
    m = m * torch.sigmoid(m @ w_m.T + b_m)
    agg = (w[..., None] * m).sum(2)
    if x_diff is None:
        return [agg]
    phi_x = torch.relu(m @ w_x0.T + b_x0) @ w_x2.T
    return [agg, (w[..., None] * (x_diff * phi_x).clamp(-100.0, 100.0)).sum(2)]


def present(outputs):
    return [o for o in outputs if o is not None]


def grads(outputs, inputs, seed=1):
    """Gradients of a random linear functional of ``outputs`` for every differentiable input."""
    g = torch.Generator().manual_seed(seed)
    cotangents = [torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.dtype) for o in outputs]
    return torch.autograd.grad(outputs, [t for t in inputs if t is not None and t.requires_grad], cotangents)


def assert_rel(got, want, rtol, msg=None):
    """Equal within ``rtol`` relative to the largest entry of ``want``."""
    torch.testing.assert_close(got.to(want.dtype), want, rtol=rtol, atol=rtol * want.abs().max().item(), msg=msg)


NAMES = ["A", "B", "x", "w_e", "w_3", "b_3", "w_m", "b_m", "w_x0", "b_x0", "w_x2"]


@pytest.mark.parametrize("coords", [True, False])
@pytest.mark.parametrize("blocks", [None, (4, 2), (2, 8)])  # one tile per jet; several row and column blocks
def test_chain_float64_matches_autograd_and_pair_chain(coords, blocks):
    """Outputs and every gradient, the coordinates' included (through psi, the Minkowski products and the
    coordinate step; summed over j for row i and over i for column j), against autograd of the plain chain on
    materialised e, x_diff, w and against PairChain on them."""
    inputs = chain_inputs(coords=coords)
    got = present(pair_chain(*inputs, blocks=blocks))
    want = reference(*pair_inputs(*inputs))
    cpu = present(PairChain.apply(*pair_inputs(*inputs)))
    for a, b, c in zip(got, want, cpu):
        assert_rel(a, b, 1e-12)
        assert_rel(c, b, 1e-12)
    names = NAMES if coords else [n for n in NAMES if n not in ("w_x0", "b_x0", "w_x2")]
    g_got, g_want, g_cpu = grads(got, inputs), grads(want, inputs), grads(cpu, inputs)
    assert len(g_got) == len(names)
    for name, a, b, c in zip(names, g_got, g_want, g_cpu):
        assert b.abs().max() > 0, name
        assert_rel(a, b, 1e-10, msg=name)
        assert_rel(a, c, 1e-10, msg=name)


def test_chain_length_one_jet_and_padding_give_zero():
    """A one-node jet has no pairs: zero agg, dx and gradients (A, B and x) for it; padded rows stay zero too,
    whatever the padded nodes' coordinates."""
    inputs = chain_inputs(L=6)
    real = inputs[3]
    with torch.no_grad():
        inputs[2][~real] = 7.0  # padded nodes with coordinates: the mask alone must keep them out
    agg, dx = pair_chain(*inputs, blocks=(4, 4))
    paired = real & (real.sum(1, keepdim=True) > 1)  # nodes with a real pair
    assert (agg[0] == 0).all() and (dx[0] == 0).all()  # jet 0: length 1
    assert (agg[~paired] == 0).all() and (dx[~paired] == 0).all()
    assert (agg[paired].abs().sum(-1) > 0).all()
    got = grads([agg, dx], inputs)
    gA, gB, gx = got[:3]
    assert (gA[0] == 0).all() and (gB[0] == 0).all() and (gx[0] == 0).all()
    assert (gx[~paired] == 0).all() and (gx[paired].abs().sum(-1) > 0).all()
    want = grads(reference(*pair_inputs(*inputs)), inputs)
    for name, a, b in zip(NAMES, got, want):
        assert_rel(a, b, 1e-10, msg=name)


def test_chain_clamp_is_exercised():
    """Guards the tests above: the coordinate step is clamped on some real pairs, not on all, and both
    invariants take both signs."""
    A, B, e, x_diff, w, w_e, w_3, b_3, w_m, b_m, w_x0, b_x0, w_x2 = pair_inputs(*chain_inputs())
    with torch.no_grad():
        m = torch.relu(torch.relu(A[:, :, None] + B[:, None] + e @ w_e.T) @ w_3.T + b_3)
        m = m * torch.sigmoid(m @ w_m.T + b_m)
        step = (x_diff * (torch.relu(m @ w_x0.T + b_x0) @ w_x2.T)).abs()[w > 0]
    assert (step > 100).any() and (step < 100).any()
    assert all((e[..., k][w > 0] > 0).any() and (e[..., k][w > 0] < 0).any() for k in range(2))


@pytest.mark.parametrize("coords", [True, False])
@pytest.mark.parametrize("blocks", [None, (4, 4)])
def test_chain_float32_at_interpreter_tolerance(coords, blocks):
    """float32 inputs, float32 ("ieee") products: outputs and every gradient within 1e-5 of float64 (on the same
    float32-representable inputs; the invariants are computed in float32 from them, as LGEB does)."""
    exact = chain_inputs(L=12, coords=coords, seed=2)
    exact = [t if t is None or not t.is_floating_point() else t.detach().float().double().requires_grad_()
             for t in exact]
    single = [t if t is None or not t.is_floating_point() else t.detach().float().requires_grad_()
              for t in exact]
    got, want = present(pair_chain(*single, blocks=blocks)), reference(*pair_inputs(*exact))
    assert all(o.dtype == torch.float32 for o in got)
    for a, b in zip(got, want):
        assert_rel(a, b, 1e-5)
    for name, a, b in zip(NAMES, grads(got, single), grads(want, exact)):
        assert_rel(a, b, 1e-5, msg=name)


class _Sizes(TorchDispatchMode):
    """Largest tensor any aten op returns, in bytes (the interpreter moves storages as bytes), and every shape."""

    def __init__(self):
        super().__init__()
        self.largest = 0
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel() * t.element_size())
                self.shapes.append(tuple(t.shape))
        return out


def test_no_pair_tensor():
    """Forward and backward allocate nothing per pair: no (b, L, L, ...) tensor, and nothing larger than the node
    tensors (b, L, C) and the weight-gradient partial sums (one (C, C) per program) -- smaller than one float
    per pair here. The plain chain (e, x_diff, w materialised) allocates (b, L, L, C) tensors, which the probe
    sees."""
    inputs = chain_inputs(L=40, C=16)
    b, L, C = inputs[0].shape
    with _Sizes() as fused:
        grads(present(pair_chain(*inputs)), inputs)
    with _Sizes() as plain:
        grads(reference(*pair_inputs(*inputs)), inputs)
    assert not [s for s in fused.shapes if s[:3] == (b, L, L)]
    n_prog = b * triton.cdiv(L, pair_triton._blocks(C, True)[0])
    assert fused.largest <= max(b * L * C, n_prog * C * C) * 8 < b * L * L * 8  # float64
    assert plain.largest >= b * L * L * C * 8
    assert [s for s in plain.shapes if s[:3] == (b, L, L)]


# ----------------------------------------------------------------------------- the BatchNorm moments


def moments_reference(x, node_mask):
    """pair_moments with plain autograd ops: per node, sum_j w_ij (e0, e1, e0^2, e0 e1, e1^2)_ij."""
    e, _, w = edges(x, node_mask)
    e0, e1 = e[..., 0], e[..., 1]
    return torch.stack([(w * f).sum(2) for f in (e0, e1, e0 * e0, e0 * e1, e1 * e1)], dim=-1)


@pytest.mark.parametrize("blocks", [None, (4, 4), (2, 8)], ids=["default", "4x4", "2x8"])
def test_pair_moments_float64_match_autograd(blocks):
    """Sums and d/dx (a random cotangent) equal the plain autograd version's, for jets of every length 1..L,
    jets with holes and row/column blocks that cut the jets."""
    x, node_mask = chain_inputs(L=11)[2:4]
    got, want = pair_triton.pair_moments(x, node_mask, blocks=blocks), moments_reference(x, node_mask)
    assert_rel(got, want, 1e-12)
    assert got[0].abs().max() == 0 and got[~node_mask].abs().max() == 0  # a one-node jet has no pairs; padding 0
    for a, b in zip(grads([got], [x]), grads([want], [x])):
        assert_rel(a, b, 1e-10, msg="d/dx")


def test_pair_moments_float32():
    x, node_mask = chain_inputs(L=11, dtype=torch.float32)[2:4]
    exact = x.detach().double().requires_grad_()
    got, want = pair_triton.pair_moments(x, node_mask), moments_reference(exact, node_mask)
    assert got.dtype == torch.float32
    assert_rel(got, want, 1e-5)
    assert_rel(grads([got], [x])[0], grads([want], [exact])[0], 1e-5)


def test_model_training_step_allocates_nothing_per_pair():
    """A whole LorentzNet training step (forward, BatchNorm statistics over pairs, backward) on the Triton
    kernels allocates no (.., M, M) tensor and nothing larger than the node tensors and the chain's per-program
    weight-gradient sums: memory linear in the constituent count. The plain path does allocate per pair."""
    p4, mask, label = jets(n_max=60, seed=2)
    p4, mask, label = p4[-6:], mask[-6:], label[-6:]  # 55..60 constituents: M = 62 nodes
    B, M, C = len(p4), p4.shape[1] + 2, 16
    net = model(n_hidden=C)
    net.group_cost = float("inf")  # one (B, M, M) grid: the size a per-pair tensor would have
    with _Sizes() as fused:
        step(net, p4, mask, label)
    net.pair_kernel = "torch"
    with _Sizes() as plain:
        step(net, p4, mask, label)
    per_pair = [s for s in fused.shapes if len(s) >= 2 and s.count(M) >= 2]
    assert not per_pair, per_pair
    n_prog = B * triton.cdiv(M, pair_triton._blocks(C, True)[0])
    # the largest node tensor is phi_h's input [h, agg, s] (B, M, 2C + 2)
    assert fused.largest <= max(B * M * (2 * C + 2), n_prog * C * C) * 8 < B * M * M * 8
    assert [s for s in plain.shapes if len(s) >= 2 and s.count(M) >= 2]  # e, x_diff, w on the torch path


# ----------------------------------------------------------------------------- the model


def jets(n_max=9, seed=0, dtype=torch.float64):
    """One jet of each length 1..n_max constituents, zero-padded, with labels."""
    g = torch.Generator().manual_seed(seed)
    n_jets = n_max
    p = torch.randn(n_jets, n_max, 3, generator=g, dtype=torch.float64) * 40
    p[..., 0] += 60.0
    p4 = torch.cat([p.norm(dim=-1, keepdim=True) * 1.001, p], -1)
    mask = torch.arange(n_max) < torch.arange(1, n_jets + 1)[:, None]
    label = torch.randint(0, 2, (n_jets,), generator=g)
    return (p4 * mask[..., None]).to(dtype), mask, label


def uses_triton(t: torch.Tensor) -> bool:
    """Whether the Triton chain is in the autograd graph of ``t``."""
    return in_autograd_graph(t, "TritonPairChainBackward")


def model(n_hidden=16, seed=0):
    """A training-mode float64 LorentzNet on the Triton kernels: coordinate steps that matter (larger phi_x,
    partly clamped) and several length groups."""
    torch.manual_seed(seed)
    net = LorentzNet(n_hidden=n_hidden, n_layers=3, dropout=0.0, pair_kernel="triton").double().train()
    for block in net.LGEBs[:-1]:
        torch.nn.init.normal_(block.phi_x[2].weight, std=0.5)
    net.group_cost = 16.0
    return net


def step(net, p4, mask, label):
    """Logits of a training forward, after the backward of the loss (gradients in ``net``)."""
    net.zero_grad()
    logits = net(p4, mask)
    F.cross_entropy(logits, label).backward()
    return logits


def test_model_triton_equals_torch_path_in_training_float64():
    """Logits, every parameter gradient and the BatchNorm buffers (statistics over pairs from per-node sums)
    after a training step, then eval logits: Triton kernels == the plain per-module path."""
    fast = model()
    plain = copy.deepcopy(fast)
    plain.pair_kernel = "torch"
    for block in plain.LGEBs:  # the plain per-module path, not PairChain
        block.phi_e[3].register_forward_hook(lambda mod, inp, out: None)
    p4, mask, label = jets()
    a, b = step(fast, p4, mask, label), step(plain, p4, mask, label)
    assert uses_triton(a) and not uses_triton(b)
    assert_rel(a, b, 1e-10)
    scale = max(q.grad.abs().max().item() for q in plain.parameters())
    for (name, p), q in zip(fast.named_parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-8, atol=1e-10 * scale, msg=name)
    for (name, s), t in zip(fast.named_buffers(), plain.buffers()):
        torch.testing.assert_close(s, t, rtol=1e-10, atol=1e-12, msg=name)
    assert int(fast.LGEBs[0].phi_e[1].num_batches_tracked) == 1
    fast.eval(), plain.eval()
    with torch.no_grad():
        assert_rel(fast(p4, mask), plain(p4, mask), 1e-10)


def errors(net, exact, ref, p4, mask, label):
    """(logits, gradients, BatchNorm buffers) of ``net`` (float32) after a training step, relative to ``exact``
    (float64, after the same step, logits ``ref``): logits and buffers to their largest entry, gradients to the
    largest one."""
    logits = step(net, p4.float(), mask, label)
    scale = max(q.grad.abs().max().item() for q in exact.parameters())
    grad = max((p.grad.double() - q.grad).abs().max().item() / scale
               for p, q in zip(net.parameters(), exact.parameters()))
    buf = max(((s.double() - t).abs().max() / t.abs().max()).item()
              for s, t in zip(net.buffers(), exact.buffers()) if s.is_floating_point() and t.abs().max() > 0)
    return ((logits.double() - ref).abs().max() / ref.abs().max()).item(), grad, buf


@pytest.fixture(scope="module")
def exact_step():
    """The float64 model after a training step (the reference for the float32 runs) and its data."""
    exact, (p4, mask, label) = model(), jets()
    exact.pair_kernel = "torch"
    start = copy.deepcopy(exact)
    ref = step(exact, p4, mask, label).detach()
    return start, exact, ref, (p4, mask, label)


def test_model_float32_as_accurate_as_the_torch_path(exact_step):
    start, exact, ref, data = exact_step
    fast, cpu = copy.deepcopy(start).float(), copy.deepcopy(start).float()
    fast.pair_kernel = "triton"
    got, want = errors(fast, exact, ref, *data), errors(cpu, exact, ref, *data)
    print("float32 errors vs float64 (logits, gradients, buffers): triton", got, "torch", want)
    assert got[0] < 1e-4 and got[2] < 1e-4
    for g, w in zip(got, want):
        assert g <= 2 * w + 1e-6


@pytest.mark.parametrize("precision, logits_tol, grad_tol", [("tf32", 1e-3, 2e-2), ("bf16", 1e-2, 1e-1)])
def test_model_with_emulated_gpu_precision(monkeypatch, exact_step, precision, logits_tol, grad_tol):
    """The GPU tolerances documented in pair_triton, on the interpreter's emulation of tf32 / bf16 operands."""
    monkeypatch.setattr(pair_triton, "INTERPRETER_PRECISION", precision)
    start, exact, ref, data = exact_step
    net = copy.deepcopy(start).float()
    net.pair_kernel = "triton"
    logits, grad, buf = errors(net, exact, ref, *data)
    print(precision, "errors vs float64: logits", logits, "gradients", grad, "buffers", buf)
    assert logits < logits_tol and buf < logits_tol and grad < grad_tol
    assert logits > 1e-6  # the emulation did round the products


# ----------------------------------------------------------------------------- dispatch


def test_auto_on_cpu_keeps_pair_chain_and_triton_needs_the_interpreter(monkeypatch):
    net = LorentzNet(n_hidden=8, n_layers=2)
    assert net.pair_kernel == "auto" and all(b.pair_kernel == "auto" for b in net.LGEBs)
    p4, mask, _ = jets(n_max=4, dtype=torch.float32)
    seen = []
    monkeypatch.setattr(pair_triton.TritonPairChain, "apply", lambda *a: seen.append(1))
    net(p4, mask)
    assert not seen  # auto on CPU: PairChain, not the kernels
    monkeypatch.undo()
    net.pair_kernel = "triton"
    assert all(b.pair_kernel == "triton" for b in net.LGEBs)
    monkeypatch.setattr(pair_triton, "_INTERPRETED", False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        net(p4, mask)
    with pytest.raises(ValueError, match="pair_kernel"):
        LorentzNet(n_hidden=8, n_layers=2, pair_kernel="cuda")


def test_pair_kernel_from_model_config_and_hooks_take_the_plain_path():
    from jetkd.config import check_model_args

    spec = {"name": "lorentznet", "n_hidden": 8, "n_layers": 2, "pair_kernel": "triton"}
    check_model_args(spec, "test")
    net = build_model(spec).eval()
    assert net.pair_kernel == "triton"
    p4, mask, _ = jets(n_max=4, dtype=torch.float32)
    seen = []
    net.LGEBs[0].phi_x[0].register_forward_hook(lambda mod, inp, out: seen.append(out.shape))
    out = net(p4, mask)
    assert seen and seen[0][-1] == 8  # block 0 with a hook: plain modules
    assert uses_triton(out)  # block 1 without: the kernels
