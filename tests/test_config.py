"""Configs: validation errors name the key, the value and where it was set; overrides are typed; shipped configs load."""

from pathlib import Path

import pytest
import yaml

from jetkd.cli import main
from jetkd.config import JOB_CHECKS, PIPELINE_CHECKS, TrainJob, apply_overrides, check_values, load_job
from jetkd.errors import InputError
from jetkd.pipeline import QUICKSTART, Pipeline, load_pipeline

CONFIGS = Path(__file__).parents[1] / "configs"


def write(tmp_path, text):
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


def test_job_loads_with_typed_overrides(tmp_path):
    path = write(tmp_path, "model: {name: deepset}\ntrain: {epochs: 3}\n")
    job = load_job(path, ["train.epochs=5", "optim.lr=2e-4", "optim.weight_decay=1e-2", "train.boost_axis=[0, 0, 1]", "model.rho_hidden=[16]"])
    assert job.train.epochs == 5 and job.optim.lr == pytest.approx(2e-4)
    assert job.train.boost_axis == [0, 0, 1] and job.model["rho_hidden"] == [16]


@pytest.mark.parametrize(
    "text, overrides, message",
    [
        ("train: {epocs: 3}\n", [], r"job\.yaml: train\.epocs: unknown key; expected one of epochs"),
        ("model: {name: deepset, widht: 3}\n", [], r"model\.widht: unknown argument of deepset"),
        ("model: {name: resnet}\n", [], r"model\.name: 'resnet' is not one of lorentznet, mlp, deepset"),
        ("train: {epochs: many}\n", [], r"train\.epochs: expected int, got 'many'"),
        ("schedule: {name: linear}\n", [], r"schedule\.name: 'linear' is not one of cosine, step, constant"),
        ("{}\n", ["distill.mehtod=kd"], r"distill\.mehtod: unknown key"),
        ("optim: {lr: 1e-3x}\n", [], r"optim\.lr: expected float, got .1e-3x."),
        ("{}\n", ["train.epochs"], r"override 'train\.epochs': expected key\.sub=value"),
    ],
)
def test_bad_keys_are_one_line_errors_naming_the_key(tmp_path, text, overrides, message):
    with pytest.raises(InputError, match=message) as err:
        load_job(write(tmp_path, text), overrides)
    assert "\n" not in str(err.value)


def test_missing_and_invalid_yaml(tmp_path):
    with pytest.raises(InputError, match="no such config file"):
        load_job(tmp_path / "absent.yaml")
    with pytest.raises(InputError, match="not valid YAML"):
        load_job(write(tmp_path, "train: {epochs: [\n"))


def test_overrides_create_nested_sections():
    assert apply_overrides({}, ["a.b.c=1", "a.d=x"]) == {"a": {"b": {"c": 1}, "d": "x"}}


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_are_valid(path):
    if "generate" in path.read_text() or "students:" in path.read_text():
        load_pipeline(path)
    else:
        load_job(path)


def test_quickstart_pipeline_rejects_unknown_student_key():
    with pytest.raises(InputError, match=r"students\.mlp|train\.epohcs"):
        load_pipeline(QUICKSTART, ["students.mlp.train.epohcs=3"])


@pytest.mark.parametrize("name", [f"trigger_{a}{n}{q}" for a in ("mlp", "deepset") for n in (16, 32) for q in ("", "_qat")])
def test_trigger_configs_are_level1_sized(name):
    from jetkd.models import build_model
    from jetkd.models.students import count_parameters

    job = load_job(CONFIGS / f"{name}.yaml")
    n = int(name.removesuffix("_qat").removeprefix("trigger_mlp").removeprefix("trigger_deepset"))
    assert job.model["name"].endswith("_fixed") == name.endswith("_qat")
    assert job.data.train == f"data/toptag{n}/train.h5"  # a cache of the leading n constituents
    assert count_parameters(build_model(job.model)) <= 4000
    if job.model["name"].startswith("mlp"):
        assert job.model["n_constituents"] == n


