"""Training-step throughput of the dense LorentzNet against the original's edge-list formulation.

Both do the same math with the same weights (checked before timing): the baseline is the original code's
style -- per-batch index lists ``i, j`` of the real edges, ``h[i]``, ``h[j]`` gathers, the concatenation
``[h_i, h_j, norms, dots]`` through ``nn.Linear``, BatchNorm over the edge list, ``index_add_`` to
aggregate -- run on the modules of a :class:`jetkd.models.lorentznet.LorentzNet`; the candidate is that
model's own dense forward (on CPU with the per-pair chain fused and computed in cache-sized chunks,
:mod:`jetkd.models.pair_chain`; the float64 same-math check runs that path too). A step is forward,
cross-entropy, backward and an AdamW step, on batches of jets with realistic multiplicities, each padded to
its own longest jet (as ``JetBatch.from_arrays`` does). The baseline's edge lists are built before the clock
starts (the original builds them in its data loader). On CPU it also times the dense step's per-pair C x C
matrix products on their own, at the same shapes and with the same BLAS calls ("matmul floor"): a float32
dense step cannot be faster than that, whatever it does with the rest.

    python scripts/bench_teacher.py                       # CPU, batch 32 and 128
    python scripts/bench_teacher.py --device cuda --bf16  # GPU, autocast bf16
    python scripts/bench_teacher.py --batch-size 32 --steps 20 --jets reference
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from jetkd.models.lorentznet import (
    LorentzNet,
    PairGrid,
    default_group_cost,
    graph_inputs,
    mdot,
    psi,
)
from jetkd.models.pair_chain import chunk_slices

REFERENCE = Path(__file__).resolve().parents[1] / "../shared/reference/lorentznet_top_parity.npz"


# ----------------------------------------------------------------------------- inputs


def synthetic_jets(n_jets: int, n_max: int = 128, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Massless constituents of ~600 GeV jets; multiplicities a 50/50 mix of QCD-like N(42, 14) and top-like
    N(68, 18), clipped to [10, n_max] (mean ~55). Returns p4 (n_jets, n_max, 4) float32 and counts (n_jets,)."""
    rng = np.random.default_rng(seed)
    top = rng.random(n_jets) < 0.5
    n = np.clip(np.rint(np.where(top, rng.normal(68, 18, n_jets), rng.normal(42, 14, n_jets))), 10, n_max).astype(int)
    p4 = np.zeros((n_jets, n_max, 4), np.float32)
    for k in range(n_jets):  # input generation only, not timed
        frac = np.sort(rng.exponential(1.0, n[k]) ** 2)[::-1]
        pt = 600.0 * frac / frac.sum()
        eta = rng.uniform(-2, 2) + rng.normal(0, 0.25, n[k])
        phi = rng.uniform(-np.pi, np.pi) + rng.normal(0, 0.25, n[k])
        px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
        p4[k, : n[k]] = np.stack([np.sqrt(px**2 + py**2 + pz**2), px, py, pz], -1)
    return p4, n


def reference_jets() -> tuple[np.ndarray, np.ndarray]:
    """The 64 reference jets (Nobj 25..107)."""
    data = np.load(REFERENCE)
    return data["Pmu"], data["Nobj"]


def make_batches(p4: np.ndarray, n: np.ndarray, batch_size: int, count: int, seed: int = 1):
    """``count`` batches of ``batch_size`` jets drawn at random, each trimmed to its longest jet."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        idx = rng.choice(len(n), batch_size, replace=len(n) < batch_size)
        nb = torch.from_numpy(n[idx])
        x = torch.from_numpy(p4[idx, : int(nb.max())])
        mask = torch.arange(x.shape[1]) < nb[:, None]
        out.append((x, mask, torch.from_numpy((n[idx] > 55).astype(np.int64))))  # any labels will do
    return out


# ----------------------------------------------------------------------------- baseline: edge lists


def edge_index(node_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices ``(i, j)`` of all real node pairs i != j of each jet, nodes numbered ``b * M + k``."""
    M = node_mask.shape[1]
    adj = node_mask[:, :, None] & node_mask[:, None, :] & ~torch.eye(M, dtype=torch.bool, device=node_mask.device)
    b, i, j = adj.nonzero(as_tuple=True)
    return b * M + i, b * M + j


