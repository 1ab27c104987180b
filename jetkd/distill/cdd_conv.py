"""CDD (:mod:`jetkd.distill.cdd`) on image ResNets: compactors on the inner channels of residual blocks.

Which students
    Any registered model whose constructor takes ``block_widths`` (the inner width of every residual block, in
    forward order; None keeps the plain architecture): today :class:`~jetkd.images.models.CifarResNet` and its
    named variants (``resnet8x4``, ``resnet32x4``, ``resnet20`` / ``56`` / ``110``, ``cifar_resnet``,
    ``digits_resnet``) and the basic-block :class:`~jetkd.images.models.ReIDResNet` (``reid_resnet18``).
    Sites are found by module structure, not by name: every module with children ``conv1`` (Conv2d), ``bn1``
    (BatchNorm2d over conv1's channels), ``relu1``, ``conv2`` (Conv2d taking those channels) and ``shortcut``
    is a residual block with one prunable inner width (a BasicBlock); tracing then checks that ``relu1``'s
    output feeds ``conv2`` and nothing else. ``train_spec`` multiplies these inner widths by ``width_factor``;
    the stem, the stage widths, the shortcuts and conv2's outputs (the residual stream) stay as configured.

Where the compactor sits, and why
    conv1 -> bn1 -> relu1 -> **Q** -> conv2 -> bn2 (+ shortcut) -> relu: a C x C compactor (C = the block's inner
    width, identity at start) on relu1's output, i.e. on conv2's input, mixing channels at every pixel
    (``y[:, d] = sum_c z[:, c] Q[c, d]``, a 1x1 convolution). Row c of Q is all channel c sends on, so pruning
    row c removes conv1's output channel c, bn1's channel c and conv2's input channel c -- the channels ResRep
    and CDD prune in a residual block -- while the residual stream (tied across blocks by the identity
    shortcuts) is left alone. ResRep puts its compactor between the BatchNorm and the ReLU and fuses it backwards
    into conv1 (conv -> BN -> Q: one conv with a bias). Here it follows the ReLU and fuses forwards into conv2,
    as the jet students' compactors fuse into the Linear consuming their block: both placements prune the same
    channels and both fuse exactly, but this one needs no BatchNorm folding -- the deployed block keeps conv1's
    kept filters, bn1's kept channels with their own statistics and affine parameters (a network that can be
    fine-tuned further, BN and all), and conv2 with ``W2'[o, c] = sum_d W2[o, d] Q[c, d]`` over the kept c --
    and the same row convention, lasso, gradient surgery, thresholds, scores and fold serve jets and images.
    As with the jet students, a common scale of Q's rows is undone downstream (ReLU is positively homogeneous
    and bn2 normalises conv2's output), hence the threshold relative to the block's largest row.

What the rest of CDD sees
    The activation a site contributes to the memory bank is relu1's output averaged over pixels, (B, C) per
    image; the teacher representation is ``teacher_tap`` pooled the same way (a feature map (B, C_t, H, W) is
    averaged over positions, a vector such as ``pool`` taken as is). Costs: parameters, and FLOPs per image
    (``FlopCounterMode``: a multiply-accumulate is 2 FLOPs; the deploy summary gives MACs too) at the size of the
    training images (recorded at every training forward; the model's nominal ``input_size`` before the first),
    traced on a meta-device copy of the student for each new size.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from jetkd.distill.base import deploy_copy
from jetkd.distill.cdd import CDD, CostModel, Family, Site
from jetkd.errors import InputError
from jetkd.models import MODELS, build_model

__all__ = ["ConvFamily", "probe_images", "residual_sites"]


def residual_sites(model: nn.Module) -> dict[str, Site]:
    """Every residual block with a prunable inner width (module structure, see the module docstring), in forward
    order: block path -> ``Site(tap=<path>.relu1, producer=<path>.conv1, norm=<path>.bn1)``."""
    sites = {}
    for path, m in model.named_modules():
        conv1, bn1, relu1, conv2 = (getattr(m, k, None) for k in ("conv1", "bn1", "relu1", "conv2"))
        if (isinstance(conv1, nn.Conv2d) and isinstance(bn1, nn.BatchNorm2d) and isinstance(relu1, nn.Module)
                and isinstance(conv2, nn.Conv2d) and hasattr(m, "shortcut")
                and conv1.out_channels == bn1.num_features == conv2.in_channels):
            sites[path] = Site(f"{path}.relu1", f"{path}.conv1", f"{path}.bn1")
    return sites


def probe_images(channels: int):
    """``probe((H, W), device)`` -> ``(images (1, channels, H, W),)``, zeros: one image for tracing."""
    def probe(size: tuple[int, int], device: torch.device | None = None) -> tuple[torch.Tensor]:
        return (torch.zeros(1, channels, *size, device=device),)

    return probe


def meta_model(spec: dict) -> nn.Module:
    """The model ``spec`` builds, on the meta device (structure only: no memory, no random numbers drawn)."""
    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            return build_model(spec)
    except ValueError as e:
        raise InputError("model.block_widths", f"{spec.get('name')!r}: {e}") from e


class ConvFamily(Family):
    """Image ResNets whose constructor takes ``block_widths``: a site per residual block (module docstring)."""

    unit = "image"

    def claims(self, spec: dict) -> bool:
        cls = MODELS.get(spec.get("name"))
        return cls is not None and "block_widths" in inspect.signature(cls).parameters

    def sites(self, model: nn.Module) -> dict[str, Site]:
        return residual_sites(model)

    def spec_widths(self, spec: dict) -> dict[str, int]:
        return self.site_widths(meta_model(spec))

    def with_widths(self, spec: dict, widths: dict[str, int]) -> dict:
        paths = list(self.spec_widths(spec))
        if set(widths) != set(paths):
            raise InputError("model.block_widths", f"{spec.get('name')!r} has residual blocks {paths}, got widths for {sorted(widths)}")
        new = {**spec, "block_widths": [int(widths[p]) for p in paths]}
        if self.spec_widths(new) != {p: int(widths[p]) for p in paths}:
            raise InputError("model.block_widths", f"{spec.get('name')!r} does not build blocks of widths {widths}")
        return new

    def cost_model(self, student: nn.Module, sites: dict[str, Site]) -> CostModel:
        channels, *size = student.input_size
        shadow = deploy_copy(student).to("meta")  # for FLOPs at other image sizes, traced when first needed
        cost = CostModel(student, sites, probe_images(channels), (tuple(size),), shadow)
        for path, consumer in cost.consumer.items():
            if consumer != f"{path}.conv2":
                raise InputError("distill.cdd", f"the output of {path}.relu1 feeds {consumer}, not {path}.conv2: "
                                                "not a residual block CDD can prune")
        return cost

    def sample_buffers(self, student: nn.Module) -> dict[str, torch.Tensor]:
        """``image_size`` (2,) int64: (H, W) of the latest training images (nominal ``input_size`` at first)."""
        return {"image_size": torch.tensor(student.input_size[1:], dtype=torch.long)}

    def count(self, method: CDD, args: tuple) -> None:
        h, w = args[0].shape[-2:]
        method.image_size[0], method.image_size[1] = h, w

    def point(self, method: CDD) -> tuple[int, int]:
        return tuple(int(v) for v in method.image_size.tolist())

    def point_summary(self, method: CDD) -> dict:
        return {"image_size": list(self.point(method))}

    def flops_summary(self, start: float, deployed: float) -> dict:
        return {**super().flops_summary(start, deployed), "start_macs_per_image": start / 2,
                "deployed_macs_per_image": deployed / 2}
