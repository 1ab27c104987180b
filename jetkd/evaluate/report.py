"""Evaluate models and write the run's evaluation report (JSON, Markdown table, PNG plots).

Typical use::

    batches = list(JetLoader(JetCache("cache/test.h5"), batch_size=1024, shuffle=False))
    results = {name: evaluate_model(model, batches, name=name, device="cuda") for name, model in models.items()}
    write_report(run_dir, results)

The ``results`` schema
----------------------
``results`` maps a model name (``"teacher"``, ``"mlp"``, ``"mlp_kd"``, ``"deepset"``, ``"deepset_kd"``, ...) to
the entry :func:`evaluate_model` returns::

    name              str
    parameters        int     trainable parameters
    flops_per_jet     float   mean FLOPs of single-jet inference (multiply-add = 2), see jetkd.evaluate.flops
    flops_jets        int     how many jets that mean is over
    metrics           dict    at beta = 0, from jetkd.evaluate.metrics.binary_metrics:
                                n_jets, n_signal, n_background, accuracy, auc,
                                eps_b_30, rej_30, n_background_pass_30, eps_b_50, rej_50, n_background_pass_50,
                                warnings (list[str])
    roc               dict    {"eps_s": [...], "eps_b": [...]}: the beta = 0 ROC on a 200-point eps_S grid
    boost_axis        list    [x, y, z] direction of the scan's boosts
    boost_scan        list    one dict per beta: {"beta": float, **binary_metrics(...)} (same keys as metrics)
    invariance_score  float   (2 mean_beta acc - 1) / (2 max_beta acc - 1), see jetkd.evaluate.boost_scan
    warnings          list    the warnings of metrics, plus one line per eps_S naming the betas > 0 whose
                              rejection is unreliable (each scan point's "warnings" has its details)
    _scores           ndarray (n_jets, n_class) float64 softmax probabilities at beta = 0   } in memory only:
    _labels           ndarray (n_jets,) int64 labels                                       } not in report.json

Keys starting with ``_`` are never written to ``report.json``; :func:`write_report` stores the scores in
``scores.npz`` beside it (``<name>.scores`` float32, ``<name>.labels`` int64), and :func:`read_report` puts them back.
Extra keys a caller adds to an entry (e.g. ``"checkpoint"``) are kept in ``report.json``; a ``"deploy"`` dict
(the figures a distillation method reports about its deploy form, e.g. CDD's size reduction against the
starting width) is also listed under "Deploy forms" in ``report.md``.

``report.json`` is ``{"format_version": 1, "jetkd_version": str, "models": {name: entry}}``, strict JSON:
non-finite numbers (an infinite rejection when no background jet passes, a nan AUC) are written as ``null``;
``eps_b_*`` keeps the exact value (``0.0`` for an infinite rejection).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

import jetkd
from jetkd.data.loader import JetBatch
from jetkd.evaluate.boost_scan import (
    DEFAULT_AXIS,
    DEFAULT_BETAS,
    boosted_predictions,
    invariance_score,
)
from jetkd.evaluate.flops import count_parameters, flops_per_jet
from jetkd.evaluate.metrics import (
    MIN_BACKGROUND_PASS,
    SIGNAL_EFFICIENCIES,
    binary_metrics,
    efficiency_tag,
    roc_grid,
)
from jetkd.evaluate.plots import plot_boost_scan, plot_roc, plot_score_histograms
from jetkd.evaluate.predict import predict, stage_batches

FORMAT_VERSION = 1
FILES = {
    "json": "report.json",
    "markdown": "report.md",
    "scores": "scores.npz",
    "roc": "roc.png",
    "boost_scan": "accuracy_vs_beta.png",
    "score_histograms": "score_histograms.png",
}


# ----------------------------------------------------------------------------- evaluation


def evaluate_model(
    model: nn.Module,
    batches: Iterable[JetBatch],
    *,
    betas: Sequence[float] = DEFAULT_BETAS,
    axis: Sequence[float] = DEFAULT_AXIS,
    device: str | torch.device = "cpu",
    name: str = "model",
    amp: bool = False,
    flops_jets: int = 64,
    signal_efficiencies: Sequence[float] = SIGNAL_EFFICIENCIES,
) -> dict:
    """One model's report entry (schema in the module docstring): metrics at beta = 0, the boost scan over
    ``betas`` along ``axis``, the invariance score, parameters, FLOPs per jet, and the beta = 0 scores.

    model:   ``model(p4, mask) -> logits``; moved to ``device`` and evaluated in eval mode.
    batches: the test set as :class:`~jetkd.data.loader.JetBatch` es; read once and kept on ``device``
             (pass a list to share it between models).
    flops_jets: the FLOPs are the mean over this many single jets (see :func:`jetkd.evaluate.flops.flops_per_jet`).
    """
    batches = stage_batches(batches, device)
    model = model.to(device)
    betas = [round(float(b), 12) for b in betas]
    scan, nominal = [], None
    for beta, scores, labels in boosted_predictions(model, batches, betas, axis, device=device, amp=amp):
        scan.append({"beta": beta, **binary_metrics(scores, labels, signal_efficiencies=signal_efficiencies)})
        if beta == 0:
            nominal = scores, labels
    if nominal is None:
        nominal = predict(model, batches, device=device, amp=amp)
    scores, labels = nominal
    metrics = binary_metrics(scores, labels, signal_efficiencies=signal_efficiencies)
    warnings = list(metrics["warnings"]) + _scan_warnings(scan, signal_efficiencies)
    return {
        "name": name,
        "parameters": count_parameters(model),
        "flops_per_jet": flops_per_jet(model, batches, n_jets=flops_jets),
        "flops_jets": min(flops_jets, len(labels)),
        "metrics": metrics,
        "roc": roc_grid(scores, labels),
        "boost_axis": [float(a) for a in axis],
        "boost_scan": scan,
        "invariance_score": invariance_score([p["accuracy"] for p in scan]) if scan else math.nan,
        "warnings": warnings,
        "_scores": scores,
        "_labels": labels,
    }


def _scan_warnings(scan: list[dict], signal_efficiencies: Sequence[float]) -> list[str]:
    """One line per eps_S listing the boosted points (beta > 0) whose rejection rests on too few background jets
    (each point's own ``warnings`` keep the details)."""
    out = []
    for target in signal_efficiencies:
        key = f"n_background_pass_{efficiency_tag(target)}"
        bad = [p["beta"] for p in scan if p["beta"] != 0 and p.get(key, math.inf) < MIN_BACKGROUND_PASS]
        if bad:
            out.append(
                f"boost scan: 1/eps_B at eps_S = {target:g} is unreliable (fewer than {MIN_BACKGROUND_PASS} "
                f"background jets pass the cut) at beta = {', '.join(f'{b:g}' for b in bad)}"
            )
    return out


# ----------------------------------------------------------------------------- serialisation


def _jsonable(x):
    """``x`` with numpy/torch/Path values turned into plain Python, non-finite floats into None,
    and keys starting with ``_`` dropped."""
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items() if not str(k).startswith("_")}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if x is None or isinstance(x, str):
        return x
    return str(x)


