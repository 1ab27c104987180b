"""Image benchmark models (jetkd.images.models): published parameter counts, shapes, tap paths, block structure,
the BNNeck embedding, the batch-hard triplet loss, reference-checkpoint key renaming, digits models that train."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from jetkd.distill.taps import check_paths, module_at
from jetkd.images.models import (
    FITNET4_WIDTHS,
    IMAGE_MODELS,
    BasicBlock,
    BNNeck,
    Bottleneck,
    CifarResNet,
    FitNet,
    FitNetTeacher,
    GlobalPool,
    Maxout,
    ReIDResNet,
    WideBasicBlock,
    WideResNet,
    batch_hard_triplet_loss,
    remap_state_dict,
)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


TINY_REID = {"block": "basic", "layers": (1, 1, 1, 1), "widths": (8, 8, 16, 16), "stem_width": 8}


def tiny(name: str, **kwargs) -> nn.Module:
    """The registry's model; the ReID ones with a tiny backbone."""
    if name.startswith("reid"):
        kwargs = {**TINY_REID, **kwargs}
    return IMAGE_MODELS[name](**kwargs)


def images_for(model: nn.Module, batch: int = 2, seed: int = 0) -> torch.Tensor:
    c, h, w = model.input_size
    if isinstance(model, ReIDResNet):
        h, w = 64, 32
    return torch.randn(batch, c, h, w, generator=torch.Generator().manual_seed(seed))


def record(model: nn.Module, paths, images):
    """{path: output} of one forward pass, by forward hooks (the taps' mechanism)."""
    out = {}
    handles = [module_at(model, p).register_forward_hook(lambda m, i, o, p=p: out.__setitem__(p, o)) for p in paths]
    try:
        logits = model(images)
    finally:
        for h in handles:
            h.remove()
    return logits, out


# ----------------------------------------------------------------------------- parameter counts

# Exact counts of RepDistiller's models at 100 classes, and the figures (millions) the CRD / NORM tables print.
PUBLISHED = {
    "resnet8x4": (1_233_540, 1.23),
    "resnet32x4": (7_433_860, 7.43),
    "wrn_16_2": (703_284, 0.70),
    "wrn_40_2": (2_255_156, 2.26),
    "wrn_40_1": (569_780, 0.57),
    "resnet20": (278_324, 0.28),
    "resnet56": (861_620, 0.86),
    "resnet110": (1_736_564, 1.74),
}


@pytest.mark.parametrize("name", PUBLISHED)
def test_cifar_parameter_counts_match_published(name):
    exact, millions = PUBLISHED[name]
    count = n_params(IMAGE_MODELS[name](n_class=100))
    assert count == exact
    assert round(count / 1e6, 2) == millions


def basic_block_params(c_in, c_out):
    """Two 3x3 convs + 2 BNs, plus a 1x1 conv + BN shortcut when the width changes (RepDistiller's BasicBlock)."""
    p = 9 * c_in * c_out + 9 * c_out * c_out + 4 * c_out
    return p + (c_in * c_out + 2 * c_out if c_in != c_out else 0)


@pytest.mark.parametrize("depth,widths", [(8, (32, 64, 128, 256)), (32, (32, 64, 128, 256)), (20, (16, 16, 32, 64))])
def test_cifar_resnet_count_from_the_architecture(depth, widths):
    """The count worked out by hand from RepDistiller's definition (stem, 3 stages of (depth - 2) / 6 blocks, fc),
    including the projecting shortcut at the start of the x4 variants' first stage (32 -> 64)."""
    n = (depth - 2) // 6
    expected = 9 * 3 * widths[0] + 2 * widths[0]
    for k in (1, 2, 3):
        expected += basic_block_params(widths[k - 1], widths[k]) + (n - 1) * basic_block_params(widths[k], widths[k])
    expected += widths[3] * 100 + 100
    assert n_params(CifarResNet(depth, widths, n_class=100)) == expected


def test_wrn_count_from_the_architecture():
    """WRN-16-2 by hand: pre-activation blocks (BN, conv, BN, conv), 1x1 shortcut conv without BN on width change,
    final BN, fc."""
    def block(c_in, c_out):
        return 2 * c_in + 9 * c_in * c_out + 2 * c_out + 9 * c_out * c_out + (c_in * c_out if c_in != c_out else 0)

    widths, n = (16, 32, 64, 128), 2
    expected = 9 * 3 * 16 + sum(block(widths[k - 1], widths[k]) + (n - 1) * block(widths[k], widths[k]) for k in (1, 2, 3))
    expected += 2 * 128 + 128 * 100 + 100
    assert n_params(WideResNet(16, 2, n_class=100)) == expected == 703_284


