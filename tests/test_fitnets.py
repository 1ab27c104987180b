"""FitNets: hint loss and KD loss on hand-computed inputs, the lambda schedule and the phase switch, stage 1
training only the student up to the guided layer, and end-to-end runs whose best.pt is the plain student."""

import json
import math
from itertools import islice

import pytest
import torch

from helpers import TINY_DEEPSET, assert_exact_resume, job_dict
from jetkd.config import DistillConfig, load_job
from jetkd.distill import StepOutputs, Tap, build_method
from jetkd.distill.fitnets import FitNets, soft_cross_entropy
from jetkd.distill.options import FitNetsOptions
from jetkd.errors import InputError
from jetkd.evaluate import count_parameters
from jetkd.models import MLP, DeepSet, build_model
from jetkd.train.checkpoint import load_checkpoint, load_model
from jetkd.train.loop import Trainer

TINY_MLP = {"name": "mlp", "n_constituents": 8, "hidden": [32, 32]}


def fitnets(**options) -> FitNets:
    return FitNets(FitNetsOptions(**{"hint": "LGEBs.0", "guided": "phi.blocks.0", **options}), temperature=2.0)


def set_linear(linear, weight, bias):
    with torch.no_grad():
        linear.weight.copy_(torch.tensor(weight))
        linear.bias.copy_(torch.tensor(bias))


def test_hint_loss_per_constituent_with_mask_by_hand():
    method = fitnets(stage1_epochs=1)
    mask = torch.tensor([[True, True, False]])
    guided = Tap(torch.tensor([[[1.0, 2.0], [3.0, 0.0], [50.0, 50.0]]]), mask)
    hint = Tap(torch.tensor([[[0.0], [4.0], [-9.0]]]), mask)
    method.setup(None, None, {"phi.blocks.0": guided}, {"LGEBs.0": hint})
    assert method.regressor.per_constituent
    set_linear(method.regressor.linear, [[1.0, -1.0]], [0.5])  # r(v) = v0 - v1 + 0.5: -0.5, 3.5 (padding: 0.5)
    method.set_progress(0.5)
    loss, parts = method.loss(StepOutputs(torch.zeros(1, 2), torch.tensor([0]), torch.zeros(1, 2),
                                          {"phi.blocks.0": guided}, {"LGEBs.0": hint}))
    expected = (0.5 * 0.5**2 + 0.5 * 0.5**2) / 2  # two real constituents, the padded one ignored
    assert loss.item() == pytest.approx(expected) and parts["hint"] == pytest.approx(expected)


def test_hint_loss_pooled_by_hand():
    """An MLP-like per-jet guided tap against a per-constituent hint: the hint is pooled over real constituents."""
    method = fitnets(guided="blocks.0", stage1_epochs=1)
    guided = Tap(torch.tensor([[1.0, 2.0], [0.0, -1.0]]))
    mask = torch.tensor([[True, True, False], [True, False, False]])
    hint = Tap(torch.tensor([[[1.0, 0.0], [3.0, 2.0], [7.0, 7.0]], [[-2.0, 5.0], [9.0, 9.0], [9.0, 9.0]]]), mask)
    method.setup(None, None, {"blocks.0": guided}, {"LGEBs.0": hint})
    assert not method.regressor.per_constituent
    set_linear(method.regressor.linear, [[1.0, 0.0], [0.0, 1.0]], [0.0, 1.0])  # r(v) = v + (0, 1)
    # pooled hints (2, 1) and (-2, 5); predictions (1, 3) and (0, 0)
    expected = (0.5 * (1 + 4) + 0.5 * (4 + 25)) / 2
    loss, _ = method.loss(StepOutputs(torch.zeros(2, 2), torch.tensor([0, 1]), torch.zeros(2, 2),
                                      {"blocks.0": guided}, {"LGEBs.0": hint}))
    assert loss.item() == pytest.approx(expected)


