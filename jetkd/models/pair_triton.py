"""The per-pair chain of a LorentzNet block as fused Triton kernels (GPU; CPU through Triton's interpreter).

Same maths and outputs as :class:`jetkd.models.pair_chain.PairChain` (whose docstring states the chain), for
one (b, L, L) grid of node pairs, but from the nodes alone: the kernels take the four-vectors x (b, L, 4) and
the node mask (b, L) and compute, per tile, what LGEB materialises for PairChain -- the invariants
e_ij = psi([||x_i - x_j||^2, <x_i, x_j>]) (Minkowski, rounded as LGEB rounds them), x_diff_ij = x_i - x_j and
the pair mask w_ij = mask_i mask_j [i != j]:

    p_ij   = A_i + B_j + W_e e_ij                     (phi_e.0 and its BatchNorm, folded)
    m_ij   = relu(W_3 relu(p_ij) + b_3)               (phi_e.2 .. phi_e.4)
    m_ij  <- m_ij * sigmoid(W_m m_ij + b_m)           (phi_m)
    agg_i  = sum_j w_ij m_ij
    dx_i   = sum_j w_ij clamp(x_diff_ij phi_x(m_ij), -100, 100),   phi_x(m) = W_x2 relu(W_x0 m + b_x0)

Algorithm (FlashAttention's pattern, with the pair grid in place of the attention matrix). One program per jet and
block of ``BI`` rows i; it loops over blocks of ``BJ`` columns j and builds the (BI * BJ, C) tile of pairs in
registers: the pairs' x_diff, invariants and mask from the tile's node rows x_i, x_j, then p from the node rows A_i,
B_j and the two invariants, relu, phi_e's C x C product (``tl.dot``), + b_3, relu, the gate, the second C x C
product of phi_x, and adds the tile's sums over j into the row block's accumulators (agg_i: BI x C, dx_i: BI x 4),
which are written once at the end. Nothing of width C per pair leaves the chip, forward or backward.

Backward recomputes the tile's forward (p, relu(p), m before the gate, the gate, relu(W_x0 m + b_x0): the two
forward C x C products) from the same inputs instead of keeping anything per pair, then runs the chain's four
backward C x C products (d/dm through phi_x, the weight gradients of phi_x.0 and phi_e.3, d/dp) on the tile. d/dA_i
(a sum over j) accumulates in registers; d/dB_j (a sum over i, i.e. over programs) goes out with ``atomic_add`` per
tile; d/de_ij (through psi' = 1 / (1 + |v|)) and d/dx_diff_ij go back through the Minkowski products to the
coordinates in registers, d/dx_i (a sum over j) and d/dx_j (a sum over i) added with ``atomic_add`` into one (b, L,
4) gradient, so nothing per pair is stored; every weight and bias gradient accumulates over the program's pairs in
registers and is written as one partial sum per program, summed afterwards (deterministic; no atomics on weights). A
training step thus runs 8 (pairs, C) x (C, C) products per block where :class:`PairChain` runs 6 (it keeps 2 C
floats per pair instead).

Memory. The chain holds no per-pair tensor, forward or backward: its inputs, outputs, their gradients and the
(C, C) partial sums per program are O(N C) per jet (at batch 128 with ~130 nodes per jet, ~2.2 M pairs, 60 MB
per block, where one (pairs, 72) float32 tensor of the plain path is 630 MB). The BatchNorm statistics over pairs
(training) come from :func:`pair_moments`, two more kernels of the same pattern with scalars per pair: per node,
sums over j of e_ij and e_ij e_ij^T (5 numbers), and their backward to x (each row block sums its own rows: no
atomics). With them a LorentzNet block on these kernels allocates nothing per pair, forward or backward, and
:class:`jetkd.models.lorentznet.PairGrid` counts degrees from the node mask without building pair masks, so a
training step's memory is linear in the constituent count (tests/test_pair_triton.py probes every allocation).

Numerics. Every elementwise step, the gate, the clamp and all sums and accumulators are float32 (float64 when
the inputs are float64, used by the tests under the interpreter), the invariants and their backward included.
Only the operands of the C x C products are rounded: ``precision`` "ieee" (float32 products), "tf32"
(the default on GPU, :data:`GPU_PRECISION`: tensor-core TF32 inputs, 10-bit mantissa, float32 accumulation),
"bf16" (the default under CUDA autocast: bfloat16 inputs, float32 accumulation). Under the interpreter "ieee" is
an exact float32 matmul (numpy); "tf32" / "bf16" are emulated by rounding the operands before a float32 product
(tf32 modelled as truncation to 10 mantissa bits, bf16 as round to nearest). Tolerances (tests/test_pair_triton.py):
"ieee" float32 agrees with float64 to 1e-5 relative to the largest entry (chain: outputs and every gradient), and
a float32 model on the kernels is as close to float64 as one on the existing float32 path. Expected on GPU, and
seen with the emulation (C = 16, 3 blocks, a training step): logits ~1e-3 relative with "tf32" (3.5e-4
measured), ~1e-2 with "bf16" (2.1e-3); gradients relative to the largest gradient ~2e-2 / ~1e-1 (1.5e-2 /
6.6e-2; float32 "ieee" alone gives 1.6e-2 there, the coordinate steps of that test model being large and partly
clamped), since a rounded product moves pairs across ReLU and clamp thresholds. Not yet confirmed on a GPU. The
atomic d/dB and d/dx sums make the gradients of B and x non-deterministic in their last bits on GPU.

Speed. The GPU figures the kernel was written for -- >= 10x the edge-list reference (``scripts/bench_teacher.py``)
at batch 32 and >= 20k jets/s at batch 128 on an H100/H200 -- are NOT measured yet: no GPU was available when it
was written, and it has only run under ``TRITON_INTERPRET=1``. The block sizes (:func:`_blocks`) and warps are
first guesses. Known costs to look at first on a GPU: C = 72 (the published width) is padded to 128 inside the
kernel (tl.arange and tl.dot need powers of two), ~3x the useful products; the backward holds two (C, C)
float32 weight-gradient accumulators per program in registers (a split into two kernels, or atomics per tile,
if it spills); the (BI, BJ, C) -> (BI * BJ, C) reshapes may cost layout conversions.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

PRECISIONS = ("ieee", "tf32", "bf16")
# Products' input precision on a GPU without autocast (under autocast: "bf16"), and under the interpreter (where
# "tf32" / "bf16" are emulated); float64 inputs always use "ieee".
GPU_PRECISION = "tf32"
INTERPRETER_PRECISION = "ieee"


def interpreted() -> bool:
    """Whether these kernels run under Triton's interpreter (TRITON_INTERPRET=1 when this module was imported)."""
    return _INTERPRETED


