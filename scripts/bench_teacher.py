"""Training-step throughput of the LorentzNet teacher: the dense model (and on CUDA its fused Triton pair kernel)
against the edge-list reference, :mod:`jetkd.models.lorentznet_reference`.

All variants compute the same function with the same weights (checked before timing: dense == edge list in
float64; the fused kernel against the edge list in float32, whose products it rounds to TF32 or bf16, so it is
reported, not asserted). The reference is the original code's style: per-batch index lists ``i, j`` of the
real edges, ``h[i]``, ``h[j]`` gathers, ``nn.Linear`` on ``[h_i, h_j, norms, dots]``, plain BatchNorm over the edge
list, ``index_add_`` to aggregate; its edge lists are built before the clock starts (the original builds them in
its data loader). The dense model runs its own forward (on CPU with the per-pair chain fused and computed in
cache-sized chunks, :mod:`jetkd.models.pair_chain`). A step is forward, cross-entropy, backward and an AdamW
step, on batches of jets with realistic multiplicities, each padded to its own longest jet (as
``JetBatch.from_arrays`` does); variants alternate step by step, and each one's median step time counts.

Variants (``--variants``). "fused": ``LorentzNet(pair_kernel="triton")``, the Triton pair kernel (CUDA; on CPU
only under TRITON_INTERPRET=1), reported as "fused kernel not available" when the model has no such option or
the kernel fails to build or run; "dense": ``pair_kernel="torch"``, the plain per-module path on CUDA, the fused
CPU chain on CPU; "edge": the edge-list reference. Default: dense and edge list on CPU, all three on CUDA, where
each runs in float32 and under bf16 autocast and reports the peak GPU memory of its steps
(``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``: activations plus what is resident, i.e.
the models, optimizer states and timed batches, a few MB). On CPU also "matmul floor": the dense step's per-pair
C x C matrix products on their own, at the same shapes and with the same BLAS calls (a float32 dense step cannot
be faster than that, whatever it does with the rest).

Epoch time: ``--epoch-jets`` (default 1.2M) divided by the measured jets/s, i.e. an epoch of batches drawn like
the timed ones. Jets: ``synthetic`` (default), a documented stand-in for generated top/QCD jets: multiplicities a
50/50 mix of N(42, 14) and N(68, 18), clipped to [10, 128] (mean ~55), massless, pT ~600 GeV per jet;
or the 64 ``reference`` jets. Padding: for the same multiplicity distribution over an epoch of
``--epoch-jets`` jets, the padded node and pair slots of random batches against length-bucketed ones
(:func:`jetkd.data.loader.bucket_order`, windows of ``--bucket-window`` batches; ``train.bucket_by_length``).
``--bucketed`` times bucketed batches instead of random ones. On CUDA the run ends with a memory scan: the peak
memory of one float32 step of each variant at fixed multiplicities N = 32, 64, 128, 256 (``--memory-batch`` jets),
and per constituent relative to N = 32, which stays flat where memory is linear in N (the fused kernel).

    python scripts/bench_teacher.py                       # CPU, batch 32 and 128, float32
    python scripts/bench_teacher.py --device cuda         # GPU: fused, dense, edge list; batch 32/128/512; fp32 + bf16
    python scripts/bench_teacher.py --device cuda --precision bf16 --batch-size 128 --steps 20
    python scripts/bench_teacher.py --batch-size 32 --steps 20 --jets reference
"""

from __future__ import annotations

import argparse
import copy
import math
import time
import traceback
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from jetkd.data.loader import bucket_order, padded_slots
from jetkd.models.lorentznet import LorentzNet, PairGrid, default_group_cost
from jetkd.models.lorentznet_reference import (  # noqa: F401
    LorentzNetReference,
    edge_index,
    edge_list_forward,  # tests/test_lorentznet.py reaches the reference through this script
)
from jetkd.models.pair_chain import chunk_slices

REFERENCE = Path(__file__).resolve().parents[1] / "../shared/reference/lorentznet_top_parity.npz"
N_MAX = 128
MEMORY_N = (32, 64, 128, 256)  # constituents per jet in the memory scan (CUDA)


# ----------------------------------------------------------------------------- inputs


