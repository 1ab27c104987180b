"""Xie, Zhang, Xu, Zhu & He, CVPR 2023, "Towards a Smaller Student: Capacity Dynamic Distillation for Efficient
Image Retrieval" (CDD), built on Ding et al., ICCV 2021, "ResRep: Lossless CNN Pruning via Decoupling Remembering
and Forgetting".

What the papers do
    ResRep inserts a "compactor" (a 1x1 convolution, identity-initialised) after the BatchNorm of every pruned
    convolution (conv -> BN -> compactor -> ReLU). Training adds a group lasso ``lambda * sum_j ||Q_j||_2`` over the
    compactor's output channels (rows) and, every ``mask_interval`` (200) iterations after a lasso-only warm-up
    (5 epochs), sorts all compactor rows of the network by their norm and masks the smallest (``begin_granularity``
    = 4 more per interval) until the masked network meets the FLOPs target. A masked row's gradient is "reset":
    ``grad = mask * task_grad + lambda * Q_j / ||Q_j||`` (SGD, compactor momentum 0.99, no weight decay on
    compactors), so the penalty alone drives it to zero ("forgetting") while the rest of the network keeps
    learning ("remembering"). Afterwards rows below 1e-5 are cut and conv-BN-compactor is merged into one narrower
    conv: the pruned network is exactly the trained one.
    CDD (full text not available to us; this follows its abstract) uses this to let the distilled student start
    heavy, learn from the teacher while it has capacity, and shrink during training: a learnable convolution in
    every residual block is the channel-importance indicator, optimised by the retrieval (distillation) loss and
    the compression loss, and a "retrieval-guided gradient resetting" decides which channels to release, using
    the retrieval structure rather than the indicator's norm.

Here
    * Widths: :meth:`CDD.train_spec` multiplies the configured student's hidden widths by ``width_factor`` (MLP
      ``hidden``; DeepSet ``phi_hidden`` but its last entry, the latent fed to the pooling, which has no
      LinearBlock and so no compactor, and ``rho_hidden``). The configured student is the budget: its parameter
      count, or its FLOPs per jet (:mod:`jetkd.evaluate.flops` convention, at the mean multiplicity of the
      training jets seen), unless ``budget_value`` > 0.
    * Compactors: every LinearBlock (fc -> LeakyReLU -> BN) gets Q (C, C) = I, applied to the block's output by a
      forward hook: ``y = z Q``. Row j of Q is everything channel j sends on; the compression loss is
      ``lasso * sum_blocks sum_j ||Q_j||_2`` and a channel is pruned once its row norm falls below ``threshold``
      times the largest row norm of its block (the row is then zeroed and frozen for good; the largest row always
      stays). At deploy, Q folds into the Linear that consumes the block (found by tracing a probe jet: MLP
      blocks.i -> blocks.i+1.fc -> classifier; DeepSet phi.blocks.i -> ... -> phi.out, rho.blocks.i -> ... ->
      classifier): ``W' = W Q^T`` without the pruned columns, and the block's fc rows and BN channels are cut.
      Exact, no bias to fold.
    * Retrieval-guided resetting, concretely: a memory bank (ring buffer of ``bank_size`` jets) holds each jet's
      teacher representation (``teacher_tap``, L2-normalised) and every block's activation z (per jet; mean over
      real constituents for per-constituent blocks). For each jet of a batch, its ``neighbours`` nearest teacher
      representations (cosine) in the bank are its teacher retrieval list. Channel c of a block scores
      ``mean_i mean_{j in N_k(i)} zhat_ic zhat_jc``, zhat standardised with the bank's mean and std per channel:
      the share of channel c in the student's similarity of each jet to its teacher neighbours, beyond its share
      with the bank at large (zero by the standardisation) -- how far c helps the student retrieve what the
      teacher retrieves. Scores average over the steps since the last selection. Every ``reset_every`` steps
      (from ``start_epochs`` on) the ``reset_channels`` lowest-scoring channels over all blocks, among those not
      yet reset, are reset for good -- fewer if the channels left unreset already fit the budget -- but no block
      keeps fewer than ``min_width`` times its configured width (scores of different blocks are not on one scale).
    * Gradient surgery (:meth:`CDD.after_backward`, analytic lasso gradient, ResRep's rule for kept rows):
      ``grad Q_j = task_grad_j + lasso * Q_j / ||Q_j||`` for kept rows, 0 for reset and pruned rows. A reset row
      is forgotten by the lasso's proximal step instead (:meth:`CDD.after_step`, after the optimiser's):
      ``Q_j <- Q_j * max(0, 1 - eta / ||Q_j||)``, ``eta = lr * compactor_lr_scale``: its norm falls by eta per
      step and reaches exactly 0, so a unit row (the identity's) is gone ~1 / eta steps after its reset.
      The task loss ``CE + kd_weight * T^2 KL`` is what :meth:`CDD.loss` returns; the lasso value is logged.
    * Phases: "shrink" until the deployable model (the unpruned channels) fits the budget (checked after every
      step), then "finetune": lasso off, no new resets, the not-yet-pruned reset channels get their task gradient
      back, pruned ones stay zero. Only finetune epochs are selectable, so best.pt fits the budget.
    * :meth:`CDD.deploy`: a plain student of the configured class with the pruned widths
      (:meth:`CDD.deploy_spec`), equal to the trained student (eval mode, rows below threshold zeroed) up to
      float rounding; :meth:`CDD.deploy_summary`: parameters and FLOPs per jet at the start width and deployed.

Deviations, and why
    * Compactor after the block's BatchNorm, pruning its input side (rows of Q as written ``y = z Q``), instead of
      ResRep's conv -> BN -> compactor -> ReLU fused into the preceding conv. Our blocks put the BatchNorm after
      the activation: a compactor between fc and LeakyReLU would have each row's scale normalised away by that
      BatchNorm (LeakyReLU is positively homogeneous), so the task loss would not resist the lasso on any row and
      row norms would say nothing about importance. After the BatchNorm the scale matters and the fusion into the
      consuming Linear is exact.
    * The threshold is relative to the block's largest row (ResRep: absolute 1e-5). Every compactor but the one
      before the classifier reaches a BatchNorm through a Linear and positively homogeneous maps (the next
      block's LeakyReLU and BN; phi.out, the pooling and rho's input norm), which undoes a common scale of all
      its rows up to biases: the lasso shrinks kept rows too, hardly resisted by the task loss, so only their
      norms relative to each other say which channels are being forgotten.
    * AdamW (the trainer's optimiser, weight decay on compactors included) instead of SGD with momentum 0.99 and
      no decay, and the proximal step for reset rows. Adam normalises the gradient entry by entry: a reset row
      driven by the lasso's gradient through Adam would move by about lr per step and per entry, and then hover
      around zero at that amplitude -- every entry, so its norm stays near lr * sqrt(C) -- and cross the
      pruning threshold only once the schedule has brought lr down (in short runs, the last epochs; with step
      decay, maybe never). Under ResRep's SGD the lasso gradient of a masked row is a step of lr * lambda along
      -Q_j / ||Q_j||, which is exactly the proximal step with eta = lr * lambda; here eta = lr *
      compactor_lr_scale, the speed at which Adam would shrink a unit row. Rows are latched at the first
      crossing of the threshold and kept exactly zero afterwards, so the trained student always is its
      deployable form.
    * The reset mask is persistent and only grows (ResRep recomputes it from the norms every interval); the
      selection uses the teacher-neighbourhood score above instead of the row norm (our reading of CDD's
      retrieval guidance; the paper's exact rule was not available); the lasso stops once the budget is met
      (ResRep keeps it to the end); the task loss is jet classification with Hinton KD instead of the retrieval
      and feature-distillation losses of the image-retrieval setting.
    * Under DDP, DistributedDataParallel broadcasts rank 0's buffers (bank, scores, masks) at every forward, so
      every rank follows rank 0's selections.
"""

