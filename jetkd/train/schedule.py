"""Learning-rate schedules as multiplicative factors of the base rate, per optimiser step."""

from __future__ import annotations

import math

from jetkd.config import ScheduleConfig


def lr_factor(cfg: ScheduleConfig, step: int, steps_per_epoch: int, epochs: int) -> float:
    """Factor at optimiser step ``step``: linear warm-up over ``warmup_steps`` (or ``warmup_epochs``), then

    cosine: half a cosine from 1 to 0 over the remaining steps; step: ``gamma ** (epoch // step_epochs)``, or
    with ``milestones`` ``gamma ** (number of milestones passed)`` (epochs may be fractional); constant: 1.
    """
    warmup = cfg.warmup_steps or int(cfg.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return (step + 1) / warmup
    if cfg.name == "cosine":
        total = max(1, epochs * steps_per_epoch - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / total)))
    if cfg.name == "step" and cfg.milestones:
        return cfg.gamma ** sum(step >= m * steps_per_epoch for m in cfg.milestones)
    if cfg.name == "step":
        return cfg.gamma ** ((step // steps_per_epoch) // cfg.step_epochs)
    return 1.0
