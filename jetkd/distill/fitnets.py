"""Romero et al. 2015, "FitNets: Hints for Thin Deep Nets" (arXiv:1412.6550).

The paper (its Algorithm 1) trains a thin student in two stages:

1. **Hint training.** A *hint* (the output of a teacher hidden layer) guides a *guided* layer of the student
   through a regressor r with parameters W_r:
   ``L_HT(W_Guided, W_r) = 1/2 ||u_h(x) - r(v_g(x; W_Guided); W_r)||^2``. Only the student up to the guided
   layer (W_Guided) and the regressor train; the teacher is fixed.
2. **Knowledge distillation** of the whole student, starting from the hint-trained W_Guided:
   ``L_KD(W_S) = H(y_true, P_S) + lambda * H(P_T^tau, P_S^tau)``, P^tau = softmax(logits / tau), with lambda
   annealed linearly from 4 to 1 during this stage and tau = 3. The regressor is discarded.

Here, per training step (``progress`` in epochs, set by the trainer)::

    stage 1, progress < stage1_epochs:  loss = 0.5 * ||hint - r(guided)||^2                      phase "hint"
    stage 2:                            loss = CE(student, label) + lambda * H(P_T^T, P_S^T)        phase "kd"
        lambda = lambda_start + (lambda_end - lambda_start) * min(1, (progress - stage1_epochs) / lambda_epochs)

* ``hint`` (teacher) and ``guided`` (student) are tap paths (:mod:`jetkd.distill.taps`). r is a Linear
  (:func:`jetkd.distill.heads.regressor_for`): applied to every constituent when both taps are per-constituent
  (e.g. teacher ``LGEBs.0`` (B, N, C_t) -> DeepSet ``phi.blocks.0`` (B, N, C_s)), the squared error summed over
  channels and averaged over the real constituents of the batch (the mask); otherwise on pooled vectors, a
  per-constituent tap averaged over real constituents (e.g. MLP ``blocks.0`` (B, C_s), which has no
  per-constituent layer, against the teacher's ``LGEBs.0`` pooled to (B, C_t)), averaged over jets.
* Stage 1 trains only the student up to the guided layer, and the regressor: the hint loss does not reach
  later layers, so their gradients stay ``None`` and the trainer's AdamW leaves them (and their weight decay)
  alone. Stage 2's loss does not reach the regressor, which therefore stays as stage 1 left it.
* The soft term is the paper's cross-entropy ``H(P_T^T, P_S^T) = -sum_k P_T,k log P_S,k`` *without* the T^2
  factor of Hinton's convention (:func:`jetkd.distill.kd.kd_loss`), so that the paper's lambda (4 -> 1 at
  T = 3) means what it means there. It differs from KL(P_T || P_S) by the teacher's entropy, a constant:
  the gradients are the same. (In the T^2 convention the paper's weights would read 4/9 -> 1/9.)
* Epochs whose last step was in stage 1 are not selectable for ``best.pt``. Every step logs ``hint``, ``ce``
  and ``kd`` (the ones not in the current loss computed without gradient) and ``lambda``.
* Deploy form: a copy of the student in eval mode; the regressor is dropped, so the deploy form has the
  plain student's parameters and state dict.

Deviations from the paper, and why:

* One training run, one optimiser and one learning-rate schedule for both stages (the trainer's), where the
  paper runs two separate optimisations; ``stage1_epochs`` picks the switch point. The AdamW moments of the
  guided part carry over from stage 1 to stage 2.
* The regressor is linear, where the paper uses a convolutional regressor ending in the hint layer's
  non-linearity: jet representations are sets or vectors, not images, and the tapped teacher
  representations (LorentzNet block outputs, residual sums) are not confined to a ReLU's range.
* The hint loss is a mean over jets (or real constituents), not a sum over the batch, so its scale does not
  depend on the batch size or the jets' multiplicities.
* During stage 1 the student still runs its later layers forward (the logits are logged), so BatchNorm
  running statistics of those layers keep tracking their (changing) inputs; these are buffers, not weights,
  and are re-estimated in stage 2 anyway.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

from jetkd.distill.base import Method, StepOutputs
from jetkd.distill.heads import TapRegressor, half_squared_error, regressor_for
from jetkd.distill.options import FitNetsOptions, require_at_least
from jetkd.distill.taps import Tap
from jetkd.errors import InputError


def soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``H(softmax(teacher / T), softmax(student / T)) = -sum_k p_T,k log p_S,k``, averaged over the batch.

    student_logits, teacher_logits: (B, n_class). No T^2 factor (FitNets' L_KD, unlike :func:`kd_loss`).
    """
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    p_teacher = F.softmax(teacher_logits.float() / temperature, dim=-1)
    return -(p_teacher * log_p_student).sum(-1).mean()