# ----------------------------------------------------------------------------- values out of bounds


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epochs=0", "train.epochs: expected an integer >= 1, got 0"),
        ("train.epochs=-1", "train.epochs: expected an integer >= 1, got -1"),
        ("train.batch_size=0", "train.batch_size: expected an integer >= 1, got 0"),
        ("train.eval_batch_size=0", "train.eval_batch_size: expected an integer >= 1, got 0"),
        ("train.seed=-1", "train.seed: expected an integer >= 0, got -1"),
        ("train.grad_clip=-1", "train.grad_clip: expected a number >= 0, got -1.0"),
        ("train.checkpoint_every=-5", "train.checkpoint_every: expected an integer >= 0, got -5"),
        ("train.boost_beta_max=1", "train.boost_beta_max: expected a number in [0, 1), got 1.0"),
        ("train.boost_beta_max=-0.1", "train.boost_beta_max: expected a number in [0, 1), got -0.1"),
        ("train.boost_axis=[a,b,c]", "train.boost_axis[0]: expected float, got 'a'"),
        ("train.boost_axis=[1, 0, x]", "train.boost_axis[2]: expected float, got 'x'"),
        ("train.boost_axis=[0, 0, 0]", "train.boost_axis: expected a non-zero three-vector [x, y, z], got [0.0, 0.0, 0.0]"),
        ("train.boost_axis=[1, 0]", "train.boost_axis: expected a non-zero three-vector [x, y, z], got [1.0, 0.0]"),
        ("train.boost_axis=[.nan, 0, 1]", "train.boost_axis: expected a non-zero three-vector [x, y, z], got [nan, 0.0, 1.0]"),
        ("train.select_by=acc", "train.select_by: 'acc' is not one of val_acc, val_auc, val_loss"),
        ("optim.lr=0", "optim.lr: expected a number > 0, got 0.0"),
        ("optim.lr=-1e-3", "optim.lr: expected a number > 0, got -0.001"),
        ("optim.lr=.inf", "optim.lr: expected a number > 0, got inf"),
        ("optim.weight_decay=-0.01", "optim.weight_decay: expected a number >= 0, got -0.01"),
        ("optim.betas=[0.9, 1.0]", "optim.betas[1]: expected a number in [0, 1), got 1.0"),
        ("optim.betas=[0.9]", "optim.betas: expected two numbers in [0, 1), got [0.9]"),
        ("optim.betas=[0.9, fast]", "optim.betas[1]: expected float, got 'fast'"),
        ("optim.eps=0", "optim.eps: expected a number > 0, got 0.0"),
        ("schedule.warmup_epochs=-1", "schedule.warmup_epochs: expected a number >= 0, got -1.0"),
        ("schedule.step_epochs=0", "schedule.step_epochs: expected an integer >= 1, got 0"),
        ("schedule.gamma=0", "schedule.gamma: expected a number > 0, got 0.0"),
        ("distill.temperature=0", "distill.temperature: expected a number > 0, got 0.0"),
        ("distill.alpha=1.5", "distill.alpha: expected a number in [0, 1], got 1.5"),
        ("distill.alpha=-0.5", "distill.alpha: expected a number in [0, 1], got -0.5"),
        ("distill.cdd.compactor_lr_scale=0", "distill.cdd.compactor_lr_scale: expected a number > 0, got 0.0"),
        ("distill.curriculum.seed=-2", "distill.curriculum.seed: expected an integer >= 0, got -2"),
        ("distill.curriculum.phase_epochs=[1, two]", "distill.curriculum.phase_epochs[1]: expected float, got 'two'"),
        ("distill.curriculum.teacher_taps=[LGEBs.0, 3]", "distill.curriculum.teacher_taps[1]: expected str, got 3"),
        ("run_dir=''", "run_dir: expected a folder, got ''"),
    ],
)
def test_out_of_bounds_override_is_one_line_naming_command_line_key_and_value(tmp_path, override, message):
    path = write(tmp_path, "model: {name: deepset}\ntrain: {epochs: 3}\n")
    with pytest.raises(InputError) as err:
        load_job(path, [override])
    assert str(err.value) == f"command line: {message}"


def test_out_of_bounds_value_in_a_file_names_the_file(tmp_path):
    path = write(tmp_path, "model: {name: deepset}\ntrain: {epochs: 0, boost_axis: [1, 0, b]}\n")
    with pytest.raises(InputError) as err:
        load_job(path)
    assert str(err.value) == f"{path}: train.boost_axis[2]: expected float, got 'b'"
    with pytest.raises(InputError) as err:
        load_job(path, ["train.boost_axis=[0, 0, 1]"])
    assert str(err.value) == f"{path}: train.epochs: expected an integer >= 1, got 0"


