"""Configuration sections of the representation-distillation methods (``distill.<method>`` in a job config).

Plain dataclasses (no torch), validated by :mod:`jetkd.config` like every other section: an unknown key is an
error naming it. Tap paths are module paths of the teacher or the student (``LGEBs.2``, ``phi.blocks.1``,
``rho``, ``graph_dec.1``); a wrong path is an error listing the available ones (:mod:`jetkd.distill.taps`).
Epoch counts are floats: ``2.5`` switches a phase in the middle of the third epoch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from jetkd.errors import InputError


def require_at_least(section: str, options, minimum: float, *keys: str) -> None:
    """An :class:`InputError` naming ``section.key`` for the first of ``keys`` whose option is below ``minimum``."""
    for key in keys:
        value = getattr(options, key)
        if value < minimum:
            raise InputError(f"{section}.{key}", f"must be >= {minimum:g}, got {value}")


@dataclass
class FitNetsOptions:
    """Romero et al. 2015 (:mod:`jetkd.distill.fitnets`). Stage 1 (the first ``stage1_epochs``): hint loss
    ``0.5 ||hint - r(guided)||^2`` only, r a trainable Linear (per constituent when both taps are), training the
    student up to the guided layer. Stage 2: ``CE + lambda * H(P_T, P_S)``, the soft cross-entropy at
    ``distill.temperature`` without a T^2 factor, lambda decaying linearly from ``lambda_start`` to
    ``lambda_end`` over the first ``lambda_epochs`` epochs of stage 2 (paper: 4 -> 1, T = 3)."""

    hint: str = ""  # teacher tap, e.g. LGEBs.0 (per constituent) or graph_dec.1 (per jet)
    guided: str = ""  # student tap, e.g. phi.blocks.0 or phi (DeepSet), blocks.0 (MLP)
    stage1_epochs: float = 5.0
    lambda_start: float = 4.0
    lambda_end: float = 1.0
    lambda_epochs: float = 10.0


@dataclass
class NormOptions:
    """Liu et al. 2023 (NORM). ``gamma * CE + kd_weight * KD + beta * L_NORM``, KD at ``distill.temperature``;
    beta ramps up linearly from 0 over ``beta_warmup_epochs``. A feature transform (Linear C_s -> n * C_t,
    Linear back to C_s; a BatchNorm after each and a residual around both, as in the authors' default) sits
    before the student's ``classifier`` (a Linear whose input is the last hidden representation) in training
    and validation, and is folded into it at deploy. ``L_NORM = n * MSE(expanded, teacher tiled n times)``:
    the sum over the n parts of each part's MSE to the teacher. ``kd_weight = 0`` is the paper's plain NORM."""

    teacher_tap: str = ""  # the teacher's last hidden representation, (B, C_t), e.g. LorentzNet graph_dec.1
    classifier: str = "classifier"  # the student's final Linear
    n: int = 8  # N: parts of the expanded feature, each matched to the teacher's (authors' scripts: 8)
    gamma: float = 1.0  # cross-entropy weight
    kd_weight: float = 1.0  # Hinton KD weight (NORM+KD; 0: NORM alone)
    beta: float = 1.0  # L_NORM weight after the warm-up (authors: 1)
    beta_warmup_epochs: float = 10.0  # linear 0 -> beta (authors: full weight after 15 of 100 ImageNet epochs)
    residual: bool = True  # add the transform's input to its output (the paper's default FT)
    batch_norm: bool = True  # a BatchNorm after each of the two Linears (authors' code)


@dataclass
class CDDOptions:
    """Xie et al. 2023 (Capacity Dynamic Distillation), on ResRep's compactors (Ding et al. 2021). The configured
    student is the deploy budget; training starts from it with every hidden width (MLP ``hidden``; DeepSet
    ``phi_hidden`` but its last entry, and ``rho_hidden``; image ResNets: every residual block's inner width,
    ``block_widths``) times ``width_factor``, a compactor after every LinearBlock (image ResNets: after each block's
    first convolution, :mod:`jetkd.distill.cdd_conv`), and shrinks until the deployable model fits ``budget``: ``params`` (trainable parameters) or
    ``flops`` (per jet, at the mean multiplicity of the training jets) of the configured student, or
    ``budget_value`` if > 0. From ``start_epochs`` on, every ``reset_every`` steps the ``reset_channels``
    channels (over all blocks; every block keeps ``min_width`` of its configured width) least aligned with the
    teacher's neighbourhoods lose their task gradient for good;
    the group lasso's proximal step then shrinks their compactor rows to zero (a unit row in 1 / (lr *
    compactor_lr_scale) steps), which prunes them. Once the budget is met: lasso off, no more resets,
    fine-tuning (the only epochs that may become best.pt)."""

    teacher_tap: str = ""  # teacher representation for the neighbour search, (B, C_t); LorentzNet: graph_dec.1;
    #                        image teachers: pool (or a feature map, averaged over positions)
    width_factor: float = 2.0
    budget: str = "params"  # params | flops
    budget_value: float = 0.0  # 0: the configured student's
    lasso: float = 1e-2  # group lasso on compactor rows; AdamW: compare with the rows' task gradients (ResRep, SGD: 1e-4)
    threshold: float = 1e-3  # a row below this times its block's largest row norm is pruned (zeroed for good)
    neighbours: int = 8  # top-k teacher neighbours (cosine) of every jet in the memory bank
    bank_size: int = 1024  # jets kept in the memory bank (teacher representation + block activations)
    start_epochs: float = 1.0  # no resets before (ResRep: 5 epochs of lasso alone)
    reset_every: int = 20  # steps between reset selections (ResRep: 200)
    reset_channels: int = 4  # channels newly reset per selection, over all blocks (ResRep: 4)
    min_width: float = 0.25  # every block keeps at least this fraction of its configured width (>= 1 channel)
    kd_weight: float = 1.0  # Hinton KD on the logits, at distill.temperature (0: off)
    compactor_lr_scale: float = 1.0  # compactors' learning rate / optim.lr; a reset unit row is gone in 1 / (lr * scale) steps


@dataclass
class CurriculumOptions:
    """Gupta & Karmalkar 2025. Phase i (``phase_epochs[i]`` epochs) regresses a fixed random Gaussian projection
    (to ``dim``) of ``teacher_taps[i]`` through a linear head on ``student_tap`` (``0.5 ||t_i P_i - h_i(s)||^2``,
    no labels); the remaining ``train.epochs - sum(phase_epochs)`` epochs train on the teacher's logits,
    ``(1 - alpha) * CE + alpha * KD`` at ``distill.temperature`` (alpha 1: pure KD, the paper's last phase)."""

    teacher_taps: list[str] = field(default_factory=list)  # shallow to deep
    student_tap: str = ""
    dim: int = 32
    phase_epochs: list[float] = field(default_factory=list)  # one per teacher tap
    seed: int = 0  # of the random projections
    alpha: float = 1.0  # last phase: weight of the KD term against CE (compare with kd at distill.alpha = this)
