"""Length bucketing in the loader: every jet once, seeded, resumable, shardable, and much less padding."""

import numpy as np
import pytest

from jetkd.config import load_job
from jetkd.data.cache import CacheWriter, JetCache
from jetkd.data.loader import JetBatch, JetLoader, bucket_order, padded_slots
from jetkd.errors import InputError

from helpers import assert_exact_resume, job_dict  # tests/helpers.py

N_JETS, MAX_PARTICLES = 600, 64


def write_spread_cache(path, n_jets=N_JETS, max_particles=MAX_PARTICLES, seed=0):
    """A cache whose multiplicities spread over 1..max_particles (uniform); the E column of every real
    constituent encodes the jet index, so rows can be traced. Returns n_particles (n_jets,)."""
    rng = np.random.default_rng(seed)
    n = rng.integers(1, max_particles + 1, n_jets).astype(np.int32)
    p4 = rng.normal(size=(n_jets, max_particles, 4)).astype(np.float32)
    p4[..., 0] = np.arange(n_jets, dtype=np.float32)[:, None] + 1.0
    p4[np.arange(max_particles)[None, :] >= n[:, None]] = 0.0
    with CacheWriter(path, n_jets, max_particles, {"split": "train"}) as w:
        w.append(p4, n, rng.integers(0, 2, n_jets))
        w.commit()
    return n


def jet_ids(batch: JetBatch) -> list[int]:
    return (batch.p4[:, 0, 0] - 1).round().long().tolist()


def epoch(loader, start=0):
    return [jet_ids(b) for b in loader.iter_from(start)]


@pytest.fixture(scope="module")
def spread(tmp_path_factory):
    path = tmp_path_factory.mktemp("bucketing") / "train.h5"
    return path, write_spread_cache(path)


