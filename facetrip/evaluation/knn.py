"""Exact k-nearest-neighbour search in bounded memory (query chunks against the gallery).

Nearest-neighbour ties are broken by the lower gallery index.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch

from facetrip.evaluation.arrays import as_embeddings
from facetrip.loss.distances import DISTANCES, pairwise_distances

DEFAULT_CHUNK_SIZE = 512
_SELECT_BLOCK = 32  # columns per block in the two-stage top-k selection


def _stable_smallest(d: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort candidate rows by ``(distance, index)``.

    Args:
        d: ``(c, L)`` candidate distances; ``idx``: ``(c, L)`` their gallery indices.

    Returns:
        ``(c, L)`` distances ascending and the matching indices, equal distances by index.
    """
    by_index = torch.argsort(idx, dim=1)
    d, idx = d.gather(1, by_index), idx.gather(1, by_index)
    d, by_dist = torch.sort(d, dim=1, stable=True)
    return d, idx.gather(1, by_dist)


def _top_candidates(key: torch.Tensor, n: int, largest: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` best columns of each row: largest keys if ``largest``, else smallest.

    Two stages when rows are long: the best ``n`` blocks of ``_SELECT_BLOCK`` columns by
    their best key (a vectorised reduction), then an exact top-``n`` among the columns of
    those blocks (and the ragged tail). Each chosen block contributes its best key, so any
    column left out is no better than the ``n``-th candidate: the result is an exact top-``n``
    (which of several equal keys is kept is arbitrary, as for ``torch.topk``). This avoids
    ``torch.topk`` over the full rows, which is the slow part on CPU.

    Args:
        key: ``(c, M)``; ``n <= M``.

    Returns:
        ``(c, n)`` keys and ``(c, n)`` int64 column indices, unordered.
    """
    c, m = key.shape
    n_blocks = m // _SELECT_BLOCK
    if n_blocks < 4 * n:  # too few blocks for the first stage to pay off
        return torch.topk(key, n, dim=1, largest=largest, sorted=False)
    body = key[:, : n_blocks * _SELECT_BLOCK].view(c, n_blocks, _SELECT_BLOCK)
    block_best = body.amax(2) if largest else body.amin(2)
    blocks = torch.topk(block_best, n, dim=1, largest=largest, sorted=False).indices
    offsets = torch.arange(_SELECT_BLOCK, device=key.device)
    cols = (blocks[:, :, None] * _SELECT_BLOCK + offsets).view(c, -1)
    if m > n_blocks * _SELECT_BLOCK:  # the ragged tail is always a candidate
        tail = torch.arange(n_blocks * _SELECT_BLOCK, m, device=key.device).expand(c, -1)
        cols = torch.cat([cols, tail], dim=1)
    vals, pick = torch.topk(key.gather(1, cols), n, dim=1, largest=largest, sorted=False)
    return vals, cols.gather(1, pick)


def _select_rows(
    key: torch.Tensor, k: int, largest: bool, to_dist: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest columns of each row of a chunk, exact ties by lower index.

    Args:
        key: ``(c, M)`` chunk of the matrix; distance is a monotone non-increasing function of
            it when ``largest`` (similarities) and non-decreasing otherwise.
        k: neighbours wanted, ``k <= M``.
        to_dist: maps key values to distances (elementwise, monotone as above).

    Returns:
        ``(c, k)`` distances ascending and ``(c, k)`` int64 column indices.
    """
    c, m = key.shape
    n_cand = min(k + 1, m)
    vals, idx = _top_candidates(key, n_cand, largest)
    d, idx = _stable_smallest(to_dist(vals), idx)
    if n_cand == k:  # every column is a candidate: nothing outside can tie
        return d, idx
    # A column outside the candidates has distance >= d[:, k]; a tie with the k-th distance
    # means the set itself depends on tie-breaking: redo those rows with a full stable sort.
    tied = torch.nonzero(d[:, k - 1] == d[:, k]).flatten()
    if tied.numel():
        full_d = to_dist(key[tied])
        full_idx = torch.arange(m, device=key.device).expand(tied.numel(), m)
        sub_d, sub_idx = _stable_smallest(full_d, full_idx)
        d[tied, : k + 1], idx[tied, : k + 1] = sub_d[:, : k + 1], sub_idx[:, : k + 1]
    return d[:, :k], idx[:, :k]


def _cosine_distance(similarity: torch.Tensor) -> torch.Tensor:
    """Cosine distance from cosine similarity, bit-identical to ``pairwise_distances``."""
    return (1.0 - similarity).clamp_min(0.0)


def _identity(d: torch.Tensor) -> torch.Tensor:
    return d


def iter_knn(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    k: int,
    metric: str,
    chunk_size: int,
    exclude: torch.Tensor | None,
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Yield ``(start, distances (c, k), indices (c, k))`` for consecutive query chunks.

    ``exclude`` is ``(N,)`` int64: the gallery index each query must not return (itself), or
    None. Only one ``(c, M)`` block of the distance matrix exists at a time; for cosine it is
    a single buffer reused by every chunk (fresh large allocations are slow to page in).
    """
    cosine = metric == "cosine"
    to_dist = _cosine_distance if cosine else _identity
    if cosine:
        gallery_n = torch.nn.functional.normalize(gallery, dim=1)
        buffer = gallery_n.new_empty(min(chunk_size, queries.shape[0]), gallery.shape[0])
    for start in range(0, queries.shape[0], chunk_size):
        q = queries[start : start + chunk_size]
        if cosine:  # same arithmetic as pairwise_distances, without its (c, M) temporaries
            key = buffer[: q.shape[0]]
            torch.mm(torch.nn.functional.normalize(q, dim=1), gallery_n.T, out=key)
        else:
            key = pairwise_distances(q, gallery, metric)
        if exclude is not None:
            rows = torch.arange(q.shape[0], device=key.device)
            key[rows, exclude[start : start + chunk_size]] = -math.inf if cosine else math.inf
        d, idx = _select_rows(key, k, largest=cosine, to_dist=to_dist)
        del key
        yield start, d, idx


def check_knn_args(metric: str, k: int, n_available: int, chunk_size: int) -> None:
    if metric not in DISTANCES:
        raise ValueError(f"unknown metric {metric!r}; expected one of {DISTANCES}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if not 1 <= k <= n_available:
        raise ValueError(f"k must be in [1, {n_available}] (gallery size), got {k}")


def knn(
    queries: Any,
    gallery: Any = None,
    k: int = 10,
    metric: str = "cosine",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    exclude_self: bool = True,
    device: str | torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact k-nearest-neighbour search, chunked over the queries.

    Args:
        queries: ``(N, D)`` embeddings (numpy or tensor).
        gallery: ``(M, D)`` embeddings, or None to search the queries themselves.
        k: neighbours per query, at most ``M`` (``N - 1`` when excluding self).
        metric: ``"cosine"`` (1 - cos), ``"euclidean"`` or ``"squared_euclidean"``, computed
            exactly as :func:`facetrip.distances.pairwise_distances`.
        chunk_size: queries per block; memory is bounded by a few ``chunk_size x M`` floats.
        exclude_self: with ``gallery=None``, never return a query's own index (duplicates
            of it at other indices are returned normally). Ignored when a gallery is given.
        device: where to compute (e.g. ``"cuda"``); default: the queries' device (CPU for
            numpy input).

    Returns:
        ``distances (N, k)`` ascending and ``indices (N, k)`` int64 into the gallery, on
        ``device``. Equal distances are ordered by lower gallery index, so the result does not
        depend on ``chunk_size`` as long as the matrix product gives the same bits for a row
        whatever the chunk shape; CPU BLAS may round the last bit differently for different
        shapes, so only exactly representable products (e.g. integer embeddings) are
        guaranteed bit-identical, others agree to ~1 ulp.
    """
    dev = torch.device(device) if device is not None else None
    q = as_embeddings(queries, dev)
    g = q if gallery is None else as_embeddings(gallery, q.device).to(q.dtype)
    if g.shape[1] != q.shape[1]:
        raise ValueError(f"queries have dim {q.shape[1]} but gallery has dim {g.shape[1]}")
    exclude = None
    if gallery is None and exclude_self:
        exclude = torch.arange(q.shape[0], device=q.device)
    check_knn_args(metric, k, g.shape[0] - (exclude is not None), chunk_size)
    out_d = torch.empty(q.shape[0], k, dtype=q.dtype, device=q.device)
    out_i = torch.empty(q.shape[0], k, dtype=torch.int64, device=q.device)
    for start, d, idx in iter_knn(q, g, k, metric, chunk_size, exclude):
        out_d[start : start + d.shape[0]] = d
        out_i[start : start + d.shape[0]] = idx
    return out_d, out_i
