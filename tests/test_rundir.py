"""Run folders you can trust: one run per folder (lock, refuse, --force), --resume checks the config, metrics.jsonl
survives kill -9 and SIGTERM line for line, divergence stops the run cleanly, and batch logs show progress."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from jetkd.cli import main
from jetkd.config import load_job
from jetkd.errors import InputError
from jetkd.rundir import OutputFolder, lock_holder
from jetkd.train.checkpoint import load_checkpoint
from jetkd.train.loop import Diverged, Trainer

from helpers import job_dict

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def write_config(tmp_path, cache, name="job.yaml", **sections):
    config = tmp_path / name
    config.write_text(yaml.safe_dump(job_dict(cache, tmp_path / "run", **sections)))
    return config


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


# ----------------------------------------------------------------------------- one run per folder


def test_train_refuses_a_folder_holding_a_run_and_force_moves_it_aside(cache, tmp_path, capsys):
    config = write_config(tmp_path, cache, train={"epochs": 1})
    assert main(["train", str(config)]) == 0
    before = (tmp_path / "run" / "best.pt").read_bytes()
    capsys.readouterr()
    assert main(["train", str(config)]) == 2
    err = one_error_line(capsys)
    assert "already holds a run" in err and "--resume" in err and "--force" in err
    assert (tmp_path / "run" / "best.pt").read_bytes() == before  # untouched
    assert main(["train", str(config), "--force"]) == 0
    moved = [p for p in tmp_path.iterdir() if p.name.startswith("run.replaced-")]
    assert len(moved) == 1 and (moved[0] / "best.pt").read_bytes() == before
    assert f"moved the previous run in {tmp_path / 'run'} to {moved[0]}" in capsys.readouterr().out
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 1  # a new run, not appended


def test_a_live_lock_refuses_at_once_and_a_dead_ones_is_taken_over(cache, tmp_path):
    job = load_job(data=job_dict(cache, tmp_path / "run", train={"epochs": 1}))
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from jetkd.rundir import OutputFolder; "
                               "OutputFolder(sys.argv[1], ['best.pt']).acquire(); print('locked', flush=True); "
                               "time.sleep(60)", str(tmp_path / "run")], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "locked"
        start = time.perf_counter()
        with pytest.raises(InputError, match=f"in use by process {holder.pid} on {socket.gethostname()}"):
            Trainer(job, progress=False)
        assert time.perf_counter() - start < 5  # fails at once, does not wait or train
    finally:
        holder.kill()
        holder.wait()
    assert lock_holder(tmp_path / "run") is None  # the holder died (kill -9): its lock is stale
    Trainer(job, progress=False).fit()
    assert not (tmp_path / "run" / ".lock").exists() and (tmp_path / "run" / "best.pt").exists()


def test_locks_from_other_hosts_expire_when_untouched(tmp_path, monkeypatch):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / ".lock").write_text(json.dumps({"pid": 1, "host": "node-elsewhere", "since": "yesterday"}))
    with pytest.raises(InputError, match="in use by process 1 on node-elsewhere"):
        OutputFolder(folder, ["x"]).acquire()
    old = time.time() - 3600
    os.utime(folder / ".lock", (old, old))
    with OutputFolder(folder, ["x"]) as taken:
        assert json.loads((folder / ".lock").read_text())["pid"] == os.getpid()
        with pytest.raises(InputError, match="in use by process"):  # a second opener in this process too
            OutputFolder(folder, ["x"]).acquire()
        taken.touch()
    assert not (folder / ".lock").exists()


def test_a_run_dir_that_is_a_file_is_refused(cache, tmp_path):
    (tmp_path / "run").write_text("not a folder")
    with pytest.raises(InputError, match="run_dir: expected a folder, got the existing file"):
        load_job(data=job_dict(cache, tmp_path / "run"))
    with pytest.raises(InputError, match="is a file; expected a folder for the run"):
        OutputFolder(tmp_path / "run", ["best.pt"]).acquire()


# ----------------------------------------------------------------------------- resume checks the config


def test_resume_refuses_a_changed_config_and_applies_safe_keys(cache, tmp_path, capsys):
    config = write_config(tmp_path, cache, train={"epochs": 1})
    assert main(["train", str(config)]) == 0
    capsys.readouterr()
    assert main(["train", str(config), "--resume", "optim.lr=1e6", "model.phi_hidden=[8,8]"]) == 2
    err = one_error_line(capsys)
    assert "optim.lr: 0.003 -> 1000000.0" in err and "model.phi_hidden" in err and "train.epochs" in err
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["optim"]["lr"] == 0.003  # not recorded
    # overrides anywhere on the command line; train.epochs may grow
    assert main(["train", "--resume", str(config), "train.epochs=2", "train.checkpoint_every=3"]) == 0
    out = capsys.readouterr().out
    assert "changed on resume: train.checkpoint_every 0 -> 3; train.epochs 1 -> 2" in out
    record = json.loads((tmp_path / "run" / "resumed.jsonl").read_text())
    assert record["changes"] == {"train.checkpoint_every": [0, 3], "train.epochs": [1, 2]} and record["epoch"] == 1
    assert [json.loads(x)["epoch"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["train"]["epochs"] == 2
    assert main(["train", str(config), "--resume", "train.epochs=1"]) == 2
    assert "already trained 2" in one_error_line(capsys)


KILL = """
import os, signal, sys
from jetkd.train.loop import Trainer
mode, at = sys.argv[1], int(sys.argv[2])
if mode == "step":  # kill -9 right after global step `at` (mid-epoch; last.pt is from an earlier step)
    real = Trainer.train_step
    def train_step(self, batch):
        out = real(self, batch)
        if self.global_step == at:
            os.kill(os.getpid(), signal.SIGKILL)
        return out
    Trainer.train_step = train_step
