"""The ``Method`` interface: what a distillation method adds to training and what it deploys."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class StepOutputs:
    """What one training step hands to a method's loss.

    logits:         (B, n_class) student logits
    label:          (B,) int64
    teacher_logits: (B, n_class) or None when the method needs no teacher
    taps / teacher_taps: named hidden representations captured by forward hooks (representation methods)
    """

    logits: torch.Tensor
    label: torch.Tensor
    teacher_logits: torch.Tensor | None = None
    taps: dict = field(default_factory=dict)
    teacher_taps: dict = field(default_factory=dict)


class Method(nn.Module):
    """A distillation method. Its own trainable modules (regressors, feature transforms, ...) are submodules,
    so they train with the student and travel in checkpoints, and ``deploy`` drops or folds them.

    Subclasses set ``needs_teacher`` and implement ``loss``; the default is plain cross-entropy ("no distillation").
    """

    needs_teacher = False

    def loss(self, out: StepOutputs) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalar loss and its named parts (for the metrics log)."""
        ce = F.cross_entropy(out.logits, out.label)
        return ce, {"ce": ce.item()}

    def deploy(self, student: nn.Module) -> nn.Module:
        """The model to export after training."""
        return student


class NoDistillation(Method):
    """The student trained alone on the labels."""
