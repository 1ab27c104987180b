"""CDD (capacity dynamic distillation on ResRep compactors): group lasso, identity compactors, gradient resetting,
neighbour scores on a hand-made bank, reset selection and the budget stop, exact deploy, and Trainer runs."""

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from jetkd.config import DistillConfig, load_job
from jetkd.data.loader import JetBatch
from jetkd.distill import StepOutputs, Tap, build_method
from jetkd.distill.cdd import CDD, group_lasso, neighbour_agreement, spec_widths, with_widths
from jetkd.distill.kd import kd_loss
from jetkd.distill.options import CDDOptions
from jetkd.errors import InputError
from jetkd.evaluate import count_flops, count_parameters, flops_per_jet
from jetkd.models import MLP, DeepSet, build_model
from jetkd.train.checkpoint import load_checkpoint, load_model
from jetkd.train.loop import Trainer

import helpers  # tests/helpers.py
from helpers import TINY_DEEPSET, assert_exact_resume, job_dict, scramble_cdd, toy_jets

TINY_MLP = {"name": "mlp", "n_constituents": 8, "hidden": [32, 32]}
SMALL_DEEPSET = {"name": "deepset", "phi_hidden": [8, 12, 6], "rho_hidden": [10, 7]}


def jets(n=48, seed=0):
    p4, n_particles, label = toy_jets(n, seed)
    mask = torch.arange(p4.shape[1])[None] < torch.as_tensor(n_particles)[:, None]
    return torch.as_tensor(p4), mask, torch.as_tensor(label)


def cdd_student(spec, c_teacher=5, **options):
    """(method, student at the training width) with the method set up on it, tapping the teacher's graph_dec.1."""
    return helpers.cdd_student(spec, teacher_tap="graph_dec.1", c_teacher=c_teacher, **options)


def test_group_lasso_by_hand():
    a = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    b = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [2.0, 0.0, 0.0]])  # rows: 5, 0 | 1, 2, 2
    assert group_lasso([a, b], 0.1).item() == pytest.approx(0.1 * (5 + 0 + 1 + 2 + 2))


def test_train_spec_widens_the_blocks_and_deploy_spec_names_them():
    method = CDD(CDDOptions(teacher_tap="graph_dec.1", width_factor=1.5))
    assert method.train_spec(TINY_MLP) == {**TINY_MLP, "hidden": [48, 48]}
    assert method.train_spec(SMALL_DEEPSET) == {**SMALL_DEEPSET, "phi_hidden": [12, 18, 6], "rho_hidden": [15, 10]}
    assert method.train_spec({"name": "mlp"})["hidden"] == [768, 768]  # constructor defaults (512, 512)
    assert spec_widths(SMALL_DEEPSET) == {"phi.blocks.0": 8, "phi.blocks.1": 12, "rho.blocks.0": 10, "rho.blocks.1": 7}
    assert with_widths(TINY_DEEPSET, {"phi.blocks.0": 3, "rho.blocks.0": 4}) == {**TINY_DEEPSET, "phi_hidden": [3, 16], "rho_hidden": [4]}
    with pytest.raises(InputError, match="mlp or deepset"):
        method.train_spec({"name": "lorentznet"})
    with pytest.raises(InputError, match="teacher_tap"):
        CDD(CDDOptions())
    with pytest.raises(InputError, match="budget"):
        CDD(CDDOptions(teacher_tap="graph_dec.1", budget="latency"))
    assert isinstance(build_method(DistillConfig(method="cdd", cdd=CDDOptions(teacher_tap="graph_dec.1"))), CDD)


