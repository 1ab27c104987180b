"""Sparse parity: the benchmark on which Gupta & Karmalkar 2025 (curriculum extraction, arXiv:2503.17494) and
Panigrahi et al. 2024 (progressive distillation) show their sample-complexity gains, run with the jet methods'
own :class:`jetkd.distill.Method` classes, unchanged.

The task
--------
``(n, k)`` sparse parity: inputs are ``n`` uniform random bits written as ``x in {-1, +1}^n`` (float32, (B, n));
the label is the parity of a fixed hidden subset ``S`` of ``k`` coordinates, as classes 0/1: ``y = 1`` when the
product of the bits in ``S`` is ``-1`` (an odd number of them are ``-1``), else ``y = 0``. ``S`` is drawn from the
task seed (:class:`SparseParity`). Samples come from seeded streams (:class:`BitStream`): the same seed gives the
same batches in the same order, so runs that draw the same number of batches see the same samples.

Models
------
:class:`TwoLayerMLP`: ``hidden = Sequential(Linear(n, width), ReLU)`` (a tap, ``(B, width)``) and
``classifier = Linear(width, 2)``; ``model(x) -> (B, 2)`` logits. Teacher and student have this shape.

Training
--------
Everything is *online*, as in the parity literature: every optimiser step draws a fresh batch, so samples seen
= steps x batch size; a fixed held-out set (:func:`held_out_set`) gives the test accuracy every ``eval_every`` steps.
The learning rate is constant (no schedule, no warm-up).

- :func:`train_teacher`: the teacher on the labels (cross-entropy) for a fixed number of steps (trained on well
  past the point where it first fits the task: a *converged* teacher), keeping a copy of itself at the first
  evaluation that reaches ``snapshot_at`` (an *early* teacher).
- :func:`distill`: a student of the teacher's shape trained with a Method built by :func:`build_method` (from a
  :class:`jetkd.config.DistillConfig` through :func:`jetkd.distill.build_method`: ``none``, ``kd``,
  ``curriculum``), driven as :class:`jetkd.train.loop.Trainer` drives it (``_setup_method``, ``train_step``,
  ``DistillStep``): tap recorders on the method's ``student_taps`` / ``teacher_taps``; ``method.setup`` once on
  the taps of a sample batch (models in eval mode, no gradient); one optimiser over the student's and the
  method's parameters (the curriculum heads); then per step ``set_progress(step / steps_per_epoch, lr)``, the
  teacher's logits and taps under ``no_grad``, the student's forward inside its recorder,
  ``method.loss(StepOutputs(...))``, ``zero_grad``, ``backward``, ``after_backward``, a finiteness check, the
  optimiser step, ``after_step``.

*Epochs*: there is no finite training set, so an epoch here is defined as ``Settings.steps_per_epoch`` optimiser
steps (100 by default); a method's phase schedule (curriculum ``phase_epochs``) counts in these epochs: with
100 steps per epoch, ``phase_epochs: [5]`` is an extraction phase of 500 steps, then KD to the end.

Seeds
-----
One integer ``seed`` per repetition; every random choice derives from it through :func:`derive_seed` with a
purpose (``teacher init``, ``teacher data``, ``student init``, ``student data``, ``test``), so streams never
share a seed. Student runs with the same seed and :class:`Settings` start from the same weights and see the
same samples in the same order, whatever the method: equal samples and steps.

    task = SparseParity(n=100, k=4, seed=0)
    test = held_out_set(task, 4096, seed=0)
    teacher = train_teacher(task, 512, Settings(steps=30000, optimizer="sgd", lr=0.05), test, seed=0)
    method = build_method("curriculum", dim=32, phase_epochs=[5], seed=0)
    curve = distill(task, teacher.model, method, Settings(steps=4000), test, seed=0)
    curve.steps_to(0.99), curve.final_accuracy
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from jetkd.distill import Method, StepOutputs, Tap, TapRecorder
from jetkd.errors import InputError

TAP = "hidden"  # the tap of teacher and student alike: first layer + ReLU, (B, width)
SETUP_SEED = 2**31 - 1  # data seed of the sample batch that method set-up looks at (shapes only, never trained on)
PURPOSES = ("teacher init", "teacher data", "student init", "student data", "test")


def derive_seed(seed: int, purpose: str) -> int:
    """A 63-bit seed for one ``purpose`` (:data:`PURPOSES`) of repetition ``seed``, from ``numpy.random.SeedSequence``:
    distinct purposes give unrelated streams."""
    if purpose not in PURPOSES:
        raise ValueError(f"unknown seed purpose {purpose!r}; expected one of {PURPOSES}")
    state = np.random.SeedSequence([seed, PURPOSES.index(purpose)]).generate_state(2, np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


# ----------------------------------------------------------------------------- data


@dataclass(frozen=True)
class SparseParity:
    """The ``(n, k)`` sparse parity task. ``subset``: ``S``, ``k`` distinct sorted indices in ``[0, n)``, the first
    ``k`` entries of a permutation drawn from ``torch.Generator().manual_seed(seed)``."""

    n: int
    k: int
    seed: int = 0

    def __post_init__(self):
        if not 1 <= self.k <= self.n:
            raise InputError("parity", f"need 1 <= k <= n, got n={self.n}, k={self.k}")

    @property
    def subset(self) -> tuple[int, ...]:
        g = torch.Generator().manual_seed(self.seed)
        return tuple(sorted(torch.randperm(self.n, generator=g)[: self.k].tolist()))

    def label(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, n) in {-1, +1} -> (B,) int64: 1 where the product of the bits in ``S`` is -1, else 0."""
        return (x[:, list(self.subset)].prod(dim=1) < 0).long()