def _restore_non_finite(metrics: dict) -> None:
    """Undo the ``null`` of non-finite metrics: ``rej_X`` is inf where ``eps_b_X == 0``, other nulls are nan."""
    for key, value in metrics.items():
        if value is None and key != "warnings":
            tag = key[4:] if key.startswith("rej_") else None
            metrics[key] = math.inf if tag is not None and metrics.get(f"eps_b_{tag}") == 0 else math.nan


def read_report(run_dir: str | Path) -> dict:
    """The ``results`` of a written report (``report.json``), with ``_scores``/``_labels`` from ``scores.npz``
    when it exists, so ``write_report(run_dir, read_report(run_dir))`` redraws everything."""
    run_dir = Path(run_dir)
    results = json.loads((run_dir / FILES["json"]).read_text())["models"]
    for entry in results.values():
        for metrics in [entry.get("metrics") or {}, *(entry.get("boost_scan") or [])]:
            _restore_non_finite(metrics)
        if entry.get("invariance_score", 0.0) is None:
            entry["invariance_score"] = math.nan
    npz = run_dir / FILES["scores"]
    if npz.exists():
        with np.load(npz) as data:
            for name, entry in results.items():
                if f"{name}.scores" in data:
                    entry["_scores"] = data[f"{name}.scores"].astype(np.float64)
                    entry["_labels"] = data[f"{name}.labels"]
    return results


