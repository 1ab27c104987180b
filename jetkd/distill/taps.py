"""Taps: named hidden representations of a model, captured by forward hooks on module paths (DESIGN.md).

A tap is the output of the module at a path (:func:`module_at`); a module returning a tuple (a
LorentzNet block returns ``(h, x)``) is tapped at its first element. Per-constituent taps, (B, N, C), carry
their mask (B, N) bool: the first boolean tensor among the module's inputs shaped like the tap's leading
dimensions. Models whose per-node tensors put extra nodes before the constituents say so with an
``extra_nodes`` attribute (LorentzNet: the two beams); taps drop them, so teacher and student per-constituent
taps line up constituent by constituent. Image models' feature maps, (B, C, H, W), are *spatial* taps (no
mask; :meth:`Tap.pooled` averages over positions).

    recorder = TapRecorder(student, ["phi.blocks.0", "rho"])
    with recorder:                     # record while inside
        logits = student(p4, mask)
    recorder.taps["phi.blocks.0"].value, recorder.taps["phi.blocks.0"].mask   # (B, N, 128), (B, N)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from jetkd.errors import InputError


@dataclass
class Tap:
    """value: (B, C) per jet (or image), (B, N, C) per constituent, or (B, C, H, W) a feature map; mask: (B, N)
    bool (per constituent) or None."""

    value: torch.Tensor
    mask: torch.Tensor | None = None

    @property
    def per_constituent(self) -> bool:
        return self.mask is not None

    @property
    def spatial(self) -> bool:
        """A feature map (B, C, H, W) of an image model."""
        return self.mask is None and self.value.dim() == 4

    @property
    def dim(self) -> int:
        """Channels C."""
        return self.value.shape[1] if self.spatial else self.value.shape[-1]

    def pooled(self) -> torch.Tensor:
        """(B, C): the mean over real constituents or over positions, or the value itself for a per-jet tap."""
        if self.spatial:
            return self.value.mean((2, 3))
        if self.mask is None:
            return self.value
        w = self.mask.to(self.value.dtype)[..., None]
        return (self.value * w).sum(-2) / w.sum(-2).clamp(min=1.0)


def module_at(model: nn.Module, path: str) -> nn.Module | None:
    """The module at ``path``: a registered submodule, or a module-valued attribute such as the quantization-aware
    students' ``classifier`` (a property naming their chain's last layer); None if there is none."""
    try:
        return model.get_submodule(path)
    except AttributeError:
        module = model
        for name in path.split("."):
            module = getattr(module, name, None)
            if not isinstance(module, nn.Module):
                return None
        return module


def check_paths(model: nn.Module, paths: Sequence[str], where: str) -> None:
    """Every path must name a module of ``model`` (:func:`module_at`); otherwise an InputError listing the
    available paths."""
    for path in paths:
        if not path or module_at(model, path) is None:
            available = [name for name, _ in model.named_modules() if name]
            raise InputError(where, f"{path!r}: no such module in {type(model).__name__}; available: {', '.join(available)}")


class TapRecorder:
    """Forward hooks on ``paths`` of ``model`` that fill ``self.taps`` while the recorder is entered.

    The hooks stay registered until :meth:`remove`; outside a ``with`` block they do nothing, so the model
    runs (evaluation, checkpoints) as if untapped. ``where`` names the config key in error messages.
    """

    def __init__(self, model: nn.Module, paths: Sequence[str], where: str = "taps"):
        check_paths(model, paths, where)
        self.paths = tuple(dict.fromkeys(paths))
        self.taps: dict[str, Tap] = {}
        self.active = False
        extra = getattr(model, "extra_nodes", 0)
        self._handles = [module_at(model, p).register_forward_hook(self._hook(p, extra)) for p in self.paths]

    def _hook(self, path: str, extra: int):
        def hook(module, inputs, output):
            if not self.active:
                return
            value = output[0] if isinstance(output, (tuple, list)) else output
            mask = None
            if value.dim() == 3:  # per constituent; (B, C, H, W) feature maps are spatial taps
                mask = next((t for t in inputs if isinstance(t, torch.Tensor) and t.dtype == torch.bool
                             and t.shape == value.shape[:-1]), None)
                if mask is None:
                    mask = value.new_ones(value.shape[:-1], dtype=torch.bool)
                if extra:
                    value, mask = value[:, extra:], mask[:, extra:]
            self.taps[path] = Tap(value, mask)

        return hook

    def __enter__(self) -> "TapRecorder":
        self.taps, self.active = {}, True
        return self

    def __exit__(self, *exc) -> None:
        self.active = False

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
