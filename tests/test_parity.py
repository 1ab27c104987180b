"""Sparse parity (jetkd.parity): the generator's labels and seeds, the teacher trainer, the distillation loop
driving the real Method classes (equal steps and samples, curriculum phases as scheduled), and the study script
on a tiny instance."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from jetkd.distill.base import NoDistillation
from jetkd.distill.curriculum import CurriculumExtraction
from jetkd.distill.kd import HintonKD
from jetkd.errors import InputError
from jetkd.parity import (
    SETUP_SEED,
    BitStream,
    Settings,
    SparseParity,
    accuracy,
    build_method,
    derive_seed,
    distill,
    held_out_set,
    make_mlp,
    train_teacher,
)

TINY = SparseParity(n=10, k=2, seed=3)
TEACHER_SETTINGS = Settings(steps=3000, batch_size=32, optimizer="sgd", lr=0.05, eval_every=50)


@pytest.fixture(scope="module")
def tiny_teacher():
    """A width-64 teacher of (10, 2) parity trained on to 400 steps past its first 99% (seconds)."""
    test = held_out_set(TINY, 2048, seed=0)
    run = train_teacher(TINY, 64, TEACHER_SETTINGS, test, seed=0, snapshot_at=0.99, stop_at=None)
    return run, test


def test_labels_are_the_parity_of_the_seeded_subset():
    task = SparseParity(n=12, k=3, seed=7)
    subset = task.subset
    assert len(set(subset)) == 3 and list(subset) == sorted(subset) and all(0 <= i < 12 for i in subset)
    x, y = BitStream(task, seed=1).next_batch(4096)
    assert x.dtype == torch.float32 and x.shape == (4096, 12) and set(x.unique().tolist()) == {-1.0, 1.0}
    assert y.dtype == torch.int64 and y.shape == (4096,)
    bits = ((1 - x.numpy()) / 2).astype(int)  # -1 -> 1
    assert np.array_equal(y.numpy(), bits[:, list(subset)].sum(1) % 2)
    flip_in, flip_out = x.clone(), x.clone()
    flip_in[:, subset[0]] *= -1
    flip_out[:, next(i for i in range(12) if i not in subset)] *= -1
    assert torch.equal(task.label(flip_in), 1 - y) and torch.equal(task.label(flip_out), y)
    assert 0.45 < y.float().mean().item() < 0.55
    with pytest.raises(InputError):
        SparseParity(n=3, k=4)


def test_seeds_give_the_same_data_and_distinct_streams():
    assert SparseParity(50, 4, seed=2).subset == SparseParity(50, 4, seed=2).subset
    assert len({SparseParity(50, 4, seed=s).subset for s in range(5)}) > 1
    a, b, c = BitStream(TINY, 5), BitStream(TINY, 5), BitStream(TINY, 6)
    for _ in range(3):
        (xa, ya), (xb, yb), (xc, _) = a.next_batch(16), b.next_batch(16), c.next_batch(16)
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and not torch.equal(xa, xc)
    assert a.samples == 48
    assert torch.equal(held_out_set(TINY, 64, seed=1)[0], held_out_set(TINY, 64, seed=1)[0])
    seeds = {derive_seed(s, p) for s in range(3) for p in ("teacher init", "teacher data", "student init",
                                                            "student data", "test")}
    assert len(seeds) == 15
    torch.manual_seed(0)
    first = make_mlp(10, 8, seed=4)
    torch.manual_seed(1)
    assert torch.equal(first.hidden[0].weight, make_mlp(10, 8, seed=4).hidden[0].weight)


def test_teacher_trainer_reaches_high_accuracy_on_a_tiny_instance(tiny_teacher):
    run, test = tiny_teacher
    assert run.early is not None and run.curve.steps_to(0.99) == run.early_step
    assert run.curve.steps[-1] == TEACHER_SETTINGS.steps
    assert run.curve.final_accuracy >= 0.99 and accuracy(run.model, *test) == run.curve.final_accuracy
    assert accuracy(run.early, *test) >= 0.99
    assert not run.model.training and not any(p.requires_grad for p in run.model.parameters())
    stopped = train_teacher(TINY, 64, TEACHER_SETTINGS, test, seed=0, stop_at=0.99)
    assert stopped.curve.steps[-1] == run.early_step  # same seeds: the same run, stopped at its first 99%


def test_methods_are_the_registered_classes_and_validate_their_options():
    assert type(build_method("none")) is NoDistillation
    kd = build_method("kd", temperature=2.0, alpha=1.0)
    assert type(kd) is HintonKD and (kd.temperature, kd.alpha) == (2.0, 1.0)
    cur = build_method("curriculum", dim=8, phase_epochs=[2], seed=3)
    assert type(cur) is CurriculumExtraction
    assert cur.teacher_taps == ("hidden",) and cur.student_taps == ("hidden",) and cur.options.dim == 8
    with pytest.raises(InputError, match="dim"):
        build_method("curriculum", dim=0)


def test_loop_gives_equal_steps_and_samples_and_switches_curriculum_phases(tiny_teacher, monkeypatch):
    run, test = tiny_teacher
    seen: dict[str, list[torch.Tensor]] = {}
    original = BitStream.next_batch

    def recording(self, batch_size):
        x, y = original(self, batch_size)
        if self.generator.initial_seed() != SETUP_SEED:  # not the set-up sample batch (shapes only)
            seen.setdefault(current, []).append(x)
        return x, y

    monkeypatch.setattr(BitStream, "next_batch", recording)
    settings = Settings(steps=20, batch_size=16, eval_every=5, steps_per_epoch=5)
    curves = {}
    for current in ("kd", "curriculum"):
        method = build_method(current, dim=8, phase_epochs=[2], seed=0)
        curves[current] = distill(TINY, run.model, method, settings, test, seed=1)
    assert curves["kd"].steps == curves["curriculum"].steps == [0, 5, 10, 15, 20]
    assert len(seen["kd"]) == len(seen["curriculum"]) == 20
    assert all(torch.equal(a, b) for a, b in zip(seen["kd"], seen["curriculum"]))
    assert curves["kd"].phase == ["init"] + ["train"] * 4
    # 2 epochs of 5 steps: the step before the evaluation at 10 has progress 9 / 5 = 1.8 (extraction), at 15: 2.8
    assert curves["curriculum"].phase == ["init", "extract:hidden", "extract:hidden", "kd", "kd"]
    assert "extract" in curves["curriculum"].losses[0] and "extract" not in curves["curriculum"].losses[-1]
    assert curves["kd"].accuracy[0] == curves["curriculum"].accuracy[0]  # the same initial student

    method = build_method("curriculum", dim=8, phase_epochs=[2])
    for progress, phase in ((0.0, "extract:hidden"), (1.99, "extract:hidden"), (2.0, "kd"), (3.5, "kd")):
        method.set_progress(progress)
        assert method.phase() == phase and method.selectable() == (phase == "kd")


def test_extraction_phase_trains_the_hidden_layer_and_head_only(tiny_teacher, monkeypatch):
    run, test = tiny_teacher
    students = []
    monkeypatch.setattr("jetkd.parity.make_mlp", lambda *a, _make=make_mlp: students.append(_make(*a)) or students[-1])
    initial = make_mlp(TINY.n, 64, derive_seed(2, "student init"))
    method = build_method("curriculum", dim=8, phase_epochs=[2])
    distill(TINY, run.model, method, Settings(steps=10, steps_per_epoch=5, eval_every=5), test, seed=2)
    student = students[-1]
    assert torch.equal(student.classifier.weight, initial.classifier.weight)  # no gradient before the KD phase
    assert not torch.equal(student.hidden[0].weight, initial.hidden[0].weight)
    assert method.heads[0].linear.weight.shape == (8, 64) and method.projection0.shape == (64, 8)


def test_curriculum_student_beats_chance_on_a_tiny_instance(tiny_teacher):
    run, test = tiny_teacher
    method = build_method("curriculum", dim=16, phase_epochs=[2])
    curve = distill(TINY, run.model, method, Settings(steps=600, eval_every=100, steps_per_epoch=100), test, seed=0)
    assert curve.phase[-1] == "kd" and curve.final_accuracy > 0.9


def test_study_script_writes_its_table(tmp_path):
    spec = importlib.util.spec_from_file_location("sparse_parity", Path(__file__).parents[1] / "scripts" / "sparse_parity.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    threads = torch.get_num_threads()
    try:
        out = script.main(["--n", "8", "--k", "2", "--width", "32", "--seeds", "0", "1", "--steps", "100",
                           "--teacher-steps", "600", "--eval-every", "50", "--phase-epochs", "0.5",
                           "--test-size", "256", "--out", str(tmp_path / "study")])
    finally:
        torch.set_num_threads(threads)
    table = (out / "table.md").read_text()
    assert "Command: `python scripts/sparse_parity.py --n 8" in table
    for row in ("| labels only | - |", "| one-shot KD | converged |", "| curriculum extraction | converged |"):
        assert row in table
    assert (out / "curves.json").exists()
