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
    * Image students (ResNets whose constructor takes ``block_widths``): :mod:`jetkd.distill.cdd_conv`. One
      compactor per residual block on relu1's output (conv2's input), pruning the block's inner channels
      (conv1's outputs, bn1, conv2's inputs) and folded into conv2; the residual stream is left alone. Everything
      above (lasso, gradient surgery, proximal forgetting, thresholds, bank and scores, budget, phases) is the
      same code: what differs between students is a :class:`Family` (where the compactors sit, which spec keys
      hold the widths, what one sample is for FLOPs) and the layer kinds the shared :class:`CostModel` and
      :meth:`CDD.deploy` handle (Linear and Conv2d, :func:`fold_into_consumer`).

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
      (ResRep keeps it to the end); the task loss is classification (jets or images) with Hinton KD instead of
      the retrieval and feature-distillation losses of the image-retrieval setting.
    * Image ResNets: the compactor follows the block's relu1 and folds forwards into conv2, instead of sitting
      between bn1 and relu1 and folding backwards into conv1 with the BatchNorm (:mod:`jetkd.distill.cdd_conv`
      says why: same channels pruned, exact either way, no BatchNorm folding).
    * Under DDP, DistributedDataParallel broadcasts rank 0's buffers (bank, scores, masks) at every forward, so
      every rank follows rank 0's selections.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

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
    """Width of every compactor site of the student ``spec`` builds, by site path (constructor defaults applied):
    LinearBlocks of a jet student, residual blocks' inner widths of an image ResNet."""
    return family_of(spec).spec_widths(spec)


def with_widths(spec: dict, widths: dict[str, int]) -> dict:
    """``spec`` with its site widths replaced by ``widths`` (site path -> width)."""
    return family_of(spec).with_widths(spec, widths)


