"""End to end on a small generated sample: generate, convert, teacher, students with and without KD, evaluate."""

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

from jetkd.cli import main
from jetkd.errors import InputError
from jetkd.pipeline import QUICKSTART, load_pipeline, run_pipeline

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("teacher", "mlp", "mlp_kd", "deepset", "deepset_kd")
SMALL = ["generate.jets=2000", "generate.workers=2", "convert.max_particles=48", "teacher.train.epochs=8", "student_defaults.train.epochs=8"]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """The quickstart pipeline shrunk to CI size (2000 jets, 48 constituents, short trainings, five boost points)."""
    run_dir = tmp_path_factory.mktemp("pipeline") / "run"
    pipe = load_pipeline(
        QUICKSTART,
        [
            f"run_dir={run_dir}",
            *SMALL,
            "evaluate.betas=[0.0, 0.25, 0.5, 0.75, 0.9]",
        ],
    )
    run_pipeline(pipe, progress=False)
    return run_dir


def test_pipeline_writes_every_stage(small_run):
    assert (small_run / "jets.root").is_file()
    assert {p.name for p in (small_run / "cache").iterdir()} == {"train.h5", "val.h5", "test.h5"}
    for name in MODELS:
        assert (small_run / name / "best.pt").is_file() and (small_run / name / "metrics.jsonl").is_file()
    for name in ("report.json", "report.md", "roc.png", "accuracy_vs_beta.png", "rejection_vs_beta.png", "score_histograms.png"):
        assert (small_run / name).is_file()


def test_report_has_every_model_and_the_teacher_beats_the_plain_students(small_run):
    report = json.loads((small_run / "report.json").read_text())
    models = report["models"] if "models" in report else report
    assert set(MODELS) <= set(models)
    auc = {name: models[name]["metrics"]["auc"] for name in MODELS}
    assert auc["teacher"] > auc["mlp"] and auc["teacher"] > auc["deepset"], auc
    for name in MODELS:
        entry = models[name]
        assert [p["beta"] for p in entry["boost_scan"]] == [0.0, 0.25, 0.5, 0.75, 0.9]
        assert 0 < entry["invariance_score"] <= 1.0 + 1e-9
    table = (small_run / "report.md").read_text()
    assert all(f"| {name} " in table for name in MODELS)


def test_rerun_skips_finished_stages(small_run, capsys):
    config = small_run.parent / "pipeline.yaml"
    config.write_text(yaml.safe_dump({**yaml.safe_load(QUICKSTART.read_text()), "run_dir": str(small_run)}))
    before = (small_run / "teacher" / "best.pt").stat().st_mtime_ns
    assert main(["run", str(config), *SMALL, "evaluate.betas=[0.0, 0.5]", "evaluate.also_axes=[[0, 0, 1], jet]"]) == 0
    out = capsys.readouterr().out
    assert "training" not in out and "generating" not in out and "report" in out.lower()
    assert (small_run / "teacher" / "best.pt").stat().st_mtime_ns == before
    # the further scans: one report each, every model, boosted along z and along each jet's own axis
    for name, axis in (("z", [0.0, 0.0, 1.0]), ("jet", "jet")):
        models = json.loads((small_run / f"boost_{name}" / "report.json").read_text())["models"]
        assert set(MODELS) <= set(models) and {m["boost_axis"] == axis for m in models.values()} == {True}
        assert (small_run / f"boost_{name}" / "rejection_vs_beta.png").is_file()
    with pytest.raises(InputError, match=r"evaluate.also_axes\[1\].*'jet'"):
        load_pipeline(config, ["evaluate.also_axes=[[0, 0, 1], beam]"])


def test_cli_evaluate_on_run_folders(small_run, tmp_path, capsys):
    out = tmp_path / "report"
    args = ["evaluate", str(small_run / "teacher"), str(small_run / "deepset" / "best.pt"),
            "--data", str(small_run / "cache" / "test.h5"), "--out", str(out), "--betas", "0,0.5", "--axis", "0,0,1"]
    assert main(args) == 0
    assert "| teacher " in (out / "report.md").read_text() and "| deepset " in (out / "report.md").read_text()
    assert str(out) in capsys.readouterr().out
    assert main([*args[:-2], "--axis", "jet", "--out", str(tmp_path / "jet")]) == 0
    models = json.loads((tmp_path / "jet" / "report.json").read_text())["models"]
    assert {m["boost_axis"] for m in models.values()} == {"jet"}


