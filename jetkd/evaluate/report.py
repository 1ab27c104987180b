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
    metrics           dict    at beta = 0, from jetkd.evaluate.metrics.binary_metrics (n_bootstrap replicas):
                                n_jets, n_signal, n_background, n_nonfinite, accuracy, auc,
                                eps_b_30, rej_30, n_background_pass_30, rej_30_lower_bound, rej_30_limit,
                                (the same for 50), accuracy_interval, auc_interval, eps_b_30_interval,
                                rej_30_interval, eps_b_50_interval, rej_50_interval ([low, high]: central 68% of
                                the bootstrap), n_bootstrap, warnings (list[str])
    roc               dict    {"eps_s": [...], "eps_b": [...], "eps_b_low": [...], "eps_b_high": [...]}: the
                              beta = 0 ROC on a 200-point eps_S grid with its bootstrap band (central 68%)
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

``report.json`` is strict JSON (non-finite numbers -- an infinite rejection when no background jet passes, a nan
AUC -- are written as ``null``; ``eps_b_*`` keeps the exact value, ``0.0`` for an infinite rejection)::

    {"format_version": 2, "jetkd_version": str,
     "data": {"description", "class_names", "signal_class", "source", "provenance"} or null  (runs.describe_data)
     "summary": [seed groups: label, models, seeds, n_seeds, metrics {key: {mean, std, values}}, lower_bound]
                (runs.summarise_seeds; empty when no runs differ only in their seed)
     "models": {name: entry}}

Reading the numbers: ``rej_X`` is the measured 1/eps_B; where ``rej_X_lower_bound`` is true (fewer than 10
background jets pass the cut) quote ``rej_X_limit``, an 84% CL lower limit, as report.md does (``> 97.8†``).
With ``n_nonfinite > 0`` the model gave NaN/inf scores and its metrics are NaN (see jetkd.evaluate.metrics).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

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
    INTERVAL_QUANTILES,
    MIN_BACKGROUND_PASS,
    N_BOOTSTRAP,
    SIGNAL_EFFICIENCIES,
    binary_metrics,
    bootstrap_intervals,
    efficiency_tag,
    eps_s_grid,
    rejection_interval,
    roc_grid,
)
from jetkd.evaluate.plots import plot_boost_scan, plot_rejection_scan, plot_roc, plot_score_histograms
from jetkd.evaluate.predict import predict, stage_batches
from jetkd.evaluate.runs import class_pair

