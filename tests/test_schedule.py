"""Learning-rate schedules: warm-up, cosine and step decay."""

import pytest

from jetkd.config import ScheduleConfig
from jetkd.train.schedule import lr_factor


def test_warmup_then_cosine_to_zero():
    cfg = ScheduleConfig(name="cosine", warmup_epochs=1)
    f = [lr_factor(cfg, s, steps_per_epoch=10, epochs=5) for s in range(50)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert f[10] == pytest.approx(1.0) and f[30] == pytest.approx(0.5)
    assert all(a >= b for a, b in zip(f[10:], f[11:])) and f[49] < 0.01


def test_step_decay_every_n_epochs():
    cfg = ScheduleConfig(name="step", step_epochs=10, gamma=0.7)
    assert lr_factor(cfg, 99, 10, 100) == 1.0
    assert lr_factor(cfg, 100, 10, 100) == pytest.approx(0.7)
    assert lr_factor(cfg, 250, 10, 100) == pytest.approx(0.49)


def test_constant():
    assert lr_factor(ScheduleConfig(name="constant"), 1234, 10, 100) == 1.0


def test_milestone_steps_and_sgd():
    import torch

    from jetkd.config import OptimConfig, ScheduleConfig, load_job
    from jetkd.errors import InputError
    from jetkd.train.loop import build_optimizer

    cfg = ScheduleConfig(name="step", gamma=0.1, milestones=[2, 3.5])
    assert [lr_factor(cfg, s, 10, 5) for s in (0, 19, 20, 34, 35, 49)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    sgd = build_optimizer(OptimConfig(name="sgd", lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4),
                          [{"params": [torch.nn.Parameter(torch.zeros(2))]}])
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.9 and sgd.defaults["nesterov"]
    with pytest.raises(InputError, match="optim.name: 'adam' is not one of adamw, sgd"):
        load_job(data={"optim": {"name": "adam"}})


def test_warmup_in_steps_then_step_decay_as_kd4jets():
    cfg = ScheduleConfig(name="step", warmup_steps=1000, step_epochs=10, gamma=0.7)
    f = [lr_factor(cfg, s, steps_per_epoch=300, epochs=100) for s in (0, 499, 999, 1000, 2999, 3000, 6000)]
    assert f == pytest.approx([0.001, 0.5, 1.0, 1.0, 1.0, 0.7, 0.49])
