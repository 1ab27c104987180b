"""Re-identification retrieval metrics (mAP, CMC) under the VeRi-776 / Market-1501 protocol, and embedding a set.

Protocol (Zheng et al. 2015's Market-1501 evaluation, used unchanged for VeRi-776 by Liu et al. 2016 and by
reid-strong-baseline's ``eval_func``). Each query ranks the whole gallery by distance, nearest first; ties are
broken by gallery order (a stable sort), so the result is deterministic. Then, for that query:

* gallery images of the query's identity taken by the query's camera are *junk*: removed from the ranking (they
  are neither correct nor wrong, the task being to re-identify across cameras);
* a *match* is a remaining gallery image of the query's identity; a query with no match is skipped (it counts in
  neither mAP nor CMC; ``n_query`` is the number of queries kept);
* average precision ``AP = (1 / n_match) sum_j precision@rank(match j)`` over the ranking without the junk, and
  ``mAP`` its mean over the kept queries;
* ``CMC(k)`` is the fraction of kept queries whose first match is within the first k of that ranking
  (``rank1``, ``rank5``, ...).

Distances are computed a chunk of queries at a time (about :data:`CHUNK_ELEMENTS` query-gallery pairs), so the
full (Q, G) matrix is never held: VeRi-776's 1,678 queries x 11,579 gallery images need about 90 MB of working
arrays besides a float64 copy of the embeddings (190 MB at D = 2048), and about 8 s on two CPU cores at D = 2048.

Bootstrap intervals (``n_bootstrap > 0``) are, as for the jet metrics (:mod:`jetkd.evaluate.metrics`), the central
68.27% of replicas that resample the kept queries with replacement (gallery fixed), seeded, vectorised over
replicas.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

METRICS = ("euclidean", "cosine")
#: query x gallery pairs ranked at once (the chunk's distance, order and mask arrays: about 40 bytes per pair)
CHUNK_ELEMENTS = 2**21
#: the quantiles bounding a central 68.27% interval: :data:`jetkd.evaluate.metrics.INTERVAL_QUANTILES` (not imported:
#: that package loads sklearn and matplotlib)
INTERVAL_QUANTILES = (0.15865525393145707, 0.8413447460685429)
#: bootstrap replicas x queries drawn at once
_BOOTSTRAP_BLOCK = 2_000_000


# ----------------------------------------------------------------------------------------------------- inputs


def _as_array(x, dtype, name: str, ndim: int) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=dtype)
    if x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {x.shape}")
    return x


def _check_inputs(query_emb, query_ids, query_cams, gallery_emb, gallery_ids, gallery_cams):
    """The six inputs as numpy (embeddings float64 (n, D), ids and cameras int64 (n,)); ValueError on shapes."""
    qe, ge = _as_array(query_emb, np.float64, "query_emb", 2), _as_array(gallery_emb, np.float64, "gallery_emb", 2)
    if qe.shape[1] != ge.shape[1]:
        raise ValueError(f"query and gallery embeddings differ in width: {qe.shape[1]} and {ge.shape[1]}")

    def labels(value, name: str, n: int) -> np.ndarray:
        arr = _as_array(value, np.int64, name, 1)
        if len(arr) != n:
            raise ValueError(f"{name} has {len(arr)} entries for {n} embeddings")
        return arr

    return (qe, labels(query_ids, "query_ids", len(qe)), labels(query_cams, "query_cams", len(qe)),
            ge, labels(gallery_ids, "gallery_ids", len(ge)), labels(gallery_cams, "gallery_cams", len(ge)))


def _check_ranks(ranks: Sequence[int]) -> tuple[int, ...]:
    ranks = tuple(int(k) for k in ranks)
    if not ranks or min(ranks) < 1:
        raise ValueError(f"ranks must be integers >= 1, got {ranks}")
    return ranks


# ----------------------------------------------------------------------------------------------------- ranking


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """x (n, D) with each row scaled to unit length (zero rows stay zero)."""
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def _prepared(x: np.ndarray, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, squared norms)`` of x (n, D) as :func:`_distances` takes them: unit rows for cosine."""
    x = _unit_rows(x) if metric == "cosine" else x
    return x, np.einsum("ij,ij->i", x, x)


