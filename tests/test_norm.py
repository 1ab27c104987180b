"""NORM (Liu et al. 2023): the N-to-one loss on hand-computed inputs, the beta warm-up, the hooked feature
transform, its exact fold into the classifier, and an end-to-end run whose deploy form is the trained model."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from jetkd.config import DistillConfig, load_job
from jetkd.data.cache import JetCache
from jetkd.data.loader import JetBatch, JetLoader
from jetkd.distill import StepOutputs, Tap, TapRecorder, build_method, kd_loss
from jetkd.distill.norm import NORM, norm_loss
from jetkd.distill.options import NormOptions
from jetkd.errors import InputError
from jetkd.evaluate import count_parameters
from jetkd.models import build_model
from jetkd.train.checkpoint import load_checkpoint, load_model
from jetkd.train.loop import Trainer

from helpers import assert_exact_resume, TINY_DEEPSET, job_dict, toy_jets  # tests/helpers.py

TINY_MLP = {"name": "mlp", "n_constituents": 8, "hidden": [32, 32]}
TAP = "graph_dec.1"


def toy_batch(n_jets=48, seed=0):
    p4, n, label = toy_jets(n_jets, seed)
    return JetBatch.from_arrays(p4, n, label)


def hooked(spec, c_t=3, seed=0, **options):
    """A student from ``spec`` with NORM set up on it (teacher tap of ``c_t`` channels)."""
    torch.manual_seed(seed)
    student = build_model(spec)
    method = NORM(NormOptions(teacher_tap=TAP, **options), temperature=2.0)
    method.setup(student, None, {}, {TAP: Tap(torch.zeros(2, c_t))})
    return student, method


# ----------------------------------------------------------------------------- the loss


def test_norm_loss_hand_computed():
    # n = 2, C_t = 2: segments [1, 2] and [3, 4] against t = [1, 0]: MSEs (0 + 4) / 2 = 2 and (4 + 16) / 2 = 10
    e, t = torch.tensor([[1.0, 2.0, 3.0, 4.0]]), torch.tensor([[1.0, 0.0]])
    assert norm_loss(e, t, 2).item() == pytest.approx(12.0)
    # a second jet [0, 0, 1, 0] vs [0, 1]: MSEs 0.5 and 1; the batch mean of the per-jet sums (12 + 1.5) / 2
    e2, t2 = torch.tensor([[0.0, 0.0, 1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    assert norm_loss(torch.cat([e, e2]), torch.cat([t, t2]), 2).item() == pytest.approx(6.75)
    # every segment equal to the teacher: zero; n = 1 is FitNets-style MSE
    assert norm_loss(t.repeat(1, 5), t, 5).item() == 0.0
    assert norm_loss(e[:, :2], t, 1).item() == pytest.approx(2.0)
    with pytest.raises(ValueError, match="channels"):
        norm_loss(e, t, 3)


def test_loss_combines_ce_kd_and_norm_with_the_expanded_feature():
    student, method = hooked(TINY_MLP, c_t=3, n=4, gamma=0.5, kd_weight=0.7, beta=2.0, beta_warmup_epochs=0.0)
    batch = toy_batch()
    recorder = TapRecorder(student, ["blocks"])  # the classifier's input before the transform
    with recorder:
        logits = student(batch.p4, batch.mask)
    expanded = method.transform(recorder.taps["blocks"].value)[1]  # same batch: same batch statistics
    assert expanded.shape == (len(batch), 12)
    torch.manual_seed(1)
    teacher_logits, teacher = torch.randn(len(batch), 2), torch.rand(len(batch), 3)
    out = StepOutputs(logits, batch.label, teacher_logits, {}, {TAP: Tap(teacher)})
    loss, parts = method.loss(out)
    ce = F.cross_entropy(logits, batch.label)
    kd = kd_loss(logits, teacher_logits, 2.0)
    l_norm = 4 * ((expanded - teacher.repeat(1, 4)) ** 2).mean()
    assert loss.item() == pytest.approx((0.5 * ce + 0.7 * kd + 2.0 * l_norm).item(), rel=1e-5)
    assert parts["norm"] == pytest.approx(l_norm.item(), rel=1e-5) and parts["beta"] == 2.0
    loss.backward()  # the NORM term trains the transform
    assert method.transform.expand.weight.grad.abs().sum() > 0
    with pytest.raises(RuntimeError, match="forward"):
        method.loss(out)  # the expanded feature is used once


def test_beta_warms_up_linearly_and_weights_the_norm_term():
    student, method = hooked(TINY_MLP, n=2, gamma=1.0, kd_weight=0.0, beta=0.5, beta_warmup_epochs=2.0)
    batch = toy_batch()
    teacher = torch.rand(len(batch), 3)
    for progress, beta, phase in ((0.0, 0.0, "warmup"), (0.5, 0.125, "warmup"), (1.0, 0.25, "warmup"),
                                  (2.0, 0.5, "train"), (7.5, 0.5, "train")):
        method.set_progress(progress)
        assert method.beta_now() == pytest.approx(beta) and method.phase() == phase and method.selectable()
        logits = student(batch.p4, batch.mask)
        loss, parts = method.loss(StepOutputs(logits, batch.label, torch.zeros_like(logits), {}, {TAP: Tap(teacher)}))
        assert loss.item() == pytest.approx(parts["ce"] + beta * parts["norm"], rel=1e-6)
    _, no_warmup = hooked(TINY_MLP, beta=0.5, beta_warmup_epochs=0.0)
    assert no_warmup.beta_now() == 0.5 and no_warmup.phase() == "train"


# ----------------------------------------------------------------------------- the hook and the fold


@pytest.mark.parametrize("spec", [TINY_MLP, TINY_DEEPSET], ids=["mlp", "deepset"])
@pytest.mark.parametrize("residual,batch_norm", [(True, True), (False, True), (True, False), (False, False)])
def test_deploy_folds_the_transform_exactly(spec, residual, batch_norm):
    student, method = hooked(spec, c_t=5, n=3, residual=residual, batch_norm=batch_norm)
    # a few training-mode passes with random weights: non-trivial running statistics and affine parameters
    with torch.no_grad():
        for p in method.transform.parameters():
            p.add_(0.3 * torch.randn_like(p))
        for seed in range(3):
            batch = toy_batch(seed=seed)
            student(batch.p4, batch.mask)
    assert method.transform.training
    if batch_norm:
        assert method.transform.expand_bn.num_batches_tracked.item() == 3
    batch = toy_batch(64, seed=7)
    student.eval()
    state = {k: v.clone() for k, v in student.state_dict().items()}
    method_state = {k: v.clone() for k, v in method.state_dict().items()}
    with torch.no_grad():
        trained = student(batch.p4, batch.mask).double()
    assert not method.transform.training  # the transform follows the student into eval mode
    deployed = method.deploy(student)

    plain = build_model(spec)
    assert type(deployed) is type(student) and not deployed.training
    assert {k: v.shape for k, v in deployed.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}
    assert count_parameters(deployed) == count_parameters(plain)
    assert len(deployed.classifier._forward_pre_hooks) == 0 and len(student.classifier._forward_pre_hooks) == 1
    with torch.no_grad():
        folded = deployed(batch.p4, batch.mask).double()
        plain.load_state_dict(student.state_dict())
        without = plain.eval()(batch.p4, batch.mask).double()  # the student's own weights, no transform
    torch.testing.assert_close(folded, trained, rtol=0, atol=1e-5)
    assert (without - trained).abs().max() > 1e-2  # the transform matters: the test is not vacuous
    # deploy left the training student and the method untouched
    for k, v in student.state_dict().items():
        assert torch.equal(v, state[k]), k
    for k, v in method.state_dict().items():
        assert torch.equal(v, method_state[k]), k


def test_transform_batch_norm_keeps_running_stats_in_eval():
    student, method = hooked(TINY_DEEPSET, n=2)
    batch = toy_batch()
    student(batch.p4, batch.mask)
    before = method.transform.expand_bn.running_mean.clone()
    student.eval()
    with torch.no_grad():
        student(batch.p4, batch.mask)
    assert torch.equal(method.transform.expand_bn.running_mean, before)
    student.train()
    student(batch.p4, batch.mask)
    assert method.transform.training and not torch.equal(method.transform.expand_bn.running_mean, before)


def test_setup_builds_the_transform_from_the_shapes():
    student, method = hooked(TINY_DEEPSET, c_t=8, n=4)
    t = method.transform
    assert (t.expand.in_features, t.expand.out_features, t.contract.out_features) == (16, 32, 16)
    assert t.expand.bias is None and t.expand_bn.num_features == 32 and t.contract_bn.num_features == 16
    _, plain_ft = hooked(TINY_DEEPSET, c_t=8, n=4, batch_norm=False)
    assert plain_ft.transform.expand.bias is not None and plain_ft.transform.expand_bn is None
    assert set(method.state_dict()) == {f"transform.{k}" for k in t.state_dict()}
    # set up again: one hook, not two
    method.setup(student, None, {}, {TAP: Tap(torch.zeros(2, 8))})
    assert len(student.classifier._forward_pre_hooks) == 1


def test_bad_options():
    with pytest.raises(InputError, match="teacher_tap"):
        NORM(NormOptions())
    with pytest.raises(InputError, match="distill.norm.n"):
        NORM(NormOptions(teacher_tap=TAP, n=0))
    with pytest.raises(InputError, match="beta"):
        NORM(NormOptions(teacher_tap=TAP, beta=-1.0))
    with pytest.raises(InputError, match="no such module.*available: features"):
        hooked(TINY_MLP, classifier="head")
    with pytest.raises(InputError, match="not a Linear"):
        hooked(TINY_MLP, classifier="blocks")
    method = build_method(DistillConfig(method="norm", temperature=3.0, norm=NormOptions(teacher_tap=TAP, n=2)))
    assert isinstance(method, NORM) and method.needs_teacher and method.teacher_taps == (TAP,)
    assert method.temperature == 3.0 and method.student_taps == ()
    with pytest.raises(RuntimeError, match="setup"):
        method.deploy(build_model(TINY_MLP))


# ----------------------------------------------------------------------------- end to end


def logits_on(model, cache_file):
    loader = JetLoader(JetCache(cache_file, in_memory=True), 64, shuffle=False)
    model.eval()
    with torch.no_grad():
        return torch.cat([model(b.p4, b.mask) for b in loader]).double(), torch.cat([b.label for b in loader])


@pytest.mark.parametrize("spec", [TINY_DEEPSET, TINY_MLP], ids=["deepset", "mlp"])
def test_trainer_run_deploys_the_trained_model(cache, lorentznet_teacher, tmp_path, spec):
    norm = {"teacher_tap": TAP, "n": 4, "beta_warmup_epochs": 1.0, "kd_weight": 0.5}
    distill = {"method": "norm", "teacher": str(lorentznet_teacher), "temperature": 2.0, "norm": norm}
    run = tmp_path / "run"
    Trainer(load_job(data=job_dict(cache, run, model=spec, distill=distill)), progress=False).fit()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in records] == ["warmup", "train"]
    assert all(np.isfinite(r["train_norm"]) and r["train_norm"] > 0 for r in records)
    assert records[0]["train_beta"] < 0.5 < records[1]["train_beta"] == 1.0

    ckpt = load_checkpoint(run / "best.pt")
    deployed = load_model(run)
    plain = build_model(spec)
    assert type(deployed) is type(plain) and count_parameters(deployed) == count_parameters(plain)
    assert {k: v.shape for k, v in deployed.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}

    # the trained student with its transform, rebuilt from the checkpoint's "model" and "method" states
    trained = build_model(ckpt["config"]["model"])
    trained.load_state_dict(ckpt["model"])
    method = NORM(NormOptions(**ckpt["config"]["distill"]["norm"]), ckpt["config"]["distill"]["temperature"])
    method.setup(trained, None, {}, {TAP: Tap(torch.zeros(1, 8))})  # the teacher has 8 hidden channels
    method.load_state_dict(ckpt["method"])
    assert method.transform.expand_bn.num_batches_tracked.item() > 0  # trained, not fresh

    ours, _ = logits_on(deployed, cache / "test.h5")
    theirs, _ = logits_on(trained, cache / "test.h5")
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    plain.load_state_dict(ckpt["model"])  # the student's own weights without the transform: another model
    assert (logits_on(plain, cache / "test.h5")[0] - theirs).abs().max() > 1e-3
    # validation measured the trained model with its transform, which is the deployed one
    val, val_labels = logits_on(deployed, cache / "val.h5")
    best = next(r for r in records if r["epoch"] == ckpt["best"]["epoch"])
    val_loss = F.cross_entropy(val, val_labels).item()
    assert best["val_loss"] == pytest.approx(val_loss, rel=1e-5)
    assert best["val_acc"] == pytest.approx((val.argmax(1) == val_labels).double().mean().item())


def test_resume_continues_exactly(cache, lorentznet_teacher, tmp_path, monkeypatch):
    distill = {"method": "norm", "teacher": str(lorentznet_teacher),
               "norm": {"teacher_tap": TAP, "n": 2, "beta_warmup_epochs": 1.5}}
    # killed after step 10: mid-way through epoch 2, in the warm-up
    assert_exact_resume(lambda run: load_job(data=job_dict(cache, run, distill=distill)), tmp_path, 10, monkeypatch)


def test_folding_into_a_fixed_point_classifier_rescales_into_its_range():
    from jetkd.distill.norm import fixed_point_scale
    from jetkd.quant import FixedPoint, QuantLinear

    t = FixedPoint(16, 6)  # weights in [-32, 32)
    layer = QuantLinear(4, 2, {"weight": t, "bias": t, "result": t})
    w, b = torch.tensor([[116.0, -3.0, 0.5, 1.0], [-2.0, 40.0, 0.0, 0.0]], dtype=torch.float64), torch.tensor([9.4, -11.3])
    assert fixed_point_scale(layer, w, b) == 0.25  # 116 / 4 = 29 < 32
    assert fixed_point_scale(layer, w / 8, b) == 1.0
    assert fixed_point_scale(torch.nn.Linear(4, 2), w, b) == 1.0  # float students: never