class BitStream:
    """Fresh uniform samples of ``task`` from a seeded generator. ``next_batch(B)`` -> x (B, n) float32 in
    {-1, +1}, y (B,) int64; two streams of the same task and seed give identical batches in the same order.
    ``samples``: how many have been drawn."""

    def __init__(self, task: SparseParity, seed: int):
        self.task = task
        self.generator = torch.Generator().manual_seed(seed)
        self.samples = 0

    def next_batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        bits = torch.randint(0, 2, (batch_size, self.task.n), generator=self.generator)
        x = (2 * bits - 1).float()
        self.samples += batch_size
        return x, self.task.label(x)


def held_out_set(task: SparseParity, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed held-out set of repetition ``seed``: x (size, n) float32, y (size,) int64, from the ``test`` stream
    (:func:`derive_seed`), which no training stream uses."""
    return BitStream(task, derive_seed(seed, "test")).next_batch(size)


# ----------------------------------------------------------------------------- models


class TwoLayerMLP(nn.Module):
    """``hidden = Sequential(Linear(n, width), ReLU)`` -> ``classifier = Linear(width, 2)``; x (B, n) -> (B, 2)."""

    def __init__(self, n: int, width: int):
        super().__init__()
        self.hidden = nn.Sequential(nn.Linear(n, width), nn.ReLU())
        self.classifier = nn.Linear(width, 2)
        self.n_class = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.hidden(x))


def make_mlp(n: int, width: int, seed: int) -> TwoLayerMLP:
    """A :class:`TwoLayerMLP` with PyTorch's default initialisation drawn from ``seed``; the global RNG is left
    as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TwoLayerMLP(n, width)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 8192) -> float:
    """Fraction of x (N, n) that ``model`` classifies as y (N,); its train/eval mode is restored."""
    was_training = model.training
    model.eval()
    correct = sum((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum().item()
                  for i in range(0, len(x), batch_size))
    model.train(was_training)
    return correct / len(x)


# ----------------------------------------------------------------------------- settings and results


@dataclass
class Settings:
    """One online run: ``steps`` optimiser steps of ``batch_size`` fresh samples; ``optimizer`` ``adam`` or ``sgd``
    (with ``momentum``) at a constant ``lr``; test accuracy at step 0, every ``eval_every`` steps and at the
    end; an epoch (the unit of a method's phase schedule) is ``steps_per_epoch`` steps."""

    steps: int = 4000
    batch_size: int = 32
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    eval_every: int = 100
    steps_per_epoch: int = 100

    def __post_init__(self):
        if self.optimizer not in ("sgd", "adam"):
            raise InputError("parity.optimizer", f"expected sgd or adam, got {self.optimizer!r}")
        for key in ("steps", "batch_size", "eval_every", "steps_per_epoch"):
            if getattr(self, key) < 1:
                raise InputError(f"parity.{key}", f"must be >= 1, got {getattr(self, key)}")
        if not self.lr > 0:
            raise InputError("parity.lr", f"must be > 0, got {self.lr}")

    def make_optimizer(self, params) -> torch.optim.Optimizer:
        if self.optimizer == "adam":
            return torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)