def test_reid_backbones_match_torchvision_counts():
    """torchvision's resnet50 / resnet18 have 25,557,032 / 11,689,512 parameters with a 1000-class fc (2,049,000 /
    513,000); the BNNeck adds D weights (no bias) and the classifier D * n_class (no bias)."""
    for name, total, fc, d in (("reid_resnet", 25_557_032, 2_049_000, 2048), ("reid_resnet18", 11_689_512, 513_000, 512)):
        model = IMAGE_MODELS[name](n_class=751)
        assert model.feature_dim == d
        head = n_params(model.bottleneck) + n_params(model.classifier)
        assert head == d + d * 751
        assert n_params(model) - head == total - fc


def test_fitnet4_layout_and_counts():
    """FitNet-4: 17 3x3 convolutions + a 500-unit layer + the classifier (the paper's 19 layers); with maxout
    (2 pieces, fc 5 pieces) the weights alone number 2,736,712 (the authors' counting rule)."""
    relu = FitNet()
    convs = [m for m in relu.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == list(FITNET4_WIDTHS) and all(c.kernel_size == (3, 3) for c in convs)
    assert len([m for m in relu.modules() if isinstance(m, nn.Linear)]) == 2
    assert n_params(relu) == 1_276_806
    maxout = FitNet(maxout_pieces=2, fc_maxout_pieces=5)
    assert sum(p.numel() for k, p in maxout.named_parameters() if k.endswith("weight")) == 2_736_712
    assert n_params(maxout) == 2_742_102
    assert n_params(FitNetTeacher()) == 3_661_670
    assert n_params(IMAGE_MODELS["digits_cnn"]()) == 28_522
    assert n_params(IMAGE_MODELS["digits_cnn_small"]()) == 1_442
    assert n_params(IMAGE_MODELS["digits_resnet"]()) == 19_810


# ----------------------------------------------------------------------------- contract: shapes, classifier, taps

REQUIRED = ("resnet8x4", "resnet32x4", "wrn_16_2", "wrn_40_2", "fitnet_thin", "fitnet_teacher", "reid_resnet",
            "digits_cnn", "digits_cnn_small")


def test_registry_names():
    assert set(REQUIRED) <= set(IMAGE_MODELS)
    assert all(isinstance(cls, type) and issubclass(cls, nn.Module) for cls in IMAGE_MODELS.values())


@pytest.mark.parametrize("name", sorted(IMAGE_MODELS))
def test_contract(name):
    """logits (B, n_class) float32; classifier is the final Linear, fed the last hidden representation
    (B, feature_dim); n_class / in_channels are constructor arguments; hint paths exist (taps.check_paths)."""
    n_class = 7
    model = tiny(name, n_class=n_class).eval()
    assert model.n_class == n_class and model.in_channels == model.input_size[0]
    assert isinstance(model.classifier, nn.Linear)
    assert model.classifier.in_features == model.feature_dim and model.classifier.out_features == n_class
    check_paths(model, model.hint_paths, "test")
    seen = {}
    handle = model.classifier.register_forward_pre_hook(lambda m, args: seen.__setitem__("x", args[0]))
    images = images_for(model, batch=3)
    with torch.no_grad():
        logits = model(images)
    handle.remove()
    assert logits.shape == (3, n_class) and logits.dtype == torch.float32
    assert seen["x"].shape == (3, model.feature_dim)
    # the classifier is the last step: logits are exactly classifier(its input)
    torch.testing.assert_close(model.classifier(seen["x"]), logits)


@pytest.mark.parametrize("name", ["resnet8x4", "wrn_16_2", "fitnet_thin", "digits_cnn", "digits_resnet"])
def test_in_channels(name):
    model = IMAGE_MODELS[name](in_channels=2, n_class=4)
    _, h, w = model.input_size
    assert model(torch.randn(2, 2, h, w)).shape == (2, 4)


HINT_SHAPES = {  # batch 2, each model's nominal input size
    "resnet8x4": {"layer1": (64, 32, 32), "layer2": (128, 16, 16), "layer3": (256, 8, 8), "pool": (256,)},
    "resnet32x4": {"layer1": (64, 32, 32), "layer2": (128, 16, 16), "layer3": (256, 8, 8), "pool": (256,)},
    "wrn_16_2": {"layer1": (32, 32, 32), "layer2": (64, 16, 16), "layer3": (128, 8, 8), "pool": (128,)},
    "wrn_40_2": {"layer1": (32, 32, 32), "layer2": (64, 16, 16), "layer3": (128, 8, 8), "pool": (128,)},
    "fitnet_thin": {"layer1": (48, 16, 16), "layer2": (80, 8, 8), "layer3": (128, 8, 8), "pool": (128,), "fc": (500,)},
    "fitnet_teacher": {"layer1": (96, 15, 15), "layer2": (192, 6, 6), "layer3": (192, 4, 4), "fc": (500,)},
    "reid_resnet": {"layer1": (8, 16, 8), "layer2": (8, 8, 4), "layer3": (16, 4, 2), "layer4": (16, 4, 2),
                    "pool": (16,), "bottleneck": (16,)},
    "digits_cnn": {"layer1": (32, 8, 8), "layer2": (64, 4, 4), "pool": (64,), "fc": (128,)},
    "digits_cnn_small": {"layer1": (8, 8, 8), "layer2": (16, 4, 4), "pool": (16,)},
    "digits_resnet": {"layer1": (8, 8, 8), "layer2": (16, 4, 4), "layer3": (32, 2, 2), "pool": (32,)},
}


@pytest.mark.parametrize("name", HINT_SHAPES)
def test_hint_paths_and_shapes(name):
    model = tiny(name).eval()
    assert tuple(HINT_SHAPES[name]) == model.hint_paths
    with torch.no_grad():
        _, taps = record(model, model.hint_paths, images_for(model))
    assert {p: tuple(t.shape) for p, t in taps.items()} == {p: (2, *s) for p, s in HINT_SHAPES[name].items()}


def test_fitnet_guided_layer_is_paper_h10():
    """The authors' hint pair [[10, 1]]: student h10 (the 11th convolution, ending the 80-channel stage with its
    pool) and teacher h1 (the second layer)."""
    student = FitNet().eval()
    h10 = student.layer2[5]
    assert [m for m in student.modules() if isinstance(m, nn.Conv2d)].index(h10.conv) == 10
    assert isinstance(h10.pool, nn.MaxPool2d)
    with torch.no_grad():
        _, taps = record(student, ["layer2", "layer2.5"], torch.randn(2, 3, 32, 32))
    torch.testing.assert_close(taps["layer2"], taps["layer2.5"], rtol=0, atol=0)


def test_fitnet_stages_configurable():
    """A FitNet-1-like thin student from plain lists (as a YAML config gives them)."""
    model = IMAGE_MODELS["fitnet_thin"](widths=[16, 16, 16, 32, 32, 32, 48, 48, 48], stage_sizes=[3, 3, 3],
                                        fc_units=0, n_class=10)
    assert model.feature_dim == 48 and model.hint_paths == ("layer1", "layer2", "layer3", "pool")
    assert len(model.layer2) == 3 and isinstance(model.layer2[2].pool, nn.MaxPool2d)
    assert isinstance(model.layer3[2].pool, nn.Identity) and model.pool.mode == "max"
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="stage_sizes"):
        FitNet(widths=(8, 8), stage_sizes=(1, 2))