def synthetic_multiplicities(n_jets: int, n_max: int = N_MAX, rng: np.random.Generator | None = None) -> np.ndarray:
    """(n_jets,) constituents per jet: a 50/50 mix of QCD-like N(42, 14) and top-like N(68, 18), rounded and
    clipped to [10, n_max] (mean ~55)."""
    rng = np.random.default_rng(0) if rng is None else rng
    top = rng.random(n_jets) < 0.5
    n = np.where(top, rng.normal(68, 18, n_jets), rng.normal(42, 14, n_jets))
    return np.clip(np.rint(n), 10, n_max).astype(int)


def synthetic_jets(n_jets: int, n_max: int = N_MAX, seed: int = 0, fixed: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Massless constituents of ~600 GeV jets with :func:`synthetic_multiplicities` (``fixed``: n_max each).
    Returns p4 (n_jets, n_max, 4) float32 GeV and counts (n_jets,)."""
    rng = np.random.default_rng(seed)
    n = np.full(n_jets, n_max) if fixed else synthetic_multiplicities(n_jets, n_max, rng)
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


def make_batches(p4: np.ndarray, n: np.ndarray, batch_size: int, count: int, seed: int = 1, window: int = 0):
    """``count`` batches ``(p4 (B, N, 4), mask (B, N), label (B,))`` of ``batch_size`` jets, each trimmed to its
    longest jet: drawn at random, or with ``window`` > 0 consecutive batches of length-bucketed epochs
    (:func:`bucket_order`, windows of ``window`` batches) of the pool."""
    rng = np.random.default_rng(seed)
    if window and len(n) >= batch_size:
        per_epoch = len(n) // batch_size
        orders = [bucket_order(rng.permutation(len(n)), n, batch_size, window, rng) for _ in range(-(-count // per_epoch))]
        picks = [o[k * batch_size : (k + 1) * batch_size] for o in orders for k in range(per_epoch)][:count]
    else:
        picks = [rng.choice(len(n), batch_size, replace=len(n) < batch_size) for _ in range(count)]
    out = []
    for idx in picks:
        nb = torch.from_numpy(n[idx])
        x = torch.from_numpy(p4[idx, : int(nb.max())])
        mask = torch.arange(x.shape[1]) < nb[:, None]
        out.append((x, mask, torch.from_numpy((n[idx] > 55).astype(np.int64))))  # any labels will do
    return out


def node_mask_of(mask: torch.Tensor) -> torch.Tensor:
    """(B, N + 2) the nodes of a (B, N) constituent mask: the two beams first."""
    return torch.cat([mask.new_ones(len(mask), 2), mask], 1)


# ----------------------------------------------------------------------------- padding


def padding_lines(epoch_jets: int, batch_sizes: list[int], window: int) -> list[str]:
    """How much padding length bucketing removes, over an epoch of ``epoch_jets`` synthetic multiplicities:
    per batch size, the constituent slots sum over batches of B * max(n) (what ``JetBatch.from_arrays`` pads to)
    and the teacher's pair slots B * max(n + 2)^2 (one padded grid per batch), random against bucketed batches."""
    rng = np.random.default_rng(7)
    n = synthetic_multiplicities(epoch_jets, N_MAX, rng)
    order = rng.permutation(epoch_jets)
    real, real_pairs = n.sum(), ((n + 2) ** 2).sum()
    lines = [(f"padding over one epoch of {epoch_jets} synthetic jets ({real / epoch_jets:.1f} constituents on "
              f"average), random batches -> length-bucketed (windows of {window} batches; "
              f"train.bucket_by_length={window}); slots / real ones:")]
    for b in batch_sizes:
        bucketed = bucket_order(order, n, b, window, np.random.default_rng(8))
        slots = [padded_slots(n, o, b) for o in (order, bucketed)]
        pairs = [padded_slots(n + 2, o, b, power=2) for o in (order, bucketed)]
        lines.append(f"  batch {b}: sum B*max(n) {slots[0] / 1e6:.1f}M -> {slots[1] / 1e6:.1f}M constituent slots "
                     f"({slots[0] / real:.2f}x -> {slots[1] / real:.2f}x real, {1 - slots[1] / slots[0]:.0%} removed); "
                     f"pair slots B*max(n+2)^2 {pairs[0] / real_pairs:.2f}x -> {pairs[1] / real_pairs:.2f}x real "
                     f"({1 - pairs[1] / pairs[0]:.0%} removed)")
    return lines


# ----------------------------------------------------------------------------- timing


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step, batch, device: torch.device) -> tuple[float, float]:
    """Seconds for one ``step(batch)``, and its peak allocated GPU memory in bytes (NaN off CUDA)."""
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    step(batch)
    sync(device)
    seconds = time.perf_counter() - t0
    return seconds, float(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else math.nan


def pair_matmul_seconds(model: LorentzNet, mask: torch.Tensor, repeats: int = 3) -> float:
    """Seconds that the dense CPU step's per-pair (pairs x C) x (C x C) products take on their own, at the fused
    chain's chunk shapes: per block two forward (phi_e.3, phi_x.0) and four backward (their weight and input
    gradients), one and two in the last block. Everything else in the step is element-wise or small, so this is
    a floor under the dense step time (the best of ``repeats``, warm caches)."""
    C = model.n_hidden
    grid = PairGrid(node_mask_of(mask), default_group_cost(mask.device))
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


def max_logit_difference(model, reference: LorentzNetReference, batch, edges, dtype: torch.dtype) -> float:
    """Largest logit difference between ``model`` and the edge-list ``reference`` (copies, same weights) in
    ``dtype``, eval and training mode (training-mode BatchNorm statistics, the same dropout mask), relative to
    the largest logit."""
    model, reference = copy.deepcopy(model).to(dtype), copy.deepcopy(reference).to(dtype)
    p4, mask, _ = batch
    worst = 0.0
    for train in (False, True):
        model.train(train), reference.train(train)
        with torch.no_grad():
            torch.manual_seed(1)
            a = model(p4.to(dtype), mask)
            torch.manual_seed(1)
            b = reference(p4.to(dtype), mask, edges=edges)
        worst = max(worst, float((a.double() - b.double()).abs().max() / b.double().abs().max()))
    return worst


def check_same_math(model: LorentzNet, batch, edges) -> float:
    """Largest relative logit difference, in float64, between the dense ``model`` and the edge-list reference with
    its weights (:func:`max_logit_difference`)."""
    return max_logit_difference(model, LorentzNetReference.from_dense(model), batch, edges, torch.float64)


# ----------------------------------------------------------------------------- variants


VARIANTS = {"fused": "fused", "dense": "dense", "edge": "edge list"}  # --variants -> names in the tables


def build_variants(device: torch.device, variants: list[str], one_grid: bool = False):
    """The models, all with the weights of one seeded ``LorentzNet()``, on ``device``: name -> model for the
    ``variants`` (keys of :data:`VARIANTS`; "dense, one grid" too with ``one_grid``) and always "edge list" (the
    reference everything is checked against); and notes on what could not be built (the fused kernel)."""
    torch.manual_seed(0)
    base = LorentzNet()
    models, notes = {}, []
    if "fused" in variants:
        try:
            models["fused"] = LorentzNet(pair_kernel="triton")
        except Exception as err:  # noqa: BLE001  (no such option yet, or triton missing)
            notes.append(f"fused kernel not available: LorentzNet(pair_kernel='triton') raised {first_line(err)}")
    if "dense" in variants:
        try:
            models["dense"] = LorentzNet(pair_kernel="torch")
        except TypeError:
            models["dense"] = LorentzNet()  # a model without the option has no kernel but its plain path
        if one_grid:
            models["dense, one grid"] = copy.deepcopy(models["dense"])
            models["dense, one grid"].group_cost = math.inf
    for model in models.values():
        model.load_state_dict(base.state_dict())
    models["edge list"] = LorentzNetReference.from_dense(base)
    return {name: model.to(device) for name, model in models.items()}, notes


def make_step(model: torch.nn.Module, edges: list, autocast):
    """A training step ``step((k, (p4, mask, label)))`` of a copy of ``model`` with its own AdamW; the edge-list
    reference gets the precomputed edges of batch k."""
    model = copy.deepcopy(model).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    reference = isinstance(model, LorentzNetReference)

    def step(k_batch):
        k, (p4, mask, label) = k_batch
        with autocast():
            logits = model(p4, mask, edges=edges[k]) if reference else model(p4, mask)
        loss = F.cross_entropy(logits.float(), label)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def first_line(err: BaseException) -> str:
    """``Type: first line of the message`` of an exception."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}"


def verify(models: dict, batch, edges, notes: list[str], verbose: bool = False) -> str:
    """Check the variants against the edge list on ``batch`` (dense: float64, asserted; fused: float32, reported;
    a fused kernel that fails here is dropped with a note). Returns the line that says so."""
    ref = models["edge list"]
    parts = []
    for name in [n for n in models if n != "edge list"]:
        if name == "fused":
            try:
                err = max_logit_difference(models[name], ref, batch, edges, torch.float32)
            except Exception as exc:  # noqa: BLE001  (a kernel that does not compile or run here)
                notes.append(f"fused kernel not available: its first forward raised {first_line(exc)}")
                if verbose:
                    traceback.print_exc()
                del models[name]
                continue
            flag = "" if err < 1e-2 else " (LARGER than the expected ~1e-3 of TF32 products; timed anyway)"
            parts.append(f"fused == edge list in float32 to {err:.1e}{flag}")
        else:
            err = max_logit_difference(models[name], ref, batch, edges, torch.float64)
            assert err < 1e-8, f"{name} and edge-list logits differ (float64): {err:.3g} relative"
            parts.append(f"{name} == edge list in float64 to {err:.1e}")
    return "; ".join(parts)


def run(batch_size: int, precision: str, args, jets, device: torch.device) -> tuple[dict, dict]:
    """Jets/s of a training step (from the median step time) and peak GPU memory (bytes, NaN off CUDA) of each
    variant, on the same batches."""
    models, notes = build_variants(device, args.variants, args.one_grid)
    timed_names = [n for n in models if n != "edge list" or "edge" in args.variants]
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if precision == "bf16" else nullcontext
    batches = [tuple(t.to(device) for t in b)
               for b in make_batches(*jets, batch_size, args.steps, window=args.bucket_window if args.bucketed else 0)]
    edges = [edge_index(node_mask_of(b[1])) for b in batches]

    same = verify(models, batches[0], edges[0], notes, args.verbose)
    real = np.mean([len(e[0]) for e in edges])
    grid = np.mean([sum(w.numel() for w in PairGrid(node_mask_of(b[1]), default_group_cost(device)).w) for b in batches])
    full = np.mean([len(b[1]) * (b[1].shape[1] + 2) ** 2 for b in batches])
    print(f"  batch {batch_size} {precision}: {same}; pairs per batch: real {real:.0f}, grouped grids {grid:.0f} "
          f"({grid / real:.2f}x), one padded grid {full:.0f} ({full / real:.2f}x)", flush=True)
    for note in dict.fromkeys(notes):
        print(f"  {note}", flush=True)

    steps = {name: make_step(models[name], edges, autocast) for name in timed_names if name in models}
    # Interleave the variants step by step (a, b, a, b, ...) so bursts of load on a shared machine hit them alike.
    # The warm-up steps revisit the timed batches (k mod steps), so on a GPU every shape is compiled before timing.
    times, peaks, failed = {n: [] for n in steps}, {n: [] for n in steps}, {}
    for k in range(args.warmup + args.steps):
        for name, step in steps.items():
            if name in failed:
                continue
            j = k % args.steps
            try:
                t, peak = timed(step, (j, batches[j]), device)
            except torch.cuda.OutOfMemoryError as err:
                failed[name] = f"out of memory ({first_line(err)})"
                torch.cuda.empty_cache()
                continue
            except Exception as err:  # noqa: BLE001  (report a failing variant, time the others)
                failed[name] = first_line(err)
                if args.verbose:
                    traceback.print_exc()
                continue
            if args.verbose:
                print(f"    step {k} {name}: {t:.3f} s", flush=True)
            if k >= args.warmup:
                times[name].append(t)
                peaks[name].append(peak)
    for name, why in failed.items():
        print(f"  {name} failed at batch {batch_size} {precision}: {why}", flush=True)
    rates = {name: batch_size / float(np.median(t)) if t else math.nan for name, t in times.items()}
    peak = {name: max(p) if p else math.nan for name, p in peaks.items()}
    if device.type == "cpu" and "dense" in models:
        floor = np.median([pair_matmul_seconds(models["dense"], b[1]) for b in batches])
        rates["matmul floor"] = batch_size / float(floor)
        peak["matmul floor"] = math.nan
    return rates, peak


def memory_scan(args, device: torch.device) -> list[str]:
    """Peak GPU memory of a float32 training step of each variant at a fixed multiplicity N (``--memory-batch``
    jets of exactly N constituents, N in :data:`MEMORY_N`): what the step allocates beyond what was resident
    before it (models, optimizer states, batch), in MiB, and that per constituent relative to the smallest N --
    flat when memory grows linearly with N, doubling with every doubling of N when it grows as N^2."""
    models, notes = build_variants(device, args.variants)
    names = [n for n in models if n != "edge list" or "edge" in args.variants]
    table: dict[int, dict[str, float]] = {}
    for N in MEMORY_N:
        p4, n = synthetic_jets(args.memory_batch, n_max=N, seed=3, fixed=True)
        batch = make_batches(p4, n, args.memory_batch, 1)[0]
        batch = tuple(t.to(device) for t in batch)
        edges = [edge_index(node_mask_of(batch[1]))]
        table[N] = {}
        for name in names:
            try:
                step = make_step(models[name], edges, nullcontext)
                step((0, batch))  # compiles kernels, allocates optimizer states
                sync(device)
                before = torch.cuda.memory_allocated(device)
                torch.cuda.reset_peak_memory_stats(device)
                step((0, batch))
                sync(device)
                table[N][name] = (torch.cuda.max_memory_allocated(device) - before) / 2**20
            except torch.cuda.OutOfMemoryError:
                table[N][name] = math.inf
            except Exception as err:  # noqa: BLE001
                notes.append(f"{name} at N = {N}: {first_line(err)}")
                table[N][name] = math.nan
            step = None
            torch.cuda.empty_cache()
    first = MEMORY_N[0]
    lines = [f"peak memory of a float32 training step beyond what is resident, batch {args.memory_batch}, every jet "
             f"N constituents (MiB; in brackets MiB per constituent relative to N = {first}: 1.0 = linear in N)",
             f"{'N':>5} " + " ".join(f"{name + ' MiB':>24}" for name in names)]
    for N, row in table.items():
        cells = []
        for name in names:
            mib, base = row[name], table[first][name]
            rel = (mib / N) / (base / first) if math.isfinite(mib) and math.isfinite(base) and base > 0 else math.nan
            cells.append(f"{'OOM' if mib == math.inf else num(mib, '.0f')} ({num(rel, '.2f')})")
        lines.append(f"{N:>5} " + " ".join(f"{c:>24}" for c in cells))
    return lines + [f"  {note}" for note in dict.fromkeys(notes)]


# ----------------------------------------------------------------------------- report


def duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "-"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def num(x: float, spec: str, suffix: str = "") -> str:
    """``x`` formatted by ``spec`` with ``suffix``, or "-" when it is NaN (a variant not timed or failed)."""
    return f"{x:{spec}}{suffix}" if math.isfinite(x) else "-"


def print_tables(results: dict, args) -> None:
    """Per precision the jets/s table (batch x variant, and each variant against the edge list); then per batch,
    precision and variant the peak GPU memory and the derived epoch time."""
    for precision in args.precision:
        rows = {bs: r for (p, bs), r in results.items() if p == precision}
        names = list(dict.fromkeys(n for rates, _ in rows.values() for n in rates))
        ratios = [n for n in names if n not in ("edge list", "matmul floor")]
        if len(args.precision) > 1:
            print(f"{precision}:")
        print(f"{'batch':>6} " + " ".join(f"{name + ' jets/s':>22}" for name in names)
              + "".join(f" {name + ' / edge list':>18}" for name in ratios))
        for bs, (rates, _) in rows.items():
            edge = rates.get("edge list", math.nan)
            print(f"{bs:>6} " + " ".join(f"{num(rates.get(name, math.nan), '.1f'):>22}" for name in names)
                  + "".join(f" {num(rates.get(name, math.nan) / edge, '.2f', 'x'):>18}" for name in ratios))
        if "matmul floor" in names:
            print("matmul floor: the dense step's per-pair C x C products alone (no element-wise work, warm caches); "
                  "no dense step can beat "
                  + ", ".join(f"{num(r['matmul floor'] / r.get('edge list', math.nan), '.1f', 'x')} at batch {bs}"
                              for bs, (r, _) in rows.items()))
    print(f"{'precision':>9} {'batch':>6} {'variant':>16} {'jets/s':>10} {'peak GPU MiB':>13} "
          f"{f'epoch of {args.epoch_jets} jets':>24}")
    for (precision, bs), (rates, peak) in results.items():
        for name, rate in rates.items():
            if name == "matmul floor":
                continue
            print(f"{precision:>9} {bs:>6} {name:>16} {num(rate, '.1f'):>10} {num(peak[name] / 2**20, '.0f'):>13} "
                  f"{duration(args.epoch_jets / rate):>24}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:<index>")
    ap.add_argument("--batch-size", type=int, nargs="+", help="default: 32 128 (CPU), 32 128 512 (CUDA)")
    ap.add_argument("--precision", nargs="+", choices=["fp32", "bf16"],
                    help="fp32 and/or bf16 autocast (CUDA); default: fp32 (CPU), fp32 bf16 (CUDA)")
    ap.add_argument("--bf16", action="store_true", help="the same as --precision bf16")
    ap.add_argument("--steps", type=int, help="timed steps per variant, the median counts (default 7 CPU, 10 CUDA)")
    ap.add_argument("--warmup", type=int, help="untimed steps per variant first, over the same batches "
                                               "(default 2 CPU, one pass over the timed batches on CUDA)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--jets", choices=["synthetic", "reference"], default="synthetic")
    ap.add_argument("--pool", type=int, default=4096, help="synthetic jets the batches are drawn from")
    ap.add_argument("--epoch-jets", type=int, default=1_200_000, help="jets per epoch, for the epoch time and padding")
    ap.add_argument("--bucket-window", type=int, default=50, help="batches per length-bucketing window (padding report)")
    ap.add_argument("--bucketed", action="store_true", help="time length-bucketed batches instead of random ones")
    ap.add_argument("--verbose", action="store_true", help="print every step's time")
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS),
                    help="what to time: fused (the Triton pair kernel; on CPU only under TRITON_INTERPRET=1), dense, "
                         "edge (the edge-list reference); default: dense edge (CPU), fused dense edge (CUDA)")
    ap.add_argument("--one-grid", action="store_true", help="also time the dense model on one padded (B, M, M) grid")
    ap.add_argument("--memory-batch", type=int, default=128, help="jets per step in the memory scan (CUDA; 0: skip it)")
    args = ap.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        ap.error(f"--device {args.device}: CUDA is not available here")
    if args.bf16:
        args.precision = ["bf16"]
    args.precision = args.precision or (["fp32", "bf16"] if cuda else ["fp32"])
    if "bf16" in args.precision and not cuda:
        ap.error("bf16 (--bf16, --precision bf16) needs --device cuda")
    args.variants = args.variants or (["fused", "dense", "edge"] if cuda else ["dense", "edge"])
    args.batch_size = args.batch_size or ([32, 128, 512] if cuda else [32, 128])
    args.steps = args.steps or (10 if cuda else 7)
    args.warmup = args.steps if args.warmup is None and cuda else 2 if args.warmup is None else args.warmup
    if min(args.batch_size) < 1 or args.steps < 1 or args.warmup < 0 or args.bucket_window < 1:
        ap.error("batch sizes, --steps and --bucket-window must be >= 1, --warmup >= 0")
    torch.set_num_threads(args.threads)
    if cuda and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    jets = reference_jets() if args.jets == "reference" else synthetic_jets(args.pool)
    n = jets[1]
    where = torch.cuda.get_device_name(device) if cuda else f"{args.threads} threads"
    print(f"device {device} ({where}), {' + '.join(args.precision)}; {args.jets} jets: "
          f"{n.mean():.1f} constituents on average (min {n.min()}, max {n.max()}); "
          f"training step = forward + backward + AdamW{'; length-bucketed batches' if args.bucketed else ''}", flush=True)
    if cuda:
        print(f"  fp32 matmuls: torch.backends.cuda.matmul.allow_tf32 = {torch.backends.cuda.matmul.allow_tf32}; "
              "the fused kernel rounds its C x C products to TF32 by default (bf16 under autocast)", flush=True)
    results = {(p, bs): run(bs, p, args, jets, device) for p in args.precision for bs in args.batch_size}
    print_tables(results, args)
    for line in padding_lines(args.epoch_jets, args.batch_size, args.bucket_window):
        print(line)
    if cuda and args.memory_batch > 0:
        for line in memory_scan(args, device):
            print(line, flush=True)


if __name__ == "__main__":
    main()