def test_stage2_loss_is_ce_plus_lambda_soft_cross_entropy_by_hand():
    method = fitnets(stage1_epochs=2, lambda_start=4, lambda_end=1, lambda_epochs=4)
    guided, hint = Tap(torch.zeros(1, 2)), Tap(torch.zeros(1, 1))
    method.setup(None, None, {"phi.blocks.0": guided}, {"LGEBs.0": hint})
    s, t, y = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]]), torch.tensor([1])
    ps = [math.exp(0.5) / (math.exp(0.5) + 1), 1 / (math.exp(0.5) + 1)]  # softmax(s / 2)
    pt = [1 / (1 + math.e), math.e / (1 + math.e)]  # softmax(t / 2)
    soft = -sum(p * math.log(q) for p, q in zip(pt, ps))  # H(P_T, P_S): no T^2
    ce = math.log(1 + math.e)  # -log softmax(s)[1]
    assert soft_cross_entropy(s, t, 2.0).item() == pytest.approx(soft, rel=1e-6)
    method.set_progress(3.0)  # one epoch into stage 2: lambda = 4 - 3 / 4 = 3.25
    loss, parts = method.loss(StepOutputs(s, y, t, {"phi.blocks.0": guided}, {"LGEBs.0": hint}))
    assert loss.item() == pytest.approx(ce + 3.25 * soft, rel=1e-6)
    assert parts["ce"] == pytest.approx(ce) and parts["kd"] == pytest.approx(soft) and parts["lambda"] == 3.25
    s.requires_grad_(True)  # soft cross-entropy and KL(P_T || P_S) differ by a constant: same gradient
    g_ce = torch.autograd.grad(soft_cross_entropy(s, t, 2.0), s)[0]
    p_t = torch.softmax(t / 2, -1)
    kl = (p_t * (p_t.log() - torch.log_softmax(s / 2, -1))).sum()
    torch.testing.assert_close(g_ce, torch.autograd.grad(kl, s)[0])


def test_lambda_schedule_and_phase_switch():
    method = fitnets(stage1_epochs=2.5, lambda_start=4, lambda_end=1, lambda_epochs=3)
    expected = {0.0: ("hint", 4.0), 2.49: ("hint", 4.0), 2.5: ("kd", 4.0), 3.5: ("kd", 3.0), 4.0: ("kd", 2.5),
                5.5: ("kd", 1.0), 9.0: ("kd", 1.0)}
    for progress, (phase, lam) in expected.items():
        method.set_progress(progress)
        assert (method.phase(), method.selectable()) == (phase, phase == "kd"), progress
        assert method.kd_weight() == pytest.approx(lam), progress
    at_once = fitnets(stage1_epochs=0, lambda_start=4, lambda_end=1, lambda_epochs=0)
    assert at_once.phase() == "kd" and at_once.kd_weight() == 1.0


def test_options_are_validated_and_built_by_name():
    method = build_method(DistillConfig(method="fitnets", temperature=3.0,
                                        fitnets=FitNetsOptions(hint="LGEBs.1", guided="phi")))
    assert isinstance(method, FitNets) and method.needs_teacher and method.temperature == 3.0
    assert method.student_taps == ("phi",) and method.teacher_taps == ("LGEBs.1",)
    with pytest.raises(InputError, match="distill.fitnets.hint"):
        FitNets(FitNetsOptions(guided="phi"), 3.0)
    with pytest.raises(InputError, match="distill.fitnets.guided"):
        FitNets(FitNetsOptions(hint="LGEBs.0"), 3.0)
    with pytest.raises(InputError, match="lambda_epochs"):
        fitnets(lambda_epochs=-1)
    with pytest.raises(InputError, match="distill.temperature"):
        build_method(DistillConfig(method="fitnets", temperature=0.0, fitnets=FitNetsOptions(hint="LGEBs.0", guided="phi")))


def params(module):
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def fitnets_job(cache, run_dir, teacher, model, guided, **options):
    distill = {"method": "fitnets", "teacher": str(teacher), "temperature": 3.0,
               "fitnets": {"hint": "LGEBs.0", "guided": guided, **options}}
    return load_job(data=job_dict(cache, run_dir, model=model, distill=distill))


def trainer_for(cache, run_dir, teacher, model, guided, **options):
    return Trainer(fitnets_job(cache, run_dir, teacher, model, guided, **options), progress=False)