def test_maxout():
    x = torch.tensor([[[[1.0]], [[5.0]], [[-2.0]], [[-3.0]]]])  # (1, 4, 1, 1): groups (1, 5), (-2, -3)
    assert Maxout(2)(x).flatten().tolist() == [5.0, -2.0]
    assert Maxout(5)(torch.arange(10.0)[None]).tolist() == [[4.0, 9.0]]
    assert GlobalPool("max")(torch.arange(8.0).view(1, 2, 2, 2)).tolist() == [[3.0, 7.0]]
    assert GlobalPool("avg")(torch.arange(8.0).view(1, 2, 2, 2)).tolist() == [[1.5, 5.5]]


def test_invalid_depths():
    with pytest.raises(ValueError, match="6n \\+ 2"):
        CifarResNet(depth=10)
    with pytest.raises(ValueError, match="6n \\+ 4"):
        WideResNet(depth=18)


# ----------------------------------------------------------------------------- block structure (CDD, taps)


@pytest.mark.parametrize("name", ["resnet8x4", "resnet20", "reid_resnet", "reid_resnet18", "wrn_16_2", "digits_resnet"])
def test_residual_block_naming(name):
    model = IMAGE_MODELS[name]()
    blocks = [m for m in model.modules() if isinstance(m, (BasicBlock, Bottleneck, WideBasicBlock))]
    assert blocks
    for b in blocks:
        names = dict(b.named_children())
        assert {"conv1", "bn1", "conv2", "bn2", "shortcut"} <= set(names)
        assert isinstance(b.conv1, nn.Conv2d) and isinstance(b.bn1, nn.BatchNorm2d) and isinstance(b.bn2, nn.BatchNorm2d)
        if isinstance(b, Bottleneck):
            assert isinstance(b.conv3, nn.Conv2d) and isinstance(b.bn3, nn.BatchNorm2d)
        c_in = b.bn1.num_features if isinstance(b, WideBasicBlock) else b.conv1.in_channels
        c_out = b.conv2.out_channels if not isinstance(b, Bottleneck) else b.conv3.out_channels
        strided = (b.conv2 if isinstance(b, Bottleneck) else b.conv1).stride != (1, 1)
        if c_in == c_out and not strided:
            assert isinstance(b.shortcut, nn.Identity)
        else:
            assert b.shortcut.conv.kernel_size == (1, 1) and b.shortcut.conv.out_channels == c_out
            assert hasattr(b.shortcut, "bn") != isinstance(b, WideBasicBlock)  # WRN's shortcut has no BatchNorm


