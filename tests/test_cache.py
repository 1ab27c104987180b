"""The constituent cache and the loader: layout, atomic writes, shuffling, sharding, resuming."""

import h5py
import numpy as np
import pytest
import torch

from jetkd.data.cache import CacheWriter, JetCache
from jetkd.data.loader import JetBatch, JetLoader
from jetkd.errors import InputError


def fake_jets(n_jets, max_particles=16, seed=0):
    """Zero-padded p4 (n, M, 4) whose E column encodes the jet index, so rows can be traced."""
    rng = np.random.default_rng(seed)
    n_particles = rng.integers(1, max_particles + 1, n_jets).astype(np.int32)
    p4 = rng.normal(size=(n_jets, max_particles, 4)).astype(np.float32)
    p4[..., 0] = np.arange(n_jets, dtype=np.float32)[:, None] + 1.0
    p4[np.arange(max_particles)[None, :] >= n_particles[:, None]] = 0.0
    label = rng.integers(0, 2, n_jets)
    return p4, n_particles, label


def write_cache(path, n_jets=100, max_particles=16, blocks=3):
    p4, n, label = fake_jets(n_jets, max_particles)
    with CacheWriter(path, n_jets, max_particles, {"split": "train", "sources": ["x.root"]}) as w:
        for rows in np.array_split(np.arange(n_jets), blocks):
            w.append(p4[rows], n[rows], label[rows])
        w.commit()
    return p4, n, label


def jet_ids(batch: JetBatch) -> list[int]:
    return (batch.p4[:, 0, 0] - 1).round().long().tolist()


def test_writer_roundtrip_and_layout(tmp_path):
    p4, n, label = write_cache(tmp_path / "train.h5")
    with h5py.File(tmp_path / "train.h5") as f:
        assert f["p4"].dtype == np.float32 and f["p4"].shape == (100, 16, 4)
        assert f.attrs["max_particles"] == 16 and f.attrs["split"] == "train"
        assert f["p4"].compression is None
    cache = JetCache(tmp_path / "train.h5")
    got = cache.rows(np.arange(100))
    np.testing.assert_array_equal(got[0], p4)
    np.testing.assert_array_equal(got[1], n)
    np.testing.assert_array_equal(got[2], label)
    assert list(tmp_path.iterdir()) == [tmp_path / "train.h5"]


def test_writer_leaves_nothing_behind_on_error(tmp_path):
    p4, n, label = fake_jets(10)
    with pytest.raises(ZeroDivisionError):
        with CacheWriter(tmp_path / "train.h5", 10, 16, {}) as w:
            w.append(p4[:5], n[:5], label[:5])
            1 / 0
    assert list(tmp_path.iterdir()) == []


def test_writer_refuses_short_commit(tmp_path):
    p4, n, label = fake_jets(10)
    with pytest.raises(RuntimeError, match="5 jets written, 10 announced"):
        with CacheWriter(tmp_path / "train.h5", 10, 16, {}) as w:
            w.append(p4[:5], n[:5], label[:5])
            w.commit()
    assert list(tmp_path.iterdir()) == []


def test_cache_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.h5"
    with h5py.File(bad, "w") as f:
        f["p4"] = np.zeros((3, 4, 4), np.float32)
    with pytest.raises(InputError, match=r"bad\.h5: missing dataset\(s\) \['n_particles', 'label'\]"):
        JetCache(bad)
    write_cache(tmp_path / "good.h5")
    data = (tmp_path / "good.h5").read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"cut\.h5: not a readable HDF5"):
        JetCache(tmp_path / "cut.h5")


def test_batch_mask_and_trim():
    p4, n, label = fake_jets(8, 16)
    batch = JetBatch.from_arrays(p4, n, label)
    assert batch.p4.shape == (8, int(n.max()), 4) and batch.mask.dtype == torch.bool
    assert torch.equal(batch.mask.sum(1), torch.from_numpy(n.astype(np.int64)))
    assert torch.all(batch.p4[~batch.mask] == 0)
    assert JetBatch.from_arrays(p4, n, label, trim=False).p4.shape == (8, 16, 4)


@pytest.mark.parametrize("in_memory", [True, False])
def test_epoch_visits_every_jet_once_and_is_seeded(tmp_path, in_memory):
    write_cache(tmp_path / "train.h5", n_jets=100)
    cache = JetCache(tmp_path / "train.h5", in_memory=in_memory, block_jets=32)
    loader = JetLoader(cache, batch_size=16, seed=3)
    seen = [i for b in loader for i in jet_ids(b)]
    assert sorted(seen) == list(range(100)) and len(loader) == 7
    assert seen == [i for b in JetLoader(cache, 16, seed=3) for i in jet_ids(b)]
    loader.set_epoch(1)
    assert seen != [i for b in loader for i in jet_ids(b)]
    assert [i for b in JetLoader(cache, 16, shuffle=False) for i in jet_ids(b)] == list(range(100))


def test_on_disk_reads_match_in_memory(tmp_path):
    p4, n, label = write_cache(tmp_path / "train.h5", n_jets=100)
    disk = JetCache(tmp_path / "train.h5", in_memory=False, block_jets=32)
    index = np.array([99, 0, 31, 32, 64, 5])
    for got, want in zip(disk.rows(index), (p4[index], n[index], label[index])):
        np.testing.assert_array_equal(got, want)


def test_resume_mid_epoch_gives_the_remaining_batches(tmp_path):
    write_cache(tmp_path / "train.h5")
    loader = JetLoader(JetCache(tmp_path / "train.h5"), batch_size=16, seed=5)
    loader.set_epoch(2)
    full = [jet_ids(b) for b in loader]
    assert [jet_ids(b) for b in loader.iter_from(4)] == full[4:]


def test_shards_reassemble_the_single_process_batches(tmp_path):
    write_cache(tmp_path / "train.h5", n_jets=100)
    cache = JetCache(tmp_path / "train.h5")
    single = [jet_ids(b) for b in JetLoader(cache, batch_size=32, seed=1, drop_last=True)]
    ranks = [[jet_ids(b) for b in JetLoader(cache, 16, seed=1, drop_last=True, rank=r, world_size=2)] for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(single) == 3
    assert [a + b for a, b in zip(*ranks)] == single


def test_loader_rejects_bad_arguments(tmp_path):
    write_cache(tmp_path / "train.h5")
    cache = JetCache(tmp_path / "train.h5")
    with pytest.raises(ValueError, match="batch_size"):
        JetLoader(cache, 0)
    with pytest.raises(ValueError, match="rank"):
        JetLoader(cache, 4, rank=2, world_size=2)
