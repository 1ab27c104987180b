"""Distillation methods: each turns (student outputs, teacher outputs, taps) into a loss (DESIGN.md).

    none        the student alone                                   base.NoDistillation
    kd          Hinton et al. 2015                                  kd.HintonKD
    fitnets     Romero et al. 2015: hints, two stages               fitnets.FitNets
    norm        Liu et al. 2023: N-to-one representation matching   norm.NORM
    cdd         Xie et al. 2023: capacity dynamic distillation      cdd.CDD
    curriculum  Gupta & Karmalkar 2025: curriculum extraction       curriculum.CurriculumExtraction
"""

from __future__ import annotations

from jetkd.distill.base import Method, NoDistillation, StepOutputs
from jetkd.distill.kd import HintonKD, kd_loss
from jetkd.distill.taps import Tap, TapRecorder
from jetkd.errors import InputError

__all__ = ["Method", "NoDistillation", "HintonKD", "StepOutputs", "Tap", "TapRecorder", "kd_loss", "build_method"]


def build_method(cfg) -> Method:
    """The method named by a :class:`jetkd.config.DistillConfig`."""
    if cfg.method == "none":
        return NoDistillation()
    if cfg.temperature <= 0:  # every other method has a KD term on logits at this temperature
        raise InputError("distill.temperature", f"must be > 0, got {cfg.temperature}")
    if cfg.method == "kd":
        return HintonKD(cfg.temperature, cfg.alpha)
    if cfg.method == "fitnets":
        from jetkd.distill.fitnets import FitNets

        return FitNets(cfg.fitnets, temperature=cfg.temperature)
    if cfg.method == "norm":
        from jetkd.distill.norm import NORM

        return NORM(cfg.norm, temperature=cfg.temperature)
    if cfg.method == "cdd":
        from jetkd.distill.cdd import CDD

        return CDD(cfg.cdd, temperature=cfg.temperature)
    if cfg.method == "curriculum":
        from jetkd.distill.curriculum import CurriculumExtraction

        return CurriculumExtraction(cfg.curriculum, temperature=cfg.temperature)
    raise ValueError(f"unknown distillation method {cfg.method!r}")