def test_x4_first_stage_projects():
    """RepDistiller's x4 ResNets widen 32 -> 64 at layer1.0 (a projecting shortcut); resnet20 does not (16 -> 16)."""
    assert IMAGE_MODELS["resnet8x4"]().layer1[0].shortcut.conv.weight.shape == (64, 32, 1, 1)
    assert isinstance(IMAGE_MODELS["resnet20"]().layer1[0].shortcut, nn.Identity)


def test_no_inplace_relu():
    """A tapped tensor must not be overwritten later in the forward pass."""
    for name in IMAGE_MODELS:
        model = tiny(name) if name.startswith("reid") else IMAGE_MODELS[name]()
        assert not any(getattr(m, "inplace", False) for m in model.modules()), name


def test_basic_block_function():
    """out = relu(bn2(conv2(relu(bn1(conv1 x)))) + shortcut(x)); the residual-sum (CRD's preact) is the input of
    ``relu``."""
    torch.manual_seed(0)
    block = BasicBlock(4, 8, stride=2).eval()
    x = torch.randn(2, 4, 6, 6)
    ref = block.bn2(block.conv2(F.relu(block.bn1(block.conv1(x)))))
    ref = ref + block.shortcut.bn(F.conv2d(x, block.shortcut.conv.weight, stride=2))
    seen = {}
    block.relu.register_forward_pre_hook(lambda m, args: seen.__setitem__("preact", args[0]))
    out = block(x)
    torch.testing.assert_close(seen["preact"], ref)
    torch.testing.assert_close(out, F.relu(ref))
    assert (seen["preact"] < 0).any()


def test_wide_block_matches_reference_quirk():
    """RepDistiller's WRN block: a width-changing block's 1x1 shortcut takes relu(bn1(x)); a width-keeping block adds
    the raw x. With conv2 zeroed the residual branch vanishes and the output is the shortcut term alone."""
    torch.manual_seed(0)
    x = torch.randn(2, 4, 6, 6)
    for c_out in (8, 4):
        block = WideBasicBlock(4, c_out, stride=1).eval()
        with torch.no_grad():
            block.bn1.running_mean.uniform_(-1, 1)
            block.conv2.weight.zero_()
        out = block(x)
        if c_out == 4:
            torch.testing.assert_close(out, x, rtol=0, atol=0)
        else:
            torch.testing.assert_close(out, block.shortcut.conv(F.relu(block.bn1(x))))


def test_wrn_final_bn_relu_feed_pool():
    model = WideResNet(16, 1, n_class=3).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        _, taps = record(model, ["layer3", "relu", "pool"], x)
    torch.testing.assert_close(taps["relu"], F.relu(model.bn(taps["layer3"])))
    torch.testing.assert_close(taps["pool"], taps["relu"].mean((2, 3)))


# ----------------------------------------------------------------------------- re-identification


def trained_like(model, images, steps=3):
    """Train-mode passes so the BatchNorms' running statistics are not the initial ones, then eval mode."""
    model.train()
    with torch.no_grad():
        for s in range(steps):
            model(images + 0.5 * s)
    return model.eval()


