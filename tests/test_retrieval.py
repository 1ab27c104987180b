"""Re-identification retrieval: mAP / CMC under the VeRi-776 / Market-1501 protocol against a brute-force per-query
reference and hand-made rankings, their bootstrap intervals, P x K identity sampling in the image loader, and
embed_all."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jetkd.images import ImageBatch, ImageLoader, ImageSet, retrieval
from jetkd.images.loader import Augment, pk_order
from jetkd.images.models import ReIDResNet
from jetkd.images.retrieval import (
    average_precision,
    bootstrap_retrieval,
    distances,
    embed_all,
    per_query,
    ranked_matches,
    retrieval_metrics,
)

# ----------------------------------------------------------------------------- brute-force reference


def reference_per_query(qe, qi, qc, ge, gi, gc, metric="euclidean"):
    """One query at a time in plain Python: distances pair by pair, the ranking by (distance, gallery index), junk
    (same id and camera) dropped, AP as the mean of precision at each match. None for a query without a match."""
    out = []
    for q in range(len(qe)):
        if metric == "euclidean":
            d = [float(np.sum((ge[j] - qe[q]) ** 2)) for j in range(len(ge))]
        else:
            d = [1.0 - float(qe[q] @ ge[j]) / float(np.linalg.norm(qe[q]) * np.linalg.norm(ge[j]))
                 for j in range(len(ge))]
        ranking = sorted(range(len(ge)), key=lambda j: (d[j], j))
        kept = [j for j in ranking if not (gi[j] == qi[q] and gc[j] == qc[q])]
        good = [gi[j] == qi[q] for j in kept]
        if not any(good):
            out.append(None)
            continue
        hits, total = 0, 0.0
        for rank, g in enumerate(good, start=1):
            if g:
                hits += 1
                total += hits / rank
        out.append((total / hits, good.index(True)))
    return out


def reference_metrics(per, ranks=(1, 5)):
    kept = [p for p in per if p is not None]
    return {"mAP": sum(ap for ap, _ in kept) / len(kept), "n_query": len(kept),
            **{f"rank{k}": sum(first < k for _, first in kept) / len(kept) for k in ranks}}


def random_set(seed, n_query=40, n_gallery=150, n_ids=12, n_cams=4, dim=6, integer=False):
    """Query and gallery of ``n_ids`` identities on ``n_cams`` cameras; integer embeddings make many exact ties.
    The last two identities are seen by camera 0 only: their queries have only junk matches and are skipped."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_ids, dim)) * 2

    def part(n):
        ids = rng.integers(0, n_ids, n)
        emb = rng.integers(-2, 3, (n, dim)).astype(np.float64) if integer else centres[ids] + rng.normal(size=(n, dim))
        cams = np.where(ids >= n_ids - 2, 0, rng.integers(0, n_cams, n))
        return emb, ids.astype(np.int64), cams.astype(np.int64)
    (qe, qi, qc), (ge, gi, gc) = part(n_query), part(n_gallery)
    return qe, qi, qc, ge, gi, gc


# ----------------------------------------------------------------------------- against the reference


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_per_query_matches_the_brute_force_reference(seed, metric):
    data = random_set(seed)
    ap, first = per_query(*data, metric=metric, chunk_elements=1000)  # several chunks of queries
    ref = reference_per_query(*data, metric=metric)
    assert first.tolist() == [-1 if r is None else r[1] for r in ref]  # first-match ranks: exact
    assert np.isnan(ap).tolist() == [r is None for r in ref]
    np.testing.assert_allclose(ap[first >= 0], [r[0] for r in ref if r is not None], rtol=1e-13, atol=0)
    got, want = retrieval_metrics(*data, metric=metric), reference_metrics(ref)
    assert got["n_query"] == want["n_query"] and got["rank1"] == want["rank1"] and got["rank5"] == want["rank5"]
    assert got["mAP"] == pytest.approx(want["mAP"], rel=1e-13)
    assert 0 < got["n_skipped"] < 40 and got["n_query"] + got["n_skipped"] == 40  # both kinds occur


@pytest.mark.parametrize("seed", [3, 4])
def test_ties_are_broken_by_gallery_order_exactly_as_the_reference(seed):
    """Integer embeddings: many equal distances; the ranking must be the stable one, the same for any chunking."""
    data = random_set(seed, n_query=30, n_gallery=80, dim=2, integer=True)
    ref = reference_per_query(*data)
    for chunk in (1, 80 * 7, 10**6):
        ap, first = per_query(*data, chunk_elements=chunk)
        assert first.tolist() == [-1 if r is None else r[1] for r in ref]
        np.testing.assert_allclose(ap[first >= 0], [r[0] for r in ref if r is not None], rtol=1e-13, atol=0)