@pytest.mark.parametrize("spec", [TINY_MLP, SMALL_DEEPSET], ids=["mlp", "deepset"])
def test_identity_compactors_leave_logits_unchanged(spec):
    torch.manual_seed(0)
    method = CDD(CDDOptions(teacher_tap="graph_dec.1"))
    plain = build_model(method.train_spec(spec))
    student = copy.deepcopy(plain)
    method.setup(student, None, {}, {"graph_dec.1": Tap(torch.zeros(2, 5))})
    p4, mask, _ = jets()
    for train in (True, False):
        plain.train(train), student.train(train)
        assert torch.equal(student(p4, mask), plain(p4, mask))
    consumers = {"mlp": {"blocks.0": "blocks.1.fc", "blocks.1": "classifier"},
                 "deepset": {"phi.blocks.0": "phi.blocks.1.fc", "phi.blocks.1": "phi.out",
                             "rho.blocks.0": "rho.blocks.1.fc", "rho.blocks.1": "classifier"}}[spec["name"]]
    assert method.cost.consumer == consumers
    assert [c.weight.shape[0] for c in method.compactors] == list(spec_widths(method.trained_spec).values())


@pytest.mark.parametrize("spec", [TINY_MLP, SMALL_DEEPSET], ids=["mlp", "deepset"])
def test_cost_model_matches_parameter_and_flop_counters(spec):
    method, _ = cdd_student(spec)
    p4, mask, _ = jets(4)
    rng = np.random.default_rng(1)
    for _ in range(3):
        widths = {p: int(rng.integers(1, w + 1)) for p, w in spec_widths(method.trained_spec).items()}
        model = build_model(with_widths(method.trained_spec, widths))
        assert method.cost.params(widths) == count_parameters(model)
        n = int(mask[0].sum())
        assert method.cost.flops(widths, n) == count_flops(model, p4[:1, :n], mask[:1, :n])


def test_flops_budget_is_the_configured_students_flops_per_jet_over_the_training_jets():
    method, student = cdd_student(TINY_DEEPSET, budget="flops")
    p4, mask, label = jets(32)
    student.train()
    student(p4, mask)  # a training forward: counts the multiplicity
    assert method.mean_multiplicity() == pytest.approx(mask.sum().item() / 32)
    configured = build_model(TINY_DEEPSET)
    expected = flops_per_jet(configured, [JetBatch(p4, mask, label)], n_jets=32)
    assert method.budget() == pytest.approx(expected, rel=1e-12)


def step_outputs(method, student, p4, mask, label, c_teacher=5):
    torch.manual_seed(1)
    student.train()
    logits = student(p4, mask)
    teacher = torch.randn(len(label), c_teacher)
    out = StepOutputs(logits, label, torch.randn(len(label), 2), {}, {"graph_dec.1": Tap(teacher)})
    return out


def test_loss_is_ce_plus_kd_and_reports_the_lasso():
    method, student = cdd_student(TINY_MLP, lasso=0.01, kd_weight=0.5)
    p4, mask, label = jets(16)
    out = step_outputs(method, student, p4, mask, label)
    loss, parts = method.loss(out)
    expected = F.cross_entropy(out.logits, label) + 0.5 * kd_loss(out.logits, out.teacher_logits, 2.0)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert parts["lasso"] == pytest.approx(0.01 * sum(c.weight.shape[0] for c in method.compactors), rel=1e-6)  # I: rows of norm 1
    assert parts["cost_over_budget"] == pytest.approx(count_parameters(student) / count_parameters(build_model(TINY_MLP)))
    assert int(method.bank_count) == 16 and int(method.bank_next) == 16  # the batch went into the bank