def fold_into_consumer(weight: torch.Tensor, q: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The weight of a layer fed by a compactor, with the compactor folded in and pruned inputs dropped.

    weight: (O, C, *kernel) of a Linear (no kernel) or a Conv2d (kh, kw) whose input is ``z Q`` (channels C);
    q: (C, C) the compactor Q; keep: (C,) bool. Returns (O, kept, *kernel): ``W'[o, c] = sum_d W[o, d] Q[c, d]``,
    so the layer applied to z (without Q) computes the same. Exact for convolutions too: zero padding commutes
    with a channel mixing.
    """
    return torch.einsum("od...,cd->oc...", weight, q)[:, keep]


def _layer_dims(m: nn.Module) -> tuple[int, int, int]:
    """(input channels per group, output channels, kernel elements) of a Linear or Conv2d."""
    w = m.weight
    return w.shape[1], w.shape[0], w[0, 0].numel()


@dataclass(frozen=True)
class Site:
    """Where a compactor sits (module paths in the student): the channels produced by ``producer`` (a Linear's
    output features or a Conv2d's output channels; cut at deploy), normalised channel by channel by ``norm`` (a
    BatchNorm; cut at deploy) and handed on as the output of ``tap``, on which the compactor acts; the one
    Linear / Conv2d that consumes that output (found by tracing, :class:`CostModel`) absorbs the compactor."""

    tap: str
    producer: str
    norm: str


class Family:
    """What CDD needs to know about a kind of student, read from its module structure and constructor, never from
    model names: which specs it builds (:meth:`claims`), its site widths in a spec, where its compactors sit in a
    built model, its cost model, and what "one sample" is for FLOPs (:meth:`point`: a jet's mean multiplicity, an
    image's size). Jet students: :class:`JetFamily`; image ResNets: :class:`jetkd.distill.cdd_conv.ConvFamily`."""

    unit = "sample"  # FLOPs are reported per <unit>

    def claims(self, spec: dict) -> bool:
        raise NotImplementedError

    def spec_widths(self, spec: dict) -> dict[str, int]:
        raise NotImplementedError

    def with_widths(self, spec: dict, widths: dict[str, int]) -> dict:
        raise NotImplementedError

    def sites(self, model: nn.Module) -> dict[str, Site]:
        """The compactor sites of a built model, in forward order."""
        raise NotImplementedError

    def site_widths(self, model: nn.Module) -> dict[str, int]:
        """Channels of every site of a built model (its producer's outputs)."""
        return {p: model.get_submodule(s.producer).weight.shape[0] for p, s in self.sites(model).items()}

    def cost_model(self, student: nn.Module, sites: dict[str, Site]) -> CostModel:
        raise NotImplementedError

    def sample_buffers(self, student: nn.Module) -> dict[str, torch.Tensor]:
        """Buffers of the method that follow the training samples (what :meth:`count` updates)."""
        return {}

    def count(self, method: CDD, args: tuple) -> None:
        """Called before every training forward of the student with its arguments."""

    def point(self, method: CDD) -> Any:
        """Where FLOPs per sample are evaluated (the second argument of ``method.cost.flops``)."""
        raise NotImplementedError

    def point_summary(self, method: CDD) -> dict:
        """The point, for the deploy summary (JSON values)."""
        return {}

    def flops_summary(self, start: float, deployed: float) -> dict:
        return {f"start_flops_per_{self.unit}": start, f"deployed_flops_per_{self.unit}": deployed}


class JetFamily(Family):
    """MLP and DeepSet jet students: a site per LinearBlock (fc -> LeakyReLU -> BN; the compactor on the block's
    output), widths from the spec keys of :data:`WIDTH_KEYS`, FLOPs per jet at the training jets' mean
    multiplicity (cost is affine in it)."""

    unit = "jet"

    def claims(self, spec: dict) -> bool:
        return spec.get("name") in WIDTH_KEYS

    def spec_widths(self, spec: dict) -> dict[str, int]:
        widths = {}
        for key, prefix, last_fixed in WIDTH_KEYS[spec["name"]]:
            values = _values(spec, key)
            widths.update({f"{prefix}.{i}": int(w) for i, w in enumerate(values[: len(values) - last_fixed])})
        return widths

    def with_widths(self, spec: dict, widths: dict[str, int]) -> dict:
        new = dict(spec)
        for key, prefix, last_fixed in WIDTH_KEYS[spec["name"]]:
            values = _values(spec, key)
            new[key] = [int(widths[f"{prefix}.{i}"]) if i < len(values) - last_fixed else int(w) for i, w in enumerate(values)]
        return new

    def sites(self, model: nn.Module) -> dict[str, Site]:
        return {p: Site(p, f"{p}.fc", f"{p}.bn") for p, m in model.named_modules() if isinstance(m, LinearBlock)}

    def cost_model(self, student: nn.Module, sites: dict[str, Site]) -> CostModel:
        return JetCostModel(student, sites)

    def sample_buffers(self, student: nn.Module) -> dict[str, torch.Tensor]:
        return {"jets_seen": torch.zeros((), dtype=torch.float64), "constituents_seen": torch.zeros((), dtype=torch.float64)}

    def count(self, method: CDD, args: tuple) -> None:
        method.jets_seen += args[1].shape[0]
        method.constituents_seen += args[1].sum()

    def point(self, method: CDD) -> float:
        return method.mean_multiplicity()

    def point_summary(self, method: CDD) -> dict:
        return {"mean_multiplicity": method.mean_multiplicity()}


JETS = JetFamily()
_FAMILIES: list[Family] = []


def families() -> list[Family]:
    """Every student family CDD knows: jet students, then image ResNets (:mod:`jetkd.distill.cdd_conv`)."""
    if not _FAMILIES:
        from jetkd.distill.cdd_conv import ConvFamily  # it builds on this module

        _FAMILIES.extend([JETS, ConvFamily()])
    return _FAMILIES


def family_of(spec: dict) -> Family:
    """The family of the student ``spec`` builds; an InputError naming ``model.name`` if CDD cannot shrink it."""
    for family in families():
        if family.claims(spec):
            return family
    raise InputError("model.name", f"CDD shrinks an mlp or deepset student, or an image ResNet of BasicBlocks whose "
                                   f"constructor takes block_widths, not {spec.get('name')!r}")


def _values(spec: dict, key: str) -> list[int]:
    default = inspect.signature(MODELS[spec["name"]]).parameters[key].default
    return [int(w) for w in spec.get(key, default)]


def probe_jet(n: int, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A jet of ``n`` (1 or 2) constituents: p4 (1, n, 4), mask (1, n)."""
    p4 = torch.tensor(PROBE[:n], device=device)[None]
    return p4, torch.ones(1, n, dtype=torch.bool, device=device)


class CostModel:
    """Parameters and FLOPs of one sample of the student as functions of its site widths.

    Built by tracing one eval forward of the student per probe input (``probe(key)`` -> the model's arguments
    for one sample, ``keys`` traced at once): which Linear / Conv2d consumes each site's output (``consumer``),
    at how many positions every such layer runs per sample (rows of a Linear, output pixels of a Conv2d), and
    the rest of the cost (layers no width touches count at the traced widths; element-wise operations are not
    counted, :mod:`jetkd.evaluate.flops`) as a constant. A layer fed by site a and producing site b costs
    ``w_a * w_b * kernel`` parameters (+ ``w_b`` bias) and twice that times its positions in FLOPs
    (multiply-add = 2); every site's BatchNorm ``2 w`` parameters. Matches ``count_parameters`` and
    ``FlopCounterMode`` of the student built at any widths. Keys not traced at build are traced when first asked
    for, on ``shadow`` (a hook-free copy of the student, e.g. on the meta device), if given.
    """

    def __init__(self, student: nn.Module, sites: dict[str, Site], probe: Callable[[Hashable], tuple],
                 keys: tuple, shadow: nn.Module | None = None):
        self.sites, self.probe, self.shadow = sites, probe, shadow
        layers = {name: m for name, m in student.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
        traces = {key: self._trace(student, key) for key in keys}  # key -> (tap outputs, layer inputs, layer outputs, FLOPs)
        taps, inputs = traces[keys[0]][0], traces[keys[0]][1]
        self.consumer: dict[str, str] = {}
        for path, site in sites.items():
            users = [name for name, x in inputs.items() if x is taps[path]]
            if len(users) != 1:
                raise InputError("distill.cdd", f"the output of {site.tap} feeds {len(users)} Linear / Conv2d "
                                                "layers; CDD folds a compactor only into its single consuming layer")
            self.consumer[path] = users[0]
        fed = {c: p for p, c in self.consumer.items()}
        owner = {s.producer: p for p, s in sites.items()}
        for name in (*fed, *owner):
            if getattr(layers[name], "groups", 1) != 1:
                raise InputError("distill.cdd", f"{name} is a grouped convolution; CDD prunes ungrouped layers only")
        # (name, input site or None, output site or None, inputs per group, outputs, kernel elements, bias)
        self.layers = [(name, fed.get(name), owner.get(name), *_layer_dims(m), m.bias is not None)
                       for name, m in layers.items()]
        self.affine = {p: bool(student.get_submodule(s.norm).affine) for p, s in sites.items()}
        self.widths0 = {p: student.get_submodule(s.producer).weight.shape[0] for p, s in sites.items()}
        self.params_rest = count_parameters(student) - self._params(self.widths0)
        self.positions: dict[Hashable, list[int]] = {}
        self.flops_rest: dict[Hashable, float] = {}
        for key, trace in traces.items():
            self._record(key, trace)

    def _trace(self, model: nn.Module, key: Hashable):
        """Site outputs, layer inputs and outputs (tensors) and total FLOPs of one eval forward of ``probe(key)``."""
        taps, inputs, outputs = {}, {}, {}

        def record(module: nn.Module, args: tuple, output: torch.Tensor, name: str) -> None:
            inputs[name], outputs[name] = args[0], output

        handles = [model.get_submodule(s.tap).register_forward_hook(lambda mod, a, o, p=p: taps.__setitem__(p, o))
                   for p, s in self.sites.items()]
        handles += [m.register_forward_hook(lambda mod, a, o, name=name: record(mod, a, o, name))
                    for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), FlopCounterMode(display=False) as counter:
                model(*self.probe(key, next(model.parameters()).device))
        finally:
            model.train(was_training)
            for h in handles:
                h.remove()
        return taps, inputs, outputs, counter.get_total_flops()

    def _record(self, key: Hashable, trace) -> None:
        outputs = trace[2]
        self.positions[key] = [outputs[name].numel() // d_out for name, _, _, _, d_out, _, _ in self.layers]
        self.flops_rest[key] = trace[3] - self._layer_flops(self.widths0, self.positions[key])

    def _dims(self, widths: dict[str, int]):
        """(inputs, outputs, kernel elements, bias) of every layer at these site widths."""
        for _, in_site, out_site, d_in, d_out, kernel, bias in self.layers:
            yield (widths[in_site] if in_site else d_in), (widths[out_site] if out_site else d_out), kernel, bias

    def _params(self, widths: dict[str, int]) -> int:
        layers = sum(i * o * k + (o if bias else 0) for i, o, k, bias in self._dims(widths))
        return layers + sum(2 * widths[p] for p, affine in self.affine.items() if affine)

    def _layer_flops(self, widths: dict[str, int], positions: list[int]) -> float:
        return sum(2 * i * o * k * r for (i, o, k, _), r in zip(self._dims(widths), positions))

    def params(self, widths: dict[str, int]) -> int:
        """Trainable parameters of the student with these site widths."""
        return self.params_rest + self._params(widths)

    def flops_at(self, widths: dict[str, int], key: Hashable) -> float:
        """FLOPs of one sample ``probe(key)`` of the student with these site widths."""
        if key not in self.positions:
            if self.shadow is None:
                raise KeyError(f"the cost model was not traced at {key!r}")
            self._record(key, self._trace(self.shadow, key))
        return self._layer_flops(widths, self.positions[key]) + self.flops_rest[key]

    def flops(self, widths: dict[str, int], point: Any) -> float:
        """FLOPs of one sample at ``point`` (:meth:`Family.point`)."""
        return self.flops_at(widths, point)


class JetCostModel(CostModel):
    """:class:`CostModel` of a jet student, traced on probe jets of 1 and 2 constituents: FLOPs per jet are affine
    in the multiplicity n, so :meth:`flops` takes any n (a mean multiplicity gives the mean over jets)."""

    def __init__(self, student: nn.Module, sites: dict[str, Site]):
        super().__init__(student, sites, probe_jet, (1, 2))

    def flops(self, widths: dict[str, int], n: float) -> float:
        """FLOPs of one jet of multiplicity ``n``."""
        f1, f2 = self.flops_at(widths, 1), self.flops_at(widths, 2)
        return f1 + (f2 - f1) * (n - 1)


class Compactor(nn.Module):
    """ResRep's compactor on a site's output, and the site's CDD state.

    weight Q (C, C), identity at start: ``forward(z (..., C)) = z Q``, channels last; a feature map z (B, C, H, W)
    is mixed along its channel dimension, ``y[:, d] = sum_c z[:, c] Q[c, d]`` (a 1x1 convolution with kernel
    Q^T). Buffers: ``reset`` (C,) 1 where the task gradient is kept, 0 where reset; ``pruned`` (C,) bool (row
    zeroed for good); ``bank`` (S, C) the site's per-sample activations of the memory bank's samples;
    ``score_sum`` (C,) float64 neighbour-agreement sums.
    """

    def __init__(self, channels: int, bank_size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.eye(channels))
        self.register_buffer("reset", torch.ones(channels))
        self.register_buffer("pruned", torch.zeros(channels, dtype=torch.bool))
        self.register_buffer("bank", torch.zeros(bank_size, channels))
        self.register_buffer("score_sum", torch.zeros(channels, dtype=torch.float64))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() == 4:  # (B, C, H, W)
            return F.conv2d(z, self.weight.t()[:, :, None, None])
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
    docstring). Trainable parts: ``compactors`` (one :class:`Compactor` per site -- LinearBlock of a jet
    student, residual block of an image ResNet (:mod:`jetkd.distill.cdd_conv`) -- built in :meth:`setup`).
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
        self.family: Family | None = None  # the student's kind (jets, image ResNets), set by train_spec
        self.configured_widths: dict[str, int] = {}  # site path -> width of the configured student
        self.min_widths: dict[str, int] = {}  # site path -> channels it keeps whatever the scores say
        self.paths: list[str] = []  # site paths, one per compactor
        self.sites: dict[str, Site] = {}
        self.compactors = nn.ModuleList()
        self.cost: CostModel | None = None
        self._handles: list = []
        self._acts: dict[int, torch.Tensor] = {}  # per-sample site activations (B, C) of the latest training forward

    # ------------------------------------------------------------------------- set-up

    def train_spec(self, spec: dict) -> dict:
        """The configured student with every site width (LinearBlock widths; residual blocks' inner widths) times
        ``width_factor`` (rounded, >= 1)."""
        self.family = family_of(spec)
        widths = {p: max(1, round(w * self.options.width_factor)) for p, w in self.family.spec_widths(spec).items()}
        self.configured_spec, self.trained_spec = dict(spec), self.family.with_widths(spec, widths)
        return self.trained_spec

    def setup(self, student: nn.Module, teacher: nn.Module | None, taps: dict[str, Tap],
              teacher_taps: dict[str, Tap]) -> None:
        """Trace the student (consumers, cost model), build a compactor per site and hook them in."""
        if self.trained_spec is None:
            raise RuntimeError("CDD.setup needs the student built from CDD.train_spec(spec)")
        for h in self._handles:
            h.remove()
        family = self.family
        self.sites = family.sites(student)
        if family.site_widths(student) != family.spec_widths(self.trained_spec):
            raise RuntimeError(f"CDD.setup: the student's blocks do not match the trained spec {self.trained_spec}")
        self.paths = list(self.sites)
        self.configured_widths = family.spec_widths(self.configured_spec)
        self.min_widths = {p: max(1, math.ceil(self.options.min_width * w)) for p, w in self.configured_widths.items()}
        self.cost = family.cost_model(student, self.sites)  # before the compactors are hooked in
        if self.options.budget == "params":  # FLOPs per sample need the training samples: checked in _select
            self._check_floor_fits()
        device = next(student.parameters()).device
        s, c_t = self.options.bank_size, teacher_taps[self.options.teacher_tap].dim
        self.compactors = nn.ModuleList(Compactor(w, s) for w in self.cost.widths0.values()).to(device)
        for name, value in (("teacher_bank", torch.zeros(s, c_t)), ("bank_count", torch.zeros((), dtype=torch.long)),
                            ("bank_next", torch.zeros((), dtype=torch.long)),
                            ("score_count", torch.zeros((), dtype=torch.float64)),
                            ("steps", torch.zeros((), dtype=torch.long)), ("finetuning", torch.zeros((), dtype=torch.bool)),
                            *family.sample_buffers(student).items()):
            self.register_buffer(name, value.to(device))

        def count_samples(module: nn.Module, args: tuple) -> None:  # training multiplicity / image size, for FLOPs
            if module.training:
                family.count(self, args)

        # Plain functions (closures), not bound methods, like every hook on the student.
        self._handles = [student.register_forward_pre_hook(count_samples)]
        for i, site in enumerate(self.sites.values()):
            def compact(module: nn.Module, args: tuple, output: torch.Tensor, i=i) -> torch.Tensor:
                if module.training:  # per-sample activations (B, C): mean over real constituents or pixels
                    mask = args[1] if len(args) > 1 else None
                    self._acts[i] = Tap(output.detach().float(), mask if output.dim() == 3 else None).pooled()
                return self.compactors[i](output)

            self._handles.append(student.get_submodule(site.tap).register_forward_hook(compact))

    # ------------------------------------------------------------------------- budget

    def widths(self, which: str = "alive") -> dict[str, int]:
        """Site widths: ``alive`` (unpruned channels: the deployable model) or ``kept`` (alive and not reset)."""
        out = {}
        for path, c in zip(self.paths, self.compactors):
            keep = ~c.pruned if which == "alive" else ~c.pruned & (c.reset > 0)
            out[path] = int(keep.sum())
        return out

    def mean_multiplicity(self) -> float:
        """Jet students: mean number of constituents of the training jets seen so far (NaN before the first step)."""
        return float(self.constituents_seen / self.jets_seen) if self.jets_seen > 0 else math.nan

    def cost_of(self, widths: dict[str, int]) -> float:
        """The budgeted cost of the student with these widths: parameters, or FLOPs per sample (jet or image)."""
        if self.options.budget == "params":
            return float(self.cost.params(widths))
        return self.cost.flops(widths, self.family.point(self))

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
        """A plain student of the configured class with the pruned widths (:meth:`deploy_spec`): every compactor
        folded into the layer consuming its site (:func:`fold_into_consumer`, float64, cast back), pruned channels
        cut from the site's producer (rows / output channels, bias) and BatchNorm. Eval mode, no hooks."""
        if self.cost is None:
            raise RuntimeError("CDD.deploy before setup")
        keep = {p: c.alive(self.options.threshold) for p, c in zip(self.paths, self.compactors)}
        q = {p: c.weight.detach().double() for p, c in zip(self.paths, self.compactors)}
        state = dict(student.state_dict())
        fed = {consumer: p for p, consumer in self.cost.consumer.items()}
        owner = {s.producer: p for p, s in self.sites.items()}
        for name, m in student.named_modules():
            if not isinstance(m, (nn.Linear, nn.Conv2d)):
                continue
            w = m.weight.detach().double()
            if name in fed:  # W y = W (z Q): fold the compactor, drop the pruned inputs
                w = fold_into_consumer(w, q[fed[name]], keep[fed[name]])
            if name in owner:  # the site's channels: drop the pruned outputs
                w = w[keep[owner[name]]]
                if m.bias is not None:
                    state[f"{name}.bias"] = m.bias.detach()[keep[owner[name]]]
            state[f"{name}.weight"] = w.to(m.weight.dtype)
        for path, kept in keep.items():
            norm = self.sites[path].norm
            for key in ("weight", "bias", "running_mean", "running_var"):
                if f"{norm}.{key}" in state:
                    state[f"{norm}.{key}"] = state[f"{norm}.{key}"][kept]
        spec = self.family.with_widths(self.trained_spec, {p: int(k.sum()) for p, k in keep.items()})
        with torch.random.fork_rng(devices=[]):  # building initialises weights: leave the training's RNG alone
            deployed = build_model(spec)
        deployed.load_state_dict(state)
        return deployed.to(next(student.parameters()).device).eval()

    def deploy_spec(self, spec: dict, deployed: nn.Module) -> dict:
        """``spec`` (the configured student) with the deployed site widths (LinearBlock widths; ``block_widths``)."""
        return self.family.with_widths(spec, self.family.site_widths(deployed))

    def deploy_summary(self, student: nn.Module, deployed: nn.Module) -> dict:
        """Parameters and FLOPs per sample (jets: at the training jets' mean multiplicity; images: at the training
        images' size, and multiply-accumulates) at the start width and deployed."""
        start = {p: c.weight.shape[0] for p, c in zip(self.paths, self.compactors)}
        final = self.family.site_widths(deployed)
        point = self.family.point(self)
        p0, p1 = count_parameters(student), count_parameters(deployed)
        f0, f1 = self.cost.flops(start, point), self.cost.flops(final, point)
        return {"start_widths": start, "deployed_widths": final, "budget": self.options.budget, "budget_value": self.budget(),
                "start_parameters": p0, "deployed_parameters": p1, "parameter_reduction": p0 / p1,
                **self.family.point_summary(self), **self.family.flops_summary(f0, f1),
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