@pytest.mark.parametrize("model, guided, trained, frozen", [
    (TINY_DEEPSET, "phi.blocks.0", ("phi.blocks.0.",), ("phi.blocks.1.", "phi.out.", "rho.", "classifier.")),
    (TINY_MLP, "blocks.0", ("blocks.0.",), ("blocks.1.", "classifier.")),
], ids=["deepset", "mlp"])
def test_stage1_trains_only_up_to_the_guided_layer(cache, tmp_path, lorentznet_teacher, model, guided, trained, frozen):
    trainer = trainer_for(cache, tmp_path / "run", lorentznet_teacher, model, guided, stage1_epochs=1)
    before, regressor_before = params(trainer.model), params(trainer.method)
    assert set(regressor_before) == {"regressor.linear.weight", "regressor.linear.bias"}
    for batch in islice(trainer.loader, 3):  # progress 0, 1/8, 2/8: stage 1
        trainer.train_step(batch)
    assert trainer.method.phase() == "hint"
    after = params(trainer.model)
    assert any(k.startswith(trained) for k in before)
    assert any(k.startswith(frozen) for k in before)
    for k in before:
        if k.startswith(trained):
            assert not torch.equal(before[k], after[k]), k
        if k.startswith(frozen):
            assert torch.equal(before[k], after[k]), k  # no gradient: AdamW (and its weight decay) skips them
    assert all(not torch.equal(regressor_before[k], v) for k, v in params(trainer.method).items())

    trainer.epoch = 1  # stage 2: the whole student trains, the regressor no longer does
    before, regressor_before = after, params(trainer.method)
    for batch in islice(trainer.loader, 2):
        trainer.train_step(batch)
    assert trainer.method.phase() == "kd"
    after = params(trainer.model)
    assert all(not torch.equal(before[k], after[k]) for k in before if k.startswith(frozen))
    assert all(torch.equal(regressor_before[k], v) for k, v in params(trainer.method).items())


@pytest.mark.parametrize("model, guided, student_type", [
    (TINY_DEEPSET, "phi.blocks.0", DeepSet),
    (TINY_MLP, "blocks.0", MLP),
], ids=["deepset", "mlp"])
def test_end_to_end_run_deploys_the_plain_student(cache, tmp_path, lorentznet_teacher, model, guided, student_type,
                                                  monkeypatch):
    run = tmp_path / "run"
    live = student_type is MLP  # the MLP run with the teacher every step (outputs too big to cache), the deep set cached
    if live:
        monkeypatch.setattr("jetkd.train.loop.TEACHER_CACHE_BYTES", 0)
    trainer = trainer_for(cache, run, lorentznet_teacher, model, guided, stage1_epochs=1, lambda_epochs=1)
    assert (trainer.teacher_cache is None) == live
    summary = trainer.fit()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in records] == ["hint", "kd"]
    assert records[0]["train_loss"] == pytest.approx(records[0]["train_hint"])
    assert records[0]["train_lambda"] == 4.0 and 1.0 < records[1]["train_lambda"] < 4.0
    assert records[1]["train_loss"] > records[1]["train_ce"]  # the soft term is in the stage-2 loss
    assert summary["best_epoch"] == 2  # the hint epoch is not selectable

    ckpt = load_checkpoint(run)
    assert set(ckpt["method"]) == {"regressor.linear.weight", "regressor.linear.bias"}
    assert ckpt["deployed"]["spec"] == model
    assert ckpt["deployed"]["model"].keys() == ckpt["model"].keys()
    for k, v in ckpt["model"].items():
        assert torch.equal(ckpt["deployed"]["model"][k], v), k
    deployed = load_model(run)
    assert type(deployed) is student_type and not deployed.training
    assert count_parameters(deployed) == count_parameters(build_model(model))

    batch = next(iter(trainer.loader))
    trainer.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(deployed(batch.p4, batch.mask), trainer.model(batch.p4, batch.mask), rtol=0, atol=0)
    trainer.model.train()
    in_memory = trainer.method.deploy(trainer.model)
    assert in_memory is not trainer.model and not in_memory.training and trainer.model.training


def test_resume_in_stage1_continues_exactly_across_the_switch(cache, tmp_path, lorentznet_teacher, monkeypatch):
    """Killed after step 10 of 16 (progress 1.25 of 2 epochs: still stage 1), resumed: the switch at 1.5 and
    stage 2 run as in an unkilled run."""
    options = {"stage1_epochs": 1.5, "lambda_epochs": 0.5}
    assert_exact_resume(lambda run: fitnets_job(cache, run, lorentznet_teacher, TINY_DEEPSET, "phi.blocks.0", **options),
                        tmp_path, 10, monkeypatch)


def test_wrong_tap_path_names_the_available_module_paths(cache, tmp_path, lorentznet_teacher):
    with pytest.raises(InputError, match=r"'phi\.blocks\.7': no such module in DeepSet; available: .*phi\.blocks\.0"):
        trainer_for(cache, tmp_path / "a", lorentznet_teacher, TINY_DEEPSET, "phi.blocks.7")
    with pytest.raises(InputError, match=r"'LGEBs\.9': no such module in LorentzNet; available: .*LGEBs\.1"):
        trainer_for(cache, tmp_path / "b", lorentznet_teacher, TINY_DEEPSET, "phi", hint="LGEBs.9")
