"""The one registry of distillation methods: name -> the Method class, its options section and a summary.

Config validation (:mod:`jetkd.config`: the ``distill.method`` choices and one ``distill.<name>`` section per
method with options) and :func:`jetkd.distill.build_method` both read :data:`METHODS`, so adding a method is one
:func:`register` call here (classes are named by import path and imported when a run builds one).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from jetkd.distill.options import CDDOptions, CurriculumOptions, FitNetsOptions, NormOptions


@dataclass(frozen=True)
class MethodEntry:
    """target: ``"module:Class"`` of the :class:`~jetkd.distill.base.Method`; options: the dataclass of its
    ``distill.<name>`` section (None: the method reads ``distill.temperature`` / ``distill.alpha`` only)."""

    name: str
    target: str
    options: type | None
    summary: str

    def load(self) -> type:
        module, _, cls = self.target.partition(":")
        return getattr(importlib.import_module(module), cls)


METHODS: dict[str, MethodEntry] = {}


def register(name: str, target: str, options: type | None = None, summary: str = "") -> MethodEntry:
    METHODS[name] = MethodEntry(name, target, options, summary)
    return METHODS[name]


register("none", "jetkd.distill.base:NoDistillation", None, "the student alone")
register("kd", "jetkd.distill.kd:HintonKD", None, "Hinton et al. 2015: soft teacher logits at temperature T")
register("fitnets", "jetkd.distill.fitnets:FitNets", FitNetsOptions, "Romero et al. 2015: hints, two stages")
register("norm", "jetkd.distill.norm:NORM", NormOptions, "Liu et al. 2023: N-to-one representation matching")
register("cdd", "jetkd.distill.cdd:CDD", CDDOptions, "Xie et al. 2023: capacity dynamic distillation")
register("curriculum", "jetkd.distill.curriculum:CurriculumExtraction", CurriculumOptions,
         "Gupta & Karmalkar 2025: curriculum extraction")
