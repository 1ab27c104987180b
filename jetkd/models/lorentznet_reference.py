"""LorentzNet as the paper states it: edge lists, gathers and scatter sums. The plain statement of the maths.

Gong et al., JHEP 07 (2022) 030, arXiv:2201.08187, in the style of the authors' code
(LorentzNet-release): every real node and every real edge of the batch is one row of a flat tensor, ``h[i]`` and
``h[j]`` gather the two ends of each edge, ``index_add_`` sums messages into their receiving node, and the
BatchNorms are plain ones over those rows (all real, so no mask). Nothing is fused, folded, grouped or padded.
:class:`jetkd.models.lorentznet.LorentzNet` computes the same function densely and fast (padded pair grids,
BatchNorm folded into the node projections, fused CPU chains, GPU kernels); it and every fast path is tested
against this module (``tests/test_lorentznet_reference.py``, ``tests/test_lorentznet.py``), and
``scripts/bench_teacher.py`` times it as the baseline.

Graph of a batch of B jets, jet b with n_b constituents: M_b = n_b + 2 nodes (the two beams, then the
constituents), V = sum_b M_b nodes in all, numbered jet after jet; E = sum_b M_b (M_b - 1) directed edges
(i, j), i != j, both ends in the same jet. Per node a four-vector x_i (GeV, metric +---), scalars s_i
(``psi([m, m_beam])``, see :func:`jetkd.models.lorentznet.graph_inputs`) and features h_i (C = n_hidden).
One block (LGEB), with psi(z) = sign(z) log(1 + |z|) and <a, b> the Minkowski product::

    m_ij = phi_e([h_i, h_j, psi(<x_i - x_j, x_i - x_j>), psi(<x_i, x_j>)])                     (E, C)
    m_ij = m_ij * phi_m(m_ij)                                          gate in (0, 1), (E, C)
    x_i <- x_i + c_weight / deg_i * sum_{j != i} clamp((x_i - x_j) phi_x(m_ij), -100, 100)   (V, 4), not in the last block
    h_i <- h_i + phi_h([h_i, sum_{j != i} m_ij, s_i])                                        (V, C)

deg_i = M_b - 1, the real neighbours of i. The jet's vector is the mean of h over its M_b nodes (beams
included), decoded to logits by ``graph_dec``. Only Minkowski products of x enter h, so the logits are unchanged
by a Lorentz transformation of constituents and beams together (exactly so while the clamp is inactive).

Weights: the module names and parameter names are those of the dense model (and of the published checkpoint),
so ``state_dict`` loads either way; :meth:`LorentzNetReference.from_dense` copies a dense model.
:func:`edge_list_forward` runs the same maths on either class's modules. Differences from the dense model:
BatchNorm statistics are this process's only (the dense model sums them over DDP ranks); no forward hooks fire
on the BatchNorms (they are applied as plain ``nn.BatchNorm1d``); memory and time grow with E = sum M_b^2.
"""

from __future__ import annotations

import torch
from torch import nn

from jetkd.models.lorentznet import graph_inputs, mdot, psi

__all__ = ["LorentzNetReference", "edge_index", "edge_list_forward", "scatter_sum"]


