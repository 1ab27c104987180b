"""LorentzNet, the teacher: a Lorentz-equivariant graph network for jet tagging.

Gong, Meng, Qi, Zhang, Cao, Liu, Wang, Yang, Li: "An efficient Lorentz equivariant graph neural network for
jet tagging", JHEP 07 (2022) 030, arXiv:2201.08187. Same equations and module names as the authors' code
(LorentzNet-release), so its published state dict loads 1:1 (:func:`load_published`), but computed DENSE:
each jet is a padded set of nodes, its edges a grid of node pairs, and masks (no index lists) say which nodes
and pairs are real. Padding never enters a sum, a mean, a BatchNorm statistic or the pooled jet vector, so a
jet's logits depend neither on the padding length nor on the other jets of its batch.

Graph of one jet with n constituents: M = n + 2 nodes, the two beam particles first, fully connected over
real nodes without self edges. Per node a four-vector x_i (GeV; moved equivariantly by every block but the
last) and features h_i (C = n_hidden; invariant). Edges see x only through the Minkowski invariants
||x_i - x_j||^2 and <x_i, x_j>, so h and the logits are unchanged by any Lorentz transformation applied to the
constituents and the beams together. With the beams fixed only the transformations that fix both beams
remain: rotations about the beam (z) axis. Boosts change the output. Exactly so while the original's clamp of
the coordinate step to +-100 (per component) is inactive: the published checkpoint does hit it on real jets
(|phi_x| up to ~8, |x_i - x_j| ~ 100 GeV), so its invariance is approximate, as the original's was.

Cost. The per-pair tensors (pairs, C) are the big ones; three ideas keep them few, small and in cache:
  * phi_e's first Linear on [h_i, h_j, e_ij] is W_a h_i + W_b h_j + W_e e_ij: two per-node projections broadcast
    over the grid; its BatchNorm, an affine map per channel, folds into them. The BatchNorm statistics over
    real pairs are moments of that sum, computed from per-node sums (degrees, row sums of e, sums of b over each
    jet) without materialising the pre-activation; on the Triton path the sums of e come from kernels too.
  * jets are sorted by length and cut into a few groups, each padded to its own longest jet (one dense
    (b, L, L) grid per group, not one (B, M, M) grid for the batch): a batch of 32 realistic jets (~55
    constituents, up to ~125) then holds ~1.1x its real pairs on CPU instead of ~2.8x; each group costs a few
    dozen small ops more (see :func:`default_group_cost`). Node tensors stay (B, M, C) in batch order (what
    hooks see); the grouping is invisible outside a block.
  * on CPU the rest of the per-pair chain (phi_e's ReLU .. phi_m gate .. phi_x, the sums over j) runs as one
    autograd Function, :class:`jetkd.models.pair_chain.PairChain`, chunk by cache-sized chunk, with a
    hand-written backward that keeps 2 C floats per pair and redoes no (C, C) matmul. Those matmuls, 6 of
    (pairs, C) x (C, C) per block and training step (2 forward, 4 backward), are then ~40% of a step's CPU
    time at batch 32, the chain as a whole ~80%. The plain per-module path stays on GPUs with
    ``pair_kernel="torch"`` (or without triton, or in float64), under CPU autocast, and when a hook listens on a
    module the fused chain bypasses.
  * on CUDA (``pair_kernel="auto"`` or ``"triton"``) the same chain runs as fused Triton kernels,
    :mod:`jetkd.models.pair_triton`: tiles of pairs built in registers, no (pairs, C) tensor in GPU memory,
    forward or backward (the backward recomputes the tile's forward). ``pair_kernel="torch"`` keeps the paths
    above on every device; ``"triton"`` on CPU runs the kernels under Triton's interpreter (TRITON_INTERPRET=1;
    the tests), else it is an error.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from jetkd.models.layers import MaskedBatchNorm1d, _all_reduce_sum
from jetkd.models.pair_chain import PairChain

PAIR_KERNELS = ("auto", "triton", "torch")

# The two beam particles of the original code, (sqrt(1 + m^2), 0, 0, +-1) with m = 1, in GeV.
BEAMS = ((math.sqrt(2.0), 0.0, 0.0, 1.0), (math.sqrt(2.0), 0.0, 0.0, -1.0))


def mdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Minkowski product ``a . b`` of (..., 4) tensors, rounded exactly as the original code rounds it.

    Mathematically :func:`jetkd.lorentz.minkowski_dot`; evaluated as ``2 a_E b_E - sum_mu a_mu b_mu``
    (the original ``normsq4`` / ``dotsq4``). The published checkpoint needs this: its inputs were
    (nearly) massless constituents, whose float32 ``p^2`` is rounding noise, and it learned from that noise.
    Rounded the ``lorentz.minkowski_dot`` way, its logits on the reference jets move by up to ~1.4 (masses)
    and ~0.04 (edge invariants) instead of < 1e-4. In float64 the two agree to rounding.
    """
    ab = a * b
    return 2 * ab[..., 0] - ab.sum(dim=-1)


