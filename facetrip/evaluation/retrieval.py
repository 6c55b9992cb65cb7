"""Leave-one-out retrieval metrics: Recall@k, precision@1, R-precision, MAP@R."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from facetrip.evaluation.arrays import as_embeddings, to_numpy
from facetrip.evaluation.knn import DEFAULT_CHUNK_SIZE, check_knn_args, iter_knn


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
    metric: str = "cosine",
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
    if keep.size == 0:
        return result
    k_needed = min(emb.shape[0] - 1, max(max(ks), int(r_all[keep].max())))
    check_knn_args(metric, k_needed, emb.shape[0] - 1, chunk_size)
    keep_t = torch.as_tensor(keep, device=emb.device)
    totals = {"recall": dict.fromkeys(ks, 0), "p1": 0, "r_precision": 0.0, "map_at_r": 0.0}
    queries = emb if keep.size == emb.shape[0] else emb[keep_t]
    chunks = iter_knn(queries, emb, k_needed, metric, chunk_size, exclude=keep_t)
    for start, _, idx in chunks:
        rows = keep[start : start + idx.shape[0]]
        rel = codes[idx.cpu().numpy()] == codes[rows][:, None]
        sums = _retrieval_sums(rel, r_all[rows], ks)
        for k in ks:
            totals["recall"][k] += sums["recall"][k]
        for name in ("p1", "r_precision", "map_at_r"):
            totals[name] += sums[name]
    n = keep.size
    result["recall_at_k"] = {k: totals["recall"][k] / n for k in ks}
    result["precision_at_1"] = totals["p1"] / n
    result["r_precision"] = totals["r_precision"] / n
    result["map_at_r"] = totals["map_at_r"] / n
    return result
