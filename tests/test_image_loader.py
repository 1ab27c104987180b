"""Image loader: seeded order and augmentation, identical after a mid-epoch resume and under DDP sharding; crop,
flip and normalisation checked against plain per-image references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jetkd.errors import InputError
from jetkd.images import Augment, ImageBatch, ImageLoader, ImageSet, channel_stats, read_images, standard_augment
from jetkd.images.loader import crop_flip, normalize

H, W = 6, 5  # not square, to catch swapped axes


def make_set(n=23, channels=3, cameras=True, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, H, W, channels), dtype=np.uint8)
    labels = rng.integers(0, 4, n).astype(np.int64)
    cams = rng.integers(1, 9, n).astype(np.int64) if cameras else None
    return ImageSet(images, labels, cams, ["a", "b", "c", "d"], "test")


def batches(loader, start=0):
    return list(loader.iter_from(start))


def assert_batches_equal(a: list[ImageBatch], b: list[ImageBatch]):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x.images, y.images, rtol=0, atol=0)
        assert torch.equal(x.label, y.label) and torch.equal(x.index, y.index)
        assert (x.camera is None) == (y.camera is None)
        if x.camera is not None:
            assert torch.equal(x.camera, y.camera)


def cat(parts: list[ImageBatch]) -> ImageBatch:
    cams = None if parts[0].camera is None else torch.cat([p.camera for p in parts])
    return ImageBatch(torch.cat([p.images for p in parts]), torch.cat([p.label for p in parts]),
                      torch.cat([p.index for p in parts]), cams)


def reference_crop_flip(image: np.ndarray, dy: int, dx: int, flip: bool, pad: int) -> np.ndarray:
    """(H, W, C) -> (H, W, C): np.pad with zeros, slice the window, mirror; one image at a time."""
    h, w = image.shape[:2]
    window = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))[dy : dy + h, dx : dx + w]
    return window[:, ::-1] if flip else window


def denormalize(images: torch.Tensor, mean, std) -> np.ndarray:
    """(B, C, H, W) normalised -> (B, H, W, C) uint8 pixel values."""
    x = images * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]
    return np.rint(x.permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)


AUG = Augment(pad=2, flip=True)
STATS = {"mean": (0.5, 0.4, 0.3), "std": (0.25, 0.2, 0.3)}


# ----------------------------------------------------------------------------- batches


def test_batches_have_documented_shapes_and_cover_the_epoch():
    data = make_set()
    loader = ImageLoader(data, 4, seed=3, augment=AUG)
    out = list(loader)
    assert len(out) == len(loader) == 6
    for b in out:
        assert b.images.shape[1:] == (3, H, W) and b.images.dtype == torch.float32
        assert b.label.dtype == b.index.dtype == b.camera.dtype == torch.int64
        assert torch.equal(b.label, torch.from_numpy(data.labels[b.index.numpy()]))
        assert torch.equal(b.camera, torch.from_numpy(data.cameras[b.index.numpy()]))
    assert sorted(torch.cat([b.index for b in out]).tolist()) == list(range(23))
    assert [len(b) for b in out] == [4] * 5 + [3]
    assert len(ImageLoader(data, 4, drop_last=True, **STATS)) == 5
    grey = ImageLoader(make_set(channels=1, cameras=False), 8, shuffle=False, mean=0.5, std=0.5)
    first = next(iter(grey))
    assert first.images.shape == (8, 1, H, W) and first.camera is None
    assert first.index.tolist() == list(range(8))  # shuffle=False keeps file order
    assert first.to("cpu").images.shape == (8, 1, H, W)


def test_order_and_augmentation_are_seeded():
    data = make_set()
    a, b = ImageLoader(data, 5, seed=1, augment=AUG), ImageLoader(data, 5, seed=1, augment=AUG)
    assert_batches_equal(batches(a), batches(b))
    other_seed = ImageLoader(data, 5, seed=2, augment=AUG)
    assert not torch.equal(batches(other_seed)[0].index, batches(a)[0].index)
    b.set_epoch(1)
    assert not torch.equal(batches(b)[0].index, batches(a)[0].index)
    # the same image at the same position gets the same augmentation only if (seed, epoch) agree
    no_shuffle = [ImageLoader(data, 23, seed=s, shuffle=False, augment=AUG, **STATS) for s in (1, 1, 2)]
    imgs = [next(iter(loader)).images for loader in no_shuffle]
    assert torch.equal(imgs[0], imgs[1]) and not torch.equal(imgs[0], imgs[2])
    no_shuffle[1].set_epoch(5)
    assert not torch.equal(next(iter(no_shuffle[1])).images, imgs[0])


@pytest.mark.parametrize("start", [0, 1, 3, 5, 6])
def test_resume_mid_epoch_is_identical(start):
    data = make_set()
    full = ImageLoader(data, 4, seed=11, augment=AUG)
    full.set_epoch(2)
    expected = batches(full)[start:]
    resumed = ImageLoader(data, 4, seed=11, augment=AUG)  # a fresh process: nothing cached
    resumed.set_epoch(2)
    assert_batches_equal(batches(resumed, start), expected)


@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize("drop_last", [False, True])
def test_sharding_matches_one_process(world_size, drop_last):
    """N ranks with batch b see exactly the images (augmented alike) that one process sees with N * b."""
    data = make_set(n=32)  # uneven tails (2 for N = 2, 5 for N = 3), at least one image per rank as the jet loader
    b = 3
    single = ImageLoader(data, world_size * b, seed=5, augment=AUG, drop_last=drop_last)
    single.set_epoch(1)
    ranks = [ImageLoader(data, b, seed=5, augment=AUG, drop_last=drop_last, rank=r, world_size=world_size,
                         mean=single.mean, std=single.std) for r in range(world_size)]
    for loader in ranks:
        loader.set_epoch(1)
    per_rank = [batches(loader) for loader in ranks]
    assert all(len(p) == len(single) for p in per_rank)
    assert_batches_equal([cat(list(step)) for step in zip(*per_rank, strict=True)], batches(single))
    # and a resumed rank sees its own slices
    assert_batches_equal(batches(ranks[1], 2), per_rank[1][2:])


def test_rank_and_batch_size_are_checked():
    with pytest.raises(ValueError):
        ImageLoader(make_set(), 0)
    with pytest.raises(ValueError):
        ImageLoader(make_set(), 4, rank=2, world_size=2)


# ----------------------------------------------------------------------------- crop and flip


def test_crop_flip_on_a_known_image():
    image = torch.arange(1, 10, dtype=torch.uint8).reshape(1, 3, 3, 1)  # [[1,2,3],[4,5,6],[7,8,9]]
    batch = image.expand(4, 3, 3, 1)
    dy, dx = torch.tensor([0, 1, 2, 1]), torch.tensor([0, 1, 2, 0])
    flip = torch.tensor([False, False, True, True])
    out = crop_flip(batch, dy, dx, flip, pad=1)[..., 0].tolist()
    assert out[0] == [[0, 0, 0], [0, 1, 2], [0, 4, 5]]  # window at the top-left corner of the padded image
    assert out[1] == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]  # dy = dx = pad: the image itself
    assert out[2] == [[0, 6, 5], [0, 9, 8], [0, 0, 0]]  # bottom-right window, mirrored
    assert out[3] == [[2, 1, 0], [5, 4, 0], [8, 7, 0]]  # shifted right by one, mirrored


def test_crop_flip_matches_the_per_image_reference_for_every_offset():
    rng = np.random.default_rng(0)
    pad = 2
    image = rng.integers(1, 256, (H, W, 2), dtype=np.uint8)
    offsets = [(dy, dx, f) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1) for f in (False, True)]
    dy, dx, flip = (torch.tensor(v) for v in zip(*offsets, strict=True))
    out = crop_flip(torch.from_numpy(image).expand(len(offsets), H, W, 2), dy, dx, flip, pad).numpy()
    for k, (y, x, f) in enumerate(offsets):
        np.testing.assert_array_equal(out[k], reference_crop_flip(image, y, x, f, pad), err_msg=str((y, x, f)))


def test_loader_augments_by_its_plan():
    """Each image the loader yields is the reference crop/flip of its source at the plan's offsets, and the plan
    uses every offset and both flips."""
    data = make_set(n=200)
    pad = 1
    loader = ImageLoader(data, 64, seed=4, augment=Augment(pad=pad, flip=True), **STATS)
    order, dy, dx, flip = loader.plan()
    assert set(dy.tolist()) == set(dx.tolist()) == {0, 1, 2} and set(flip.tolist()) == {False, True}
    position = 0
    for batch in loader:
        got = denormalize(batch.images, STATS["mean"], STATS["std"])
        for k, index in enumerate(batch.index.tolist()):
            assert index == order[position]
            want = reference_crop_flip(data.images[index], dy[position], dx[position], flip[position], pad)
            np.testing.assert_array_equal(got[k], want)
            position += 1
    no_flip = ImageLoader(data, 64, seed=4, augment=Augment(pad=2, flip=False), **STATS)
    assert not no_flip.plan()[3].any()


def test_no_augmentation_for_evaluation():
    data = make_set()
    for augment in (None, Augment(pad=0, flip=False)):
        loader = ImageLoader(data, 7, shuffle=False, augment=augment, **STATS)
        got = np.concatenate([denormalize(b.images, STATS["mean"], STATS["std"]) for b in loader])
        np.testing.assert_array_equal(got, data.images)


# ----------------------------------------------------------------------------- normalisation


def test_normalisation_with_given_mean_and_std():
    data = make_set()
    batch = next(iter(ImageLoader(data, 23, shuffle=False, **STATS)))
    x = data.images.transpose(0, 3, 1, 2).astype(np.float64) / 255
    want = (x - np.array(STATS["mean"])[:, None, None]) / np.array(STATS["std"])[:, None, None]
    np.testing.assert_allclose(batch.images.numpy(), want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(normalize(torch.from_numpy(data.images), *STATS.values()), batch.images)


def test_channel_stats_and_computed_normalisation():
    data = make_set(n=40)
    mean, std = channel_stats(data.images, chunk=7)  # chunking does not change the result
    pixels = data.images.reshape(-1, 3).astype(np.float64) / 255
    np.testing.assert_allclose(mean, pixels.mean(0), rtol=1e-10)
    np.testing.assert_allclose(std, pixels.std(0), rtol=1e-8)
    loader = ImageLoader(data, 40, shuffle=False)  # mean/std computed from the set it reads
    assert loader.mean == pytest.approx(mean) and loader.std == pytest.approx(std)
    images = next(iter(loader)).images
    np.testing.assert_allclose(images.mean((0, 2, 3)).numpy(), 0, atol=1e-5)
    np.testing.assert_allclose(images.std((0, 2, 3), unbiased=False).numpy(), 1, atol=1e-5)
    flat = np.zeros((3, 2, 2, 1), np.uint8)
    assert channel_stats(flat) == ((0.0,), (1.0,))  # zero spread: std 1, no division by zero


def test_mean_and_std_are_checked():
    data = make_set()
    for kwargs, needle in [({"mean": (0.5, 0.5), "std": (1, 1, 1)}, "mean"), ({"mean": 0.5}, "std"),
                           ({"mean": (0.5,) * 3, "std": (0.2, 0.0, 0.2)}, "positive"),
                           ({"mean": (0.5, np.nan, 0.5), "std": (1,) * 3}, "finite")]:
        with pytest.raises(InputError, match=needle):
            ImageLoader(data, 4, **kwargs)


def test_standard_augmentations():
    assert standard_augment("cifar10") == Augment(pad=4, flip=True)
    assert standard_augment("veri").flip
    for digits in ("mnist", "svhn", "digits", "fashion-mnist"):
        assert not standard_augment(digits).flip
    with pytest.raises(InputError, match="imagenet"):
        standard_augment("imagenet")
    with pytest.raises(InputError, match="augment.pad"):
        Augment(pad=-1)


def test_digits_end_to_end():
    train = read_images("digits", "train")
    loader = ImageLoader(train, 100, seed=0, augment=standard_augment(train.format))
    test = ImageLoader(read_images("digits", "test"), 100, shuffle=False, mean=loader.mean, std=loader.std)
    first = next(iter(loader))
    assert first.images.shape == (100, 1, 8, 8) and first.camera is None
    assert sum(len(b) for b in test) == 359