@triton.jit
def _dot(a, b, PRECISION: tl.constexpr, INTERPRET: tl.constexpr):
    """a @ b with operands rounded as ``PRECISION`` says, accumulated in a's dtype (float32 or float64)."""
    if PRECISION == "bf16":
        if INTERPRET:  # numpy has no bfloat16: round the operands, multiply in float32
            out = tl.dot(a.to(tl.bfloat16).to(tl.float32), b.to(tl.bfloat16).to(tl.float32), input_precision="ieee")
        else:
            out = tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16), out_dtype=tl.float32)
    elif PRECISION == "tf32":
        if INTERPRET:  # modelled as truncation to tf32 (10 mantissa bits)
            a = (a.to(tl.uint32, bitcast=True) & 0xFFFFE000).to(tl.float32, bitcast=True)
            b = (b.to(tl.uint32, bitcast=True) & 0xFFFFE000).to(tl.float32, bitcast=True)
            out = tl.dot(a, b, input_precision="ieee")
        else:
            out = tl.dot(a, b, input_precision="tf32")
    else:
        out = tl.dot(a, b, input_precision="ieee")
    return out


@triton.jit
def _gate(a, bj, e0, e1, wij, we0, we1, w3t, b3, wm, bm,
          BI: tl.constexpr, BJ: tl.constexpr, BC: tl.constexpr, PRECISION: tl.constexpr, INTERPRET: tl.constexpr):
    """One tile's forward up to the gate. a: (BI, BC) rows A_i; bj: (BJ, BC) rows B_j; e0, e1: (BI, BJ) invariants;
    wij: (P,) pair mask. Returns relu(p), m0 = phi_e's output before the gate (both (P, BC)) and the gate times
    the pair mask (P,)."""
    p = a[:, None, :] + bj[None, :, :] + (e0[:, :, None] * we0[None, None, :] + e1[:, :, None] * we1[None, None, :])
    r1 = tl.reshape(tl.maximum(p, 0.0), [BI * BJ, BC])
    m0 = tl.maximum(_dot(r1, w3t, PRECISION, INTERPRET) + b3[None, :], 0.0)
    gw = tl.sigmoid(tl.sum(m0 * wm[None, :], 1) + bm) * wij  # 0 on padded pairs
    return r1, m0, gw


@triton.jit
def _psi(v):
    """sign(v) log(|v| + 1) (:func:`jetkd.models.lorentznet.psi`); log1p as log(u) * a / (u - 1), u = 1 + a
    (accurate to a few ulps without libdevice, which the interpreter lacks)."""
    a = tl.abs(v)
    u = 1.0 + a
    l = tl.where(u == 1.0, a, tl.log(u) * (a / tl.where(u == 1.0, 1.0, u - 1.0)))
    return tl.where(v < 0.0, -l, l)


@triton.jit
def _dpsi(v):
    """psi'(v) = 1 / (1 + |v|), 0 at v = 0 (as autograd of sign * log1p(abs) gives)."""
    return tl.where(v == 0.0, 0.0, 1.0 / (1.0 + tl.abs(v)))