def test_chunking_does_not_change_the_metrics():
    data = random_set(5, n_query=33, n_gallery=61)
    whole = retrieval_metrics(*data, ranks=(1, 3, 10))
    for chunk in (1, 61, 100, 61 * 33 - 1):
        assert retrieval_metrics(*data, ranks=(1, 3, 10), chunk_elements=chunk) == whole


def test_distances_of_both_metrics():
    rng = np.random.default_rng(0)
    q, g = rng.normal(size=(4, 3)), rng.normal(size=(5, 3))
    np.testing.assert_allclose(distances(q, g), ((q[:, None] - g[None]) ** 2).sum(-1), atol=1e-12)
    cos = (q @ g.T) / np.linalg.norm(q, axis=1)[:, None] / np.linalg.norm(g, axis=1)[None]
    np.testing.assert_allclose(distances(q, g, "cosine"), 1 - cos, atol=1e-12)
    assert (distances(q, q) >= 0).all() and np.allclose(np.diag(distances(q, q)), 0, atol=1e-12)
    with pytest.raises(ValueError, match="metric"):
        distances(q, g, "manhattan")


# ----------------------------------------------------------------------------- hand-made cases


def line(*xs):
    """1-D embeddings at positions xs: (n, 1)."""
    return np.array(xs, dtype=np.float64)[:, None]


def test_perfect_ranking_gives_map_one():
    # three identities far apart, each with two gallery images on cameras other than its query's
    ge, gi, gc = line(0, 0.1, 10, 10.1, 20, 20.1), np.array([0, 0, 1, 1, 2, 2]), np.array([1, 2, 1, 2, 1, 2])
    qe, qi, qc = line(0.05, 10.05, 20.05), np.array([0, 1, 2]), np.array([0, 0, 0])
    m = retrieval_metrics(qe, qi, qc, ge, gi, gc)
    assert m["mAP"] == 1.0 and m["rank1"] == 1.0 and m["rank5"] == 1.0 and m["n_query"] == 3
    assert m["cmc"] == [1.0] * 5


def test_same_camera_matches_are_excluded():
    # gallery, nearest first: id 7 on the query's camera (junk), id 3, id 7 on another camera
    qe, qi, qc = line(0), np.array([7]), np.array([1])
    ge, gi, gc = line(0, 1, 2), np.array([7, 3, 7]), np.array([1, 2, 3])
    m = retrieval_metrics(qe, qi, qc, ge, gi, gc, ranks=(1, 2))
    assert m["rank1"] == 0.0 and m["rank2"] == 1.0  # the junk image is not a rank-1 hit, and does not take a rank
    assert m["mAP"] == 0.5  # the only valid match is second among the kept images
    assert m["cmc"] == [0.0, 1.0]
    # a different-identity image on the query's camera is not junk: it stays in the ranking as a miss
    m = retrieval_metrics(qe, qi, qc, ge, np.array([5, 3, 7]), gc, ranks=(1, 2, 3))
    assert m["mAP"] == pytest.approx(1 / 3) and (m["rank2"], m["rank3"]) == (0.0, 1.0)


def test_average_precision_of_a_known_ranking():
    # kept ranking: match, miss, junk, match, miss, match -> matches at kept ranks 1, 3, 5
    match = np.array([[1, 0, 0, 1, 0, 1]], bool)
    keep = np.array([[1, 1, 0, 1, 1, 1]], bool)
    ap, first = average_precision(match, keep)
    assert ap[0] == pytest.approx((1 / 1 + 2 / 3 + 3 / 5) / 3) and first[0] == 0
    ap, first = average_precision(np.array([[0, 0, 1]], bool), np.array([[0, 1, 1]], bool))
    assert ap[0] == 0.5 and first[0] == 1  # the junk column counts for no rank
    ap, first = average_precision(np.zeros((1, 3), bool), np.ones((1, 3), bool))
    assert np.isnan(ap[0]) and first[0] == -1


def test_ranked_matches_marks_junk():
    dist = np.array([[0.0, 1.0, 2.0, 3.0]])
    match, keep = ranked_matches(dist, np.array([1]), np.array([0]), np.array([1, 1, 2, 1]), np.array([0, 1, 0, 0]))
    assert match.tolist() == [[False, True, False, False]] and keep.tolist() == [[False, True, True, False]]


