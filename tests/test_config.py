"""Configs: validation errors name the key, overrides are typed, shipped configs load."""

from pathlib import Path

import pytest

from jetkd.config import apply_overrides, load_job
from jetkd.errors import InputError
from jetkd.pipeline import QUICKSTART, load_pipeline

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
