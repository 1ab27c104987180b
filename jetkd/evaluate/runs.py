"""What a report is about: unique labels for the evaluated runs, their seed groups, and the test data.

    run_labels        the shortest path suffixes that tell the given runs apart (``seedA/mlp``, ``seedB/mlp``)
    summarise_seeds   runs whose resolved configs differ only in ``train.seed`` (and ``run_dir``): mean and
                      standard deviation of their metrics over the seeds
    describe_data     the test data in words (generator, sqrt(s), jet selection; else the file names) and its
                      class names, for report.md, report.json and the plot labels
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePath

import numpy as np

from jetkd.errors import InputError
from jetkd.evaluate.metrics import SIGNAL_EFFICIENCIES, efficiency_tag

#: config keys that may differ between the runs of one seed group (dotted paths)
SEED_KEYS = ("train.seed", "run_dir")
#: the figures :func:`summarise_seeds` averages: entry["metrics"][key], or the entry's own key
SUMMARY_METRICS = ("accuracy", "auc", *(f"rej_{efficiency_tag(e)}" for e in SIGNAL_EFFICIENCIES), "invariance_score")
CHECKPOINT_NAMES = ("best.pt",)  # a checkpoint file with this name is labelled by its run folder alone


# ----------------------------------------------------------------------------- labels


def _folder_and_file(path: str | Path) -> tuple[tuple[str, ...], str]:
    """(components of the run folder, absolute), and the checkpoint file name ('' for a folder or its best.pt)."""
    path = Path(os.path.abspath(path))
    if path.is_dir():
        return path.parts, ""
    return path.parent.parts, "" if path.name in CHECKPOINT_NAMES else path.name


def _shortest_unique_suffix(parts: tuple[str, ...], others: Sequence[tuple[str, ...]]) -> tuple[str, ...]:
    """The fewest trailing components of ``parts`` that no other path in ``others`` ends with the same way."""
    for k in range(1, len(parts) + 1):
        if all(other[-k:] != parts[-k:] for other in others):
            return parts[-k:]
    return parts


def run_labels(paths: Sequence[str | Path]) -> list[str]:
    """One unique label per run folder or checkpoint file: the shortest trailing part of its path that no other
    given path shares (``runs/seedA/mlp, runs/seedB/mlp, runs/seedA/teacher`` -> ``seedA/mlp, seedB/mlp,
    teacher``). A checkpoint ``best.pt`` is its run folder; another file in the folder adds its name
    (``mlp/last.pt``) when that folder is given more than once. Raises :class:`InputError` if a model is given
    twice (e.g. ``run`` and ``run/best.pt``)."""
    split = [_folder_and_file(p) for p in paths]
    seen: dict[tuple, str] = {}
    for spec, key in zip(paths, split):
        if key in seen:
            raise InputError(str(spec), f"the same model as {seen[key]} is given twice")
        seen[key] = str(spec)
    folders = list(dict.fromkeys(folder for folder, _ in split))
    short = {f: _shortest_unique_suffix(f, [g for g in folders if g != f]) for f in folders}
    shared = {f for f in folders if sum(folder == f for folder, _ in split) > 1}
    labels = []
    for folder, name in split:
        parts = short[folder] + ((name or "best.pt",) if folder in shared else ())
        labels.append(PurePath(*parts).as_posix())
    return labels


# ----------------------------------------------------------------------------- seeds


def _drop(config: dict, dotted: str) -> None:
    """Remove ``a.b.c`` from a nested dict, if present."""
    *parents, last = dotted.split(".")
    node = config
    for key in parents:
        node = node.get(key) if isinstance(node, dict) else None
        if node is None:
            return
    if isinstance(node, dict):
        node.pop(last, None)


def _relative_strings(x, root: str):
    """``x`` with strings that are paths inside ``root`` rewritten as ``<run>/...``."""
    if isinstance(x, dict):
        return {k: _relative_strings(v, root) for k, v in x.items()}
    if isinstance(x, list):
        return [_relative_strings(v, root) for v in x]
    if isinstance(x, str) and root and os.path.isabs(x) == os.path.isabs(root):
        norm = os.path.normpath(x)
        if norm.startswith(root + os.sep):
            return "<run>/" + os.path.relpath(norm, root)
    return x


def seed_group_key(config: Mapping, ignore: Sequence[str] = SEED_KEYS) -> str:
    """A string equal for resolved configs that differ only in the ``ignore`` keys (``train.seed``, ``run_dir``).

    Paths inside the run's pipeline folder (the parent of its ``run_dir``: the data cache, the teacher
    checkpoint of a ``jetkd run``) compare relative to it, so per-seed pipeline folders ``runs/s1/mlp`` and
    ``runs/s2/mlp`` with their own ``cache/`` and ``teacher/`` fall in one group.
    """
    config = copy.deepcopy(dict(config))
    run_dir = config.get("run_dir")
    root = os.path.normpath(os.path.dirname(os.path.normpath(run_dir))) if isinstance(run_dir, str) else ""
    for key in ignore:
        _drop(config, key)
    return json.dumps(_relative_strings(config, root if root not in ("", ".") else ""), sort_keys=True, default=str)


def _group_label(names: list[str]) -> str:
    """What the names of a seed group share: their common trailing path components (``seedA/mlp``,
    ``seedB/mlp`` -> ``mlp``), else their common prefix (``mlp_s1``, ``mlp_s2`` -> ``mlp``), else all names."""
    parts = [n.split("/") for n in names]
    common = []
    for column in zip(*(reversed(p) for p in parts)):
        if len(set(column)) > 1:
            break
        common.insert(0, column[0])
    if common:
        return "/".join(common)
    prefix = re.sub(r"([_\-.](s|seed))?[_\-./ ]*$", "", os.path.commonprefix(names))
    return prefix or ", ".join(names)


def _value(entry: Mapping, key: str) -> float:
    value = entry.get("metrics", {}).get(key, entry.get(key))
    return math.nan if value is None else float(value)


def summarise_seeds(results: Mapping[str, dict], configs: Mapping[str, Mapping], *,
                    ignore: Sequence[str] = SEED_KEYS) -> list[dict]:
    """Mean and standard deviation over seeds of the runs whose configs differ only in the ``ignore`` keys.

    results: model name -> report entry (:func:`jetkd.evaluate.evaluate_model`); configs: model name -> its
    resolved config (``load_checkpoint(path)["config"]``; names missing here are left out). Groups of two or
    more runs, in the order of ``results``, each::

        label       str          what the names share (``mlp`` for ``seedA/mlp``, ``seedB/mlp``)
        models      list[str]    the names in the group
        seeds       list         their ``train.seed`` (None where the config has none)
        n_seeds     int
        metrics     {key: {"mean": float, "std": float, "values": [float per model]}} for accuracy, auc,
                    rej_30, rej_50 and invariance_score; std is the sample standard deviation (ddof = 1);
                    a NaN or inf value makes mean (and std) NaN or inf, as measured
        lower_bound {rej key: bool}  whether any run's rejection is only a lower limit (too few background jets)
    """
    groups: dict[str, list[str]] = {}
    for name in results:
        if name in configs:
            groups.setdefault(seed_group_key(configs[name], ignore), []).append(name)
    out = []
    for names in groups.values():
        if len(names) < 2:
            continue
        metrics = {}
        for key in SUMMARY_METRICS:
            values = np.array([_value(results[n], key) for n in names], dtype=np.float64)
            with np.errstate(invalid="ignore"):
                metrics[key] = {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)),
                                "values": values.tolist()}
        out.append({
            "label": _group_label(names),
            "models": names,
            "seeds": [(configs[n].get("train") or {}).get("seed") for n in names],
            "n_seeds": len(names),
            "metrics": metrics,
            "lower_bound": {key: any(results[n].get("metrics", {}).get(f"{key}_lower_bound", False) for n in names)
                            for key in SUMMARY_METRICS if key.startswith("rej_")},
        })
    return out


# ----------------------------------------------------------------------------- data


def _inputs(provenance: Mapping | None) -> list[dict]:
    """The ``inputs`` list of a cache's provenance (or of the test/train split of a contract's provenance)."""
    if not provenance:
        return []
    if "inputs" not in provenance:
        for split in ("test", "val", "train"):
            if isinstance(provenance.get(split), Mapping) and "inputs" in provenance[split]:
                return list(provenance[split]["inputs"])
        return []
    return list(provenance.get("inputs") or [])


def _generator_lines(gen: Mapping, tex: bool) -> list[str]:
    """[generator and sqrt(s), jet selection] of one input's generator settings (``data_prep.generate``)."""
    name = str(gen.get("generator", "unknown generator")).split(",")[0].strip()
    first = name
    if gen.get("sqrt_s_gev"):
        first += f", √s = {gen['sqrt_s_gev'] / 1000:g} TeV"
    pt, eta, kt = (r"$p_\mathrm{T}$", r"|$\eta$|", r"anti-$k_\mathrm{T}$") if tex else ("pT", "|η|", "anti-kT")
    cuts = []
    if gen.get("jet_r"):
        cuts.append(f"{kt} R = {gen['jet_r']:g}")
    if gen.get("pt_min_gev") is not None and gen.get("pt_max_gev") is not None:
        cuts.append(f"{gen['pt_min_gev']:g} < {pt} < {gen['pt_max_gev']:g} GeV")
    if gen.get("eta_max") is not None:
        cuts.append(f"{eta} < {gen['eta_max']:g}")
    if gen.get("massless"):
        cuts.append("massless constituents")
    return [first, ", ".join(cuts)] if cuts else [first]


