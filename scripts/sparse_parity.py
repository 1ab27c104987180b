"""Curriculum extraction against one-shot KD on sparse parity (Gupta & Karmalkar 2025, section on two-layer nets).

Per seed: a task ``(n, k)`` with its subset drawn from the seed, a fixed test set, a two-layer MLP teacher trained
online on the labels (:func:`jetkd.parity.train_teacher`; a copy is kept when it first reaches the snapshot
accuracy: the *early* teacher; training goes on to ``--teacher-steps``: the *converged* teacher), then students of
the teacher's shape, all with the same initial weights, the same fresh samples in the same order, the same
optimiser, learning rate and number of steps (:func:`jetkd.parity.distill`):

- labels only (``none``: the student alone, the reference);
- one-shot KD (``kd``, alpha 1: the teacher's logits only, as the curriculum's last phase);
- curriculum extraction (``curriculum``: ``--phase-epochs`` epochs regressing a random projection to ``--dim``
  of the teacher's hidden layer, then the same KD to the end);
- with ``--early-teacher`` (default on): KD and curriculum again from the early teacher.

Reports per student: steps and samples to reach each ``--targets`` test accuracy (mean +- std over the seeds that
reached it, and how many did) and the final test accuracy (mean +- std over all seeds); writes ``table.md`` and
``curves.json`` into ``--out``.

    python scripts/sparse_parity.py                          # n=100, k=4, 5 seeds: ~5 min on one core
    python scripts/sparse_parity.py --seeds 0 1 --steps 4000 --no-early-teacher
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI: spinning OpenMP threads slow a shared machine

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

from jetkd.evaluate.report import write_text_atomic
from jetkd.parity import (
    Settings,
    SparseParity,
    build_method,
    distill,
    held_out_set,
    train_teacher,
)

# (row name, method, teacher: "converged" | "early" | None)
RUNS = (
    ("labels only", "none", None),
    ("one-shot KD", "kd", "converged"),
    ("curriculum extraction", "curriculum", "converged"),
    ("one-shot KD", "kd", "early"),
    ("curriculum extraction", "curriculum", "early"),
)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--n", type=int, default=100, help="input bits")
    p.add_argument("--k", type=int, default=4, help="parity degree (bits in the subset)")
    p.add_argument("--width", type=int, default=512, help="hidden units of teacher and student")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--steps", type=int, default=12000, help="optimiser steps of every student")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--optimizer", default="adam", choices=("adam", "sgd"), help="of the students")
    p.add_argument("--lr", type=float, default=1e-3, help="of the students (constant)")
    p.add_argument("--teacher-steps", type=int, default=30000)
    p.add_argument("--teacher-optimizer", default="sgd", choices=("adam", "sgd"))
    p.add_argument("--teacher-lr", type=float, default=0.05, help="SGD with momentum 0.9")
    p.add_argument("--snapshot-at", type=float, default=0.99, help="test accuracy at which the early teacher is kept")
    p.add_argument("--dim", type=int, default=32, help="curriculum: projection dimension")
    p.add_argument("--phase-epochs", type=float, default=5.0, help="curriculum: extraction phase, in epochs")
    p.add_argument("--steps-per-epoch", type=int, default=100, help="what an epoch is, in steps")
    p.add_argument("--temperature", type=float, default=1.0, help="KD temperature (both methods)")
    p.add_argument("--alpha", type=float, default=1.0, help="KD weight against CE (both methods)")
    p.add_argument("--targets", type=float, nargs="+", default=[0.95, 0.99])
    p.add_argument("--eval-every", type=int, default=100, help="steps between test evaluations")
    p.add_argument("--test-size", type=int, default=4096)
    p.add_argument("--early-teacher", action=argparse.BooleanOptionalAction, default=True,
                   help="also distil from the teacher as it first reached --snapshot-at")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--out", default="runs/sparse_parity")
    return p.parse_args(argv)


def run_seed(args: argparse.Namespace, seed: int) -> dict:
    """Teacher and every student of one seed: {"teacher": {...}, "runs": {key: curve dict}}."""
    task = SparseParity(args.n, args.k, seed)
    test = held_out_set(task, args.test_size, seed)
    teacher_settings = Settings(steps=args.teacher_steps, batch_size=args.batch_size, optimizer=args.teacher_optimizer,
                                lr=args.teacher_lr, eval_every=args.eval_every, steps_per_epoch=args.steps_per_epoch)
    teacher = train_teacher(task, args.width, teacher_settings, test, seed=seed, snapshot_at=args.snapshot_at)
    info = {"subset": list(task.subset), "steps": teacher.curve.steps[-1], "final_accuracy": teacher.curve.final_accuracy,
            "early_step": teacher.early_step, "seconds": teacher.curve.seconds}
    print(f"seed {seed}: S = {task.subset}; teacher first >= {args.snapshot_at:g} at step {teacher.early_step}, "
          f"{teacher.curve.final_accuracy:.4f} after {info['steps']} steps ({teacher.curve.seconds:.0f} s)", flush=True)
    settings = Settings(steps=args.steps, batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
                        eval_every=args.eval_every, steps_per_epoch=args.steps_per_epoch)
    teachers = {"converged": teacher.model, "early": teacher.early, None: None}
    runs = {}
    for name, method_name, which in RUNS:
        if which == "early" and not args.early_teacher:
            continue
        if which is not None and teachers[which] is None:
            print(f"  {name} ({which} teacher): skipped, no such teacher", flush=True)
            continue
        method = build_method(method_name, temperature=args.temperature, alpha=args.alpha, dim=args.dim,
                              phase_epochs=[args.phase_epochs], seed=seed)
        curve = distill(task, teachers[which], method, settings, test, seed=seed, width=args.width)
        runs[key(name, which)] = curve.as_dict()
        reach = ", ".join(f"{t:g}: {curve.steps_to(t)}" for t in args.targets)
        print(f"  {key(name, which)}: steps to {reach}; final {curve.final_accuracy:.4f} ({curve.seconds:.0f} s)",
              flush=True)
    return {"teacher": info, "runs": runs}


def key(name: str, which: str | None) -> str:
    return name if which is None else f"{name} | {which} teacher"


def steps_to(curve: dict, target: float) -> int | None:
    return next((s for s, a in zip(curve["steps"], curve["accuracy"]) if a >= target), None)


def mean_std(values: list[float], fmt: str) -> str:
    if not values:
        return "not reached"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{format(statistics.mean(values), fmt)} ± {format(std, fmt)}"


def tables(args: argparse.Namespace, results: dict[int, dict]) -> list[str]:
    """The Markdown tables: students (mean ± std) and per-seed steps, and the teachers."""
    seeds = list(results)
    keys = [k for k in dict.fromkeys(k for r in results.values() for k in r["runs"])]
    head = ["student", "teacher"]
    for t in args.targets:
        head += [f"steps to {t:.0%}", f"samples to {t:.0%}", f"reached {t:.0%}"]
    head += [f"final accuracy ({args.steps} steps)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for k in keys:
        curves = [results[s]["runs"][k] for s in seeds if k in results[s]["runs"]]
        name, _, which = k.partition(" | ")
        row = [name, which.replace(" teacher", "") or "-"]
        for t in args.targets:
            reached = [v for v in (steps_to(c, t) for c in curves) if v is not None]
            row += [mean_std(reached, ".0f"), mean_std([v * args.batch_size for v in reached], ",.0f"),
                    f"{len(reached)}/{len(curves)}"]
        row.append(mean_std([c["accuracy"][-1] for c in curves], ".4f"))
        lines.append("| " + " | ".join(row) + " |")
    target = max(args.targets)
    lines += ["", f"Steps to {target:.0%} per seed (`-`: not reached within {args.steps} steps):", "",
              "| student | teacher | " + " | ".join(f"seed {s}" for s in seeds) + " |",
              "|---|---|" + "---|" * len(seeds)]
    for k in keys:
        name, _, which = k.partition(" | ")
        cells = [results[s]["runs"].get(k) for s in seeds]
        cells = ["n/a" if c is None else str(steps_to(c, target) or "-") for c in cells]
        lines.append(f"| {name} | {which.replace(' teacher', '') or '-'} | " + " | ".join(cells) + " |")
    lines += ["", ("Teachers (trained on labels; *early* = the copy kept at the first evaluation >= "
                   f"{args.snapshot_at:g}, *converged* = after all {args.teacher_steps} steps):"), "",
              "| seed | subset S | early: step | converged: test accuracy |", "|---|---|---|---|"]
    for s in seeds:
        t = results[s]["teacher"]
        lines.append(f"| {s} | {t['subset']} | {t['early_step']} | {t['final_accuracy']:.4f} |")
    return lines


def main(argv: list[str] | None = None) -> Path:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    command = shlex.join(["python", "scripts/sparse_parity.py", *(sys.argv[1:] if argv is None else argv)])
    start = time.perf_counter()
    results = {seed: run_seed(args, seed) for seed in args.seeds}
    minutes = (time.perf_counter() - start) / 60
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = (f"n = {args.n}, k = {args.k}; teacher and students `Linear({args.n}, {args.width}) -> ReLU -> "
                f"Linear({args.width}, 2)`; online, {args.batch_size} fresh samples per step; test set "
                f"{args.test_size} samples per seed; accuracy every {args.eval_every} steps. Teacher: "
                f"{args.teacher_optimizer} lr {args.teacher_lr:g}, {args.teacher_steps} steps. Students: "
                f"{args.optimizer} lr {args.lr:g} (constant), {args.steps} steps = {args.steps * args.batch_size:,} "
                f"samples each, same init and sample order per seed for every student. KD: T = {args.temperature:g}, "
                f"alpha = {args.alpha:g}. Curriculum: teacher tap `hidden` -> random projection to dim {args.dim}, "
                f"student tap `hidden` through a linear head, {args.phase_epochs:g} epochs x {args.steps_per_epoch} "
                f"steps = {args.phase_epochs * args.steps_per_epoch:.0f} steps, then KD. Seeds {args.seeds}.")
    lines = ["# Sparse parity: curriculum extraction vs one-shot KD", "", f"Command: `{command}`", "",
             f"Settings: {settings}", "",
             ("Steps/samples to a target: mean ± std over the seeds that reached it (resolution: "
              f"{args.eval_every} steps); final accuracy: mean ± std over all seeds."), "",
             *tables(args, results), "", f"Wall time: {minutes:.1f} min, {args.threads} thread(s).", ""]
    text = "\n".join(lines)
    write_text_atomic(out / "table.md", text)
    write_text_atomic(out / "curves.json", json.dumps({"args": vars(args), "command": command, "results": results}))
    print("\n" + text, flush=True)
    print(f"Wrote {out / 'table.md'} and {out / 'curves.json'}")
    return out


if __name__ == "__main__":
    main()
