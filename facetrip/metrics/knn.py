"""Exact k-nearest-neighbour search in bounded memory (query chunks against the gallery).

Nearest-neighbour ties are broken by the lower gallery index.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch

from facetrip.loss.distances import DISTANCES, pairwise_distances
from facetrip.metrics.arrays import as_embeddings

DEFAULT_CHUNK_SIZE = 512
_SELECT_BLOCK = 32  # contiguous columns per block in the first selection stage
_MAX_GROUP = 32  # most columns per (strided) group in the later stages
_TIE_ROWS = 64  # tied rows redone at once (a few (rows, M) temporaries)


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


def _best(x: torch.Tensor, dim: int, largest: bool) -> torch.Tensor:
    return x.amax(dim) if largest else x.amin(dim)


def _top_of_groups(x: torch.Tensor, n: int, largest: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.topk(x, n, sorted=False)`` of a small ``(c, L)`` matrix, as a set.

    When rows are long enough, first the best ``n`` of the ``G`` strided groups of ``s``
    columns (``g, g + G, g + 2G, ...``) by their best value (a reduction over contiguous
    rows of ``G``), then the top ``n`` among their ``s n`` columns (and the ragged tail):
    ``torch.topk`` sees about ``L / s + s n`` values instead of ``L``. Exact by the argument
    of :func:`_top_candidates`.

    Returns:
        ``(c, n)`` values and their int64 column indices, unordered.
    """
    c, length = x.shape
    size = min(_MAX_GROUP, length // (4 * n))  # columns per group
    if size < 2:
        return torch.topk(x, n, dim=1, largest=largest, sorted=False)
    n_groups = length // size
    body = x[:, : size * n_groups].view(c, size, n_groups)  # group g: column j * G + g
    groups = torch.topk(_best(body, 1, largest), n, dim=1, largest=largest, sorted=False)[1]
    starts = torch.arange(0, size * n_groups, n_groups, device=x.device)
    cols = (groups[:, None, :] + starts[None, :, None]).view(c, -1)
    if length > size * n_groups:  # the ragged tail is always a candidate
        tail = torch.arange(size * n_groups, length, device=x.device).expand(c, -1)
        cols = torch.cat([cols, tail], dim=1)
    vals, pick = torch.topk(x.gather(1, cols), n, dim=1, largest=largest, sorted=False)
    return vals, cols.gather(1, pick)


def _top_candidates(key: torch.Tensor, n: int, largest: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` best columns of each row: largest keys if ``largest``, else smallest.

    Two stages when rows are long: the best ``n`` blocks of ``_SELECT_BLOCK`` columns by
    their best key (a vectorised reduction), then an exact top-``n`` among the columns of
    those blocks (and the ragged tail). Each chosen block contributes its best key, so any
    column left out is no better than the ``n``-th candidate: the result is an exact top-``n``
    (which of several equal keys is kept is arbitrary, as for ``torch.topk``). This avoids
    ``torch.topk`` over the full rows, which is the slow part on CPU; both stages use
    :func:`_top_of_groups`, the same idea over strided groups of the smaller matrices.

    Args:
        key: ``(c, M)``; ``n <= M``.

    Returns:
        ``(c, n)`` keys and ``(c, n)`` int64 column indices, unordered.
    """
    c, m = key.shape
    n_blocks = m // _SELECT_BLOCK
    if n_blocks < 4 * n:  # too few blocks for the first stage to pay off
        return _top_of_groups(key, n, largest)
    body = key[:, : n_blocks * _SELECT_BLOCK].view(c, n_blocks, _SELECT_BLOCK)
    _, blocks = _top_of_groups(_best(body, 2, largest), n, largest)
    offsets = torch.arange(_SELECT_BLOCK, device=key.device)
    cols = (blocks[:, :, None] * _SELECT_BLOCK + offsets).view(c, -1)
    if m > n_blocks * _SELECT_BLOCK:  # the ragged tail is always a candidate
        tail = torch.arange(n_blocks * _SELECT_BLOCK, m, device=key.device).expand(c, -1)
        cols = torch.cat([cols, tail], dim=1)
    vals, pick = _top_of_groups(key.gather(1, cols), n, largest)
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
    # means the set itself depends on tie-breaking: redo those rows exactly.
    tied = torch.nonzero(d[:, k - 1] == d[:, k]).flatten()
    for start in range(0, tied.numel(), _TIE_ROWS):
        rows = tied[start : start + _TIE_ROWS]
        sub_d, sub_idx = _select_tied(to_dist(key[rows]), d[rows, k - 1 : k], k)
        d[rows, :k], idx[rows, :k] = sub_d, sub_idx
    return d[:, :k], idx[:, :k]


def _select_tied(
    full_d: torch.Tensor, kth: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` smallest ``(distance, index)`` of rows whose ``k``-th distance is ``kth``.

    Every column closer than ``kth`` belongs (fewer than ``k`` of them); the rest are the
    lowest-index columns at exactly ``kth``. One linear pass instead of a full-row sort.

    Args:
        full_d: ``(t, M)`` distances of whole rows; ``kth``: ``(t, 1)`` their k-th distance.

    Returns:
        ``(t, k)`` distances ascending and the matching int64 column indices.
    """
    take = full_d < kth
    need = k - take.sum(1, keepdim=True)
    at_kth = full_d == kth
    take |= at_kth & (at_kth.cumsum(1) <= need)
    cols = torch.nonzero(take)[:, 1].view(-1, k)  # row-major: k per row, by column index
    return _stable_smallest(full_d.gather(1, cols), cols)


def _cosine_distance(similarity: torch.Tensor) -> torch.Tensor:
    """Cosine distance from cosine similarity, bit-identical to ``pairwise_distances``."""
    return (1.0 - similarity).clamp_min(0.0)


def _euclidean_distance(squared: torch.Tensor) -> torch.Tensor:
    """L2 distance from the unclamped squared distance, bit-identical to
    ``pairwise_distances``."""
    return squared.clamp_min(0.0).sqrt_()


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
    None. Only one ``(c, M)`` block of the distance matrix exists at a time; for cosine and
    euclidean it is a single buffer reused by every chunk (fresh large allocations are slow
    to page in) holding the similarity or the squared distance: only the selected entries
    become distances. The arithmetic is that of ``pairwise_distances``, so the distances are
    bit-identical to it.
    """
    largest = metric == "cosine"
    if metric == "cosine":
        to_dist = _cosine_distance
        gallery_t = torch.nn.functional.normalize(gallery, dim=1).T
    elif metric == "euclidean":  # (x2 - 2 x.y) + y2, as pairwise_distances' forward
        to_dist = _euclidean_distance
        gallery_t = gallery.T
        gallery_sq = (gallery * gallery).sum(1, keepdim=True).T
    else:
        to_dist = _identity
    if metric in ("cosine", "euclidean"):
        buffer = gallery.new_empty(min(chunk_size, queries.shape[0]), gallery.shape[0])
    for start in range(0, queries.shape[0], chunk_size):
        q = queries[start : start + chunk_size]
        if metric == "cosine":  # same arithmetic as pairwise_distances, without temporaries
            key = buffer[: q.shape[0]]
            torch.mm(torch.nn.functional.normalize(q, dim=1), gallery_t, out=key)
        elif metric == "euclidean":
            key = buffer[: q.shape[0]]
            torch.addmm((q * q).sum(1, keepdim=True), q, gallery_t, alpha=-2.0, out=key)
            key.add_(gallery_sq)
        else:
            key = pairwise_distances(q, gallery, metric)
        if exclude is not None:
            rows = torch.arange(q.shape[0], device=key.device)
            key[rows, exclude[start : start + chunk_size]] = -math.inf if largest else math.inf
        d, idx = _select_rows(key, k, largest=largest, to_dist=to_dist)
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
    metric: str = "euclidean",
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
