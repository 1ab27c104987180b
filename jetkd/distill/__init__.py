"""Distillation methods: each turns (student outputs, teacher outputs, taps) into a loss (DESIGN.md).

The methods are registered in :mod:`jetkd.distill.registry` (``none``, ``kd``, ``fitnets``, ``norm``, ``cdd``,
``curriculum``); :func:`build_method` builds the one a config names.
"""

from __future__ import annotations

from jetkd.distill.base import Method, NoDistillation, StepOutputs
from jetkd.distill.kd import HintonKD, kd_loss
from jetkd.distill.taps import Tap, TapRecorder
from jetkd.errors import InputError

__all__ = ["Method", "NoDistillation", "HintonKD", "StepOutputs", "Tap", "TapRecorder", "kd_loss", "build_method"]


def build_method(cfg) -> Method:
    """The method named by a :class:`jetkd.config.DistillConfig`: ``Method.from_config(cfg)`` of its registry
    entry (a method with options gets its ``distill.<name>`` section and ``distill.temperature``)."""
    from jetkd.distill.registry import METHODS

    entry = METHODS[cfg.method]
    if cfg.method != "none" and cfg.temperature <= 0:  # every other method has a KD term at this temperature
        raise InputError("distill.temperature", f"must be > 0, got {cfg.temperature}")
    cls = entry.load()
    if entry.options is None:
        return cls.from_config(cfg)
    return cls(getattr(cfg, entry.name), temperature=cfg.temperature)