def test_compare_methods_script_writes_one_table(small_run):
    """scripts/compare_methods.py on a finished run folder (nothing left to train): the table of every model."""
    spec = importlib.util.spec_from_file_location("compare_methods", ROOT / "scripts" / "compare_methods.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    config = small_run.parent / "compare.yaml"
    config.write_text(yaml.safe_dump({**yaml.safe_load(QUICKSTART.read_text()), "run_dir": str(small_run)}))
    out = script.main(["--config", str(config), *SMALL, "evaluate.betas=[0.0, 0.5]"])
    text = out.read_text()
    assert "2,000 generated jets (Pythia seed 1)" in text and "Training seeds: teacher 1" in text
    rows = [line.split(" | ")[0].strip("| ") for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows == ["Model", *MODELS[:1], "mlp", "mlp_kd", "deepset", "deepset_kd"]


def tiny_pipeline(cache, run_dir, **extra) -> dict:
    """A pipeline on the toy cache: a tiny LorentzNet teacher, a plain and a distilled tiny deep set, 1 epoch."""
    from helpers import TINY_DEEPSET

    return {"run_dir": str(run_dir), "data": {k: str(cache / f"{k}.h5") for k in ("train", "val", "test")},
            "teacher": {"model": {"name": "lorentznet", "n_hidden": 8, "n_layers": 2, "dropout": 0.0},
                        "train": {"epochs": 1, "batch_size": 32}},
            "student_defaults": {"train": {"epochs": 1, "batch_size": 32}},
            "students": {"ds": {"model": TINY_DEEPSET},
                         "ds_kd": {"model": TINY_DEEPSET, "distill": {"method": "kd", "temperature": 2.0}}},
            "evaluate": {"betas": [0.0, 0.5]}, **extra}


def test_run_reruns_exactly_the_stages_whose_config_or_inputs_changed(cache, tmp_path, capsys):
    config = tmp_path / "pipe.yaml"
    config.write_text(yaml.safe_dump(tiny_pipeline(cache, tmp_path / "run")))
    assert main(["run", str(config)]) == 0
    stamp = {name: (tmp_path / "run" / name / "best.pt").stat().st_mtime_ns for name in ("teacher", "ds", "ds_kd")}
    capsys.readouterr()
    assert main(["run", str(config)]) == 0  # nothing changed: nothing trains
    assert "== training" not in capsys.readouterr().out
    assert main(["run", str(config), "teacher.model.n_hidden=6"]) == 0  # the teacher and its student rerun
    out = capsys.readouterr().out
    assert "== teacher: config changed: model.n_hidden 8 -> 6: rerunning it" in out
    assert "== ds_kd: its teacher changed: rerunning it" in out and "== training ds " not in out
    after = {name: (tmp_path / "run" / name / "best.pt").stat().st_mtime_ns for name in ("teacher", "ds", "ds_kd")}
    assert after["ds"] == stamp["ds"] and after["teacher"] != stamp["teacher"] and after["ds_kd"] != stamp["ds_kd"]
    moved = sorted(p.name for p in (tmp_path / "run").iterdir() if ".replaced-" in p.name)
    assert [name.split(".replaced-")[0] for name in moved] == ["ds_kd", "teacher"]  # moved aside, not overwritten
    assert load_checkpoint_config(tmp_path / "run" / "teacher")["model"]["n_hidden"] == 6
    assert main(["run", str(config), "student_defaults.train.epochs=2", "teacher.model.n_hidden=6"]) == 0
    out = capsys.readouterr().out
    assert "== ds: config changed: train.epochs 1 -> 2" in out and "teacher: " not in out

    # stages recorded by an older jetkd, before train.boost_bank and convert.max_momentum existed: a key that holds
    # its default is no change (nothing reruns); one set to another value is
    stages = json.loads((tmp_path / "run" / "stages.json").read_text())
    for stage in ("ds", "ds_kd", "teacher"):
        del stages[stage]["config"]["train"]["boost_bank"]
        stages[stage]["fingerprint"] = "from an older jetkd"
    (tmp_path / "run" / "stages.json").write_text(json.dumps(stages))
    overrides = ["student_defaults.train.epochs=2", "teacher.model.n_hidden=6"]
    assert main(["run", str(config), *overrides]) == 0
    out = capsys.readouterr().out
    assert "rerunning" not in out and "== training" not in out
    assert main(["run", str(config), *overrides, "students.ds.train.boost_beta_max=0.5",
                 "students.ds.train.boost_bank=2"]) == 0
    assert "== ds: config changed: train.boost_bank 0 -> 2; train.boost_beta_max 0.0 -> 0.5" in capsys.readouterr().out


def load_checkpoint_config(run):
    from jetkd.train.checkpoint import load_checkpoint

    return load_checkpoint(run)["config"]


def test_run_with_a_list_of_seeds_summarises_them(cache, tmp_path):
    run = tmp_path / "run"
    pipe = load_pipeline_dict(tiny_pipeline(cache, run, seeds=[1, 2, 3]), tmp_path)
    run_pipeline(pipe, progress=False)
    for student in ("ds", "ds_kd"):
        assert [load_checkpoint_config(run / f"{student}_seed{k}")["train"]["seed"] for k in (1, 2, 3)] == [1, 2, 3]
    report = json.loads((run / "report.json").read_text())
    groups = {g["label"]: g for g in report["summary"]}
    assert {g["n_seeds"] for g in groups.values()} == {3} and len(groups) == 2
    assert "Over seeds" in (run / "report.md").read_text()


def load_pipeline_dict(data, tmp_path):
    path = tmp_path / "pipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_pipeline(path)


def test_evaluation_prints_one_line_per_model_without_a_terminal(small_run, tmp_path):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "jetkd", "evaluate", str(small_run / "teacher"),
                           str(small_run / "mlp"), "--data", str(small_run / "cache" / "test.h5"), "--out",
                           str(tmp_path / "r"), "--betas", "0,0.5", "--bootstrap", "20"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = [x for x in done.stdout.splitlines() if x.startswith("evaluated ")]
    assert [x.split(" (")[0] for x in lines] == ["evaluated teacher", "evaluated mlp"] and "(2/2)" in lines[1]


REFERENCE = ROOT / ".." / "shared" / "reference" / "lorentznet_top_pretrained.pt"


@pytest.mark.skipif(not REFERENCE.is_file(), reason=f"published LorentzNet checkpoint not found at {REFERENCE}")
def test_pipeline_with_the_published_teacher(cache, tmp_path, capsys):
    pipe = tiny_pipeline(cache, tmp_path / "run")
    pipe["teacher"] = {"published": str(REFERENCE)}
    pipe["students"] = {"ds_kd": pipe["students"]["ds_kd"]}
    run_pipeline(load_pipeline_dict(pipe, tmp_path), progress=False)
    ckpt = load_checkpoint_config(tmp_path / "run" / "teacher")
    assert ckpt["published"] == str(REFERENCE.resolve()) and ckpt["model"]["n_hidden"] == 72
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert set(report["models"]) == {"teacher", "ds_kd"} and report["models"]["teacher"]["parameters"] > 200_000
    assert "teacher: the published LorentzNet checkpoint" in (tmp_path / "run" / "report.md").read_text()
    capsys.readouterr()
    run_pipeline(load_pipeline_dict(pipe, tmp_path), progress=False)  # unchanged: imported once, student reused
    assert "importing the published teacher" not in capsys.readouterr().out
    bad = {**pipe, "teacher": {"published": str(tmp_path / "absent.pt")}}
    with pytest.raises(InputError, match="teacher.published"):
        load_pipeline_dict(bad, tmp_path)
