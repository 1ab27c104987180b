"""The training loop: run folder contents, exact resume after preemption, DDP == one process, cached teacher."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from jetkd.cli import main
from jetkd.config import load_job
from jetkd.train.checkpoint import load_checkpoint, load_model
from jetkd.train.loop import Preempted, Trainer

from helpers import TINY_DEEPSET, job_dict  # tests/helpers.py


def weights(path):
    return load_checkpoint(path)["model"]


def assert_same_weights(a, b, atol=0.0):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol, msg=k)


def test_run_folder_has_config_checkpoints_and_metrics(cache, tmp_path):
    job = load_job(data=job_dict(cache, tmp_path / "run"))
    summary = Trainer(job, progress=False).fit()
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} == {"config.yaml", "last.pt", "best.pt", "metrics.jsonl", "timing.jsonl"}
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert {"train_loss", "val_loss", "val_acc", "val_auc", "lr"} <= records[0].keys()
    assert [json.loads(line)["epoch"] for line in (run / "timing.jsonl").read_text().splitlines()] == [1, 2]
    assert summary["best_epoch"] in (1, 2) and summary["steps"] == 16
    assert yaml.safe_load((run / "config.yaml").read_text())["model"] == TINY_DEEPSET
    model = load_model(run)
    assert not model.training and records[-1]["val_auc"] > 0.9  # the toy classes are separable


@pytest.mark.parametrize("extra", [{}, {"train": {"boost_beta_max": 0.6, "checkpoint_every": 3}},
                                   {"train": {"boost_beta_max": 0.6, "boost_bank": 3, "boost_validation": True}}],
                         ids=["plain", "boosted", "boost_bank"])
def test_resume_after_preemption_gives_the_same_weights(cache, tmp_path, monkeypatch, extra):
    full = Trainer(load_job(data=job_dict(cache, tmp_path / "full", **extra)), progress=False)
    full.fit()

    job = load_job(data=job_dict(cache, tmp_path / "killed", **extra))
    real_step = Trainer.train_step

    def step_then_signal(self, batch):
        parts = real_step(self, batch)
        if self.global_step == 10:  # mid-way through epoch 2
            os.kill(os.getpid(), signal.SIGTERM)
        return parts

    monkeypatch.setattr(Trainer, "train_step", step_then_signal)
    with pytest.raises(Preempted, match="epoch 1, step 3"):
        Trainer(job, progress=False).fit()
    monkeypatch.setattr(Trainer, "train_step", real_step)
    assert load_checkpoint(tmp_path / "killed" / "last.pt")["global_step"] == 11
    Trainer(job, resume=True, progress=False).fit()
    assert_same_weights(weights(tmp_path / "killed" / "last.pt"), weights(tmp_path / "full" / "last.pt"))
    assert len((tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()) == 2


@pytest.fixture(scope="module")
def teacher(cache, tmp_path_factory):
    run = tmp_path_factory.mktemp("teacher")
    job = load_job(data=job_dict(cache, run, model={"name": "mlp", "n_constituents": 8, "hidden": [32]}))
    Trainer(job, progress=False).fit()
    return run / "best.pt"


def test_kd_teacher_logits_are_computed_once_and_reused(cache, tmp_path, teacher, monkeypatch):
    kd = {"distill": {"method": "kd", "teacher": str(teacher), "temperature": 3.0, "alpha": 0.7}}
    first = Trainer(load_job(data=job_dict(cache, tmp_path / "a", **kd)), progress=False)
    stored = list(teacher.parent.glob("teacher_outputs_*.pt"))
    assert len(stored) == 1
    from jetkd.data.cache import JetCache
    from jetkd.data.loader import JetBatch

    rows = JetCache(cache / "train.h5").rows(np.arange(256))
    batch = JetBatch.from_arrays(*rows)
    with torch.no_grad():
        torch.testing.assert_close(first.teacher_cache["logits"], load_model(teacher)(batch.p4, batch.mask), atol=1e-5, rtol=1e-5)

    calls = []
    second = Trainer(load_job(data=job_dict(cache, tmp_path / "b", **kd)), progress=False)
    monkeypatch.setattr(type(second.teacher), "forward", lambda *a, **k: calls.append(1))
    second.fit()
    assert calls == []  # training used the stored logits only
    torch.testing.assert_close(second.teacher_cache["logits"], first.teacher_cache["logits"])


def test_kd_with_boost_augmentation_runs_the_teacher_each_step(cache, tmp_path, teacher):
    job = job_dict(cache, tmp_path / "aug", train={"boost_beta_max": 0.5, "epochs": 1},
                   distill={"method": "kd", "teacher": str(teacher), "temperature": 1.0, "alpha": 0.5})
    trainer = Trainer(load_job(data=job), progress=False)
    assert trainer.teacher_cache is None
    trainer.fit()


def test_ddp_two_processes_match_one_process(cache, tmp_path):
    """torchrun with 2 gloo processes x batch 16 == 1 process x batch 32: same global batches, same boost
    betas, BatchNorm statistics summed over ranks, DDP-averaged gradients.

    Tolerance: float sums are reduced in another order (~1e-7 relative). The first phi layer's bias is a flat
    direction of the loss for channels whose LeakyReLU stays linear (the BatchNorm after it cancels a shift), so
    its gradient is pure rounding noise, which Adam normalises into full-size steps; a larger Adam eps (1e-5)
    keeps that noise small. That bias and the BatchNorm running mean that follows it are compared through the
    function: test-set logits agree to 1e-4. Every other weight agrees to 1e-5.
    """
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(job_dict(cache, tmp_path / "unused", train={"boost_beta_max": 0.5}, optim={"eps": 1e-5})))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    single = [sys.executable, "-m", "jetkd", "train", str(config), f"run_dir={tmp_path / 'one'}", "train.batch_size=32"]
    ddp = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "jetkd", "train",
           str(config), f"run_dir={tmp_path / 'two'}", "train.batch_size=16"]
    for cmd in (single, ddp):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    flat = {"phi.blocks.0.fc.bias", "phi.blocks.0.bn.running_mean"}
    one, two = weights(tmp_path / "one" / "last.pt"), weights(tmp_path / "two" / "last.pt")
    assert_same_weights({k: v for k, v in two.items() if k not in flat}, {k: v for k, v in one.items() if k not in flat}, atol=1e-5)
    from jetkd.data.cache import JetCache
    from jetkd.data.loader import JetBatch

    batch = JetBatch.from_arrays(*JetCache(cache / "test.h5").rows(np.arange(96)))
    with torch.no_grad():
        logits = [load_model(tmp_path / run / "last.pt")(batch.p4, batch.mask) for run in ("one", "two")]
    torch.testing.assert_close(logits[1], logits[0], rtol=0, atol=1e-4)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["best.pt", "config.yaml", "last.pt", "metrics.jsonl",
                                                                   "timing.jsonl"]


def test_cli_train_bad_input_is_one_line(cache, tmp_path, capsys):
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(job_dict(cache, tmp_path / "run", data={"train": str(tmp_path / "absent.h5")})))
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "data.train" in err and "absent.h5" in err
    assert main(["train", str(config), "train.epohcs=1"]) == 2
    assert "train.epohcs: unknown key" in capsys.readouterr().err


def test_boosted_validation_sees_the_same_boosted_jets_every_epoch(cache, tmp_path):
    from jetkd import lorentz
    from jetkd.train.data import JetData, boosted

    job = load_job(data=job_dict(cache, tmp_path / "run", train={"boost_beta_max": 0.8, "boost_validation": True}))
    data = JetData(job)
    first, second = (boosted(data.val_batches(32), *data.boost) for _ in range(2))
    for a, b, plain in zip(first, second, data.val_batches(32)):
        assert torch.equal(a.p4, b.p4) and not torch.allclose(a.p4, plain.p4)
        jet = lambda p4: p4.double().sum(1)  # noqa: E731
        torch.testing.assert_close(lorentz.mass2(jet(a.p4)), lorentz.mass2(jet(plain.p4)), rtol=1e-3, atol=1.0)
    assert Trainer(job, progress=False).fit()["best_epoch"] in (1, 2)
    assert JetData(load_job(data=job_dict(cache, tmp_path / "u", train={"boost_beta_max": 0.8}))).boost is None


def test_boosted_validation_also_keeps_the_best_epoch_on_unboosted_jets(cache, tmp_path):
    """best_unboosted.pt is what the same run validated on unboosted jets keeps as best.pt (validation draws no
    training random numbers, so the two runs train identically), and says so in its config."""
    boost = {"boost_beta_max": 0.4, "epochs": 4, "select_by": "val_loss"}
    Trainer(load_job(data=job_dict(cache, tmp_path / "b", train={**boost, "boost_validation": True})), progress=False).fit()
    Trainer(load_job(data=job_dict(cache, tmp_path / "u", train=boost)), progress=False).fit()
    records = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    plain = [json.loads(line) for line in (tmp_path / "u" / "metrics.jsonl").read_text().splitlines()]
    assert [r["val_unboosted_acc"] for r in records] == [r["val_acc"] for r in plain]
    assert [r["val_loss"] for r in records] != [r["val_loss"] for r in plain]
    ours, theirs = load_checkpoint(tmp_path / "b" / "best_unboosted.pt"), load_checkpoint(tmp_path / "u" / "best.pt")
    assert ours["best"] == theirs["best"] and ours["epoch"] == theirs["epoch"]
    assert ours["best"]["value"] == min(r["val_loss"] for r in plain)
    assert_same_weights(ours["model"], theirs["model"])
    assert ours["config"]["train"] == theirs["config"]["train"]
    assert load_checkpoint(tmp_path / "b" / "best.pt")["config"]["train"]["boost_validation"] is True
    assert not (tmp_path / "u" / "best_unboosted.pt").exists()

    from jetkd.pipeline import with_unboosted_selection

    named = with_unboosted_selection({"ds_seed1": tmp_path / "b", "plain": tmp_path / "u", "ds": tmp_path / "b"})
    assert list(named) == ["ds_seed1", "ds_unboostedval_seed1", "plain", "ds", "ds_unboostedval"]
    assert named["ds_unboostedval_seed1"] == tmp_path / "b" / "best_unboosted.pt"


def test_boost_bank_caches_the_teacher_on_each_boosted_copy(cache, tmp_path, teacher, monkeypatch):
    """train.boost_bank: the teacher runs once per copy, before training; each training jet is one of its copies,
    and the cached teacher logits are the teacher's on exactly that boosted jet. The copies are the same for every
    training seed, so a second seed reuses the stored outputs."""
    from jetkd import lorentz
    from jetkd.data.cache import JetCache
    from jetkd.data.loader import JetBatch
    from jetkd.train.data import boost_bank

    kd = {"method": "kd", "teacher": str(teacher), "temperature": 1.0, "alpha": 1.0}
    job = load_job(data=job_dict(cache, tmp_path / "a", train={"boost_beta_max": 0.7, "boost_bank": 3}, distill=kd))
    trainer = Trainer(job, progress=False)
    assert trainer.teacher_cache["logits"].shape == (3, 256, 2)
    torch.testing.assert_close(trainer.bank_betas, boost_bank(3, 256, 0.7))
    assert 0 <= trainer.bank_betas.min() and trainer.bank_betas.max() < 0.7 and trainer.bank_betas.std() > 0.1

    rows = JetBatch.from_arrays(*JetCache(cache / "train.h5").rows(np.arange(32)))
    batch = JetBatch(rows.p4, rows.mask, rows.label, torch.arange(32))
    boosted, copy = trainer._augment(batch)
    assert copy.shape == (32,) and len(set(copy.tolist())) > 1
    beta = trainer.bank_betas[copy, batch.index]
    torch.testing.assert_close(boosted.p4, lorentz.boost(batch.p4, beta[:, None].float(), [1.0, 0.0, 0.0]) * batch.mask[..., None])
    with torch.no_grad():
        expected = load_model(teacher)(boosted.p4, boosted.mask)
    torch.testing.assert_close(trainer._cached_rows("logits", boosted, copy), expected, atol=1e-5, rtol=1e-5)

    calls = []
    second = Trainer(load_job(data=job_dict(cache, tmp_path / "b", train={"boost_beta_max": 0.7, "boost_bank": 3,
                                                                          "seed": 9}, distill=kd)), progress=False)
    monkeypatch.setattr(type(second.teacher), "forward", lambda *a, **k: calls.append(1))
    second.fit()
    assert calls == []  # neither set-up nor training ran the teacher: the stored copies served seed 9 too
    with pytest.raises(Exception, match="train.boost_bank"):
        load_job(data=job_dict(cache, tmp_path / "c", train={"boost_bank": 2}))
