"""Taps (forward hooks on module paths), the regression heads built on them, and how the trainer drives a Method."""

import json

import pytest
import torch

from helpers import job_dict, toy_jets
from jetkd.config import load_job
from jetkd.data.loader import JetBatch
from jetkd.distill import Method, StepOutputs, Tap, TapRecorder
from jetkd.distill.heads import half_squared_error, regressor_for
from jetkd.errors import InputError
from jetkd.models import MLP, DeepSet, LorentzNet
from jetkd.train.checkpoint import load_checkpoint, load_model
from jetkd.train.loop import Trainer


@pytest.fixture
def batch():
    p4, n, label = toy_jets(5, seed=4, max_particles=12)
    return JetBatch.from_arrays(p4, n, label)


def test_per_constituent_taps_carry_the_mask_and_teacher_beams_are_dropped(batch):
    student = DeepSet(phi_hidden=(8, 8), rho_hidden=(8,)).eval()
    teacher = LorentzNet(n_hidden=6, n_layers=2).eval()
    with TapRecorder(student, ["phi", "phi.blocks.0", "rho"]) as rec, torch.no_grad():
        student(batch.p4, batch.mask)
    assert rec.taps["phi"].value.shape == (5, batch.mask.shape[1], 8)
    assert torch.equal(rec.taps["phi"].mask, batch.mask)
    assert torch.equal(rec.taps["phi.blocks.0"].mask, batch.mask)
    assert rec.taps["rho"].mask is None and rec.taps["rho"].value.shape == (5, 8)
    with TapRecorder(teacher, ["LGEBs.0", "graph_dec.1"]) as trec, torch.no_grad():
        teacher(batch.p4, batch.mask)
    node = trec.taps["LGEBs.0"]
    assert node.value.shape == (5, batch.mask.shape[1], 6)  # N constituents: the two beams dropped
    assert torch.equal(node.mask, batch.mask)
    assert not trec.taps["graph_dec.1"].per_constituent


def test_recorder_is_silent_outside_its_block_and_removable(batch):
    model = MLP(n_constituents=8, hidden=(16,)).eval()
    rec = TapRecorder(model, ["blocks.0"])
    with torch.no_grad():
        model(batch.p4, batch.mask)
    assert rec.taps == {}
    with rec, torch.no_grad():
        model(batch.p4, batch.mask)
    assert set(rec.taps) == {"blocks.0"}
    rec.remove()
    assert not model.blocks[0]._forward_hooks


def test_wrong_tap_path_lists_available_paths():
    with pytest.raises(InputError, match=r"'blocks\.7': no such module in MLP; available: features, blocks, blocks\.0"):
        TapRecorder(MLP(n_constituents=4, hidden=(8,)), ["blocks.7"], "distill.fitnets.guided")


def test_pooled_tap_and_half_squared_error_by_hand():
    value = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[True, True, False]])
    tap = Tap(value, mask)
    assert torch.equal(tap.pooled(), torch.tensor([[2.0, 3.0]]))
    pred = Tap(torch.zeros(1, 3, 2), mask)
    # real constituents: 0.5 * (1 + 4) and 0.5 * (9 + 16), averaged over the 2 real ones; padding ignored
    assert half_squared_error(pred, tap).item() == pytest.approx((2.5 + 12.5) / 2)
    # a per-jet prediction against a per-constituent target: the target is pooled first
    assert half_squared_error(Tap(torch.zeros(1, 2)), tap).item() == pytest.approx(0.5 * (4 + 9))
    assert regressor_for(Tap(torch.zeros(1, 3, 5), mask), tap).per_constituent
    assert not regressor_for(Tap(torch.zeros(1, 5)), tap).per_constituent


class ProbeMethod(Method):
    """A method that regresses a teacher tap from a student tap, and logs what the trainer hands it."""

    needs_teacher = True

    def __init__(self):
        super().__init__()
        self.student_taps, self.teacher_taps = ("phi",), ("graph_dec.1",)
        self.seen_progress, self.shapes = [], {}

    def setup(self, student, teacher, taps, teacher_taps):
        self.shapes = {"student": tuple(taps["phi"].value.shape), "teacher": tuple(teacher_taps["graph_dec.1"].value.shape)}
        self.head = regressor_for(taps["phi"], teacher_taps["graph_dec.1"])

    def selectable(self):
        return self.progress >= 1.0

    def loss(self, out: StepOutputs):
        self.seen_progress.append(self.progress)
        hint = half_squared_error(self.head(out.taps["phi"]), out.teacher_taps["graph_dec.1"])
        return hint, {"hint": hint.item()}


