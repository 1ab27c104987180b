"""Run a model over batches of jets and collect its class probabilities."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch import nn

from jetkd.data.loader import JetBatch
from jetkd.tagger import softmax

Transform = Callable[[torch.Tensor], torch.Tensor]


def stage_batches(batches: Iterable[JetBatch], device: str | torch.device = "cpu") -> list[JetBatch]:
    """Read ``batches`` once into a list on ``device``, so a scan over many transforms re-reads nothing.

    A test set of 400k jets x 200 constituents is about 1.3 GB of float32 four-vectors: it fits on a GPU.
    """
    device = torch.device(device)
    return [b if b.p4.device == device else b.to(device, non_blocking=True) for b in batches]


def _autocast(device: torch.device, amp: bool):
    if amp and device.type == "cuda":
        # bfloat16, not float16: Minkowski products of GeV-scale momenta (~1e6 GeV^2) overflow float16.
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def predict(
    model: nn.Module,
    batches: Iterable[JetBatch],
    *,
    device: str | torch.device = "cpu",
    transform: Transform | None = None,
    amp: bool = False,
    inputs: Callable | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities of ``model`` over ``batches``.

    model:     ``model(p4, mask) -> logits (B, n_class)``, already on ``device``; run in eval mode under
               ``torch.no_grad()`` (its train/eval mode is restored afterwards).
    batches:   iterable of :class:`~jetkd.data.loader.JetBatch` (moved to ``device`` batch by batch).
    transform: optional ``p4 (B, N, 4) -> p4 (B, N, 4)`` applied to each batch's constituents (e.g. a boost);
               entries where ``mask`` is False are set back to zero afterwards, the mask is unchanged.
    amp:       bfloat16 autocast on CUDA (ignored elsewhere). Softmax is taken in float64 either way.
    inputs:    ``batch -> model arguments`` for other batches than jets (images: ``lambda b: (b.images,)``;
               moved to ``device``; ``transform`` does not apply).

    Returns ``scores`` (n_jets, n_class) float64 softmax probabilities and ``labels`` (n_jets,) int64, in
    batch order. With no batches at all, arrays of shape (0, 0) and (0,).
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    scores, labels = [], []
    try:
        with torch.no_grad():
            for batch in batches:
                if inputs is not None:
                    args = tuple(x.to(device, non_blocking=True) for x in inputs(batch))
                else:
                    p4 = batch.p4.to(device, non_blocking=True)
                    mask = batch.mask.to(device, non_blocking=True)
                    if transform is not None:
                        p4 = transform(p4).masked_fill(~mask[..., None], 0.0)
                    args = (p4, mask)
                with _autocast(device, amp):
                    logits = model(*args)
                scores.append(logits.detach().cpu().double().numpy())
                labels.append(batch.label.cpu().numpy())
    finally:
        model.train(was_training)
    if not scores:
        return np.zeros((0, 0)), np.zeros((0,), dtype=np.int64)
    return softmax(np.concatenate(scores)), np.concatenate(labels).astype(np.int64)
