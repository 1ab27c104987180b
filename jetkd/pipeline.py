"""``jetkd run CONFIG``: the whole study in one command (generate, convert, teacher, students, evaluate).

A pipeline config::

    run_dir: runs/quickstart
    generate: {jets: 6000, seed: 1, massless: true}       # or `data: {train: ..., val: ..., test: ...}`
    convert:  {max_particles: 128, seed: 1, split: {train: 0.7, val: 0.15, test: 0.15}}
    teacher:  {model: {...}, train: {...}, optim: {...}, schedule: {...}}     # a TrainJob without run_dir/data
    student_defaults: {train: {...}, optim: {...}, schedule: {...}}           # shared by every student
    students:
      mlp:    {model: {name: mlp}}
      mlp_kd: {model: {name: mlp}, distill: {method: kd, temperature: 3, alpha: 0.7}}
    evaluate: {betas: [0.0, 0.05, ...], axis: [1, 0, 0]}

Each stage's output lands in ``run_dir`` (``jets.root``, ``cache/``, ``teacher/``, ``<student>/``, ``report.*``);
a stage whose output already exists is skipped, so a killed pipeline continues where it stopped.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from jetkd.config import DataConfig, apply_overrides, from_dict, load_job, merge, read_yaml, to_dict
from jetkd.errors import InputError

QUICKSTART = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"


@dataclass
class GenerateConfig:
    jets: int = 6000
    seed: int = 1
    massless: bool = True
    workers: int = 0  # 0: all cores


@dataclass
class ConvertConfig:
    max_particles: int = 128
    seed: int = 1
    split: dict = field(default_factory=lambda: {"train": 0.7, "val": 0.15, "test": 0.15})


@dataclass
class EvaluateConfig:
    betas: list[float] = field(default_factory=lambda: [round(0.05 * i, 2) for i in range(20)])
    axis: list[float] = field(default_factory=lambda: [1.0, 0.0, 0.0])
    batch_size: int = 512


@dataclass
class Pipeline:
    run_dir: str = "runs/pipeline"
    generate: GenerateConfig | None = None
    convert: ConvertConfig = field(default_factory=ConvertConfig)
    data: DataConfig | None = None
    teacher: dict = field(default_factory=dict)
    student_defaults: dict = field(default_factory=dict)
    students: dict = field(default_factory=dict)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)


def load_pipeline(path: str | Path, overrides: list[str] = ()) -> Pipeline:
    data = apply_overrides(read_yaml(path), list(overrides), str(path))
    for key in ("generate", "data"):
        if isinstance(data.get(key), dict):
            cls = GenerateConfig if key == "generate" else DataConfig
            data[key] = from_dict(cls, data[key], str(path), f"{key}.")
    pipe = from_dict(Pipeline, data, str(path))
    if (pipe.generate is None) == (pipe.data is None):
        raise InputError(str(path), "give exactly one of `generate` (make jets) and `data` (existing cache files)")
    if not pipe.teacher or not pipe.students:
        raise InputError(str(path), "a pipeline needs a `teacher` section and at least one entry in `students`")
    for name, entry in {"teacher": pipe.teacher, **{f"students.{k}": v for k, v in pipe.students.items()}}.items():
        for reserved in ("run_dir", "data"):
            if reserved in entry:
                raise InputError(str(path), f"{name}.{reserved}: set by the pipeline; remove it")
        load_job(data=_job_dict(pipe, entry, name, Path(pipe.run_dir)), where=f"{path}: {name}")  # checked up front
    return pipe


def _job_dict(pipe: Pipeline, entry: dict, name: str, run_dir: Path) -> dict:
    base = {} if name == "teacher" else pipe.student_defaults
    job = merge(base, entry)
    job["run_dir"] = str(run_dir / name.removeprefix("students."))
    job["data"] = to_dict(_data_paths(pipe, run_dir))
    if job.get("distill", {}).get("method", "none") != "none":
        job["distill"] = {**job["distill"], "teacher": str(run_dir / "teacher" / "best.pt")}
    return job


def _data_paths(pipe: Pipeline, run_dir: Path) -> DataConfig:
    if pipe.data is not None:
        return pipe.data
    cache = run_dir / "cache"
    return DataConfig(train=str(cache / "train.h5"), val=str(cache / "val.h5"), test=str(cache / "test.h5"))


def run_pipeline(pipe: Pipeline, *, progress: bool = True) -> Path:
    """Run every stage and return the run folder (with ``report.md``)."""
    from jetkd.train.loop import Trainer

    start = time.perf_counter()
    run_dir = Path(pipe.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if pipe.generate is not None:
        _make_data(pipe, run_dir)
    jobs = {"teacher": pipe.teacher, **{f"students.{k}": v for k, v in pipe.students.items()}}
    for name, entry in jobs.items():
        job = load_job(data=_job_dict(pipe, entry, name, run_dir))
        if _finished(Path(job.run_dir), job.train.epochs):
            continue
        _stage(f"training {name.removeprefix('students.')}")
        Trainer(job, resume=True, progress=progress).fit()

    _stage("evaluating")
    checkpoints = {name: run_dir / name for name in ["teacher", *pipe.students]}
    evaluate_checkpoints(checkpoints, _data_paths(pipe, run_dir).test, run_dir, betas=pipe.evaluate.betas,
                         axis=pipe.evaluate.axis, batch_size=pipe.evaluate.batch_size)
    print(f"\nPipeline finished in {time.perf_counter() - start:.0f} s.\n")
    print((run_dir / "report.md").read_text())
    print(f"Report, plots and every run are in {run_dir.resolve()}/")
    return run_dir


def evaluate_checkpoints(checkpoints: dict[str, Path], test: str | Path, out_dir: str | Path, *, betas, axis,
                         batch_size: int = 512) -> Path:
    """Evaluate trained models (checkpoints or run folders, by report name) on the test cache ``test`` and write
    ``report.json``, ``report.md`` and the plots into ``out_dir``; on the GPU when there is one."""
    import torch

    from jetkd.data.cache import JetCache
    from jetkd.data.loader import JetLoader
    from jetkd.evaluate import UnreliableMetricWarning, evaluate_model, write_report
    from jetkd.train.checkpoint import load_checkpoint, load_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    batches = list(JetLoader(JetCache(test).require_labels(), batch_size, shuffle=False))
    results = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnreliableMetricWarning)  # listed under "Warnings" in report.md
        for name, path in checkpoints.items():
            results[name] = evaluate_model(load_model(path), batches, betas=np.asarray(betas), axis=tuple(axis),
                                           name=name, device=device)
            summary = load_checkpoint(path).get("deployed", {}).get("summary")
            if summary:  # e.g. CDD: size of the starting-width student against the deployed one
                results[name]["deploy"] = summary
    write_report(out_dir, results)
    return Path(out_dir)


def _make_data(pipe: Pipeline, run_dir: Path) -> None:
    from data_prep.convert import convert
    from data_prep.generate import generate

    gen, conv = pipe.generate, pipe.convert
    root = run_dir / "jets.root"
    if not root.exists():
        _stage(f"generating {gen.jets} jets")
        generate(root, n_jets=gen.jets, seed=gen.seed, workers=gen.workers or None, massless=gen.massless)
    data = _data_paths(pipe, run_dir)
    if not all(Path(path).exists() for path in (data.train, data.val, data.test)):
        _stage("converting into the training cache")
        convert([root], run_dir / "cache", split=conv.split, max_particles=conv.max_particles, seed=conv.seed)


def _finished(job_dir: Path, epochs: int) -> bool:
    metrics = job_dir / "metrics.jsonl"
    if not (job_dir / "best.pt").exists() or not metrics.exists():
        return False
    lines = metrics.read_text().splitlines()
    return bool(lines) and int(json.loads(lines[-1])["epoch"]) >= epochs


def _stage(text: str) -> None:
    print(f"\n== {text}", flush=True)