def test_a_query_whose_only_match_is_on_its_camera_is_skipped():
    ge, gi, gc = line(0, 5, 7), np.array([1, 2, 2]), np.array([0, 0, 1])
    qe, qi, qc = line(6, 5), np.array([1, 2]), np.array([0, 0])  # query 0: its only match is junk
    m = retrieval_metrics(qe, qi, qc, ge, gi, gc)
    assert m["n_query"] == 1 and m["n_skipped"] == 1
    assert m["mAP"] == 1.0 and m["rank1"] == 1.0  # query 1 alone; query 0 (whose ranking has no hit) left out
    m = retrieval_metrics(qe[:1], qi[:1], qc[:1], ge, gi, gc)
    assert m["n_query"] == 0 and np.isnan(m["mAP"]) and np.isnan(m["rank1"]) and m["n_skipped"] == 1


def test_non_finite_embeddings_give_nan_not_an_error():
    data = list(random_set(6))
    data[3] = data[3].copy()
    data[3][4, 0] = np.nan
    m = retrieval_metrics(*data, n_bootstrap=10)
    assert m["n_nonfinite"] == 1 and np.isnan(m["mAP"]) and np.isnan(m["rank1"]) and m["n_query"] == 0
    assert np.isnan(m["mAP_interval"]).all()


def test_tensors_and_arrays_give_the_same_metrics():
    data = random_set(7)
    as_tensors = [torch.from_numpy(x).float() if x.dtype == np.float64 else torch.from_numpy(x) for x in data]
    as_float32 = [x.astype(np.float32) if x.dtype == np.float64 else x for x in data]
    assert retrieval_metrics(*as_tensors) == retrieval_metrics(*as_float32)


def test_inputs_are_checked():
    qe, qi, qc, ge, gi, gc = random_set(8)
    with pytest.raises(ValueError, match="gallery_cams"):
        retrieval_metrics(qe, qi, qc, ge, gi, gc[:-1])
    with pytest.raises(ValueError, match="width"):
        retrieval_metrics(qe[:, :3], qi, qc, ge, gi, gc)
    with pytest.raises(ValueError, match="ranks"):
        retrieval_metrics(qe, qi, qc, ge, gi, gc, ranks=(0, 5))
    with pytest.raises(ValueError, match="metric"):
        retrieval_metrics(qe, qi, qc, ge, gi, gc, metric="l1")


def test_veri_sized_evaluation_is_memory_bounded():
    """1,700 x 11,600 in chunks: no (Q, G) float64 matrix (158 MB) is ever allocated at once."""
    import tracemalloc

    rng = np.random.default_rng(0)
    n_q, n_g, dim = 1700, 11600, 16
    qi, gi = rng.integers(0, 200, n_q), rng.integers(0, 200, n_g)
    qe, ge = rng.normal(size=(n_q, dim)) + qi[:, None] % 7, rng.normal(size=(n_g, dim)) + gi[:, None] % 7
    qc, gc = rng.integers(0, 20, n_q), rng.integers(0, 20, n_g)
    tracemalloc.start()
    m = retrieval_metrics(qe, qi, qc, ge, gi, gc, n_bootstrap=100)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 150e6, f"peak {peak / 1e6:.0f} MB"
    assert m["n_query"] > 1600 and 0 < m["mAP"] < 1


# ----------------------------------------------------------------------------- bootstrap


def test_bootstrap_matches_a_per_replica_loop():
    ap, first = per_query(*random_set(9, n_query=60))
    out = bootstrap_retrieval(ap, first, ranks=(1, 5), n_bootstrap=50, seed=3)
    valid = first >= 0
    a, f = ap[valid], first[valid]
    draws = np.random.default_rng(3).integers(0, len(a), size=(50, len(a)))
    maps = [a[d].mean() for d in draws]
    rank1 = [(f[d] < 1).mean() for d in draws]
    from jetkd.evaluate.metrics import INTERVAL_QUANTILES as q

    assert retrieval.INTERVAL_QUANTILES == q
    np.testing.assert_allclose(out["mAP_interval"], np.quantile(maps, q), rtol=1e-12)
    np.testing.assert_allclose(out["rank1_interval"], np.quantile(rank1, q), rtol=1e-12)
    assert out["n_bootstrap"] == 50 and "rank5_interval" in out