def edge_list_forward(model: LorentzNet, p4, mask, edges) -> torch.Tensor:
    """The original LorentzNet forward (edge lists, gathers, index_add_) on ``model``'s modules."""
    x, s, node_mask = graph_inputs(p4, mask)
    B, M, _ = x.shape
    x, s, node_mask = x.reshape(B * M, 4), s.reshape(B * M, -1), node_mask.reshape(B * M)
    i, j = edges
    deg = torch.zeros(B * M, 1, device=x.device, dtype=x.dtype).index_add_(0, i, torch.ones_like(x[i, :1]))
    h = model.embedding(s)
    for blk in model.LGEBs:
        x_diff = x[i] - x[j]
        norms, dots = psi(mdot(x_diff, x_diff))[:, None], psi(mdot(x[i], x[j]))[:, None]
        m = F.linear(torch.cat([h[i], h[j], norms, dots], dim=1), blk.phi_e[0].weight)
        bn = blk.phi_e[1]  # every edge of the list is real: plain (native) BatchNorm, as the original
        if bn.training:
            bn.num_batches_tracked += 1
        m = F.batch_norm(m, bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.training, bn.momentum, bn.eps)
        m = F.relu(blk.phi_e[3](F.relu(m)))
        m = m * blk.phi_m(m)
        if not blk.last_layer:
            trans = torch.clamp(x_diff * blk.phi_x(m), -100, 100)
            agg = torch.zeros_like(x).index_add_(0, i, trans) / deg.clamp(min=1)
            x = x + blk.c_weight * agg
        agg = torch.zeros_like(h).index_add_(0, i, m)
        dh = blk.phi_h[0](torch.cat([h, agg, s], dim=1))
        h = h + blk.phi_h[3](F.relu(blk.phi_h[1](dh, node_mask)))
    w = node_mask.reshape(B, M, 1).to(h.dtype)
    h = (h.reshape(B, M, -1) * w).sum(1) / w.sum(1)
    return model.graph_dec(h)


# ----------------------------------------------------------------------------- timing


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step, batch, device: torch.device) -> float:
    """Seconds for one ``step(batch)``."""
    sync(device)
    t0 = time.perf_counter()
    step(batch)
    sync(device)
    return time.perf_counter() - t0


def pair_matmul_seconds(model: LorentzNet, mask: torch.Tensor, repeats: int = 3) -> float:
    """Seconds that the dense CPU step's per-pair (pairs x C) x (C x C) products take on their own, at the fused
    chain's chunk shapes: per block two forward (phi_e.3, phi_x.0) and four backward (their weight and input
    gradients), one and two in the last block. Everything else in the step is element-wise or small, so this is
    a floor under the dense step time (the best of ``repeats``, warm caches)."""
    C = model.n_hidden
    grid = PairGrid(torch.cat([mask.new_ones(len(mask), 2), mask], 1), default_group_cost(mask.device))
    pairs = [(k.stop - k.start) * (i.stop - i.start) * L for b, L in grid.dims for k, i in chunk_slices(b, L)]
    x, w = torch.randn(max(pairs), C), torch.randn(C, C)
    gw, out = torch.empty(C, C), torch.empty(max(pairs), C)
    layers = sum(2 - block.last_layer for block in model.LGEBs)  # C x C layers per pair
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        for n in pairs * layers:
            torch.mm(x[:n], w, out=out[:n])  # forward
            torch.mm(x[:n], w.t(), out=out[:n])  # gradient of the input
            torch.mm(x[:n].t(), out[:n], out=gw)  # gradient of the weight
        best = min(best, time.perf_counter() - t0)
    return best


def check_same_math(model: LorentzNet, batch, edges) -> float:
    """Largest logit difference between the dense forward and the edge-list forward with the same weights,
    in float64, eval and training mode (training-mode BatchNorm statistics, the same dropout mask)."""
    dense = copy.deepcopy(model).double()
    base = copy.deepcopy(model).double()
    p4, mask, _ = batch
    worst = 0.0
    for train in (False, True):
        dense.train(train), base.train(train)
        with torch.no_grad():
            torch.manual_seed(1)
            a = dense(p4.double(), mask)
            torch.manual_seed(1)
            b = edge_list_forward(base, p4.double(), mask, edges)
        worst = max(worst, float((a - b).abs().max() / b.abs().max()))
    return worst