class FitNets(Method):
    """Hint training of the student up to ``options.guided`` from the teacher's ``options.hint``, then KD.

    See the module docstring for the losses and the schedule. The regressor (``self.regressor``, a
    :class:`TapRegressor`) is built in :meth:`setup` from the two taps' shapes.
    """

    needs_teacher = True

    def __init__(self, options: FitNetsOptions, temperature: float):
        super().__init__()
        where = "distill.fitnets"
        if not options.hint:
            raise InputError(f"{where}.hint", "a teacher module path is required (e.g. LGEBs.0 or graph_dec.1)")
        if not options.guided:
            raise InputError(f"{where}.guided", "a student module path is required (e.g. phi.blocks.0 or blocks.0)")
        require_at_least(where, options, 0, "stage1_epochs", "lambda_start", "lambda_end", "lambda_epochs")
        self.options, self.temperature = options, float(temperature)
        self.student_taps, self.teacher_taps = (options.guided,), (options.hint,)
        self.regressor: TapRegressor | None = None

    def setup(self, student: nn.Module, teacher: nn.Module | None, taps: dict[str, Tap],
              teacher_taps: dict[str, Tap]) -> None:
        self.regressor = regressor_for(taps[self.options.guided], teacher_taps[self.options.hint])

    def in_stage1(self) -> bool:
        return self.progress < self.options.stage1_epochs

    def phase(self) -> str:
        return "hint" if self.in_stage1() else "kd"

    def selectable(self) -> bool:
        return not self.in_stage1()

    def kd_weight(self) -> float:
        """lambda at the current progress: ``lambda_start`` up to the start of stage 2, then linear to
        ``lambda_end`` over ``lambda_epochs`` epochs, then ``lambda_end``."""
        o = self.options
        into_stage2 = max(0.0, self.progress - o.stage1_epochs)
        frac = 1.0 if o.lambda_epochs == 0 else min(1.0, into_stage2 / o.lambda_epochs)
        return o.lambda_start + (o.lambda_end - o.lambda_start) * frac

    def loss(self, out: StepOutputs) -> tuple[torch.Tensor, dict[str, float]]:
        stage1, lam, grad = self.in_stage1(), self.kd_weight(), torch.is_grad_enabled()
        guided, target = out.taps[self.options.guided], out.teacher_taps[self.options.hint]
        with torch.set_grad_enabled(grad and stage1):  # the term not in this stage's loss is only logged
            hint = half_squared_error(self.regressor(guided), target)
        with torch.set_grad_enabled(grad and not stage1):
            ce = F.cross_entropy(out.logits, out.label)
            kd = soft_cross_entropy(out.logits, out.teacher_logits, self.temperature)
        parts = {"hint": hint.item(), "ce": ce.item(), "kd": kd.item(), "lambda": lam}
        return (hint if stage1 else ce + lam * kd), parts

    def extra_repr(self) -> str:
        o = self.options
        return (f"hint={o.hint!r}, guided={o.guided!r}, stage1_epochs={o.stage1_epochs}, lambda={o.lambda_start}"
                f"->{o.lambda_end} over {o.lambda_epochs} epochs, temperature={self.temperature}")