def edge_index(node_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The directed edges of a padded batch as flat node indices.

    node_mask: (B, M) bool, True for real nodes (beams included). Real nodes are numbered 0 .. V-1 in row-major
    order (``x[node_mask]``). Returns ``(i, j)``, each (E,) int64: every pair of real nodes of the same jet,
    i != j, E = sum_b M_b (M_b - 1); ``i`` is the receiving node of the sums over j.
    """
    M = node_mask.shape[1]
    number = torch.cumsum(node_mask.reshape(-1).long(), 0) - 1  # (B * M,) node number of each real slot
    adj = node_mask[:, :, None] & node_mask[:, None, :] & ~torch.eye(M, dtype=torch.bool, device=node_mask.device)
    b, i, j = adj.nonzero(as_tuple=True)
    return number[b * M + i], number[b * M + j]


def scatter_sum(src: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    """(size, ...) sums of the rows of ``src`` (n, ...) into the rows ``index`` (n,) int64."""
    return src.new_zeros((size, *src.shape[1:])).index_add_(0, index, src)


def batch_norm(bn: nn.BatchNorm1d, x: torch.Tensor) -> torch.Tensor:
    """Plain ``nn.BatchNorm1d`` over the rows of x (n, C), every row real: the same parameters, buffers, running
    statistics update and eval-mode behaviour, whatever BatchNorm1d subclass ``bn`` is (the dense model's
    masked ones included)."""
    return nn.BatchNorm1d.forward(bn, x)


def lgeb(block: nn.Module, h: torch.Tensor, x: torch.Tensor, s: torch.Tensor, edges, deg: torch.Tensor):
    """One Lorentz group equivariant block on the flat graph.

    block: an LGEB's modules (``phi_e``, ``phi_m``, ``phi_h``, ``phi_x`` unless ``last_layer``, ``c_weight``);
    h: (V, C) features; x: (V, 4) GeV; s: (V, n_scalar); edges: ``(i, j)`` each (E,); deg: (V, 1) real
    neighbours. Returns the updated ``(h, x)``.
    """
    i, j = edges
    V = h.shape[0]
    x_diff = x[i] - x[j]  # (E, 4) GeV
    norms, dots = psi(mdot(x_diff, x_diff))[:, None], psi(mdot(x[i], x[j]))[:, None]  # (E, 1) each
    phi_e = block.phi_e
    m = phi_e[0](torch.cat([h[i], h[j], norms, dots], dim=1))  # (E, C)
    m = phi_e[4](phi_e[3](phi_e[2](batch_norm(phi_e[1], m))))
    m = m * block.phi_m(m)
    if not block.last_layer:
        trans = torch.clamp(x_diff * block.phi_x(m), -100.0, 100.0)  # (E, 4) GeV
        x = x + block.c_weight * scatter_sum(trans, i, V) / deg
    agg = scatter_sum(m, i, V)  # (V, C)
    phi_h = block.phi_h
    dh = phi_h[3](phi_h[2](batch_norm(phi_h[1], phi_h[0](torch.cat([h, agg, s], dim=1)))))
    return h + dh, x


def edge_list_forward(model: nn.Module, p4: torch.Tensor, mask: torch.Tensor, edges=None,
                      beams: torch.Tensor | None = None) -> torch.Tensor:
    """LorentzNet's forward on edge lists, with the modules of ``model`` (a :class:`LorentzNetReference` or a
    dense :class:`jetkd.models.lorentznet.LorentzNet`: the same names).

    p4: (B, N, 4) ``[E, px, py, pz]`` GeV, zero-padded; mask: (B, N) bool; edges: ``edge_index`` of the node mask
    (B, N + 2), beams first (computed when None; pass it to keep its cost out of a timing); beams: optional
    (2, 4) or (B, 2, 4) beam four-vectors. Returns logits (B, n_class).
    """
    x, s, node_mask = graph_inputs(p4, mask, beams)  # (B, M, 4), (B, M, n_scalar), (B, M)
    if edges is None:
        edges = edge_index(node_mask)
    B = node_mask.shape[0]
    x, s = x[node_mask], s[node_mask]  # (V, 4), (V, n_scalar): real nodes only
    nodes = node_mask.sum(1)  # (B,) M_b
    jet = torch.repeat_interleave(torch.arange(B, device=x.device), nodes)  # (V,)
    deg = scatter_sum(torch.ones_like(x[edges[0], :1]), edges[0], len(x)).clamp(min=1)  # (V, 1)
    h = model.embedding(s)
    for block in model.LGEBs:
        h, x = lgeb(block, h, x, s, edges, deg)
    h = scatter_sum(h, jet, B) / nodes[:, None].to(h.dtype)  # (B, C): mean over each jet's nodes
    return model.graph_dec(h)


class LorentzNetReference(nn.Module):
    """LorentzNet on edge lists: ``model(p4, mask) -> logits``, the plain statement of the maths.

    Same constructor arguments, module names and parameter names as :class:`jetkd.models.lorentznet.LorentzNet`
    (so a state dict loads either way, e.g. the published checkpoint); plain ``nn.BatchNorm1d``. For tests and
    benchmarks, not training at scale (see the module docstring).
    """

    def __init__(self, n_scalar: int = 2, n_hidden: int = 72, n_class: int = 2, n_layers: int = 6,
                 c_weight: float = 5e-3, dropout: float = 0.2):
        super().__init__()
        self.n_scalar, self.n_hidden, self.n_layers, self.n_class = n_scalar, n_hidden, n_layers, n_class
        self.embedding = nn.Linear(n_scalar, n_hidden)
        self.LGEBs = nn.ModuleList(ReferenceLGEB(n_hidden, n_scalar, c_weight, last_layer=(k == n_layers - 1))
                                   for k in range(n_layers))
        self.graph_dec = nn.Sequential(nn.Linear(n_hidden, n_hidden), nn.ReLU(), nn.Dropout(dropout),
                                       nn.Linear(n_hidden, n_class))

    def forward(self, p4: torch.Tensor, mask: torch.Tensor, beams: torch.Tensor | None = None,
                edges=None) -> torch.Tensor:
        """p4: (B, N, 4) GeV zero-padded; mask: (B, N) bool; beams: optional (2, 4) or (B, 2, 4); edges: optional
        precomputed :func:`edge_index` of the (B, N + 2) node mask. Returns logits (B, n_class)."""
        return edge_list_forward(self, p4, mask, edges, beams)

    @classmethod
    def from_dense(cls, model: nn.Module) -> LorentzNetReference:
        """A reference model computing what the dense ``model`` computes: its hyperparameters (c_weight per block),
        state (parameters and BatchNorm buffers, copied), device, dtype and training mode."""
        ref = cls(model.n_scalar, model.n_hidden, model.n_class, model.n_layers, dropout=model.graph_dec[2].p)
        for mine, theirs in zip(ref.LGEBs, model.LGEBs):
            mine.c_weight = theirs.c_weight
        first = next(model.parameters())
        ref.to(device=first.device, dtype=first.dtype)
        ref.load_state_dict(model.state_dict())
        return ref.train(model.training)


class ReferenceLGEB(nn.Module):
    """The modules of one block (applied by :func:`lgeb`): phi_e, phi_h, phi_m, phi_x as the original's
    ``nn.Sequential`` (same indices, so state-dict keys match), with plain BatchNorms."""

    def __init__(self, n_hidden: int, n_scalar: int, c_weight: float, last_layer: bool = False):
        super().__init__()
        C = n_hidden
        self.c_weight, self.last_layer = c_weight, last_layer
        self.phi_e = nn.Sequential(nn.Linear(2 * C + 2, C, bias=False), nn.BatchNorm1d(C), nn.ReLU(),
                                   nn.Linear(C, C), nn.ReLU())
        self.phi_h = nn.Sequential(nn.Linear(2 * C + n_scalar, C), nn.BatchNorm1d(C), nn.ReLU(), nn.Linear(C, C))
        self.phi_m = nn.Sequential(nn.Linear(C, 1), nn.Sigmoid())
        if not last_layer:
            out = nn.Linear(C, 1, bias=False)
            nn.init.xavier_uniform_(out.weight, gain=0.001)
            self.phi_x = nn.Sequential(nn.Linear(C, C), nn.ReLU(), out)
