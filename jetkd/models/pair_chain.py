"""The per-pair chain of a LorentzNet block, fused and computed in cache-sized chunks (CPU).

For one (b, L, L) grid of node pairs (see :class:`jetkd.models.lorentznet.PairGrid`), w_ij the pair mask:

    p_ij   = A_i + B_j + W_e e_ij                     (phi_e.0 and its BatchNorm, folded)
    m_ij   = relu(W_3 relu(p_ij) + b_3)               (phi_e.2 .. phi_e.4)
    m_ij  <- m_ij * sigmoid(W_m m_ij + b_m)           (phi_m)
    agg_i  = sum_j w_ij m_ij
    dx_i   = sum_j w_ij clamp(x_diff_ij phi_x(m_ij), -100, 100),   phi_x(m) = W_x2 relu(W_x0 m + b_x0)

Unfused, every line is a pass over (b, L, L, C) tensors of tens of MB, forward and backward, far beyond the
caches, and every fresh one costs page faults. :class:`PairChain` walks the grid in chunks of about
:data:`CHUNK_PAIRS` pairs (whole jets, or rows of one jet), so a chunk's (pairs, C) tensors stay in cache. It
keeps per pair only what backward cannot get without a (C, C) matmul -- phi_e's output m before the gate and
relu(W_x0 m + b_x0), 2 C floats -- and recomputes the cheap rest (p from the node tensors, the gated m) chunk by
chunk in a hand-written backward. Every (C, C) matmul of the unfused chain runs once, none more.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

# Pairs per chunk: a (pairs, 72) float32 tensor is 4.7 MB; the handful a chunk keeps live fit in L3 (32 MB on the
# 2-core reference machine). Smaller chunks pay more per-op overhead (and likely split each product less evenly
# between the threads): in interleaved training steps (batch 32 and 128), 16384 pairs ran 11-13% faster than
# 4096 and 2-5% faster than 8192, 32768 or 65536.
CHUNK_PAIRS = 16384


def chunk_slices(b: int, L: int) -> list[tuple[slice, slice]]:
    """(jets, rows) slices covering a (b, L, L) grid: whole jets while they fit in :data:`CHUNK_PAIRS`, else
    blocks of rows of one jet."""
    if L * L <= CHUNK_PAIRS:
        n = CHUNK_PAIRS // (L * L)
        return [(slice(k, min(k + n, b)), slice(0, L)) for k in range(0, b, n)]
    n = max(1, CHUNK_PAIRS // L)
    return [(slice(k, k + 1), slice(i, min(i + n, L))) for k in range(b) for i in range(0, L, n)]


def _relu_grad(grad: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``grad`` where the ReLU output ``out`` is positive, else 0 (a new tensor)."""
    return torch.ops.aten.threshold_backward(grad, out, 0)


def _pre(A, B, e, w_e, k, i):
    """p_ij = A_i + B_j + W_e e_ij of chunk (k, i), fresh: (jets, rows, L, C) and its (pairs, C) view."""
    ab = A[k, i, None] + B[k, None]
    # addmm, not addmm_ into ab: FlopCounterMode counts the out-of-place op only
    flat = torch.addmm(ab.view(-1, ab.shape[-1]), e[k, i].reshape(-1, 2), w_e.t())
    return flat.view(ab.shape), flat