@dataclass
class Curve:
    """Test accuracy over one run: after ``steps[i]`` optimiser steps (``steps[i] * batch_size`` samples seen) the
    accuracy was ``accuracy[i]``; ``phase[i]``: the method's phase in the step before (``"init"`` at step 0);
    ``losses[i - 1]``: the loss parts averaged over the steps since the previous evaluation."""

    batch_size: int
    steps: list[int] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    phase: list[str] = field(default_factory=list)
    losses: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0

    def steps_to(self, target: float) -> int | None:
        """The first evaluated step with test accuracy >= ``target``; None if none (resolution: ``eval_every``)."""
        return next((s for s, a in zip(self.steps, self.accuracy) if a >= target), None)

    def samples_to(self, target: float) -> int | None:
        steps = self.steps_to(target)
        return None if steps is None else steps * self.batch_size

    @property
    def final_accuracy(self) -> float:
        return self.accuracy[-1]

    def as_dict(self) -> dict:
        return {"batch_size": self.batch_size, "steps": self.steps, "accuracy": self.accuracy, "phase": self.phase,
                "losses": self.losses, "seconds": self.seconds}


@dataclass
class TeacherRun:
    """``model``: the teacher after all its steps (eval mode, frozen); ``curve``: its training curve; ``early``: a
    frozen copy taken at the first evaluation with test accuracy >= the snapshot target (None if never)."""

    model: TwoLayerMLP
    curve: Curve
    early: TwoLayerMLP | None = None
    early_step: int | None = None


# ----------------------------------------------------------------------------- methods


def build_method(name: str, *, temperature: float = 1.0, alpha: float = 1.0, dim: int = 32,
                 phase_epochs: list[float] = (5.0,), seed: int = 0) -> Method:
    """The registered Method ``name`` for the parity MLPs: a ``distill`` section validated by
    :func:`jetkd.config.from_dict` into a :class:`jetkd.config.DistillConfig`, built by
    :func:`jetkd.distill.build_method`.

    - ``none``: cross-entropy on the labels (the student alone);
    - ``kd``: one-shot Hinton KD, ``(1 - alpha) CE + alpha T^2 KL`` on the teacher's logits;
    - ``curriculum``: ``teacher_taps: [hidden]``, ``student_tap: hidden``, ``dim``, ``phase_epochs`` (one phase:
      the teacher has one hidden layer), projection ``seed``; its last phase is KD with the same ``alpha`` and
      ``temperature`` as ``kd``.
    """
    from jetkd.config import DistillConfig, from_dict
    from jetkd.distill import build_method as build

    section = {"method": name, "temperature": temperature, "alpha": alpha}
    if name == "curriculum":
        section["curriculum"] = {"teacher_taps": [TAP], "student_tap": TAP, "dim": dim,
                                 "phase_epochs": list(phase_epochs), "seed": seed, "alpha": alpha}
    return build(from_dict(DistillConfig, section, "parity"))


# ----------------------------------------------------------------------------- training


def train_teacher(task: SparseParity, width: int, settings: Settings, test: tuple[torch.Tensor, torch.Tensor], *,
                  seed: int, snapshot_at: float | None = 0.99, stop_at: float | None = None) -> TeacherRun:
    """A :class:`TwoLayerMLP` of ``width`` trained online on the labels (cross-entropy; ``teacher init`` and
    ``teacher data`` seeds of ``seed``) for ``settings.steps`` steps, or until the first evaluation with test
    accuracy >= ``stop_at``; a copy is kept at the first evaluation >= ``snapshot_at`` (:class:`TeacherRun`)."""
    model = make_mlp(task.n, width, derive_seed(seed, "teacher init"))
    run = TeacherRun(model, Curve(settings.batch_size))

    def on_eval(step: int, acc: float) -> bool:
        if snapshot_at is not None and run.early is None and acc >= snapshot_at:
            run.early, run.early_step = _frozen(copy.deepcopy(model)), step
        return stop_at is not None and acc >= stop_at

    run.curve = _run(task, model, None, build_method("none"), settings, test,
                     data_seed=derive_seed(seed, "teacher data"), on_eval=on_eval)
    _frozen(model)
    return run


def _frozen(model: nn.Module) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def distill(task: SparseParity, teacher: nn.Module | None, method: Method, settings: Settings,
            test: tuple[torch.Tensor, torch.Tensor], *, seed: int, width: int | None = None) -> Curve:
    """Train a fresh student (the teacher's width, or ``width``) with ``method`` for ``settings.steps`` steps from
    the ``student init`` and ``student data`` seeds of ``seed``: runs with the same seed and settings start from
    the same weights and see the same samples in the same order, whatever the method. Returns its curve."""
    if method.needs_teacher and teacher is None:
        raise InputError("parity", f"{type(method).__name__} needs a teacher")
    width = width or teacher.hidden[0].out_features
    student = make_mlp(task.n, width, derive_seed(seed, "student init"))
    return _run(task, student, teacher if method.needs_teacher else None, method, settings, test,
                data_seed=derive_seed(seed, "student data"))


