"""Export of trained taggers: the deploy form, checked against PyTorch before anything is written.

    onnx     jetkd.export.onnx.export_onnx: ONNX for HLT / offline inference (onnxruntime), contract in the metadata
    hls      jetkd.export.hls.export_hls4ml: hls4ml project(s) of a student, checked by its C simulation

Shared here: :func:`check_jets` (the real jets an export is checked on), :func:`require` (the optional export
packages) and :func:`quiet` (the exporters' notes kept off the user's screen).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path

import numpy as np

from jetkd.errors import InputError


def require(module: str):
    """``import module``, or an :class:`InputError` saying how to install the export stack."""
    try:
        return __import__(module)
    except ImportError:
        raise InputError("jetkd export", f"needs the {module} package: pip install 'jetkd[export]'") from None


@contextlib.contextmanager
def quiet():
    """The exporter's notes (torchvision ops it skips, axis renaming, deprecations) kept off the user's screen."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def check_jets(tagger, data: str | Path | None, n_jets: int,
                splits: tuple[str, ...] = ("val", "test", "train")) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The jets an export is checked on, up to ``n_jets`` real ones: padded ``p4`` (B, N, 4), ``mask`` (B, N) and ``label`` (B,) (-1 if unknown).
    From ``data`` (a jetkd cache or any reader format), else the first of the run's cache files ``splits``
    (from the checkpoint's config) that still exists."""
    from jetkd.data.cache import JetCache
    from jetkd.train.checkpoint import load_checkpoint

    if data is None:  # the run's caches: as configured (maybe relative to where it ran), else as trained on
        configured = load_checkpoint(tagger.source)["config"].get("data", {})
        trained = {s: v.get("cache", "") for s, v in tagger.contract.provenance.items()}
        candidates = [c.get(s) for s in splits for c in (configured, trained)]
        data = next((c for c in candidates if c and Path(c).is_file()), None)
        if data is None:
            raise InputError(str(tagger.source), "no jets to check the export on: the run's caches are gone; "
                                                 "give --data FILE")
    path = Path(data)
    if not path.is_file():
        raise InputError(str(path), "no such file")
    try:
        cache = JetCache(path)
    except InputError:  # not a cache: any format the readers know
        from jetkd.data.sources import iter_chunks

        chunk = next(iter_chunks(path, step_size=n_jets, label_mode="optional"), None)
        if chunk is None or not chunk.ok.any():
            raise InputError(str(path), "no jets to check the export on") from None
        p4, n = chunk.padded(int(chunk.counts.max()))
        keep = chunk.ok
        return p4[keep], (np.arange(p4.shape[1]) < n[:, None])[keep], chunk.label[keep]
    p4, n, label = cache.rows(np.arange(min(n_jets, len(cache))))
    return p4, np.arange(p4.shape[1]) < n[:, None], label
