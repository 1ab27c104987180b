"""Curriculum extraction: seeded projections, the regression loss on hand inputs, phase switches and which heads
they train, the deploy form, config errors, and end-to-end runs from a LorentzNet teacher."""

import json

import pytest
import torch
import torch.nn.functional as F

from jetkd.config import DistillConfig, load_job
from jetkd.data.loader import JetLoader
from jetkd.distill import StepOutputs, TapRecorder, build_method, kd_loss
from jetkd.distill.curriculum import CurriculumExtraction, schedule
from jetkd.distill.options import CurriculumOptions
from jetkd.distill.taps import Tap
from jetkd.errors import InputError
from jetkd.models import build_model
from jetkd.train.checkpoint import load_checkpoint, load_model
from jetkd.train.loop import Trainer

from helpers import assert_exact_resume, TINY_DEEPSET, job_dict


def options(**kw):
    base = {"teacher_taps": ["a", "b"], "student_tap": "s", "dim": 2, "phase_epochs": [1.0, 0.5]}
    return CurriculumOptions(**{**base, **kw})


def per_jet(b, c):
    return Tap(torch.randn(b, c))


def per_constituent(b, n, c):
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[:, -1] = False
    return Tap(torch.randn(b, n, c), mask)


def built(opts, student_tap, teacher_taps, temperature=2.0):
    method = CurriculumExtraction(opts, temperature)
    method.setup(None, None, {opts.student_tap: student_tap}, teacher_taps)
    return method


def test_projections_are_seeded_gaussian_buffers_restored_by_state_dict():
    taps = {"a": per_constituent(2, 3, 64), "b": per_jet(2, 16)}
    opts = options(dim=512, seed=7)
    first = built(opts, per_jet(2, 5), taps)
    torch.manual_seed(123)  # the projections do not depend on the global RNG
    again = built(opts, per_jet(2, 5), taps)
    other = built(options(dim=512, seed=8), per_jet(2, 5), taps)
    assert first.projection0.shape == (64, 512) and first.projection1.shape == (16, 512)
    assert torch.equal(first.projection0, again.projection0) and torch.equal(first.projection1, again.projection1)
    assert not torch.equal(first.projection0, other.projection0)
    assert first.projection0.std().item() == pytest.approx(1 / 8, rel=0.03)  # N(0, 1/C_t)
    assert first.projection1.std().item() == pytest.approx(1 / 4, rel=0.03)
    state = first.state_dict()
    assert {"projection0", "projection1", "heads.0.linear.weight", "heads.1.linear.weight"} <= state.keys()
    other.load_state_dict(state)
    assert torch.equal(other.projection0, first.projection0)
    assert torch.equal(other.heads[1].linear.weight, first.heads[1].linear.weight)
    assert list(first.buffers()) and not any(b.requires_grad for b in first.buffers())


def test_regression_loss_on_hand_inputs_per_jet():
    method = built(options(), per_jet(2, 3), {"a": per_jet(2, 2), "b": per_jet(2, 2)})
    method.projection0.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
    with torch.no_grad():
        method.heads[0].linear.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
        method.heads[0].linear.bias.zero_()
    out = StepOutputs(torch.zeros(2, 2), torch.tensor([0, 1]), torch.zeros(2, 2),
                      taps={"s": Tap(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))},
                      teacher_taps={"a": Tap(torch.tensor([[1.0, 1.0], [2.0, 0.0]])), "b": per_jet(2, 2)})
    method.set_progress(0.0)
    loss, parts = method.loss(out)
    # targets t P = [[1, 2], [2, 0]], predictions [[1, 0], [0, 1]]: 0.5 * mean(4, 5)
    assert loss.item() == pytest.approx(2.25) and parts["extract"] == pytest.approx(2.25)
    assert parts["ce"] == pytest.approx(F.cross_entropy(out.logits, out.label).item())


def test_regression_loss_on_hand_inputs_per_constituent_teacher():
    teacher = Tap(torch.tensor([[[1.0, 0.0], [3.0, 2.0], [100.0, 100.0]]]), torch.tensor([[True, True, False]]))
    step = {"logits": torch.zeros(1, 2), "label": torch.tensor([0]), "teacher_logits": torch.zeros(1, 2)}
    for student, expected in (
        # per-constituent student: 0.5 * mean over the 2 real constituents of |(2, 0)|^2, |(6, 2)|^2
        (Tap(torch.tensor([[[0.0, 0.0], [0.0, 0.0], [5.0, 5.0]]]), teacher.mask), 0.5 * (4 + 40) / 2),
        # per-jet student: the target is averaged over real constituents, (4, 1), against (1, 1)
        (Tap(torch.tensor([[1.0, 1.0]])), 0.5 * 9),
    ):
        method = built(options(), student, {"a": teacher, "b": per_jet(1, 2)})
        assert method.heads[0].per_constituent == student.per_constituent
        method.projection0.copy_(torch.tensor([[2.0, 0.0], [0.0, 1.0]]))
        with torch.no_grad():
            method.heads[0].linear.weight.copy_(torch.eye(2))
            method.heads[0].linear.bias.zero_()
        loss, _ = method.loss(StepOutputs(**step, taps={"s": student}, teacher_taps={"a": teacher}))
        assert loss.item() == pytest.approx(expected)