def test_run_dir_that_is_a_file_is_refused(tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    path = write(tmp_path, f"run_dir: {taken}\n")
    with pytest.raises(InputError, match=rf"^{path}: run_dir: expected a folder, got the existing file '{taken}'$"):
        load_job(path)
    with pytest.raises(InputError, match=r"^command line: run_dir: expected a folder, got the existing file"):
        load_job(write(tmp_path, "{}\n"), [f"run_dir={taken}"])


def test_in_bounds_edge_values_load(tmp_path):
    job = load_job(write(tmp_path, "{}\n"), ["train.seed=0", "train.grad_clip=0", "train.boost_beta_max=0.99",
                                             "train.boost_axis=[0, 0, -1e-3]", "optim.betas=[0, 0.5]", "schedule.warmup_epochs=0",
                                             "distill.alpha=1", "optim.lr=1e-3", "train.checkpoint_every=0"])
    assert job.distill.alpha == 1.0 and job.train.boost_axis == [0.0, 0.0, -1e-3] and job.optim.lr == 1e-3


def test_check_tables_name_real_keys_and_the_defaults_pass():
    """A misspelt key in a check table would silently check nothing: check_values raises AttributeError on it."""
    check_values(TrainJob(), JOB_CHECKS, "defaults")
    check_values(Pipeline(), PIPELINE_CHECKS, "defaults")
    with pytest.raises(AttributeError):
        check_values(TrainJob(), {"train.epocs": JOB_CHECKS["train.epochs"]}, "defaults")


def test_cli_train_refuses_zero_epochs_before_any_work(tmp_path, capsys):
    """Found: train.epochs=0 exited 0 and wrote an untrained best.pt."""
    run = tmp_path / "run"
    path = write(tmp_path, f"run_dir: {run}\nmodel: {{name: deepset}}\n")
    assert main(["train", str(path), "train.epochs=0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "jetkd train: error: command line: train.epochs: expected an integer >= 1, got 0"
    assert not run.exists()


# ----------------------------------------------------------------------------- origins: files and command line


def test_unknown_key_on_the_command_line_is_blamed_on_the_command_line(tmp_path):
    path = write(tmp_path, "model: {name: deepset}\ntrain: {epochs: 3}\n")
    with pytest.raises(InputError, match=r"^command line: train\.epocs: unknown key; expected one of epochs"):
        load_job(path, ["train.epocs=5"])
    with pytest.raises(InputError, match=r"^command line: students\.mlp\.train\.epohcs: unknown key"):
        load_pipeline(QUICKSTART, ["students.mlp.train.epohcs=3"])
    with pytest.raises(InputError, match=r"^command line: evalute: unknown key"):
        load_pipeline(QUICKSTART, ["evalute.betas=[0.5]"])


def test_unknown_key_in_the_file_is_blamed_on_the_file_despite_overrides(tmp_path):
    path = write(tmp_path, "model: {name: deepset}\ntrain: {epocs: 3}\n")
    with pytest.raises(InputError, match=rf"^{path}: train\.epocs: unknown key"):
        load_job(path, ["train.epochs=5"])


def test_extends_chain_blames_the_file_that_set_the_key(tmp_path):
    (tmp_path / "base.yaml").write_text("model: {name: deepset}\ntrain: {batch_size: 0, epochs: 3}\noptim: {lr: 0}\n")
    (tmp_path / "mid.yaml").write_text("extends: base.yaml\noptim: {lr: 1.0e-3, wd: 1}\n")
    leaf = tmp_path / "sub" / "leaf.yaml"
    leaf.parent.mkdir()
    leaf.write_text("extends: ../mid.yaml\ntrain: {epochs: 0}\n")
    with pytest.raises(InputError) as err:
        load_job(leaf, ["optim.lr=0.01"])  # the typo is in mid.yaml, whatever the command line adds to the section
    assert str(err.value).startswith(f"{tmp_path / 'mid.yaml'}: optim.wd: unknown key")
    with pytest.raises(InputError) as err:
        load_job(tmp_path / "mid.yaml", ["optim={lr: 1.0e-3}"])
    assert str(err.value) == f"{tmp_path / 'base.yaml'}: train.batch_size: expected an integer >= 1, got 0"
    with pytest.raises(InputError) as err:
        load_job(leaf, ["optim={lr: 1.0e-3}", "train.batch_size=8"])
    assert str(err.value) == f"{leaf}: train.epochs: expected an integer >= 1, got 0"


@pytest.mark.parametrize(
    "files, message",
    [
        ({"a.yaml": "extends: a.yaml\n"}, r"a\.yaml: extends: a\.yaml: .*cycle \(a\.yaml -> a\.yaml\)"),
        ({"a.yaml": "extends: b.yaml\n", "b.yaml": "extends: a.yaml\n"},
         r"b\.yaml: extends: a\.yaml: .*cycle \(a\.yaml -> b\.yaml -> a\.yaml\)"),
        ({"a.yaml": "extends: ./sub/../b.yaml\n", "b.yaml": "extends: c.yaml\n", "c.yaml": "extends: b.yaml\n"},
         r"c\.yaml: extends: b\.yaml: .*cycle \(a\.yaml -> b\.yaml -> c\.yaml -> b\.yaml\)"),
        ({"a.yaml": "extends: missing.yaml\n"}, r"a\.yaml: extends: missing\.yaml: no such config file"),
        ({"a.yaml": "extends: [b.yaml]\n"}, r"a\.yaml: extends: expected a config file name, got \['b\.yaml'\]"),
    ],
)
def test_extends_cycles_and_bad_targets_are_one_line_errors(tmp_path, files, message):
    (tmp_path / "sub").mkdir()
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    for load in (load_job, load_pipeline):
        with pytest.raises(InputError, match=message) as err:
            load(tmp_path / "a.yaml")
        assert "\n" not in str(err.value)


def pipeline_file(tmp_path, **changes):
    """The quickstart config with ``changes`` (top-level sections replaced) as a file of its own."""
    path = tmp_path / "pipe.yaml"
    path.write_text(yaml.safe_dump({**yaml.safe_load(QUICKSTART.read_text()), **changes}))
    return path


@pytest.mark.parametrize(
    "override, message",
    [
        ("evaluate.batch_size=0", "evaluate.batch_size: expected an integer >= 1, got 0"),
        ("evaluate.betas=[0.0, 0.5, 1.0]", "evaluate.betas[2]: expected a number in [0, 1), got 1.0"),
        ("evaluate.betas=[0.0, half]", "evaluate.betas[1]: expected float, got 'half'"),
        ("evaluate.betas=[]", "evaluate.betas: expected a non-empty list of numbers in [0, 1), got []"),
        ("evaluate.axis=[0, 0, 0]", "evaluate.axis: expected a non-zero three-vector [x, y, z], got [0.0, 0.0, 0.0]"),
        ("evaluate.axis=[a,b,c]", "evaluate.axis[0]: expected float, got 'a'"),
        ("generate.seed=-1", "generate.seed: expected an integer >= 0, got -1"),
        ("generate.jets=0", "generate.jets: expected an integer >= 1, got 0"),
        ("convert.seed=-1", "convert.seed: expected an integer >= 0, got -1"),
        ("convert.max_particles=0", "convert.max_particles: expected an integer >= 1, got 0"),
        ("convert.split.val=-0.15", "convert.split.val: expected a number > 0, got -0.15"),
        ("convert.split={train: 0.8, val: 0.2}", "convert.split: expected fractions for train, val and test, got "
                                                 "{'train': 0.8, 'val': 0.2}"),
        ("teacher.train.epochs=0", "teacher.train.epochs: expected an integer >= 1, got 0"),
        ("student_defaults.train.batch_size=0", "student_defaults.train.batch_size: expected an integer >= 1, got 0"),
        ("students.mlp_kd.distill.alpha=2", "students.mlp_kd.distill.alpha: expected a number in [0, 1], got 2.0"),
        ("students.mlp.run_dir=x", "students.mlp.run_dir: set by the pipeline; remove it"),
    ],
)
def test_pipeline_values_are_checked_on_load(override, message):
    with pytest.raises(InputError) as err:
        load_pipeline(QUICKSTART, [override])
    assert str(err.value) == f"command line: {message}"


def test_pipeline_job_keys_are_blamed_on_the_section_and_file_that_set_them(tmp_path):
    defaults = {"train": {"epochs": 0, "batch_size": 64, "seed": 1}, "optim": {"lr": 1.0e-3}}
    path = pipeline_file(tmp_path, student_defaults=defaults)
    with pytest.raises(InputError) as err:
        load_pipeline(path)
    assert str(err.value) == f"{path}: student_defaults.train.epochs: expected an integer >= 1, got 0"
    load_pipeline(path, ["student_defaults.train.epochs=2"])
    # a student's own section wins over the defaults, so its value is the one named
    path = pipeline_file(tmp_path, students={"mlp": {"model": {"name": "mlp"}, "train": {"seed": -3}}})
    with pytest.raises(InputError) as err:
        load_pipeline(path, ["student_defaults.train.seed=-1"])
    assert str(err.value) == f"{path}: students.mlp.train.seed: expected an integer >= 0, got -3"
    path = pipeline_file(tmp_path, evaluate={"axis": [1, 0, 0], "batch_size": 0})
    with pytest.raises(InputError) as err:
        load_pipeline(path)
    assert str(err.value) == f"{path}: evaluate.batch_size: expected an integer >= 1, got 0"


def test_pipeline_extending_a_shipped_config_blames_each_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(f"extends: {QUICKSTART}\nstudents: {{mlp: {{train: {{epochz: 3}}}}}}\n")
    with pytest.raises(InputError, match=rf"^{path}: students\.mlp\.train\.epochz: unknown key"):
        load_pipeline(path)
    path.write_text(f"extends: {QUICKSTART}\nrun_dir: {tmp_path / 'run'}\n")
    with pytest.raises(InputError) as err:
        load_pipeline(path, ["teacher.optim.lr=0"])
    assert str(err.value) == "command line: teacher.optim.lr: expected a number > 0, got 0.0"
    assert load_pipeline(path).run_dir == str(tmp_path / "run")
