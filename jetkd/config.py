"""Experiment configuration: YAML validated into dataclasses, with ``key.sub=value`` overrides.

An unknown or mistyped key, a value of the wrong type or out of its bounds is an :class:`InputError` naming the
key, the value and where it came from, before any work: the file that set it (in an ``extends:`` chain, the
one that did) or ``command line`` for an override (``command line: train.batch_size: expected an integer >= 1,
got 0``). :class:`Origins` keeps the files and the overrides apart for that; the bounds are :data:`JOB_CHECKS`
(and :data:`PIPELINE_CHECKS` for ``jetkd run``'s own sections). Model sections are checked against the model's
constructor, the representation-distillation options by their methods.

One training job is a :class:`TrainJob`::

    run_dir: runs/mlp_kd
    data:     {train: cache/train.h5, val: cache/val.h5, test: cache/test.h5}
    model:    {name: mlp, hidden: [512, 512]}          # other keys: the model's constructor arguments
    train:    {epochs: 100, batch_size: 64, seed: 1}
    optim:    {lr: 2.0e-4, weight_decay: 0.01, amsgrad: true}
    schedule: {name: step, step_epochs: 10, gamma: 0.7}
    distill:  {method: kd, teacher: runs/teacher/best.pt, temperature: 3, alpha: 0.7}
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.resources
import inspect
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from jetkd.distill.registry import METHODS
from jetkd.errors import InputError


@dataclass
class DataConfig:
    """Jets: cache files (``jetkd convert`` output). Images: ``images`` names the dataset (its folder as distributed,
    or ``digits``; :func:`jetkd.images.read_images`) and train/val/test name its splits (default train, test,
    test: the image benchmarks validate on their test split, as the papers do)."""

    train: str = ""
    val: str = ""
    test: str = ""
    in_memory: bool = True  # jets: False streams blocks from disk (datasets larger than RAM)
    images: str = ""  # an image dataset instead of jet caches
    image_options: dict = field(default_factory=dict)  # read_images options, e.g. {labels: coarse}, {size: [128, 128]}
    identities_per_batch: int = 0  # re-identification: P identities x K = batch_size / P images per batch (0: off)


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64  # per process; the global batch is batch_size * world_size
    seed: int = 1
    grad_clip: float = 0.0  # max gradient norm, 0 = off
    amp: bool = True  # bf16 autocast on CUDA; ignored on CPU
    select_by: str = "val_acc"  # val_acc | val_auc | val_loss: which epoch becomes best.pt
    checkpoint_every: int = 0  # steps between mid-epoch `last` checkpoints (0: end of epoch only)
    boost_beta_max: float = 0.0  # augmentation: boost every jet by beta ~ U[0, beta_max) along boost_axis
    boost_axis: list[float] = field(default_factory=lambda: [1.0, 0.0, 0.0])
    boost_validation: bool = False  # validate on jets boosted like the training jets (fixed seed), not unboosted
    # > 0: draw K boosted copies of every training jet once (the same for every seed) and train on one of them per
    # epoch, picked by (seed, epoch, step); a teacher then runs K times over the training set instead of every step
    boost_bank: int = 0
    eval_batch_size: int = 512
    bucket_by_length: int = 0  # length bucketing, batches per sorting window (0 = off; jetkd.data.loader.bucket_order)


@dataclass
class OptimConfig:
    """AdamW (the jet studies), or SGD with momentum (the image benchmarks' recipes: CRD/NORM on CIFAR use SGD,
    momentum 0.9, weight decay 5e-4)."""

    name: str = "adamw"  # adamw | sgd
    lr: float = 1e-3
    weight_decay: float = 0.01
    amsgrad: bool = False  # adamw
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adamw
    eps: float = 1e-8  # adamw
    momentum: float = 0.9  # sgd
    nesterov: bool = False  # sgd


@dataclass
class ScheduleConfig:
    """Learning-rate schedule: linear warm-up, then cosine decay to zero, step decay, or constant."""

    name: str = "cosine"  # cosine | step | constant
    warmup_epochs: float = 0.0
    warmup_steps: int = 0  # > 0: the warm-up in optimiser steps instead (KD4Jets: 1000)
    step_epochs: int = 10  # step: multiply by gamma every step_epochs epochs ...
    gamma: float = 0.7
    milestones: list[float] = field(default_factory=list)  # ... or at these epochs (CIFAR recipes: 150, 180, 210)


def _distill_config() -> type:
    """:class:`DistillConfig`, one ``distill.<name>`` section per registered method with options
    (:mod:`jetkd.distill.registry`)."""
    sections = [(e.name, e.options, field(default_factory=e.options)) for e in METHODS.values() if e.options]
    cls = dataclasses.make_dataclass("DistillConfig", [
        ("method", str, field(default="none")),  # a name in jetkd.distill.registry.METHODS
        ("teacher", str, field(default="")),  # teacher checkpoint (best.pt of a teacher run)
        ("temperature", float, field(default=1.0)),  # of every KD term on logits
        ("alpha", float, field(default=0.5)),  # kd: weight of the distillation term, (1 - alpha) CE + alpha T^2 KL
        *sections,
    ])
    cls.__module__ = __name__
    cls.__doc__ = ("Which method (jetkd.distill.registry), its teacher, the KD temperature and alpha, and one section "
                   "of options per representation method.")
    return cls


DistillConfig = _distill_config()


@dataclass
class TrainJob:
    run_dir: str = "runs/job"
    data: DataConfig = field(default_factory=DataConfig)
    model: dict = field(default_factory=lambda: {"name": "deepset"})
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)


COMMAND_LINE = "command line"  # the origin of ``key.sub=value`` overrides in error messages


# ----------------------------------------------------------------------------- where values came from


@dataclass
class Origins:
    """Where each key of a config was set, so that an error can name the file or the command line.

    ``layers`` are the raw mappings the config was merged from, lowest priority first, each with the name of its
    source: the files of an ``extends:`` chain (base first), then the command-line overrides. A key's origin is
    the last layer that sets it. ``scopes`` are the prefixes under which the keys of a job nested in a pipeline
    were written, in order of priority (``students.mlp.``, then ``student_defaults.``); ``fallback`` names the
    source of values that no layer sets.
    """

    layers: list[tuple[str, dict]] = field(default_factory=list)
    fallback: str = "config"
    scopes: tuple[str, ...] = ("",)

    def blame(self, key: str) -> tuple[str, str]:
        """``(origin, key as written there)`` for dotted ``key`` (``train.boost_axis[1]`` names a list element);
        a key that no layer sets is blamed on the innermost enclosing section that one sets."""
        parts = re.sub(r"\[\d+\]", "", key).split(".")
        for n in range(len(parts), 0, -1):
            for scope in self.scopes:
                for name, layer in reversed(self.layers):
                    if _sets(layer, scope + ".".join(parts[:n])):
                        return name, scope + key
        return self.fallback, self.scopes[0] + key

    def scoped(self, *scopes: str) -> Origins:
        """The same layers, for the keys of a job written under ``scopes`` (``"students.mlp."``)."""
        return dataclasses.replace(self, scopes=scopes)


def _sets(layer: dict, dotted: str) -> bool:
    """Whether mapping ``layer`` holds the dotted key."""
    node = layer
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def config_error(where: str | Origins, key: str, what: str) -> InputError:
    """The one-line :class:`InputError` for ``key``, blamed on its origin (``where``: Origins or a source name)."""
    origins = where if isinstance(where, Origins) else Origins(fallback=where or "config")
    origin, shown = origins.blame(key)
    return InputError(origin, f"{shown}: {what}")


# ----------------------------------------------------------------------------- dict <-> dataclass


def from_dict(cls, data: dict, where: str | Origins = "", prefix: str = ""):
    """Build dataclass ``cls`` from ``data``, recursively; unknown keys and wrong types (of list elements too)
    are InputErrors, blamed through ``where`` (the :class:`Origins` of ``data``, or the name of its source)."""
    if not isinstance(data, dict):
        raise config_error(where, prefix.rstrip(".") or "config", f"expected a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if key not in fields:
            raise config_error(where, name, f"unknown key; expected one of {', '.join(fields)}")
        kwargs[key] = _coerce(hints[key], value, where, name)
    return cls(**kwargs)


def _coerce(hint, value, where: str | Origins, name: str):
    """``value`` as type ``hint`` (ints to floats, each element of a ``list[float]``), or an InputError."""
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where, f"{name}.")
    origin = typing.get_origin(hint) or hint
    if origin in (types.UnionType, typing.Union):
        return value
    if origin is float and isinstance(value, str):
        value = _yaml11_float(value)
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
        list: isinstance(value, (list, tuple)),
        dict: isinstance(value, dict),
    }.get(origin, True)
    if not ok:
        raise config_error(where, name, f"expected {getattr(origin, '__name__', origin)}, got {value!r}")
    if origin is list:
        item = (typing.get_args(hint) or (Any,))[0]
        return [_coerce(item, element, where, f"{name}[{i}]") for i, element in enumerate(value)]
    return float(value) if origin is float else value


def _yaml11_float(text: str):
    """YAML 1.1 reads ``1e-3`` (no dot) as a string; physicists write it anyway."""
    try:
        return float(text)
    except ValueError:
        return text


def to_dict(obj) -> dict:
    return dataclasses.asdict(obj)


# ----------------------------------------------------------------------------- bounds of values


class Invalid(Exception):
    """A value out of its bounds: ``what`` is wrong, ``at`` the element it is in (``[1]``, ``.train``) if any."""

    def __init__(self, what: str, at: str = ""):
        super().__init__(what)
        self.what, self.at = what, at


Check = Callable[[Any], None]  # raises Invalid


def _is_number(value) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def bounded(low: float, high: float = math.inf, *, above: bool = False, below: bool = False,
            integer: bool = False) -> Check:
    """A finite number (an integer if ``integer``) >= ``low`` (> if ``above``), <= ``high`` (< if ``below``)."""
    kind = "an integer" if integer else "a number"
    if high == math.inf:
        expected = f"{kind} {'>' if above else '>='} {low:g}"
    else:
        expected = f"{kind} in {'(' if above else '['}{low:g}, {high:g}{')' if below else ']'}"

    def check(value) -> None:
        ok = _is_number(value) and (isinstance(value, int) or not integer)
        if not (ok and (value > low if above else value >= low) and (value < high if below else value <= high)):
            raise Invalid(f"expected {expected}, got {value!r}")

    return check


def each(check: Check, *, count: int | None = None, expected: str = "a non-empty list") -> Check:
    """Every element of a list passes ``check``; the list has ``count`` elements (at least one if None)."""

    def run(values) -> None:
        if (len(values) != count) if count is not None else not values:
            raise Invalid(f"expected {expected}, got {values!r}")
        for i, value in enumerate(values):
            try:
                check(value)
            except Invalid as bad:
                raise Invalid(bad.what, f"[{i}]{bad.at}") from None

    return run


def one_of(*choices: str) -> Check:
    """One of the ``choices``."""

    def check(value) -> None:
        if value not in choices:
            raise Invalid(f"{value!r} is not one of {', '.join(choices)}")

    return check


def three_vector(value) -> None:
    """A boost axis: three finite numbers, not all zero."""
    if not (len(value) == 3 and all(_is_number(v) for v in value) and any(v != 0 for v in value)):
        raise Invalid(f"expected a non-zero three-vector [x, y, z], got {value!r}")


def scan_axes(values) -> None:
    """Further boost-scan axes: a list of three-vectors or "jet" (each jet along its own axis); may be empty."""
    for i, value in enumerate(values):
        if value == "jet":
            continue
        try:
            three_vector(value if isinstance(value, list) else [])
        except Invalid:
            raise Invalid(f"expected a non-zero three-vector [x, y, z] or 'jet', got {value!r}", f"[{i}]") from None


def run_folder(value: str) -> None:
    """A folder to write into: named, and not an existing file."""
    if not value:
        raise Invalid("expected a folder, got ''")
    if Path(value).is_file():
        raise Invalid(f"expected a folder, got the existing file {value!r}")


def split_fractions(value: dict) -> None:
    """``convert.split``: fractions > 0 for train, val and test (other splits allowed) that sum to 1."""
    if not all(name in value for name in ("train", "val", "test")):
        raise Invalid(f"expected fractions for train, val and test, got {value!r}")
    for name, fraction in value.items():
        if not (_is_number(fraction) and fraction > 0):
            raise Invalid(f"expected a number > 0, got {fraction!r}", f".{name}")
    if not math.isclose(sum(value.values()), 1.0, abs_tol=1e-6):
        raise Invalid(f"expected fractions that sum to 1, got {sum(value.values()):g} from {value!r}")


def seed_list(value) -> None:
    """A pipeline's ``seeds``: distinct integers >= 0 (may be empty: train once, with each job's train.seed)."""
    for i, seed in enumerate(value):
        if not (isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0):
            raise Invalid(f"expected an integer >= 0, got {seed!r}", f"[{i}]")
    if len(set(value)) != len(value):
        raise Invalid(f"expected distinct seeds, got {value!r}")


COUNT, NATURAL = bounded(1, integer=True), bounded(0, integer=True)  # >= 1, >= 0 (seeds, optional counts)
POSITIVE, NON_NEGATIVE = bounded(0, above=True), bounded(0)
FRACTION, BETA = bounded(0, 1), bounded(0, 1, below=True)  # a weight in [0, 1]; v/c of a boost (or Adam's beta)

#: Bounds of a :class:`TrainJob`'s values, by dotted key (checked by :func:`load_job`). The options of the
#: representation-distillation methods are checked by their methods; only what those leave open is here.
JOB_CHECKS: dict[str, Check] = {
    "run_dir": run_folder,
    "train.epochs": COUNT,
    "train.batch_size": COUNT,
    "train.eval_batch_size": COUNT,
    "train.seed": NATURAL,
    "data.identities_per_batch": NATURAL,
    "train.grad_clip": NON_NEGATIVE,
    "train.checkpoint_every": NATURAL,
    "train.bucket_by_length": NATURAL,
    "train.boost_bank": NATURAL,
    "train.select_by": one_of("val_acc", "val_auc", "val_loss"),
    "train.boost_beta_max": BETA,
    "train.boost_axis": three_vector,
    "optim.name": one_of("adamw", "sgd"),
    "optim.lr": POSITIVE,
    "optim.momentum": bounded(0, 1, below=True),
    "schedule.milestones": lambda values: [NON_NEGATIVE(v) for v in values],
    "optim.weight_decay": NON_NEGATIVE,
    "optim.betas": each(BETA, count=2, expected="two numbers in [0, 1)"),
    "optim.eps": POSITIVE,
    "schedule.name": one_of("cosine", "step", "constant"),
    "schedule.warmup_epochs": NON_NEGATIVE,
    "schedule.warmup_steps": NATURAL,
    "schedule.step_epochs": COUNT,
    "schedule.gamma": POSITIVE,
    "distill.method": one_of(*METHODS),
    "distill.temperature": POSITIVE,
    "distill.alpha": FRACTION,
    "distill.cdd.compactor_lr_scale": POSITIVE,
    "distill.curriculum.seed": NATURAL,
}

#: Bounds of the sections of a ``jetkd run`` pipeline (:mod:`jetkd.pipeline`) besides its jobs.
PIPELINE_CHECKS: dict[str, Check] = {
    "run_dir": run_folder,
    "generate.jets": COUNT,
    "generate.seed": NATURAL,
    "generate.workers": NATURAL,
    "convert.max_particles": COUNT,
    "convert.seed": NATURAL,
    "convert.split": split_fractions,
    "evaluate.betas": each(BETA, expected="a non-empty list of numbers in [0, 1)"),
    "evaluate.axis": three_vector,
    "evaluate.also_axes": scan_axes,
    "evaluate.batch_size": COUNT,
    "seeds": lambda seeds: seed_list(seeds),
}


def check_values(obj, checks: dict[str, Check], where: str | Origins) -> None:
    """Every dotted key of ``checks`` in dataclass ``obj`` passes its check (keys in absent sections are
    skipped); else the InputError naming the key, the value and its origin."""
    for key, check in checks.items():
        value = obj
        for part in key.split("."):
            value = None if value is None else getattr(value, part)  # a misspelt key in `checks` is an AttributeError
        if value is None:
            continue
        try:
            check(value)
        except Invalid as bad:
            raise config_error(where, key + bad.at, bad.what) from None


# ----------------------------------------------------------------------------- files and overrides


def read_yaml(path) -> dict:
    """A config file as a dict. ``extends: other.yaml`` (relative to this file) starts from that file's content."""
    return merge_layers(read_layers(path))