from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from jetkd.distill.base import Method, StepOutputs
from jetkd.distill.kd import kd_loss
from jetkd.distill.options import CDDOptions, require_at_least
from jetkd.distill.taps import Tap
from jetkd.errors import InputError
from jetkd.evaluate.flops import count_parameters
from jetkd.models import MODELS, build_model
from jetkd.models.students import LinearBlock

# Per student: (spec key, module prefix of its LinearBlocks, whether the key's last width is not a LinearBlock).
WIDTH_KEYS = {
    "mlp": (("hidden", "blocks", False),),
    "deepset": (("phi_hidden", "phi.blocks", True), ("rho_hidden", "rho.blocks", False)),
}

# Two massless constituents [E, px, py, pz] (GeV): a probe jet of multiplicity 1 or 2 for tracing the student.
PROBE = ((50.0, 30.0, 40.0, 0.0), (25.0, 20.0, 0.0, 15.0))


def group_lasso(rows: list[torch.Tensor], strength: float) -> torch.Tensor:
    """``strength * sum over matrices and rows of ||row||_2``; rows: matrices (C, C') whose rows are groups."""
    return strength * sum(q.norm(dim=1).sum() for q in rows)


def spec_widths(spec: dict) -> dict[str, int]:
    """Width of every LinearBlock of the student ``spec`` builds, by module path (constructor defaults applied)."""
    widths = {}
    for key, prefix, last_fixed in _width_keys(spec):
        values = _values(spec, key)
        widths.update({f"{prefix}.{i}": int(w) for i, w in enumerate(values[: len(values) - last_fixed])})
    return widths


