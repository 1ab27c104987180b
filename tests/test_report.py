"""The report a physicist quotes: unique run labels, seed summaries, the data it names, and `jetkd evaluate`
end to end on hand-made checkpoints (no training)."""

import json
import math

import numpy as np
import pytest
import torch
from helpers import TINY_DEEPSET, toy_jets

from jetkd.data.cache import CacheWriter
from jetkd.errors import InputError
from jetkd.evaluate import (
    describe_data,
    markdown_table,
    run_labels,
    summarise_seeds,
    summary_table,
    write_report,
)

GENERATOR = {"generator": "Pythia 8.317, anti-kT R=0.8 via fjcore", "sqrt_s_gev": 14000.0, "jet_r": 0.8,
             "pt_min_gev": 550.0, "pt_max_gev": 650.0, "eta_max": 2.0, "massless": True, "seed": 1, "n_jets": 96}


# ----------------------------------------------------------------------------- labels


def test_run_labels_are_the_shortest_distinguishing_suffixes(tmp_path):
    for d in ("seedA/mlp", "seedB/mlp", "seedA/teacher", "other/x/deepset"):
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "seedB/mlp/best.pt").touch()
    (tmp_path / "seedB/mlp/last.pt").touch()
    paths = [tmp_path / "seedA/mlp", tmp_path / "seedB/mlp/best.pt", tmp_path / "seedA/teacher",
             tmp_path / "other/x/deepset"]
    assert run_labels(paths) == ["seedA/mlp", "seedB/mlp", "teacher", "deepset"]
    # two checkpoints of one run folder keep their file names apart
    assert run_labels([tmp_path / "seedB/mlp/best.pt", tmp_path / "seedB/mlp/last.pt", tmp_path / "seedA/mlp"]) == [
        "seedB/mlp/best.pt", "seedB/mlp/last.pt", "seedA/mlp"]
    with pytest.raises(InputError, match="given twice"):
        run_labels([tmp_path / "seedB/mlp", tmp_path / "seedB/mlp/best.pt"])


# ----------------------------------------------------------------------------- seeds


def config(run_dir, seed, lr=1e-3, data="/data/cache"):
    return {"run_dir": run_dir, "model": {"name": "mlp", "hidden": [32]}, "train": {"seed": seed, "epochs": 5},
            "optim": {"lr": lr}, "data": {"train": f"{data}/train.h5", "test": f"{data}/test.h5"}}


def entry(acc, auc, rej30, rej50, inv=1.0, lower=False):
    return {"metrics": {"accuracy": acc, "auc": auc, "rej_30": rej30, "rej_50": rej50, "rej_30_lower_bound": lower},
            "invariance_score": inv}


def test_summarise_seeds_groups_runs_that_differ_only_in_seed():
    results = {"s1/mlp": entry(0.90, 0.95, 100.0, 30.0), "s2/mlp": entry(0.92, 0.96, 120.0, 32.0, lower=True),
               "s3/mlp": entry(0.91, 0.94, 110.0, 31.0), "lr/mlp": entry(0.5, 0.5, 2.0, 2.0),
               "teacher": entry(0.95, 0.99, 500.0, 90.0)}
    configs = {"s1/mlp": config("runs/s1/mlp", 1), "s2/mlp": config("runs/s2/mlp", 2),
               "s3/mlp": config("runs/s3/mlp", 3), "lr/mlp": config("runs/lr/mlp", 1, lr=0.1),
               "teacher": {**config("runs/s1/teacher", 1), "model": {"name": "lorentznet"}}}
    summary = summarise_seeds(results, configs)
    assert len(summary) == 1  # lr/mlp differs in optim.lr, the teacher in its model; singletons are not summarised
    group = summary[0]
    assert group["label"] == "mlp" and group["models"] == ["s1/mlp", "s2/mlp", "s3/mlp"]
    assert group["seeds"] == [1, 2, 3] and group["n_seeds"] == 3
    assert group["metrics"]["accuracy"]["mean"] == pytest.approx(0.91)
    assert group["metrics"]["accuracy"]["std"] == pytest.approx(0.01)  # sample standard deviation (ddof 1)
    assert group["metrics"]["rej_30"]["mean"] == pytest.approx(110.0)
    assert group["metrics"]["rej_30"]["std"] == pytest.approx(10.0)
    assert group["metrics"]["rej_30"]["values"] == [100.0, 120.0, 110.0]
    assert group["lower_bound"] == {"rej_30": True, "rej_50": False}
    table = summary_table(summary)
    row = "| mlp | 3 (1, 2, 3) | s1/mlp, s2/mlp, s3/mlp | 0.9100 ± 0.0100 | 0.9500 ± 0.0100 | 110.0 ± 10.0† |"
    assert row in table


