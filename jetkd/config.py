"""Experiment configuration: YAML validated into dataclasses, with ``key.sub=value`` overrides.

An unknown or mistyped key is an :class:`InputError` naming it (``config.yaml: train.epocs: unknown key;
expected one of ...``). Model sections are checked against the model's constructor.

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

import dataclasses
import inspect
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from jetkd.distill.options import CDDOptions, CurriculumOptions, FitNetsOptions, NormOptions
from jetkd.errors import InputError


@dataclass
class DataConfig:
    """Cache files (``jetkd convert`` output)."""

    train: str = ""
    val: str = ""
    test: str = ""
    in_memory: bool = True  # False: stream blocks from disk (datasets larger than RAM)


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
    eval_batch_size: int = 512


@dataclass
class OptimConfig:
    """AdamW."""

    lr: float = 1e-3
    weight_decay: float = 0.01
    amsgrad: bool = False
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8


@dataclass
class ScheduleConfig:
    """Learning-rate schedule: linear warm-up, then cosine decay to zero, step decay, or constant."""

    name: str = "cosine"  # cosine | step | constant
    warmup_epochs: float = 0.0
    step_epochs: int = 10  # step: multiply by gamma every step_epochs epochs
    gamma: float = 0.7


@dataclass
class DistillConfig:
    """Which method (:mod:`jetkd.distill`), its teacher, and the options of the representation methods."""

    method: str = "none"  # none | kd | fitnets | norm | cdd | curriculum
    teacher: str = ""  # teacher checkpoint (best.pt of a teacher run)
    temperature: float = 1.0  # of every KD term on logits
    alpha: float = 0.5  # kd: weight of the distillation term, (1 - alpha) CE + alpha T^2 KL
    fitnets: FitNetsOptions = field(default_factory=FitNetsOptions)
    norm: NormOptions = field(default_factory=NormOptions)
    cdd: CDDOptions = field(default_factory=CDDOptions)
    curriculum: CurriculumOptions = field(default_factory=CurriculumOptions)


@dataclass
class TrainJob:
    run_dir: str = "runs/job"
    data: DataConfig = field(default_factory=DataConfig)
    model: dict = field(default_factory=lambda: {"name": "deepset"})
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)


CHOICES = {
    "train.select_by": ("val_acc", "val_auc", "val_loss"),
    "schedule.name": ("cosine", "step", "constant"),
    "distill.method": ("none", "kd", "fitnets", "norm", "cdd", "curriculum"),
}


# ----------------------------------------------------------------------------- dict <-> dataclass


def from_dict(cls, data: dict, where: str = "", prefix: str = ""):
    """Build dataclass ``cls`` from ``data``, recursively; unknown keys and wrong types are InputErrors."""
    if not isinstance(data, dict):
        raise InputError(where, f"{prefix or 'config'}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if key not in fields:
            raise InputError(where, f"{name}: unknown key; expected one of {', '.join(fields)}")
        kwargs[key] = _coerce(hints[key], value, where, name)
    obj = cls(**kwargs)
    for name, choices in CHOICES.items():
        section, _, key = name.partition(".")
        if cls is TrainJob and getattr(getattr(obj, section), key) not in choices:
            raise InputError(where, f"{name}: {getattr(getattr(obj, section), key)!r} is not one of {', '.join(choices)}")
    return obj


def _coerce(hint, value, where: str, name: str):
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
        raise InputError(where, f"{name}: expected {getattr(origin, '__name__', origin)}, got {value!r}")
    return float(value) if origin is float else list(value) if origin is list else value


def _yaml11_float(text: str):
    """YAML 1.1 reads ``1e-3`` (no dot) as a string; physicists write it anyway."""
    try:
        return float(text)
    except ValueError:
        return text


def to_dict(obj) -> dict:
    return dataclasses.asdict(obj)


# ----------------------------------------------------------------------------- files and overrides


def read_yaml(path: str | Path) -> dict:
    """A config file as a dict. ``extends: other.yaml`` (relative to this file) starts from that file's content."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise InputError(str(path), "no such config file") from None
    except yaml.YAMLError as err:
        raise InputError(str(path), f"not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise InputError(str(path), "a config file must hold a mapping of sections")
    if "extends" in data:
        data = merge(read_yaml(path.parent / data.pop("extends")), data)
    return data


def apply_overrides(data: dict, overrides: list[str], where: str = "command line") -> dict:
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
        node[last] = yaml.safe_load(raw)
    return data


def merge(base: dict, update: dict) -> dict:
    """Recursive dict merge: ``update`` wins; neither input is modified."""
    out = dict(base)
    for key, value in update.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_job(path: str | Path | None = None, overrides: list[str] = (), data: dict | None = None,
             where: str | None = None) -> TrainJob:
    """A :class:`TrainJob` from a YAML file (or an already-read ``data`` dict) plus overrides, validated.
    ``where`` names the source in error messages (default: the file)."""
    where = where or (str(path) if path else "config")
    data = apply_overrides(merge(read_yaml(path) if path else {}, data or {}), list(overrides), where)
    job = from_dict(TrainJob, data, where)
    check_model_args(job.model, where)
    return job


def check_model_args(model: dict, where: str) -> None:
    """``model.name`` must be a known model and every other key one of its constructor arguments."""
    from jetkd.models import MODELS

    name = model.get("name")
    if name not in MODELS:
        raise InputError(where, f"model.name: {name!r} is not one of {', '.join(MODELS)}")
    params = inspect.signature(MODELS[name]).parameters
    for key in model:
        if key != "name" and key not in params:
            raise InputError(where, f"model.{key}: unknown argument of {name}; expected one of {', '.join(params)}")


def jsonable(value: Any) -> Any:
    """Config values as plain JSON/YAML types (tuples to lists, paths to strings)."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return str(value) if isinstance(value, Path) else value
