"""Every distillation method on both students, on one generated dataset, in one table.

Runs the pipeline of ``configs/compare_methods.yaml`` (generate -> convert -> teacher -> students without KD,
with Hinton KD, FitNets, NORM, CDD and curriculum extraction -> evaluation; finished stages are skipped, so a
rerun only adds what is missing) and writes ``comparison.md`` into the run folder: the command, the dataset
size and seeds, and per model the deployed model's parameters and FLOPs per jet, accuracy, AUC, 1/eps_B at
eps_S = 0.3 and 0.5, and accuracy at beta = 0.5 and 0.9 along the scan axis.

    python scripts/compare_methods.py                                  # ~20 min on 2 CPU cores
    python scripts/compare_methods.py run_dir=runs/compare_s2 generate.seed=2 convert.seed=2
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from jetkd.data.cache import JetCache
from jetkd.evaluate import deploy_notes, markdown_table, read_report
from jetkd.evaluate.report import write_text_atomic
from jetkd.pipeline import _data_paths, load_pipeline, run_pipeline

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "compare_methods.yaml"
STUDENT_ORDER = ("", "_kd", "_fitnets", "_norm", "_cdd", "_curriculum")


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="pipeline config overrides, key.sub=value")
    parser.add_argument("--config", default=str(CONFIG))
    args = parser.parse_args(argv)
    pipe = load_pipeline(args.config, args.overrides)
    run_dir = run_pipeline(pipe)

    report = read_report(run_dir)
    order = ["teacher"] + [f"{s}{m}" for s in ("mlp", "deepset") for m in STUDENT_ORDER]
    results = {name: report[name] for name in order if name in report}
    results |= {name: e for name, e in report.items() if name not in results}
    data = _data_paths(pipe, run_dir)
    sizes = {split: len(JetCache(getattr(data, split))) for split in ("train", "val", "test")}
    seeds = {name: entry.get("train", {}).get("seed", pipe.student_defaults.get("train", {}).get("seed"))
             for name, entry in {"teacher": pipe.teacher, **pipe.students}.items()}
    lines = [
        "# Distillation methods compared",
        "",
        f"Command: `{shlex.join(['python', 'scripts/compare_methods.py', *(sys.argv[1:] if argv is None else argv)])}`",
        "",
        (f"Data: {pipe.generate.jets:,} generated jets (Pythia seed {pipe.generate.seed}), " if pipe.generate else "Data: ")
        + f"split {sizes['train']:,} / {sizes['val']:,} / {sizes['test']:,} (train / val / test, split seed "
        f"{pipe.convert.seed}). Training seeds: " + ", ".join(f"{k} {v}" for k, v in seeds.items()) + ".",
        "",
        "Parameters and FLOPs are those of the deployed model (NORM folded, CDD pruned, heads dropped).",
        "",
        markdown_table(results),
        "",
    ]
    lines += deploy_notes(results)
    out = run_dir / "comparison.md"
    write_text_atomic(out, "\n".join(lines) + "\n")
    print(out.read_text())
    print(f"Comparison table in {out.resolve()}")
    return out


if __name__ == "__main__":
    main()