def test_seed_groups_of_per_seed_pipeline_folders():
    """`jetkd run` folders per seed hold their own cache and teacher: paths inside the run's pipeline folder
    compare relative to it."""
    def kd(seed, data):
        return {**config(f"/r/s{seed}/mlp_kd", seed, data=data),
                "distill": {"method": "kd", "teacher": f"/r/s{seed}/teacher/best.pt"}}

    a, b, c = kd(1, "/r/s1/cache"), kd(2, "/r/s2/cache"), kd(3, "/elsewhere/cache")
    results = {n: entry(0.9, 0.9, 10.0, 5.0) for n in ("s1/mlp_kd", "s2/mlp_kd", "s3/mlp_kd")}
    summary = summarise_seeds(results, dict(zip(results, (a, b, c))))
    assert [g["models"] for g in summary] == [["s1/mlp_kd", "s2/mlp_kd"]]  # s3 trained on other data


def test_summary_of_non_finite_runs_is_nan_not_a_crash():
    results = {"a": entry(math.nan, math.nan, math.nan, math.nan), "b": entry(0.9, 0.9, 10.0, 5.0)}
    summary = summarise_seeds(results, {"a": config("x/a", 1), "b": config("x/b", 2)})
    assert math.isnan(summary[0]["metrics"]["auc"]["mean"])


# ----------------------------------------------------------------------------- data


def test_describe_data_from_generator_settings_or_file_names():
    data = describe_data({"inputs": [{"file": "/x/jets.root", "format": "root", "jets": 96, "generator": GENERATOR}]},
                         ["QCD", "Tbqq"], source="/x/cache/test.h5")
    assert data["description"] == ("Pythia 8.317, √s = 14 TeV, anti-kT R = 0.8, 550 < pT < 650 GeV, |η| < 2, "
                                   "massless constituents")
    assert data["class_names"] == ["QCD", "Tbqq"] and data["source"] == "/x/cache/test.h5"
    public = describe_data({"inputs": [{"file": "/d/test.h5", "format": "toptagging", "jets": 10}]}, None)
    assert public["description"] == "Jets from test.h5" and public["class_names"] is None
    assert describe_data(None, source="/c/test.h5")["description"] == "Jets from test.h5"


# ----------------------------------------------------------------------------- markdown


def test_markdown_table_shows_intervals():
    m = {"accuracy": 0.912, "accuracy_interval": [0.905, 0.918], "auc": 0.97, "auc_interval": [0.965, 0.975],
         "rej_30": 97.8, "rej_30_interval": [92.1, 104.3], "rej_30_lower_bound": False, "rej_50": 30.0,
         "rej_50_interval": [29.0, 31.0], "n_bootstrap": 200}
    table = markdown_table({"mlp": {"metrics": m, "parameters": 10}})
    row = next(line for line in table.splitlines() if line.startswith("| mlp"))
    assert "| 0.9120 [0.9050, 0.9180] | 0.9700 [0.9650, 0.9750] | 97.8 [92.1, 104.3] | 30.0 [29.0, 31.0] |" in row
    assert "central 68%" in table and "200 bootstrap resamples" in table


# ----------------------------------------------------------------------------- jetkd evaluate end to end