def test_gradient_surgery_keeps_task_plus_lasso_on_kept_rows_and_nothing_on_reset_rows():
    lasso = 0.05
    method, student = cdd_student(TINY_MLP, lasso=lasso)
    p4, mask, label = jets(16)
    c = method.compactors[0]
    with torch.no_grad():
        c.weight.add_(0.1 * torch.randn_like(c.weight))
        c.reset[[2, 5]] = 0
        c.pruned[7], c.weight[7] = True, 0
    loss, _ = method.loss(step_outputs(method, student, p4, mask, label))
    loss.backward()
    task = c.weight.grad.clone()
    q = c.weight.detach()
    penalty = lasso * q / q.norm(dim=1, keepdim=True)
    method.after_backward()
    g = c.weight.grad
    keep = [i for i in range(g.shape[0]) if i not in (2, 5, 7)]
    torch.testing.assert_close(g[keep], task[keep] + penalty[keep])
    assert task[[2, 5]].abs().sum() > 0 and torch.equal(g[[2, 5, 7]], torch.zeros_like(g[[2, 5, 7]]))
    # Fine-tuning: the plain task gradient, pruned rows still frozen.
    method.finetuning.fill_(True)
    c.weight.grad = task.clone()
    method.after_backward()
    torch.testing.assert_close(c.weight.grad[keep + [2, 5]], task[keep + [2, 5]], rtol=0, atol=0)
    assert torch.equal(c.weight.grad[7], torch.zeros_like(g[7]))


def test_reset_rows_are_forgotten_by_the_proximal_step_and_then_pruned():
    """After each step a reset row's norm falls by eta = lr * compactor_lr_scale, direction kept, down to exactly
    0 (then pruned); kept rows are left to the optimiser."""
    method, _ = cdd_student(TINY_MLP, start_epochs=10.0, compactor_lr_scale=10.0)
    c = method.compactors[0]
    with torch.no_grad():
        c.weight.mul_(0.5)  # rows of norm 0.5; the threshold is relative to the largest
        c.weight[0] *= 2.0
        c.reset[[2, 5]] = 0
        c.weight[5] *= 0.01  # norm 0.005: below one step
    before = c.weight.clone()
    method.set_progress(0.0, lr=1e-2)  # eta = 0.1
    method.after_step()
    torch.testing.assert_close(c.weight[2], before[2] * (0.4 / 0.5))
    assert torch.equal(c.weight[5], torch.zeros_like(c.weight[5])) and bool(c.pruned[5]) and not bool(c.pruned[2])
    keep = [i for i in range(c.weight.shape[0]) if i not in (2, 5)]
    assert torch.equal(c.weight[keep], before[keep])
    for _ in range(4):
        method.after_step()
    assert bool(c.pruned[2]) and torch.equal(c.weight[2], torch.zeros_like(c.weight[2]))
    assert int(c.pruned.sum()) == 2


def test_neighbour_agreement_by_hand():
    bank = torch.tensor([[1.0, 2.0], [-1.0, 2.0], [1.0, 2.0], [-1.0, 2.0]])  # channel 0: mean 0, std 1; 1: constant
    acts = torch.tensor([[1.0, 5.0], [-3.0, 0.0]])
    neighbours = torch.tensor([[0, 2], [0, 1]])
    expected = torch.tensor([[1.0 * (1 + 1) / 2, 0.0], [-3.0 * (1 - 1) / 2, 0.0]])
    torch.testing.assert_close(neighbour_agreement(acts, bank, neighbours), expected)