def test_bootstrap_is_seeded_blocked_alike_and_brackets_the_estimate(monkeypatch):
    data = random_set(10, n_query=80)
    m = retrieval_metrics(*data, n_bootstrap=200, seed=1)
    assert m == retrieval_metrics(*data, n_bootstrap=200, seed=1)
    assert m["mAP_interval"] != retrieval_metrics(*data, n_bootstrap=200, seed=2)["mAP_interval"]
    lo, hi = m["mAP_interval"]
    assert lo < m["mAP"] < hi and hi - lo < 0.3
    assert m["rank1_interval"][0] <= m["rank1"] <= m["rank1_interval"][1]
    monkeypatch.setattr(retrieval, "_BOOTSTRAP_BLOCK", 7 * m["n_query"])  # blocks of 7 replicas: same draws
    assert retrieval_metrics(*data, n_bootstrap=200, seed=1) == m
    assert "mAP_interval" not in retrieval_metrics(*data)


# ----------------------------------------------------------------------------- P x K sampling

H, W = 4, 3
COUNTS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 3, 11, 4, 2]  # identities with fewer and more images than K


def id_set(counts=COUNTS, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(counts)), counts)
    labels = labels[rng.permutation(len(labels))].astype(np.int64)
    images = rng.integers(0, 256, (len(labels), H, W, 3), dtype=np.uint8)
    return ImageSet(images, labels, rng.integers(0, 5, len(labels)).astype(np.int64), None, "test")


STATS = {"mean": (0.5, 0.4, 0.3), "std": (0.25, 0.2, 0.3)}
AUG = Augment(pad=1, flip=True)


def pk_loader(data, p, k, **kwargs):
    return ImageLoader(data, p * k, identities_per_batch=p, **STATS, **kwargs)


def assert_batches_equal(a: list[ImageBatch], b: list[ImageBatch]):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x.images, y.images) and torch.equal(x.index, y.index) and torch.equal(x.label, y.label)


