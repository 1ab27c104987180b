"""The ``Method`` interface: what a distillation method adds to training and what it deploys (DESIGN.md).

The trainer drives every method the same way::

    method.setup(student, teacher, taps, teacher_taps)   # once, with the taps of a sample batch: build heads,
                                                         # attach training-only modules to the student
    per step:  method.set_progress(epoch + step / steps, lr)  # phases and ramps follow training progress
               loss, parts = method.loss(StepOutputs(...))   # taps named in method.student_taps / teacher_taps
               loss.backward(); method.after_backward()      # gradient surgery (CDD)
               optimizer.step(); method.after_step()
    at the end: method.deploy(student) -> the model to export; method.deploy_spec(spec, deployed) -> its config

Trainable parts of a method are its submodules: they train with the student, travel in checkpoints, and
``deploy`` drops or folds them. Everything a method keeps between steps lives in parameters or buffers, so a
resumed run continues exactly.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from jetkd.distill.taps import Tap


@dataclass
class StepOutputs:
    """What one training step hands to a method's loss.

    logits:         (B, n_class) student logits
    label:          (B,) int64
    teacher_logits: (B, n_class) or None when the method needs no teacher
    taps / teacher_taps: {path: Tap} for the paths in ``method.student_taps`` / ``method.teacher_taps``
    """

    logits: torch.Tensor
    label: torch.Tensor
    teacher_logits: torch.Tensor | None = None
    taps: dict[str, Tap] = field(default_factory=dict)
    teacher_taps: dict[str, Tap] = field(default_factory=dict)


class Method(nn.Module):
    """A distillation method; the base class is plain cross-entropy ("no distillation").

    Subclasses set ``needs_teacher``, the tap paths they read (``student_taps``, ``teacher_taps``: tuples of
    module paths, checked against the models before training) and override what they need.
    """

    needs_teacher = False

    def __init__(self):
        super().__init__()
        self.student_taps: tuple[str, ...] = ()
        self.teacher_taps: tuple[str, ...] = ()
        self.progress = 0.0  # epochs of training done, fractional
        self.lr = 0.0  # the job's learning rate for the current step

    def train_spec(self, spec: dict) -> dict:
        """The model config to build the trained student from (CDD starts wider than the configured one)."""
        return spec

    def param_groups(self) -> list[dict]:
        """Optimiser groups for method parameters that need their own learning rate:
        ``[{"params": [...], "lr_scale": 10.0}]`` (times the job's lr; the schedule applies to every group).
        Every other trainable parameter, of the student and of the method, uses the job's settings."""
        return []

    def setup(self, student: nn.Module, teacher: nn.Module | None, taps: dict[str, Tap],
              teacher_taps: dict[str, Tap]) -> None:
        """Build the method's modules once, knowing the shapes of a sample batch's taps."""

    def set_progress(self, epochs: float, lr: float = 0.0) -> None:
        """Training progress in epochs (``epoch + step / steps_per_epoch``) and the job's learning rate for the
        coming step (schedule applied, before any ``lr_scale``), set before every step."""
        self.progress, self.lr = float(epochs), float(lr)

    def phase(self) -> str:
        """Name of the current phase (logged per epoch)."""
        return "train"

    def selectable(self) -> bool:
        """Whether the student is now trained for its task, so that this epoch may become ``best.pt``
        (not in FitNets' stage 1, curriculum's regression phases, or while CDD still shrinks)."""
        return True

    def loss(self, out: StepOutputs) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalar loss and its named parts (for the metrics log)."""
        ce = F.cross_entropy(out.logits, out.label)
        return ce, {"ce": ce.item()}

    def after_backward(self) -> None:
        """Called between ``loss.backward()`` and the optimiser step."""

    def after_step(self) -> None:
        """Called after the optimiser step."""

    def deploy(self, student: nn.Module) -> nn.Module:
        """The model to export after training, in eval mode; never modifies ``student``. By default a plain
        copy (:func:`deploy_copy`): heads and regressors belong to the method, not to the student."""
        return deploy_copy(student)

    def deploy_spec(self, spec: dict, deployed: nn.Module) -> dict:
        """The model config that rebuilds ``deployed`` (``build_model(spec)`` + its state dict)."""
        return spec

    def deploy_summary(self, student: nn.Module, deployed: nn.Module) -> dict:
        """Figures about the deploy form worth reporting (e.g. CDD's reduction against the starting width)."""
        return {}


def deploy_copy(student: nn.Module) -> nn.Module:
    """A deep copy of ``student`` in eval mode without any forward hook (tap recorders, training-time transforms):
    the plain model, as ``build_model`` + ``load_state_dict`` would give it."""
    model = copy.deepcopy(student)
    for module in model.modules():
        for hooks in (module._forward_hooks, module._forward_pre_hooks):
            hooks.clear()
    return model.eval()


class NoDistillation(Method):
    """The student trained alone on the labels."""

    @classmethod
    def from_config(cls, cfg) -> "NoDistillation":
        return cls()