def test_final_phase_is_kd_with_optional_ce():
    s, t, y = torch.randn(8, 2), torch.randn(8, 2), torch.randint(0, 2, (8,))
    for alpha in (1.0, 0.7):
        method = built(options(alpha=alpha), per_jet(8, 3), {"a": per_jet(8, 4), "b": per_jet(8, 4)}, temperature=3.0)
        method.set_progress(1.5)
        loss, parts = method.loss(StepOutputs(s, y, t, taps={}, teacher_taps={}))  # taps not read in the KD phase
        expected = (1 - alpha) * F.cross_entropy(s, y) + alpha * kd_loss(s, t, 3.0)
        assert loss.item() == pytest.approx(expected.item(), rel=1e-6) and "extract" not in parts


def test_phases_switch_at_the_configured_progress_and_train_only_their_head():
    torch.manual_seed(0)
    student = build_model(TINY_DEEPSET)
    opts = CurriculumOptions(teacher_taps=["t0", "t1"], student_tap="rho", dim=4, phase_epochs=[1.0, 0.5])
    method = CurriculumExtraction(opts, temperature=2.0)
    recorder = TapRecorder(student, method.student_taps)
    p4 = torch.rand(6, 5, 4) * 10 + torch.tensor([40.0, 0, 0, 0])
    mask = torch.ones(6, 5, dtype=torch.bool)
    teacher_taps = {"t0": per_constituent(6, 5, 8), "t1": per_jet(6, 3)}
    teacher_logits, label = torch.randn(6, 2), torch.tensor([0, 1] * 3)

    def step(progress):
        method.set_progress(progress)
        for p in (*student.parameters(), *method.parameters()):
            p.grad = None
        with recorder:
            logits = student(p4, mask)
        if not method.heads:
            method.setup(student, None, recorder.taps, teacher_taps)
        loss, parts = method.loss(StepOutputs(logits, label, teacher_logits, recorder.taps, teacher_taps))
        loss.backward()
        return parts

    expected = [(0.0, "extract:t0", 0), (0.99, "extract:t0", 0), (1.0, "extract:t1", 1), (1.49, "extract:t1", 1),
                (1.5, "kd", None), (7.0, "kd", None)]
    for progress, phase, head in expected:
        parts = step(progress)
        assert method.phase() == phase and method.selectable() == (head is None)
        for i, h in enumerate(method.heads):
            assert (h.linear.weight.grad is not None) == (i == head), (progress, i)
        assert (student.classifier.weight.grad is None) == (head is not None)  # after the tap: only in KD
        assert student.rho.blocks[0].fc.weight.grad is not None
        assert ("extract" in parts) == (head is not None)
    assert [n for n, _, _ in schedule(opts, 4)] == ["extract:t0", "extract:t1", "kd"]
    assert schedule(opts, 4) == [("extract:t0", 0.0, 1.0), ("extract:t1", 1.0, 1.5), ("kd", 1.5, 4.0)]


def test_deploy_is_a_copy_of_the_student_without_heads():
    student = build_model(TINY_DEEPSET).train()
    method = built(options(student_tap="rho"), per_jet(2, 16), {"a": per_jet(2, 4), "b": per_jet(2, 4)})
    deployed = method.deploy(student)
    assert deployed is not student and not deployed.training and student.training
    state, ref = deployed.state_dict(), student.state_dict()
    assert state.keys() == ref.keys()
    assert all(torch.equal(state[k], ref[k]) for k in ref)
    assert method.deploy_spec(TINY_DEEPSET, deployed) == TINY_DEEPSET


