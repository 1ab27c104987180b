"""``jetkd export RUN --format onnx``: a trained tagger as one ONNX graph, preprocessing included.

The exported graph is the :class:`~jetkd.tagger.Tagger` of the run's deploy form (NORM folded, CDD pruned, training
heads dropped): inputs ``p4`` (batch, N, 4) float32 ``[E, px, py, pz]`` GeV and ``mask`` (batch, N) bool, output
``logits`` (batch, n_class); batch and N are dynamic, and the graph orders the constituents by pT and cuts or pads
them to the model's own count for any N. It is written with PyTorch's dynamo exporter (the legacy exporter has no
``aten::asinh``). The input contract is stored as JSON in the model's metadata (``jetkd_contract``), so
:func:`jetkd.load` and ``jetkd score`` rebuild an ONNX tagger from the file alone.

Before the file is written, onnxruntime runs it on real jets (the run's validation cache, or ``data``) padded to
several lengths, and its logits are compared with PyTorch's; above ``tolerance`` (default 1e-4) the export fails and
leaves nothing behind.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from jetkd.errors import InputError
from jetkd.export import check_jets, quiet, require

TOLERANCE = 1e-4
PARITY_JETS = 256
METADATA_KEY = "jetkd_contract"


class ExportError(RuntimeError):
    """The exported graph does not compute what the PyTorch model computes (parity check failed)."""


def _widths(n_max: int, longest: int) -> list[int]:
    """Padding lengths to check: shorter than the model reads (jets cut), its own count, and longer."""
    return sorted({max(1, n_max // 2), n_max, max(n_max, longest) + 7})


def _padded(p4: np.ndarray, mask: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    out_p4, out_mask = np.zeros((len(p4), width, 4), np.float32), np.zeros((len(p4), width), bool)
    k = min(width, p4.shape[1])
    out_p4[:, :k], out_mask[:, :k] = p4[:, :k], mask[:, :k]
    out_p4[~out_mask] = 0
    return out_p4, out_mask


def export_onnx(run: str | Path, out: str | Path, *, data: str | Path | None = None,
                tolerance: float = TOLERANCE) -> dict:
    """Export the tagger of ``run`` (folder, best.pt or last.pt) to ``out`` (.onnx); returns the parity report
    ``{"max_abs_diff", "widths", "n_jets", "out"}``. :class:`ExportError` if onnxruntime and PyTorch differ by more
    than ``tolerance`` on real jets (nothing is written then); :class:`InputError` for bad arguments."""
    require("onnx"), require("onnxscript"), require("onnxruntime")
    import onnx
    import onnxruntime as ort

    from jetkd.tagger import load

    out = Path(out)
    if out.suffix != ".onnx":
        raise InputError(str(out), "expected an output file name ending in .onnx")
    if not out.parent.is_dir():
        raise InputError(str(out.parent), "output directory does not exist")
    tagger = load(run)
    p4, mask, _ = check_jets(tagger, data, PARITY_JETS)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        batch, n = torch.export.Dim("batch"), torch.export.Dim("n_constituents", min=1)
        example = (torch.from_numpy(p4[:8]), torch.from_numpy(mask[:8]))
        with quiet():
            torch.onnx.export(tagger, example, str(tmp), dynamo=True, input_names=["p4", "mask"],
                              output_names=["logits"], dynamic_shapes={"p4": {0: batch, 1: n}, "mask": {0: batch, 1: n}},
                              external_data=False, verbose=False)
        model = onnx.load(str(tmp))
        onnx.helper.set_model_props(model, {METADATA_KEY: json.dumps(tagger.contract.to_dict())})
        onnx.save(model, str(tmp))
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        widths = _widths(tagger.contract.max_constituents, p4.shape[1])
        worst = 0.0
        for width in widths:
            x, m = _padded(p4, mask, width)
            onnx_logits = session.run(None, {"p4": x, "mask": m})[0]
            with torch.no_grad():
                torch_logits = tagger(torch.from_numpy(x), torch.from_numpy(m)).numpy()
            worst = max(worst, float(np.abs(onnx_logits - torch_logits).max()))
        if not worst <= tolerance:
            raise ExportError(f"{out}: onnxruntime and PyTorch differ by up to {worst:.3g} in the logits of {len(p4)} "
                              f"jets (tolerance {tolerance:g}); nothing written")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return {"out": str(out), "max_abs_diff": worst, "widths": widths, "n_jets": len(p4)}
