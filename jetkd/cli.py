"""The ``jetkd`` command line: one sub-command per user entry point (DESIGN.md, "CLI").

Heavy modules are imported inside each command so that ``jetkd --help`` stays instant.
Bad input (:class:`jetkd.errors.InputError`) ends as one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap

from jetkd.errors import InputError

# OpenMP threads that spin-wait slow small torch ops down ~30x when a core is busy with something else (shared
# nodes, data workers, the tests' subprocesses); passive waiting costs nothing measurable. Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


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
        "leading --max-particles, and write one HDF5 file per split (datasets p4, n_particles, label). Every jet is "
        "checked first: finite momenta below --max-momentum, E > 0 and E >= |p| (up to float32 rounding), at least one "
        "constituent, labels within the declared classes (one-hot label_* branches exactly 0 or 1, one set per "
        "jet). A bad jet stops the conversion with one line naming the file, branch and entry (exit status 2) "
        "and leaves no output file.",
        epilog=_examples(
            """
            jetkd convert jets.root --out cache/ --max-particles 128
            jetkd convert train.h5 val.h5 test.h5 --out cache/ --split train=0.8,val=0.1,test=0.1 --seed 3
            jetkd convert JetClass/*.root --out cache/ --labels label_QCD,label_Tbqq
            jetkd convert future_collider.root --out cache/ --max-momentum 1e6
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
    p.add_argument("--no-labels", action="store_true",
                   help="unlabelled input (collision data): read no labels, store label -1 (such a cache can be "
                        "scored, not trained or evaluated on)")
    p.add_argument("--force", action="store_true", help="replace a cache already in --out (its split files)")
    p.add_argument("--max-momentum", type=float, default=1e5, metavar="GEV",
                   help="sanity bound on |px|, |py|, |pz| and E of every constituent; a jet beyond it stops the "
                        "conversion (default: %(default)g GeV = 100 TeV)")
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
        label_mode="none" if args.no_labels else "required",
        max_momentum=args.max_momentum,
        force=args.force,
    )
    return 0


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train one model (teacher or student, with or without distillation) from a YAML config",
        description="Train one model. Runs under torchrun for DistributedDataParallel (gloo on CPU, nccl on GPU); "
        "only rank 0 writes. The run folder gets config.yaml, last.pt, best.pt, metrics.jsonl and timing.jsonl, and "
        "holds one run: it is locked while training, and a folder that already holds a run is refused unless "
        "--resume (continue it; the config must be unchanged except train.epochs, train.checkpoint_every and "
        "train.eval_batch_size) or --force (move it aside). A non-finite loss or gradient stops the run (exit "
        "status 3) with its checkpoints as they were. Overrides may stand anywhere on the command line.",
        epilog=_examples(
            """
            jetkd train configs/deepset_kd_T3.yaml
            jetkd train configs/teacher.yaml train.epochs=5 run_dir=runs/teacher_test
            torchrun --nproc_per_node=4 -m jetkd train configs/teacher.yaml --resume train.epochs=60
            jetkd train configs/mlp.yaml --force optim.lr=1e-4
            """
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", help="YAML training config")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. train.epochs=5")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--resume", action="store_true", help="continue the run in run_dir from its last.pt")
    how.add_argument("--force", action="store_true", help="move a run already in run_dir aside "
                     "(to <run_dir>.replaced-<time>) and start a new one")
    p.set_defaults(func=_run_train)


def _run_train(args) -> int:
    from jetkd.config import load_job
    from jetkd.train import distributed
    from jetkd.train.loop import Diverged, Preempted, Trainer

    job = load_job(args.config, args.overrides)
    try:
        Trainer(job, resume=args.resume, force=args.force).fit()
    except Preempted as stop:
        print(f"jetkd train: {stop}", file=sys.stderr)
        return 143
    except Diverged as stop:
        print(f"jetkd train: {stop}", file=sys.stderr)
        return 3
    finally:
        distributed.teardown()
    return 0


def _add_evaluate(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="evaluate trained models side by side: accuracy, AUC, 1/eps_B, boost scan, report and plots",
        description="Evaluate checkpoints (or run folders, using their best.pt) on a test cache: accuracy, ROC AUC, "
        "background rejection at eps_S = 0.3 and 0.5, each with a 68% bootstrap interval over the test jets (a "
        "rejection resting on fewer than 10 background jets is given as an 84% CL lower limit), and a Lorentz-boost "
        "scan of the constituents. Models are named by the shortest path suffix that tells them apart "
        "(seedA/mlp, seedB/mlp); runs whose configs differ only in train.seed are also summarised as mean ± std "
        "over the seeds. Writes report.json, report.md and PNG plots.",
        epilog=_examples(
            """
            jetkd evaluate runs/teacher runs/mlp runs/mlp_kd --data cache/test.h5 --out runs/report
            jetkd evaluate runs/deepset --data cache/test.h5 --out runs/report_z --axis 0,0,1
            jetkd evaluate runs/deepset --data cache/test.h5 --out runs/report_jet --axis jet
            jetkd evaluate runs/s1/mlp runs/s2/mlp runs/s3/mlp --data cache/test.h5 --out runs/seeds --bootstrap 500
            """
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("models", nargs="+", help="run folders or checkpoint files; named by the shortest distinguishing "
                   "path suffix")
    p.add_argument("--data", required=True, help="test split of the cache (image models: the image dataset, e.g. "
                   "digits or data/cifar-10-batches-py)")
    p.add_argument("--split", default="test", help="image models: the split to evaluate on (default: %(default)s)")
    p.add_argument("--out", required=True, help="output folder for the report")
    p.add_argument("--betas", default=",".join(f"{0.05 * i:.2f}" for i in range(20)), help="boost betas (default: 0,0.05,...,0.95)")
    p.add_argument("--axis", default="1,0,0", help="boost axis x,y,z, or 'jet' to boost each jet along its own "
                   "momentum (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--bootstrap", type=int, default=200, metavar="N",
                   help="bootstrap resamples of the test jets for the 68%% intervals (default: %(default)s; 0: none)")
    p.set_defaults(func=_run_evaluate)


def _run_evaluate(args) -> int:
    from pathlib import Path

    import numpy as np

    from jetkd.pipeline import evaluate_checkpoints

    betas = np.array([float(b) for b in args.betas.split(",")])
    try:
        axis = "jet" if args.axis == "jet" else tuple(float(a) for a in args.axis.split(","))
    except ValueError:
        axis = ()
    if (axis != "jet" and (len(axis) != 3 or not any(axis))) or np.any(np.abs(betas) >= 1):
        raise InputError("--axis/--betas", "expected a non-zero 3-vector axis x,y,z (or 'jet') and betas with |beta| < 1")
    if args.bootstrap < 0:
        raise InputError("--bootstrap", f"must be >= 0, got {args.bootstrap}")
    if _image_runs(args.models):
        from jetkd.evaluate import run_labels
        from jetkd.images.evaluate import evaluate_image_checkpoints

        paths = [Path(spec) for spec in args.models]
        out = evaluate_image_checkpoints(dict(zip(run_labels(paths), paths)), args.data, args.split, args.out,
                                         n_bootstrap=args.bootstrap)
        print((out / "report.md").read_text())
        print(f"Report in {out.resolve()}/")
        return 0
    out = evaluate_checkpoints([Path(spec) for spec in args.models], args.data, args.out, betas=betas, axis=axis,
                               batch_size=args.batch_size, n_bootstrap=args.bootstrap)
    print((out / "report.md").read_text())
    print(f"Report and plots in {out.resolve()}/")
    return 0


def _image_runs(models: list[str]) -> bool:
    """Whether the runs to evaluate are image models (their checkpoints' input contracts say so); a mix is an
    error."""
    from jetkd.train.checkpoint import load_checkpoint

    kinds = {(load_checkpoint(m).get("contract") or {}).get("kind", "jets") for m in models}
    if len(kinds) > 1:
        raise InputError("models", "a mix of jet and image models; evaluate them separately")
    return kinds == {"images"}


def _add_score(sub) -> None:
    p = sub.add_parser(
        "score",
        help="score jets in files with trained models into ROOT friend trees (one entry per input entry)",
        description="Score every jet of the inputs (any format jetkd reads, labelled or not) with every given model, "
        "reading each input once in streaming chunks. OUT is a ROOT file for one input, else a folder that receives "
        "<input stem>.scores.root per input. The tree 'tree' has one entry per input entry, in order: "
        "score_<model>_<class> (float32), score_ok (false for jets without constituents or with non-finite "
        "momenta; their scores are NaN), label (the input's class index, if labelled) and the observers.",
        epilog=_examples(
            """
            jetkd score --model runs/quickstart/deepset_kd jets.root --out jets.scores.root
            jetkd score --model runs/qs/mlp --model runs/qs/deepset data/*.root --out scores/ --observers jet_pt,jet_mass
            jetkd score --model runs/qs/deepset_kd/best.pt delphes.root --out s.root --tree Events \\
                --branch-map part_px=PFCand_px,part_py=PFCand_py,part_pz=PFCand_pz,part_energy=PFCand_E --strict
            """
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", help="input files (ROOT, Top Tagging HDF5, LorentzNet HDF5, EnergyFlow npz)")
    p.add_argument("--model", action="append", required=True, metavar="RUN",
                   help="run folder, best.pt, last.pt or an exported .onnx; repeat for several models (scored in "
                        "the same pass)")
    p.add_argument("--out", required=True, help="output ROOT file (one input) or folder (several inputs)")
    p.add_argument("--observers", default="", help="per-jet branches to copy from the input (or jet_pt, jet_eta, "
                   "jet_phi, jet_mass, jet_energy, jet_nparticles, computed from the constituents), comma separated")
    p.add_argument("--tree", default=None, help="ROOT: the tree holding the jets (default: the only one, or 'tree')")
    p.add_argument("--branch-map", default=None, help="ROOT: canonical=file branch names, as for jetkd convert")
    p.add_argument("--strict", action="store_true", help="inputs that break a model's input contract in a way it "
                   "cannot repair (constituent mass convention) are an error instead of a warning")
    p.add_argument("--device", default="cpu", help="torch device for the models (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=4096, help="jets per forward pass (default: %(default)s)")
    p.add_argument("--step-size", type=int, default=50_000, help="jets read per chunk (default: %(default)s)")
    p.set_defaults(func=_run_score)


def _run_score(args) -> int:
    import warnings

    from data_prep.convert import parse_branch_map
    from jetkd.contract import ContractWarning
    from jetkd.score import score_files
    from jetkd.tagger import load

    for flag, value in (("--batch-size", args.batch_size), ("--step-size", args.step_size)):
        if value < 1:
            raise InputError(flag, f"must be >= 1, got {value}")
    observers = [name.strip() for name in args.observers.split(",") if name.strip()]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        taggers = [load(path, device=args.device, strict=args.strict) for path in args.model]
        score_files(taggers, args.inputs, args.out, observers=observers, tree=args.tree,
                    branch_map=parse_branch_map(args.branch_map), step_size=args.step_size,
                    batch_size=args.batch_size)
    for warning in caught:  # contract breaches as one line each; anything else as Python shows it
        if issubclass(warning.category, ContractWarning):
            print(f"jetkd score: warning: {warning.message}", file=sys.stderr)
        else:
            warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
    return 0


def _add_export(sub) -> None:
    p = sub.add_parser(
        "export",
        help="export a trained tagger to ONNX (checked against PyTorch) or a student to hls4ml (C-simulated)",
        description="Export the deploy form of a run (NORM folded, CDD pruned, heads dropped) with its preprocessing "
        "as one ONNX graph: inputs p4 (batch, N, 4) float32 [E, px, py, pz] GeV and mask (batch, N) bool, output "
        "logits; batch and N dynamic. onnxruntime then runs it on real jets padded to several lengths; above "
        "--tolerance in |delta logit| against PyTorch the export fails and writes nothing. The input contract goes "
        "into the ONNX metadata, so jetkd score and jetkd.load take the file. --format hls4ml writes the student's "
        "network (features computed upstream, see DIR/inputs.json) as hls4ml project(s), runs their bit-accurate C "
        "simulation on test jets and writes DIR/parity.json.",
        epilog=_examples(
            """
            jetkd export runs/quickstart/deepset_kd --format onnx --out deepset_kd.onnx
            jetkd export runs/qs/mlp/best.pt --format onnx --out mlp.onnx --data jets.root
            jetkd export runs/trigger/mlp16 --format hls4ml --out hls/mlp16 --precision "ap_fixed<16,6>"
            """
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", help="run folder, best.pt or last.pt")
    p.add_argument("--format", required=True, choices=["onnx", "hls4ml"], help="output format")
    p.add_argument("--out", required=True, help="output file (.onnx) or folder (hls4ml)")
    p.add_argument("--precision", default=None, help="hls4ml: ap_fixed<W,I> for every layer (default: per layer "
                   "from the trained model's weights and activations on real jets, 16 bits)")
    p.add_argument("--backend", default="Vitis", help="hls4ml backend: Vitis or Vivado (default: %(default)s)")
    p.add_argument("--data", default=None, help="jets to check the export on (any format jetkd reads, or a cache "
                   "file; default: the run's validation cache)")
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest |delta logit| accepted (default: %(default)g)")
    p.set_defaults(func=_run_export)


def _run_export(args) -> int:
    from jetkd.export.onnx import ExportError, export_onnx

    if args.format == "hls4ml":
        return _run_export_hls4ml(args)
    try:
        report = export_onnx(args.run, args.out, data=args.data, tolerance=args.tolerance)
    except ExportError as err:
        print(f"jetkd export: error: {err}", file=sys.stderr)
        return 1
    print(f"Exported {args.run} to {report['out']}: onnxruntime matches PyTorch to {report['max_abs_diff']:.2g} in the "
          f"logits (tolerance {args.tolerance:g}) on {report['n_jets']} real jets padded to "
          f"{', '.join(map(str, report['widths']))} constituents.")
    return 0


def _run_export_hls4ml(args) -> int:
    from jetkd.export.hls import export_hls4ml

    p = export_hls4ml(args.run, args.out, precision=args.precision, backend=args.backend, data=args.data)
    fmt = lambda v: "n/a" if v is None else f"{v:.4g}"  # noqa: E731
    print(f"Wrote the hls4ml project(s) {', '.join(p['projects'])} of {args.run} to {args.out}/ ({args.backend}). "
          f"C simulation on {p['n_jets']} jets: argmax agreement {p['argmax_agreement']:.4f} with the float model, "
          f"max |delta logit| {p['max_abs_diff']:.3g}, AUC {fmt(p['auc_float'])} float / {fmt(p['auc_fixed'])} fixed, "
          f"1/eps_B at eps_S = 0.3 {fmt(p['rej_30_float'])} / {fmt(p['rej_30_fixed'])}; {p['multiplications']:,} "
          f"multiplications per inference, {p['weight_bits']:,} weight bits. Inputs in {args.out}/inputs.json, "
          f"figures in {args.out}/parity.json.")
    return 0


def _add_run(sub) -> None:
    p = sub.add_parser(
        "run",
        help="the whole pipeline from one config: generate, convert, teacher, students, evaluate",
        description="Run a pipeline config (see configs/quickstart.yaml). A stage is reused only when its resolved "
        "config and inputs are unchanged (fingerprints in RUN_DIR/stages.json), so rerunning a killed pipeline "
        "continues where it stopped; a changed stage reruns with everything downstream of it, the pipeline says "
        "which and why, and previous outputs are moved aside. `seeds: [1, 2, 3]` trains every student once per seed "
        "and the report summarises them as mean ± std.",
        epilog=_examples("jetkd run configs/quickstart.yaml\njetkd run configs/quickstart.yaml generate.jets=20000 run_dir=runs/qs20k"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", help="YAML pipeline config")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    p.set_defaults(func=_run_run)


def _run_run(args) -> int:
    from jetkd.pipeline import load_pipeline, run_pipeline

    run_pipeline(load_pipeline(args.config, args.overrides))
    return 0


def _add_quickstart(sub) -> None:
    p = sub.add_parser(
        "quickstart",
        help="the whole pipeline at laptop size (= jetkd run configs/quickstart.yaml)",
        description="Generate a small top/QCD dataset with Pythia, train a compact LorentzNet teacher, train MLP and "
        "deep-set students with and without knowledge distillation, evaluate all of them (rejection and boost "
        "robustness) and print the report. 10-12 minutes on 2 CPU cores.",
        epilog=_examples("jetkd quickstart\njetkd quickstart run_dir=runs/qs2 generate.seed=2"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides of configs/quickstart.yaml")
    p.set_defaults(func=_run_quickstart)


def _run_quickstart(args) -> int:
    from jetkd.pipeline import QUICKSTART, load_pipeline, run_pipeline

    run_pipeline(load_pipeline(QUICKSTART, args.overrides))
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
    _add_train(sub)
    _add_evaluate(sub)
    _add_score(sub)
    _add_export(sub)
    _add_run(sub)
    _add_quickstart(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may stand anywhere (after --resume too); anything else unknown is an argparse error
    overrides = [a for a in extra if "=" in a and not a.startswith("-")]
    if overrides and hasattr(args, "overrides"):
        args.overrides = [*args.overrides, *overrides]
        extra = [a for a in extra if a not in overrides]
    if extra:
        parser.parse_args(argv)  # reports the unrecognised arguments the usual way (exit status 2)
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