def data_lines(provenance: Mapping | None, *, tex: bool = False, fallback: str | None = None) -> list[str]:
    """The test data in one or two short lines: generator and sqrt(s), then the jet selection, from the
    generator settings in the provenance (distinct settings of several inputs joined by "; "); without
    generator settings the input file names (or ``fallback``, e.g. the cache file name). ``tex``: matplotlib
    mathtext for pT, eta and kT."""
    inputs = _inputs(provenance)
    gens = [i["generator"] for i in inputs if isinstance(i.get("generator"), Mapping)]
    if gens and len(gens) == len(inputs):
        unique = list({json.dumps(_generator_lines(g, tex)): _generator_lines(g, tex) for g in gens}.values())
        return ["; ".join(dict.fromkeys(lines[i] for lines in unique if len(lines) > i)) for i in range(2)
                if any(len(lines) > i for lines in unique)]
    files = [Path(str(i.get("file", ""))).name for i in inputs if i.get("file")]
    if not files and provenance and provenance.get("sources"):
        files = [Path(str(s)).name for s in provenance["sources"]]
    if files:
        shown = ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
        return [f"Jets from {shown}"]
    if fallback:
        return [f"Jets from {fallback}"]
    return ["Data: unknown"]


def class_pair(class_names: Sequence[str] | None, signal_class: int = 1) -> tuple[str, str]:
    """(signal name, background name) from the data's class names; background is the other class of two,
    ``not <signal>`` of more, and ("signal", "background") when the names are unknown."""
    if not class_names or signal_class >= len(class_names):
        return "signal", "background"
    signal = str(class_names[signal_class])
    others = [str(c) for i, c in enumerate(class_names) if i != signal_class]
    return signal, others[0] if len(others) == 1 else f"not {signal}"


def describe_data(provenance: Mapping | None, class_names: Sequence[str] | None = None, *, signal_class: int = 1,
                  source: str | Path | None = None) -> dict:
    """The report's ``data`` section: ``description`` (one line, plain text), ``class_names`` (list or None),
    ``signal_class``, ``source`` (the test file) and ``provenance`` (as stored with the cache)."""
    fallback = Path(source).name if source else None
    return {
        "description": ", ".join(data_lines(provenance, fallback=fallback)),
        "class_names": list(class_names) if class_names else None,
        "signal_class": int(signal_class),
        "source": str(source) if source else None,
        "provenance": dict(provenance or {}),
    }