def test_neighbour_search_in_a_hand_made_bank():
    method, _ = cdd_student(TINY_MLP, c_teacher=3, neighbours=2, bank_size=6, start_epochs=0.0)
    e = torch.eye(3)
    with torch.no_grad():  # four jets in the bank: teacher directions x, x + y/2, y, z
        method.teacher_bank[:4] = F.normalize(torch.stack([e[0], e[0] + 0.5 * e[1], e[1], e[2]]), dim=1)
        method.bank_count.fill_(4), method.bank_next.fill_(4)
        for c in method.compactors:  # every channel: 1, 1, -1, -1 (mean 0, std 1)
            c.bank[:4] = torch.tensor([1.0, 1.0, -1.0, -1.0])[:, None]
    # Jet 0 points along x: neighbours bank 0 and 1 (activations 1, 1); jet 1 between y and z: bank 2 and 3 (-1, -1).
    query_teacher = torch.tensor([[2.0, 0.1, 0.0], [0.0, 1.0, 0.9]])
    acts = {i: torch.tensor([[2.0], [-1.0]]).expand(2, c.bank.shape[1]).clone() for i, c in enumerate(method.compactors)}
    method._remember(query_teacher, acts, score=True)
    # Scores: jet 0: 2 * (1 + 1) / 2 = 2; jet 1: -1 * (-1 - 1) / 2 = 1; summed over the batch: 3 for every channel.
    for i, c in enumerate(method.compactors):
        torch.testing.assert_close(c.score_sum, torch.full_like(c.score_sum, 3.0))
        torch.testing.assert_close(c.bank[4:6], acts[i])  # the batch is enqueued after the search
    assert method.score_count.item() == 2 and int(method.bank_count) == 6 and int(method.bank_next) == 0
    torch.testing.assert_close(method.teacher_bank[4:6], F.normalize(query_teacher, dim=1))
    # A full bank: the next batch overwrites the oldest jets, and every jet now has its neighbours among six.
    method._remember(query_teacher[:1], {i: a[:1] for i, a in acts.items()}, score=False)
    assert int(method.bank_count) == 6 and int(method.bank_next) == 1 and method.score_count.item() == 2
    torch.testing.assert_close(method.teacher_bank[0], F.normalize(query_teacher[0], dim=0))


def test_selection_resets_the_lowest_scores_and_stops_once_the_kept_channels_fit():
    method, _ = cdd_student(TINY_MLP, reset_channels=3)
    c0, c1 = method.compactors
    c0.score_sum.copy_(torch.linspace(1, 2, 64, dtype=torch.float64))
    c1.score_sum.copy_(torch.linspace(0, 3, 64, dtype=torch.float64))
    c1.score_sum[10] = -5
    method.score_count.fill_(1.0)
    method._select()
    assert torch.nonzero(c1.reset == 0).flatten().tolist() == [0, 1, 10] and bool(c0.reset.all())
    assert method.score_count.item() == 0 and c0.score_sum.abs().sum() == 0  # fresh scores for the next interval
    # When only a few kept channels are over budget, fewer are reset.
    widths = method.widths("kept")
    budget = method.cost.params({**widths, "blocks.1": widths["blocks.1"] - 1})
    method.options = CDDOptions(**{**method.options.__dict__, "budget_value": float(budget), "reset_channels": 50})
    c0.score_sum.fill_(10.0), c1.score_sum.fill_(0.0)
    method.score_count.fill_(1.0)
    method._select()
    assert int((c1.reset == 0).sum()) == 4 and bool(c0.reset.all())
    assert method.fits(method.widths("kept")) and not method.fits(method.widths("alive"))


def test_selection_keeps_every_block_at_its_floor():
    """Scores of one block far below the others' do not empty it: it stops at min_width of its configured width
    and the selection goes on in the other block."""
    method, _ = cdd_student(TINY_MLP, reset_channels=60, min_width=0.25)
    method.options = CDDOptions(**{**method.options.__dict__, "budget_value": 1.0})  # 1 parameter: never fits
    assert method.min_widths == {"blocks.0": 8, "blocks.1": 8}  # 0.25 x 32
    c0, c1 = method.compactors
    c0.score_sum.fill_(-10.0), c1.score_sum.copy_(torch.linspace(0, 1, 64, dtype=torch.float64))
    method.score_count.fill_(1.0)
    method._select()
    assert method.widths("kept") == {"blocks.0": 8, "blocks.1": 60}
    assert torch.nonzero(c1.reset == 0).flatten().tolist() == [0, 1, 2, 3]  # the rest, lowest scores first


def test_a_floor_over_the_budget_is_an_input_error():
    with pytest.raises(InputError, match="distill.cdd.min_width"):
        cdd_student(TINY_MLP, min_width=1.0, budget_value=100.0)
    with pytest.raises(InputError, match="distill.cdd.min_width"):
        CDD(CDDOptions(teacher_tap="graph_dec.1", min_width=1.5))