@pytest.mark.parametrize("in_memory", [True, False])
@pytest.mark.parametrize("batch_size, window, drop_last", [(16, 4, False), (16, 4, True), (7, 3, False), (50, 100, False)])
def test_every_jet_once_and_same_batch_count(spread, in_memory, batch_size, window, drop_last):
    path, _ = spread
    cache = JetCache(path, in_memory=in_memory, block_jets=max(256, batch_size * window))
    plain = JetLoader(cache, batch_size, seed=2, drop_last=drop_last)
    bucketed = JetLoader(cache, batch_size, seed=2, drop_last=drop_last, bucket_window=window)
    seen = [i for b in epoch(bucketed) for i in b]
    want = [i for b in epoch(plain) for i in b]
    assert len(bucketed) == len(plain) == len(epoch(bucketed))
    assert len(set(seen)) == len(seen) == len(want) == (N_JETS // batch_size * batch_size if drop_last else N_JETS)
    assert drop_last or sorted(seen) == list(range(N_JETS))  # drop_last drops a different partial batch
    assert [len(b) for b in epoch(bucketed)] == [len(b) for b in epoch(plain)]


def test_seeded_by_seed_and_epoch(spread):
    cache = JetCache(spread[0])
    loader = JetLoader(cache, 16, seed=3, bucket_window=4)
    loader.set_epoch(1)
    first = epoch(loader)
    again = JetLoader(cache, 16, seed=3, bucket_window=4)
    again.set_epoch(1)
    assert epoch(again) == first
    loader.set_epoch(2)
    assert epoch(loader) != first
    assert epoch(JetLoader(cache, 16, seed=4, bucket_window=4)) != epoch(JetLoader(cache, 16, seed=3, bucket_window=4))


def test_batches_hold_neighbouring_multiplicities(spread):
    """A window of 4 batches of 16 sorted by n: a batch holds a quarter of the window's range of multiplicities
    (spread max - min ~16 of the 1..64 range, against ~55 for 16 random jets); and the order of the batches is
    shuffled (not ascending in n run after run of 4, as cut from the sorted windows)."""
    path, n = spread
    loader = JetLoader(JetCache(path), 16, seed=1, drop_last=True, bucket_window=4)
    spreads = [np.ptp(n[ids]) for ids in epoch(loader)]
    plain = [np.ptp(n[ids]) for ids in epoch(JetLoader(JetCache(path), 16, seed=1))]
    assert np.mean(spreads) < 22 and np.mean(plain) > 50, (np.mean(spreads), np.mean(plain))
    means = [n[ids].mean() for ids in epoch(loader)]
    assert not all(np.diff(means[k : k + 4]).min() >= 0 for k in range(0, len(means) - 3, 4))


@pytest.mark.parametrize("in_memory", [True, False])
def test_resume_mid_epoch_gives_the_remaining_batches(spread, in_memory):
    loader = JetLoader(JetCache(spread[0], in_memory=in_memory, block_jets=256), 16, seed=5, bucket_window=4)
    loader.set_epoch(3)
    full = epoch(loader)
    for start in (1, 7, len(full) - 1):
        resumed = JetLoader(JetCache(spread[0], in_memory=in_memory, block_jets=256), 16, seed=5, bucket_window=4)
        resumed.set_epoch(3)
        assert epoch(resumed, start) == full[start:]


@pytest.mark.parametrize("world_size, drop_last", [(2, True), (3, False), (4, False)])
@pytest.mark.parametrize("in_memory", [True, False])
def test_shards_reassemble_the_single_process_batches(spread, world_size, drop_last, in_memory):
    cache = JetCache(spread[0], in_memory=in_memory, block_jets=512)
    single = epoch(JetLoader(cache, 8 * world_size, seed=1, drop_last=drop_last, bucket_window=2))
    ranks = [epoch(JetLoader(cache, 8, seed=1, drop_last=drop_last, rank=r, world_size=world_size, bucket_window=2))
             for r in range(world_size)]
    assert all(len(r) == len(single) for r in ranks)
    assert [[i for part in parts for i in part] for parts in zip(*ranks)] == single


def test_padding_removed(spread):
    """The node slots of the padded batches, sum over batches of B * max(n), shrink to 0.61 of the plain
    loader's on uniform multiplicities (1..64, batch 16, windows of 8 batches: the longest of 16 random jets is
    ~61, a bucketed batch's ~38 for a mean of 33), and the pair slots, B * max(n)^2, to 0.46; ``padded_slots`` of
    the loader's order counts the same."""
    path, n = spread
    cache = JetCache(path)

    def slots(loader, power=1):
        return sum(len(b) * b.p4.shape[1] ** power for b in loader)

    plain = JetLoader(cache, 16, seed=1)
    bucketed = JetLoader(cache, 16, seed=1, bucket_window=8)
    ratio = slots(bucketed) / slots(plain)
    pair_ratio = slots(bucketed, 2) / slots(plain, 2)
    assert ratio < 0.65 and pair_ratio < 0.5, (ratio, pair_ratio)  # 0.61, 0.46
    assert slots(bucketed) >= n.sum()  # a batch holds its real constituents at least
    assert padded_slots(n, bucketed.order(), 16) == slots(bucketed)
    assert padded_slots(n, plain.order(), 16, power=2) == slots(plain, 2)


def test_streamed_windows_stay_within_two_consecutive_blocks(spread):
    """On disk the batches are shuffled only within their window, so a window's batches read at most the two
    blocks it spans, consecutive in the epoch's block order (the cache holds two)."""
    path, _ = spread
    cache = JetCache(path, in_memory=False, block_jets=128)
    loader = JetLoader(cache, 16, seed=4, bucket_window=4)  # 64-jet windows in 128-jet blocks
    batches = epoch(loader)
    block_order = list(dict.fromkeys(i // 128 for i in loader._shuffled()))
    for w in range(0, len(batches), 4):
        blocks = sorted({block_order.index(i // 128) for ids in batches[w : w + 4] for i in ids})
        assert blocks[-1] - blocks[0] <= 1


def test_rejects_bad_windows(spread):
    with pytest.raises(ValueError, match="bucket_window must be >= 0"):
        JetLoader(JetCache(spread[0]), 16, bucket_window=-1)
    with pytest.raises(ValueError, match=r"2048 jets exceeds the 1024-jet blocks of the streamed cache .*train\.h5"):
        JetLoader(JetCache(spread[0], in_memory=False, block_jets=1024), 64, bucket_window=8, world_size=4)


def test_unshuffled_bucketing_sorts_each_window():
    n = np.array([5, 3, 9, 1, 7, 2, 8])
    assert bucket_order(np.arange(7), n, 2, 2).tolist() == [3, 1, 0, 2, 5, 4, 6]
    assert padded_slots(n, [3, 1, 0, 2, 5, 4, 6], 2) == 2 * 3 + 2 * 9 + 2 * 7 + 8


def test_trainer_buckets_with_train_bucket_by_length_and_resumes_exactly(cache, tmp_path, monkeypatch):
    from jetkd.train.loop import Trainer

    def make_job(run):
        return load_job(data=job_dict(cache, run, train={"bucket_by_length": 2}))

    trainer = Trainer(make_job(tmp_path / "probe"), progress=False)
    assert trainer.loader.bucket_window == 2
    trainer.folder.release()
    assert_exact_resume(make_job, tmp_path, kill_step=10, monkeypatch=monkeypatch)
    with pytest.raises(InputError, match="train.bucket_by_length"):
        load_job(data=job_dict(cache, tmp_path / "bad", train={"bucket_by_length": -1}))
