"""Leave-one-out retrieval metrics: Recall@k, precision@1, R-precision, MAP@R."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from facetrip.metrics.arrays import as_embeddings, to_numpy
from facetrip.metrics.knn import DEFAULT_CHUNK_SIZE, check_knn_args, iter_knn


def _retrieval_sums(rel: np.ndarray, r: np.ndarray, ks: Sequence[int]) -> dict[str, Any]:
    """Per-chunk sums of the retrieval metrics.

    Args:
        rel: ``(c, K)`` bool, neighbour ``j`` of query ``i`` has the query's label.
        r: ``(c,)`` number of other items of each query's class, ``1 <= r <= K``.
        ks: the k of Recall@k (``k > K`` counts as ``K``).

    Returns:
        ``{"recall": {k: hits}, "p1": hits, "r_precision": sum, "map_at_r": sum}``.
    """
    pos = np.arange(1, rel.shape[1] + 1)
    within_r = pos[None, :] <= r[:, None]
    hits_r = (rel & within_r).sum(1)
    precision_at_i = np.cumsum(rel, axis=1) / pos[None, :]
    ap = (precision_at_i * (rel & within_r)).sum(1) / r
    return {
        "recall": {k: int(rel[:, :k].any(1).sum()) for k in ks},
        "p1": int(rel[:, 0].sum()),
        "r_precision": float((hits_r / r).sum()),
        "map_at_r": float(ap.sum()),
    }


def retrieval_metrics(
    embeddings: Any,
    labels: Any,
    ks: Sequence[int] = (1, 2, 4, 8, 16),
    metric: str = "euclidean",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Leave-one-out retrieval metrics: every item queries all the others.

    Args:
        embeddings: ``(N, D)`` embeddings (numpy or tensor).
        labels: ``(N,)`` class labels (any hashable values numpy can sort).
        ks: the k of Recall@k (positive ints).
        metric: see :func:`knn`.
        chunk_size: queries per block; memory is bounded by a few ``chunk_size x N`` floats
            plus ``N x K`` results are never kept: only per-chunk sums are.
        device: where to compute; default the embeddings' device.

    Returns:
        ``recall_at_k`` ``{k: fraction of queries with >= 1 same-label item in the top k}``,
        ``precision_at_1``, ``r_precision`` (mean of hits in the top R / R), ``map_at_r``
        (Musgrave et al. 2020: mean over queries of ``(1/R) sum_{i<=R} P(i) rel(i)``) where R
        is the number of other items of the query's class; ``n_queries``; ``n_excluded``:
        items whose class has no other item, excluded from every metric. Metrics are ``None``
        when no query remains. Neighbour ties are broken by lower index.
    """
    return _retrieval(embeddings, labels, ks, metric, chunk_size, device, want_top1=False)[0]


def retrieval_metrics_and_top1(
    embeddings: Any,
    labels: Any,
    ks: Sequence[int] = (1, 2, 4, 8, 16),
    metric: str = "euclidean",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    device: str | torch.device | None = None,
) -> tuple[dict[str, Any], np.ndarray]:
    """:func:`retrieval_metrics` and every item's nearest other item, from one kNN pass.

    Returns:
        ``(metrics, top1)``: ``metrics`` as :func:`retrieval_metrics`; ``top1`` ``(N,)``
        int64, the index of each item's nearest other item, ties by lower index: equal to
        ``knn(embeddings, k=1, metric=metric)[1][:, 0]`` (up to the rounding caveat of
        :func:`knn`: with items excluded, the queries fall into other chunks). Queries take it
        from the retrieval pass; items excluded from retrieval (no other item of their class)
        from a ``k=1`` search over just them. ``-1`` when there is no other item (``N == 1``).
    """
    return _retrieval(embeddings, labels, ks, metric, chunk_size, device, want_top1=True)