def write_checkpoint(run_dir, seed, lr=1e-3):
    """A best.pt as the trainer writes it (weights, resolved config, contract), without training."""
    from jetkd.models import build_model

    torch.manual_seed(seed)
    model = build_model(TINY_DEEPSET)
    run_dir.mkdir(parents=True)
    cfg = {"run_dir": str(run_dir), "model": TINY_DEEPSET, "train": {"seed": seed, "epochs": 2},
           "optim": {"lr": lr}}
    contract = {"class_names": ["QCD", "Tbqq"], "provenance": {}}
    torch.save({"model": model.state_dict(), "config": cfg, "contract": contract}, run_dir / "best.pt")
    return run_dir


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    from jetkd.cli import main

    root = tmp_path_factory.mktemp("evaluate")
    attrs = {"split": "test", "class_names": ["QCD", "Tbqq"],
             "inputs": [{"file": "/x/jets.root", "format": "root", "jets": 96, "generator": GENERATOR}]}
    with CacheWriter(root / "test.h5", 96, 16, attrs) as w:
        w.append(*toy_jets(96, 2, 16))
        w.commit()
    runs = [write_checkpoint(root / "seedA" / "mlp", 1), write_checkpoint(root / "seedB" / "mlp", 2),
            write_checkpoint(root / "seedA" / "teacher", 1, lr=0.1)]
    out = root / "report"
    assert main(["evaluate", *map(str, runs), "--data", str(root / "test.h5"), "--out", str(out),
                 "--betas", "0,0.5", "--bootstrap", "30"]) == 0
    return out


def test_evaluate_keeps_same_named_runs_apart(evaluated):
    doc = json.loads((evaluated / "report.json").read_text())
    assert list(doc["models"]) == ["seedA/mlp", "seedB/mlp", "teacher"]
    assert doc["models"]["seedA/mlp"]["metrics"]["auc"] != doc["models"]["seedB/mlp"]["metrics"]["auc"]
    md = (evaluated / "report.md").read_text()
    rows = [line.split("|")[1].strip() for line in md.splitlines() if line.startswith("| ")]
    assert rows[1:4] == ["seedA/mlp", "seedB/mlp", "teacher"]


def test_evaluate_report_has_intervals_data_and_seed_summary(evaluated):
    doc = json.loads((evaluated / "report.json").read_text())
    assert doc["format_version"] == 2
    m = doc["models"]["seedA/mlp"]["metrics"]
    for key in ("accuracy_interval", "auc_interval", "rej_30_interval", "rej_50_interval"):
        assert len(m[key]) == 2, key
    assert m["n_bootstrap"] == 30 and isinstance(m["rej_30_lower_bound"], bool) and m["n_nonfinite"] == 0
    assert doc["models"]["seedB/mlp"]["train_seed"] == 2
    assert doc["data"]["class_names"] == ["QCD", "Tbqq"] and "Pythia 8.317" in doc["data"]["description"]
    [group] = doc["summary"]  # the teacher's lr differs: only the two mlp seeds form a group
    assert group["models"] == ["seedA/mlp", "seedB/mlp"] and group["seeds"] == [1, 2] and group["n_seeds"] == 2
    aucs = [doc["models"][n]["metrics"]["auc"] for n in group["models"]]
    assert group["metrics"]["auc"]["mean"] == pytest.approx(np.mean(aucs))
    assert group["metrics"]["auc"]["std"] == pytest.approx(np.std(aucs, ddof=1))
    md = (evaluated / "report.md").read_text()
    assert "## Over seeds" in md and "| mlp | 2 (1, 2) | seedA/mlp, seedB/mlp |" in md
    assert "Test data: Pythia 8.317, √s = 14 TeV" in md and "signal Tbqq, background QCD" in md
    row = next(line for line in md.splitlines() if line.startswith("| seedA/mlp"))
    assert row.count("[") >= 2  # accuracy and AUC with their intervals


def test_write_report_round_trips_new_fields(tmp_path):
    m = {"n_jets": 10, "n_signal": 5, "n_background": 5, "n_nonfinite": 0, "accuracy": 1.0,
         "accuracy_interval": [1.0, 1.0], "auc": 1.0, "auc_interval": [1.0, 1.0], "eps_b_30": 0.0,
         "eps_b_30_interval": [0.0, 0.0], "rej_30": math.inf, "rej_30_interval": [math.inf, math.inf],
         "rej_30_lower_bound": True, "rej_30_limit": 2.7, "warnings": []}
    write_report(tmp_path, {"m": {"metrics": m}}, plots=False, data=describe_data(None, ["b", "s"]))
    from jetkd.evaluate import read_report

    back = read_report(tmp_path)["m"]["metrics"]
    assert back["rej_30"] == math.inf and back["rej_30_interval"] == [math.inf, math.inf]
    doc = json.loads((tmp_path / "report.json").read_text())
    assert doc["summary"] == [] and doc["data"]["class_names"] == ["b", "s"]
    assert "> 2.7†" in (tmp_path / "report.md").read_text()
