"""``jetkd run CONFIG``: the whole study in one command (generate, convert, teacher, students, evaluate).

A pipeline config::

    run_dir: runs/quickstart
    generate: {jets: 6000, seed: 1, massless: true}       # or `data: {train: ..., val: ..., test: ...}`
    convert:  {max_particles: 128, seed: 1, split: {train: 0.7, val: 0.15, test: 0.15}}
    teacher:  {model: {...}, train: {...}, optim: {...}, schedule: {...}}     # a TrainJob without run_dir/data
              # or {published: path/to/best-val-model.pt}: the released LorentzNet top-tagging checkpoint, not trained
              # (teacher.published=PATH on the command line replaces a trained teacher)
    student_defaults: {train: {...}, optim: {...}, schedule: {...}}           # shared by every student
    students:
      mlp:    {model: {name: mlp}}
      mlp_kd: {model: {name: mlp}, distill: {method: kd, temperature: 3, alpha: 0.7}}
    evaluate: {betas: [0.0, 0.05, ...], axis: [1, 0, 0]}

    seeds: [1, 2, 3]                                       # optional: every student once per seed

Each stage's output lands in ``run_dir`` (``jets.root``, ``cache/``, ``teacher/``, ``<student>/`` or
``<student>_seed<k>/``, ``report.*``). A stage's fingerprint (its resolved config and the fingerprints of its
inputs: the upstream stages, or the size and time of given data files) is stored in ``run_dir/stages.json``
when the stage starts. A stage is reused only when its fingerprint is unchanged (a killed training with an
unchanged fingerprint is resumed); otherwise it is rerun, and with it everything downstream, and the pipeline
says which and why; a previous output is moved aside to ``<name>.replaced-<time>``, never overwritten.
``run_dir`` is locked while a pipeline runs in it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from jetkd.config import (PIPELINE_CHECKS, DataConfig, TrainJob, check_values, config_error, flat_keys, from_dict,
                          load_job, merge, read_config, shipped_config, to_dict)
from jetkd.errors import InputError

JOB_DEFAULTS = flat_keys(to_dict(TrainJob()))  # a trainer stage's config keys at their defaults (Stages.decide)

QUICKSTART = shipped_config("quickstart.yaml")  # configs/quickstart.yaml, shipped as package data of jetkd.configs


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
    # further scans, each a report of its own in run_dir/boost_<name>/ (z, jet, or x_y_z): axes [x, y, z] or "jet"
    also_axes: list = field(default_factory=list)
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
    seeds: list[int] = field(default_factory=list)  # train every student once per seed (train.seed); [] = once


def load_pipeline(path, overrides: list[str] = ()) -> Pipeline:
    """A validated :class:`Pipeline` from a config file (a path, or a shipped config such as :data:`QUICKSTART`)
    and its ``extends:`` chain, plus command-line overrides. Every section and every job is checked up front
    (:data:`jetkd.config.PIPELINE_CHECKS`, :func:`jetkd.config.load_job`); an error names the key, its value and
    the file or override that set it."""
    data, origins = read_config(path, overrides)
    for key, cls in (("generate", GenerateConfig), ("data", DataConfig)):
        if data.get(key) is not None:
            data[key] = from_dict(cls, data[key], origins, f"{key}.")
    pipe = from_dict(Pipeline, data, origins)
    check_values(pipe, PIPELINE_CHECKS, origins)
    if (pipe.generate is None) == (pipe.data is None):
        raise InputError(str(path), "give exactly one of `generate` (make jets) and `data` (existing cache files)")
    if not pipe.teacher or not pipe.students:
        raise InputError(str(path), "a pipeline needs a `teacher` section and at least one entry in `students`")
    if "published" in pipe.teacher:  # wins over a trained teacher's sections (teacher.published=PATH overrides)
        if not Path(str(pipe.teacher["published"])).is_file():
            raise config_error(origins, "teacher.published", f"expected the published LorentzNet checkpoint (an "
                                                             f"existing file), got {pipe.teacher['published']!r}")
        pipe.teacher = {"published": pipe.teacher["published"]}
    for name, entry in {"teacher": pipe.teacher, **{f"students.{k}": v for k, v in pipe.students.items()}}.items():
        if name == "teacher" and "published" in entry:
            continue
        if not isinstance(entry, dict):
            raise config_error(origins, name, f"expected a mapping (a job's sections), got {entry!r}")
        for reserved in ("run_dir", "data"):
            if reserved in entry:
                raise config_error(origins, f"{name}.{reserved}", "set by the pipeline; remove it")
        scopes = (f"{name}.",) if name == "teacher" else (f"{name}.", "student_defaults.")
        load_job(data=_job_dict(pipe, entry, name, Path(pipe.run_dir)), where=origins.scoped(*scopes))  # up front
    return pipe


def _job_dict(pipe: Pipeline, entry: dict, name: str, run_dir: Path, seed: int | None = None) -> dict:
    base = {} if name == "teacher" else pipe.student_defaults
    job = merge(base, entry)
    folder = name.removeprefix("students.")
    if seed is not None:
        job["train"] = {**job.get("train", {}), "seed": seed}
        folder = f"{folder}_seed{seed}"
    job["run_dir"] = str(run_dir / folder)
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
    """Run every stage whose fingerprint changed (module docstring) and return the run folder (with
    ``report.md``)."""
    from jetkd.rundir import OutputFolder
    from jetkd.train.loop import Trainer

    start = time.perf_counter()
    run_dir = Path(pipe.run_dir)
    with OutputFolder(run_dir, [], "pipeline", resume=True):  # the lock only: one pipeline at a time
        stages = Stages(run_dir)
        data = _make_data(pipe, run_dir, stages) if pipe.generate is not None else _given_data(pipe.data)
        jobs = {"teacher": (pipe.teacher, None)}
        for student, entry in pipe.students.items():
            for seed in pipe.seeds or [None]:
                jobs[f"students.{student}" + (f"_seed{seed}" if seed is not None else "")] = (entry, seed)
        fingerprints = {"data": data}
        for name, (entry, seed) in jobs.items():
            if name == "teacher" and "published" in entry:
                path = Path(str(entry["published"]))
                stat = path.stat()
                decision = stages.decide("teacher", {"published": str(path.resolve()), "size": stat.st_size,
                                                     "mtime": stat.st_mtime_ns}, {"data": data}, run_dir / "teacher")
                fingerprints["teacher"] = stages.fingerprint("teacher")
                if decision != "reuse":
                    _stage(f"importing the published teacher {path}")
                    import_published_teacher(path, run_dir / "teacher", _data_paths(pipe, run_dir))
                continue
            base = name if seed is None else name.rpartition("_seed")[0]
            job = load_job(data=_job_dict(pipe, entry, base, run_dir, seed))
            config = to_dict(job)
            config.pop("run_dir")
            config["data"] = None  # stands for the data's fingerprint
            inputs = {"data": data}
            if job.distill.method != "none":
                config["distill"]["teacher"] = None
                inputs["teacher"] = fingerprints["teacher"]
            label = name.removeprefix("students.")
            decision = stages.decide(label, config, inputs, Path(job.run_dir), defaults=JOB_DEFAULTS)
            fingerprints[name.removeprefix("students.")] = stages.fingerprint(label)
            if decision == "reuse" and _finished(Path(job.run_dir), job.train.epochs):
                continue
            _stage(f"training {label}" + (f" ({decision})" if decision != "new" else ""))
            Trainer(job, resume=decision == "reuse", force=decision != "reuse", progress=progress).fit()

        _stage("evaluating")
        checkpoints = with_unboosted_selection(
            {name.removeprefix("students."): Path(run_dir / name.removeprefix("students.")) for name in jobs})
        paths = _data_paths(pipe, run_dir)
        if paths.images:
            from jetkd.images.evaluate import evaluate_image_checkpoints

            evaluate_image_checkpoints(checkpoints, paths.images, paths.test or "test", run_dir)
        else:
            evaluate_checkpoints(checkpoints, paths.test, run_dir, betas=pipe.evaluate.betas, axis=pipe.evaluate.axis,
                                 batch_size=pipe.evaluate.batch_size, progress=progress)
            for axis in pipe.evaluate.also_axes:
                _stage(f"evaluating along {scan_name(axis)}")
                evaluate_checkpoints(checkpoints, paths.test, run_dir / f"boost_{scan_name(axis)}",
                                     betas=pipe.evaluate.betas, axis=axis, batch_size=pipe.evaluate.batch_size,
                                     progress=progress)
    print(f"\nPipeline finished in {time.perf_counter() - start:.0f} s.\n")
    print((run_dir / "report.md").read_text())
    print(f"Report, plots and every run are in {run_dir.resolve()}/")
    return run_dir


def import_published_teacher(path: Path, out: Path, data: DataConfig) -> Path:
    """Write ``out/best.pt``: the released LorentzNet top-tagging checkpoint (:func:`jetkd.models.lorentznet.
    load_published`) as a jetkd checkpoint, with the input contract of the data it will teach on (class names,
    constituent count, mass convention) and its provenance; ``out`` is moved aside if it holds another run."""
    import dataclasses

    from jetkd import __version__
    from jetkd.contract import training_contract
    from jetkd.data.cache import JetCache
    from jetkd.models.lorentznet import PUBLISHED_HPARAMS, load_published
    from jetkd.rundir import OutputFolder
    from jetkd.train.checkpoint import save_atomic

    model = load_published(path)
    spec = {"name": "lorentznet", **PUBLISHED_HPARAMS}
    contract = training_contract(spec, model, JetCache(data.train), JetCache(data.val))
    contract = dataclasses.replace(contract, provenance={**contract.provenance, "published": str(path.resolve()),
                                                         "trained_on": "Top Quark Tagging Reference dataset"})
    with OutputFolder(out, ["best.pt"], "teacher", force=True):
        save_atomic({"jetkd_version": __version__, "config": {"model": spec, "published": str(path.resolve())},
                     "model": model.state_dict(), "contract": contract.to_dict(), "epoch": 0,
                     "best": {"metric": "published", "value": None, "epoch": None}}, out / "best.pt")
    return out / "best.pt"


class Stages:
    """``run_dir/stages.json``: per stage, the fingerprint of its resolved config and inputs, written when the
    stage starts. :meth:`decide` compares a stage's fingerprint with the stored one and says (and prints) what to
    do with its output: ``"new"`` (none yet), ``"reuse"`` (unchanged: reuse, or resume a killed training), or a
    reason to rerun (``"config changed: teacher.model.n_hidden 24 -> 48"``, ``"its teacher changed"``)."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / "stages.json"
        self.records = json.loads(self.path.read_text()) if self.path.exists() else {}

    @staticmethod
    def _hash(config: dict, inputs: dict) -> str:
        text = json.dumps({"config": config, "inputs": inputs}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def fingerprint(self, stage: str) -> str:
        """What stages downstream of ``stage`` record as their input: the identity of its output, new whenever the
        stage is (re)run, so that everything downstream reruns with it."""
        return self.records[stage]["output"]

    def decide(self, stage: str, config: dict, inputs: dict, output: Path, defaults: dict | None = None) -> str:
        """What to do with ``stage`` (see the class docstring); records the new fingerprint; a changed stage's
        previous ``output`` is left to the caller to move aside (trainers: ``force``; data: :meth:`replace`).
        ``defaults``: the config's default values; a key that a newer jetkd added since the stage was recorded
        counts as unchanged while it holds its default (an upgrade reruns nothing)."""
        fingerprint = self._hash(config, inputs)
        old = self.records.get(stage)
        if not output.exists():
            decision = "new"
        elif old is None:
            decision = "made before this pipeline recorded fingerprints"
        elif old["fingerprint"] == fingerprint or _only_new_defaults(old, config, inputs, defaults or {}):
            decision = "reuse"
        else:
            decision = _why(old, config, inputs)
        if decision not in ("new", "reuse"):
            print(f"== {stage}: {decision}: rerunning it (and what depends on it)", flush=True)
        made = {"of": fingerprint, "made": time.time_ns()}
        output_id = old["output"] if decision == "reuse" else self._hash(made, {})
        self.records[stage] = {"fingerprint": fingerprint, "output": output_id, "config": config, "inputs": inputs}
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(self.records, indent=1, sort_keys=True, default=str))
        os.replace(tmp, self.path)
        return decision

    @staticmethod
    def replace(output: Path) -> None:
        """Move a stage's previous ``output`` aside to ``<name>.replaced-<time>`` and say so."""
        moved = output.with_name(f"{output.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
        shutil.move(str(output), str(moved))
        print(f"   the previous {output.name} is now {moved}", flush=True)


def _only_new_defaults(old: dict, config: dict, inputs: dict, defaults: dict) -> bool:
    """Whether ``config`` differs from the recorded ``old`` one only in keys the record lacks that hold their
    ``defaults`` (flat keys), with the same inputs."""
    if old.get("inputs") != json.loads(json.dumps(inputs, default=str)):
        return False
    flat_old, flat_new = flat_keys(old.get("config", {})), flat_keys(config)
    changed = [k for k in flat_old.keys() | flat_new.keys() if flat_old.get(k) != flat_new.get(k)]
    return all(k not in flat_old and k in defaults and flat_new.get(k) == defaults[k] for k in changed)


def _why(old: dict, config: dict, inputs: dict) -> str:
    """Why a stage's fingerprint changed: the config keys (old -> new) or the inputs that differ."""
    flat_old, flat_new = flat_keys(old.get("config", {})), flat_keys(config)
    keys = sorted(k for k in flat_old.keys() | flat_new.keys() if flat_old.get(k) != flat_new.get(k))
    if keys:
        return "config changed: " + "; ".join(f"{k} {flat_old.get(k)!r} -> {flat_new.get(k)!r}" for k in keys[:6])
    changed = [k for k in inputs if old.get("inputs", {}).get(k) != inputs[k]]
    return "its " + " and ".join(changed or ["inputs"]) + (" changed" if len(changed) < 2 else " changed")


def _given_data(data: DataConfig) -> str:
    """The fingerprint of cache files given by the user: their paths, sizes and modification times (an image
    dataset: its folder's, its splits and options)."""
    if data.images:
        folder = Path(data.images)
        stat = folder.stat() if folder.exists() else None
        return Stages._hash({"images": str(folder.resolve()) if stat else data.images, "mtime": stat and stat.st_mtime_ns,
                             "splits": [data.train, data.val, data.test], "options": data.image_options}, {})
    files = {}
    for split in ("train", "val", "test"):
        path = Path(getattr(data, split))
        stat = path.stat() if path.exists() else None
        files[split] = [str(path.resolve()), stat.st_size if stat else None, stat.st_mtime_ns if stat else None]
    return Stages._hash(files, {})


def scan_name(axis) -> str:
    """What a boost-scan axis is called in folder names: "jet", "x", "y", "z", or its components "0.6_0.8_0"."""
    if axis == "jet":
        return "jet"
    named = {(1.0, 0.0, 0.0): "x", (0.0, 1.0, 0.0): "y", (0.0, 0.0, 1.0): "z"}
    return named.get(tuple(float(a) for a in axis), "_".join(f"{float(a):g}" for a in axis))


def with_unboosted_selection(checkpoints: dict[str, Path]) -> dict[str, Path]:
    """``checkpoints`` (report name -> run folder) with, after every run trained with boosted validation, its
    ``best_unboosted.pt`` (the best epoch on unboosted validation jets) as ``<name>_unboostedval``
    (``<student>_unboostedval_seed<N>`` for seeded runs)."""
    out = {}
    for name, folder in checkpoints.items():
        out[name] = folder
        extra = folder / "best_unboosted.pt"
        if extra.exists():
            base, sep, seed = name.rpartition("_seed")
            out[f"{base}_unboostedval{sep}{seed}" if sep and seed.isdigit() else f"{name}_unboostedval"] = extra
    return out


def evaluate_checkpoints(checkpoints: dict[str, str | Path] | list[str | Path], test: str | Path,
                         out_dir: str | Path, *, betas, axis, batch_size: int = 512, n_bootstrap: int | None = None,
                         progress: bool = True) -> Path:
    """Evaluate trained models on the test cache ``test`` and write ``report.json``, ``report.md`` and the plots
    into ``out_dir``; on the GPU when there is one.

    checkpoints: report name -> checkpoint or run folder, or a list of them, named by the shortest path suffixes
                 that tell them apart (:func:`jetkd.evaluate.run_labels`: ``seedA/mlp``, ``seedB/mlp``).
    n_bootstrap: bootstrap resamples of the test jets behind the intervals (default
                 :data:`jetkd.evaluate.N_BOOTSTRAP`; 0: none). progress: bars over models and boost points
                 (on terminals only).
    The report also names the test data (generator settings from the cache's provenance, class names from the
    cache, else from the checkpoints' contracts) and summarises runs whose stored configs differ only in
    ``train.seed`` as mean ± std over the seeds (:func:`jetkd.evaluate.summarise_seeds`).
    """
    from collections.abc import Mapping

    import torch
    from tqdm.auto import tqdm

    from jetkd.contract import cache_provenance
    from jetkd.data.cache import JetCache, decode_attrs
    from jetkd.data.loader import JetLoader
    from jetkd.evaluate import (
        N_BOOTSTRAP,
        UnreliableMetricWarning,
        describe_data,
        evaluate_model,
        run_labels,
        summarise_seeds,
        write_report,
    )
    from jetkd.train.checkpoint import load_checkpoint, load_model

    if not isinstance(checkpoints, Mapping):
        paths = [Path(p) for p in checkpoints]
        checkpoints = dict(zip(run_labels(paths), paths))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cache = JetCache(test).require_labels()
    batches = list(JetLoader(cache, batch_size, shuffle=False))
    data_classes = decode_attrs(cache.attrs).get("class_names")
    results, configs, model_classes = {}, {}, None
    bar = tqdm(checkpoints.items(), desc="evaluating", unit="model", disable=None if progress else True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnreliableMetricWarning)  # listed under "Warnings" in report.md
        for name, path in bar:
            bar.set_postfix_str(str(name))
            ckpt = load_checkpoint(path)
            entry = evaluate_model(load_model(path), batches, betas=np.asarray(betas), name=name,
                                   axis=axis if isinstance(axis, str) else tuple(axis),
                                   device=device, n_bootstrap=N_BOOTSTRAP if n_bootstrap is None else n_bootstrap,
                                   progress=progress)
            configs[name] = ckpt.get("config") or {}
            entry["checkpoint"] = str(path)
            entry["train_seed"] = (configs[name].get("train") or {}).get("seed")
            if configs[name].get("published"):
                entry["published"] = configs[name]["published"]
            summary = ckpt.get("deployed", {}).get("summary")
            if summary:  # e.g. CDD: size of the starting-width student against the deployed one
                entry["deploy"] = summary
            trained = (ckpt.get("contract") or {}).get("class_names")
            if trained and data_classes and list(trained) != list(data_classes):
                entry["warnings"].append(f"trained on classes {', '.join(map(str, trained))} but the test data has "
                                         f"{', '.join(map(str, data_classes))}")
            model_classes = model_classes or trained
            results[name] = entry
            if progress and not sys.stderr.isatty():  # batch logs: one line per model instead of the bar
                m = entry["metrics"]
                print(f"evaluated {name} ({len(results)}/{len(checkpoints)}): accuracy {m['accuracy']:.4f}, AUC "
                      f"{m['auc']:.4f}", flush=True)
    data = describe_data(cache_provenance(cache), data_classes or model_classes, source=test)
    write_report(out_dir, results, data=data, summary=summarise_seeds(results, configs))
    return Path(out_dir)


def _make_data(pipe: Pipeline, run_dir: Path, stages: Stages) -> str:
    """Generate and convert (each only when its fingerprint changed); returns the cache's fingerprint."""
    from data_prep.convert import convert
    from data_prep.generate import generate

    gen, conv = pipe.generate, pipe.convert
    root = run_dir / "jets.root"
    decision = stages.decide("generate", to_dict(gen), {}, root, defaults=flat_keys(to_dict(type(gen)())))
    if decision != "reuse":
        if root.exists():
            Stages.replace(root)
        _stage(f"generating {gen.jets} jets")
        generate(root, n_jets=gen.jets, seed=gen.seed, workers=gen.workers or None, massless=gen.massless)
    cache = run_dir / "cache"
    decision = stages.decide("convert", to_dict(conv), {"jets": stages.fingerprint("generate")}, cache,
                             defaults=flat_keys(to_dict(type(conv)())))
    data = _data_paths(pipe, run_dir)
    if decision != "reuse" or not all(Path(path).exists() for path in (data.train, data.val, data.test)):
        if cache.exists():
            Stages.replace(cache)
        _stage("converting into the training cache")
        convert([root], cache, split=conv.split, max_particles=conv.max_particles, seed=conv.seed)
    return stages.fingerprint("convert")


def _finished(job_dir: Path, epochs: int) -> bool:
    metrics = job_dir / "metrics.jsonl"
    if not (job_dir / "best.pt").exists() or not metrics.exists():
        return False
    lines = metrics.read_text().splitlines()
    return bool(lines) and int(json.loads(lines[-1])["epoch"]) >= epochs


def _stage(text: str) -> None:
    print(f"\n== {text}", flush=True)
