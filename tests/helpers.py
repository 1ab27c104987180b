"""Small jets, cache files and job configs shared by the training and distillation tests, and the comparisons
several test modules make."""

import numpy as np
import torch
import torch.nn.functional as F

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


def assert_same(a, b, rtol=1e-6, msg=None):
    """Equal up to ``rtol`` relative to the largest entry."""
    torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * b.abs().max().item(), msg=msg)


def assert_same_training_step(model, reference, a, b, label):
    """Logits ``a`` of ``model`` and ``b`` of ``reference`` (float64) agree, and so do, after the cross-entropy
    backward of each, every parameter gradient (1e-7 relative, 1e-9 of the largest) and every buffer."""
    assert_same(a, b, rtol=1e-9)
    F.cross_entropy(a, label).backward()
    F.cross_entropy(b, label).backward()
    scale = max(q.grad.abs().max().item() for q in reference.parameters())
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-7, atol=1e-9 * scale, msg=name)
    for (name, s), t in zip(model.named_buffers(), reference.buffers()):
        torch.testing.assert_close(s, t, rtol=1e-9, atol=1e-12, msg=name)


def in_autograd_graph(t: torch.Tensor, backward_name: str) -> bool:
    """Whether a node named ``backward_name`` (e.g. "PairChainBackward") is in the autograd graph of ``t``."""
    seen, todo = set(), [t.grad_fn]
    while todo:
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if type(fn).__name__ == backward_name:
            return True
        todo += [f for f, _ in fn.next_functions]
    return False


def cdd_student(spec, *, teacher_tap: str, c_teacher: int, **options):
    """(CDD method, student at the training width) with the method set up on it against a teacher tap of width
    ``c_teacher`` (seeded)."""
    from jetkd.distill import Tap
    from jetkd.distill.cdd import CDD
    from jetkd.distill.options import CDDOptions
    from jetkd.models import build_model

    torch.manual_seed(0)
    method = CDD(CDDOptions(teacher_tap=teacher_tap, **options), temperature=2.0)
    student = build_model(method.train_spec(spec))
    method.setup(student, None, {}, {teacher_tap: Tap(torch.zeros(2, c_teacher))})
    return method, student


def scramble_cdd(method, student, norm: type):
    """Random CDD compactors (a third of the rows zero, one far below threshold) and random statistics and affine
    parameters of the student's ``norm`` BatchNorms."""
    with torch.no_grad():
        for c in method.compactors:
            c.weight.add_(0.3 * torch.randn_like(c.weight))
            c.weight[::3] = 0
            c.weight[1] *= 1e-6
        for m in student.modules():
            if isinstance(m, norm):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_()
                m.bias.normal_()
