"""Liu, Li, Li & Yao, ICLR 2023, "NORM: Knowledge Distillation via N-to-One Representation Matching".

What the paper does
    A feature transform (FT) of two linear layers is inserted, for training only, between the student's last
    hidden representation (C_s channels) and its classifier: the first expands it to N * C_t channels (C_t: the
    teacher's last hidden representation), the second contracts it back to C_s. The expanded feature is cut
    into N consecutive segments of C_t channels and every segment is pulled towards the same (intact) teacher
    representation. The authors' default FT (code: OSVAI/NORM, ``conv_1x1_bn`` pairs in the students) puts a
    BatchNorm after each linear layer and adds the FT's input to its output (the "residual FT" of their
    tables); their scripts use N = 8. Being affine in eval mode, the FT folds into the classifier afterwards:
    the deployed student has exactly its original architecture.

Here
    The FT acts on per-jet vectors (B, C_s): the input of the student's ``classifier`` Linear (MLP ``blocks``,
    DeepSet ``rho``), which a forward pre-hook on ``classifier`` (registered in :meth:`NORM.setup`) replaces by
    the transformed feature, keeping the expanded one (B, N * C_t) for the loss. The teacher tap is the
    teacher's last hidden representation (LorentzNet ``graph_dec.1``, (B, C_t); a per-constituent tap would be
    averaged over real constituents). The loss, with the authors' normalisation (``F.mse_loss(...) * N``)::

        L_NORM = N * mean_{b, k} (e_{b,k} - t_{b, k mod C_t})^2  =  sum_{i=1..N} MSE(e_i, t)
        loss   = gamma * CE + kd_weight * T^2 KL(teacher/T || student/T) + beta(progress) * L_NORM

    with e_i the i-th C_t-channel segment of the expanded feature, t the teacher feature, the means over jets
    and channels, and beta(p) = beta * min(1, p / beta_warmup_epochs).

    The FT's BatchNorms are :class:`MaskedBatchNorm1d` (statistics summed over DDP ranks, like every BatchNorm
    of the students). The hook runs the FT in the student's train/eval mode, so the trainer's validation (the
    student in eval mode) measures exactly the model that :meth:`NORM.deploy` returns: a copy of the student
    with the FT (eval-mode BatchNorms) folded into the classifier in float64, and no hook.

Deviations from the authors' code, and why
    * beta warm-up: the authors step beta through 0.1, 0.5, 1 over the first 20 of 240 (CIFAR) or 15 of 100
      (ImageNet) epochs and step it down again in the last epochs; we ramp it linearly from 0 over
      ``beta_warmup_epochs`` (default 10, about the same lost weight as their ImageNet steps) and keep it.
    * Their training loop also standardises both logit vectors (layer norm times 2.5) before CE and KD, a
      trick absent from the paper; not done here, so CE and KD are those of every other jetkd method.
    * The linear layers carry a bias only without BatchNorm (a bias before a BatchNorm is redundant; the
      authors' 1x1 convolutions have none), and use PyTorch's default initialisation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from jetkd.distill.base import Method, StepOutputs, deploy_copy
from jetkd.distill.kd import kd_loss
from jetkd.distill.options import NormOptions, require_at_least
from jetkd.distill.taps import Tap, check_paths, module_at
from jetkd.errors import InputError
from jetkd.models.layers import MaskedBatchNorm1d


def norm_loss(expanded: torch.Tensor, teacher: torch.Tensor, n: int) -> torch.Tensor:
    """``n * MSE(expanded, teacher tiled n times)`` = the sum over the n segments of each segment's MSE.

    expanded: (B, n * C_t); teacher: (B, C_t). Computed in float32 at least.
    """
    if expanded.shape[-1] != n * teacher.shape[-1]:
        raise ValueError(f"expanded feature has {expanded.shape[-1]} channels, expected {n} x {teacher.shape[-1]}")
    target = teacher.detach().float().repeat(1, n)  # (B, n * C_t): [t, t, ..., t]
    return n * F.mse_loss(expanded.float(), target)


class FeatureTransform(nn.Module):
    """x (B, C_s) -> (y (B, C_s), e (B, C_e)): ``e = BN(expand(x))``, ``y = BN(contract(e)) [+ x]``.

    Submodules: ``expand`` (Linear C_s -> C_e), ``contract`` (Linear C_e -> C_s), and with ``batch_norm``
    ``expand_bn`` / ``contract_bn`` (MaskedBatchNorm1d); the Linears have a bias only without batch norm.
    """

    def __init__(self, c_in: int, c_expanded: int, residual: bool, batch_norm: bool):
        super().__init__()
        self.residual = residual
        self.expand = nn.Linear(c_in, c_expanded, bias=not batch_norm)
        self.expand_bn = MaskedBatchNorm1d(c_expanded) if batch_norm else None
        self.contract = nn.Linear(c_expanded, c_in, bias=not batch_norm)
        self.contract_bn = MaskedBatchNorm1d(c_in) if batch_norm else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e = self.expand(x)
        if self.expand_bn is not None:
            e = self.expand_bn(e)
        y = self.contract(e)
        if self.contract_bn is not None:
            y = self.contract_bn(y)
        return (y + x if self.residual else y), e

    @torch.no_grad()
    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The eval-mode transform as ``y = A x + c``: A (C_s, C_s), c (C_s,), float64."""
        w1, b1 = _linear_bn(self.expand, self.expand_bn)
        w2, b2 = _linear_bn(self.contract, self.contract_bn)
        a, c = w2 @ w1, w2 @ b1 + b2
        if self.residual:
            a = a + torch.eye(a.shape[0], dtype=a.dtype, device=a.device)
        return a, c