FORMAT_VERSION = 2  # 2: data, summary; metrics n_nonfinite, *_interval, rej_*_lower_bound/limit; roc band
FILES = {
    "json": "report.json",
    "markdown": "report.md",
    "scores": "scores.npz",
    "roc": "roc.png",
    "boost_scan": "accuracy_vs_beta.png",
    "rejection_scan": "rejection_vs_beta.png",
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
    n_bootstrap: int = N_BOOTSTRAP,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """One model's report entry (schema in the module docstring): metrics at beta = 0 with bootstrap intervals,
    the ROC with its band, the boost scan over ``betas`` along ``axis``, the invariance score, parameters, FLOPs
    per jet, and the beta = 0 scores.

    model:   ``model(p4, mask) -> logits``; moved to ``device`` and evaluated in eval mode.
    batches: the test set as :class:`~jetkd.data.loader.JetBatch` es; read once and kept on ``device``
             (pass a list to share it between models).
    flops_jets: the FLOPs are the mean over this many single jets (see :func:`jetkd.evaluate.flops.flops_per_jet`).
    n_bootstrap, seed: bootstrap replicas of the test jets behind the intervals and the ROC band (0: none), and
             their random seed (fixed: the same scores give the same intervals).
    progress: a progress bar over the boost points (on terminals only).
    """
    batches = stage_batches(batches, device)
    model = model.to(device)
    betas = [round(float(b), 12) for b in betas]
    scan, nominal = [], None
    points = boosted_predictions(model, batches, betas, axis, device=device, amp=amp)
    bar = tqdm(points, total=len(betas), desc=f"{name}: boost scan", unit="β", leave=False,
               disable=None if progress else True)  # None: quiet when not on a terminal
    for beta, scores, labels in bar:
        scan.append({"beta": beta, **binary_metrics(scores, labels, signal_efficiencies=signal_efficiencies)})
        if beta == 0:
            nominal = scores, labels
    bar.close()
    if nominal is None:
        nominal = predict(model, batches, device=device, amp=amp)
    scores, labels = nominal
    metrics = binary_metrics(scores, labels, signal_efficiencies=signal_efficiencies)
    curve = roc_grid(scores, labels)
    band = bootstrap_intervals(scores, labels, n_bootstrap=n_bootstrap, seed=seed,
                               signal_efficiencies=signal_efficiencies, grid=eps_s_grid())
    low, high = band.pop("eps_b_grid_interval")
    metrics = {**{k: v for k, v in metrics.items() if k != "warnings"}, **band, "warnings": metrics["warnings"]}
    if curve["eps_s"]:
        curve |= {"eps_b_low": low.tolist(), "eps_b_high": high.tolist()}
    warnings = list(metrics["warnings"]) + _scan_warnings(scan, signal_efficiencies)
    return {
        "name": name,
        "parameters": count_parameters(model),
        "flops_per_jet": flops_per_jet(model, batches, n_jets=flops_jets),
        "flops_jets": min(flops_jets, len(labels)),
        "metrics": metrics,
        "roc": curve,
        "boost_axis": axis if isinstance(axis, str) else [float(a) for a in axis],
        "boost_scan": scan,
        "invariance_score": invariance_score([p["accuracy"] for p in scan]) if scan else math.nan,
        "warnings": warnings,
        "_scores": scores,
        "_labels": labels,
    }


def _scan_warnings(scan: list[dict], signal_efficiencies: Sequence[float]) -> list[str]:
    """One line per eps_S listing the boosted points (beta > 0) whose rejection rests on too few background jets,
    and one listing those with non-finite scores (each point's own ``warnings`` keep the details)."""
    out = []
    for target in signal_efficiencies:
        key = f"n_background_pass_{efficiency_tag(target)}"
        bad = [p["beta"] for p in scan if p["beta"] != 0 and p.get(key, math.inf) < MIN_BACKGROUND_PASS]
        if bad:
            out.append(
                f"boost scan: 1/eps_B at eps_S = {target:g} is unreliable (fewer than {MIN_BACKGROUND_PASS} "
                f"background jets pass the cut) at beta = {', '.join(f'{b:g}' for b in bad)}"
            )
    bad = [p["beta"] for p in scan if p["beta"] != 0 and p.get("n_nonfinite", 0)]
    if bad:
        out.append(f"boost scan: non-finite scores (metrics NaN) at beta = {', '.join(f'{b:g}' for b in bad)}")
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
    """Undo the ``null`` of non-finite metrics: ``rej_X`` is inf where ``eps_b_X == 0``, other nulls are nan;
    ``rej_X_interval`` is recomputed from ``eps_b_X_interval`` (inf where eps_B = 0)."""
    for key, value in metrics.items():
        if value is None and key != "warnings":
            tag = key[4:] if key.startswith("rej_") else None
            metrics[key] = math.inf if tag is not None and metrics.get(f"eps_b_{tag}") == 0 else math.nan
        elif isinstance(value, list) and key.endswith("_interval"):
            metrics[key] = [math.nan if v is None else v for v in value]
    for key in list(metrics):
        if key.startswith("rej_") and key.endswith("_interval") and f"eps_b_{key[4:]}" in metrics:
            metrics[key] = rejection_interval(metrics[f"eps_b_{key[4:]}"])


def read_report(run_dir: str | Path) -> dict:
    """The ``results`` of a written report (``report.json``), with ``_scores``/``_labels`` from ``scores.npz``
    when it exists, so ``write_report(run_dir, read_report(run_dir))`` redraws everything."""
    run_dir = Path(run_dir)
    results = json.loads((run_dir / FILES["json"]).read_text())["models"]
    for entry in results.values():
        for metrics in [entry.get("metrics") or {}, *(entry.get("boost_scan") or [])]:
            _restore_non_finite(metrics)
        for key in ("eps_b_low", "eps_b_high"):
            if key in (entry.get("roc") or {}):
                entry["roc"][key] = [math.nan if v is None else v for v in entry["roc"][key]]
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


LOWER_BOUND_MARK = "†"
NONFINITE_MARK = "‡"


def _with_interval(value, interval, fmt: str = "{:.4f}") -> str:
    """``0.9120 [0.9050, 0.9180]``; the value alone when the interval is missing or undefined."""
    text = _cell(value, fmt)
    if value is None or not math.isfinite(value) or not interval or any(v is None or math.isnan(v) for v in interval):
        return text
    return f"{text} [{_cell(float(interval[0]), fmt)}, {_cell(float(interval[1]), fmt)}]"


def _rejection_cell(metrics: dict, key: str) -> str:
    """1/eps_B with its interval, or ``> limit†`` where too few background jets pass the cut."""
    if metrics.get(f"{key}_lower_bound"):
        return f"> {_cell(metrics.get(f'{key}_limit'), '{:.1f}')}{LOWER_BOUND_MARK}"
    return _with_interval(metrics.get(key, math.nan), metrics.get(f"{key}_interval"), "{:.1f}")


def table_notes(results: Mapping[str, dict]) -> list[str]:
    """The footnotes of :func:`markdown_table`: what the brackets are, and the marks used in it."""
    notes = []
    n_boot = {e.get("metrics", {}).get("n_bootstrap") for e in results.values()} - {None, 0}
    if n_boot:
        lo, hi = (100 * q for q in INTERVAL_QUANTILES)
        notes.append(f"Brackets: the central 68% ({lo:.1f}% to {hi:.1f}% quantiles) of "
                     f"{' / '.join(str(n) for n in sorted(n_boot))} bootstrap resamples of the test jets.")
    if any(e.get("metrics", {}).get(f"{k}_lower_bound") for e in results.values() for k, _ in _rejection_columns()):
        notes.append(f"{LOWER_BOUND_MARK} Fewer than {MIN_BACKGROUND_PASS} background jets pass the cut: the "
                     "rejection is shown as its 84% CL lower limit (n_background / the one-sided Poisson upper limit "
                     "on the passing background jets); report.json keeps the point estimate (rej_*).")
    bad = [(n, e["metrics"]) for n, e in results.items() if e.get("metrics", {}).get("n_nonfinite")]
    if bad:
        notes.append(f"{NONFINITE_MARK} Non-finite (NaN or inf) scores: the model diverged or cannot score these jets, "
                     "so its metrics are undefined: " + "; ".join(f"{n}: {m['n_nonfinite']:,} of {m['n_jets']:,} jets"
                                                              for n, m in bad) + ".")
    for name, e in results.items():
        if e.get("published"):
            notes.append(f"{name}: the published LorentzNet checkpoint ({e['published']}), not trained here; its "
                         "metrics are on the same test jets as every other row.")
    return notes


def markdown_table(results: Mapping[str, dict]) -> str:
    """The side-by-side table: one row per model, columns Model, Parameters, FLOPs / jet, Accuracy, AUC,
    1/ε_B @ ε_S = 0.3, 1/ε_B @ ε_S = 0.5, Accuracy @ β = 0.5, Accuracy @ β = 0.9, Invariance; the metrics with
    their bootstrap intervals (``0.9120 [0.9050, 0.9180]``), rejections from too few background jets as lower
    limits (``> 97.8†``), models with non-finite scores marked ``‡``; then the footnotes (:func:`table_notes`)."""
    rejections = _rejection_columns()
    header = ["Model", "Parameters", "FLOPs / jet", "Accuracy", "AUC", *(title for _, title in rejections)]
    header += [f"Accuracy @ β = {b:g}" for b in TABLE_BETAS] + ["Invariance"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|"]
    for name, entry in results.items():
        m = entry.get("metrics", {})
        row = [
            str(name).replace("|", r"\|") + (f" {NONFINITE_MARK}" if m.get("n_nonfinite") else ""),
            _cell(entry.get("parameters"), "{:,}"),
            _si(entry.get("flops_per_jet")),
            _with_interval(m.get("accuracy"), m.get("accuracy_interval")),
            _with_interval(m.get("auc"), m.get("auc_interval")),
            *(_rejection_cell(m, key) for key, _ in rejections),
            *(_cell(_accuracy_at(entry, b)) for b in TABLE_BETAS),
            _cell(entry.get("invariance_score"), "{:.3f}"),
        ]
        lines.append("| " + " | ".join(row) + " |")
    notes = table_notes(results)
    return "\n".join(lines) + "".join(f"\n\n{note}" for note in notes)


def _mean_std(stats: dict, fmt: str) -> str:
    mean, std = stats.get("mean"), stats.get("std")
    return f"{_cell(mean, fmt)} ± {_cell(std, fmt)}"


def summary_table(summary: Sequence[dict]) -> str:
    """Markdown table of seed groups (:func:`jetkd.evaluate.runs.summarise_seeds`): mean ± standard deviation of
    accuracy, AUC, rejections and invariance over the seeds, with the number of seeds."""
    rejections = _rejection_columns()
    header = ["Model", "Seeds", "Runs", "Accuracy", "AUC", *(t for _, t in rejections), "Invariance"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([":---"] * 3 + ["---:"] * (len(header) - 3)) + "|"]
    for group in summary:
        m = group["metrics"]
        seeds = ", ".join("?" if s is None else str(s) for s in group["seeds"])
        row = [
            str(group["label"]).replace("|", r"\|"),
            f"{group['n_seeds']} ({seeds})",
            ", ".join(group["models"]).replace("|", r"\|"),
            _mean_std(m["accuracy"], "{:.4f}"),
            _mean_std(m["auc"], "{:.4f}"),
            *(_mean_std(m[key], "{:.1f}") + (LOWER_BOUND_MARK if group.get("lower_bound", {}).get(key) else "")
              for key, _ in rejections),
            _mean_std(m["invariance_score"], "{:.3f}"),
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


def _data_text(data: Mapping | None) -> str:
    if not data:
        return ""
    signal, background = class_pair(data.get("class_names"), data.get("signal_class", 1))
    text = f"Test data: {data.get('description') or 'unknown'}"
    if data.get("source"):
        text += f" (`{Path(str(data['source'])).name}`)"
    return text + f"; signal {signal}, background {background}."


def markdown_report(results: Mapping[str, dict], title: str = "Evaluation report", *, data: Mapping | None = None,
                    summary: Sequence[dict] = ()) -> str:
    """The whole ``report.md``: title, test data and size, the table with its footnotes, the seed summary, notes
    on the columns, warnings, plots."""
    parts = [f"# {title}", ""]
    if data:
        parts += [_data_text(data), ""]
    parts += [_test_set_text(results), "", markdown_table(results), ""]
    if summary:
        parts += [
            "## Over seeds",
            "",
            "Runs whose configs differ only in their training seed: mean ± sample standard deviation over the seeds.",
            "",
            summary_table(summary),
            "",
        ]
        if any(any(g.get("lower_bound", {}).values()) for g in summary):
            parts += [(f"{LOWER_BOUND_MARK} At least one run's rejection rests on fewer than {MIN_BACKGROUND_PASS} "
                       "background jets: its point estimate enters the mean."), ""]
    scans = [e for e in results.values() if e.get("boost_scan")]
    if scans:
        betas = [p["beta"] for p in scans[0]["boost_scan"]]
        axis = scans[0].get("boost_axis", DEFAULT_AXIS)
        axis = "each jet's own axis" if isinstance(axis, str) else ", ".join(f"{a:g}" for a in axis)
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
    data: Mapping | None = None,
    summary: Sequence[dict] = (),
) -> dict[str, Path]:
    """Write ``report.json``, ``report.md``, ``scores.npz`` (when entries carry ``_scores`` and ``save_scores``)
    and the plots ``roc.png``, ``accuracy_vs_beta.png``, ``rejection_vs_beta.png`` (1/eps_B at eps_S = 0.3),
    ``score_histograms.png`` into ``run_dir``.

    results: model name -> entry (schema in the module docstring). ``plots=False`` skips the PNGs.
    data:    the test data (:func:`jetkd.evaluate.runs.describe_data`): description, class names, provenance;
             shown in report.md and on the plots.
    summary: seed groups (:func:`jetkd.evaluate.runs.summarise_seeds`), tabulated in report.md.
    Returns {kind: path} of the files written.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    paths = {key: run_dir / FILES[key] for key in FILES}
    doc = {"format_version": FORMAT_VERSION, "jetkd_version": jetkd.__version__, "data": _jsonable(data),
           "summary": _jsonable(list(summary)), "models": _jsonable(results)}
    write_text_atomic(paths["json"], json.dumps(doc, indent=2, allow_nan=False) + "\n")
    write_text_atomic(paths["markdown"], markdown_report(results, title, data=data, summary=summary))
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
        plot_roc(results, paths["roc"], data=data)
        plot_boost_scan(results, paths["boost_scan"], data=data)
        plot_rejection_scan(results, paths["rejection_scan"], data=data)
        plot_score_histograms(results, paths["score_histograms"], data=data)
    else:
        for key in ("roc", "boost_scan", "rejection_scan", "score_histograms"):
            del paths[key]
    return paths


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