@pytest.mark.parametrize(("p", "k"), [(3, 4), (4, 2), (2, 1)])
def test_every_pk_batch_holds_p_distinct_identities_of_k_images(p, k):
    data = id_set()
    loader = pk_loader(data, p, k, seed=2)
    out = list(loader)
    assert len(out) == len(loader) > 0
    counts = np.bincount(data.labels)
    chunks_used = np.zeros(len(counts), int)
    for batch in out:
        blocks = batch.label.reshape(p, k)
        assert (blocks == blocks[:, :1]).all() and len(set(blocks[:, 0].tolist())) == p
        assert torch.equal(batch.label, torch.from_numpy(data.labels[batch.index.numpy()]))
        chunks_used[blocks[:, 0].numpy()] += 1
    index = torch.cat([b.index for b in out]).numpy()
    big = counts[data.labels[index]] >= k
    assert len(np.unique(index[big])) == big.sum()  # images of identities with >= k images: no repeat in an epoch
    available = np.maximum(counts // k, 1)  # chunks per identity (one drawn with replacement if fewer than k)
    assert (chunks_used <= available).all()
    assert ((chunks_used < available).sum()) < p  # the epoch ends when fewer than p identities have chunks left


def test_small_identities_are_sampled_with_replacement():
    data = id_set(counts=[1, 2, 6, 6])  # one chunk each: two batches of 2 identities x 4 take them all
    out = list(pk_loader(data, 2, 4, seed=0))
    assert len(out) == 2
    blocks = {int(data.labels[b[0]]): b for batch in out for b in batch.index.reshape(2, 4).tolist()}
    assert sorted(blocks) == [0, 1, 2, 3]
    assert blocks[0] == [int(np.flatnonzero(data.labels == 0)[0])] * 4  # the one image, four times
    assert set(blocks[1]) <= set(np.flatnonzero(data.labels == 1).tolist())  # drawn from its two images
    for big in (2, 3):  # 4 of the 6 images, none twice
        assert len(set(blocks[big])) == 4 and set(blocks[big]) <= set(np.flatnonzero(data.labels == big).tolist())


def test_pk_order_is_seeded():
    data = id_set()
    a, b = pk_loader(data, 3, 2, seed=1, augment=AUG), pk_loader(data, 3, 2, seed=1, augment=AUG)
    assert_batches_equal(list(a), list(b))
    assert not torch.equal(next(iter(pk_loader(data, 3, 2, seed=2))).index, next(iter(a)).index)
    b.set_epoch(1)
    assert not torch.equal(next(iter(b)).index, next(iter(a)).index)
    order_a = pk_order(data.labels, 3, 2, np.random.default_rng([1, 0]))
    assert np.array_equal(order_a, a.plan()[0]) and len(a.plan()[1]) == len(order_a)  # augmentation per position


@pytest.mark.parametrize("start", [0, 1, 4])
def test_pk_resume_mid_epoch_is_identical(start):
    data = id_set()
    full = pk_loader(data, 3, 2, seed=7, augment=AUG)
    full.set_epoch(3)
    expected = list(full)[start:]
    resumed = pk_loader(data, 3, 2, seed=7, augment=AUG)
    resumed.set_epoch(3)
    assert_batches_equal(list(resumed.iter_from(start)), expected)


@pytest.mark.parametrize("world_size", [2, 3])
def test_pk_sharding_matches_one_process(world_size):
    """N ranks with P identities x K see what one process sees with N * P identities x K, each rank P whole ones."""
    data = id_set()
    p, k = 2, 2
    single = pk_loader(data, world_size * p, k, seed=5, augment=AUG)
    single.set_epoch(1)
    ranks = [ImageLoader(data, p * k, identities_per_batch=p, seed=5, augment=AUG, rank=r, world_size=world_size,
                         **STATS) for r in range(world_size)]
    for loader in ranks:
        loader.set_epoch(1)
    per_rank = [list(loader) for loader in ranks]
    assert all(len(batches) == len(single) for batches in per_rank)
    for step in zip(*per_rank, strict=True):
        for batch in step:
            blocks = batch.label.reshape(p, k)
            assert (blocks == blocks[:, :1]).all() and len(set(blocks[:, 0].tolist())) == p
    joined = [ImageBatch(torch.cat([b.images for b in step]), torch.cat([b.label for b in step]),
                         torch.cat([b.index for b in step]), torch.cat([b.camera for b in step]))
              for step in zip(*per_rank, strict=True)]
    assert_batches_equal(joined, list(single))
    assert_batches_equal(list(ranks[1].iter_from(2)), per_rank[1][2:])


def test_pk_options_are_checked():
    data = id_set()
    with pytest.raises(ValueError, match="divisor"):
        ImageLoader(data, 10, identities_per_batch=3, **STATS)
    with pytest.raises(ValueError, match="identities"):
        ImageLoader(data, 30, identities_per_batch=15, **STATS)  # 14 identities
    with pytest.raises(ValueError, match="identities"):
        ImageLoader(data, 16, identities_per_batch=8, world_size=2, **STATS)
    with pytest.raises(ValueError, match="shuffle"):
        ImageLoader(data, 4, identities_per_batch=2, shuffle=False, **STATS)
    plain = ImageLoader(data, 4, seed=1, **STATS)  # without the option: the plain permutation, untouched
    assert np.array_equal(plain.order(), np.random.default_rng([1, 0]).permutation(len(data)))


# ----------------------------------------------------------------------------- embed_all


def tiny_reid():
    torch.manual_seed(0)
    return ReIDResNet(n_class=14, block="basic", layers=(1, 1, 1, 1), widths=(8, 8, 16, 16), stem_width=8)


def test_embed_all_runs_in_eval_mode_and_returns_set_order():
    data = id_set()
    data = ImageSet(np.repeat(np.repeat(data.images, 4, 1), 4, 2), data.labels, data.cameras, None, "test")  # 16x12
    model = tiny_reid()
    model.train()
    loader = ImageLoader(data, 7, seed=3, **STATS)  # shuffled: rows still come back in the set's order
    emb, ids, cams = embed_all(model, loader, "cpu")
    assert model.training  # the mode is restored
    assert emb.dtype == np.float32 and emb.shape == (len(data), model.feature_dim)
    assert np.array_equal(ids, data.labels) and np.array_equal(cams, data.cameras)
    everything = next(iter(ImageLoader(data, len(data), shuffle=False, **STATS))).images
    with torch.no_grad():
        model.eval()
        np.testing.assert_allclose(emb, model.embed(everything).numpy(), rtol=1e-5, atol=1e-5)
        model.train()  # train-mode BatchNorm gives other embeddings: the check above has teeth
        assert not np.allclose(model.embed(everything).numpy(), emb, atol=1e-3)


def test_embed_all_refuses_training_loaders():
    data = id_set()
    model = tiny_reid()
    for loader in (ImageLoader(data, 4, augment=AUG, **STATS), pk_loader(data, 2, 2),
                   ImageLoader(data, 4, world_size=2, **STATS), ImageLoader(data, 4, drop_last=True, **STATS)):
        with pytest.raises(ValueError):
            embed_all(model, loader, "cpu")
