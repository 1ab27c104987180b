"""Curriculum extraction: Gupta & Karmalkar 2025, "Efficient Knowledge Distillation via Curriculum Extraction"
(arXiv:2503.17494).

The paper
---------
Progressive distillation (Panigrahi et al. 2024) trains the student on a sequence of the teacher's *intermediate
training checkpoints*, an implicit curriculum that speeds up learning but requires storing and choosing those
checkpoints. Curriculum extraction gets a curriculum from the *fully trained* teacher alone: the student is
trained, one after another, on fixed random projections of the teacher's hidden representations from shallow
to deep, and finally on the output of the full teacher network (as in one-shot distillation). The paper proves a
sample-complexity gain over one-shot distillation for sparse parities learnt by two-layer networks (matching
progressive distillation) and reports gains with transformers on sparse parity and BERT-style language
modelling, against one-shot distillation at the same training budget.

What this module does
---------------------
For teacher taps ``t_1 .. t_K`` (``distill.curriculum.teacher_taps``, shallow to deep, e.g. LorentzNet
``LGEBs.0``, ``LGEBs.1``, ``graph_dec.1``) and one student tap ``s`` (``student_tap``, e.g. ``phi``, ``rho``,
``blocks``)::

    P_i  (C_t_i, dim), entries N(0, 1 / C_t_i), drawn once from torch.Generator().manual_seed(seed), buffers
    phase i = 1..K   epochs [E_{i-1}, E_i), E_i = phase_epochs[0] + .. + phase_epochs[i-1]   ("extract:<t_i>")
        loss = 0.5 * || t_i P_i - h_i(s) ||^2          (summed over the dim channels, averaged over jets, or over
                                                        real constituents when t_i and s are both per constituent)
    last phase       epochs [E_K, train.epochs)                                               ("kd")
        loss = (1 - alpha) * CE(student, label) + alpha * T^2 KL(softmax(teacher / T) || softmax(student / T))

``h_i`` is a Linear per phase (:func:`jetkd.distill.heads.regressor_for`): one head per teacher tap because the
taps differ in width and kind. A per-constituent teacher tap (B, N, C_t) is projected constituent by
constituent; against a per-constituent student tap (DeepSet ``phi``) the head acts on every constituent, and
against a per-jet student tap (DeepSet ``rho``, MLP ``blocks``) the projected target is averaged over the real
constituents (the same as projecting the averaged tap). Extraction phases use no labels; the student's layers
after ``s`` and the heads of other phases get no gradient. Only the last phase may give ``best.pt``
(:meth:`CurriculumExtraction.selectable`); the deploy form is the student itself: the heads and projections are
training-only and dropped.

Where this deviates from the paper, and why
-------------------------------------------
- In the paper, as we read its summaries, the student's own hidden representation learns each projection (its two-layer networks have
  one hidden layer; its transformer students and teachers are stacks of like layers). Here teacher and student
  are different architectures (a Lorentz-equivariant graph network vs a deep set or an MLP over a fixed number
  of constituents, with other widths and depths; an MLP has no per-constituent layer), so every phase reads one
  configured student tap through a per-phase linear head, as FitNets' regressor does; the heads are dropped at
  deploy, so the deployed student is unchanged in size.
- Scale of the projection: entries N(0, 1/C_t) keep each projected channel at the scale of one teacher channel
  whatever the teacher width, so the loss scale is comparable between phases (a Johnson-Lindenstrauss
  1/sqrt(dim) scaling would make it depend on C_t / dim instead). The projection is only defined up to this
  scale in the method; it changes the relative weight of the regression loss, nothing else.
- The phases are consecutive stretches of one run: one AdamW optimiser and one learning-rate schedule over
  ``train.epochs`` (warm-up and decay are not restarted per phase, so under a decaying schedule the KD phase
  runs at the schedule's tail, as the last epochs of the matched one-shot KD run do). Heads of finished phases
  get no gradient, and AdamW skips them (no weight decay either).
- The last phase is Hinton KD at ``distill.temperature`` (T^2-scaled KL, :func:`jetkd.distill.kd.kd_loss`),
  pure by default (``alpha = 1``: the paper's last phase learns from the teacher's output only); ``alpha < 1``
  mixes in the label cross-entropy as the KD baseline does.
- The paper's sources reachable while writing this (abstract and summaries) give the procedure above but not
  its per-phase budgets or the projection's normalisation; those are configuration here (``phase_epochs``,
  ``dim``) and the choice stated above.

Comparison with one-shot KD at the same number of steps
-------------------------------------------------------
Steps per epoch depend only on the training data and ``train.batch_size``, so a curriculum run and a KD run
with the same ``train.epochs`` take the same number of optimiser steps. The one-shot baseline of a curriculum
config is the same config with ``distill.method: kd``, ``distill.alpha`` equal to ``distill.curriculum.alpha``
and the same ``distill.temperature`` and ``train.epochs``; the curriculum run spends ``sum(phase_epochs)`` of
those epochs on extraction and the rest on KD (:func:`schedule` lists the phases and checks that a KD phase
remains). Example (LorentzNet teacher with 3 blocks, 30 epochs in all, the last 18 of them KD)::

    distill:
      method: curriculum
      teacher: runs/lorentznet/best.pt
      temperature: 2.0
      curriculum:
        teacher_taps: [LGEBs.0, LGEBs.1, LGEBs.2, graph_dec.1]
        student_tap: phi            # deepset; MLP: blocks
        dim: 32
        phase_epochs: [3, 3, 3, 3]
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from jetkd.distill.base import Method, StepOutputs
from jetkd.distill.heads import half_squared_error, regressor_for
from jetkd.distill.kd import kd_loss
from jetkd.distill.options import CurriculumOptions, require_at_least
from jetkd.distill.taps import Tap
from jetkd.errors import InputError

KEY = "distill.curriculum"


def schedule(options: CurriculumOptions, epochs: float) -> list[tuple[str, float, float]]:
    """The phases of a run of ``epochs`` epochs in all: ``[(name, start, end), ...]`` in epochs, the
    extraction phases then ``("kd", sum(phase_epochs), epochs)``. An InputError if no KD epoch remains."""
    bounds = _boundaries(options)
    if bounds[-1] >= epochs:
        raise InputError(f"{KEY}.phase_epochs", f"the extraction phases take {bounds[-1]:g} of the {epochs:g} epochs "
                         "(train.epochs): no epoch is left for the final KD phase")
    starts = [0.0, *bounds]
    names = [f"extract:{t}" for t in options.teacher_taps] + ["kd"]
    return list(zip(names, starts, [*bounds, float(epochs)]))


def _boundaries(options: CurriculumOptions) -> list[float]:
    """Cumulative ends of the extraction phases, in epochs; checks the phase list against the taps."""
    phases = options.phase_epochs
    if len(phases) != len(options.teacher_taps):
        raise InputError(f"{KEY}.phase_epochs", f"{len(phases)} phase lengths for {len(options.teacher_taps)} "
                         f"teacher taps ({KEY}.teacher_taps); give one length in epochs per teacher tap")
    if not all(isinstance(e, (int, float)) and not isinstance(e, bool) and e > 0 for e in phases):
        raise InputError(f"{KEY}.phase_epochs", f"expected positive numbers of epochs, got {phases!r}")
    ends, total = [], 0.0
    for e in phases:
        total += float(e)
        ends.append(total)
    return ends


class CurriculumExtraction(Method):
    """Random projections of the teacher's hidden layers, shallow to deep, then KD on its logits (module docstring).

    Submodules and buffers (after :meth:`setup`): ``heads[i]`` (TapRegressor: student tap -> ``dim`` channels)
    and ``projection<i>`` (C_t_i, dim) for ``teacher_taps[i]``.
    """

    needs_teacher = True

    def __init__(self, options: CurriculumOptions, temperature: float):
        super().__init__()
        if not options.teacher_taps:
            raise InputError(f"{KEY}.teacher_taps", "no teacher taps: give the teacher's hidden layers, shallow to deep")
        if not options.student_tap:
            raise InputError(f"{KEY}.student_tap", "no student tap: give the student module the heads read")
        require_at_least(KEY, options, 1, "dim")
        if not 0 <= options.alpha <= 1:
            raise InputError(f"{KEY}.alpha", f"expected 0 <= alpha <= 1, got {options.alpha}")
        self.ends = _boundaries(options)
        self.options, self.temperature = options, temperature
        self.student_taps = (options.student_tap,)
        self.teacher_taps = tuple(options.teacher_taps)
        self.heads = nn.ModuleList()

    def setup(self, student, teacher, taps: dict[str, Tap], teacher_taps: dict[str, Tap]) -> None:
        """Draw the projections (from ``seed``, not the global RNG) and build one head per teacher tap."""
        g = torch.Generator().manual_seed(self.options.seed)
        s = taps[self.options.student_tap]
        for i, path in enumerate(self.options.teacher_taps):
            t = teacher_taps[path]
            c_t = t.dim
            projection = torch.randn(c_t, self.options.dim, generator=g) / math.sqrt(c_t)
            self.register_buffer(f"projection{i}", projection.to(t.value.device))
            self.heads.append(regressor_for(s, self.project(i, t)).to(s.value.device))

    def project(self, i: int, tap: Tap) -> Tap:
        """``tap`` (B, C_t) or (B, N, C_t) through projection i: (B, dim) or (B, N, dim), same mask; an image
        model's feature map (B, C_t, H, W) is projected channel-wise at every position: (B, dim, H, W)."""
        projection = getattr(self, f"projection{i}")
        if tap.spatial:
            return Tap(torch.einsum("bchw,cd->bdhw", tap.value.float(), projection))
        return Tap(tap.value.float() @ projection, tap.mask)

    def phase_index(self) -> int:
        """The extraction phase now running (0-based), or ``len(teacher_taps)`` in the final KD phase."""
        return sum(self.progress >= end for end in self.ends)

    def phase(self) -> str:
        i = self.phase_index()
        return "kd" if i == len(self.ends) else f"extract:{self.options.teacher_taps[i]}"

    def selectable(self) -> bool:
        return self.phase_index() == len(self.ends)

    def loss(self, out: StepOutputs) -> tuple[torch.Tensor, dict[str, float]]:
        ce = F.cross_entropy(out.logits, out.label)
        kd = kd_loss(out.logits, out.teacher_logits, self.temperature)
        parts = {"ce": ce.item(), "kd": kd.item()}  # monitored in every phase
        i = self.phase_index()
        if i == len(self.ends):
            return (1 - self.options.alpha) * ce + self.options.alpha * kd, parts
        target = self.project(i, out.teacher_taps[self.options.teacher_taps[i]])
        extract = half_squared_error(self.heads[i](out.taps[self.options.student_tap]), target)
        return extract, {**parts, "extract": extract.item()}

    def extra_repr(self) -> str:
        o = self.options
        return (f"teacher_taps={o.teacher_taps}, student_tap={o.student_tap!r}, dim={o.dim}, "
                f"phase_epochs={o.phase_epochs}, seed={o.seed}, alpha={o.alpha}, temperature={self.temperature}")