def with_widths(spec: dict, widths: dict[str, int]) -> dict:
    """``spec`` with its LinearBlock widths replaced by ``widths`` (module path -> width)."""
    new = dict(spec)
    for key, prefix, last_fixed in _width_keys(spec):
        values = _values(spec, key)
        new[key] = [int(widths[f"{prefix}.{i}"]) if i < len(values) - last_fixed else int(w) for i, w in enumerate(values)]
    return new


def _width_keys(spec: dict):
    if spec.get("name") not in WIDTH_KEYS:
        raise InputError("model.name", f"CDD shrinks an mlp or deepset student, not {spec.get('name')!r}")
    return WIDTH_KEYS[spec["name"]]


def _values(spec: dict, key: str) -> list[int]:
    default = inspect.signature(MODELS[spec["name"]]).parameters[key].default
    return [int(w) for w in spec.get(key, default)]


def probe_jet(n: int, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A jet of ``n`` (1 or 2) constituents: p4 (1, n, 4), mask (1, n)."""
    p4 = torch.tensor(PROBE[:n], device=device)[None]
    return p4, torch.ones(1, n, dtype=torch.bool, device=device)


class CostModel:
    """Parameters and FLOPs per jet of the student as functions of its LinearBlock widths.

    Built by tracing the student on probe jets of 1 and 2 constituents: which Linear consumes each block's output
    (``consumer``), how many rows every Linear sees per jet (affine in the multiplicity n), and the rest of the
    cost (features, pooling, ...) as a constant, resp. affine in n. Matches ``count_parameters`` and
    ``count_flops`` (multiply-add = 2) of the student built at any widths.
    """

    def __init__(self, student: nn.Module, blocks: dict[str, LinearBlock]):
        self.blocks = blocks
        linears = {name: m for name, m in student.named_modules() if isinstance(m, nn.Linear)}
        traces = [self._trace(student, blocks, linears, n) for n in (1, 2)]  # (block outputs, Linear inputs, FLOPs)
        self.consumer: dict[str, str] = {}
        for path in blocks:
            users = [name for name, x in traces[0][1].items() if x is traces[0][0][path]]
            if len(users) != 1:
                raise InputError("distill.cdd", f"the output of {path} feeds {len(users)} Linear layers; CDD folds "
                                                "a compactor only into a block's single consuming Linear")
            self.consumer[path] = users[0]
        fed = {c: p for p, c in self.consumer.items()}
        owner = {f"{p}.fc": p for p in blocks}
        # (input block or None, output block or None, in_features, out_features, bias, rows at n=1, rows at n=2)
        self.linears = [(fed.get(name), owner.get(name), m.in_features, m.out_features, m.bias is not None,
                         *(t[1][name].numel() // m.in_features for t in traces)) for name, m in linears.items()]
        widths = {p: b.fc.out_features for p, b in blocks.items()}
        self.params_rest = count_parameters(student) - self._params(widths)
        self.flops_rest = [t[2] - self._flops(widths, n) for t, n in zip(traces, (1, 2))]

    @staticmethod
    def _trace(student: nn.Module, blocks: dict[str, LinearBlock], linears: dict[str, nn.Linear], n: int):
        """Block outputs and Linear inputs (tensors) and total FLOPs of one eval forward of a probe jet."""
        outputs, inputs = {}, {}
        handles = [m.register_forward_hook(lambda mod, a, o, p=p: outputs.__setitem__(p, o)) for p, m in blocks.items()]
        handles += [m.register_forward_hook(lambda mod, a, o, p=p: inputs.__setitem__(p, a[0])) for p, m in linears.items()]
        was_training = student.training
        student.eval()
        try:
            device = next(student.parameters()).device
            with torch.no_grad(), FlopCounterMode(display=False) as counter:
                student(*probe_jet(n, device))
        finally:
            student.train(was_training)
            for h in handles:
                h.remove()
        return outputs, inputs, counter.get_total_flops()

    def _dims(self, widths: dict[str, int]):
        for in_block, out_block, d_in, d_out, bias, r1, r2 in self.linears:
            yield (widths[in_block] if in_block else d_in), (widths[out_block] if out_block else d_out), bias, r1, r2

    def _params(self, widths: dict[str, int]) -> int:
        linear = sum(i * o + (o if bias else 0) for i, o, bias, _, _ in self._dims(widths))
        norms = sum(2 * widths[p] for p, b in self.blocks.items() if b.bn.affine)
        return linear + norms

    def _flops(self, widths: dict[str, int], n: float) -> float:
        return sum(2 * i * o * (r1 + (r2 - r1) * (n - 1)) for i, o, _, r1, r2 in self._dims(widths))

    def params(self, widths: dict[str, int]) -> int:
        """Trainable parameters of the student with these block widths."""
        return self.params_rest + self._params(widths)

    def flops(self, widths: dict[str, int], n: float) -> float:
        """FLOPs of one jet of multiplicity ``n`` (a mean multiplicity gives the mean over jets: cost is affine in n)."""
        f1, f2 = self.flops_rest
        return self._flops(widths, n) + f1 + (f2 - f1) * (n - 1)


class Compactor(nn.Module):
    """ResRep's compactor on a block's output, and the block's CDD state.

    weight Q (C, C), identity at start: ``forward(z (..., C)) = z Q``. Buffers: ``reset`` (C,) 1 where the task
    gradient is kept, 0 where reset; ``pruned`` (C,) bool (row zeroed for good); ``bank`` (S, C) the block's
    per-jet activations of the memory bank's jets; ``score_sum`` (C,) float64 neighbour-agreement sums.
    """

    def __init__(self, channels: int, bank_size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.eye(channels))
        self.register_buffer("reset", torch.ones(channels))
        self.register_buffer("pruned", torch.zeros(channels, dtype=torch.bool))
        self.register_buffer("bank", torch.zeros(bank_size, channels))
        self.register_buffer("score_sum", torch.zeros(channels, dtype=torch.float64))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.matmul(z, self.weight)

    def row_norms(self) -> torch.Tensor:
        return self.weight.detach().norm(dim=1)

    def alive(self, threshold: float) -> torch.Tensor:
        """(C,) bool: rows whose norm is at least ``threshold`` times the largest row norm (so the largest always)."""
        norms = self.row_norms()
        keep = norms >= threshold * norms.max()
        keep[norms.argmax()] = True
        return keep


class CDD(Method):
    """Capacity dynamic distillation: a wider student with compactors shrinks under a group lasso on the channels
    the teacher's neighbourhoods find least useful, until it fits the configured student's budget (module
    docstring). Trainable parts: ``compactors`` (one :class:`Compactor` per LinearBlock, built in :meth:`setup`).
    """

    needs_teacher = True

    def __init__(self, options: CDDOptions, temperature: float = 1.0):
        super().__init__()
        o = options
        if not o.teacher_tap:
            raise InputError("distill.cdd.teacher_tap", "needs a teacher representation for the neighbour search, e.g. graph_dec.1")
        if o.budget not in ("params", "flops"):
            raise InputError("distill.cdd.budget", f"{o.budget!r} is not one of params, flops")
        require_at_least("distill.cdd", o, 1, "width_factor", "neighbours", "bank_size", "reset_every", "reset_channels")
        require_at_least("distill.cdd", o, 0, "lasso", "threshold", "budget_value", "start_epochs", "kd_weight")
        if not 0 <= o.min_width <= 1:
            raise InputError("distill.cdd.min_width", f"must be in [0, 1] (a fraction of the configured width), got {o.min_width}")
        self.options, self.temperature = o, temperature
        self.teacher_taps = (o.teacher_tap,)
        self.configured_spec: dict | None = None  # set by train_spec
        self.trained_spec: dict | None = None
        self.configured_widths: dict[str, int] = {}  # block path -> width of the configured student
        self.min_widths: dict[str, int] = {}  # block path -> channels it keeps whatever the scores say
        self.paths: list[str] = []  # LinearBlock paths, one per compactor
        self.compactors = nn.ModuleList()
        self.cost: CostModel | None = None
        self._handles: list = []
        self._acts: dict[int, torch.Tensor] = {}  # per-jet block activations (B, C) of the latest training forward

    # ------------------------------------------------------------------------- set-up

    def train_spec(self, spec: dict) -> dict:
        """The configured student with every LinearBlock width times ``width_factor`` (rounded, >= 1)."""
        widths = {p: max(1, round(w * self.options.width_factor)) for p, w in spec_widths(spec).items()}
        self.configured_spec, self.trained_spec = dict(spec), with_widths(spec, widths)
        return self.trained_spec

    def setup(self, student: nn.Module, teacher: nn.Module | None, taps: dict[str, Tap],
              teacher_taps: dict[str, Tap]) -> None:
        """Trace the student (consumers, cost model), build a compactor per LinearBlock and hook them in."""
        if self.trained_spec is None:
            raise RuntimeError("CDD.setup needs the student built from CDD.train_spec(spec)")
        for h in self._handles:
            h.remove()
        blocks = {p: m for p, m in student.named_modules() if isinstance(m, LinearBlock)}
        expected = spec_widths(self.trained_spec)
        if {p: b.fc.out_features for p, b in blocks.items()} != expected:
            raise RuntimeError(f"CDD.setup: the student's blocks do not match the trained spec {self.trained_spec}")
        self.paths = list(blocks)
        self.configured_widths = spec_widths(self.configured_spec)
        self.min_widths = {p: max(1, math.ceil(self.options.min_width * w)) for p, w in self.configured_widths.items()}
        self.cost = CostModel(student, blocks)
        if self.options.budget == "params":  # FLOPs per jet need the training multiplicity: checked in _select
            self._check_floor_fits()
        device = next(student.parameters()).device
        s, c_t = self.options.bank_size, teacher_taps[self.options.teacher_tap].dim
        self.compactors = nn.ModuleList(Compactor(b.fc.out_features, s) for b in blocks.values()).to(device)
        for name, value in (("teacher_bank", torch.zeros(s, c_t)), ("bank_count", torch.zeros((), dtype=torch.long)),
                            ("bank_next", torch.zeros((), dtype=torch.long)),
                            ("score_count", torch.zeros((), dtype=torch.float64)),
                            ("steps", torch.zeros((), dtype=torch.long)), ("finetuning", torch.zeros((), dtype=torch.bool)),
                            ("jets_seen", torch.zeros((), dtype=torch.float64)),
                            ("constituents_seen", torch.zeros((), dtype=torch.float64))):
            self.register_buffer(name, value.to(device))

        def count_jets(module: nn.Module, args: tuple) -> None:  # training multiplicity, for FLOPs per jet
            if module.training:
                self.jets_seen += args[1].shape[0]
                self.constituents_seen += args[1].sum()

        # Plain functions (closures), not bound methods, like every hook on the student.
        self._handles = [student.register_forward_pre_hook(count_jets)]
        for i, block in enumerate(blocks.values()):
            def compact(module: nn.Module, args: tuple, output: torch.Tensor, i=i) -> torch.Tensor:
                if module.training:
                    mask = args[1] if len(args) > 1 else None
                    self._acts[i] = Tap(output.detach().float(), mask if output.dim() == 3 else None).pooled()
                return self.compactors[i](output)

            self._handles.append(block.register_forward_hook(compact))

    # ------------------------------------------------------------------------- budget

    def widths(self, which: str = "alive") -> dict[str, int]:
        """LinearBlock widths: ``alive`` (unpruned channels: the deployable model) or ``kept`` (alive and not reset)."""
        out = {}
        for path, c in zip(self.paths, self.compactors):
            keep = ~c.pruned if which == "alive" else ~c.pruned & (c.reset > 0)
            out[path] = int(keep.sum())
        return out

    def mean_multiplicity(self) -> float:
        """Mean number of constituents of the training jets seen so far (NaN before the first step)."""
        return float(self.constituents_seen / self.jets_seen) if self.jets_seen > 0 else math.nan

    def cost_of(self, widths: dict[str, int]) -> float:
        """The budgeted cost of the student with these widths: parameters, or FLOPs per jet."""
        if self.options.budget == "params":
            return float(self.cost.params(widths))
        return self.cost.flops(widths, self.mean_multiplicity())

    def budget(self) -> float:
        """``budget_value``, or the cost of the configured student."""
        if self.options.budget_value > 0:
            return self.options.budget_value
        return self.cost_of(self.configured_widths)

    def fits(self, widths: dict[str, int]) -> bool:
        return self.cost_of(widths) <= self.budget()

    # ------------------------------------------------------------------------- phases

    def phase(self) -> str:
        return "finetune" if self.finetuning_now() else "shrink"

    def finetuning_now(self) -> bool:
        return bool(self.compactors) and bool(self.finetuning)

    def selectable(self) -> bool:
        """Only once the deployable model fits the budget."""
        return self.finetuning_now()

    # ------------------------------------------------------------------------- loss and memory bank

    def loss(self, out: StepOutputs) -> tuple[torch.Tensor, dict[str, float]]:
        """The task loss ``CE + kd_weight * T^2 KL`` (the lasso's gradient is added in :meth:`after_backward`);
        updates the memory bank and the channel scores."""
        if len(self._acts) != len(self.compactors) or not self.compactors:
            raise RuntimeError("CDD.loss needs a training forward of the student hooked by CDD.setup")
        acts, self._acts = self._acts, {}
        o = self.options
        ce = F.cross_entropy(out.logits, out.label)
        kd = kd_loss(out.logits, out.teacher_logits, self.temperature) if o.kd_weight > 0 else ce.new_zeros(())
        shrinking = not self.finetuning_now()
        with torch.no_grad():
            self._remember(out.teacher_taps[o.teacher_tap].pooled(), acts, score=shrinking and self.progress >= o.start_epochs)
            lasso = group_lasso([c.weight for c in self.compactors], o.lasso if shrinking else 0.0)
        parts = {"ce": ce.item(), "kd": kd.item(), "lasso": lasso.item(),
                 "cost_over_budget": self.cost_of(self.widths()) / self.budget()}
        return ce + o.kd_weight * kd, parts

    def _remember(self, teacher: torch.Tensor, acts: dict[int, torch.Tensor], score: bool) -> None:
        """Score channels by their agreement on each jet's teacher neighbours in the bank, then add the batch."""
        t = F.normalize(teacher.float(), dim=1)  # (B, C_t)
        n, k = int(self.bank_count), self.options.neighbours
        if score and n >= k:
            neighbours = (t @ self.teacher_bank[:n].T).topk(k, dim=1).indices  # (B, k)
            for i, c in enumerate(self.compactors):
                c.score_sum += neighbour_agreement(acts[i], c.bank[:n], neighbours).sum(0).double()
            self.score_count += t.shape[0]
        size = self.options.bank_size
        t, acts = t[-size:], {i: a[-size:] for i, a in acts.items()}  # a batch larger than the bank: its last jets
        slots = (self.bank_next + torch.arange(t.shape[0], device=t.device)) % size
        self.teacher_bank[slots] = t
        for i, c in enumerate(self.compactors):
            c.bank[slots] = acts[i]
        self.bank_next.copy_((slots[-1] + 1) % size)
        self.bank_count.copy_((self.bank_count + t.shape[0]).clamp(max=size))

    def param_groups(self) -> list[dict]:
        """The compactors at ``compactor_lr_scale`` times the job's learning rate (the same factor sets how fast
        reset rows are forgotten, :meth:`after_step`), so that a short run can prune within it."""
        if self.options.compactor_lr_scale == 1.0:
            return []
        return [{"params": [c.weight for c in self.compactors], "lr_scale": self.options.compactor_lr_scale}]

    # ------------------------------------------------------------------------- gradient surgery and resets

    @torch.no_grad()
    def after_backward(self) -> None:
        """While shrinking: ``grad Q_j = task_grad_j + lasso * Q_j / ||Q_j||`` for kept rows, 0 for reset rows
        (:meth:`after_step` forgets them); pruned rows never get a gradient."""
        finetuning = self.finetuning_now()
        for c in self.compactors:
            g = c.weight.grad
            if g is None:
                continue
            if not finetuning:
                q = c.weight.detach()
                g.add_(self.options.lasso * q / q.norm(dim=1, keepdim=True).clamp(min=1e-12)).mul_(c.reset[:, None])
            g[c.pruned] = 0

    @torch.no_grad()
    def after_step(self) -> None:
        """Shrink reset rows by the lasso's proximal step; prune rows below threshold (zeroed for good); switch to
        fine-tuning once the deployable model fits the budget; else every ``reset_every`` steps from
        ``start_epochs`` on, reset the lowest-scoring channels."""
        self.steps += 1
        eta = self.lr * self.options.compactor_lr_scale
        for c in self.compactors:
            forget = (c.reset == 0) & ~c.pruned  # none once fine-tuning: every unpruned row is kept then
            q = c.weight[forget]
            c.weight[forget] = q * (1 - eta / q.norm(dim=1, keepdim=True).clamp(min=1e-12)).clamp(min=0)
            c.pruned |= ~c.alive(self.options.threshold)
            c.weight[c.pruned] = 0
            c.reset[c.pruned] = 0
        if self.finetuning_now():
            return
        if self.fits(self.widths()):
            self.finetuning.fill_(True)
            for c in self.compactors:
                c.reset.copy_((~c.pruned).float())
            return
        if self.progress >= self.options.start_epochs and int(self.steps) % self.options.reset_every == 0 and self.score_count > 0:
            self._select()

    def _check_floor_fits(self) -> None:
        if not self.fits(self.min_widths):
            raise InputError("distill.cdd.min_width", f"the blocks at their floor {self.min_widths} cost "
                             f"{self.cost_of(self.min_widths):.4g} {self.options.budget}, over the budget "
                             f"{self.budget():.4g}: lower min_width or raise budget_value")

    def _select(self) -> None:
        """Reset up to ``reset_channels`` unreset channels, lowest score first over all blocks, until the kept
        channels fit the budget, each block keeping at least its ``min_widths``; then start new scores.

        Scores of different blocks are not on one scale (per-constituent blocks score a mean over constituents, and
        blocks differ in width), so a global ranking alone can empty a whole block: without a floor, the deep
        set's first phi block shrank to 4 and to 1 channel in the two seeds of the method comparison."""
        if self.options.budget == "flops":
            self._check_floor_fits()
        scores = torch.cat([c.score_sum / self.score_count for c in self.compactors])
        owner = torch.cat([torch.full_like(c.reset, i, dtype=torch.long) for i, c in enumerate(self.compactors)])
        channel = torch.cat([torch.arange(len(c.reset), device=c.reset.device) for c in self.compactors])
        candidate = torch.cat([(c.reset > 0) & ~c.pruned for c in self.compactors])
        kept = self.widths("kept")
        chosen = 0
        for j in torch.sort(scores.masked_fill(~candidate, math.inf), stable=True).indices.tolist():
            if chosen == self.options.reset_channels or not candidate[j] or self.fits(kept):
                break
            path = self.paths[int(owner[j])]
            if kept[path] > self.min_widths[path]:
                self.compactors[int(owner[j])].reset[int(channel[j])] = 0
                kept[path] -= 1
                chosen += 1
        for c in self.compactors:
            c.score_sum.zero_()
        self.score_count.zero_()

    # ------------------------------------------------------------------------- deploy

    @torch.no_grad()
    def deploy(self, student: nn.Module) -> nn.Module:
        """A plain student of the configured class with the pruned widths (:meth:`deploy_spec`): compactors folded
        into their consuming Linears (float64, cast back), pruned channels cut. Eval mode, no hooks."""
        if self.cost is None:
            raise RuntimeError("CDD.deploy before setup")
        keep = {p: c.alive(self.options.threshold) for p, c in zip(self.paths, self.compactors)}
        q = {p: c.weight.detach().double() for p, c in zip(self.paths, self.compactors)}
        state = dict(student.state_dict())
        fed = {consumer: p for p, consumer in self.cost.consumer.items()}
        for name, m in student.named_modules():
            if not isinstance(m, nn.Linear):
                continue
            w = m.weight.detach().double()
            if name in fed:  # W y = W Q^T z: fold the compactor, drop the pruned inputs
                w = (w @ q[fed[name]].T)[:, keep[fed[name]]]
            block = name[: -len(".fc")] if name.endswith(".fc") else None
            if block in keep:
                w = w[keep[block]]
                if m.bias is not None:
                    state[f"{name}.bias"] = m.bias.detach()[keep[block]]
            state[f"{name}.weight"] = w.to(m.weight.dtype)
        for path, kept in keep.items():
            for key in ("weight", "bias", "running_mean", "running_var"):
                if f"{path}.bn.{key}" in state:
                    state[f"{path}.bn.{key}"] = state[f"{path}.bn.{key}"][kept]
        spec = with_widths(self.trained_spec, {p: int(k.sum()) for p, k in keep.items()})
        with torch.random.fork_rng(devices=[]):  # building initialises weights: leave the training's RNG alone
            deployed = build_model(spec)
        deployed.load_state_dict(state)
        return deployed.to(next(student.parameters()).device).eval()

    def deploy_spec(self, spec: dict, deployed: nn.Module) -> dict:
        """``spec`` (the configured student) with the deployed LinearBlock widths."""
        return with_widths(spec, {p: m.fc.out_features for p, m in deployed.named_modules() if isinstance(m, LinearBlock)})

    def deploy_summary(self, student: nn.Module, deployed: nn.Module) -> dict:
        """Parameters and FLOPs per jet (at the training jets' mean multiplicity) at the start width and deployed."""
        start = {p: c.weight.shape[0] for p, c in zip(self.paths, self.compactors)}
        final = {p: m.fc.out_features for p, m in deployed.named_modules() if isinstance(m, LinearBlock)}
        n = self.mean_multiplicity()
        p0, p1 = count_parameters(student), count_parameters(deployed)
        f0, f1 = self.cost.flops(start, n), self.cost.flops(final, n)
        return {"start_widths": start, "deployed_widths": final, "budget": self.options.budget, "budget_value": self.budget(),
                "start_parameters": p0, "deployed_parameters": p1, "parameter_reduction": p0 / p1,
                "mean_multiplicity": n, "start_flops_per_jet": f0, "deployed_flops_per_jet": f1,
                "flops_reduction": f0 / f1 if f1 > 0 else math.nan}

    def extra_repr(self) -> str:
        o = self.options
        return (f"width_factor={o.width_factor}, budget={o.budget}, lasso={o.lasso}, threshold={o.threshold}, "
                f"neighbours={o.neighbours}, bank_size={o.bank_size}, reset_every={o.reset_every}, "
                f"reset_channels={o.reset_channels}, kd_weight={o.kd_weight}, temperature={self.temperature}")


def neighbour_agreement(acts: torch.Tensor, bank: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
    """Per jet and channel: ``mean_{j in neighbours} zhat_ic zhat_jc``, zhat standardised by the bank's per-channel
    mean and std (a constant channel scores 0).

    acts: (B, C) the batch's activations; bank: (S, C) the bank's; neighbours: (B, k) bank indices. Returns (B, C).
    """
    mean, std = bank.mean(0), bank.std(0, unbiased=False)
    scale = torch.where(std > 1e-6 * (1 + mean.abs()), 1 / std, torch.zeros_like(std))
    z_query = (acts - mean) * scale  # (B, C)
    z_neighbours = (bank[neighbours] - mean) * scale  # (B, k, C)
    return (z_query[:, None, :] * z_neighbours).mean(1)