else:  # kill -9 between writing last.pt at the end of epoch `at` and appending its metrics line
    real = Trainer._save_last
    def _save_last(self):
        real(self)
        if self.epoch == at and self.step_in_epoch == 0:
            os.kill(os.getpid(), signal.SIGKILL)
    Trainer._save_last = _save_last
from jetkd.cli import main
sys.exit(main(sys.argv[3:]))
"""


@pytest.mark.parametrize("mode, at", [("step", 13), ("epoch", 1)], ids=["mid-epoch", "after-last.pt"])
def test_metrics_after_kill_9_and_resume_equal_the_uninterrupted_runs(cache, tmp_path, mode, at):
    config = write_config(tmp_path, cache, train={"epochs": 3, "checkpoint_every": 3})
    run = lambda *argv: subprocess.run([sys.executable, "-c", KILL, mode, str(at), "train", str(config), *argv],  # noqa: E731
                                       env=ENV, capture_output=True, text=True, timeout=300)
    assert main(["train", str(config), f"run_dir={tmp_path / 'full'}"]) == 0
    killed = run(f"run_dir={tmp_path / 'killed'}")
    assert killed.returncode == -signal.SIGKILL
    if mode == "step":
        assert load_checkpoint(tmp_path / "killed" / "last.pt")["global_step"] == 11  # epoch 2, step 3 of 8
    else:
        assert not (tmp_path / "killed" / "metrics.jsonl").exists()  # the epoch's line never got written
    assert main(["train", str(config), f"run_dir={tmp_path / 'killed'}", "--resume"]) == 0
    full, resumed = ((tmp_path / name / "metrics.jsonl").read_text().splitlines() for name in ("full", "killed"))
    assert len(full) == 3 and resumed == full


def test_metrics_after_sigterm_mid_epoch_equal_the_uninterrupted_runs(cache, tmp_path, monkeypatch):
    make = lambda run: load_job(data=job_dict(cache, run, train={"epochs": 3}))  # noqa: E731
    Trainer(make(tmp_path / "full"), progress=False).fit()
    real = Trainer.train_step

    def step_then_signal(self, batch):
        out = real(self, batch)
        if self.global_step == 11:  # epoch 2, step 3 of 8
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(Trainer, "train_step", step_then_signal)
    from jetkd.train.loop import Preempted

    with pytest.raises(Preempted):
        Trainer(make(tmp_path / "killed"), progress=False).fit()
    monkeypatch.setattr(Trainer, "train_step", real)
    Trainer(make(tmp_path / "killed"), resume=True, progress=False).fit()
    full, resumed = ((tmp_path / name / "metrics.jsonl").read_text().splitlines() for name in ("full", "killed"))
    assert len(full) == 3 and resumed == full


# ----------------------------------------------------------------------------- divergence


def test_a_diverging_run_stops_at_the_step_with_its_checkpoints_as_they_were(cache, tmp_path, monkeypatch, capsys):
    import torch

    from jetkd.models.students import DeepSet

    config = write_config(tmp_path, cache, train={"epochs": 3, "checkpoint_every": 2})
    step = {"now": 0}
    real_step, real_forward = Trainer.train_step, DeepSet.forward

    def counting_step(self, batch):
        step["now"] = self.global_step + 1
        return real_step(self, batch)

    def forward(self, p4, mask):  # the student's logits turn NaN at global step 13 (epoch 2, step 5)
        out = real_forward(self, p4, mask)
        return out * float("nan") if self.training and step["now"] == 13 else out

    monkeypatch.setattr(Trainer, "train_step", counting_step)
    monkeypatch.setattr(DeepSet, "forward", forward)
    assert main(["train", str(config)]) == 3
    err = one_error_line(capsys)
    assert "diverged at epoch 2, step 5 (global step 13): the loss is nan" in err
    assert "last.pt and best.pt are as they were" in err and "epoch 1, step 4" in err
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    assert (last["epoch"], last["step_in_epoch"], last["global_step"]) == (1, 4, 12)
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())
    assert load_checkpoint(tmp_path / "run" / "best.pt")["epoch"] == 1
    assert not (tmp_path / "run" / ".lock").exists()


def test_a_learning_rate_of_1e6_diverges_in_epoch_1_without_a_traceback(cache, tmp_path, capsys):
    config = write_config(tmp_path, cache, optim={"lr": 1e6})
    assert main(["train", str(config)]) == 3
    err = one_error_line(capsys)
    assert "diverged at epoch 1" in err and "no checkpoint exists yet" in err
    with pytest.raises(Diverged):
        Trainer(load_job(data=job_dict(cache, tmp_path / "api", optim={"lr": 1e6})), progress=False).fit()


# ----------------------------------------------------------------------------- batch logs


def test_without_a_terminal_training_prints_epoch_lines_and_heartbeats(cache, tmp_path):
    config = write_config(tmp_path, cache, train={"epochs": 2})
    code = ("import sys, jetkd.train.loop as loop; loop.HEARTBEAT_SECONDS = 0.0; from jetkd.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    done = subprocess.run([sys.executable, "-c", code, "train", str(config)], env=ENV, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    beats = [x for x in lines if x.startswith("epoch 1/2  step ") and " loss " in x]
    assert len(beats) >= 7 and "jets/s  elapsed 0:00:" in beats[0] and " eta " in beats[0]
    ends = [x for x in lines if " val_auc " in x]
    assert len(ends) == 2 and ends[1].startswith("epoch 2/2  step 16  train_loss ") and "lr " in ends[1]
    assert "eta 0:00:00" in ends[1]
    assert "\r" not in done.stdout + done.stderr  # no progress-bar redraws in a batch log
    assert Path(tmp_path / "run" / "timing.jsonl").read_text().count("jets_per_s") == 2


def test_validation_reports_non_finite_scores_instead_of_crashing(cache, tmp_path, monkeypatch, capsys):
    import math

    from jetkd.models.students import DeepSet

    real_forward = DeepSet.forward
    monkeypatch.setattr(DeepSet, "forward", lambda self, p4, mask: real_forward(self, p4, mask) * (
        1.0 if self.training else float("inf")))
    summary = Trainer(load_job(data=job_dict(cache, tmp_path / "run")), progress=False).fit()
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["val_nonfinite"] for r in records] == [96, 96]
    assert all(math.isnan(r[k]) for r in records for k in ("val_loss", "val_acc", "val_auc"))
    assert math.isnan(summary["best_val_acc"]) and "no epoch qualified as best" in capsys.readouterr().out


def test_resume_of_a_run_from_an_older_jetkd_accepts_keys_added_since(cache, tmp_path):
    job = load_job(data=job_dict(cache, tmp_path / "run", train={"epochs": 1}))
    Trainer(job, progress=False).fit()
    stored = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    del stored["train"]["bucket_by_length"]  # as written before the key existed
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump(stored))
    Trainer(load_job(data=job_dict(cache, tmp_path / "run", train={"epochs": 2})), resume=True, progress=False).fit()
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 2