def _retrieval(
    embeddings: Any,
    labels: Any,
    ks: Sequence[int],
    metric: str,
    chunk_size: int,
    device: str | torch.device | None,
    want_top1: bool,
) -> tuple[dict[str, Any], np.ndarray | None]:
    """The metrics of :func:`retrieval_metrics` and, if ``want_top1``, each item's top-1."""
    if not ks or any(int(k) < 1 for k in ks):
        raise ValueError(f"ks must be positive integers, got {ks}")
    ks = [int(k) for k in ks]
    emb = as_embeddings(embeddings, torch.device(device) if device is not None else None)
    _, codes, counts = np.unique(to_numpy(labels), return_inverse=True, return_counts=True)
    codes = codes.reshape(-1)
    if codes.shape[0] != emb.shape[0]:
        raise ValueError(f"{emb.shape[0]} embeddings but {codes.shape[0]} labels")
    r_all = counts[codes] - 1
    keep = np.flatnonzero(r_all > 0)
    result: dict[str, Any] = {
        "recall_at_k": {k: None for k in ks},
        "precision_at_1": None,
        "r_precision": None,
        "map_at_r": None,
        "n_queries": int(keep.size),
        "n_excluded": int(emb.shape[0] - keep.size),
    }
    top1 = np.full(emb.shape[0], -1, dtype=np.int64) if want_top1 else None
    if keep.size:
        result.update(_leave_one_out(emb, codes, r_all, keep, ks, metric, chunk_size, top1))
    if top1 is not None and keep.size < emb.shape[0] and emb.shape[0] > 1:
        _singleton_top1(emb, np.flatnonzero(r_all == 0), metric, chunk_size, top1)
    return result, top1


def _leave_one_out(
    emb: torch.Tensor,
    codes: np.ndarray,
    r_all: np.ndarray,
    keep: np.ndarray,
    ks: list[int],
    metric: str,
    chunk_size: int,
    top1: np.ndarray | None,
) -> dict[str, Any]:
    """The metrics over the queries ``keep`` (items with ``r_all > 0`` other items of their
    class ``codes``), one kNN pass; fills ``top1[keep]`` on the way when given."""
    k_needed = min(emb.shape[0] - 1, max(max(ks), int(r_all[keep].max())))
    check_knn_args(metric, k_needed, emb.shape[0] - 1, chunk_size)
    keep_t = torch.as_tensor(keep, device=emb.device)
    totals = {"recall": dict.fromkeys(ks, 0), "p1": 0, "r_precision": 0.0, "map_at_r": 0.0}
    queries = emb if keep.size == emb.shape[0] else emb[keep_t]
    for start, _, idx in iter_knn(queries, emb, k_needed, metric, chunk_size, exclude=keep_t):
        rows = keep[start : start + idx.shape[0]]
        neighbours = idx.cpu().numpy()
        if top1 is not None:
            top1[rows] = neighbours[:, 0]
        rel = codes[neighbours] == codes[rows][:, None]
        sums = _retrieval_sums(rel, r_all[rows], ks)
        for k in ks:
            totals["recall"][k] += sums["recall"][k]
        for name in ("p1", "r_precision", "map_at_r"):
            totals[name] += sums[name]
    n = keep.size
    return {
        "recall_at_k": {k: totals["recall"][k] / n for k in ks},
        "precision_at_1": totals["p1"] / n,
        "r_precision": totals["r_precision"] / n,
        "map_at_r": totals["map_at_r"] / n,
    }


def _singleton_top1(
    emb: torch.Tensor, items: np.ndarray, metric: str, chunk_size: int, top1: np.ndarray
) -> None:
    """Fill ``top1[items]`` with the nearest other item of each (a k=1 search of just them)."""
    check_knn_args(metric, 1, emb.shape[0] - 1, chunk_size)
    items_t = torch.as_tensor(items, device=emb.device)
    for start, _, idx in iter_knn(emb[items_t], emb, 1, metric, chunk_size, exclude=items_t):
        top1[items[start : start + idx.shape[0]]] = idx[:, 0].cpu().numpy()
