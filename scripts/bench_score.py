"""Scoring throughput: ``jetkd score`` end to end against the model alone, for the paper's MLP and deep set.

    python scripts/bench_score.py                         # generates 4,000 massless jets, tiles them to 200k
    python scripts/bench_score.py --root jets.root --tile 1 --threads 2

Also prints the time uproot takes to read the constituents of that file written with LZ4 (how jetkd writes ROOT
files) and with uproot's default ZLIB(1).

Steps: a JetClass-style ROOT file from ``jetkd generate`` (tiled entry by entry to ``--jets`` jets, so the
multiplicities are Pythia's), a cache of it, each student (``configs/mlp.yaml``'s and ``configs/deepset.yaml``'s
architecture) trained one epoch so that it has a real checkpoint and contract, then in the same process:

* model only: ``Tagger.predict`` on the jets in memory (flat constituents, pT-ordered, float32): the cut to the
  leading 128, batching by multiplicity, padding each batch, the model (features included) and the softmax;
* end to end: ``jetkd score``'s engine (:func:`jetkd.score.score_files`): read the ROOT file in chunks, order and
  pad the constituents, score, write the friend tree (observers jet_pt, jet_mass), atomically.

Targets on 2 CPU cores: end to end >= 0.8 of model only; model only >= 50k jets/s (MLP), >= 20k jets/s (deep set).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the jetkd command sets it, before torch loads

import numpy as np  # noqa: E402
import torch  # noqa: E402

MODELS = {
    "mlp": {"name": "mlp", "n_constituents": 128, "hidden": [512, 512]},
    "deepset": {"name": "deepset", "phi_hidden": [128, 128, 128], "rho_hidden": [128, 128]},
}
TARGETS = {"mlp": 50_000, "deepset": 20_000}


def tiled_root(source: Path, out: Path, n_jets: int, compression=None) -> None:
    """``out``: the entries of ``source`` repeated until ``n_jets``, same branches and layout (written as
    ``jetkd generate`` writes: jagged ``part_*`` with counter ``jet_nparticles``, per-jet branches, and its
    compression unless ``compression`` is given)."""
    import awkward as ak
    import uproot

    from jetkd.data.readers.root import write_compression

    with uproot.open(source) as f:
        arrays = f["tree"].arrays(library="ak")
    reps = -(-n_jets // len(arrays))
    index = np.tile(np.arange(len(arrays)), reps)[:n_jets]
    part = ak.zip({k: arrays[f"part_{k}"] for k in ("px", "py", "pz", "energy")})
    flat = {k: ak.to_numpy(arrays[k]) for k in arrays.fields if not k.startswith("part_") and k != "jet_nparticles"}
    with uproot.recreate(out, compression=compression or write_compression()) as f:
        tree = None
        for lo in range(0, n_jets, 10_000):  # baskets of 10k jets
            rows = index[lo : lo + 10_000]
            data = {"part": part[rows], **{k: v[rows] for k, v in flat.items()}}
            if tree is None:
                tree = f.mktree("tree", data, counter_name=lambda _: "jet_nparticles")
            else:
                tree.extend(data)


def read_seconds(path: Path, repeats: int = 2) -> float:
    """Best seconds over ``repeats`` reads of the constituent branches of ``path`` with uproot (decompression
    included; the file is in the page cache)."""
    import uproot

    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        with uproot.open(path) as f:
            for _ in f["tree"].iterate(filter_name=["part_px", "part_py", "part_pz", "part_energy"], step_size=50_000):
                pass
        best = min(best, time.perf_counter() - t0)
    return best


def train_one_epoch(cache: Path, run: Path, model: dict) -> None:
    from jetkd.config import load_job
    from jetkd.train.loop import Trainer

    job = {"run_dir": str(run), "data": {k: str(cache / f"{k}.h5") for k in ("train", "val", "test")},
           "model": model, "train": {"epochs": 1, "batch_size": 256, "seed": 1}}
    Trainer(load_job(data=job), progress=False).fit()


def rate(fn, n_jets: int, repeats: int) -> float:
    """Best jets/s over ``repeats`` calls of ``fn``."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return n_jets / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, help="a jetkd-generated ROOT file (default: generate 4,000 jets)")
    parser.add_argument("--jets", type=int, default=200_000, help="jets in the scored file (tiled)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from data_prep.convert import convert
    from data_prep.generate import generate
    from jetkd.data.sources import iter_chunks
    from jetkd.score import score_files
    from jetkd.tagger import load

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = args.root
        if root is None:
            root = tmp / "generated.root"
            generate(root, n_jets=4000, seed=1, workers=2, massless=True, progress=False)
        big = tmp / "scored.root"
        tiled_root(root, big, args.jets)
        import uproot

        tiled_root(root, tmp / "zlib.root", args.jets, compression=uproot.ZLIB(1))
        print(f"reading the constituents: {read_seconds(big):.2f} s with jetkd's LZ4(1) "
              f"({big.stat().st_size / 1e6:.0f} MB), {read_seconds(tmp / 'zlib.root'):.2f} s with uproot's default "
              f"ZLIB(1) ({(tmp / 'zlib.root').stat().st_size / 1e6:.0f} MB)")
        with contextlib.redirect_stdout(io.StringIO()):
            convert([root], tmp / "cache", max_particles=128, seed=1, progress=False)
        chunks = list(iter_chunks(big, label_mode="none"))  # the jets in memory: flat, pT-ordered
        n_particles = np.concatenate([c.counts for c in chunks])
        print(f"{args.jets:,} jets ({n_particles.mean():.1f} constituents on average, tiled from {root}); "
              f"torch threads {torch.get_num_threads()}")
        print(f"{'model':8s} {'model only':>14s} {'end to end':>14s} {'ratio':>7s}   targets")
        for name, spec in MODELS.items():
            train_one_epoch(tmp / "cache", tmp / name, spec)
            tagger = load(tmp / name)
            model_only = rate(lambda: [tagger.predict(c.components, c.counts) for c in chunks], args.jets, args.repeats)
            out = tmp / f"{name}.scores.root"
            with contextlib.redirect_stdout(io.StringIO()):
                end_to_end = rate(lambda: score_files([tagger], [big], out, observers=["jet_pt", "jet_mass"],
                                                      progress=False), args.jets, args.repeats)
            print(f"{name:8s} {model_only:10,.0f} j/s {end_to_end:10,.0f} j/s {end_to_end / model_only:7.2f}   "
                  f"model only >= {TARGETS[name]:,}, ratio >= 0.8")


if __name__ == "__main__":
    main()
