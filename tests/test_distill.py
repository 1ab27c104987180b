"""Hinton KD: the loss value on hand-computed inputs, its limits, and the method registry."""

import math

import pytest
import torch

from jetkd.config import DistillConfig
from jetkd.distill import HintonKD, NoDistillation, StepOutputs, build_method, kd_loss


def test_kd_loss_matches_hand_computation():
    s = torch.tensor([[1.0, 0.0]])
    t = torch.tensor([[0.0, 2.0]])
    T = 2.0
    ps = [math.exp(0.5) / (math.exp(0.5) + 1), 1 / (math.exp(0.5) + 1)]
    pt = [1 / (1 + math.e), math.e / (1 + math.e)]
    kl = sum(p * math.log(p / q) for p, q in zip(pt, ps))
    assert kd_loss(s, t, T).item() == pytest.approx(T * T * kl, rel=1e-6)


def test_kd_loss_zero_when_student_equals_teacher_and_batch_averaged():
    x = torch.randn(8, 2)
    assert kd_loss(x, x, 3.0).item() == pytest.approx(0.0, abs=1e-6)
    s, t = torch.randn(2, 2), torch.randn(2, 2)
    both = kd_loss(s, t, 1.0)
    single = (kd_loss(s[:1], t[:1], 1.0) + kd_loss(s[1:], t[1:], 1.0)) / 2
    assert both.item() == pytest.approx(single.item(), rel=1e-6)


def test_hinton_mixture_of_ce_and_kd():
    s, t, y = torch.randn(16, 2), torch.randn(16, 2), torch.randint(0, 2, (16,))
    ce = torch.nn.functional.cross_entropy(s, y)
    for alpha in (0.0, 0.7, 1.0):
        loss, parts = HintonKD(temperature=3.0, alpha=alpha).loss(StepOutputs(s, y, t))
        expected = (1 - alpha) * ce + alpha * kd_loss(s, t, 3.0)
        assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
        assert parts["ce"] == pytest.approx(ce.item(), rel=1e-6)
    loss, _ = NoDistillation().loss(StepOutputs(s, y))
    assert loss.item() == pytest.approx(ce.item())


def test_kd_gradient_pulls_student_towards_teacher():
    s = torch.zeros(1, 2, requires_grad=True)
    t = torch.tensor([[0.0, 3.0]])
    HintonKD(2.0, 1.0).loss(StepOutputs(s, torch.tensor([0]), t))[0].backward()
    assert s.grad[0, 1] < 0 < s.grad[0, 0]  # descending the gradient raises the teacher's preferred class


def test_build_method_and_bad_parameters():
    assert isinstance(build_method(DistillConfig(method="none")), NoDistillation)
    kd = build_method(DistillConfig(method="kd", temperature=5, alpha=0.7))
    assert kd.needs_teacher and kd.temperature == 5 and kd.alpha == 0.7
    with pytest.raises(ValueError, match="temperature"):
        HintonKD(temperature=0)
    with pytest.raises(ValueError, match="alpha"):
        HintonKD(alpha=1.5)


def test_one_registry_feeds_config_validation_and_build_method():
    import dataclasses

    import pytest

    from jetkd.config import JOB_CHECKS, Invalid, load_job
    from jetkd.distill.registry import METHODS

    sections = {f.name for f in dataclasses.fields(DistillConfig)} - {"method", "teacher", "temperature", "alpha"}
    assert sections == {name for name, e in METHODS.items() if e.options}  # one section per method with options
    for name in METHODS:
        JOB_CHECKS["distill.method"](name)
    with pytest.raises(Invalid, match="'crd' is not one of none, kd, fitnets, norm, cdd, curriculum"):
        JOB_CHECKS["distill.method"]("crd")
    job = load_job(data={"distill": {"method": "norm", "norm": {"teacher_tap": "graph_dec.1", "n": 4}}})
    method = build_method(job.distill)
    assert type(method) is METHODS["norm"].load() and method.options.n == 4
    assert type(build_method(DistillConfig(method="kd", temperature=3.0, alpha=0.2))) is HintonKD
    assert type(build_method(DistillConfig())) is NoDistillation
