"""Configuration sections of the representation-distillation methods (``distill.<method>`` in a job config).

Plain dataclasses (no torch), validated by :mod:`jetkd.config` like every other section: an unknown key is an
error naming it. Tap paths are module paths of the teacher or the student (``LGEBs.2``, ``phi.blocks.1``,
``rho``, ``graph_dec.1``); a wrong path is an error listing the available ones (:mod:`jetkd.distill.taps`).
Epoch counts are floats: ``2.5`` switches a phase in the middle of the third epoch.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class FitNetsOptions:
    """Romero et al. 2015. Stage 1 (``stage1_epochs``): hint loss ``0.5 ||hint - r(guided)||^2`` only.
    Stage 2: ``CE + lambda * KD`` at ``distill.temperature``, lambda decaying linearly from ``lambda_start`` to
    ``lambda_end`` over ``lambda_epochs`` epochs of stage 2 (paper: 4 -> 1, T = 3)."""

    hint: str = ""  # teacher tap
    guided: str = ""  # student tap
    stage1_epochs: float = 5.0
    lambda_start: float = 4.0
    lambda_end: float = 1.0
    lambda_epochs: float = 10.0


@dataclass
class NormOptions:
    """Liu et al. 2023 (NORM). ``gamma * CE + kd_weight * KD + beta * L_NORM``; beta ramps up linearly over
    ``beta_warmup_epochs``. The feature transform sits before the student's ``classifier`` (a Linear whose input
    is the student's last hidden representation) and expands it to ``n * C_t`` channels."""

    teacher_tap: str = ""  # the teacher's last hidden representation, (B, C_t)
    classifier: str = "classifier"  # the student's final Linear
    n: int = 8  # N: parts of the expanded feature, each matched to the teacher's
    gamma: float = 1.0
    kd_weight: float = 1.0
    beta: float = 1.0
    beta_warmup_epochs: float = 0.0
    residual: bool = True
    batch_norm: bool = True


@dataclass
class CDDOptions:
    """Xie et al. 2023 (Capacity Dynamic Distillation). The configured student is the deploy budget; training
    starts from it with every hidden width times ``width_factor`` and shrinks until the deployable model fits
    ``budget`` (``params`` or ``flops`` of the configured student, or ``budget_value`` if > 0)."""

    teacher_tap: str = ""  # teacher representation for the neighbour search, (B, C_t)
    student_tap: str = ""  # student representation compared with it, (B, C_s)
    width_factor: float = 2.0
    budget: str = "params"  # params | flops
    budget_value: float = 0.0  # 0: the configured student's
    lasso: float = 1e-4  # strength of the group lasso on compactor rows
    threshold: float = 1e-3  # compactor rows with a smaller L2 norm are pruned
    neighbours: int = 8  # top-k teacher neighbours per sample
    bank_size: int = 4096  # teacher representations kept in the memory bank
    reset_every: int = 10  # steps between gradient-reset selections
    reset_channels: int = 4  # channels newly selected for reset per block and selection
    kd_weight: float = 1.0  # Hinton KD on the logits, at distill.temperature (0: off)


@dataclass
class CurriculumOptions:
    """Gupta & Karmalkar 2025. Phase i (``phase_epochs[i]`` epochs) regresses a fixed random Gaussian projection
    (to ``dim``) of ``teacher_taps[i]`` through a linear head on ``student_tap``; afterwards KD on the logits."""

    teacher_taps: list[str] = field(default_factory=list)  # shallow to deep
    student_tap: str = ""
    dim: int = 32
    phase_epochs: list[float] = field(default_factory=list)  # one per teacher tap
    seed: int = 0  # of the random projections
