"""Cost of the report's bootstrap intervals (jetkd.evaluate.bootstrap_intervals), against one sklearn AUC per replica.

    python scripts/bench_bootstrap.py [--jets 100000] [--replicas 200]

Prints the seconds of the vectorised bootstrap (all replicas from the jets sorted once) and of the plain version
(resample, then sklearn's roc_auc_score and a sort per replica) on the same Gaussian scores, and their ratio.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jets", type=int, default=100_000)
    parser.add_argument("--replicas", type=int, default=200)
    args = parser.parse_args()
    from sklearn.metrics import roc_auc_score

    from jetkd.evaluate import bootstrap_intervals
    from jetkd.evaluate.metrics import eps_s_grid

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, args.jets)
    s = rng.normal(labels * 1.5, 1.0)
    scores = np.stack([1 - 1 / (1 + np.exp(-s)), 1 / (1 + np.exp(-s))], 1)
    start = time.perf_counter()
    fast = bootstrap_intervals(scores, labels, n_bootstrap=args.replicas, grid=eps_s_grid())
    t_fast = time.perf_counter() - start
    start = time.perf_counter()
    aucs = []
    for r in range(args.replicas):
        idx = np.random.default_rng([0, r]).integers(0, args.jets, args.jets)
        aucs.append(roc_auc_score(labels[idx], scores[idx, 1]))
    t_plain = time.perf_counter() - start
    print(f"{args.jets:,} jets x {args.replicas} replicas: vectorised {t_fast:.2f} s (accuracy, AUC, rejections, ROC "
          f"band), plain sklearn AUC only {t_plain:.2f} s, ratio {t_plain / t_fast:.1f}x; AUC interval "
          f"{fast['auc_interval'][0]:.4f}-{fast['auc_interval'][1]:.4f} vs plain "
          f"{np.quantile(aucs, 0.1587):.4f}-{np.quantile(aucs, 0.8413):.4f}")


if __name__ == "__main__":
    main()