# ----------------------------------------------------------------------------- Markdown


def _cell(x, fmt: str = "{:.4f}") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, float) and math.isinf(x):
        return "∞"
    return fmt.format(x)


def _si(x) -> str:
    """``1234567 -> "1.23 M"``, SI prefixes k, M, G."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return _cell(x)
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= factor:
            return f"{x / factor:.3g} {prefix}"
    return f"{x:.3g}"


def _accuracy_at(entry: dict, beta: float):
    for point in entry.get("boost_scan") or []:
        if math.isclose(point["beta"], beta, abs_tol=1e-6):
            return point.get("accuracy")
    return None


def _betas_text(betas: list[float]) -> str:
    if len(betas) > 3:
        steps = np.diff(betas)
        if np.allclose(steps, steps[0]):
            return f"{{{betas[0]:g}, {betas[1]:g}, …, {betas[-1]:g}}}"
    return "{" + ", ".join(f"{b:g}" for b in betas) + "}"


def _rejection_columns() -> list[tuple[str, str]]:
    return [(f"rej_{efficiency_tag(e)}", f"1/ε_B @ ε_S = {e:g}") for e in SIGNAL_EFFICIENCIES]


TABLE_BETAS = (0.5, 0.9)


def markdown_table(results: Mapping[str, dict]) -> str:
    """The side-by-side table: one row per model, columns Model, Parameters, FLOPs / jet, Accuracy, AUC,
    1/ε_B @ ε_S = 0.3, 1/ε_B @ ε_S = 0.5, Accuracy @ β = 0.5, Accuracy @ β = 0.9, Invariance."""
    rejections = _rejection_columns()
    header = ["Model", "Parameters", "FLOPs / jet", "Accuracy", "AUC", *(title for _, title in rejections)]
    header += [f"Accuracy @ β = {b:g}" for b in TABLE_BETAS] + ["Invariance"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|"]
    for name, entry in results.items():
        m = entry.get("metrics", {})
        row = [
            str(name).replace("|", r"\|"),
            _cell(entry.get("parameters"), "{:,}"),
            _si(entry.get("flops_per_jet")),
            _cell(m.get("accuracy")),
            _cell(m.get("auc")),
            *(_cell(m.get(key, math.nan), "{:.1f}") for key, _ in rejections),
            *(_cell(_accuracy_at(entry, b)) for b in TABLE_BETAS),
            _cell(entry.get("invariance_score"), "{:.3f}"),
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _test_set_text(results: Mapping[str, dict]) -> str:
    sizes = {
        name: (e["metrics"]["n_jets"], e["metrics"]["n_signal"], e["metrics"]["n_background"])
        for name, e in results.items()
        if "n_jets" in e.get("metrics", {})
    }
    fmt = "{:,} jets ({:,} signal, {:,} background)"
    if not sizes:
        return "Test set: unknown."
    if len(set(sizes.values())) == 1:
        return "Test set: " + fmt.format(*next(iter(sizes.values()))) + "."
    return "Test sets differ between models: " + "; ".join(f"{n}: {fmt.format(*s)}" for n, s in sizes.items()) + "."


def _deploy_value(v) -> str:
    if isinstance(v, float):
        return f"{v:,.0f}" if v.is_integer() or abs(v) >= 1e4 else f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(map(_deploy_value, v)) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_deploy_value(x)}" for k, x in v.items()) + "}"
    return f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v)


def deploy_notes(results: Mapping[str, dict]) -> list[str]:
    """One markdown bullet per model with a deploy summary (e.g. CDD's widths and reductions)."""
    return [f"- {name}: " + ", ".join(f"{k} = {_deploy_value(v)}" for k, v in e["deploy"].items())
            for name, e in results.items() if e.get("deploy")]


def markdown_report(results: Mapping[str, dict], title: str = "Evaluation report") -> str:
    """The whole ``report.md``: title, test-set size, the table, notes on the columns, warnings, plots."""
    parts = [f"# {title}", "", _test_set_text(results), "", markdown_table(results), ""]
    scans = [e for e in results.values() if e.get("boost_scan")]
    if scans:
        betas = [p["beta"] for p in scans[0]["boost_scan"]]
        axis = ", ".join(f"{a:g}" for a in scans[0].get("boost_axis", DEFAULT_AXIS))
        parts += [
            (
                f"Boost scan: the constituents (not the beams) boosted by β ∈ {_betas_text(betas)} along ({axis}); "
                "invariance = (2 · mean_β accuracy − 1) / (2 · max_β accuracy − 1)."
            ),
            "",
        ]
    parts += [
        (
            "FLOPs / jet: mean over single-jet forward passes, each jet unpadded; a multiply-add counts as 2 FLOPs; "
            "matrix products only (torch FlopCounterMode). 1/ε_B is read off the ROC by linear interpolation."
        ),
        "",
    ]
    notes = deploy_notes(results)
    if notes:
        parts += ["## Deploy forms", "", *notes, ""]
    warnings = [(name, w) for name, e in results.items() for w in e.get("warnings", [])]
    if warnings:
        parts += ["## Warnings", ""] + [f"- {name}: {w}" for name, w in warnings] + [""]
    parts += ["## Plots", ""]
    parts += [f"![{key.replace('_', ' ')}]({FILES[key]})" for key in ("roc", "boost_scan", "score_histograms")]
    return "\n".join(parts) + "\n"


# ----------------------------------------------------------------------------- writing


def write_report(
    run_dir: str | Path,
    results: Mapping[str, dict],
    *,
    title: str = "Evaluation report",
    save_scores: bool = True,
    plots: bool = True,
) -> dict[str, Path]:
    """Write ``report.json``, ``report.md``, ``scores.npz`` (when entries carry ``_scores`` and ``save_scores``)
    and the plots ``roc.png``, ``accuracy_vs_beta.png``, ``score_histograms.png`` into ``run_dir``.

    results: model name -> entry (schema in the module docstring). ``plots=False`` skips the PNGs.
    Returns {kind: path} of the files written.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    paths = {key: run_dir / FILES[key] for key in FILES}
    doc = {"format_version": FORMAT_VERSION, "jetkd_version": jetkd.__version__, "models": _jsonable(results)}
    write_text_atomic(paths["json"], json.dumps(doc, indent=2, allow_nan=False) + "\n")
    write_text_atomic(paths["markdown"], markdown_report(results, title))
    arrays = {}
    for name, entry in results.items():
        if entry.get("_scores") is not None and entry.get("_labels") is not None:
            arrays[f"{name}.scores"] = np.asarray(entry["_scores"], dtype=np.float32)
            arrays[f"{name}.labels"] = np.asarray(entry["_labels"], dtype=np.int64)
    if save_scores and arrays:
        tmp = paths["scores"].with_name(f".{paths['scores'].name}.tmp.npz")
        np.savez_compressed(tmp, **arrays)
        tmp.replace(paths["scores"])
    else:
        del paths["scores"]
    if plots:
        plot_roc(results, paths["roc"])
        plot_boost_scan(results, paths["boost_scan"])
        plot_score_histograms(results, paths["score_histograms"])
    else:
        for key in ("roc", "boost_scan", "score_histograms"):
            del paths[key]
    return paths


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