def run(batch_size: int, args, jets, device: torch.device) -> dict[str, float]:
    """Jets/s of a training step (from the median step time) for each variant, on the same batches."""
    torch.manual_seed(0)
    model = LorentzNet().to(device)
    amp = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if args.bf16 else nullcontext
    batches = [tuple(t.to(device) for t in b) for b in make_batches(*jets, batch_size, args.warmup + args.steps)]
    edges = [edge_index(torch.cat([b[1].new_ones(len(b[1]), 2), b[1]], 1)) for b in batches]

    err = check_same_math(model, batches[0], edges[0])
    assert err < 1e-8, f"dense and edge-list logits differ (float64): {err:.3g} relative"
    real = np.mean([len(e[0]) for e in edges])
    grid = np.mean([sum(w.numel() for w in PairGrid(torch.cat([b[1].new_ones(len(b[1]), 2), b[1]], 1),
                                                     default_group_cost(device)).w) for b in batches])
    full = np.mean([len(b[1]) * (b[1].shape[1] + 2) ** 2 for b in batches])
    print(f"  batch {batch_size}: same logits in float64 (max rel. diff {err:.1e}); pairs per batch: real {real:.0f}, "
          f"grouped grids {grid:.0f} ({grid / real:.2f}x), one padded grid {full:.0f} ({full / real:.2f}x)")

    def make_step(model, forward):
        model = copy.deepcopy(model).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)

        def step(k_batch):
            k, (p4, mask, label) = k_batch
            with amp():
                logits = forward(model, p4, mask, k)
            loss = F.cross_entropy(logits.float(), label)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return model, step

    steps = {"dense": make_step(model, lambda m, p4, mask, k: m(p4, mask))[1]}
    if args.one_grid:
        one, steps["dense, one grid"] = make_step(model, lambda m, p4, mask, k: m(p4, mask))
        one.group_cost = math.inf
    steps["edge list"] = make_step(model, lambda m, p4, mask, k: edge_list_forward(m, p4, mask, edges[k]))[1]
    # Interleave the variants step by step (a, b, a, b, ...) so bursts of load on a shared machine hit them alike,
    # and take the median step time of each.
    times = {name: [] for name in steps}
    for k, batch in enumerate(batches):
        for name, step in steps.items():
            t = timed(step, (k, batch), device)
            if args.verbose:
                print(f"    step {k} {name}: {t:.3f} s", flush=True)
            if k >= args.warmup:
                times[name].append(t)
    rates = {name: batch_size / float(np.median(t)) for name, t in times.items()}
    if device.type == "cpu":
        floor = np.median([pair_matmul_seconds(model, b[1]) for b in batches[args.warmup:]])
        rates["matmul floor"] = batch_size / float(floor)
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, nargs="+", default=[32, 128])
    ap.add_argument("--steps", type=int, default=7, help="timed steps per variant (the median counts)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first")
    ap.add_argument("--bf16", action="store_true", help="autocast bf16 (CUDA)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--jets", choices=["synthetic", "reference"], default="synthetic")
    ap.add_argument("--verbose", action="store_true", help="print every step's time")
    ap.add_argument("--one-grid", action="store_true", help="also time the dense model on one padded (B, M, M) grid")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.bf16 and device.type != "cuda":
        ap.error("--bf16 needs --device cuda")
    jets = reference_jets() if args.jets == "reference" else synthetic_jets(4096)
    n = jets[1]
    print(f"device {device}{' bf16' if args.bf16 else ''}, {args.threads} threads; {args.jets} jets: "
          f"{n.mean():.1f} constituents on average (min {n.min()}, max {n.max()}); "
          f"training step = forward + backward + AdamW")
    results = {bs: run(bs, args, jets, device) for bs in args.batch_size}
    names = list(next(iter(results.values())))
    print(f"{'batch':>6} " + " ".join(f"{name + ' jets/s':>22}" for name in names) + f" {'dense / edge list':>18}")
    for bs, rates in results.items():
        print(f"{bs:>6} " + " ".join(f"{rates[name]:>22.1f}" for name in names)
              + f" {rates['dense'] / rates['edge list']:>17.2f}x")
    if "matmul floor" in names:
        print("matmul floor: the dense step's per-pair C x C products alone (no element-wise work, warm caches); "
              "no dense step can beat "
              + ", ".join(f"{r['matmul floor'] / r['edge list']:.1f}x at batch {bs}" for bs, r in results.items()))


if __name__ == "__main__":
    main()