def _distances(query, gallery, metric: str) -> np.ndarray:
    """(q, G) float64 from :func:`_prepared` query and gallery: ``|x|^2 + |y|^2 - 2 x.y`` clipped at 0
    (euclidean), or ``1 - x.y`` (cosine, unit rows)."""
    (q, q_sq), (g, g_sq) = query, gallery
    d = q @ g.T
    if metric == "cosine":
        return np.subtract(1.0, d, out=d)
    d *= -2.0
    d += g_sq[None, :]
    d += q_sq[:, None]
    return np.maximum(d, 0.0, out=d)


def distances(query, gallery, metric: str = "euclidean") -> np.ndarray:
    """(q, G) float64 distances of ``query`` (q, D) to ``gallery`` (G, D), as ranked by :func:`retrieval_metrics`.

    euclidean: the squared distance ``|x - y|^2`` (same ranking as ``|x - y|``, no sqrt), computed as
    ``|x|^2 + |y|^2 - 2 x.y`` clipped at 0; cosine: ``1 - cos(x, y)`` (a zero row has distance 1 to everything).
    """
    _check_metric(metric)
    query = _as_array(query, np.float64, "query", 2)
    gallery = _as_array(gallery, np.float64, "gallery", 2)
    return _distances(_prepared(query, metric), _prepared(gallery, metric), metric)


