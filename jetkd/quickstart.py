"""``jetkd quickstart``: the pipeline at a size that runs in minutes on a laptop.

For now the data part: generate top/QCD jets with Pythia (massless constituents, as in the reference
dataset), convert them into the training cache and summarize it. Training and evaluation join here as
they land.
"""

from __future__ import annotations

import time
from pathlib import Path


def quickstart(out: str | Path = "runs/quickstart", *, n_jets: int = 4000, seed: int = 1, workers: int | None = None) -> Path:
    """Run the quickstart into ``out`` and return it. Writes ``jets.root`` and ``cache/{train,val,test}.h5``."""
    from data_prep.convert import convert
    from data_prep.generate import generate

    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    root = generate(out / "jets.root", n_jets=n_jets, seed=seed, workers=workers, massless=True)
    convert([root], out / "cache", max_particles=128, seed=seed)
    print(f"Quickstart done in {time.perf_counter() - start:.0f} s. Everything is in {out.resolve()}/")
    return out
