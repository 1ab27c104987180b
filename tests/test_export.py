"""``jetkd export --format onnx``: the deploy form with its preprocessing, checked against PyTorch, and ONNX taggers
in ``jetkd.load`` / ``jetkd score``."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import uproot

import jetkd
from jetkd.cli import main
from jetkd.config import load_job
from jetkd.train.loop import Trainer

from helpers import TINY_DEEPSET, job_dict, toy_jets

TINY_MLP = {"name": "mlp", "n_constituents": 8, "hidden": [16]}
METHODS = {
    "none": {},
    "kd": {"method": "kd", "temperature": 2.0, "alpha": 0.5},
    "fitnets": {"method": "fitnets", "temperature": 3.0, "fitnets": {"hint": "LGEBs.0", "guided": "phi"}},
    "norm": {"method": "norm", "temperature": 2.0, "norm": {"teacher_tap": "graph_dec.1", "n": 4}},
    "cdd": {"method": "cdd", "cdd": {"teacher_tap": "graph_dec.1", "width_factor": 1.5, "lasso": 0.1,
                                     "threshold": 0.05, "start_epochs": 0.25, "reset_every": 1, "reset_channels": 8,
                                     "neighbours": 4, "bank_size": 128}},
    "curriculum": {"method": "curriculum", "temperature": 2.0,
                   "curriculum": {"teacher_taps": ["LGEBs.0", "graph_dec.1"], "student_tap": "phi", "dim": 6,
                                  "phase_epochs": [0.5, 0.5]}},
}


def train(cache, run, model, distill=None, teacher=None):
    distill = dict(distill or {})
    if distill:
        distill["teacher"] = str(teacher)
    Trainer(load_job(data=job_dict(cache, run, model=model, train={"epochs": 2, "batch_size": 32, "seed": 3},
                                   **({"distill": distill} if distill else {}))), progress=False).fit()
    return run


def padded(p4, n, width):
    out = np.zeros((len(p4), width, 4), np.float32)
    k = min(width, p4.shape[1])
    out[:, :k] = p4[:, :k]
    mask = np.arange(width) < np.minimum(n, width)[:, None]
    out[~mask] = 0
    return out, mask


@pytest.mark.parametrize("model", [TINY_MLP, TINY_DEEPSET], ids=["mlp", "deepset"])
def test_students_export_with_dynamic_constituent_axis(cache, tmp_path, model):
    run = train(cache, tmp_path / "run", model)
    out = tmp_path / "student.onnx"
    assert main(["export", str(run), "--format", "onnx", "--out", str(out)]) == 0
    tagger, exported = jetkd.load(run), jetkd.load(out)
    assert exported.contract == tagger.contract and exported.name == "student"
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert '"max_constituents": 16' in props["jetkd_contract"]
    p4, n, _ = toy_jets(30, 21, 40)  # up to 40 constituents; the models read 16 (the MLP its leading 8)
    for width in (3, 10, 16, 40, 55):  # every N, shorter and longer than the model's own count
        x, mask = padded(p4, n, width)
        with torch.no_grad():
            expected = tagger(torch.from_numpy(x), torch.from_numpy(mask)).numpy()
        got = exported(torch.from_numpy(x), torch.from_numpy(mask)).numpy()
        assert got.shape == (30, 2)
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(exported.score(p4), tagger.score(p4), atol=1e-4)


@pytest.mark.parametrize("method", [m for m in METHODS if m != "none"])
def test_every_methods_deploy_form_exports(cache, lorentznet_teacher, tmp_path, method):
    run = train(cache, tmp_path / "run", TINY_DEEPSET, METHODS[method], lorentznet_teacher)
    out = tmp_path / f"{method}.onnx"
    assert main(["export", str(run), "--format", "onnx", "--out", str(out)]) == 0
    p4, n, _ = toy_jets(40, 22, 16)
    np.testing.assert_allclose(jetkd.load(out).score(p4), jetkd.load(run).score(p4), atol=1e-4)


def test_the_teacher_exports(lorentznet_teacher, tmp_path, capsys):
    out = tmp_path / "teacher.onnx"
    assert main(["export", str(lorentznet_teacher), "--format", "onnx", "--out", str(out), "--tolerance", "1e-2"]) == 0
    worst = float(capsys.readouterr().out.split("matches PyTorch to ")[1].split()[0])
    assert worst <= 1e-2
    p4, n, _ = toy_jets(20, 23, 16)
    np.testing.assert_allclose(jetkd.load(out).score(p4), jetkd.load(lorentznet_teacher).score(p4), atol=1e-2)


def test_score_takes_onnx_models(cache, tmp_path):
    run = train(cache, tmp_path / "deepset", TINY_DEEPSET)
    assert main(["export", str(run), "--format", "onnx", "--out", str(tmp_path / "exported.onnx")]) == 0
    p4, n, _ = toy_jets(25, 24, 16)
    mask = np.arange(16) < n[:, None]
    part = {k: [p4[i, : n[i], c] for i in range(25)] for k, c in (("px", 1), ("py", 2), ("pz", 3), ("energy", 0))}
    import awkward as ak

    with uproot.recreate(tmp_path / "jets.root") as f:
        f["tree"] = {"part": ak.zip({k: ak.Array(v) for k, v in part.items()})}
    out = tmp_path / "jets.scores.root"
    assert main(["score", "--model", str(run), "--model", str(tmp_path / "exported.onnx"), str(tmp_path / "jets.root"),
                 "--out", str(out)]) == 0
    got = uproot.open(out)["tree"].arrays(library="np")
    np.testing.assert_allclose(got["score_exported_class1"], got["score_deepset_class1"], atol=1e-4)
    with torch.no_grad():
        probs = torch.softmax(jetkd.load(run)(torch.from_numpy(p4), torch.from_numpy(mask)).double(), 1).numpy()
    np.testing.assert_allclose(got["score_exported_class1"], probs[:, 1], atol=1e-4)


def test_export_bad_input_and_failed_parity_leave_nothing(cache, tmp_path, capsys):
    (tmp_path / "empty_run").mkdir()
    run = train(cache, tmp_path / "run", TINY_MLP)
    cases = [
        (["export", str(tmp_path / "empty_run"), "--format", "onnx", "--out", str(tmp_path / "a.onnx")], 2, "best.pt"),
        (["export", str(run), "--format", "onnx", "--out", str(tmp_path / "a.txt")], 2, ".onnx"),
        (["export", str(run), "--format", "onnx", "--out", str(tmp_path / "a.onnx"), "--data", str(tmp_path / "x.h5")],
         2, "x.h5"),
        (["export", str(run), "--format", "onnx", "--out", str(tmp_path / "a.onnx"), "--tolerance", "0"], 1, "differ"),
    ]
    for args, status, needle in cases:
        capsys.readouterr()
        assert main(args) == status
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty_run", "run"]
    (tmp_path / "foreign.onnx").write_bytes(b"not onnx")
    assert main(["score", "--model", str(tmp_path / "foreign.onnx"), str(tmp_path / "x.root"), "--out",
                 str(tmp_path / "s.root")]) == 2


# ----------------------------------------------------------------------------- hls4ml


@pytest.fixture(scope="module")
def students(cache, tmp_path_factory):
    root = tmp_path_factory.mktemp("hls_students")
    return {name: train(cache, root / name, model) for name, model in (("mlp", TINY_MLP), ("deepset", TINY_DEEPSET))}


@pytest.mark.parametrize("name", ["mlp", "deepset"])
def test_hls4ml_c_simulation_agrees_with_the_float_model(students, tmp_path, name, capsys):
    import json

    out = tmp_path / "hls"
    assert main(["export", str(students[name]), "--format", "hls4ml", "--out", str(out)]) == 0
    assert "C simulation on 96 jets" in capsys.readouterr().out
    parity = json.loads((out / "parity.json").read_text())
    projects = ["net"] if name == "mlp" else ["phi", "rho"]
    assert parity["projects"] == projects and all((out / p / "firmware").is_dir() for p in projects)
    assert f"OutputDir: {out / projects[0]}" in (out / projects[0] / "hls4ml_config.yml").read_text()
    assert parity["n_jets"] == 96 and parity["argmax_agreement"] >= 0.97 and parity["max_abs_diff"] < 0.05
    assert abs(parity["auc_fixed"] - parity["auc_float"]) < 0.02
    for key in ("rej_30_float", "rej_30_fixed", "rej_50_float", "rej_50_fixed"):
        assert key in parity
    expected = 8 * 4 * 16 + 16 * 2 if name == "mlp" else 16 * (4 * 16 + 16 * 16 + 16) + 16 * 16 + 16 * 2
    assert parity["multiplications"] == expected
    layers = parity["precision"][projects[0]]
    assert parity["weight_bits"] > 0 and all(layer[k].startswith("ap_fixed<16,") and layer[k].endswith(",AP_RND,AP_SAT>")
                                             for layer in layers.values() for k in ("weight", "bias", "result")
                                             if k in layer)
    assert parity["emulation_max_abs_diff"] == 0.0  # jetkd.quant computes what the C simulation computes, bit for bit
    inputs = json.loads((out / "inputs.json").read_text())
    assert inputs["features"] == ["rel_pt", "deta", "dphi", "mass"] and inputs["constituents"] == 16
    assert inputs["units"]["dphi"].startswith("rad")
    # a coarse fixed point really computes in fixed point: the C simulation moves away from the float model
    coarse = tmp_path / "coarse"
    assert main(["export", str(students[name]), "--format", "hls4ml", "--out", str(coarse), "--precision",
                 "ap_fixed<6,2>"]) == 0
    coarse_parity = json.loads((coarse / "parity.json").read_text())
    assert coarse_parity["max_abs_diff"] > 10 * parity["max_abs_diff"] and coarse_parity["emulation_max_abs_diff"] == 0


def test_hls4ml_bad_input(students, lorentznet_teacher, tmp_path, capsys):
    cases = [
        ([str(students["mlp"]), "--precision", "ap_fixed<16>"], "--precision"),
        ([str(students["mlp"]), "--backend", "Quartus"], "--backend"),
        ([str(lorentznet_teacher)], "lorentznet"),
    ]
    for args, needle in cases:
        capsys.readouterr()
        assert main(["export", *args, "--format", "hls4ml", "--out", str(tmp_path / "hls")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err
    assert not any(tmp_path.iterdir())


# ----------------------------------------------------------------------------- quantization-aware students


FIXED = {"mlp_fixed": {"name": "mlp_fixed", "n_constituents": 8, "hidden": [16, 16], "precision": "ap_fixed<14,5>"},
         "deepset_fixed": {"name": "deepset_fixed", "phi_hidden": [16, 16], "rho_hidden": [16],
                           "precision": "ap_fixed<16,6>"}}


@pytest.mark.parametrize("name, distill", [("mlp_fixed", "none"), ("deepset_fixed", "none"), ("deepset_fixed", "kd"),
                                           ("mlp_fixed", "norm"), ("deepset_fixed", "norm"),
                                           ("deepset_fixed", "fitnets")])
def test_quantization_aware_students_match_their_c_simulation_exactly(cache, lorentznet_teacher, tmp_path, name,
                                                                      distill, capsys):
    import json

    run = train(cache, tmp_path / "run", FIXED[name], METHODS[distill], lorentznet_teacher)
    model = jetkd.load(run).model
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in model.modules())
    out = tmp_path / "hls"
    assert main(["export", str(run), "--format", "hls4ml", "--out", str(out)]) == 0
    parity = json.loads((out / "parity.json").read_text())
    assert parity["argmax_agreement"] == 1.0 and parity["max_abs_diff"] == 0.0  # the trained model is the firmware
    assert parity["auc_fixed"] == parity["auc_float"] and parity["emulation_max_abs_diff"] == 0.0
    width = int(FIXED[name]["precision"][9:11])
    layers = [t for chain in parity["precision"].values() for layer in chain.values() for k, t in layer.items()
              if k in ("weight", "bias", "result")]
    assert all(t.startswith(f"ap_fixed<{width},") for t in layers)  # <= 16 bits in every layer
    capsys.readouterr()
    assert main(["export", str(run), "--format", "hls4ml", "--out", str(tmp_path / "other"), "--precision",
                 "ap_fixed<8,3>"]) == 2
    assert "quantization-aware" in capsys.readouterr().err
