"""Hinton et al. 2015, "Distilling the Knowledge in a Neural Network"."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from jetkd.distill.base import Method, StepOutputs


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, averaged over the batch.

    The T^2 keeps the gradient scale of the soft term independent of T.
    """
    t = temperature
    log_p_student = F.log_softmax(student_logits.float() / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / t, dim=-1)
    return t * t * F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean")


class HintonKD(Method):
    """``loss = (1 - alpha) * CE(student, label) + alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T))``.

    alpha is the paper's lambda: 0.7 for the MLP and 1.0 for the deep set in Liu et al. 2023.
    """

    needs_teacher = True

    def __init__(self, temperature: float = 1.0, alpha: float = 0.5):
        super().__init__()
        if temperature <= 0 or not 0 <= alpha <= 1:
            raise ValueError(f"need temperature > 0 and 0 <= alpha <= 1, got T={temperature}, alpha={alpha}")
        self.temperature, self.alpha = temperature, alpha

    @classmethod
    def from_config(cls, cfg) -> "HintonKD":
        """From ``distill.temperature`` and ``distill.alpha``."""
        return cls(cfg.temperature, cfg.alpha)

    def loss(self, out: StepOutputs) -> tuple[torch.Tensor, dict[str, float]]:
        ce = F.cross_entropy(out.logits, out.label)
        kd = kd_loss(out.logits, out.teacher_logits, self.temperature)
        return (1 - self.alpha) * ce + self.alpha * kd, {"ce": ce.item(), "kd": kd.item()}

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, alpha={self.alpha}"
