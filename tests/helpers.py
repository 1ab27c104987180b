"""Small jets, cache files and job configs shared by the training and distillation tests."""

import numpy as np

from jetkd.data.cache import CacheWriter


TINY_DEEPSET = {"name": "deepset", "phi_hidden": [16, 16], "rho_hidden": [16]}


def toy_jets(n_jets, seed, max_particles=16):
    """Collimated jets along +x; class 1 has wider constituents (larger mass). p4 (n, M, 4) float32."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 2, n_jets)
    n = rng.integers(4, max_particles + 1, n_jets).astype(np.int32)
    pt = rng.exponential(30.0, (n_jets, max_particles)) + 1.0
    width = np.where(label == 1, 0.25, 0.08)[:, None]
    eta, phi = rng.normal(0, 1, (2, n_jets, max_particles)) * width
    px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
    p4 = np.stack([np.sqrt(px**2 + py**2 + pz**2), px, py, pz], -1).astype(np.float32)
    order = np.argsort(-pt, axis=1)
    p4 = np.take_along_axis(p4, order[..., None], 1)
    p4[np.arange(max_particles)[None] >= n[:, None]] = 0
    return p4, n, label


def job_dict(cache, run_dir, **sections):
    base = {
        "run_dir": str(run_dir),
        "data": {k: str(cache / f"{k}.h5") for k in ("train", "val", "test")},
        "model": TINY_DEEPSET,
        "train": {"epochs": 2, "batch_size": 32, "seed": 3},
        "optim": {"lr": 3e-3},
        "schedule": {"name": "cosine", "warmup_epochs": 0.5},
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) and key != "model" else value
    return base


def write_toy_cache(root, max_particles=16):
    """train/val/test cache files (256/96/96 toy jets) under ``root``; returns ``root``."""
    for name, n_jets, seed in (("train", 256, 0), ("val", 96, 1), ("test", 96, 2)):
        with CacheWriter(root / f"{name}.h5", n_jets, max_particles, {"split": name}) as w:
            w.append(*toy_jets(n_jets, seed, max_particles))
            w.commit()
    return root


def assert_exact_resume(make_job, tmp_path, kill_step, monkeypatch):
    """A run killed by SIGTERM after global step ``kill_step`` and resumed ends with bitwise the same model and
    method state as an uninterrupted run. ``make_job(run_dir)`` builds the job. Returns the uninterrupted
    run's last checkpoint."""
    import os
    import signal

    import pytest
    import torch

    from jetkd.train.checkpoint import load_checkpoint
    from jetkd.train.loop import Preempted, Trainer

    Trainer(make_job(tmp_path / "full"), progress=False).fit()
    job = make_job(tmp_path / "killed")
    real_step = Trainer.train_step

    def step_then_signal(self, batch):
        parts = real_step(self, batch)
        if self.global_step == kill_step:
            os.kill(os.getpid(), signal.SIGTERM)
        return parts

    monkeypatch.setattr(Trainer, "train_step", step_then_signal)
    with pytest.raises(Preempted):
        Trainer(job, progress=False).fit()
    monkeypatch.setattr(Trainer, "train_step", real_step)
    Trainer(job, resume=True, progress=False).fit()
    full, killed = (load_checkpoint(tmp_path / name / "last.pt") for name in ("full", "killed"))
    for part in ("model", "method"):
        assert full[part].keys() == killed[part].keys()
        for k in full[part]:
            torch.testing.assert_close(killed[part][k], full[part][k], rtol=0, atol=0, msg=k)
    return full