class PairChain(torch.autograd.Function):
    """``(agg, dx) = PairChain.apply(A, B, e, x_diff, w, w_e, w_3, b_3, w_m, b_m, w_x0, b_x0, w_x2)``.

    A, B: (b, L, C) node terms of the folded phi_e.0 (row i, column j); e: (b, L, L, 2) edge invariants;
    x_diff: (b, L, L, 4) x_i - x_j, GeV, or None (last block: no coordinate step; w_x0, b_x0, w_x2 None too);
    w: (b, L, L) pair mask, 0 or 1 (no gradient); w_e: (C, 2) folded phi_e.0 edge columns; w_3 (C, C), b_3 (C,):
    phi_e.3; w_m (1, C), b_m (1,): phi_m.0; w_x0 (C, C), b_x0 (C,): phi_x.0; w_x2 (1, C): phi_x.2.
    Returns agg (b, L, C) = sum_j w_ij m_ij and dx (b, L, 4) = sum_j w_ij clamp(x_diff_ij phi_x(m_ij)), GeV
    (None in the last block). All tensors contiguous, one dtype. Gradients flow to every input but w.
    The pair mask is folded into the gate and phi_x (both 0 on padded pairs), so sums over j need no mask.
    """

    @staticmethod
    def forward(ctx, A, B, e, x_diff, w, w_e, w_3, b_3, w_m, b_m, w_x0, b_x0, w_x2):
        b, L, C = A.shape
        coords = x_diff is not None
        agg = A.new_empty(b, L, C)
        dx = A.new_empty(b, L, 4) if coords else None
        saved = []  # per chunk: m0 (n, C), gw (n, 1), r2 (n, C), pw (n, 1)
        for k, i in chunk_slices(b, L):
            r1 = _pre(A, B, e, w_e, k, i)[1].relu_()
            m0 = torch.addmm(b_3, r1, w_3.t()).relu_()  # phi_e's output, ungated
            wk = w[k, i].reshape(-1, 1)
            gw = torch.addmm(b_m, m0, w_m.t()).sigmoid_().mul_(wk)  # the gate, 0 on padded pairs
            m = m0 * gw
            torch.sum(m.view(-1, L, C), 1, out=agg[k, i].view(-1, C))
            r2 = pw = None
            if coords:
                r2 = torch.addmm(b_x0, m, w_x0.t()).relu_()
                pw = torch.mm(r2, w_x2.t()).mul_(wk)  # phi_x, 0 on padded pairs
                t = (x_diff[k, i].reshape(-1, 4) * pw).clamp_(-100.0, 100.0)
                torch.sum(t.view(-1, L, 4), 1, out=dx[k, i].view(-1, 4))
            saved += [m0, gw, r2, pw]
        ctx.save_for_backward(A, B, e, x_diff, w, w_e, w_3, w_m, w_x0, w_x2, *saved)
        return agg, dx

    @staticmethod
    @once_differentiable
    def backward(ctx, g_agg, g_dx):
        A, B, e, x_diff, w, w_e, w_3, w_m, w_x0, w_x2, *saved = ctx.saved_tensors
        b, L, C = A.shape
        coords = x_diff is not None
        need = ctx.needs_input_grad
        g_agg = torch.zeros_like(A) if g_agg is None else g_agg.contiguous()
        dA, dB = torch.empty_like(A), torch.zeros_like(B)
        de = torch.empty_like(e) if need[2] else None
        dxd = torch.empty_like(x_diff) if coords and need[3] else None
        w_e_t, dw_e_t = w_e.t().contiguous(), w_e.new_zeros(2, C)  # (2, C): MKL is slow with w_e's own layout
        dw_3, db_3, dw_m, db_m = torch.zeros_like(w_3), w_3.new_zeros(C), torch.zeros_like(w_m), w_m.new_zeros(1)
        if coords:
            g_dx = torch.zeros_like(A[..., :4]) if g_dx is None else g_dx.contiguous()
            dw_x0, db_x0, dw_x2 = torch.zeros_like(w_x0), w_x0.new_zeros(C), torch.zeros_like(w_x2)
        for (k, i), (m0, gw, r2, pw) in zip(chunk_slices(b, L), zip(*[iter(saved)] * 4)):
            p, r1 = _pre(A, B, e, w_e, k, i)
            r1.relu_()
            ga = g_agg[k, i, None]  # (jets, rows, 1, C): d loss / d m_ij (m is 0 on padded pairs)
            if coords:
                xd = x_diff[k, i].reshape(-1, 4)
                u = xd * pw
                inside = ((u >= -100.0) & (u <= 100.0)).view(*p.shape[:-1], 4)  # the clamp passes the gradient
                g4 = (g_dx[k, i, None] * inside).view(-1, 4)  # d loss / d (x_diff phi_x)
                if dxd is not None:
                    torch.mul(g4, pw, out=dxd[k, i].view(-1, 4))
                dpx = (g4 * xd).sum(1, keepdim=True).mul_(w[k, i].reshape(-1, 1))  # (n, 1): d loss / d phi_x
                dw_x2.addmm_(dpx.t(), r2)
                dy = _relu_grad(dpx * w_x2, r2)  # (n, C)
                dw_x0.addmm_(dy.t(), m0 * gw)
                db_x0 += dy.sum(0)
                dm = torch.mm(dy, w_x0)
                dm.view(p.shape).add_(ga)  # (n, C): d loss / d m
                dgate = torch.linalg.vecdot(dm, m0)[:, None]
                dz = dm.mul_(gw)
            else:
                dgate = torch.linalg.vecdot(m0.view(p.shape), ga).view(-1, 1)
                dz = (ga * gw.view(*p.shape[:-1], 1)).view(-1, C)
            ds = dgate.mul_(gw * (1 - gw))  # (n, 1): through the sigmoid, 0 on padded pairs
            dw_m.addmm_(ds.t(), m0)
            db_m += ds.sum()
            dz = _relu_grad(dz.addmm_(ds, w_m), m0)  # (n, C): d loss / d (W_3 relu(p) + b_3)
            dw_3.addmm_(dz.t(), r1)
            db_3 += dz.sum(0)
            dp = _relu_grad(torch.mm(dz, w_3), r1)  # (n, C): d loss / d p
            torch.sum(dp.view(p.shape), 2, out=dA[k, i])
            dB[k] += dp.view(p.shape).sum(1)
            dw_e_t.addmm_(e[k, i].reshape(-1, 2).t(), dp)
            if de is not None:
                torch.mm(dp, w_e_t.t(), out=de[k, i].view(-1, 2))
        phi_x = (dw_x0, db_x0, dw_x2) if coords else (None, None, None)
        return dA, dB, de, dxd, None, dw_e_t.t(), dw_3, db_3, dw_m, db_m, *phi_x