def test_bnneck_has_no_trainable_bias():
    model = ReIDResNet(**TINY_REID)
    assert isinstance(model.bottleneck, BNNeck) and isinstance(model.bottleneck, nn.BatchNorm1d)
    assert "bottleneck.bias" not in dict(model.named_parameters())
    assert "bottleneck.bias" in model.state_dict() and not model.bottleneck.bias.any()
    assert model.classifier.bias is None
    # a training step leaves the shift at zero
    opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=0.1)
    F.cross_entropy(model(torch.randn(4, 3, 64, 32)), torch.tensor([0, 1, 2, 3])).backward()
    opt.step()
    assert not model.bottleneck.bias.any()


def test_embed_is_post_bn_feature_in_eval_mode():
    """embed = f_i = BNNeck(f_t) with running statistics (eval mode); it is what feeds the ID classifier, differs
    from the triplet feature f_t (tap ``pool``), and does not depend on the rest of the batch."""
    torch.manual_seed(0)
    model = ReIDResNet(n_class=5, **TINY_REID)
    images = torch.randn(6, 3, 64, 32)
    trained_like(model, images)
    with torch.no_grad():
        logits, taps = record(model, ["pool", "bottleneck"], images)
        emb = model.embed(images)
        f_t = taps["pool"]
        bn = model.bottleneck
        manual = (f_t - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight
        torch.testing.assert_close(emb, manual)
        torch.testing.assert_close(emb, taps["bottleneck"])
        torch.testing.assert_close(model.classifier(emb), logits)
        assert not torch.allclose(emb, f_t, atol=1e-3)
        torch.testing.assert_close(model.embed(images[:1]), emb[:1])
        f_t2, f_i2 = model.forward_features(images)
        torch.testing.assert_close(f_t2, f_t)
        torch.testing.assert_close(f_i2, emb)
        before = ReIDResNet(n_class=5, embed_feature="before", **TINY_REID)
        before.load_state_dict(model.state_dict())
        torch.testing.assert_close(before.eval().embed(images), f_t)
    assert emb.shape == (6, model.feature_dim)


def test_reid_last_stride():
    images = torch.randn(1, 3, 64, 32)
    for last_stride, size in ((1, (4, 2)), (2, (2, 1))):
        model = ReIDResNet(last_stride=last_stride, **TINY_REID).eval()
        with torch.no_grad():
            _, taps = record(model, ["layer4"], images)
        assert taps["layer4"].shape[-2:] == size


# ----------------------------------------------------------------------------- batch-hard triplet loss


def points(*xs):
    """2-d embeddings on a line: (x, 0)."""
    return torch.tensor([[x, 0.0] for x in xs])


def test_triplet_zero_when_separated_beyond_margin():
    emb, labels = points(0.0, 0.1, 10.0, 10.1), torch.tensor([0, 0, 1, 1])
    assert batch_hard_triplet_loss(emb, labels, margin=0.3).item() == 0.0


def test_triplet_known_value():
    """Anchors at 0, 1 (class 0) and 1.5, 3 (class 1), margin 1. Hardest positive / negative distances:
    a=0: 1 / 1.5 -> 0.5;  a=1: 1 / 0.5 -> 1.5;  a=1.5: 1.5 / 0.5 -> 2.0;  a=3: 1.5 / 2 -> 0.5.  Mean 1.125.
    (Mining the farthest negative instead would give a=0: 1 - 3 + 1 < 0 -> 0.)"""
    emb, labels = points(0.0, 1.0, 1.5, 3.0), torch.tensor([0, 0, 1, 1])
    assert batch_hard_triplet_loss(emb, labels, margin=1.0).item() == pytest.approx(1.125, abs=1e-5)
    # permuting the batch changes nothing
    perm = torch.tensor([3, 0, 2, 1])
    assert batch_hard_triplet_loss(emb[perm], labels[perm], 1.0).item() == pytest.approx(1.125, abs=1e-5)
    # soft margin: mean softplus(d_ap - d_an) over diffs -0.5, 0.5, 1.0, -0.5
    soft = sum(math.log1p(math.exp(d)) for d in (-0.5, 0.5, 1.0, -0.5)) / 4
    assert batch_hard_triplet_loss(emb, labels, margin=None).item() == pytest.approx(soft, abs=1e-5)


def test_triplet_gradient_and_edge_cases():
    emb = points(0.0, 0.0, 1.0, 1.0).requires_grad_(True)  # duplicates: zero distances
    loss = batch_hard_triplet_loss(emb, torch.tensor([0, 1, 0, 1]), margin=0.3)
    loss.backward()
    assert torch.isfinite(emb.grad).all() and loss.item() == pytest.approx(1.3, abs=1e-4)
    # one class only: no negatives, loss 0 with a gradient path
    emb = torch.randn(3, 4, requires_grad=True)
    loss = batch_hard_triplet_loss(emb, torch.zeros(3, dtype=torch.long), margin=0.3)
    loss.backward()
    assert loss.item() == 0.0 and emb.grad is not None
    with pytest.raises(ValueError):
        batch_hard_triplet_loss(torch.randn(3, 4), torch.zeros(2, dtype=torch.long), 0.3)


# ----------------------------------------------------------------------------- checkpoints of the reference code


def to_reference_names(state_dict, kind):
    """Our keys renamed to the reference code's (written from RepDistiller's resnet.py / wrn.py and torchvision)."""
    out = {}
    for k, v in state_dict.items():
        k = k.replace(".shortcut.conv.", ".downsample.0." if kind != "wrn" else ".convShortcut.")
        k = k.replace(".shortcut.bn.", ".downsample.1.")
        if kind == "wrn":
            for s in (1, 2, 3):
                k = k.replace(f"layer{s}.", f"block{s}.layer.") if k.startswith(f"layer{s}.") else k
            k = "bn1." + k[3:] if k.startswith("bn.") else k
        k = "fc." + k[len("classifier."):] if k.startswith("classifier.") and kind != "reid" else k
        out[("base." + k if kind == "reid" and not k.startswith(("bottleneck.", "classifier.")) else k)] = v
    return out


@pytest.mark.parametrize("name,kind,source,probe", [
    ("resnet8x4", "resnet", "repdistiller_resnet", {"layer1.0.downsample.0.weight": (64, 32, 1, 1),
                                                     "layer3.0.downsample.1.running_var": (256,), "fc.weight": (100, 256)}),
    ("wrn_16_2", "wrn", "repdistiller_wrn", {"block1.layer.0.convShortcut.weight": (32, 16, 1, 1),
                                             "block1.layer.0.bn1.weight": (16,), "bn1.weight": (128,), "fc.bias": (100,)}),
    ("reid_resnet", "reid", "reid_strong_baseline", {"base.layer2.0.downsample.0.weight": (8, 8, 1, 1),
                                                      "bottleneck.bias": (16,), "classifier.weight": (751, 16)}),
])
def test_reference_checkpoints_load(name, kind, source, probe):
    torch.manual_seed(0)
    model = tiny(name).eval()
    reference = to_reference_names(model.state_dict(), kind)
    assert {k: tuple(reference[k].shape) for k in probe} == probe
    fresh = tiny(name).eval()
    fresh.load_state_dict(remap_state_dict(reference, source), strict=True)
    x = images_for(model)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x))