def _run(task: SparseParity, student: nn.Module, teacher: nn.Module | None, method: Method, settings: Settings,
         test: tuple[torch.Tensor, torch.Tensor], *, data_seed: int, on_eval=None) -> Curve:
    """The loop of :class:`jetkd.train.loop.Trainer` on online parity batches (module docstring). ``on_eval(step,
    accuracy) -> stop`` is called after every evaluation but the one at step 0."""
    start = time.perf_counter()
    stream = BitStream(task, data_seed)
    student_rec, teacher_rec = _setup_method(method, student, teacher, task)
    params = [p for p in (*student.parameters(), *method.parameters()) if p.requires_grad]
    optimizer = settings.make_optimizer(params)
    curve = Curve(settings.batch_size, [0], [accuracy(student, *test)], ["init"])
    sums: dict[str, float] = {}
    student.train()
    try:
        for step in range(settings.steps):
            x, y = stream.next_batch(settings.batch_size)
            method.set_progress(step / settings.steps_per_epoch, optimizer.param_groups[0]["lr"])
            parts = _train_step(student, teacher, method, optimizer, student_rec, teacher_rec, x, y)
            for key, value in parts.items():
                sums[key] = sums.get(key, 0.0) + value
            done = step + 1
            if done % settings.eval_every and done != settings.steps:
                continue
            interval = done - curve.steps[-1]
            curve.steps.append(done)
            curve.accuracy.append(accuracy(student, *test))
            curve.phase.append(method.phase())
            curve.losses.append({key: value / interval for key, value in sums.items()})
            sums = {}
            if on_eval is not None and on_eval(done, curve.accuracy[-1]):
                break
    finally:
        student_rec.remove()
        if teacher_rec is not None:
            teacher_rec.remove()
    curve.seconds = time.perf_counter() - start
    return curve


def _setup_method(method: Method, student: nn.Module, teacher: nn.Module | None,
                  task: SparseParity) -> tuple[TapRecorder, TapRecorder | None]:
    """As ``Trainer._setup_method``: hook the taps the method reads and let it build its modules from the tap
    shapes of one sample batch (64 samples of the :data:`SETUP_SEED` stream; models in eval mode, no gradient)."""
    student_rec = TapRecorder(student, method.student_taps, "distill: student tap")
    teacher_rec = TapRecorder(teacher, method.teacher_taps, "distill: teacher tap") if teacher is not None else None
    if not (method.student_taps or method.teacher_taps or type(method).setup is not Method.setup):
        return student_rec, teacher_rec
    x, _ = BitStream(task, SETUP_SEED).next_batch(64)
    student.eval()
    with torch.no_grad():
        with student_rec:
            student(x)
        teacher_taps = _teacher_outputs(teacher, teacher_rec, x)[1] if teacher is not None else {}
        method.setup(student, teacher, student_rec.taps, teacher_taps)
    student.train()
    return student_rec, teacher_rec


def _teacher_outputs(teacher: nn.Module, recorder: TapRecorder, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, Tap]]:
    """Teacher logits (B, 2) float32 and the taps the method reads, without gradient."""
    with torch.no_grad(), recorder:
        logits = teacher(x).float()
    return logits, {k: Tap(t.value.float(), t.mask) for k, t in recorder.taps.items()}


def _train_step(student: nn.Module, teacher: nn.Module | None, method: Method, optimizer: torch.optim.Optimizer,
                student_rec: TapRecorder, teacher_rec: TapRecorder | None, x: torch.Tensor,
                y: torch.Tensor) -> dict[str, float]:
    """One optimiser step on x (B, n), y (B,), as ``Trainer.train_step`` with ``DistillStep``; returns the loss
    parts. A non-finite loss stops the run before the optimiser applies it (FloatingPointError)."""
    teacher_logits, teacher_taps = (None, {}) if teacher is None else _teacher_outputs(teacher, teacher_rec, x)
    with student_rec:
        logits = student(x)
    taps = {k: Tap(t.value.float(), t.mask) for k, t in student_rec.taps.items()}
    loss, parts = method.loss(StepOutputs(logits.float(), y, teacher_logits, taps, teacher_taps))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    method.after_backward()
    if not math.isfinite(loss.item()):
        raise FloatingPointError(f"non-finite loss ({loss.item()}) in phase {method.phase()!r}: lower the learning "
                                 "rate (SGD on the curriculum's regression loss needs a smaller one than on CE)")
    optimizer.step()
    method.after_step()
    return {"loss": loss.item(), **parts}