def test_trainer_drives_a_method_with_taps(cache, tmp_path, lorentznet_teacher, monkeypatch):
    probe = ProbeMethod()
    monkeypatch.setattr("jetkd.train.loop.build_method", lambda cfg: probe)
    job = load_job(data=job_dict(cache, tmp_path / "probe", distill={"method": "kd", "teacher": str(lorentznet_teacher)}))
    trainer = Trainer(job, progress=False)
    assert probe.shapes["student"][2] == 16 and probe.shapes["teacher"][1] == 8
    assert trainer.teacher_cache is not None and trainer.teacher_cache["graph_dec.1"].shape == (256, 8)  # per jet: cached
    head_before = probe.head.linear.weight.detach().clone()
    trainer.fit()
    assert not torch.equal(head_before, probe.head.linear.weight)  # the method's head trained with the student
    assert probe.seen_progress == [e + s / 8 for e in range(2) for s in range(8)]  # 256 jets / batch 32 = 8 steps
    records = [json.loads(line) for line in (tmp_path / "probe" / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in records] == ["train", "train"] and "train_hint" in records[0]
    assert load_checkpoint(tmp_path / "probe")["best"]["epoch"] == 2  # epoch 1 was not selectable
    deployed = load_model(tmp_path / "probe")
    assert type(deployed) is DeepSet and not any(k.startswith("head") for k in deployed.state_dict())


def test_per_constituent_teacher_taps_are_cached_and_equal_the_live_ones(cache, tmp_path, lorentznet_teacher):
    fitnets = {"method": "fitnets", "teacher": str(lorentznet_teacher), "fitnets": {"hint": "LGEBs.0", "guided": "phi"}}
    trainer = Trainer(load_job(data=job_dict(cache, tmp_path / "fit", distill=fitnets)), progress=False)
    assert trainer.teacher_cache["LGEBs.0"].shape == (256, 16, 8)  # every constituent slot of the cache
    batch = trainer._to_device(next(iter(trainer.loader)))
    live = trainer._teacher_outputs(batch)[1]["LGEBs.0"]
    cached = trainer._cached_tap("LGEBs.0", batch)
    assert torch.equal(cached.mask, live.mask) and cached.value.shape == live.value.shape
    real = live.mask[..., None]
    torch.testing.assert_close(cached.value * real, live.value * real, atol=1e-5, rtol=1e-5)


def test_feature_maps_of_image_models_are_spatial_taps_with_convolutional_regressors():
    from jetkd.distill.heads import half_squared_error, regressor_for
    from jetkd.images.models import IMAGE_MODELS

    student, teacher = IMAGE_MODELS["resnet8x4"](n_class=10), IMAGE_MODELS["wrn_16_2"](n_class=10)
    images = torch.randn(2, 3, 32, 32)
    taps = {}
    for name, model, path in (("s", student, "layer2"), ("t", teacher, "layer2"), ("t1", teacher, "layer1")):
        recorder = TapRecorder(model, [path])
        with recorder:
            model(images)
        taps[name] = recorder.taps[path]
    s, t, t1 = taps["s"], taps["t"], taps["t1"]
    assert s.spatial and s.mask is None and not s.per_constituent and s.dim == s.value.shape[1] == 128
    torch.testing.assert_close(s.pooled(), s.value.mean((2, 3)))
    reg = regressor_for(s, t)  # same 16x16 size: a 3x3 convolution with padding
    assert reg.mode == "map" and reg.conv.kernel_size == (3, 3) and reg(s).value.shape == t.value.shape
    big = regressor_for(t1, s)  # the student's map (32x32) larger than the target's (16x16): a valid convolution
    assert big.conv.kernel_size == (17, 17) and big(t1).value.shape == s.value.shape
    loss = half_squared_error(reg(s), t)
    expected = 0.5 * (t.value - reg(s).value).pow(2).sum(1).mean()
    torch.testing.assert_close(loss, expected)