@triton.jit
def _nodes(X, NM, k, r, L):
    """Rows r (< L) of jet k: four-vectors (R, 4), their energies (R,) and the node mask (R,), 0 beyond L."""
    ok = r < L
    n = k * L + r
    four = tl.arange(0, 4)
    x = tl.load(X + n[:, None] * 4 + four[None, :], mask=ok[:, None], other=0.0)
    x0 = tl.load(X + n * 4, mask=ok, other=0.0)
    nm = tl.load(NM + n, mask=ok, other=0.0)
    return x, x0, nm


@triton.jit
def _edges(ri, xi, xi0, nmi, rj, xj, xj0, nmj):
    """A tile's pairs from its nodes, rounded as LGEB rounds them: x_i - x_j (BI, BJ, 4), the Minkowski
    products ||x_i - x_j||^2 and <x_i, x_j> (BI, BJ) and the pair mask (real i != j) (BI, BJ)."""
    d = xi[:, None, :] - xj[None, :, :]
    de = xi0[:, None] - xj0[None, :]
    norms = 2.0 * (de * de) - tl.sum(d * d, 2)
    dots = 2.0 * (xi0[:, None] * xj0[None, :]) - tl.sum(xi[:, None, :] * xj[None, :, :], 2)
    w2 = tl.where(ri[:, None] != rj[None, :], nmi[:, None] * nmj[None, :], 0.0)
    return d, norms, dots, w2