def psi(x: torch.Tensor) -> torch.Tensor:
    """``sign(x) * log(|x| + 1)``: compresses GeV-scale invariants spanning many decades; odd and monotone."""
    return torch.sign(x) * torch.log1p(x.abs())


def graph_inputs(p4: torch.Tensor, mask: torch.Tensor, beams: torch.Tensor | None = None):
    """The nodes of each jet: beams prepended to the constituents.

    p4: (B, N, 4) ``[E, px, py, pz]`` GeV, zero-padded; mask: (B, N) bool;
    beams: None (the fixed beams :data:`BEAMS`), (2, 4) or (B, 2, 4) four-vectors to use instead.
    Returns ``(x, s, node_mask)``: x (B, M, 4) node four-vectors (0 on padding), s (B, M, 2) node scalars
    ``psi([m if particle else 0, m if beam else 0])`` with ``m = sqrt(|p^2|)``, node_mask (B, M); M = N + 2.
    """
    B, N, _ = p4.shape
    beams = torch.as_tensor(BEAMS if beams is None else beams, dtype=p4.dtype, device=p4.device)
    x = torch.cat([beams.expand(B, 2, 4), torch.where(mask[..., None], p4, 0.0)], dim=1)
    node_mask = torch.cat([mask.new_ones(B, 2), mask], dim=1)
    m = mdot(x, x).abs().sqrt()  # sqrt(|p^2|) as the original: float rounding gives massless p^2 either sign
    is_beam = torch.arange(N + 2, device=p4.device) < 2
    s = torch.stack([torch.where(is_beam, 0.0, m), torch.where(is_beam, m, 0.0)], dim=-1)
    return x, psi(s), node_mask


