"""Loader throughput: jets/s from the HDF5 cache into padded ``JetBatch`` tensors, on one core.

    python scripts/bench_data.py                      # synthetic cache, 100k jets, max_particles 128
    python scripts/bench_data.py --cache cache/train.h5

Reports one shuffled epoch for the in-memory cache (load included, and load excluded) and for the on-disk
block-shuffled cache, at two batch sizes. Target: >= 200k jets/s at max_particles 128.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from jetkd.data.cache import CacheWriter, JetCache
from jetkd.data.loader import JetLoader


def synthetic_cache(path: Path, n_jets: int, max_particles: int, seed: int = 0) -> None:
    """A cache with top-jet-like multiplicities (mean ~55, clipped to max_particles)."""
    rng = np.random.default_rng(seed)
    with CacheWriter(path, n_jets, max_particles, {"sources": ["synthetic"]}) as writer:
        for lo in range(0, n_jets, 10_000):
            k = min(10_000, n_jets - lo)
            n = np.clip(rng.poisson(55, k), 1, max_particles).astype(np.int32)
            p4 = rng.exponential(10.0, size=(k, max_particles, 4)).astype(np.float32)
            p4[np.arange(max_particles)[None] >= n[:, None]] = 0
            writer.append(p4, n, rng.integers(0, 2, k))
        writer.commit()


def epoch_rate(make_cache, batch_size: int) -> tuple[float, float]:
    """jets/s over one shuffled epoch, with and without building the cache (loading) in the timing."""
    t0 = time.perf_counter()
    cache = make_cache()
    t1 = time.perf_counter()
    n = sum(len(batch) for batch in JetLoader(cache, batch_size, seed=1))
    t2 = time.perf_counter()
    return n / (t2 - t0), n / (t2 - t1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, help="existing cache file (default: a synthetic one)")
    parser.add_argument("--jets", type=int, default=100_000)
    parser.add_argument("--max-particles", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.cache or Path(tmp) / "bench.h5"
        if args.cache is None:
            synthetic_cache(path, args.jets, args.max_particles)
        cache = JetCache(path)
        print(f"cache: {path} ({len(cache)} jets, max_particles {cache.max_particles}); one core")
        for batch_size in (256, 1024):
            with_load, loaded = epoch_rate(lambda: JetCache(path), batch_size)
            on_disk, _ = epoch_rate(lambda: JetCache(path, in_memory=False), batch_size)
            print(
                f"batch {batch_size:5d}: in-memory {loaded / 1e3:7.0f}k jets/s (with load {with_load / 1e3:6.0f}k), "
                f"on-disk block shuffle {on_disk / 1e3:7.0f}k jets/s   [target >= 200k]"
            )


if __name__ == "__main__":
    main()