@triton.jit
def _row_block(n_ib, BI: tl.constexpr):
    """This program's jet k (int64) and rows ri (BI,): programs run over jets x blocks of BI rows, n_ib per jet."""
    pid = tl.program_id(0)
    return (pid // n_ib).to(tl.int64), (pid % n_ib) * BI + tl.arange(0, BI)


@triton.jit
def _gate_weights(WE, B3, WM, BM, cc, c_ok):
    """The chain's vectors up to the gate, channels cc (padding 0): W_e's two columns, b_3, w_m and b_m."""
    we0 = tl.load(WE + cc * 2, mask=c_ok, other=0.0)
    we1 = tl.load(WE + cc * 2 + 1, mask=c_ok, other=0.0)
    b3 = tl.load(B3 + cc, mask=c_ok, other=0.0)
    wm = tl.load(WM + cc, mask=c_ok, other=0.0)
    return we0, we1, b3, wm, tl.load(BM)


@triton.jit
def _column_tile(Bn, X, NM, k, j0, L, C, cc, c_ok, ri, xi, xi0, nmi, BI: tl.constexpr, BJ: tl.constexpr):
    """Columns j0 .. j0 + BJ of jet k against the program's rows: their indices rj and validity, their B_j rows
    (BJ, BC), four-vectors x_j, and the tile's pairs (:func:`_edges`) with the pair mask flat, (BI * BJ,)."""
    rj = j0 + tl.arange(0, BJ)
    col_ok = rj < L
    bj = tl.load(Bn + (k * L + rj)[:, None] * C + cc[None, :], mask=col_ok[:, None] & c_ok[None, :], other=0.0)
    xj, xj0, nmj = _nodes(X, NM, k, rj, L)
    xd, norms, dots, w2 = _edges(ri, xi, xi0, nmi, rj, xj, xj0, nmj)
    return rj, col_ok, bj, xj, xd, norms, dots, w2, tl.reshape(w2, [BI * BJ])


@triton.jit
def _pair_fwd(A, Bn, X, NM, WE, W3, B3, WM, BM, WX0, BX0, WX2, AGG, DX, L, C, n_ib,
              COORDS: tl.constexpr, ACC: tl.constexpr, BI: tl.constexpr, BJ: tl.constexpr, BC: tl.constexpr,
              PRECISION: tl.constexpr, INTERPRET: tl.constexpr):
    """Program (jet k, row block ib): agg and dx of rows ib * BI .. + BI. All tensors contiguous."""
    k, ri = _row_block(n_ib, BI)
    cc = tl.arange(0, BC)
    four = tl.arange(0, 4)
    row_ok, c_ok = ri < L, cc < C
    rows = k * L + ri
    a = tl.load(A + rows[:, None] * C + cc[None, :], mask=row_ok[:, None] & c_ok[None, :], other=0.0)
    xi, xi0, nmi = _nodes(X, NM, k, ri, L)
    we0, we1, b3, wm, bm = _gate_weights(WE, B3, WM, BM, cc, c_ok)
    wmask = c_ok[:, None] & c_ok[None, :]
    w3t = tl.load(W3 + cc[None, :] * C + cc[:, None], mask=wmask, other=0.0)  # [in, out] = W_3^T
    if COORDS:
        wx0t = tl.load(WX0 + cc[None, :] * C + cc[:, None], mask=wmask, other=0.0)
        bx0 = tl.load(BX0 + cc, mask=c_ok, other=0.0)
        wx2 = tl.load(WX2 + cc, mask=c_ok, other=0.0)
    agg = tl.zeros([BI, BC], dtype=ACC)
    dx = tl.zeros([BI, 4], dtype=ACC)
    for j0 in range(0, L, BJ):
        rj, col_ok, bj, xj, xd, norms, dots, w2, wij = _column_tile(Bn, X, NM, k, j0, L, C, cc, c_ok, ri, xi, xi0, nmi,
                                                                   BI, BJ)
        _, m0, gw = _gate(a, bj, _psi(norms), _psi(dots), wij, we0, we1, w3t, b3, wm, bm, BI, BJ, BC, PRECISION,
                          INTERPRET)
        m = m0 * gw[:, None]
        agg += tl.sum(tl.reshape(m, [BI, BJ, BC]), 1)
        if COORDS:
            r2 = tl.maximum(_dot(m, wx0t, PRECISION, INTERPRET) + bx0[None, :], 0.0)
            pw = tl.reshape(tl.sum(r2 * wx2[None, :], 1) * wij, [BI, BJ])  # phi_x, 0 on padded pairs
            dx += tl.sum(tl.minimum(tl.maximum(xd * pw[:, :, None], -100.0), 100.0), 1)
    tl.store(AGG + rows[:, None] * C + cc[None, :], agg, mask=row_ok[:, None] & c_ok[None, :])
    if COORDS:
        tl.store(DX + rows[:, None] * 4 + four[None, :], dx, mask=row_ok[:, None])


@triton.jit
def _pair_bwd(A, Bn, X, NM, WE, W3, B3, WM, BM, WX0, BX0, WX2, GAGG, GDX,
              DA, DB, DXN, PW3, PB3, PWM, PBM, PWE, PWX0, PBX0, PWX2, L, C, n_ib,
              COORDS: tl.constexpr, GRAD_X: tl.constexpr, ACC: tl.constexpr,
              BI: tl.constexpr, BJ: tl.constexpr, BC: tl.constexpr, PRECISION: tl.constexpr,
              INTERPRET: tl.constexpr):
    """Program (jet k, row block ib): recomputes its tiles' forward, writes dA of its rows, adds dB of each
    tile's columns atomically, adds d/dx of its rows and of each tile's columns atomically (GRAD_X),
    writes its partial sums of the weight gradients
    (row ``pid`` of the P* buffers)."""
    pid = tl.program_id(0)
    k, ri = _row_block(n_ib, BI)
    cc = tl.arange(0, BC)
    four = tl.arange(0, 4)
    row_ok, c_ok = ri < L, cc < C
    rows = k * L + ri
    rc_mask = row_ok[:, None] & c_ok[None, :]
    a = tl.load(A + rows[:, None] * C + cc[None, :], mask=rc_mask, other=0.0)
    xi, xi0, nmi = _nodes(X, NM, k, ri, L)
    eta = tl.where(four == 0, 1.0, -1.0)  # the Minkowski metric's diagonal
    dxi = tl.zeros([BI, 4], dtype=ACC)
    ga = tl.load(GAGG + rows[:, None] * C + cc[None, :], mask=rc_mask, other=0.0)  # d loss / d agg_i
    ga = tl.reshape(tl.broadcast_to(ga[:, None, :], [BI, BJ, BC]), [BI * BJ, BC])  # d loss / d m_ij (m is 0 off w)
    we0, we1, b3, wm, bm = _gate_weights(WE, B3, WM, BM, cc, c_ok)
    wmask = c_ok[:, None] & c_ok[None, :]
    w3 = tl.load(W3 + cc[:, None] * C + cc[None, :], mask=wmask, other=0.0)  # [out, in]
    w3t = tl.trans(w3)
    # weight-gradient accumulators
    dw3 = tl.zeros([BC, BC], dtype=ACC)
    db3 = tl.zeros([BC], dtype=ACC)
    dwm = tl.zeros([BC], dtype=ACC)
    dbm = tl.zeros([BI * BJ], dtype=ACC)
    dwe0 = tl.zeros([BC], dtype=ACC)
    dwe1 = tl.zeros([BC], dtype=ACC)
    da = tl.zeros([BI, BC], dtype=ACC)
    if COORDS:
        wx0 = tl.load(WX0 + cc[:, None] * C + cc[None, :], mask=wmask, other=0.0)
        wx0t = tl.trans(wx0)
        bx0 = tl.load(BX0 + cc, mask=c_ok, other=0.0)
        wx2 = tl.load(WX2 + cc, mask=c_ok, other=0.0)
        gdx = tl.load(GDX + rows[:, None] * 4 + four[None, :], mask=row_ok[:, None], other=0.0)
        dwx0 = tl.zeros([BC, BC], dtype=ACC)
        dbx0 = tl.zeros([BC], dtype=ACC)
        dwx2 = tl.zeros([BC], dtype=ACC)
    for j0 in range(0, L, BJ):
        rj, col_ok, bj, xj, xd, norms, dots, w2, wij = _column_tile(Bn, X, NM, k, j0, L, C, cc, c_ok, ri, xi, xi0, nmi,
                                                                   BI, BJ)
        e0, e1 = _psi(norms), _psi(dots)
        r1, m0, gw = _gate(a, bj, e0, e1, wij, we0, we1, w3t, b3, wm, bm, BI, BJ, BC, PRECISION, INTERPRET)
        if COORDS:
            m = m0 * gw[:, None]
            r2 = tl.maximum(_dot(m, wx0t, PRECISION, INTERPRET) + bx0[None, :], 0.0)
            pw = tl.reshape(tl.sum(r2 * wx2[None, :], 1), [BI, BJ]) * w2  # phi_x, 0 on padded pairs
            u = xd * pw[:, :, None]
            g4 = tl.where((u >= -100.0) & (u <= 100.0), gdx[:, None, :], 0.0)  # the clamp passes the gradient
            dpx = tl.reshape(tl.sum(g4 * xd, 2) * w2, [BI * BJ])  # d loss / d phi_x
            dwx2 += tl.sum(dpx[:, None] * r2, 0)
            dy = tl.where(r2 > 0.0, dpx[:, None] * wx2[None, :], 0.0)  # d loss / d (W_x0 m + b_x0)
            dwx0 += _dot(tl.trans(dy), m, PRECISION, INTERPRET)
            dbx0 += tl.sum(dy, 0)
            dm = _dot(dy, wx0, PRECISION, INTERPRET) + ga  # d loss / d m
        else:
            dm = ga
        ds = tl.sum(dm * m0, 1) * gw * (1.0 - gw)  # through the sigmoid, 0 on padded pairs
        dwm += tl.sum(ds[:, None] * m0, 0)
        dbm += ds
        dz = tl.where(m0 > 0.0, dm * gw[:, None] + ds[:, None] * wm[None, :], 0.0)  # d / d (W_3 relu(p) + b_3)
        dw3 += _dot(tl.trans(dz), r1, PRECISION, INTERPRET)
        db3 += tl.sum(dz, 0)
        dp = tl.where(r1 > 0.0, _dot(dz, w3, PRECISION, INTERPRET), 0.0)  # d loss / d p
        dp3 = tl.reshape(dp, [BI, BJ, BC])
        da += tl.sum(dp3, 1)
        tl.atomic_add(DB + (k * L + rj)[:, None] * C + cc[None, :], tl.sum(dp3, 0),
                      mask=col_ok[:, None] & c_ok[None, :])
        e0f = tl.reshape(e0, [BI * BJ])
        e1f = tl.reshape(e1, [BI * BJ])
        dwe0 += tl.sum(dp * e0f[:, None], 0)
        dwe1 += tl.sum(dp * e1f[:, None], 0)
        if GRAD_X:
            # through psi and the Minkowski products: d/d(x_i - x_j) (BI, BJ, 4) and d/d<x_i, x_j> (BI, BJ)
            dn = tl.reshape(tl.sum(dp * we0[None, :], 1), [BI, BJ]) * _dpsi(norms) * w2
            dd = tl.reshape(tl.sum(dp * we1[None, :], 1), [BI, BJ]) * _dpsi(dots) * w2
            gd = (2.0 * dn)[:, :, None] * (xd * eta[None, None, :])
            if COORDS:
                gd += g4 * pw[:, :, None]  # d / d x_diff through the coordinate step
            dxi += tl.sum(gd + dd[:, :, None] * (xj * eta[None, :])[None, :, :], 1)
            dxj = tl.sum(dd[:, :, None] * (xi * eta[None, :])[:, None, :] - gd, 0)
            tl.atomic_add(DXN + (k * L + rj)[:, None] * 4 + four[None, :], dxj, mask=col_ok[:, None])
    tl.store(DA + rows[:, None] * C + cc[None, :], da, mask=rc_mask)
    if GRAD_X:
        tl.atomic_add(DXN + rows[:, None] * 4 + four[None, :], dxi, mask=row_ok[:, None])
    part = pid.to(tl.int64)
    tl.store(PW3 + part * C * C + cc[:, None] * C + cc[None, :], dw3, mask=wmask)
    tl.store(PB3 + part * C + cc, db3, mask=c_ok)
    tl.store(PWM + part * C + cc, dwm, mask=c_ok)
    tl.store(PBM + part, tl.sum(dbm, 0))
    tl.store(PWE + part * C * 2 + cc * 2, dwe0, mask=c_ok)
    tl.store(PWE + part * C * 2 + cc * 2 + 1, dwe1, mask=c_ok)
    if COORDS:
        tl.store(PWX0 + part * C * C + cc[:, None] * C + cc[None, :], dwx0, mask=wmask)
        tl.store(PBX0 + part * C + cc, dbx0, mask=c_ok)
        tl.store(PWX2 + part * C + cc, dwx2, mask=c_ok)


@triton.jit
def _moments_fwd(X, NM, S, L, n_ib, ACC: tl.constexpr, BI: tl.constexpr, BJ: tl.constexpr):
    """Program (jet k, row block ib): S_i = sum_j w_ij (e0, e1, e0^2, e0 e1, e1^2)_ij for its rows, (BI, 5)."""
    k, ri = _row_block(n_ib, BI)
    xi, xi0, nmi = _nodes(X, NM, k, ri, L)
    s0 = tl.zeros([BI], dtype=ACC)
    s1 = tl.zeros([BI], dtype=ACC)
    s00 = tl.zeros([BI], dtype=ACC)
    s01 = tl.zeros([BI], dtype=ACC)
    s11 = tl.zeros([BI], dtype=ACC)
    for j0 in range(0, L, BJ):
        rj = j0 + tl.arange(0, BJ)
        xj, xj0, nmj = _nodes(X, NM, k, rj, L)
        _, norms, dots, w2 = _edges(ri, xi, xi0, nmi, rj, xj, xj0, nmj)
        e0, e1 = _psi(norms), _psi(dots)
        s0 += tl.sum(w2 * e0, 1)
        s1 += tl.sum(w2 * e1, 1)
        s00 += tl.sum(w2 * e0 * e0, 1)
        s01 += tl.sum(w2 * e0 * e1, 1)
        s11 += tl.sum(w2 * e1 * e1, 1)
    out = S + (k * L + ri) * 5
    ok = ri < L
    tl.store(out, s0, mask=ok)
    tl.store(out + 1, s1, mask=ok)
    tl.store(out + 2, s00, mask=ok)
    tl.store(out + 3, s01, mask=ok)
    tl.store(out + 4, s11, mask=ok)


@triton.jit
def _moments_bwd(X, NM, G, DX, L, n_ib, ACC: tl.constexpr, BI: tl.constexpr, BJ: tl.constexpr):
    """Program (jet k, row block ib): d loss / d x_i of its rows from G = d loss / d S (b, L, 5). e_ij = e_ji, so
    pair (i, j) reaches x_i through S_i and S_j alike: dx_i = sum_j w_ij (G_i + G_j) . df/de_ij de_ij/dx_i, with
    f = (e0, e1, e0^2, e0 e1, e1^2). Every row's sum is its own program's: no atomics."""
    k, ri = _row_block(n_ib, BI)
    four = tl.arange(0, 4)
    eta = tl.where(four == 0, 1.0, -1.0)
    xi, xi0, nmi = _nodes(X, NM, k, ri, L)
    row_ok = ri < L
    gi = G + (k * L + ri) * 5
    gi0, gi1 = tl.load(gi, mask=row_ok, other=0.0), tl.load(gi + 1, mask=row_ok, other=0.0)
    gi00, gi01 = tl.load(gi + 2, mask=row_ok, other=0.0), tl.load(gi + 3, mask=row_ok, other=0.0)
    gi11 = tl.load(gi + 4, mask=row_ok, other=0.0)
    dxi = tl.zeros([BI, 4], dtype=ACC)
    for j0 in range(0, L, BJ):
        rj = j0 + tl.arange(0, BJ)
        col_ok = rj < L
        gj = G + (k * L + rj) * 5
        h0 = gi0[:, None] + tl.load(gj, mask=col_ok, other=0.0)[None, :]
        h1 = gi1[:, None] + tl.load(gj + 1, mask=col_ok, other=0.0)[None, :]
        h00 = gi00[:, None] + tl.load(gj + 2, mask=col_ok, other=0.0)[None, :]
        h01 = gi01[:, None] + tl.load(gj + 3, mask=col_ok, other=0.0)[None, :]
        h11 = gi11[:, None] + tl.load(gj + 4, mask=col_ok, other=0.0)[None, :]
        xj, xj0, nmj = _nodes(X, NM, k, rj, L)
        xd, norms, dots, w2 = _edges(ri, xi, xi0, nmi, rj, xj, xj0, nmj)
        e0, e1 = _psi(norms), _psi(dots)
        dn = (h0 + 2.0 * e0 * h00 + e1 * h01) * _dpsi(norms) * w2  # d loss / d ||x_i - x_j||^2
        dd = (h1 + e0 * h01 + 2.0 * e1 * h11) * _dpsi(dots) * w2  # d loss / d <x_i, x_j>
        dxi += tl.sum((2.0 * dn)[:, :, None] * (xd * eta[None, None, :])
                      + dd[:, :, None] * (xj * eta[None, :])[None, :, :], 1)
    tl.store(DX + (k * L + ri)[:, None] * 4 + four[None, :], dxi, mask=row_ok[:, None])


# triton.jit decides at decoration time (TRITON_INTERPRET): a compiled JITFunction or an InterpretedFunction.
_INTERPRETED = type(_pair_fwd).__name__ == "InterpretedFunction"


def _blocks(C: int, backward: bool, block_i: int | None = None, block_j: int | None = None) -> tuple[int, int, int]:
    """(BI, BJ, BC): rows and columns per tile, channels padded to a power of two (>= 16, as tl.dot needs).
    A tile holds BI * BJ pairs: ~8192 / BC in forward, ~4096 / BC in backward (more live tiles), at least 16.
    First guesses, not tuned on a GPU."""
    BC = max(16, triton.next_power_of_2(C))
    pairs = max(16, (4096 if backward else 8192) // BC)
    BI = block_i or min(16, pairs)
    BJ = block_j or max(1, pairs // BI)
    return BI, BJ, BC


def resolve_precision(precision: str | None, dtype: torch.dtype, device: torch.device) -> str:
    """The products' input precision: float64 always "ieee"; else ``precision`` if given; else
    :data:`INTERPRETER_PRECISION` off GPU (interpreter), "bf16" under CUDA autocast, :data:`GPU_PRECISION`."""
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if dtype == torch.float64:
        return "ieee"
    if precision is not None:
        return precision
    if device.type != "cuda":
        return INTERPRETER_PRECISION
    return "bf16" if torch.is_autocast_enabled("cuda") else GPU_PRECISION


def check_device(device: torch.device) -> None:
    """Raise a clear error where the kernels cannot run: CPU tensors without the interpreter."""
    if device.type == "cpu" and not _INTERPRETED:
        raise RuntimeError(
            "pair_kernel='triton' on CPU tensors runs only under Triton's interpreter: set TRITON_INTERPRET=1 "
            "before jetkd.models.pair_triton (triton's kernels) is first imported, or use pair_kernel='torch' "
            "/ 'auto' (the CPU PairChain)")
    if device.type not in ("cpu", "cuda"):
        raise RuntimeError(f"pair_kernel='triton' runs on CUDA devices (or CPU under TRITON_INTERPRET=1), "
                           f"not {device.type}")


class TritonPairChain(torch.autograd.Function):
    """``(agg, dx) = TritonPairChain.apply(A, B, x, node_mask, w_e, w_3, b_3, w_m, b_m, w_x0, b_x0, w_x2,
    precision, blocks)``: :class:`jetkd.models.pair_chain.PairChain`'s outputs, with the pairs' invariants e,
    x_diff and mask w computed in the kernels from the nodes' four-vectors x (b, L, 4) and mask (b, L) (see
    :func:`pair_chain`); ``precision`` one of :data:`PRECISIONS`, resolved; ``blocks`` (block_i, block_j) or
    None. All tensors contiguous, one dtype: float32 (or float64). Use :func:`pair_chain`, which prepares them."""

    @staticmethod
    def forward(ctx, A, B, x, node_mask, w_e, w_3, b_3, w_m, b_m, w_x0, b_x0, w_x2, precision, blocks):
        b, L, C = A.shape
        coords = w_x0 is not None
        agg = A.new_zeros(b, L, C)
        dx = A.new_zeros(b, L, 4) if coords else None
        BI, BJ, BC = _blocks(C, False, *(blocks or ()))
        n_ib = triton.cdiv(L, BI)
        if b * L:
            dummy = A  # stands for the absent phi_x tensors (never read)
            _pair_fwd[(b * n_ib,)](
                A, B, x, node_mask, w_e, w_3, b_3, w_m, b_m,
                *((w_x0, b_x0, w_x2) if coords else (dummy,) * 3), agg, dx if coords else dummy, L, C, n_ib,
                COORDS=coords, ACC=_acc(A.dtype), BI=BI, BJ=BJ, BC=BC, PRECISION=precision,
                INTERPRET=_INTERPRETED, num_warps=4)
        ctx.save_for_backward(A, B, x, node_mask, w_e, w_3, b_3, w_m, b_m, w_x0, b_x0, w_x2)
        ctx.precision, ctx.blocks = precision, blocks
        return agg, dx

    @staticmethod
    def backward(ctx, g_agg, g_dx):
        A, B, x, node_mask, w_e, w_3, b_3, w_m, b_m, w_x0, b_x0, w_x2 = ctx.saved_tensors
        b, L, C = A.shape
        coords = w_x0 is not None
        need = ctx.needs_input_grad
        g_agg = torch.zeros_like(A) if g_agg is None else g_agg.to(A.dtype).contiguous()
        BI, BJ, BC = _blocks(C, True, *(ctx.blocks or ()))
        n_ib = triton.cdiv(L, BI)
        n_prog = b * n_ib
        dA, dB = torch.zeros_like(A), torch.zeros_like(B)
        d_x = torch.zeros_like(x) if need[2] else None
        new = A.new_zeros
        parts = [new(n_prog, C, C), new(n_prog, C), new(n_prog, C), new(n_prog), new(n_prog, C, 2)]
        if coords:
            g_dx = torch.zeros_like(x) if g_dx is None else g_dx.to(A.dtype).contiguous()
            parts += [new(n_prog, C, C), new(n_prog, C), new(n_prog, C)]
        if n_prog:
            dummy = A
            phi_x = (w_x0, b_x0, w_x2) if coords else (dummy,) * 3
            _pair_bwd[(n_prog,)](
                A, B, x, node_mask, w_e, w_3, b_3, w_m, b_m, *phi_x,
                g_agg, g_dx if coords else dummy, dA, dB, dummy if d_x is None else d_x,
                *parts, *([dummy] * (8 - len(parts))), L, C, n_ib,
                COORDS=coords, GRAD_X=d_x is not None, ACC=_acc(A.dtype),
                BI=BI, BJ=BJ, BC=BC, PRECISION=ctx.precision, INTERPRET=_INTERPRETED,
                num_warps=8 if BC >= 64 else 4)
        dw_3, db_3, dw_m, db_m, dw_e, *dphi_x = (t.sum(0) for t in parts)
        if coords:
            dw_x0, db_x0, dw_x2 = dphi_x
            phi_x = (dw_x0, db_x0, dw_x2.view(1, C))
        else:
            phi_x = (None, None, None)
        return (dA, dB, d_x, None, dw_e, dw_3, db_3, dw_m.view(1, C), db_m.view(1), *phi_x, None, None)


class TritonPairMoments(torch.autograd.Function):
    """``S = TritonPairMoments.apply(x, node_mask, blocks)``: per node, sums over its real neighbours of the edge
    invariants and their products, S (b, L, 5) = sum_j w_ij (e0, e1, e0^2, e0 e1, e1^2)_ij with e as
    :class:`TritonPairChain` computes it; differentiable in x. Use :func:`pair_moments`."""

    @staticmethod
    def forward(ctx, x, node_mask, blocks):
        b, L, _ = x.shape
        S = x.new_zeros(b, L, 5)
        BI, BJ = blocks or MOMENT_BLOCKS
        n_ib = triton.cdiv(L, BI)
        if b * L:
            _moments_fwd[(b * n_ib,)](x, node_mask, S, L, n_ib, ACC=_acc(x.dtype), BI=BI, BJ=BJ, num_warps=4)
        ctx.save_for_backward(x, node_mask)
        ctx.blocks = blocks
        return S

    @staticmethod
    def backward(ctx, g_s):
        x, node_mask = ctx.saved_tensors
        b, L, _ = x.shape
        BI, BJ = ctx.blocks or MOMENT_BLOCKS
        n_ib = triton.cdiv(L, BI)
        d_x = torch.zeros_like(x)
        if b * L:
            _moments_bwd[(b * n_ib,)](x, node_mask, g_s.to(x.dtype).contiguous(), d_x, L, n_ib, ACC=_acc(x.dtype),
                                      BI=BI, BJ=BJ, num_warps=4)
        return d_x, None, None


#: (rows, columns) per tile of the moments kernels: scalars per pair only, so larger tiles than the chain's
MOMENT_BLOCKS = (32, 32)


def pair_moments(x, node_mask, *, blocks: tuple[int, int] | None = None) -> torch.Tensor:
    """What the BatchNorm of phi_e needs from the pairs of one grid, as per-node sums (training; see
    :meth:`jetkd.models.lorentznet.LGEB._moments`): x (b, L, 4) the nodes' four-vectors, node_mask (b, L).
    Returns S (b, L, 5) = sum over real j != i of (e0, e1, e0^2, e0 e1, e1^2)_ij, e_ij = psi([||x_i - x_j||^2,
    <x_i, x_j>]); differentiable in x, in float64 for float64 x, else float32. Memory: O(b L), nothing per pair."""
    check_device(x.device)
    dt = torch.float64 if x.dtype == torch.float64 else torch.float32
    return TritonPairMoments.apply(x.to(dt).contiguous(), node_mask.detach().to(dt).contiguous(), blocks)


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def pair_chain(A, B, x, node_mask, w_e, w_3, b_3, w_m, b_m, w_x0, b_x0, w_x2, *,
               precision: str | None = None, blocks: tuple[int, int] | None = None):
    """The pair chain on the Triton kernels, from the nodes: A, B (b, L, C), x (b, L, 4) the nodes'
    four-vectors, node_mask (b, L) (bool or 0/1), then :class:`jetkd.models.pair_chain.PairChain`'s weights
    (w_x0, b_x0, w_x2 None: no coordinate step, dx None). Computes, per pair, what LGEB otherwise materialises
    and PairChain reads: e_ij = psi([||x_i - x_j||^2, <x_i, x_j>]), x_diff_ij = x_i - x_j and w_ij = mask_i
    mask_j [i != j]. Returns ``(agg, dx)`` as PairChain does; differentiable in every input but ``node_mask``
    (d/dx: through e and the coordinate step). Computes in float64 if ``A`` is float64, else in float32 (inputs
    cast, results float32). precision: see :func:`resolve_precision`; blocks: (rows, columns) per tile, powers
    of two (tests; default :func:`_blocks`)."""
    check_device(A.device)
    if blocks is not None and A.device.type == "cuda" and blocks[0] * blocks[1] < 16:
        raise ValueError(f"blocks {blocks}: tl.dot needs at least 16 pairs per tile on a GPU")
    dt = torch.float64 if A.dtype == torch.float64 else torch.float32
    precision = resolve_precision(precision, dt, A.device)
    tensors = [None if t is None else t.to(dt).contiguous()
               for t in (A, B, x, node_mask, w_e, w_3, b_3, w_m, b_m, w_x0, b_x0, w_x2)]
    tensors[3] = tensors[3].detach()
    return TritonPairChain.apply(*tensors, precision, blocks)