def test_option_bounds_name_the_key():
    with pytest.raises(InputError, match=r"distill\.cdd\.reset_every: must be >= 1, got 0"):
        CDD(CDDOptions(teacher_tap="graph_dec.1", reset_every=0))
    with pytest.raises(InputError, match=r"distill\.cdd\.lasso: must be >= 0, got -0\.1"):
        CDD(CDDOptions(teacher_tap="graph_dec.1", lasso=-0.1))


def test_budget_stop_switches_to_finetuning():
    method, student = cdd_student(TINY_MLP, start_epochs=0.0, reset_every=1)
    assert method.phase() == "shrink" and not method.selectable()
    with torch.no_grad():  # rows reset and driven to zero, but not yet enough for the budget
        for c in method.compactors:
            c.reset[:20] = 0
            c.weight[:20] *= 1e-4
    method.after_step()
    assert [int(c.pruned.sum()) for c in method.compactors] == [20, 20]
    assert method.phase() == "shrink" and not method.selectable()
    assert all(torch.equal(c.weight[:20], torch.zeros_like(c.weight[:20])) for c in method.compactors)
    with torch.no_grad():
        for c in method.compactors:
            c.reset[:40] = 0
            c.weight[:40] = 0
    method.after_step()
    assert method.phase() == "finetune" and method.selectable()
    assert method.cost.params(method.widths()) <= count_parameters(build_model(TINY_MLP))
    for c in method.compactors:  # the remaining channels train freely again; pruned ones stay reset
        assert torch.equal(c.reset, (~c.pruned).float()) and int(c.pruned.sum()) == 40
    p4, mask, label = jets(16)
    _, parts = method.loss(step_outputs(method, student, p4, mask, label))
    assert parts["lasso"] == 0.0


@pytest.mark.parametrize("spec", [TINY_MLP, SMALL_DEEPSET], ids=["mlp", "deepset"])
def test_deploy_is_the_plain_pruned_student_and_exact(spec):
    method, student = cdd_student(spec)
    scramble_cdd(method, student, torch.nn.BatchNorm1d)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    deployed = method.deploy(student)
    assert type(deployed) is type(build_model(spec)) and not deployed.training
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in deployed.modules())
    alive = {p: int(c.alive(method.options.threshold).sum()) for p, c in zip(method.paths, method.compactors)}
    assert all(alive[p] < c.weight.shape[0] for p, c in zip(method.paths, method.compactors))
    deploy_spec = method.deploy_spec(dict(spec), deployed)
    assert spec_widths(deploy_spec) == alive and {k: v for k, v in deploy_spec.items() if k not in spec_widths_keys(spec)} == {
        k: v for k, v in spec.items() if k not in spec_widths_keys(spec)}
    rebuilt = build_model(deploy_spec)
    rebuilt.load_state_dict(deployed.state_dict())
    assert count_parameters(rebuilt) == method.cost.params(alive)
    # The masked trained model: rows below the threshold zeroed, as the training's latch does.
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())  # deploy left the student alone
    with torch.no_grad():
        for c in method.compactors:
            c.weight[~c.alive(method.options.threshold)] = 0
    p4, mask, _ = jets()
    student.eval(), rebuilt.eval()
    torch.testing.assert_close(rebuilt(p4, mask), student(p4, mask), rtol=0, atol=1e-5)
    summary = method.deploy_summary(student, deployed)
    assert summary["start_parameters"] == count_parameters(student)
    assert summary["deployed_parameters"] == count_parameters(deployed) < summary["start_parameters"]
    assert summary["parameter_reduction"] == pytest.approx(count_parameters(student) / count_parameters(deployed))
    assert summary["deployed_widths"] == alive