def _linear_bn(linear: nn.Linear, bn: nn.BatchNorm1d | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight (out, in) and bias (out,) in float64 of ``bn(linear(x))`` with the BatchNorm in eval mode."""
    w = linear.weight.double()
    b = linear.bias.double() if linear.bias is not None else w.new_zeros(w.shape[0])
    if bn is None:
        return w, b
    scale = bn.weight.double() * torch.rsqrt(bn.running_var.double() + bn.eps)
    return scale[:, None] * w, scale * (b - bn.running_mean.double()) + bn.bias.double()


def fixed_point_scale(classifier: nn.Module, weight: torch.Tensor, bias: torch.Tensor) -> float:
    """1, or the power of two 2^-k that brings a folded classifier of a quantization-aware student into its
    fixed-point types (:class:`jetkd.quant.QuantLinear`): weights and bias within the range of their
    ``ap_fixed<W,I>``. Folding the transform can give weights
    far beyond it (found: 116 against 32 for ap_fixed<16,6>), which saturate in firmware and turn the argmax into a
    constant. Scaling the logits by 2^-k is exact in fixed point (a shift), keeps the argmax and, for two classes,
    the ROC; the softmax scores become those of temperature 2^k."""
    types = getattr(classifier, "types", None)
    if types is None:
        return 1.0

    def top(t) -> float:
        return 2.0 ** (t.integer - 1) - 2.0 ** -t.frac

    need = max(weight.abs().max().item() / top(types["weight"]), bias.abs().max().item() / top(types["bias"]))
    k = max(0, math.ceil(math.log2(need))) if need > 0 else 0
    return 2.0**-k


class NORM(Method):
    """N-to-one representation matching through a feature transform folded into the classifier at deploy.

    ``loss = gamma * CE + kd_weight * KD(T) + beta(progress) * L_NORM`` (module docstring). Trainable parts:
    ``transform`` (a :class:`FeatureTransform`, built in :meth:`setup`).
    """

    needs_teacher = True

    def __init__(self, options: NormOptions, temperature: float = 1.0):
        super().__init__()
        o = options
        if not o.teacher_tap:
            raise InputError("distill.norm.teacher_tap", "needs the teacher's last hidden representation, e.g. graph_dec.1")
        require_at_least("distill.norm", o, 1, "n")
        require_at_least("distill.norm", o, 0, "gamma", "kd_weight", "beta", "beta_warmup_epochs")
        self.options, self.temperature = o, temperature
        self.teacher_taps = (o.teacher_tap,)
        self.transform: FeatureTransform | None = None
        self._handle = None  # the classifier's forward pre-hook
        self._expanded: torch.Tensor | None = None  # (B, n * C_t) of the latest student forward
        self.logit_scale = 1.0  # of the latest deploy form (fixed_point_scale; 1 for float students)

    def setup(self, student: nn.Module, teacher: nn.Module | None, taps: dict[str, Tap],
              teacher_taps: dict[str, Tap]) -> None:
        """Build the transform (C_s = the classifier's in_features, C_t = the teacher tap's channels) and hook it
        in front of the student's classifier."""
        path = self.options.classifier
        check_paths(student, [path], "distill.norm.classifier")
        classifier = module_at(student, path)
        if not isinstance(classifier, nn.Linear) or classifier.bias is None:
            raise InputError("distill.norm.classifier", f"{path!r} is a {type(classifier).__name__}, not a Linear with a bias")
        c_t = teacher_taps[self.options.teacher_tap].dim
        self.transform = FeatureTransform(classifier.in_features, self.options.n * c_t, self.options.residual,
                                          self.options.batch_norm)
        self.transform.to(device=classifier.weight.device, dtype=classifier.weight.dtype)
        if self._handle is not None:
            self._handle.remove()

        def transform_input(module: nn.Module, args: tuple) -> tuple:
            # The transform follows the student's mode: batch statistics in training, running ones in eval.
            # A quantization-aware student computes in float64 in eval: the transform runs in its own dtype.
            self.transform.train(module.training)
            x = args[0]
            y, self._expanded = self.transform(x.to(self.transform.expand.weight.dtype))
            return (y.to(x.dtype), *args[1:])

        self._handle = classifier.register_forward_pre_hook(transform_input)

    def beta_now(self) -> float:
        """beta at the current progress: linear from 0 to ``beta`` over ``beta_warmup_epochs``."""
        w = self.options.beta_warmup_epochs
        return self.options.beta * (min(1.0, self.progress / w) if w > 0 else 1.0)

    def phase(self) -> str:
        return "warmup" if self.progress < self.options.beta_warmup_epochs else "train"

    def loss(self, out: StepOutputs) -> tuple[torch.Tensor, dict[str, float]]:
        if self._expanded is None:
            raise RuntimeError("NORM.loss needs a student forward pass through the hooked classifier (call setup first)")
        expanded, self._expanded = self._expanded, None
        o, beta = self.options, self.beta_now()
        ce = F.cross_entropy(out.logits, out.label)
        kd = kd_loss(out.logits, out.teacher_logits, self.temperature)
        l_norm = norm_loss(expanded, out.teacher_taps[o.teacher_tap].pooled(), o.n)
        loss = o.gamma * ce + o.kd_weight * kd + beta * l_norm
        return loss, {"ce": ce.item(), "kd": kd.item(), "norm": l_norm.item(), "beta": beta}

    @torch.no_grad()
    def deploy(self, student: nn.Module) -> nn.Module:
        """A copy of ``student`` in eval mode, without the hook, whose classifier computes ``W (A x + c) + b``:
        the eval-mode transform folded in (float64, cast back). Same class, keys and shapes as the student."""
        if self._handle is None:
            raise RuntimeError("NORM.deploy before setup")
        deployed = deploy_copy(student)
        classifier = module_at(deployed, self.options.classifier)
        a, c = self.transform.affine()
        w, b = classifier.weight.double(), classifier.bias.double()
        w, b = w @ a, w @ c + b
        self.logit_scale = fixed_point_scale(classifier, w, b)
        classifier.weight.copy_(w * self.logit_scale)
        classifier.bias.copy_(b * self.logit_scale)
        return deployed.eval()

    def deploy_summary(self, student: nn.Module, deployed: nn.Module) -> dict:
        return {"logit_scale": self.logit_scale} if self.logit_scale != 1.0 else {}

    def extra_repr(self) -> str:
        o = self.options
        return (f"n={o.n}, gamma={o.gamma}, kd_weight={o.kd_weight}, temperature={self.temperature}, beta={o.beta}, "
                f"beta_warmup_epochs={o.beta_warmup_epochs}, residual={o.residual}, batch_norm={o.batch_norm}")