def ranked_matches(dist: np.ndarray, query_ids: np.ndarray, query_cams: np.ndarray, gallery_ids: np.ndarray,
                   gallery_cams: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each query's ranked gallery as ``(match, keep)``, both (q, G) bool, column j the j-th nearest image.

    dist: (q, G) distances; query_ids, query_cams: (q,); gallery_ids, gallery_cams: (G,).
    ``match``: the image has the query's identity; ``keep``: it is not junk (same identity and same camera).
    """
    order = np.argsort(dist, axis=1, kind="stable")
    match = gallery_ids[order] == query_ids[:, None]
    junk = match & (gallery_cams[order] == query_cams[:, None])
    return match & ~junk, ~junk


def average_precision(match: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per query: AP and the 0-based rank of the first match, over the ranking without the junk.

    match, keep: (q, G) bool from :func:`ranked_matches` (``match`` already excludes junk).
    Returns ``ap`` (q,) float64 and ``first`` (q,) int64; NaN and -1 for a query without any match.
    """
    position = np.cumsum(keep, axis=1, dtype=np.int64)  # 1-based rank among kept images (at kept columns)
    hits = np.cumsum(match, axis=1, dtype=np.int64)  # matches up to and including this column
    precision = np.divide(hits, position, out=np.zeros(match.shape), where=match)
    n_match = hits[:, -1] if match.shape[1] else np.zeros(len(match), np.int64)
    has = n_match > 0
    ap = np.full(len(match), np.nan)
    ap[has] = precision[has].sum(1) / n_match[has]
    first_col = match.argmax(1)
    first = np.where(has, position[np.arange(len(match)), first_col] - 1, -1)
    return ap, first


def per_query(query_emb, query_ids, query_cams, gallery_emb, gallery_ids, gallery_cams, *,
              metric: str = "euclidean", chunk_elements: int = CHUNK_ELEMENTS) -> tuple[np.ndarray, np.ndarray]:
    """AP (Q,) float64 and first-match rank (Q,) int64 of every query (NaN and -1 where it has no valid match).

    Inputs as :func:`retrieval_metrics` (numpy arrays or CPU/GPU tensors). Queries are processed in chunks of
    ``max(1, chunk_elements // G)``; distances in float64.
    """
    qe, qi, qc, ge, gi, gc = _check_inputs(query_emb, query_ids, query_cams, gallery_emb, gallery_ids, gallery_cams)
    _check_metric(metric)
    query, gallery = _prepared(qe, metric), _prepared(ge, metric)  # once, not per chunk
    step = max(1, chunk_elements // max(len(ge), 1))
    ap, first = np.full(len(qe), np.nan), np.full(len(qe), -1, np.int64)
    for start in range(0, len(qe), step):
        rows = slice(start, start + step)
        dist = _distances((query[0][rows], query[1][rows]), gallery, metric)
        ap[rows], first[rows] = average_precision(*ranked_matches(dist, qi[rows], qc[rows], gi, gc))
    return ap, first


# ----------------------------------------------------------------------------------------------------- metrics


def cmc_curve(first: np.ndarray, max_rank: int) -> np.ndarray:
    """(max_rank,) CMC: entry k - 1 is the fraction of queries (those with a match: ``first >= 0``) whose first
    match has 0-based rank < k; NaN if there is none."""
    first = first[first >= 0]
    if len(first) == 0:
        return np.full(max_rank, np.nan)
    counts = np.bincount(np.minimum(first, max_rank), minlength=max_rank + 1)[:max_rank]
    return np.cumsum(counts) / len(first)


def bootstrap_retrieval(ap: np.ndarray, first: np.ndarray, *, ranks: Sequence[int] = (1, 5), n_bootstrap: int = 200,
                        seed: int = 0) -> dict:
    """Central 68.27% intervals of mAP and CMC at ``ranks`` from ``n_bootstrap`` resamples of the queries.

    ap, first: (Q,) from :func:`per_query`; the queries without a match (NaN / -1) are left out first. Each
    replica draws n_query of the others with replacement (``numpy.random.default_rng(seed)``), in blocks of
    about 2M draws. Returns ``mAP_interval`` and ``rank<k>_interval`` (``[low, high]`` floats; NaN when no query
    or ``n_bootstrap = 0``) and ``n_bootstrap``.
    """
    ranks = _check_ranks(ranks)
    valid = first >= 0
    ap, first = ap[valid], first[valid]
    n = len(ap)
    values = np.full((max(n_bootstrap, 0), 1 + len(ranks)), np.nan)  # (B, mAP + one column per rank)
    if n and n_bootstrap > 0:
        columns = np.column_stack([ap] + [first < k for k in ranks]).astype(np.float64)  # (n, 1 + r)
        rng = np.random.default_rng(seed)
        block = max(1, _BOOTSTRAP_BLOCK // n)
        for start in range(0, n_bootstrap, block):
            size = min(block, n_bootstrap - start)
            draws = rng.integers(0, n, size=(size, n))
            values[start : start + size] = columns[draws].mean(1)
    bounds = (np.quantile(values, INTERVAL_QUANTILES, axis=0) if len(values) and n
              else np.full((2, 1 + len(ranks)), np.nan))
    out = {"mAP_interval": bounds[:, 0].tolist()}
    out |= {f"rank{k}_interval": bounds[:, i + 1].tolist() for i, k in enumerate(ranks)}
    out["n_bootstrap"] = int(n_bootstrap)
    return out


def retrieval_metrics(query_emb, query_ids, query_cams, gallery_emb, gallery_ids, gallery_cams, *,
                      ranks: Sequence[int] = (1, 5), metric: str = "euclidean", n_bootstrap: int = 0,
                      seed: int = 0, chunk_elements: int = CHUNK_ELEMENTS) -> dict:
    """mAP and CMC of re-identification retrieval under the VeRi-776 / Market-1501 protocol (module docstring).

    query_emb: (Q, D), query_ids: (Q,) identity, query_cams: (Q,) camera; gallery_emb: (G, D), gallery_ids (G,),
    gallery_cams (G,). Numpy arrays or tensors (any device); embeddings are compared in float64.
    ranks: the CMC ranks to report; metric: ``"euclidean"`` (the usual; reid-strong-baseline) or ``"cosine"``.

    Returns a JSON-ready dict::

        mAP          float      mean AP over the queries with at least one valid match
        cmc          list       CMC(1) .. CMC(max(ranks)): the full curve up to the largest rank
        rank<k>      float      CMC(k) for each k in ``ranks`` (rank1, rank5)
        n_query      int        queries with at least one valid match (the others are skipped)
        n_skipped    int        queries skipped
        n_nonfinite  int        query and gallery embeddings holding NaN or inf; if > 0 every metric is NaN
        with ``n_bootstrap > 0`` also :func:`bootstrap_retrieval`'s mAP_interval, rank<k>_interval, n_bootstrap

    Metrics are NaN when no query has a valid match.
    """
    ranks = _check_ranks(ranks)
    _check_metric(metric)
    qe, qi, qc, ge, gi, gc = _check_inputs(query_emb, query_ids, query_cams, gallery_emb, gallery_ids, gallery_cams)
    n_nonfinite = int((~np.isfinite(qe).all(1)).sum() + (~np.isfinite(ge).all(1)).sum())
    if n_nonfinite:  # a diverged model: no ranking is meaningful
        ap, first = np.full(len(qe), np.nan), np.full(len(qe), -1, np.int64)
    else:
        ap, first = per_query(qe, qi, qc, ge, gi, gc, metric=metric, chunk_elements=chunk_elements)
    n_query = int((first >= 0).sum())
    cmc = cmc_curve(first, max(ranks))
    out = {"mAP": float(np.nanmean(ap)) if n_query else float("nan"), "cmc": cmc.tolist()}
    out |= {f"rank{k}": float(cmc[k - 1]) for k in ranks}
    out |= {"n_query": n_query, "n_skipped": len(qe) - n_query, "n_nonfinite": n_nonfinite}
    if n_bootstrap > 0:
        out |= bootstrap_retrieval(ap, first, ranks=ranks, n_bootstrap=n_bootstrap, seed=seed)
    return out


# ----------------------------------------------------------------------------------------------------- embedding


@torch.no_grad()
def _embed(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``model.embed(images)``, else the input of ``model.classifier`` (captured by a forward pre-hook)."""
    if hasattr(model, "embed"):
        return model.embed(images)
    captured = []
    handle = model.classifier.register_forward_pre_hook(lambda m, args: captured.append(args[0]))
    try:
        model(images)
    finally:
        handle.remove()
    return captured[0]


def query_gallery_metrics(model: torch.nn.Module, query, gallery, mean, std, *, batch_size: int = 256,
                          device="cpu") -> dict:
    """:func:`retrieval_metrics` of ``model``'s embeddings of the ImageSets ``query`` against ``gallery`` (identities
    and cameras from the sets), both normalised with ``mean``, ``std``."""
    from jetkd.images.loader import ImageLoader

    q, g = (embed_all(model, ImageLoader(s, batch_size, shuffle=False, mean=mean, std=std), device)[0]
            for s in (query, gallery))
    return retrieval_metrics(q, query.labels, query.cameras, g, gallery.labels, gallery.cameras)


def embed_all(model: torch.nn.Module, loader: Iterable, device="cpu") -> tuple[np.ndarray, np.ndarray,
                                                                                 np.ndarray | None]:
    """Embed every image of a loader: ``(embeddings (N, D) float32, ids (N,) int64, cams (N,) int64 or None)``.

    model: its ``embed(images (B, C, H, W)) -> (B, D)`` (:class:`~jetkd.images.models.ReIDResNet`), or for a
    classifier without one the input of its ``classifier`` (its last hidden representation); run in eval mode
    (BNNeck and BatchNorm on running statistics; the model's mode is restored afterwards).
    loader: an :class:`~jetkd.images.loader.ImageLoader` without augmentation or P x K sampling, on one rank, that
    visits every image of its set once (shuffled or not). Rows are in the set's order (row i: image i), ids
    and cams its ``labels`` and ``cameras``.
    """
    if getattr(loader, "augment", None) is not None or getattr(loader, "identities_per_batch", None) is not None:
        raise ValueError("embed_all needs an evaluation loader: no augmentation, no identities_per_batch")
    if getattr(loader, "world_size", 1) != 1:
        raise ValueError("embed_all embeds a whole set on one process; give it a loader with world_size=1")
    was_training = model.training
    model.eval()
    try:
        parts, index, labels, cams = [], [], [], []
        with torch.no_grad():
            for batch in loader:
                parts.append(_embed(model, batch.images.to(device)).float().cpu())
                index.append(batch.index), labels.append(batch.label)
                cams.append(batch.camera)
    finally:
        model.train(was_training)
    if not parts:
        raise ValueError("the loader yielded no batch")
    index = torch.cat(index).numpy()
    n = len(index)
    if not np.array_equal(np.sort(index), np.arange(n)) or (hasattr(loader, "images") and n != len(loader.images)):
        raise ValueError("the loader did not visit every image exactly once (drop_last?)")
    rows = np.empty(n, np.int64)
    rows[index] = np.arange(n)  # rows[i]: where image i came out
    embeddings = torch.cat(parts).numpy().astype(np.float32, copy=False)[rows]
    ids = torch.cat(labels).numpy()[rows]
    cams = None if cams[0] is None else torch.cat(cams).numpy()[rows]
    return embeddings, ids, cams


__all__ = ["CHUNK_ELEMENTS", "METRICS", "average_precision", "bootstrap_retrieval", "cmc_curve", "distances",
           "embed_all", "per_query", "query_gallery_metrics", "ranked_matches", "retrieval_metrics"]
