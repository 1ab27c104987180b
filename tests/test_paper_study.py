"""The paper study: its configs follow KD4Jets' protocol, and its tables read the reports right."""

import importlib.util
import json
from pathlib import Path

import pytest

from jetkd.config import load_job
from jetkd.pipeline import _job_dict, load_pipeline

ROOT = Path(__file__).parents[1]


def jobs(config: str) -> dict:
    pipe = load_pipeline(ROOT / "configs" / config)
    return pipe, {name: load_job(data=_job_dict(pipe, entry, f"students.{name}", Path("/tmp/unused"), 1))
                  for name, entry in pipe.students.items()}


@pytest.mark.parametrize("config, epochs, bank", [("paper_study.yaml", 15, 4), ("paper_study_full.yaml", 100, 0)])
def test_students_follow_kd4jets(config, epochs, bank):
    """lr 2e-4 (AdamW, amsgrad), a 1,000-step warm-up then x0.7 every 10 epochs, batch 64, best epoch by validation
    accuracy; KD at T = 1, 3, 5 with lambda 0.7 (MLP) and 1 (deep set); the boost-augmented deep sets at beta_max 0.5
    and 0.9 along x, alone and with KD (lambda 1, T 1), validated on boosted jets; three seeds."""
    pipe, students = jobs(config)
    assert len(pipe.seeds) >= 3
    for name, job in students.items():
        assert (job.optim.name, job.optim.lr, job.optim.amsgrad) == ("adamw", 2e-4, True), name
        assert (job.schedule.name, job.schedule.warmup_steps, job.schedule.step_epochs, job.schedule.gamma) == (
            "step", 1000, 10, 0.7), name
        assert (job.train.batch_size, job.train.select_by, job.train.epochs) == (64, "val_acc", epochs), name
        if job.distill.method == "kd":
            assert job.distill.alpha == (0.7 if job.model["name"] == "mlp" else 1.0), name
    temperatures = {(j.model["name"], j.distill.temperature) for j in students.values()
                    if j.distill.method == "kd" and not j.train.boost_beta_max}
    assert temperatures == {(m, t) for m in ("mlp", "deepset") for t in (1.0, 3.0, 5.0)}
    boosted = {(j.train.boost_beta_max, j.distill.method) for j in students.values() if j.train.boost_beta_max}
    assert boosted == {(b, m) for b in (0.5, 0.9) for m in ("none", "kd")}
    for job in students.values():
        if job.train.boost_beta_max:
            assert job.train.boost_validation and list(job.train.boost_axis) == [1.0, 0.0, 0.0]
            assert job.train.boost_bank == bank and job.model["name"] == "deepset"
            assert job.distill.method == "none" or job.distill.temperature == 1.0


def load_tables():
    spec = importlib.util.spec_from_file_location("paper_study_tables", ROOT / "scripts" / "paper_study_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def entry(acc, rej, invariance, lower=False):
    scan = [{"beta": b, "accuracy": acc - b / 2, "rej_30": rej / (1 + 10 * b)} for b in (0.0, 0.5, 0.9)]
    return {"metrics": {"accuracy": acc, "auc": acc + 0.05, "rej_30": None if lower else rej, "rej_30_lower_bound": lower,
                        "rej_30_limit": rej, "rej_30_interval": [rej - 10, rej + 10], "rej_50": rej / 4,
                        "rej_50_lower_bound": False, "rej_50_interval": [rej / 4 - 1, rej / 4 + 1]},
            "boost_scan": scan, "invariance_score": invariance}


def test_tables_group_seeds_and_set_the_paper_beside_ours(tmp_path):
    tables = load_tables()
    models = {"teacher": entry(0.94, 900, 0.97), "mlp_seed1": entry(0.80, 100, 0.40), "mlp_seed2": entry(0.82, 120, 0.44),
              "mlp_kd_T5_seed1": entry(0.84, 200, 0.45), "mlp_kd_T5_seed2": entry(0.86, 240, 0.47),
              "deepset_boost05_kd_seed1": entry(0.90, 300, 0.70, lower=True),
              "deepset_boost05_kd_unboostedval_seed1": entry(0.91, 310, 0.60)}
    (tmp_path / "report.json").write_text(json.dumps({"models": models, "data": {"description": "toy jets"}}))
    out = tmp_path / "tables.md"
    assert tables.main([str(tmp_path), "--z", str(tmp_path / "report.json"), "--out", str(out)]) == 0
    text = out.read_text()
    assert "Test data: toy jets" in text
    # mean ± std over the two seeds, the mean bootstrap interval, the KD gain beside the paper's (503 / 256)
    assert "| mlp_kd_T5 | 2 | 0.8500 ± 0.0141 | 0.9000 ± 0.0141 | 55 ± 7 [54, 56] | 220 ± 28 [210, 230] | 2.00x | 503 | 1.96x |" in text
    assert "| teacher | 1 | 0.9400 | 0.9900 |" in text
    robustness = text.split("### Boost robustness")[1].split("###")[0]
    assert "| mlp | 2 | 0.810 ± 0.014 | 0.560 ± 0.014 | 0.360 ± 0.014 | 0.420 ± 0.028 | 0.904 / 0.633 / 0.536, 0.460 |" in robustness
    assert "| deepset_boost05_kd_unboostedval | 1 |" in robustness
    scans = text.split("### Scans")[1]
    assert "x: acc 0.5" in scans and "z: acc 0.5" in scans
    # a rejection that is only a lower limit is quoted as its limit, marked ">"
    table1 = load_tables().table1({"models": {"deepset": entry(0.9, 300, 0.5, lower=True)}})
    assert "| deepset | 1 | 0.9000 | 0.9500 | 75 [74, 76] | >300 [290, 310] |" in table1
