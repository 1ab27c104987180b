"""The ``jetkd`` command line: one sub-command per user entry point (DESIGN.md, "CLI").

Heavy modules are imported inside each command so that ``jetkd --help`` stays instant.
Bad input (:class:`jetkd.errors.InputError`) ends as one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
import textwrap

from jetkd.errors import InputError


def _examples(text: str) -> str:
    return "examples:\n" + textwrap.indent(textwrap.dedent(text).strip(), "  ")


def _add_generate(sub) -> None:
    p = sub.add_parser(
        "generate",
        help="generate top / QCD jets with Pythia 8 + FastJet into a JetClass-style ROOT file",
        description="Generate jets with the recipe of the Top Quark Tagging Reference dataset: 14 TeV pp, "
        "all-hadronic ttbar (signal) and QCD dijets (background), anti-kT R=0.8, 550 < pT < 650 GeV, |eta| < 2, "
        "signal jets containing their top and its three decay quarks. Half signal, half background, shuffled.",
        epilog=_examples(
            """
            jetkd generate --out jets.root --jets 10000 --seed 1
            jetkd generate --out jets_massless.root --jets 100000 --seed 7 --workers 16 --massless
            """
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", required=True, help="output ROOT file (written atomically)")
    p.add_argument("--jets", type=int, required=True, help="number of jets (half top, half QCD)")
    p.add_argument("--seed", type=int, default=1, help="random seed (default: 1)")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: all cores)")
    p.add_argument("--massless", action="store_true", help="set E = |p| for every constituent, as in the reference dataset")
    p.set_defaults(func=_run_generate)


def _run_generate(args) -> int:
    from data_prep.generate import generate

    generate(args.out, n_jets=args.jets, seed=args.seed, workers=args.workers, massless=args.massless)
    return 0


def _add_convert(sub) -> None:
    p = sub.add_parser(
        "convert",
        help="convert jet files (ROOT, Top Tagging HDF5, LorentzNet HDF5, EnergyFlow npz) into the training cache",
        description="Read jets from any supported format (detected from content), order constituents by pT, keep the "
        "leading --max-particles, and write one HDF5 file per split (datasets p4, n_particles, label).",
        epilog=_examples(
            """
            jetkd convert jets.root --out cache/ --max-particles 128
            jetkd convert train.h5 val.h5 test.h5 --out cache/ --split train=0.8,val=0.1,test=0.1 --seed 3
            jetkd convert JetClass/*.root --out cache/ --labels label_QCD,label_Tbqq
            """
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", help="input files")
    p.add_argument("--out", required=True, help="output directory for <split>.h5")
    p.add_argument("--split", default="train=0.8,val=0.1,test=0.1", help="split fractions (default: %(default)s)")
    p.add_argument("--max-particles", type=int, default=128, help="constituents kept per jet (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split assignment and shuffling (default: %(default)s)")
    p.add_argument(
        "--branch-map",
        default=None,
        help="ROOT only: canonical=file branch names, comma separated, for part_px, part_py, part_pz, part_energy, "
        "and label (an integer class branch)",
    )
    p.add_argument("--labels", default=None, help="ROOT only: label_* branches, in class-index order (default: all)")
    p.set_defaults(func=_run_convert)


def _run_convert(args) -> int:
    from data_prep.convert import convert, parse_branch_map, parse_split

    convert(
        args.inputs,
        args.out,
        split=parse_split(args.split),
        max_particles=args.max_particles,
        seed=args.seed,
        branch_map=parse_branch_map(args.branch_map),
        labels=args.labels.split(",") if args.labels else None,
    )
    return 0


def _add_quickstart(sub) -> None:
    p = sub.add_parser(
        "quickstart",
        help="the whole pipeline at a size that runs in minutes on a laptop",
        description="Generate a small top/QCD dataset with Pythia, convert it into the training cache and summarize it.",
        epilog=_examples("jetkd quickstart\njetkd quickstart --out runs/qs --jets 4000"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default="runs/quickstart", help="output folder (default: %(default)s)")
    p.add_argument("--jets", type=int, default=4000, help="jets to generate (default: %(default)s)")
    p.add_argument("--seed", type=int, default=1, help="random seed (default: %(default)s)")
    p.add_argument("--workers", type=int, default=None, help="generator processes (default: all cores)")
    p.set_defaults(func=_run_quickstart)


def _run_quickstart(args) -> int:
    from jetkd.quickstart import quickstart

    quickstart(args.out, n_jets=args.jets, seed=args.seed, workers=args.workers)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from jetkd import __version__

    parser = argparse.ArgumentParser(
        prog="jetkd",
        description="Distil Lorentz-equivariant jet taggers into small, fast, boost-robust students.",
    )
    parser.add_argument("--version", action="version", version=f"jetkd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_generate(sub)
    _add_convert(sub)
    _add_quickstart(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except InputError as err:
        print(f"jetkd {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"jetkd {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