def read_layers(path, _chain: tuple = ()) -> list[tuple[str, dict]]:
    """A config file and the files it ``extends:`` (relative to it), base first, as ``(file, its own mapping)``
    pairs (:func:`merge_layers` merges them; :class:`Origins` blames keys on them). ``path`` is a path or an
    importlib.resources file; a cycle of ``extends:`` is an InputError."""
    path = Path(path) if isinstance(path, (str, os.PathLike)) else path
    data = _read_mapping(path)
    if "extends" not in data:
        return [(str(path), data)]
    base = data.pop("extends")
    if not isinstance(base, str) or not base:
        raise InputError(str(path), f"extends: expected a config file name, got {base!r}")
    chain, target = (*_chain, path), path.parent / base
    if isinstance(target, Path):
        target = Path(os.path.normpath(target))  # sub/../base.yaml is named base.yaml in messages
    if any(_same_file(target, seen) for seen in chain):
        cycle = " -> ".join(p.name for p in (*chain, target))
        raise InputError(str(path), f"extends: {base}: the config files extend each other in a cycle ({cycle})")
    if not target.is_file():
        raise InputError(str(path), f"extends: {base}: no such config file")
    return [*read_layers(target, chain), (str(path), data)]


def _read_mapping(path) -> dict:
    """The mapping one YAML file holds (``extends`` included), or an InputError naming the file."""
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise InputError(str(path), "no such config file") from None
    except IsADirectoryError:
        raise InputError(str(path), "is a folder; expected a config file") from None
    except yaml.YAMLError as err:
        raise InputError(str(path), f"not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise InputError(str(path), "a config file must hold a mapping of sections")
    return data


def _same_file(a, b) -> bool:
    """Whether two config paths (or importlib.resources files) name the same file."""
    if isinstance(a, Path) and isinstance(b, Path):
        return a.resolve() == b.resolve()
    return str(a) == str(b)


def merge_layers(layers: list[tuple[str, dict]]) -> dict:
    """The mappings of ``layers`` merged in order (later ones win), none of them modified."""
    out: dict = {}
    for _, data in layers:
        out = merge(out, data)
    return copy.deepcopy(out)


def read_config(path, overrides: list[str] = ()) -> tuple[dict, Origins]:
    """A config file (with its ``extends:`` chain) plus command-line ``overrides``, and the Origins of its keys."""
    layers = read_layers(path)
    data = apply_overrides(merge_layers(layers), list(overrides))
    return data, Origins([*layers, (COMMAND_LINE, apply_overrides({}, list(overrides)))], fallback=str(path))


def apply_overrides(data: dict, overrides: list[str], where: str = COMMAND_LINE) -> dict:
    """Apply ``key.sub=value`` overrides (values parsed as YAML: ``3``, ``1e-3``, ``[1, 0, 0]``, ``true``)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise InputError(where, f"override {item!r}: expected key.sub=value")
        node = data
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise InputError(where, f"override {item!r}: {part} is not a section")
        try:
            node[last] = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise InputError(where, f"override {item!r}: not a valid YAML value ({str(err).splitlines()[0]})") from None
    return data


def merge(base: dict, update: dict) -> dict:
    """Recursive dict merge: ``update`` wins; neither input is modified."""
    out = dict(base)
    for key, value in update.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_job(path: str | Path | None = None, overrides: list[str] = (), data: dict | None = None,
             where: str | Origins | None = None) -> TrainJob:
    """A :class:`TrainJob` from a YAML file and/or an already-read ``data`` dict (merged over the file), plus
    command-line overrides, validated before any work (types, :data:`JOB_CHECKS`, the model's arguments).
    Errors name the file or override that set the key; ``where`` names ``data``'s source (default ``config``),
    or is the :class:`Origins` of ``data`` (a pipeline's job, whose keys were written in the pipeline's files)."""
    source = where if isinstance(where, str) else "config"
    layers = [*(read_layers(path) if path else []), *([(source, data)] if data else [])]
    merged = apply_overrides(merge_layers(layers), list(overrides))
    origins = where if isinstance(where, Origins) else Origins(
        [*layers, (COMMAND_LINE, apply_overrides({}, list(overrides)))], fallback=str(path) if path else source)
    job = from_dict(TrainJob, merged, origins)
    check_model_args(job.model, origins)
    check_values(job, JOB_CHECKS, origins)
    if job.train.boost_bank and job.train.boost_beta_max <= 0:
        raise config_error(origins, "train.boost_bank", "boosted copies need train.boost_beta_max > 0; expected 0 "
                                                        f"without boosts, got {job.train.boost_bank}")
    if job.data.images and job.train.boost_beta_max > 0:
        raise config_error(origins, "train.boost_beta_max", "boosts act on jets; expected 0 with data.images")
    return job


def check_model_args(model: dict, where: str | Origins) -> None:
    """``model.name`` must be a known model and every other key one of its constructor arguments."""
    from jetkd.models import MODELS

    name = model.get("name")
    if not isinstance(name, str) or name not in MODELS:
        raise config_error(where, "model.name", f"{name!r} is not one of {', '.join(MODELS)}")
    params = inspect.signature(MODELS[name]).parameters
    for key in model:
        if key != "name" and key not in params:
            raise config_error(where, f"model.{key}",
                               f"unknown argument of {name}; expected one of {', '.join(params)}")


def shipped_config(name: str):
    """A config shipped with jetkd (``quickstart.yaml``): package data of ``jetkd.configs``, which is the
    repository's ``configs/`` folder mapped into the package (pyproject.toml), read with importlib.resources so
    that wheels and editable installs alike find it; a source tree that was never installed reads ``configs/``."""
    try:
        folder = importlib.resources.files("jetkd.configs")
    except ModuleNotFoundError:
        folder = Path(__file__).resolve().parents[1] / "configs"
    return folder / name


def flat_keys(config: dict, prefix: str = "") -> dict:
    """``{"train": {"epochs": 3}}`` -> ``{"train.epochs": 3}`` (nested sections, model arguments included)."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(flat_keys(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def jsonable(value: Any) -> Any:
    """Config values as plain JSON/YAML types (tuples to lists, paths to strings)."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return str(value) if isinstance(value, Path) else value
