"""Benchmark the jet generator against bare Pythia event generation, on one core.

    python scripts/bench_generate.py                 # 2000 events per process, about 1.5 minutes
    python scripts/bench_generate.py --events 500 --seed 3

For the signal (all-hadronic ttbar) and background (QCD dijet) processes, with the generator's own settings
(:func:`data_prep.generate.make_pythia`) and the Pythia seed that worker 0 of ``generate(seed=...)`` uses:

(a) bare ``pythia.next()`` events/s;
(b) the generator's events/s over the same events (a second Pythia with the same seed): ``next()`` plus the
    generator's per-event work :func:`data_prep.generate.process_event` (fjcore clustering, constituent
    extraction, selection, top matching), and the accepted jets per second on this one core.

(a) and (b) are timed in alternating blocks of 100 events, so changes in machine load hit both alike.

Prints both rates and the ratio generator / bare per process (target: >= 0.7).
"""

from __future__ import annotations

import argparse
import time

from data_prep.generate import CLASSES, PTHAT_WINDOW, make_jet_finder, make_pythia, process_event, pythia_seed


def bare_block(pythia, n_events: int) -> None:
    """Generate ``n_events`` events with bare ``next()``."""
    done = 0
    while done < n_events:
        done += bool(pythia.next())


def generator_block(pythia, finder, kind: str, n_events: int) -> int:
    """Generate ``n_events`` events with ``next()`` + :func:`process_event`; returns the accepted jets."""
    done = n_jets = 0
    while done < n_events:
        if pythia.next():
            done += 1
            n_jets += len(process_event(pythia, finder, kind))
    return n_jets


def measure(kind: str, seed: int, n_events: int, block: int = 100) -> dict[str, float]:
    """Bare and generator rates on the same ``n_events`` events of ``kind`` (two Pythias with the same seed).

    The two are timed in alternating blocks of ``block`` events (identical events in both), so a change in
    machine load affects both alike. Initialisation is not timed. Returns events/s, jets/s and jets/event.
    """
    bare_pythia = make_pythia(kind, seed)
    gen_pythia, finder = make_pythia(kind, seed), make_jet_finder()
    t_bare = t_gen = 0.0
    n_jets = done = 0
    while done < n_events:
        k = min(block, n_events - done)
        start = time.perf_counter()
        bare_block(bare_pythia, k)
        middle = time.perf_counter()
        n_jets += generator_block(gen_pythia, finder, kind, k)
        t_bare, t_gen = t_bare + middle - start, t_gen + time.perf_counter() - middle
        done += k
    return {
        "bare": n_events / t_bare,
        "generator": n_events / t_gen,
        "jets_per_s": n_jets / t_gen,
        "jets_per_event": n_jets / n_events,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--events", type=int, default=2000, help="events per process and measurement (default: %(default)s)"
    )
    parser.add_argument(
        "--seed", type=int, default=1, help="generate() seed; worker 0's Pythia seeds are used (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    if args.events < 1:
        parser.error("--events must be >= 1")

    print(f"pTHat window {PTHAT_WINDOW[0]:.0f}-{PTHAT_WINDOW[1]:.0f} GeV, {args.events} events per process, one core")
    print(f"{'process':8} {'bare ev/s':>10} {'generator ev/s':>15} {'ratio':>6} {'jets/s/core':>12} {'jets/event':>11}")
    worst = float("inf")
    for kind in CLASSES:
        r = measure(kind, pythia_seed(args.seed, 0, kind), args.events)
        ratio = r["generator"] / r["bare"]
        worst = min(worst, ratio)
        print(
            f"{kind:8} {r['bare']:10.1f} {r['generator']:15.1f} {ratio:6.2f} "
            f"{r['jets_per_s']:12.1f} {r['jets_per_event']:11.3f}"
        )
    print(f"lowest ratio generator / bare: {worst:.2f} (target >= 0.70)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