def test_torchvision_checkpoint_loads_backbone():
    model = ReIDResNet(**TINY_REID)
    sd = {k: v for k, v in to_reference_names(model.state_dict(), "resnet").items()
          if not k.startswith(("bottleneck.", "fc."))}
    sd["fc.weight"], sd["fc.bias"] = torch.zeros(1000, 16), torch.zeros(1000)  # ImageNet head: dropped
    missing, unexpected = ReIDResNet(**TINY_REID).load_state_dict(remap_state_dict(sd, "torchvision"), strict=False)
    assert not unexpected and sorted(missing) == ["bottleneck.bias", "bottleneck.running_mean",
                                                  "bottleneck.running_var", "bottleneck.weight", "classifier.weight"]


# ----------------------------------------------------------------------------- digits models train


@pytest.mark.parametrize("name", ["digits_cnn", "digits_cnn_small", "digits_resnet"])
def test_digits_models_learn(name):
    """A few SGD steps lower the loss on a tiny random batch of 8x8 single-channel images: one random 0..16
    prototype per class (the digits' pixel range) plus noise."""
    torch.manual_seed(0)
    model = IMAGE_MODELS[name](n_class=10, in_channels=1)
    labels = torch.arange(32) % 10
    images = (torch.rand(10, 1, 8, 8) * 16)[labels] + torch.randn(32, 1, 8, 8)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.train()
    losses = []
    for _ in range(30):
        loss = F.cross_entropy(model(images), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
