"""CDD on image ResNets (jetkd.distill.cdd_conv): per-block widths in the models, compactors on the residual
blocks' inner channels, the cost model against the counters, exact deploy on tiny ResNets with random weights and
BatchNorm statistics, the loss, bank and gradient rules on feature maps, and a short end-to-end shrink."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from jetkd.distill import StepOutputs, Tap, TapRecorder
from jetkd.distill.cdd import CDD, spec_widths, with_widths
from jetkd.distill.options import CDDOptions
from jetkd.errors import InputError
from jetkd.evaluate import count_parameters
from jetkd.images.models import BasicBlock, CifarResNet, DigitsResNet, ReIDResNet
from jetkd.models import build_model

import helpers  # tests/helpers.py
from helpers import scramble_cdd

TINY_RESNET = {"name": "cifar_resnet", "depth": 14, "widths": [4, 8, 8, 16], "n_class": 5}  # identity + projecting shortcuts
DIGITS = {"name": "digits_resnet"}
TINY_REID = {"name": "reid_resnet18", "layers": [1, 1, 1, 1], "widths": [8, 8, 16, 16], "stem_width": 8, "n_class": 7}
SPECS = [TINY_RESNET, DIGITS, TINY_REID]
IDS = ["cifar_resnet", "digits_resnet", "reid_resnet18"]


def images(model, n=6, size=None, seed=0):
    c, h, w = model.input_size
    h, w = size or ((16, 8) if isinstance(model, ReIDResNet) else (min(h, 16), min(w, 16)))
    return torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(seed))


def flops(model, x):
    """FLOPs (multiply-add = 2) of one eval forward of ``x`` (B, C, H, W), per image."""
    was = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was)
    return counter.get_total_flops() / x.shape[0]


def cdd_student(spec, c_teacher=6, **options):
    """(method, student at the training width) with the method set up on it, tapping the teacher's pool."""
    return helpers.cdd_student(spec, teacher_tap="pool", c_teacher=c_teacher, **options)


