"""What is in a cache: jets per class, constituent multiplicity and jet mass, one sentence per split."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from jetkd import lorentz
from jetkd.data.cache import decode_attrs

MASS_SAMPLE = 50_000  # jets read per split for the mass medians


def split_stats(path: str | Path) -> dict:
    """Statistics of one cache file.

    Returns ``n_jets``, ``class_counts`` {label: count}, ``class_names`` {label: name} (from the file's
    ``class_names``; ``class <k>`` without them, ``unlabelled`` for -1), ``mean_n_particles``, ``median_mass``
    {label: GeV} (from the first ``MASS_SAMPLE`` jets: the E-scheme sum of the stored constituents).
    """
    with h5py.File(path, "r") as f:
        label = f["label"][()]
        n_particles = f["n_particles"][()]
        p4 = f["p4"][:MASS_SAMPLE]
        names = decode_attrs(f.attrs).get("class_names", [])
    mass = lorentz.mass(p4.astype(np.float64).sum(1))
    classes, counts = np.unique(label, return_counts=True)
    head = label[:MASS_SAMPLE]
    return {
        "n_jets": int(len(label)),
        "class_counts": {int(c): int(k) for c, k in zip(classes, counts)},
        "class_names": {int(c): names[c] if 0 <= c < len(names) else "unlabelled" if c < 0 else f"class {c}"
                        for c in classes},
        "mean_n_particles": float(n_particles.mean()) if len(label) else 0.0,
        "median_mass": {int(c): float(np.median(mass[head == c])) for c in classes if (head == c).any()},
    }


def summarize(paths: dict[str, str | Path]) -> str:
    """One sentence per split, e.g. ``train: 800 jets (QCD: 400, Tbqq: 400), 52.3 constituents on average,
    median jet mass 38 / 171 GeV.``"""
    sentences = []
    for name, path in paths.items():
        s = split_stats(path)
        classes = ", ".join(f"{s['class_names'][c]}: {k}" for c, k in s["class_counts"].items())
        masses = " / ".join(f"{m:.0f}" for m in s["median_mass"].values())
        sentences.append(
            f"{name}: {s['n_jets']} jets ({classes}), {s['mean_n_particles']:.1f} constituents on average, "
            f"median jet mass {masses} GeV."
        )
    return " ".join(sentences)
