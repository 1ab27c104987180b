"""Distillation methods: each turns (student outputs, teacher outputs, taps) into a loss (DESIGN.md)."""

from __future__ import annotations

from jetkd.distill.base import Method, NoDistillation, StepOutputs
from jetkd.distill.kd import HintonKD, kd_loss

__all__ = ["Method", "NoDistillation", "HintonKD", "StepOutputs", "kd_loss", "build_method"]


def build_method(cfg) -> Method:
    """The method named by a :class:`jetkd.config.DistillConfig`."""
    if cfg.method == "none":
        return NoDistillation()
    if cfg.method == "kd":
        return HintonKD(cfg.temperature, cfg.alpha)
    raise ValueError(f"unknown distillation method {cfg.method!r}")