def spec_widths_keys(spec):
    return {"mlp": {"hidden"}, "deepset": {"phi_hidden", "rho_hidden"}}[spec["name"]]


# ----------------------------------------------------------------------------- Trainer runs

CDD_FAST = {"teacher_tap": "graph_dec.1", "width_factor": 1.5, "lasso": 0.1, "threshold": 0.05, "start_epochs": 0.25,
            "reset_every": 1, "reset_channels": 8, "neighbours": 4, "bank_size": 128}


def cdd_job(cache, teacher, run_dir, model, epochs=6, **extra):
    return load_job(data=job_dict(cache, run_dir, model=model, train={"epochs": epochs, "batch_size": 16, "seed": 3},
                                  optim={"lr": 0.05}, distill={"method": "cdd", "teacher": str(teacher), "cdd": CDD_FAST},
                                  **extra))


@pytest.mark.parametrize("spec", [TINY_MLP, TINY_DEEPSET], ids=["mlp", "deepset"])
def test_trainer_shrinks_to_budget_and_best_pt_is_the_smaller_plain_student(cache, lorentznet_teacher, tmp_path, spec):
    run = tmp_path / "run"
    trainer = Trainer(cdd_job(cache, lorentznet_teacher, run, spec), progress=False)
    trainer.fit()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    phases = [r["phase"] for r in records]
    assert phases[0] == "shrink" and phases[-1] == "finetune" and phases == sorted(phases, key=["shrink", "finetune"].index)
    assert records[-1]["train_lasso"] == 0.0 and records[-1]["train_cost_over_budget"] <= 1.0
    ckpt = load_checkpoint(run / "best.pt")
    assert records[ckpt["best"]["epoch"] - 1]["phase"] == "finetune"

    model = load_model(run)
    budget = count_parameters(build_model(spec))
    assert type(model) is {"mlp": MLP, "deepset": DeepSet}[spec["name"]]
    assert count_parameters(model) <= budget
    widths = spec_widths(ckpt["deployed"]["spec"])
    assert all(widths[p] <= w for p, w in spec_widths(trainer.method.trained_spec).items())
    assert ckpt["deployed"]["summary"]["deployed_parameters"] == count_parameters(model)

    # The trained student of best.pt (compactors from its method state) computes the deployed model's logits.
    method = CDD(CDDOptions(**CDD_FAST))
    student = build_model(method.train_spec(spec))
    method.setup(student, None, {}, {"graph_dec.1": Tap(torch.zeros(1, ckpt["method"]["teacher_bank"].shape[1]))})
    student.load_state_dict(ckpt["model"])
    method.load_state_dict(ckpt["method"])
    p4, mask, _ = jets()
    torch.testing.assert_close(model(p4, mask), student.eval()(p4, mask), rtol=0, atol=1e-5)


def test_resume_mid_shrink_gives_the_same_weights_and_masks(cache, lorentznet_teacher, tmp_path, monkeypatch):
    """Killed at step 20, mid-way through epoch 2 while shrinking."""
    full = assert_exact_resume(lambda run: cdd_job(cache, lorentznet_teacher, run, TINY_DEEPSET, epochs=3),
                               tmp_path, 20, monkeypatch)
    assert int((full["method"]["compactors.0.reset"] == 0).sum()) > 0  # the resets happened


def test_compactors_get_their_own_learning_rate(cache, lorentznet_teacher, tmp_path):
    job = cdd_job(cache, lorentznet_teacher, tmp_path / "lr", TINY_MLP, epochs=1)
    job.distill.cdd.compactor_lr_scale = 10.0
    trainer = Trainer(job, progress=False)
    base, compactors = trainer.optimizer.param_groups
    assert compactors["lr"] == pytest.approx(10 * base["lr"])
    assert {id(p) for p in compactors["params"]} == {id(c.weight) for c in trainer.method.compactors}
    assert not {id(p) for p in base["params"]} & {id(p) for p in compactors["params"]}