def test_config_errors_name_the_key():
    with pytest.raises(InputError, match="distill.curriculum.phase_epochs: 1 phase lengths for 2 teacher taps"):
        build_method(DistillConfig(method="curriculum", curriculum=options(phase_epochs=[1.0])))
    with pytest.raises(InputError, match="distill.curriculum.phase_epochs: expected positive"):
        CurriculumExtraction(options(phase_epochs=[1.0, 0.0]), 1.0)
    with pytest.raises(InputError, match="distill.curriculum.teacher_taps"):
        CurriculumExtraction(options(teacher_taps=[], phase_epochs=[]), 1.0)
    with pytest.raises(InputError, match="distill.curriculum.student_tap"):
        CurriculumExtraction(options(student_tap=""), 1.0)
    with pytest.raises(InputError, match=r"distill\.curriculum\.dim: must be >= 1, got 0"):
        CurriculumExtraction(options(dim=0), 1.0)
    with pytest.raises(InputError, match="distill.curriculum.alpha"):
        CurriculumExtraction(options(alpha=1.5), 1.0)
    with pytest.raises(InputError, match="no epoch is left for the final KD phase"):
        schedule(options(), 1.5)
    method = build_method(DistillConfig(method="curriculum", temperature=4.0, curriculum=options()))
    assert isinstance(method, CurriculumExtraction) and method.needs_teacher and method.temperature == 4.0
    assert method.student_taps == ("s",) and method.teacher_taps == ("a", "b")


MLP = {"name": "mlp", "n_constituents": 8, "hidden": [32, 32]}


PHASES = ["extract:LGEBs.0", "extract:LGEBs.1", "extract:graph_dec.1", "kd"]


def curriculum_job(cache, lorentznet_teacher, run, model, student_tap, teacher_taps, phase_epochs):
    curriculum = {"teacher_taps": teacher_taps, "student_tap": student_tap, "dim": 6, "phase_epochs": phase_epochs}
    return load_job(data=job_dict(cache, run, model=model, train={"epochs": int(sum(phase_epochs)) + 1},
                                  distill={"method": "curriculum", "teacher": str(lorentznet_teacher),
                                           "temperature": 2.0, "curriculum": curriculum}))


@pytest.mark.parametrize("model, student_tap, teacher_taps, phase_epochs, logged", [
    (TINY_DEEPSET, "phi", ["LGEBs.0", "LGEBs.1", "graph_dec.1"], [1, 1, 1], PHASES),
    # the phase logged for an epoch is the one of its last step (progress 0.875, 1.875, 2.875)
    (TINY_DEEPSET, "rho", ["LGEBs.0", "LGEBs.1", "graph_dec.1"], [0.5, 0.5, 1], PHASES[1:]),
    (MLP, "blocks", ["LGEBs.1", "graph_dec.1"], [1, 1], PHASES[1:]),
    (MLP, "blocks", ["graph_dec.0", "graph_dec.1"], [1, 1], ["extract:graph_dec.0", "extract:graph_dec.1", "kd"]),
], ids=["deepset-phi", "deepset-rho", "mlp-blocks", "mlp-per-jet"])
def test_trainer_runs_the_phases_and_best_pt_loads_the_student(cache, lorentznet_teacher, tmp_path, model,
                                                                student_tap, teacher_taps, phase_epochs, logged,
                                                                monkeypatch):
    run = tmp_path / "run"
    job = curriculum_job(cache, lorentznet_teacher, run, model, student_tap, teacher_taps, phase_epochs)
    live = teacher_taps[0] == "LGEBs.1"  # mlp-blocks: teacher outputs too big to cache, the teacher runs every step
    if live:
        monkeypatch.setattr("jetkd.train.loop.TEACHER_CACHE_BYTES", 0)
    trainer = Trainer(job, progress=False)
    assert (trainer.teacher_cache is None) == live
    summary = trainer.fit()

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in records] == logged
    assert all(("train_extract" in r) == (r["phase"] != "kd") for r in records)
    assert all(r["train_extract"] >= 0 for r in records if "train_extract" in r)
    assert summary["best_epoch"] == len(records)  # the only epoch of the KD phase

    ckpt = load_checkpoint(run / "best.pt")
    assert {k for k in ckpt["method"] if k.startswith("projection")} == {f"projection{i}" for i in range(len(teacher_taps))}
    assert ckpt["deployed"]["spec"] == model
    assert ckpt["deployed"]["model"].keys() == trainer.model.state_dict().keys()
    deployed = load_model(run)
    assert not deployed.training
    batch = next(iter(JetLoader(trainer.data.val, 32, shuffle=False)))
    trainer.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(deployed(batch.p4, batch.mask), trainer.model(batch.p4, batch.mask))


def test_resume_mid_phase_gives_the_same_weights(cache, lorentznet_teacher, tmp_path, monkeypatch):
    args = (TINY_DEEPSET, "phi", ["LGEBs.0", "graph_dec.1"], [1, 1])
    # killed after step 11: in the second extraction phase
    assert_exact_resume(lambda run: curriculum_job(cache, lorentznet_teacher, run, *args), tmp_path, 11, monkeypatch)