# ----------------------------------------------------------------------------- models: per-block widths


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_block_widths_default_keeps_the_architecture(spec):
    torch.manual_seed(0)
    plain = build_model(spec)
    planes = [m.conv2.out_channels for m in plain.modules() if isinstance(m, BasicBlock)]
    torch.manual_seed(0)
    same = build_model({**spec, "block_widths": planes})
    assert count_parameters(same) == count_parameters(plain)
    assert all(torch.equal(a, b) for a, b in zip(same.state_dict().values(), plain.state_dict().values()))
    narrow = build_model({**spec, "block_widths": [max(1, p // 2 - 1) for p in planes]})
    blocks = [m for m in narrow.modules() if isinstance(m, BasicBlock)]
    assert [(b.conv1.out_channels, b.bn1.num_features, b.conv2.in_channels, b.conv2.out_channels) for b in blocks] == [
        (max(1, p // 2 - 1),) * 3 + (p,) for p in planes]
    x = images(narrow)
    assert narrow(x).shape == plain(x).shape


def test_published_counts_unchanged_and_bad_block_widths_rejected():
    assert count_parameters(build_model({"name": "resnet8x4"})) == 1_233_540
    assert count_parameters(build_model({"name": "resnet20"})) == 278_324
    assert count_parameters(DigitsResNet()) == 19_810
    with pytest.raises(ValueError, match="block_widths needs 9 positive ints"):
        CifarResNet(depth=20, block_widths=[4] * 8)
    with pytest.raises(ValueError, match="bottleneck"):
        ReIDResNet(block="bottleneck", layers=(1, 1, 1, 1), widths=(8, 8, 16, 16), stem_width=8, block_widths=[4] * 4)


# ----------------------------------------------------------------------------- specs and sites


def test_spec_widths_and_train_spec_for_image_resnets():
    assert spec_widths({"name": "resnet20"}) == {f"layer{k}.{i}": w for k, w in ((1, 16), (2, 32), (3, 64)) for i in range(3)}
    method = CDD(CDDOptions(teacher_tap="pool", width_factor=1.5))
    assert method.train_spec({"name": "resnet8x4"}) == {"name": "resnet8x4", "block_widths": [96, 192, 384]}
    assert method.train_spec(DIGITS) == {"name": "digits_resnet", "block_widths": [12, 24, 48]}
    assert spec_widths({"name": "resnet8x4", "block_widths": [5, 6, 7]}) == {"layer1.0": 5, "layer2.0": 6, "layer3.0": 7}
    assert with_widths(DIGITS, {"layer1.0": 3, "layer2.0": 2, "layer3.0": 1}) == {**DIGITS, "block_widths": [3, 2, 1]}
    with pytest.raises(InputError, match="mlp or deepset"):
        method.train_spec({"name": "wrn_16_2"})  # pre-activation blocks, no block_widths
    with pytest.raises(InputError, match="model.block_widths"):
        method.train_spec({"name": "reid_resnet", "layers": [1, 1, 1, 1], "widths": [8, 8, 16, 16], "stem_width": 8})
    with pytest.raises(InputError, match="model.block_widths"):
        with_widths(DIGITS, {"layer1.0": 3})


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_compactors_sit_on_the_inner_channels_and_start_as_identity(spec):
    torch.manual_seed(0)
    method = CDD(CDDOptions(teacher_tap="pool"))
    plain = build_model(method.train_spec(spec))
    student = copy.deepcopy(plain)
    method.setup(student, None, {}, {"pool": Tap(torch.zeros(2, 6))})
    blocks = {p: m for p, m in student.named_modules() if isinstance(m, BasicBlock)}
    assert method.paths == list(blocks)
    assert method.cost.consumer == {p: f"{p}.conv2" for p in blocks}
    assert [c.weight.shape[0] for c in method.compactors] == [b.conv1.out_channels for b in blocks.values()]
    x = images(student)
    for train in (True, False):
        plain.train(train), student.train(train)
        torch.testing.assert_close(student(x), plain(x), rtol=0, atol=1e-6)
    # The compactor mixes channels at every pixel: y[:, d] = sum_c z[:, c] Q[c, d].
    q, z = torch.randn(5, 5), torch.randn(2, 5, 3, 4)
    c = method.compactors[0].__class__(5, 1)
    with torch.no_grad():
        c.weight.copy_(q)
    torch.testing.assert_close(c(z), torch.einsum("bchw,cd->bdhw", z, q))


# ----------------------------------------------------------------------------- cost


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_cost_model_matches_parameter_and_flop_counters(spec):
    method, student = cdd_student(spec)
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        widths = {p: int(torch.randint(1, w + 1, (), generator=gen)) for p, w in spec_widths(method.trained_spec).items()}
        model = build_model(with_widths(method.trained_spec, widths))
        assert method.cost.params(widths) == count_parameters(model)
        for size in ((8, 8), (12, 10), tuple(student.input_size[1:])):
            x = torch.zeros(1, student.input_size[0], *size)
            assert method.cost.flops(widths, size) == flops(model, x)


def test_flops_budget_is_per_image_at_the_training_size():
    method, student = cdd_student(DIGITS, budget="flops")
    assert method.family.point(method) == (8, 8)  # nominal input_size before any training forward
    student.train()
    student(torch.randn(4, 1, 12, 12))  # a training forward records the image size
    assert tuple(method.image_size.tolist()) == (12, 12)
    assert method.budget() == flops(build_model(DIGITS), torch.zeros(1, 1, 12, 12))
    student.eval()
    student(torch.randn(4, 1, 16, 16))  # evaluation does not
    assert tuple(method.image_size.tolist()) == (12, 12)


# ----------------------------------------------------------------------------- deploy


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_deploy_is_the_plain_narrower_resnet_and_exact(spec):
    method, student = cdd_student(spec)
    scramble_cdd(method, student, torch.nn.BatchNorm2d)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    deployed = method.deploy(student)
    assert type(deployed) is type(build_model(spec)) and not deployed.training
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in deployed.modules())
    alive = {p: int(c.alive(method.options.threshold).sum()) for p, c in zip(method.paths, method.compactors)}
    assert all(alive[p] < c.weight.shape[0] for p, c in zip(method.paths, method.compactors))
    deploy_spec = method.deploy_spec(dict(spec), deployed)
    assert deploy_spec == {**spec, "block_widths": list(alive.values())}
    rebuilt = build_model(deploy_spec)
    rebuilt.load_state_dict(deployed.state_dict())
    assert count_parameters(rebuilt) == method.cost.params(alive) < count_parameters(student)
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())  # deploy left the student alone
    with torch.no_grad():  # the masked trained model: rows below the threshold zeroed, as training's latch does
        for c in method.compactors:
            c.weight[~c.alive(method.options.threshold)] = 0
    x = images(student, n=8, seed=3)
    student.eval(), rebuilt.eval()
    torch.testing.assert_close(rebuilt(x), student(x), rtol=0, atol=1e-5)
    summary = method.deploy_summary(student, deployed)
    size = tuple(student.input_size[1:])
    one = torch.zeros(1, student.input_size[0], *size)
    assert summary["start_widths"] == spec_widths(method.trained_spec) and summary["deployed_widths"] == alive
    assert summary["start_parameters"] == count_parameters(student)
    assert summary["deployed_parameters"] == count_parameters(deployed)
    assert summary["image_size"] == list(size)
    assert summary["start_flops_per_image"] == flops(build_model(method.trained_spec), one)
    assert summary["deployed_flops_per_image"] == flops(rebuilt, one) < summary["start_flops_per_image"]
    assert summary["deployed_macs_per_image"] == summary["deployed_flops_per_image"] / 2
    assert summary["flops_reduction"] == pytest.approx(summary["start_flops_per_image"] / summary["deployed_flops_per_image"])


# ----------------------------------------------------------------------------- loss, bank, gradient rules


def test_loss_bank_and_gradient_surgery_on_feature_maps():
    lasso = 0.05
    method, student = cdd_student(DIGITS, lasso=lasso, kd_weight=0.5, bank_size=16)
    x, label = images(student, n=6), torch.arange(6) % 10
    seen = {}  # relu1's output before the compactor: ReLU of bn1's output
    handle = student.get_submodule("layer2.0.bn1").register_forward_hook(lambda m, a, o: seen.__setitem__("z", F.relu(o.detach())))
    c = method.compactors[1]
    with torch.no_grad():
        c.weight.add_(0.1 * torch.randn_like(c.weight))
        c.reset[[2, 5]] = 0
        c.pruned[7], c.weight[7] = True, 0
    student.train()
    logits = student(x)
    handle.remove()
    out = StepOutputs(logits, label, torch.randn(6, 10), {}, {"pool": Tap(torch.randn(6, 6))})
    loss, parts = method.loss(out)
    torch.testing.assert_close(c.bank[:6], seen["z"].mean((2, 3)))  # per image: relu1's output averaged over pixels
    assert int(method.bank_count) == 6
    assert parts["lasso"] == pytest.approx(lasso * sum(float(q.weight.detach().norm(dim=1).sum()) for q in method.compactors), rel=1e-6)
    loss.backward()
    task = c.weight.grad.clone()
    q = c.weight.detach()
    method.after_backward()
    keep = [i for i in range(q.shape[0]) if i not in (2, 5, 7)]
    torch.testing.assert_close(c.weight.grad[keep], task[keep] + lasso * q[keep] / q[keep].norm(dim=1, keepdim=True))
    assert task[[2, 5]].abs().sum() > 0 and c.weight.grad[[2, 5, 7]].abs().sum() == 0


# ----------------------------------------------------------------------------- end to end


def test_short_run_prunes_channels_and_deploys_the_masked_model():
    """A teacher and a 2x wide student on random 8x8 images through train_spec / setup / loss / after_backward /
    after_step / deploy: channels are reset, forgotten and pruned until the student fits the configured one's
    parameters; the deployed ResNet is smaller and computes the masked trained student's logits."""
    torch.manual_seed(0)
    teacher = build_model({"name": "digits_resnet", "widths": [8, 16, 16, 32]}).eval()
    method = CDD(CDDOptions(teacher_tap="pool", width_factor=2.0, lasso=0.1, threshold=0.05, start_epochs=0.0,
                            reset_every=1, reset_channels=4, neighbours=4, bank_size=64, compactor_lr_scale=10.0),
                 temperature=2.0)
    student = build_model(method.train_spec(DIGITS))
    recorder = TapRecorder(teacher, method.teacher_taps)
    gen = torch.Generator().manual_seed(0)
    data = [(torch.randn(16, 1, 8, 8, generator=gen), torch.randint(0, 10, (16,), generator=gen)) for _ in range(4)]
    with torch.no_grad(), recorder:  # the trainer's sample batch
        teacher(data[0][0]), student.eval()(data[0][0])
    method.setup(student, teacher, {}, recorder.taps)
    special = method.param_groups()
    taken = {id(p) for g in special for p in g["params"]}
    rest = [p for p in (*student.parameters(), *method.parameters()) if id(p) not in taken]
    lr = 0.05
    optimizer = torch.optim.AdamW([{"params": rest}] + [{"params": g["params"], "lr": lr * g["lr_scale"]} for g in special], lr=lr)
    budget = count_parameters(build_model(DIGITS))
    assert count_parameters(student) > budget
    phases = []
    for step in range(60):
        x, label = data[step % len(data)]
        method.set_progress(step / len(data), lr)
        student.train()
        with torch.no_grad(), recorder:
            teacher_logits = teacher(x)
        loss, _ = method.loss(StepOutputs(student(x), label, teacher_logits, {}, dict(recorder.taps)))
        optimizer.zero_grad()
        loss.backward()
        method.after_backward()
        optimizer.step()
        method.after_step()
        phases.append(method.phase())
    assert phases[0] == "shrink" and phases[-1] == "finetune" and method.selectable()
    pruned = [int(c.pruned.sum()) for c in method.compactors]
    assert sum(pruned) > 0 and all(torch.equal(c.weight[c.pruned], torch.zeros_like(c.weight[c.pruned])) for c in method.compactors)
    deployed = method.deploy(student)
    spec = method.deploy_spec(dict(DIGITS), deployed)
    rebuilt = build_model(spec)
    rebuilt.load_state_dict(deployed.state_dict())
    rebuilt.eval()
    assert spec["block_widths"] == [c.weight.shape[0] - p for c, p in zip(method.compactors, pruned)]
    assert count_parameters(rebuilt) <= budget < count_parameters(student)
    x = torch.randn(32, 1, 8, 8, generator=gen)
    student.eval()
    torch.testing.assert_close(rebuilt(x), student(x), rtol=0, atol=1e-5)  # pruned rows are exactly zero already
    summary = method.deploy_summary(student, deployed)
    assert summary["deployed_parameters"] == count_parameters(rebuilt) and summary["parameter_reduction"] > 1
    assert summary["flops_reduction"] > 1 and summary["image_size"] == [8, 8]
