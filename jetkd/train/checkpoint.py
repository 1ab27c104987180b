"""Checkpoints: atomic writes, and models rebuilt from the config stored beside their weights."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from jetkd.errors import InputError


def save_atomic(obj: dict, path: str | Path) -> Path:
    """``torch.save`` to a temporary name in the same folder, then rename: a kill never leaves half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | Path) -> dict:
    """A jetkd checkpoint (tensors, numbers, strings and the resolved config only: ``weights_only`` loading)."""
    path = Path(path)
    if path.is_dir():
        path = path / "best.pt"
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InputError(str(path), "no such checkpoint") from None
    except Exception as err:  # truncated or foreign file
        raise InputError(str(path), f"not a readable checkpoint ({err.__class__.__name__}: {str(err)[:200]})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise InputError(str(path), "not a jetkd checkpoint (expected keys 'model' and 'config')")
    return ckpt


def load_model(path: str | Path) -> nn.Module:
    """The trained model of a checkpoint (or run folder: its ``best.pt``), in eval mode on the CPU: the deploy
    form where the checkpoint has one (NORM folded, CDD pruned, heads dropped), else the trained model."""
    from jetkd.models import build_model

    ckpt = load_checkpoint(path)
    spec, state = ckpt["config"]["model"], ckpt["model"]
    if "deployed" in ckpt:
        spec, state = ckpt["deployed"]["spec"], ckpt["deployed"]["model"]
    model = build_model(spec)
    model.load_state_dict(state)
    return model.eval()