class PairGrid:
    """The edges of a padded batch as a few dense grids: jets sorted by length, cut into groups.

    node_mask: (B, M) bool. A jet's length is its last real node + 1; group g holds b_g jets padded to its
    longest, L_g, and its pairs form one (b_g, L_g, L_g) grid. The cut minimises
    ``sum_g (b_g L_g^2 + group_cost)`` (padded pairs plus a per-group overhead, in pairs) by dynamic programming
    over the sorted lengths; ``group_cost=inf`` gives one (B, M, M) grid in batch order.
    Node tensors move between the batch layout (B, M, ...) and the groups with one gather (:meth:`split`) and
    one gather back (:meth:`merge`), whatever the number of groups.
    ``degree`` (B, M, 1) real neighbours of every node (0 on padding) and, per group, ``deg[g]`` (b, L, 1) the same
    (>= 1), counted from the node mask; ``w[g]`` (b, L, L) 1.0 for real pairs i != j, built on first use (the
    Triton path never uses it: nothing per pair).
    """

    def __init__(self, node_mask: torch.Tensor, group_cost: float):
        B, M = node_mask.shape
        dev = node_mask.device
        self.shape, self.rows = (B, M), None
        self.dims = [(B, M)]  # (b_g, L_g)
        if not math.isinf(group_cost):  # one host sync: the lengths decide the tensor shapes
            lengths = (node_mask * torch.arange(1, M + 1, device=dev)).amax(1).cpu().numpy()
            order = np.argsort(lengths, kind="stable")
            cuts = _cut(lengths[order], group_cost)
            self.dims = [(j - i, int(lengths[order[j - 1]])) for i, j in cuts]
            if len(cuts) > 1:
                # rows: flat node index (b * M + k) of every group slot, groups one after another;
                # where: the slot of every flat node, or one past the end (a zero row) beyond its group's length
                rows = [(order[i:j, None] * M + np.arange(L)).reshape(-1) for (i, j), (_, L) in zip(cuts, self.dims)]
                rows = np.concatenate(rows)
                where = np.full(B * M, len(rows))
                where[rows] = np.arange(len(rows))
                self.rows, self.where = torch.from_numpy(rows).to(dev), torch.from_numpy(where).to(dev)
        self.node_mask, self._w = node_mask, None
        real = node_mask.to(torch.get_default_dtype())
        self.degree = (real * (real.sum(1, keepdim=True) - 1))[..., None]  # sum_j w_ij = mask_i (n_real - 1)
        self.deg = [d.clamp(min=1.0) for d in self.split(self.degree)]

    @property
    def w(self) -> list[torch.Tensor]:
        """Per group, the pair mask (b, L, L): 1.0 for real pairs i != j."""
        if self._w is None:
            self._w = []
            for nm, (_, L) in zip(self.split(self.node_mask), self.dims):
                eye = torch.eye(L, dtype=torch.bool, device=nm.device)
                self._w.append((nm[:, :, None] & nm[:, None, :] & ~eye).to(torch.get_default_dtype()))
        return self._w

    def __len__(self) -> int:
        return len(self.dims)

    def split(self, t: torch.Tensor) -> list[torch.Tensor]:
        """A node tensor (B, M, ...) as the groups' (b_g, L_g, ...) tensors."""
        if self.rows is None:
            L = self.dims[0][1]
            return [t if L == t.shape[1] else t[:, :L]]
        B, M = self.shape
        packed = t.reshape(B * M, *t.shape[2:]).index_select(0, self.rows)  # backward: index_add, no sort
        sizes = [b * L for b, L in self.dims]
        return [p.view(b, L, *t.shape[2:]) for p, (b, L) in zip(packed.split(sizes), self.dims)]

    def merge(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """Inverse of :meth:`split`: the groups' (b_g, L_g, D) -> (B, M, D), 0 beyond each group's L_g."""
        B, M = self.shape
        if self.rows is None:
            p = parts[0]
            return p if p.shape[1] == M else F.pad(p, (0, 0, 0, M - p.shape[1]))
        D = parts[0].shape[-1]
        packed = torch.cat([p.reshape(-1, D) for p in parts] + [parts[0].new_zeros(1, D)])
        return packed.index_select(0, self.where).view(B, M, D)


def default_group_cost(device: torch.device) -> float:
    """Overhead of one more group of the pair grid, in pairs (measured: 2 CPU cores; H100, batches 32..512).
    On CPU a pair costs ~10 us of CPU time per training step and a group ~100 more small ops (one thread:
    512 to 2048 time alike within noise, 8192 is ~10% slower at batch 32; with 2 threads and 16384-pair chunks,
    1024 was still the fastest of 256, 1024, 4096, 16384); on a GPU pairs are cheap and kernel launches
    dominate, so few groups."""
    return 1024.0 if device.type == "cpu" else 262144.0


def _cut(lengths: np.ndarray, group_cost: float) -> list[tuple[int, int]]:
    """Optimal cut of ascending ``lengths`` into contiguous groups ``[i, j)``: cost sum (j - i) L_{j-1}^2 + group_cost."""
    n = len(lengths)
    best, prev = np.zeros(n + 1), np.zeros(n + 1, dtype=int)
    sq = lengths.astype(np.float64) ** 2
    for j in range(1, n + 1):
        cost = best[:j] + (j - np.arange(j)) * sq[j - 1] + group_cost
        prev[j] = int(np.argmin(cost))
        best[j] = cost[prev[j]]
    cuts, j = [], n
    while j > 0:
        cuts.append((prev[j], j))
        j = prev[j]
    return cuts[::-1]


class PairBatchNorm(MaskedBatchNorm1d):
    """The BatchNorm of phi_e, folded into the Linear before it (same parameters, buffers and keys).

    :meth:`fold` turns batch moments of the pre-activation over the real pairs (training; summed over
    DDP ranks like :class:`MaskedBatchNorm1d`, whose running-statistics update it repeats) or the running
    statistics (eval) into the per-channel map of the normalisation, ``y = (x - mean) * scale + bias``.
    """

    def fold(self, count=None, total=None, centred_sq=None):
        """count: () real pairs; total: (C,) sum of x; centred_sq(mean) -> (C,) sum of (x - mean)^2
        (training only). Returns ``(mean, scale)``, each (C,)."""
        if self.training:
            count = _all_reduce_sum(count)
            mean = _all_reduce_sum(total) / count
            var = (_all_reduce_sum(centred_sq(mean)) / count).clamp(min=0.0)
            with torch.no_grad():
                self.num_batches_tracked += 1
                unbiased = var * count / (count - 1).clamp(min=1)
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), self.momentum)
                self.running_var.lerp_(unbiased.detach().to(self.running_var.dtype), self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        return mean, self.weight * torch.rsqrt(var + self.eps)


class LGEB(nn.Module):
    """Lorentz group equivariant block: message passing over all real node pairs.

    m_ij = phi_e([h_i, h_j, psi(||x_i - x_j||^2), psi(<x_i, x_j>)]) * phi_m(m_ij)    (edge message, gated)
    x_i <- x_i + c_weight * mean_{j != i} clamp((x_i - x_j) phi_x(m_ij), -100, 100)  (not in the last block)
    h_i <- h_i + phi_h([h_i, sum_{j != i} m_ij, s_i])

    The plain statement of this maths (edge lists, gathers, index_add_ sums): :mod:`jetkd.models.lorentznet_reference`.
    """

    def __init__(self, n_hidden: int, n_scalar: int, c_weight: float, last_layer: bool = False,
                 pair_kernel: str = "auto"):
        super().__init__()
        C = n_hidden
        self.c_weight, self.last_layer = c_weight, last_layer
        self.pair_kernel = _check_pair_kernel(pair_kernel)  # see LorentzNet
        # Indices match the original's nn.Sequential, so state-dict keys map 1:1. The containers are never
        # called whole (BatchNorms need masks); forward calls the members, so hooks on them fire, except on
        # phi_e.0 and phi_e.1, whose Linear and BatchNorm are applied folded (weights read directly). The fused
        # pair chain (PairChain on CPU, Triton kernels on CUDA) bypasses phi_e.2 .. phi_x unless one of them has a
        # hook (see _fused).
        self.phi_e = nn.Sequential(nn.Linear(2 * C + 2, C, bias=False), PairBatchNorm(C), nn.ReLU(inplace=True),
                                   nn.Linear(C, C), nn.ReLU(inplace=True))
        self.phi_h = nn.Sequential(nn.Linear(2 * C + n_scalar, C), MaskedBatchNorm1d(C), nn.ReLU(), nn.Linear(C, C))
        self.phi_m = nn.Sequential(nn.Linear(C, 1), nn.Sigmoid())
        if not last_layer:
            out = nn.Linear(C, 1, bias=False)
            nn.init.xavier_uniform_(out.weight, gain=0.001)  # as the original (EGNN): tiny coordinate steps at init
            self.phi_x = nn.Sequential(nn.Linear(C, C), nn.ReLU(inplace=True), out)

    def forward(self, h: torch.Tensor, x: torch.Tensor, s: torch.Tensor, node_mask: torch.Tensor, grid: PairGrid):
        """h: (B, M, C); x: (B, M, 4) GeV; s: (B, M, n_scalar); node_mask: (B, M) bool; grid: the pair layout.
        Returns the updated ``(h, x)``, same shapes (rows of padding nodes are meaningless)."""
        C = h.shape[-1]
        w_a, w_b, w_e = self.phi_e[0].weight.split([C, C, 2], dim=1)
        a, b = F.linear(h, w_a), F.linear(h, w_b)  # (B, M, C): the node halves of phi_e.0
        # Edge invariants of each group, from the coordinates the previous block left.
        xs = grid.split(x)  # [(b, L, 4)]
        fused = self._fused(h)
        # The Triton kernels compute e and x_diff per tile, and the BatchNorm moments' per-node sums too.
        pairs = xs if fused != "triton" else []
        x_diff, e = [], []
        for xg in pairs:
            xi, xj, ei, ej = xg[:, :, None, :], xg[:, None, :, :], xg[:, :, None, 0], xg[:, None, :, 0]
            x_diff.append(xi - xj)  # (b, L, L, 4)
            # mdot(x_diff, x_diff) and mdot(xi, xj), with the energy products taken from the (small) node tensor
            norms = 2 * ((ei - ej) * (ei - ej)) - (x_diff[-1] * x_diff[-1]).sum(-1)  # ||x_i - x_j||^2
            dots = 2 * (ei * ej) - (xi * xj).sum(-1)  # <x_i, x_j>
            e.append(psi(torch.stack([norms, dots], dim=-1)))  # (b, L, L, 2)

        # BatchNorm of pre_ij = a_i + b_j + W_e e_ij over the real pairs, folded into a, b and W_e.
        with torch.autocast(h.device.type, enabled=False):  # statistics in at least float32
            dt = torch.promote_types(h.dtype, torch.float32)
            a, b, w_e = a.to(dt), b.to(dt), w_e.to(dt)
            bs = grid.split(b)
            node_masks = grid.split(node_mask) if fused == "triton" else None
            mean, scale = self.phi_e[1].fold(*self._moments(a, b, w_e, e, grid, xs, node_masks))
            a_fold = grid.split((a - mean) * scale + self.phi_e[1].bias)  # [(b, L, C)]
            w_e_fold = w_e * scale[:, None]  # (C, 2)

        agg, dx = [], []
        for g in range(len(grid)):
            if fused == "triton":  # the kernels compute e, x_diff and the pair mask per tile from the nodes
                agg_g, dx_g = _pair_triton().pair_chain(a_fold[g], bs[g] * scale, xs[g], node_masks[g], w_e_fold,
                                              *self._chain_weights())
            elif fused:  # the same chain as below, in cache-sized chunks (PairChain)
                xd = None if self.last_layer else x_diff[g]
                agg_g, dx_g = PairChain.apply(a_fold[g], bs[g] * scale, e[g], xd, grid.w[g].to(h.dtype), w_e_fold,
                                              *self._chain_weights())
            if fused:
                agg.append(agg_g)
                if not self.last_layer:
                    dx.append(dx_g / grid.deg[g])
                continue
            w = grid.w[g].to(h.dtype)
            m = F.linear(e[g], w_e_fold.to(h.dtype))  # (b, L, L, C), fresh: add into it in place
            m += a_fold[g][:, :, None].to(m.dtype)
            m += (bs[g] * scale)[:, None, :].to(m.dtype)
            m = self.phi_e[4](self.phi_e[3](self.phi_e[2](m)))
            m = m * self.phi_m(m)  # gate in (0, 1)
            agg.append(torch.einsum("bij,bijc->bic", w.to(m.dtype), m))  # sum over real j: batched matmul
            if not self.last_layer:
                # Equivariant coordinate step: mean of relative four-vectors weighted by an invariant, kept in
                # the coordinates' precision (GeV four-vectors; under autocast too).
                trans = (x_diff[g] * self.phi_x(m).to(x.dtype)).clamp(-100.0, 100.0)  # (b, L, L, 4)
                dx.append((trans * w[..., None].to(x.dtype)).sum(2) / grid.deg[g].to(x.dtype))
        if not self.last_layer:
            x = x + self.c_weight * grid.merge(dx)

        phi_h = self.phi_h
        dh = phi_h[0](torch.cat([h, grid.merge(agg).to(h.dtype), s.to(h.dtype)], dim=-1))
        dh = phi_h[3](phi_h[2](phi_h[1](dh, node_mask)))
        return h + dh, x

    def _chain_weights(self) -> list:
        """The weights :class:`PairChain` takes after ``w_e``: phi_e.3, phi_m.0 and phi_x.0, phi_x.2 (None in the
        last block)."""
        weights = [self.phi_e[3].weight, self.phi_e[3].bias, self.phi_m[0].weight, self.phi_m[0].bias]
        if self.last_layer:
            return weights + [None, None, None]
        return weights + [self.phi_x[0].weight, self.phi_x[0].bias, self.phi_x[2].weight]

    def _fused(self, h: torch.Tensor) -> str | bool:
        """How the pair chain runs: "triton" (:mod:`jetkd.models.pair_triton`) with ``pair_kernel="triton"``, or
        "auto" on CUDA (h float32 or half, triton importable); else True (:class:`PairChain`) on CPU without
        autocast; else False (the plain modules). Never fused while a hook listens on a module the chain bypasses
        (phi_e.2 .. phi_e.4, phi_m, phi_x), so it still fires, nor while exporting (torch.export / ONNX), which
        traces the plain modules."""
        if torch.compiler.is_exporting():
            return False
        chain = [*self.phi_e[2:], *self.phi_m, *(self.phi_x if not self.last_layer else ())]
        if any(m._forward_hooks or m._forward_pre_hooks for m in chain):
            return False
        if self.pair_kernel == "triton" or (self.pair_kernel == "auto" and h.device.type == "cuda"
                                            and h.dtype in (torch.float32, torch.bfloat16, torch.float16)
                                            and _pair_triton(required=False) is not None):
            return "triton"
        return h.device.type == "cpu" and not torch.is_autocast_enabled("cpu")

    def _moments(self, a, b, w_e, e, grid: PairGrid, xs, node_masks):
        """Moments over real pairs of pre_ij = a_i + b_j + u_ij, u_ij = W_e e_ij, from per-node sums (no pair
        tensor of width C): ``(count, total, centred_sq)`` for :meth:`PairBatchNorm.fold`. a, b: (B, M, C);
        e: the groups' invariants (b, L, L, 2), or empty on the Triton path, where :func:`jetkd.models.pair_triton.
        pair_moments` sums them per node from xs and node_masks (the groups' nodes) instead. Uses that the pair
        mask w and the invariants e are symmetric in (i, j) (exactly, in floating point too), so row sums serve
        for columns. Eval mode: nothing (running stats)."""
        if not self.phi_e[1].training:
            return ()
        real = grid.node_mask.to(a.dtype)[..., None]  # (B, M, 1)
        deg = grid.degree.to(a.dtype)  # (B, M, 1) real neighbours, 0 on padding
        wb = real * ((real * b).sum(1, keepdim=True) - real * b)  # (B, M, C): sum_j w_ij b_j
        if e:  # row sums of e over real neighbours, and sum_ij w e e^T, from the materialised e
            r, see = [], 0.0
            for w, eg in zip(grid.w, e):
                w, eg = w.to(a.dtype), eg.to(a.dtype)
                r.append(torch.einsum("bij,bijk->bik", w, eg))  # (b, L, 2)
                see = see + (eg * w[..., None]).reshape(-1, 2).T @ eg.reshape(-1, 2)  # (2, 2)
            r = grid.merge(r)
        else:  # the same sums from the nodes, in the kernels: (e0, e1, e0^2, e0 e1, e1^2) per node
            sums = grid.merge([_pair_triton().pair_moments(xg, nm) for xg, nm in zip(xs, node_masks)]).to(a.dtype)
            r, t = sums[..., :2], sums.sum((0, 1))
            see = torch.stack([t[2], t[3], t[3], t[4]]).view(2, 2)
        u = r @ w_e.T  # (B, M, C): sum_j u_ij

        def centred_sq(mean):
            # sum_ij w (a~_i + b_j + u_ij)^2 with a~ = a - mean, expanded into per-node sums
            at = a - mean
            per_node = deg * (at * at + b * b) + 2 * at * wb + 2 * (at + b) * u
            return per_node.sum((0, 1)) + ((w_e @ see) * w_e).sum(1)

        return deg.sum(), (deg * (a + b) + u).sum((0, 1)), centred_sq


def _check_pair_kernel(value: str) -> str:
    if value not in PAIR_KERNELS:
        raise ValueError(f"pair_kernel must be one of {', '.join(PAIR_KERNELS)}, got {value!r}")
    return value


def _pair_triton(required: bool = True):
    """:mod:`jetkd.models.pair_triton` (imported on first use: importing jetkd never imports triton), or None if
    triton is missing and not ``required``."""
    try:
        from jetkd.models import pair_triton
    except ImportError as err:
        if required:
            raise RuntimeError("pair_kernel='triton' needs the triton package (CUDA builds of torch ship it; "
                               "pip install 'triton>=3.4,<4' for CPU runs under TRITON_INTERPRET=1)") from err
        return None
    return pair_triton


class LorentzNet(nn.Module):
    """LorentzNet jet tagger on raw four-vectors: ``model(p4, mask) -> logits``.

    n_scalar: node scalars (2: particle mass, beam mass); n_hidden: C; n_class: outputs; n_layers: LGEBs;
    c_weight: coordinate step size; dropout: before the last decoder layer. Defaults: the published
    top-tagging configuration. ``group_cost`` (attribute, in pairs): overhead per length group of the pair
    grid (see :class:`PairGrid`); None picks one per device, ``math.inf`` gives one padded (B, M, M) grid.
    pair_kernel (also a settable attribute; a model-config key): how each block's per-pair chain runs. "auto":
    the fused Triton kernels (:mod:`jetkd.models.pair_triton`) on CUDA in float32 or half precision, else what
    "torch" runs; "torch": :class:`PairChain` on CPU, the plain per-module path elsewhere; "triton": the Triton
    kernels on any device (on CPU only under TRITON_INTERPRET=1, else an error). Hooks on the bypassed modules
    and exporting always take the plain path. Same maths and parameters whichever runs.
    """

    group_cost: float | None = None
    extra_nodes = 2  # per-node tensors (B, M, C) hold the two beams before the constituents (for taps)
    # What it computes from p4 (the input contract): Minkowski invariants of the constituents and the two beams.
    input_features = ("minkowski_invariants", "mass", "beams")

    def __init__(self, n_scalar: int = 2, n_hidden: int = 72, n_class: int = 2, n_layers: int = 6,
                 c_weight: float = 5e-3, dropout: float = 0.2, pair_kernel: str = "auto"):
        super().__init__()
        self.n_scalar, self.n_hidden, self.n_layers, self.n_class = n_scalar, n_hidden, n_layers, n_class
        self.embedding = nn.Linear(n_scalar, n_hidden)
        self.LGEBs = nn.ModuleList(
            LGEB(n_hidden, n_scalar, c_weight, last_layer=(i == n_layers - 1)) for i in range(n_layers))
        self.graph_dec = nn.Sequential(nn.Linear(n_hidden, n_hidden), nn.ReLU(), nn.Dropout(dropout),
                                       nn.Linear(n_hidden, n_class))
        self.pair_kernel = pair_kernel

    @property
    def pair_kernel(self) -> str:
        return self._pair_kernel

    @pair_kernel.setter
    def pair_kernel(self, value: str) -> None:
        self._pair_kernel = _check_pair_kernel(value)
        for block in self.LGEBs:
            block.pair_kernel = value

    def forward(self, p4: torch.Tensor, mask: torch.Tensor, beams: torch.Tensor | None = None) -> torch.Tensor:
        """p4: (B, N, 4) ``[E, px, py, pz]`` GeV zero-padded; mask: (B, N) bool; beams: optional (2, 4) or
        (B, 2, 4) beam four-vectors replacing :data:`BEAMS` (to transform them with the constituents).
        Returns logits (B, n_class)."""
        x, s, node_mask = graph_inputs(p4, mask, beams)
        cost = default_group_cost(x.device) if self.group_cost is None else self.group_cost
        if torch.compiler.is_exporting():  # one padded grid: the grouping decides shapes from the data
            cost = math.inf
        grid = PairGrid(node_mask, cost)
        h = self.embedding(s)  # (B, M, C)
        for block in self.LGEBs:
            h, x = block(h, x, s, node_mask, grid)
        # Mean over real nodes, beams included (the original averages over the padded length instead).
        w = node_mask.to(h.dtype)[..., None]
        h = (h * w).sum(1) / w.sum(1)
        return self.graph_dec(h)


#: the hyperparameters the published top-tagging checkpoint was trained with
PUBLISHED_HPARAMS = {"n_scalar": 2, "n_hidden": 72, "n_class": 2, "n_layers": 6, "c_weight": 0.005, "dropout": 0.2}


def load_published(path: str | Path, **kwargs) -> LorentzNet:
    """The published top-tagging checkpoint (``best-val-model.pt`` of LorentzNet-release) as a LorentzNet in
    eval mode. ``kwargs`` override the hyperparameters it was trained with (e.g. ``dropout``)."""
    hparams = PUBLISHED_HPARAMS | kwargs
    model = LorentzNet(**hparams)
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    model.load_state_dict(state, strict=True)
    return model.eval()
